//! Big-segment imports and exports, the way LaunchDarkly runs them. An import is a CSV file of keys sent as
//! `multipart/form-data`; it goes `preparing` → (`pending_approval`) → `in_progress` → `complete` (or `stopped`) over
//! time, one import at a time in an environment, and its keys become the segment's members when it completes. An
//! export is a snapshot of a big segment's members taken when it is asked for; once it has gone `preparing` →
//! `in_progress` → `complete`, its file is served at a presigned URL by the file host ([`crate::files`]).
//!
//! Progress is computed from the clock: [`State::advance`] applies every import whose time has come, and runs
//! before each request and each look by the [`crate::Emulator`], so an import completes whether or not anyone polls.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::State;
use crate::faults::{StopImports, epoch_ms};
use crate::segments::{ApiFailure, Segment};

/// LaunchDarkly takes files of at most 40 MB; read as 40,000,000 bytes, the stricter of its two readings, so a
/// client that stays under it stays under either.
pub const MAX_IMPORT_BYTES: usize = 40_000_000;
/// LaunchDarkly takes at most 1,000,000 contexts in one file.
pub const MAX_IMPORT_KEYS: usize = 1_000_000;

/// How much one import's file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// The file's size, in bytes.
    pub max_bytes: usize,
    /// Keys (lines) in the file.
    pub max_keys: usize,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_bytes: MAX_IMPORT_BYTES,
            max_keys: MAX_IMPORT_KEYS,
        }
    }
}

/// Whether an import adds its keys to the segment's members or makes them the whole list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    Merge,
    Replace,
}

impl ImportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Merge => "merge",
            ImportMode::Replace => "replace",
        }
    }
}

/// Where an import or export stands; exports only go through `Preparing`, `InProgress` and `Complete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferStatus {
    Preparing,
    /// An import that waits for [`crate::Emulator::approve_imports`] ([`crate::Faults::imports_need_approval`]).
    PendingApproval,
    InProgress,
    Complete,
    /// An import that ended without changing the segment ([`crate::Faults::stop_imports`]).
    Stopped,
}

impl TransferStatus {
    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Preparing => "preparing",
            TransferStatus::PendingApproval => "pending_approval",
            TransferStatus::InProgress => "in_progress",
            TransferStatus::Complete => "complete",
            TransferStatus::Stopped => "stopped",
        }
    }
}

/// An import as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportInfo {
    pub id: String,
    pub project: String,
    pub environment: String,
    pub segment_key: String,
    pub mode: ImportMode,
    pub wait_on_approvals: bool,
    pub status: TransferStatus,
    /// The file part's name, as sent.
    pub filename: String,
    /// The file's size.
    pub bytes: usize,
    /// The keys the file held (its lines, empty ones left out), duplicates counted.
    pub keys: usize,
}

/// An export as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub id: String,
    pub project: String,
    pub environment: String,
    pub segment_key: String,
    pub status: TransferStatus,
    /// The members it holds: the segment's included keys when the export was asked for.
    pub keys: usize,
    /// The file's size.
    pub size_bytes: usize,
    /// The presigned URL on the file host, once complete.
    pub file_url: Option<String>,
}

/// The fields of a `multipart/form-data` body, as sent, in order.
#[derive(Debug, Default)]
pub struct Form {
    fields: Vec<FormField>,
}

#[derive(Debug)]
struct FormField {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

/// Reads a `multipart/form-data` body with `multer`, refusing anything else.
pub async fn read_form(content_type: Option<&str>, body: Bytes) -> Result<Form, ApiFailure> {
    let content_type = content_type.unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiFailure::invalid(format!(
            "an import must be sent as Content-Type: multipart/form-data with a boundary, not `{content_type}`"
        ))
    })?;
    let unreadable =
        |e: multer::Error| ApiFailure::invalid(format!("the multipart body cannot be read: {e}"));
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(ToString::to_string);
        let data = field.bytes().await.map_err(unreadable)?;
        form.fields.push(FormField {
            name,
            filename,
            content_type,
            data,
        });
    }
    Ok(form)
}

/// An import's file and fields, checked.
#[derive(Debug)]
pub struct Upload {
    mode: ImportMode,
    wait_on_approvals: bool,
    filename: String,
    bytes: usize,
    pub keys: Vec<String>,
}

