//! A strict in-memory stand-in for LaunchDarkly's segments API, on 127.0.0.1. ldsync's tests start it in-process
//! ([`Emulator::start`]) and run the real `ldsync` binary against it; a person can start it by hand
//! (`cargo run -p ldsync-emulator`) to try ldsync without an account.
//!
//! It is strict where LaunchDarkly is strict (tokens, `LD-API-Version`, the content type of every body, the
//! semantic-patch content type, `environmentKey`, 1,500 target operations a request, 15,000 targets in a standard
//! segment, unknown instructions and context kinds, a key both included and excluded, target instructions on big
//! segments and `POST …/contexts` on standard ones), records every request, and can be told to misbehave
//! ([`Faults`]): rate limits with each shape of 429, server errors, slow answers, lost acknowledgements, 409
//! optimistic-locking conflicts, a skewed clock, keys refused for good, and a racing segment creator. It also
//! takes metric events on the import API ([`events`]), de-duplicating batches by payload ID.
//!
//! Big segments also take CSV imports (`POST …/{segmentKey}/imports`, `multipart/form-data`, merge or replace):
//! each answers 204 with its `Location`, goes `preparing` → `in_progress` → `complete` over
//! [`EmulatorConfig::import_step`]s, and changes the members when it completes, polled or not; a second import in
//! the environment meanwhile is refused 409, and LaunchDarkly's limits (40 MB, 1,000,000 keys, no header row) hold.
//! Imports can be made to stop or to wait for [`Emulator::approve_imports`]. Exports (`POST …/{segmentKey}/exports`)
//! snapshot the members; once complete, their file is served by a second listener, the file host, at a presigned
//! URL on another origin (`http://localhost:PORT`) that, like S3, refuses any `Authorization` header and records
//! every request ([`Emulator::file_requests`]).
//!
//! Modules: [`segments`] (the data and the changes the API makes), [`faults`] (what to get wrong), `transfers`
//! (imports and exports), `server` (HTTP), `files` (the file host).

pub mod events;
pub mod faults;
mod files;
pub mod segments;
mod server;
mod transfers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

pub use faults::{Faults, RateLimit, StopImports, ThrottleHeaders};
use faults::{Window, epoch_ms};
pub use files::{FileRequest, serve_files};
use segments::{ApiFailure, Segment};
pub use server::serve;
use transfers::{Export, Import};
pub use transfers::{
    ExportInfo, ImportInfo, ImportLimits, ImportMode, MAX_IMPORT_BYTES, MAX_IMPORT_KEYS,
    TransferStatus,
};

/// A token the emulator accepts, and the role actions it may perform.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    pub token: String,
    /// `None`: every action; otherwise names such as `createSegment`, `updateIncluded`, `updateExcluded`,
    /// `updateName`, `updateTags`, `deleteSegment`.
    pub actions: Option<Vec<String>>,
}

/// What the emulator serves.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// 0: any free port.
    pub port: u16,
    pub tokens: Vec<TokenGrant>,
    /// Project keys and their environment keys.
    pub projects: Vec<(String, Vec<String>)>,
    /// The context kinds every project knows; targets of any other kind are refused.
    pub context_kinds: Vec<String>,
    /// The status of a create whose key is taken. LaunchDarkly's is unconfirmed: 409 (the default) or 400.
    pub duplicate_status: u16,
    /// The status of a call the token's role does not allow: 403 (the default) or 401, both allowed by the API's
    /// documentation.
    pub role_denial_status: u16,
    pub faults: Faults,
    /// The file host's port (exports' files), on 127.0.0.1; 0: any free port.
    pub file_port: u16,
    /// How long a big-segment import stays in each of `preparing` and `in_progress`.
    pub import_step: Duration,
    /// How long a big-segment export stays in each of `preparing` and `in_progress`.
    pub export_step: Duration,
    /// How much one import's file may hold: LaunchDarkly's 40 MB and 1,000,000 keys by default.
    pub import_limits: ImportLimits,
    /// Whether an export's file starts with a header row, `key`; LaunchDarkly's format is undocumented.
    pub export_header: bool,
}

