//! A big segment's bulk APIs, as ldsync calls them: CSV imports (`POST …/imports` as `multipart/form-data`, the
//! import's ID from the `Location` header, its status polled through `GET …/imports/{id}`) and exports
//! (`POST …/exports`, polled through `GET …/exports/{id}` until `_links` names the file, then the file downloaded).
//!
//! The export's file normally lies on another host (a presigned link): the access token goes only to the API's own
//! origin, never to any other.

use std::collections::BTreeMap;
use std::io::Write;

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, Call, Client, NotDone, bad_answer};

/// What `POST …/imports` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportStart {
    /// Accepted: the import's ID.
    Started(String),
    /// 409: another import of the environment is running (LaunchDarkly's message).
    Busy(String),
}

/// Where an import or an export stands, as `GET …/imports/{id}` or `GET …/exports/{id}` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkStatus {
    /// Still being prepared or processed (`preparing`, `ready`, `in_progress`, or a status this build does not
    /// know, which is waited on like these).
    Working(String),
    /// Waiting for a reviewer's approval in LaunchDarkly.
    PendingApproval,
    Complete,
    /// Stopped by LaunchDarkly: nothing more will happen to it.
    Stopped,
}

impl BulkStatus {
    fn read(status: &str) -> BulkStatus {
        match status {
            "complete" => BulkStatus::Complete,
            "stopped" => BulkStatus::Stopped,
            "pending_approval" => BulkStatus::PendingApproval,
            other => BulkStatus::Working(other.to_string()),
        }
    }
}

/// LaunchDarkly's word for the status.
impl std::fmt::Display for BulkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BulkStatus::Working(status) => status,
            BulkStatus::PendingApproval => "pending_approval",
            BulkStatus::Complete => "complete",
            BulkStatus::Stopped => "stopped",
        })
    }
}

/// An export as `GET …/exports/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub status: BulkStatus,
    /// The file's address once LaunchDarkly names it, made absolute.
    pub file: Option<String>,
}

#[derive(Deserialize)]
struct StatusRep {
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportRep {
    #[serde(default)]
    status: String,
    #[serde(default, rename = "_links")]
    links: BTreeMap<String, LinkRep>,
}

#[derive(Deserialize)]
struct LinkRep {
    href: String,
    #[serde(default, rename = "type")]
    content_type: String,
}

/// Links an export names that are not its file.
const NOT_THE_FILE: &[&str] = &["self", "parent", "site", "segment"];

impl Client {
    fn segment_url(&self, segment: &str) -> String {
        format!("{}/{segment}", self.segments_url())
    }

    /// Uploads one CSV file of keys (no header row, one key a line) as an import into the big segment, always in
    /// `merge` mode: the keys are added to the included list (a `replace` in several files would leave the segment
    /// holding one file's keys while the rest upload; README says why ldsync never sends one). The file is sent
    /// again after a lost answer or a 5xx (LaunchDarkly may then hold two imports of the same file, which change the
    /// list the same way), not after a 409, which the caller waits out.
    pub async fn start_import(
        &self,
        segment: &str,
        file_name: &str,
        csv: &[u8],
    ) -> Result<ImportStart, ApiError> {
        let call = Call::StartImport(segment);
        let url = format!("{}/imports", self.segment_url(segment));
        let answer = self
            .send(call, || {
                let file = Part::bytes(csv.to_vec())
                    .file_name(file_name.to_string())
                    .mime_str("text/csv")
                    .expect("text/csv is a valid MIME type");
                let form = Form::new()
                    .part("file", file)
                    .text("mode", "merge")
                    .text("waitOnApprovals", "false");
                self.request(Method::POST, &url).multipart(form)
            })
            .await?;
        let answer = match answer {
            Err(NotDone::Busy(message)) => return Ok(ImportStart::Busy(message)),
            other => self.found(segment, other).await?,
        };
        let id = answer
            .location
            .as_deref()
            .and_then(last_path_element)
            .ok_or_else(|| {
                bad_answer(
                    call,
                    "the answer names no import (no `Location` header)".into(),
                )
            })?;
        Ok(ImportStart::Started(id))
    }