impl Form {
    fn field(&self, name: &str) -> Option<&FormField> {
        self.fields.iter().find(|f| f.name == name)
    }

    fn text(&self, name: &str) -> Option<String> {
        self.field(name)
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
    }

    /// What the request log keeps of an import instead of its file: the fields, the file's name, type and size, and
    /// `keys`, its count of keys when the file could be read.
    pub fn summary(&self, keys: Option<usize>) -> Value {
        let wait = self.text("waitOnApprovals");
        let file = self.field("file").map(|f| {
            json!({"filename": f.filename, "contentType": f.content_type, "bytes": f.data.len(), "keys": keys})
        });
        json!({
            "mode": self.text("mode"),
            "waitOnApprovals": match wait.as_deref() {
                Some("true") => json!(true),
                Some("false") => json!(false),
                _ => json!(wait),
            },
            "file": file,
        })
    }

    /// The import the form asks for, or why LaunchDarkly would refuse it.
    pub fn upload(&self, limits: ImportLimits) -> Result<Upload, ApiFailure> {
        let mut seen = BTreeSet::new();
        for field in &self.fields {
            if !["file", "mode", "waitOnApprovals"].contains(&field.name.as_str()) {
                return Err(ApiFailure::invalid(format!(
                    "unknown form field `{}`: an import takes `file`, `mode` and `waitOnApprovals`",
                    field.name
                )));
            }
            if !seen.insert(field.name.as_str()) {
                return Err(ApiFailure::invalid(format!(
                    "the form field `{}` is sent twice",
                    field.name
                )));
            }
        }
        let mode = match self.text("mode").as_deref() {
            Some("merge") => ImportMode::Merge,
            Some("replace") => ImportMode::Replace,
            None => {
                return Err(ApiFailure::invalid(
                    "the form field `mode` is required: `merge` or `replace`",
                ));
            }
            Some(other) => {
                return Err(ApiFailure::invalid(format!(
                    "`mode` must be `merge` or `replace`, not `{other}`"
                )));
            }
        };
        let wait_on_approvals = match self.text("waitOnApprovals").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiFailure::invalid(format!(
                    "`waitOnApprovals` must be `true` or `false`, not `{other}`"
                )));
            }
        };
        let file = self.field("file").ok_or_else(|| {
            ApiFailure::invalid("the form field `file` is required: a CSV file of keys")
        })?;
        let filename = file.filename.clone().ok_or_else(|| {
            ApiFailure::invalid("the form field `file` must be a file part, with a filename")
        })?;
        if file.data.len() > limits.max_bytes {
            return Err(ApiFailure::invalid(format!(
                "the file is {} bytes; an import's file holds at most {} bytes",
                file.data.len(),
                limits.max_bytes
            )));
        }
        let keys = parse_keys(&file.data, limits.max_keys)?;
        Ok(Upload {
            mode,
            wait_on_approvals,
            filename,
            bytes: file.data.len(),
            keys,
        })
    }
}

/// The keys of an import's file: the first column of every line, with no header row (a header is taken as a key,
/// as LaunchDarkly takes it). Columns after the first are ignored and empty lines skipped; an empty key, a key that
/// is not UTF-8 or more than `max_keys` keys refuse the file.
fn parse_keys(data: &[u8], max_keys: usize) -> Result<Vec<String>, ApiFailure> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut record = csv::ByteRecord::new();
    let mut keys = Vec::new();
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| ApiFailure::invalid(format!("the file is not a CSV file of keys: {e}")))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, csv::Position::line);
        let key = record.get(0).unwrap_or_default();
        if key.is_empty() {
            return Err(ApiFailure::invalid(format!(
                "line {line} of the file has an empty key"
            )));
        }
        let key = std::str::from_utf8(key).map_err(|_| {
            ApiFailure::invalid(format!(
                "line {line} of the file has a key that is not UTF-8"
            ))
        })?;
        if keys.len() == max_keys {
            return Err(ApiFailure::invalid(format!(
                "the file holds more than {max_keys} keys; import at most {max_keys} a file, in several merge imports"
            )));
        }
        keys.push(key.to_string());
    }
    if keys.is_empty() {
        return Err(ApiFailure::invalid("the file holds no keys"));
    }
    Ok(keys)
}