/// The token a default emulator accepts, with every action.
pub const DEFAULT_TOKEN: &str = "api-emulator-token";

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            port: 0,
            tokens: vec![TokenGrant {
                token: DEFAULT_TOKEN.into(),
                actions: None,
            }],
            projects: vec![("default".into(), vec!["production".into(), "test".into()])],
            context_kinds: ["user", "organization", "device"]
                .map(String::from)
                .to_vec(),
            duplicate_status: 409,
            role_denial_status: 403,
            faults: Faults::default(),
            file_port: 0,
            import_step: Duration::from_millis(20),
            export_step: Duration::from_millis(20),
            import_limits: ImportLimits::default(),
            export_header: false,
        }
    }
}

/// A segment to put in place directly, bypassing the API and its limits.
#[derive(Clone, Debug)]
pub struct SegmentSeed {
    pub key: String,
    pub name: String,
    pub unbounded: bool,
    /// A big segment's context kind; ignored for standard segments.
    pub context_kind: String,
    /// Context kind and keys.
    pub included: Vec<(String, Vec<String>)>,
    pub excluded: Vec<(String, Vec<String>)>,
}

impl SegmentSeed {
    /// A standard segment whose included targets of `context_kind` are `included`.
    pub fn standard(key: &str, context_kind: &str, included: &[&str]) -> Self {
        SegmentSeed {
            key: key.into(),
            name: key.into(),
            unbounded: false,
            context_kind: context_kind.into(),
            included: vec![(
                context_kind.into(),
                included.iter().map(|k| k.to_string()).collect(),
            )],
            excluded: vec![],
        }
    }
}

/// A request the emulator saw, and what it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Without the query.
    pub path: String,
    pub query: Option<String>,
    /// Verb and URL pattern, e.g. `PATCH /api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}`.
    pub route: String,
    /// The status answered; 0 when the connection was closed after applying the change.
    pub status: u16,
    /// The JSON body; for a big-segment import, a summary of the form instead of its file:
    /// `{"mode", "waitOnApprovals", "file": {"filename", "contentType", "bytes", "keys"}}`, each as sent (`keys`: the
    /// file's count of keys, null if it could not be read; `file` null without a file).
    pub body: Option<Value>,
    /// Whether the request changed stored state.
    pub applied: bool,
    pub content_type: Option<String>,
    pub api_version: Option<String>,
    pub user_agent: Option<String>,
    /// The `Authorization` header as sent: which client sent the request, when several share the emulator.
    pub authorization: Option<String>,
    /// `X-LaunchDarkly-Payload-ID` (metric imports).
    pub payload_id: Option<String>,
    /// The `Location` header answered (a big-segment import or export begun).
    pub location: Option<String>,
}

/// Everything the emulator holds.
pub struct State {
    tokens: Vec<TokenGrant>,
    projects: Vec<(String, Vec<String>)>,
    context_kinds: BTreeSet<String>,
    duplicate_status: u16,
    role_denial_status: u16,
    /// By (project, environment, key).
    segments: BTreeMap<(String, String, String), Segment>,
    /// Segments another writer creates just before a create of the same key arrives: a creation race.
    created_elsewhere: BTreeMap<(String, String, String), Segment>,
    /// Custom events imported, by (project, environment), in arrival order.
    events: BTreeMap<(String, String), Vec<Value>>,
    /// `X-LaunchDarkly-Payload-ID`s already imported: a batch sent again is recognised and not stored twice.
    payloads: BTreeSet<String>,
    requests: Vec<RecordedRequest>,
    faults: Faults,
    rng: fastrand::Rng,
    window: Window,
    /// Big-segment imports and exports, in the order they began.
    imports: Vec<Import>,
    exports: Vec<Export>,
    /// Imports begun since the faults were set: what [`StopImports::Nth`] counts.
    imports_begun: u32,
    import_step: Duration,
    export_step: Duration,
    import_limits: ImportLimits,
    export_header: bool,
    /// The file host's `http://localhost:PORT`, once it listens.
    file_origin: Option<String>,
    file_requests: Vec<FileRequest>,
}