    /// Where import `id` of the big segment stands.
    pub async fn import_status(&self, segment: &str, id: &str) -> Result<BulkStatus, ApiError> {
        let url = format!("{}/imports/{id}", self.segment_url(segment));
        let rep: StatusRep = self
            .read_json(Call::GetImport(segment), segment, &url)
            .await?;
        Ok(BulkStatus::read(&rep.status))
    }

    /// Starts an export of the big segment's members; returns its ID.
    pub async fn start_export(&self, segment: &str) -> Result<String, ApiError> {
        let call = Call::StartExport(segment);
        let url = format!("{}/exports", self.segment_url(segment));
        let answer = self.send(call, || self.request(Method::POST, &url)).await?;
        let answer = self.found(segment, answer).await?;
        // LaunchDarkly's documentation does not say where the ID is: the `Location` header (as for imports), or an
        // `id` in the body.
        let from_body = || {
            serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()?
                .get("id")?
                .as_str()
                .map(str::to_string)
        };
        answer
            .location
            .as_deref()
            .and_then(last_path_element)
            .or_else(from_body)
            .ok_or_else(|| {
                bad_answer(
                    call,
                    "the answer names no export (no `Location` header, no `id`)".into(),
                )
            })
    }

    /// Where export `id` of the big segment stands, and its file's address once it has one.
    pub async fn export_status(&self, segment: &str, id: &str) -> Result<Export, ApiError> {
        let url = format!("{}/exports/{id}", self.segment_url(segment));
        let rep: ExportRep = self
            .read_json(Call::GetExport(segment), segment, &url)
            .await?;
        Ok(Export {
            status: BulkStatus::read(&rep.status),
            file: file_link(&rep.links).map(|href| self.absolute(href)),
        })
    }

    /// Downloads an export's file into `out`, as it arrives; returns its size. The token goes with the request
    /// only when the file lies on the API's own origin; a file anywhere else (a presigned link) is fetched without
    /// it, and so is every redirect.
    pub async fn download_export(
        &self,
        segment: &str,
        url: &str,
        out: &mut impl Write,
    ) -> Result<u64, ApiError> {
        let mut request = self.download.get(url);
        if same_origin(url, &self.base_url) {
            request = request.header(AUTHORIZATION, self.token.header());
        }
        let failed = |problem: String| ApiError::Download {
            segment: segment.to_string(),
            host: origin(url).unwrap_or("an unreadable address").to_string(),
            problem: self.token.scrub(&problem),
        };
        self.count(|s| s.requests += 1);
        let mut response = request
            .send()
            .await
            .map_err(|e| failed(super::error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(failed(format!("{status}: {}", excerpt(&body))));
        }
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(super::error_chain(&e)))?
        {
            out.write_all(&chunk)
                .map_err(|e| failed(format!("cannot write the file here: {e}")))?;
            size += chunk.len() as u64;
        }
        Ok(size)
    }

    /// `GET url` about the big segment, its answer read as `T`.
    async fn read_json<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        segment: &str,
        url: &str,
    ) -> Result<T, ApiError> {
        let answer = self.send(call, || self.request(Method::GET, url)).await?;
        let answer = self.found(segment, answer).await?;
        serde_json::from_str(&answer.body)
            .map_err(|e| bad_answer(call, format!("{e} in {}", excerpt(&answer.body))))
    }

    /// `href` made absolute against the API's address.
    fn absolute(&self, href: &str) -> String {
        if href.starts_with("http://") || href.starts_with("https://") {
            href.to_string()
        } else {
            let origin = origin(&self.base_url).unwrap_or(&self.base_url);
            format!("{origin}/{}", href.trim_start_matches('/'))
        }
    }
}

