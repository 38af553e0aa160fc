//! The file host of big-segment exports: a second listener, on its own port and origin (`http://localhost:PORT`,
//! where the API is `http://127.0.0.1:PORT`), serving each complete export's file at the presigned URL its `Export`
//! links to, the way S3 serves one: GET only, the signature in the query, any `Authorization` header refused (S3's
//! "Only one auth mechanism allowed"), errors as S3's XML. Every request is recorded apart from the API's, so a test
//! can show that a client never sent its LaunchDarkly token here.

use std::convert::Infallible;
use std::future::Future;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Shared;
use crate::server::accept_each;
use crate::transfers::FileAnswer;

/// A request the file host saw, and what it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRequest {
    pub method: String,
    /// Without the query.
    pub path: String,
    pub query: Option<String>,
    /// The `Authorization` header, if one was sent (it is refused).
    pub authorization: Option<String>,
    pub status: u16,
}

/// Serves exports' files on `listener` until dropped; from now on, exports link to it.
pub fn serve_files(listener: TcpListener, shared: Shared) -> impl Future<Output = ()> {
    if let Ok(address) = listener.local_addr() {
        shared.with(|s| s.file_origin = Some(format!("http://localhost:{}", address.port())));
    }
    accept_each(listener, std::future::pending(), move |stream| {
        let shared = shared.clone();
        let service = service_fn(move |request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(answer(&shared, &request)) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
}

fn answer(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let query = request.uri().query();
    let signature = query.and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Signature="))
    });
    let path = request.uri().path();
    let file = shared.with(|s| {
        let file = if authorization.is_some() {
            FileAnswer::Refused(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string \
                 parameter or the Authorization header should be specified",
            )
        } else if request.method() != Method::GET {
            FileAnswer::Refused(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            )
        } else {
            s.export_file(path, signature)
        };
        let status = match &file {
            FileAnswer::File(..) => 200,
            FileAnswer::Refused(status, ..) => *status,
        };
        s.file_requests.push(FileRequest {
            method: request.method().to_string(),
            path: path.to_string(),
            query: query.map(str::to_string),
            authorization: authorization.clone(),
            status,
        });
        file
    });
    let (status, content_type, body) = match file {
        FileAnswer::File(body, content_type) => (200, content_type, body),
        FileAnswer::Refused(status, code, message) => (
            status,
            "application/xml",
            Bytes::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            )),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