/// The state, shared by the server's connections and the [`Emulator`] handle.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<State>>);

impl Shared {
    pub fn new(config: &EmulatorConfig) -> Shared {
        Shared(Arc::new(Mutex::new(State {
            tokens: config.tokens.clone(),
            projects: config.projects.clone(),
            context_kinds: config.context_kinds.iter().cloned().collect(),
            duplicate_status: config.duplicate_status,
            role_denial_status: config.role_denial_status,
            segments: BTreeMap::new(),
            created_elsewhere: BTreeMap::new(),
            events: BTreeMap::new(),
            payloads: BTreeSet::new(),
            requests: Vec::new(),
            rng: fastrand::Rng::with_seed(config.faults.seed),
            faults: config.faults.clone(),
            window: Window::new(),
            imports: Vec::new(),
            exports: Vec::new(),
            imports_begun: 0,
            import_step: config.import_step,
            export_step: config.export_step,
            import_limits: config.import_limits,
            export_header: config.export_header,
            file_origin: None,
            file_requests: Vec::new(),
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().expect("emulator state lock"))
    }

    fn record(&self, request: RecordedRequest) -> usize {
        self.with(|s| {
            s.requests.push(request);
            s.requests.len() - 1
        })
    }

    fn finish(&self, index: usize, status: u16, applied: bool, location: Option<String>) {
        self.with(|s| {
            if let Some(request) = s.requests.get_mut(index) {
                request.status = status;
                request.applied = applied;
                request.location = location;
            }
        });
    }

    fn environments(&self, project: &str) -> Result<Vec<String>, ApiFailure> {
        self.with(|s| {
            s.projects
                .iter()
                .find(|(p, _)| p == project)
                .map(|(_, e)| e.clone())
        })
        .ok_or_else(|| ApiFailure::new(404, "not_found", format!("Unknown project `{project}`")))
    }

    fn check_environment(&self, project: &str, environment: &str) -> Result<(), ApiFailure> {
        if self.environments(project)?.iter().any(|e| e == environment) {
            Ok(())
        } else {
            Err(ApiFailure::new(
                404,
                "not_found",
                format!("Unknown environment `{environment}`"),
            ))
        }
    }

    fn segment(&self, project: &str, environment: &str, key: &str) -> Result<Segment, ApiFailure> {
        self.view(project, environment, key, |_, segment| segment.clone())
    }

    /// What `look` makes of the segment, without copying it (a big segment may hold millions of members), or 404.
    fn view<T>(
        &self,
        project: &str,
        environment: &str,
        key: &str,
        look: impl FnOnce(&State, &Segment) -> T,
    ) -> Result<T, ApiFailure> {
        self.check_environment(project, environment)?;
        self.with(|s| {
            s.segments
                .get(&segment_id(project, environment, key))
                .map(|segment| look(s, segment))
        })
        .ok_or_else(|| ApiFailure::new(404, "not_found", format!("Unknown segment `{key}`")))
    }

    fn insert_new(
        &self,
        project: &str,
        environment: &str,
        segment: Segment,
    ) -> Result<(), ApiFailure> {
        let id = segment_id(project, environment, &segment.key);
        self.with(|s| {
            if let Some(racer) = s.created_elsewhere.remove(&id) {
                s.segments.insert(id.clone(), racer);
            }
            if s.segments.contains_key(&id) {
                let (status, code) = match s.duplicate_status {
                    409 => (409, "conflict"),
                    other => (other, "invalid_request"),
                };
                return Err(ApiFailure::new(
                    status,
                    code,
                    format!("segment with key `{}` already exists", segment.key),
                ));
            }
            s.segments.insert(id, segment);
            Ok(())
        })
    }

    /// Stores a batch of imported events, unless its payload ID was imported before; returns whether it stored it.
    fn import(
        &self,
        project: &str,
        environment: &str,
        payload: Option<String>,
        events: Vec<Value>,
    ) -> bool {
        self.with(|s| {
            if let Some(payload) = payload
                && !s.payloads.insert(payload)
            {
                return false;
            }
            s.events
                .entry((project.to_string(), environment.to_string()))
                .or_default()
                .extend(events);
            true
        })
    }

    /// Applies a big segment's `POST …/contexts` body in place; a change gets a new version and time.
    fn change_members(
        &self,
        project: &str,
        environment: &str,
        key: &str,
        body: &Value,
    ) -> Result<bool, ApiFailure> {
        self.with(|s| {
            let segment = s
                .segments
                .get_mut(&segment_id(project, environment, key))
                .ok_or_else(|| {
                    ApiFailure::new(404, "not_found", format!("Unknown segment `{key}`"))
                })?;
            let changed = segment.apply_members(body)?;
            if changed {
                segment.version += 1;
                segment.last_modified = epoch_ms();
            }
            Ok(changed)
        })
    }

    /// Refuses targets of a context kind the project does not know.
    fn check_context_kind(&self, context_kind: &str) -> Result<(), ApiFailure> {
        if self.with(|s| s.context_kinds.contains(context_kind)) {
            return Ok(());
        }
        Err(ApiFailure::invalid(format!(
            "unknown context kind `{context_kind}`: create it in the project before targeting it"
        )))
    }

    /// Stores `next` in place of `current`, with a new version and time if anything changed; returns what is stored.
    fn save(
        &self,
        project: &str,
        environment: &str,
        current: &Segment,
        mut next: Segment,
    ) -> Segment {
        if !next.differs_from(current) {
            return current.clone();
        }
        next.version = current.version + 1;
        next.last_modified = epoch_ms();
        let id = segment_id(project, environment, &next.key);
        self.with(|s| s.segments.insert(id, next.clone()));
        next
    }

    fn snapshot(&self) -> Value {
        self.with(|s| {
            let segments: BTreeMap<String, Value> = s
                .segments
                .iter()
                .map(|((p, e, k), segment)| {
                    (format!("{p}/{e}/{k}"), s.representation(p, e, segment))
                })
                .collect();
            json!({"segments": segments, "route_counts": count_routes(&s.requests)})
        })
    }
}

/// The segment a seed describes.
fn segment_of(seed: SegmentSeed) -> Segment {
    let mut segment = Segment::new(
        &seed.key,
        &seed.name,
        seed.unbounded,
        &seed.context_kind,
        epoch_ms(),
    );
    let targets = |lists: Vec<(String, Vec<String>)>| {
        let mut targets = segments::Targets::new();
        for (kind, keys) in lists.into_iter().filter(|(_, keys)| !keys.is_empty()) {
            targets.entry(kind).or_default().extend(keys);
        }
        targets
    };
    segment.included = targets(seed.included);
    segment.excluded = targets(seed.excluded);
    segment
}

/// How segments are filed: by project, environment and key.
fn segment_id(project: &str, environment: &str, key: &str) -> (String, String, String) {
    (
        project.to_string(),
        environment.to_string(),
        key.to_string(),
    )
}

fn count_routes(requests: &[RecordedRequest]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for request in requests {
        *counts.entry(request.route.clone()).or_default() += 1;
    }
    counts
}

/// A running emulator on its own thread; dropping it stops the server and the file host.
pub struct Emulator {
    address: SocketAddr,
    file_address: SocketAddr,
    shared: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Starts serving, the API and the file host, on 127.0.0.1 and returns once both listen.
    pub fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let bind = |port: u16| -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            listener.set_nonblocking(true)?;
            let address = listener.local_addr()?;
            Ok((listener, address))
        };
        let (listener, address) = bind(config.port)?;
        let (file_listener, file_address) = bind(config.file_port)?;
        let shared = Shared::new(&config);
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let server_state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ldsync-emulator".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tokio_listener = |listener| {
                        tokio::net::TcpListener::from_std(listener).expect("a listening socket")
                    };
                    let files = serve_files(tokio_listener(file_listener), server_state.clone());
                    let api = serve(tokio_listener(listener), server_state, async {
                        let _ = stop.await;
                    });
                    tokio::select! {
                        () = api => {}
                        () = files => {}
                    }
                });
            })?;
        Ok(Emulator {
            address,
            file_address,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, the value for `launchdarkly.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `http://localhost:PORT`, the file host's origin: another origin than [`Emulator::base_url`]'s.
    pub fn file_base_url(&self) -> String {
        format!("http://localhost:{}", self.file_address.port())
    }

    /// Takes effect from the next request; starts a fresh rate-limit window and a fresh count of imports for
    /// [`StopImports::Nth`].
    pub fn set_faults(&self, faults: Faults) {
        self.shared.with(|s| {
            s.rng = fastrand::Rng::with_seed(faults.seed);
            s.faults = faults;
            s.window = Window::new();
            s.imports_begun = 0;
        });
    }

    /// Creates or replaces a segment directly.
    pub fn seed_segment(&self, project: &str, environment: &str, seed: SegmentSeed) {
        let segment = segment_of(seed);
        let id = segment_id(project, environment, &segment.key);
        self.shared.with(|s| s.segments.insert(id, segment));
    }

    /// Makes another writer create `seed` just before the next create of its key arrives, so that the create finds
    /// the key taken: the race of two clients creating one segment.
    pub fn create_before_next_create(&self, project: &str, environment: &str, seed: SegmentSeed) {
        let segment = segment_of(seed);
        let id = segment_id(project, environment, &segment.key);
        self.shared
            .with(|s| s.created_elsewhere.insert(id, segment));
    }

    /// The segment as a GET would return it.
    pub fn segment(&self, project: &str, environment: &str, key: &str) -> Option<Value> {
        self.shared.with(|s| {
            s.advance();
            s.segments
                .get(&segment_id(project, environment, key))
                .map(|seg| s.representation(project, environment, seg))
        })
    }

    /// The included targets of `context_kind` (standard) or the included members (big).
    pub fn included(
        &self,
        project: &str,
        environment: &str,
        key: &str,
        context_kind: &str,
    ) -> BTreeSet<String> {
        self.shared.with(|s| {
            s.advance();
            s.segments
                .get(&segment_id(project, environment, key))
                .and_then(|seg| seg.included.get(context_kind).cloned())
                .unwrap_or_default()
        })
    }

    /// Every big-segment import, in the order they began, as they stand now (those whose time has come applied).
    pub fn imports(&self) -> Vec<ImportInfo> {
        self.shared.with(|s| {
            s.advance();
            s.import_infos()
        })
    }

    /// Lets every import waiting in `pending_approval` ([`Faults::imports_need_approval`]) go on to `in_progress`
    /// and `complete`; returns how many it let go.
    pub fn approve_imports(&self) -> usize {
        self.shared.with(|s| s.approve_imports())
    }

    /// Every big-segment export, in the order they began.
    pub fn exports(&self) -> Vec<ExportInfo> {
        self.shared.with(|s| s.export_infos())
    }

    /// Every request the file host saw, in arrival order.
    pub fn file_requests(&self) -> Vec<FileRequest> {
        self.shared.with(|s| s.file_requests.clone())
    }

    /// The custom events imported into `project`/`environment`, in arrival order (each batch once).
    pub fn events(&self, project: &str, environment: &str) -> Vec<Value> {
        self.shared.with(|s| {
            s.events
                .get(&(project.to_string(), environment.to_string()))
                .cloned()
                .unwrap_or_default()
        })
    }

    /// Every request seen, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.with(|s| s.requests.clone())
    }

    pub fn clear_requests(&self) {
        self.shared.with(|s| s.requests.clear());
    }

    /// Requests seen per route.
    pub fn route_counts(&self) -> BTreeMap<String, u64> {
        self.shared.with(|s| count_routes(&s.requests))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