/// The big segment an import or export belongs to.
struct Place {
    project: String,
    environment: String,
    segment_key: String,
}

impl Place {
    fn new(project: &str, environment: &str, key: &str) -> Place {
        Place {
            project: project.to_string(),
            environment: environment.to_string(),
            segment_key: key.to_string(),
        }
    }

    fn is(&self, project: &str, environment: &str, key: &str) -> bool {
        (
            self.project.as_str(),
            self.environment.as_str(),
            self.segment_key.as_str(),
        ) == (project, environment, key)
    }

    /// `/api/v2/segments/{project}/{environment}/{segment}/{transfers}/{id}`: where a transfer is read.
    fn location(&self, transfers: &str, id: &str) -> String {
        format!(
            "/api/v2/segments/{}/{}/{}/{transfers}/{id}",
            self.project, self.environment, self.segment_key
        )
    }
}

/// One import.
pub struct Import {
    id: String,
    place: Place,
    mode: ImportMode,
    wait_on_approvals: bool,
    filename: String,
    bytes: usize,
    key_count: usize,
    /// The file's keys, until the import ends.
    keys: Vec<String>,
    created: Instant,
    creation_time: u64,
    step: Duration,
    needs_approval: bool,
    approved: Option<Instant>,
    ends_stopped: bool,
    /// `Complete` or `Stopped` once it has ended and been applied.
    ended: Option<TransferStatus>,
}

impl Import {
    /// When it ends: a step preparing, and a step in progress once approved if it needs approval.
    fn end(&self) -> Option<Instant> {
        let prepared = self.created + self.step;
        let start = match (self.needs_approval, self.approved) {
            (false, _) => prepared,
            (true, Some(approved)) => prepared.max(approved),
            (true, None) => return None,
        };
        Some(start + self.step)
    }

    fn status(&self, now: Instant) -> TransferStatus {
        if let Some(ended) = self.ended {
            return ended;
        }
        if now < self.created + self.step {
            return TransferStatus::Preparing;
        }
        match self.end() {
            None => TransferStatus::PendingApproval,
            Some(end) if now < end => TransferStatus::InProgress,
            Some(_) if self.ends_stopped => TransferStatus::Stopped,
            Some(_) => TransferStatus::Complete,
        }
    }

    fn location(&self) -> String {
        self.place.location("imports", &self.id)
    }

    /// `GET …/imports/{id}`'s answer.
    fn representation(&self, now: Instant) -> Value {
        let status = self.status(now).as_str();
        json!({
            "id": self.id,
            "segmentKey": self.place.segment_key,
            "creationTime": self.creation_time,
            "mode": self.mode.as_str(),
            "status": status,
            "files": [{"filename": self.filename, "status": status}],
            "_links": {"self": {"href": self.location(), "type": "application/json"}},
        })
    }

    fn info(&self, now: Instant) -> ImportInfo {
        ImportInfo {
            id: self.id.clone(),
            project: self.place.project.clone(),
            environment: self.place.environment.clone(),
            segment_key: self.place.segment_key.clone(),
            mode: self.mode,
            wait_on_approvals: self.wait_on_approvals,
            status: self.status(now),
            filename: self.filename.clone(),
            bytes: self.bytes,
            keys: self.key_count,
        }
    }
}

/// One export and its file.
pub struct Export {
    id: String,
    place: Place,
    created: Instant,
    creation_time: u64,
    step: Duration,
    keys: usize,
    file: Bytes,
    content_type: &'static str,
    /// The presigned URL's `X-Amz-Signature`.
    signature: String,
}

impl Export {
    fn status(&self, now: Instant) -> TransferStatus {
        if now < self.created + self.step {
            TransferStatus::Preparing
        } else if now < self.created + 2 * self.step {
            TransferStatus::InProgress
        } else {
            TransferStatus::Complete
        }
    }

    fn location(&self) -> String {
        self.place.location("exports", &self.id)
    }

    /// The presigned URL of its file, on the file host at `origin`.
    fn file_url(&self, origin: &str) -> String {
        format!(
            "{origin}/exports/{}.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={}",
            self.id, self.signature
        )
    }