/// An import file of `keys`: one key a line, no header row; a key holding a comma, a quote or a line break is
/// quoted, its quotes doubled (never longer than `set_engine::csv_line_bytes` says).
pub fn import_file(keys: &[String]) -> Vec<u8> {
    let mut file = Vec::with_capacity(keys.iter().map(|k| k.len() + 1).sum());
    for key in keys {
        if key.contains([',', '"', '\r', '\n']) {
            file.push(b'"');
            file.extend_from_slice(key.replace('"', "\"\"").as_bytes());
            file.push(b'"');
        } else {
            file.extend_from_slice(key.as_bytes());
        }
        file.push(b'\n');
    }
    file
}

/// The link of an export that names its file: one of type CSV, else the first that is not the export itself.
fn file_link(links: &BTreeMap<String, LinkRep>) -> Option<&str> {
    let candidates = || {
        links
            .iter()
            .filter(|(name, link)| !NOT_THE_FILE.contains(&name.as_str()) && !link.href.is_empty())
    };
    candidates()
        .find(|(_, link)| link.content_type.contains("csv"))
        .or_else(|| candidates().next())
        .map(|(_, link)| link.href.as_str())
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

/// Whether two absolute URLs share scheme, host and port (compared as written, case aside).
fn same_origin(a: &str, b: &str) -> bool {
    match (origin(a), origin(b)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// The last element of a `Location` header's path: an import's or export's ID.
fn last_path_element(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next()?;
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

fn excerpt(body: &str) -> String {
    let mut end = body.len().min(200);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("`{}`", &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_id_is_the_last_element_of_the_location() {
        assert_eq!(
            last_path_element("/api/v2/segments/p/e/s/imports/abc-123").as_deref(),
            Some("abc-123")
        );
        assert_eq!(
            last_path_element("https://app.launchdarkly.com/api/v2/segments/p/e/s/exports/x1/?a=b")
                .as_deref(),
            Some("x1")
        );
        assert_eq!(last_path_element(""), None);
    }

    #[test]
    fn an_import_file_is_one_key_a_line_quoted_only_when_it_must_be() {
        let keys = ["u-1", "a,b", "say \"hi\"", "x"].map(String::from);
        assert_eq!(
            String::from_utf8(import_file(&keys)).unwrap(),
            "u-1\n\"a,b\"\n\"say \"\"hi\"\"\"\nx\n"
        );
    }

    #[test]
    fn the_token_goes_only_to_the_apis_own_origin() {
        let api = "https://app.launchdarkly.com";
        assert!(same_origin("https://app.launchdarkly.com/api/v2/x", api));
        assert!(same_origin("HTTPS://APP.launchdarkly.com/x", api));
        assert!(!same_origin("https://app.launchdarkly.com.evil.io/x", api));
        assert!(!same_origin("https://app.launchdarkly.com:8443/x", api));
        assert!(!same_origin("http://app.launchdarkly.com/x", api));
        assert!(!same_origin(
            "https://bucket.s3.amazonaws.com/e.csv?X-Amz-Signature=1",
            api
        ));
        assert!(!same_origin(
            "http://localhost:9/e.csv",
            "http://127.0.0.1:9"
        ));
        assert!(!same_origin("/relative", api));
    }

    #[test]
    fn the_file_link_is_the_csv_one_or_the_first_that_is_not_the_export() {
        let links = |pairs: &[(&str, &str, &str)]| -> BTreeMap<String, LinkRep> {
            pairs
                .iter()
                .map(|(name, href, kind)| {
                    (
                        name.to_string(),
                        LinkRep {
                            href: href.to_string(),
                            content_type: kind.to_string(),
                        },
                    )
                })
                .collect()
        };
        let both = links(&[
            ("self", "/api/v2/x", "application/json"),
            ("download", "https://s3/x.csv", "text/csv"),
            ("a", "https://other", ""),
        ]);
        assert_eq!(file_link(&both), Some("https://s3/x.csv"));
        let untyped = links(&[("self", "/api/v2/x", ""), ("file", "https://s3/y", "")]);
        assert_eq!(file_link(&untyped), Some("https://s3/y"));
        assert_eq!(file_link(&links(&[("self", "/api/v2/x", "")])), None);
    }
}
