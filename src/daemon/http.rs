//! `ldsync run --http-addr`: the daemon's HTTP listener, on a thread of its own so that it answers even while a
//! model query holds the daemon's thread. It serves the status page on `GET /` and a sync's page on `GET
//! /syncs/<name>` ([`crate::status_page`]), `GET /metrics` (Prometheus text, [`super::metrics`]), `GET /livez` and
//! `GET /readyz` (one line that says why, [`super::health`]). Only GET and HEAD are answered: nothing
//! on this listener changes anything. Out of file descriptors, it rests between tries instead of spinning.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::health::{Health, Verdict};
use super::metrics::Metrics;
use crate::status_page::{Site, StatusPages};

/// How long the listener rests after an accept that failed for want of resources (too many open files), as hyper's
/// and tokio's servers do.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// What the listener serves.
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub pages: StatusPages,
}

/// Binds `addr` and serves `endpoints` from a thread of its own; the address it bound.
pub fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoints = Arc::new(endpoints);
    std::thread::Builder::new()
        .name("ldsync-http".into())
        .spawn(move || runtime.block_on(accept(listener, endpoints)))?;
    Ok(local)
}

/// Whether a failed accept concerns only the connection being accepted (the client gave up), not the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

async fn accept(listener: std::net::TcpListener, endpoints: Arc<Endpoints>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!(error = %e, "the HTTP listener cannot listen"),
    };
    let mut resting = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: the connection waits in the backlog, so trying again at once
                // would spin on the same error.
                if !resting {
                    tracing::warn!(
                        error = %e,
                        "the HTTP listener cannot accept connections; trying again every {}",
                        humantime::format_duration(ACCEPT_PAUSE)
                    );
                }
                resting = true;
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        if std::mem::take(&mut resting) {
            tracing::info!("the HTTP listener accepts connections again");
        }
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let endpoints = endpoints.clone();
                async move {
                    let response = match page(&request, &endpoints).await {
                        Some(page) => page,
                        None => answer(&request, &endpoints),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "an HTTP connection ended with an error");
            }
        });
    }
}

/// What the listener serves on each path.
const ROUTES: &str =
    "ldsync serves GET / (the status page), /syncs/<name>, /metrics, /livez and /readyz";

/// The status page on `GET /` and a sync's page on `GET /syncs/<name>`, rendered on a blocking thread so that a slow
/// state store never holds up `/metrics` or the probes; `None` for any other request.
async fn page(
    request: &Request<Incoming>,
    endpoints: &Arc<Endpoints>,
) -> Option<Response<Full<Bytes>>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let sync = match request.uri().path() {
        "/" => None,
        path => Some(path.strip_prefix("/syncs/")?.to_string()),
    };
    let (wanted, endpoints) = (sync.clone(), endpoints.clone());
    let rendered = tokio::task::spawn_blocking(move || match &wanted {
        None => Some(endpoints.pages.overview(Site::Served, Utc::now())),
        Some(name) => endpoints.pages.sync_page(name, Utc::now()),
    })
    .await;
    Some(match rendered {
        Ok(Some(html)) => Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(html)))
            .expect("a valid response"),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!(
                "no sync named `{}` on this page\n",
                sync.unwrap_or_default()
            ),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be rendered: {e}\n"),
        ),
    })
}

fn answer(request: &Request<Incoming>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{ROUTES}; nothing here changes anything\n"),
        );
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // hyper sends no body in answer to HEAD.
    match request.uri().path() {
        "/metrics" => Response::builder()
            .status(StatusCode::OK)
            .header(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(endpoints.metrics.render(Utc::now()))))
            .expect("a valid response"),
        "/livez" => verdict(endpoints.health.live()),
        "/readyz" => verdict(endpoints.health.ready()),
        _ => text(StatusCode::NOT_FOUND, format!("{ROUTES}\n")),
    }
}

fn verdict(verdict: Verdict) -> Response<Full<Bytes>> {
    let status = match verdict.healthy {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    text(status, format!("{}\n", verdict.reason))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