    /// `GET …/exports/{id}`'s answer: the file's size and link once complete.
    fn representation(&self, now: Instant, origin: Option<&str>) -> Value {
        let status = self.status(now);
        let complete = status == TransferStatus::Complete;
        let size = if complete { self.file.len() } else { 0 };
        let mut links = json!({"self": {"href": self.location(), "type": "application/json"}});
        if let (true, Some(origin)) = (complete, origin) {
            links["file"] = json!({"href": self.file_url(origin), "type": "text/csv"});
        }
        json!({
            "id": self.id,
            "segmentKey": self.place.segment_key,
            "creationTime": self.creation_time,
            "status": status.as_str(),
            "sizeBytes": size,
            "size": human_size(size),
            "initiator": {"name": "ldsync emulator", "email": "emulator@ldsync.invalid"},
            "_links": links,
        })
    }
}

/// A size with its unit, as LaunchDarkly writes `size`: `18 B`, `1.5 MB`.
fn human_size(bytes: usize) -> String {
    let mut size = bytes as f64;
    for unit in ["B", "KB", "MB"] {
        if size < 1000.0 {
            return match unit {
                "B" => format!("{bytes} B"),
                _ => format!("{size:.1} {unit}"),
            };
        }
        size /= 1000.0;
    }
    format!("{size:.1} GB")
}

/// A random identifier shaped like a UUID.
fn new_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The snapshot an export serves: one key a line, each quoted as CSV needs, after a `key` header row if asked for;
/// or, as a fault, a JSON array of the keys.
fn snapshot_file(keys: &BTreeSet<String>, header: bool, malformed: bool) -> (Bytes, &'static str) {
    if malformed {
        let json = serde_json::to_vec(keys).unwrap_or_default();
        return (Bytes::from(json), "application/json");
    }
    let mut file = Vec::with_capacity(keys.iter().map(|k| k.len() + 1).sum::<usize>() + 4);
    if header {
        file.extend_from_slice(b"key\n");
    }
    for key in keys {
        if key.contains([',', '"', '\n', '\r']) {
            file.push(b'"');
            file.extend_from_slice(key.replace('"', "\"\"").as_bytes());
            file.push(b'"');
        } else {
            file.extend_from_slice(key.as_bytes());
        }
        file.push(b'\n');
    }
    (Bytes::from(file), "text/csv")
}

/// A file the file host serves, or why not.
pub enum FileAnswer {
    File(Bytes, &'static str),
    /// Status, S3 error code and message.
    Refused(u16, &'static str, &'static str),
}

impl State {
    /// Ends every import whose time has come, applying a completed one's keys to its segment.
    pub(crate) fn advance(&mut self) {
        let now = Instant::now();
        let segments = &mut self.segments;
        for import in self.imports.iter_mut().filter(|i| i.ended.is_none()) {
            if import.end().is_none_or(|end| now < end) {
                continue;
            }
            let keys = std::mem::take(&mut import.keys);
            let segment = segments.get_mut(&crate::segment_id(
                &import.place.project,
                &import.place.environment,
                &import.place.segment_key,
            ));
            import.ended = Some(match segment {
                Some(segment) if segment.unbounded && !import.ends_stopped => {
                    if segment.import_members(keys, import.mode == ImportMode::Replace) {
                        segment.version += 1;
                        segment.last_modified = epoch_ms();
                    }
                    TransferStatus::Complete
                }
                // Stopped by the fault, or the segment was deleted or replaced meanwhile.
                _ => TransferStatus::Stopped,
            });
        }
    }

    /// Whether an import of the segment has yet to end: its `_importInProgress`.
    pub(crate) fn importing(&self, project: &str, environment: &str, key: &str) -> bool {
        self.imports
            .iter()
            .any(|i| i.ended.is_none() && i.place.is(project, environment, key))
    }

    /// The segment as the API shows it, `_importInProgress` included.
    pub(crate) fn representation(
        &self,
        project: &str,
        environment: &str,
        segment: &Segment,
    ) -> Value {
        let mut rep = segment.representation(project, environment);
        if segment.unbounded {
            rep["_importInProgress"] = json!(self.importing(project, environment, &segment.key));
        }
        rep
    }

    /// Starts an import of `upload` into big segment `key`, unless another import of the environment has yet to end
    /// (409) or a key is excluded; returns its location.
    pub(crate) fn begin_import(
        &mut self,
        project: &str,
        environment: &str,
        key: &str,
        upload: Upload,
    ) -> Result<String, ApiFailure> {
        let segment = self
            .segments
            .get(&crate::segment_id(project, environment, key))
            .ok_or_else(|| ApiFailure::new(404, "not_found", format!("Unknown segment `{key}`")))?;
        let kind = &segment.unbounded_context_kind;
        if let Some(excluded) = segment.excluded.get(kind)
            && let Some(both) = upload.keys.iter().find(|k| excluded.contains(*k))
        {
            return Err(ApiFailure::invalid(format!(
                "`{both}` ({kind}) would be both included and excluded in segment `{key}`"
            )));
        }
        let now = Instant::now();
        if let Some(running) = self.imports.iter().find(|i| {
            i.ended.is_none() && i.place.project == project && i.place.environment == environment
        }) {
            return Err(ApiFailure::new(
                409,
                "conflict",
                format!(
                    "Conflicting process: import {} of segment `{}` is {}; imports cannot run at the same time in one environment",
                    running.id,
                    running.place.segment_key,
                    running.status(now).as_str()
                ),
            ));
        }
        self.imports_begun += 1;
        let ends_stopped = match self.faults.stop_imports {
            None => false,
            Some(StopImports::Every) => true,
            Some(StopImports::Nth(n)) => self.imports_begun == n,
        };
        let import = Import {
            id: new_id(),
            place: Place::new(project, environment, key),
            mode: upload.mode,
            wait_on_approvals: upload.wait_on_approvals,
            filename: upload.filename,
            bytes: upload.bytes,
            key_count: upload.keys.len(),
            keys: upload.keys,
            created: now,
            creation_time: epoch_ms(),
            step: self.import_step,
            needs_approval: self.faults.imports_need_approval,
            approved: None,
            ends_stopped,
            ended: None,
        };
        let location = import.location();
        self.imports.push(import);
        Ok(location)
    }

    /// `GET …/imports/{id}`'s answer, or 404.
    pub(crate) fn import_representation(
        &self,
        project: &str,
        environment: &str,
        key: &str,
        id: &str,
    ) -> Result<Value, ApiFailure> {
        self.imports
            .iter()
            .find(|i| i.id == id && i.place.is(project, environment, key))
            .map(|i| i.representation(Instant::now()))
            .ok_or_else(|| ApiFailure::new(404, "not_found", format!("Unknown import `{id}`")))
    }

    /// Lets every import waiting for approval go on; returns how many.
    pub(crate) fn approve_imports(&mut self) -> usize {
        let now = Instant::now();
        let waiting = self
            .imports
            .iter_mut()
            .filter(|i| i.ended.is_none() && i.needs_approval && i.approved.is_none());
        waiting.map(|i| i.approved = Some(now)).count()
    }

    pub(crate) fn import_infos(&self) -> Vec<ImportInfo> {
        let now = Instant::now();
        self.imports.iter().map(|i| i.info(now)).collect()
    }

    /// Snapshots big segment `key`'s members for an export; returns its location.
    pub(crate) fn begin_export(
        &mut self,
        project: &str,
        environment: &str,
        key: &str,
    ) -> Result<String, ApiFailure> {
        let segment = self
            .segments
            .get(&crate::segment_id(project, environment, key))
            .ok_or_else(|| ApiFailure::new(404, "not_found", format!("Unknown segment `{key}`")))?;
        if !segment.unbounded {
            return Err(not_big(key, "exports"));
        }
        let empty = BTreeSet::new();
        let members = segment
            .included
            .get(&segment.unbounded_context_kind)
            .unwrap_or(&empty);
        let (file, content_type) =
            snapshot_file(members, self.export_header, self.faults.malformed_exports);
        let export = Export {
            id: new_id(),
            place: Place::new(project, environment, key),
            created: Instant::now(),
            creation_time: epoch_ms(),
            step: self.export_step,
            keys: members.len(),
            file,
            content_type,
            signature: (0..4)
                .map(|_| format!("{:016x}", fastrand::u64(..)))
                .collect(),
        };
        let location = export.location();
        self.exports.push(export);
        Ok(location)
    }

    /// `GET …/exports/{id}`'s answer, or 404.
    pub(crate) fn export_representation(
        &self,
        project: &str,
        environment: &str,
        key: &str,
        id: &str,
    ) -> Result<Value, ApiFailure> {
        self.exports
            .iter()
            .find(|x| x.id == id && x.place.is(project, environment, key))
            .map(|x| x.representation(Instant::now(), self.file_origin.as_deref()))
            .ok_or_else(|| ApiFailure::new(404, "not_found", format!("Unknown export `{id}`")))
    }

    pub(crate) fn export_infos(&self) -> Vec<ExportInfo> {
        let now = Instant::now();
        self.exports
            .iter()
            .map(|x| {
                let status = x.status(now);
                ExportInfo {
                    id: x.id.clone(),
                    project: x.place.project.clone(),
                    environment: x.place.environment.clone(),
                    segment_key: x.place.segment_key.clone(),
                    status,
                    keys: x.keys,
                    size_bytes: x.file.len(),
                    file_url: self
                        .file_origin
                        .as_deref()
                        .filter(|_| status == TransferStatus::Complete)
                        .map(|origin| x.file_url(origin)),
                }
            })
            .collect()
    }

    /// The file at `path` (`/exports/{id}.csv`) if `signature` is its export's and the export is complete.
    pub(crate) fn export_file(&self, path: &str, signature: Option<&str>) -> FileAnswer {
        let no_such_key =
            FileAnswer::Refused(404, "NoSuchKey", "The specified key does not exist.");
        let Some(id) = path
            .strip_prefix("/exports/")
            .and_then(|p| p.strip_suffix(".csv"))
        else {
            return no_such_key;
        };
        let Some(export) = self.exports.iter().find(|x| x.id == id) else {
            return no_such_key;
        };
        match signature {
            None => FileAnswer::Refused(
                403,
                "AccessDenied",
                "Request has expired or is not signed: send the presigned URL's query as it is.",
            ),
            Some(signature) if signature != export.signature => FileAnswer::Refused(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
            Some(_) if export.status(Instant::now()) != TransferStatus::Complete => no_such_key,
            Some(_) => FileAnswer::File(export.file.clone(), export.content_type),
        }
    }
}

/// The refusal of a big-segment operation on a standard segment.
pub fn not_big(key: &str, what: &str) -> ApiFailure {
    ApiFailure::invalid(format!(
        "segment `{key}` is not a big segment: {what} are for big segments only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_first_column_of_every_line_without_a_header() {
        let keys = parse_keys(b"key\r\nu1,extra,columns\n\n\"a,b\"\nu\xc3\xa9\n", 10).unwrap();
        assert_eq!(keys, ["key", "u1", "a,b", "u\u{e9}"]);
        let error = |data: &[u8], max| parse_keys(data, max).unwrap_err().message;
        assert_eq!(
            error(b"u1\n,x\n", 10),
            "line 2 of the file has an empty key"
        );
        assert_eq!(
            error(b"\xff\n", 10),
            "line 1 of the file has a key that is not UTF-8"
        );
        assert_eq!(
            error(b"a\nb\nc\n", 2),
            "the file holds more than 2 keys; import at most 2 a file, in several merge imports"
        );
        assert_eq!(error(b"\n\n", 2), "the file holds no keys");
    }

    #[test]
    fn an_export_quotes_keys_as_csv_needs_and_reads_back_as_an_import() {
        let keys: BTreeSet<String> = ["plain", "with,comma", "with\"quote"]
            .map(String::from)
            .into();
        let (file, content_type) = snapshot_file(&keys, true, false);
        assert_eq!(content_type, "text/csv");
        assert_eq!(
            &file[..],
            b"key\nplain\n\"with\"\"quote\"\n\"with,comma\"\n"
        );
        let back = parse_keys(&file, 10).unwrap();
        assert_eq!(back[1..], ["plain", "with\"quote", "with,comma"]);
        let (json, content_type) = snapshot_file(&keys, false, true);
        assert_eq!(content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<Vec<String>>(&json).unwrap().len(),
            3
        );
    }

    #[test]
    fn sizes_have_units() {
        assert_eq!(human_size(18), "18 B");
        assert_eq!(human_size(1_500), "1.5 KB");
        assert_eq!(human_size(150_000_000), "150.0 MB");
        assert_eq!(human_size(2_000_000_000), "2.0 GB");
    }
}
