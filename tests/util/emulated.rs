//! The example project against an in-process LaunchDarkly emulator, and the ways sync tests read what happened:
//! the segment's members, the request log, the checkpoint left on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use ldsync::history::{self, RunOutcome, RunRecord};
use ldsync::state::{LocalStore, Store};
use ldsync_emulator::{Emulator, EmulatorConfig, RecordedRequest, SegmentSeed, TokenGrant};
use serde_json::Value;

use super::*;

pub const TOKEN: &str = "api-emulator-token";
/// A token whose role may read but not change anything (see [`Setup::with_reader`]).
pub const READER: &str = "api-reader";
pub const SEGMENTS: &str = "/api/v2/segments/default/production";

/// The example project pointed at an emulator that holds its four segments.
pub struct Setup {
    pub project: Project,
    pub emulator: Emulator,
}

impl Setup {
    pub fn new() -> Setup {
        Setup::with(EmulatorConfig::default())
    }

    pub fn with(config: EmulatorConfig) -> Setup {
        Setup::for_project(Project::example(), config)
    }

    /// `project` (a copy of the example) pointed at an emulator started with `config`.
    pub fn for_project(project: Project, config: EmulatorConfig) -> Setup {
        let emulator = Emulator::start(config).unwrap();
        project.edit_config(
            "instance: us ",
            &format!("base_url: {} ", emulator.base_url()),
        );
        let setup = Setup { project, emulator };
        for segment in [
            "pro-users",
            "winback-experiment",
            "enterprise-orgs",
            "beta-testers",
        ] {
            setup.seed(segment, &[]);
        }
        setup
    }

    /// An emulator that also accepts `api-reader`, a token whose role may read but change nothing.
    pub fn with_reader(mut config: EmulatorConfig) -> Setup {
        config.tokens.push(TokenGrant {
            token: READER.into(),
            actions: Some(vec![]),
        });
        Setup::with(config)
    }

    pub fn seed(&self, key: &str, included: &[&str]) {
        let kind = if key == "enterprise-orgs" {
            "organization"
        } else {
            "user"
        };
        self.emulator.seed_segment(
            "default",
            "production",
            SegmentSeed::standard(key, kind, included),
        );
    }

    pub fn sync(&self, day: &str, args: &[&str]) -> Output {
        self.sync_with_token(day, TOKEN, args)
    }

    pub fn sync_with_token(&self, day: &str, token: &str, args: &[&str]) -> Output {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        self.project
            .command(day, &all)
            .env("LD_ACCESS_TOKEN", token)
            .output()
            .unwrap()
    }

    /// The segment requests seen (the metric imports of the example's events sync left out).
    pub fn segment_requests(&self) -> Vec<RecordedRequest> {
        self.emulator
            .requests()
            .into_iter()
            .filter(|r| !r.path.starts_with("/v2/event-data-import/"))
            .collect()
    }

    /// The custom events received, counted by event key.
    pub fn events_by_key(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for event in self.emulator.events("default", "production") {
            *counts
                .entry(event["key"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        counts
    }

    pub fn members(&self, segment: &str, kind: &str) -> BTreeSet<String> {
        self.emulator
            .included("default", "production", segment, kind)
    }

    pub fn checkpoint(&self, sync: &str) -> Option<BTreeSet<String>> {
        checkpoint_keys(&self.project, sync)
    }

    pub fn manifest_bytes(&self, sync: &str) -> Option<Vec<u8>> {
        std::fs::read(
            self.project
                .path(&format!(".ldsync/state/{sync}/manifest.json")),
        )
        .ok()
    }
}

pub fn checkpoint_keys(project: &Project, sync: &str) -> Option<BTreeSet<String>> {
    let config = project.config();
    let checkpoint = LocalStore::new(config.state_dir()).load(sync).unwrap()?;
    let mut keys = BTreeSet::new();
    for batch in checkpoint.keys().unwrap() {
        keys.extend(batch.unwrap().iter().flatten().map(str::to_string));
    }
    Some(keys)
}

pub fn ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// `(method, path, instruction kind, values)` of each request, the way a reviewer reads a request log.
pub fn described(requests: &[RecordedRequest]) -> Vec<(String, String, String, Vec<String>)> {
    requests
        .iter()
        .map(|r| {
            let (kind, values) = match &r.body {
                Some(body) if body.get("instructions").is_some() => {
                    let instruction = &body["instructions"][0];
                    (
                        instruction["kind"].as_str().unwrap().to_string(),
                        string_list(&instruction["values"]),
                    )
                }
                Some(body) if body.get("included").is_some() => {
                    let (side, keys) = body["included"].as_object().unwrap().iter().next().unwrap();
                    (format!("included.{side}"), string_list(keys))
                }
                Some(body) => (body["key"].as_str().unwrap_or("?").to_string(), vec![]),
                None => (String::new(), vec![]),
            };
            (r.method.clone(), r.path.clone(), kind, values)
        })
        .collect()
}

/// The requests a sync with changes makes: a GET of the segment, then its batches, adds first.
pub fn expected_requests(
    segment: &str,
    adds: &BTreeSet<String>,
    removes: &BTreeSet<String>,
    batch_size: usize,
) -> Vec<(String, String, String, Vec<String>)> {
    let path = format!("{SEGMENTS}/{segment}");
    let mut requests = vec![("GET".to_string(), path.clone(), String::new(), vec![])];
    for (instruction, keys) in [
        ("addIncludedTargets", adds),
        ("removeIncludedTargets", removes),
    ] {
        let keys: Vec<String> = keys.iter().cloned().collect();
        for chunk in keys.chunks(batch_size) {
            requests.push((
                "PATCH".to_string(),
                path.clone(),
                instruction.to_string(),
                chunk.to_vec(),
            ));
        }
    }
    requests
}

pub fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    a.difference(b).cloned().collect()
}

/// Sends pro-users in batches of `size` keys.
pub fn small_batches(setup: &Setup, size: usize) {
    setup.project.edit_config(
        "    schedule: 4h\n",
        &format!("    schedule: 4h\n    batch_size: {size}\n"),
    );
}

/// How many batches LaunchDarkly has applied to segments so far.
pub fn applied_patches(setup: &Setup) -> usize {
    setup
        .emulator
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.applied)
        .count()
}

/// How many requests LaunchDarkly answered with `status`.
pub fn answered(setup: &Setup, status: u16) -> usize {
    setup
        .emulator
        .requests()
        .iter()
        .filter(|r| r.status == status)
        .count()
}

/// Whether LaunchDarkly saw only reads: nothing was created or changed.
pub fn only_reads(setup: &Setup) -> bool {
    setup.emulator.requests().iter().all(|r| r.method == "GET")
}

/// The batches a run of pro-users recorded as acknowledged in its journal: (run id, batch index).
pub fn acknowledged_in_journal(project: &Project) -> BTreeSet<(String, usize)> {
    let Ok(text) = std::fs::read_to_string(project.path(".ldsync/state/pro-users/journal.jsonl"))
    else {
        return BTreeSet::new();
    };
    let mut run = String::new();
    let mut acknowledged = BTreeSet::new();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match record["record"].as_str() {
            Some("run") => run = record["run_id"].as_str().unwrap().to_string(),
            Some("ack") => {
                acknowledged.insert((run.clone(), record["index"].as_u64().unwrap() as usize));
            }
            _ => {}
        }
    }
    acknowledged
}

/// Fails if any PATCH in `requests` carries a batch that `acknowledged` (run id, batch index) says was acknowledged.
pub fn assert_not_resent(requests: &[RecordedRequest], acknowledged: &BTreeSet<(String, usize)>) {
    for request in requests.iter().filter(|r| r.method == "PATCH") {
        let comment = request.body.as_ref().unwrap()["comment"].as_str().unwrap();
        for (run, index) in acknowledged {
            let resent = format!("run {run}: ");
            let batch = format!(" batch {} of ", index + 1);
            assert!(
                !(comment.contains(&resent) && comment.contains(&batch)),
                "acknowledged batch {index} of {run} was sent again: {comment}"
            );
        }
    }
}

/// The project's local store.
pub fn local_store(setup: &Setup) -> Store {
    Store::Local(LocalStore::new(setup.project.path(".ldsync/state")))
}

/// The runs of `sync` its history records, oldest first.
pub fn runs(setup: &Setup, sync: &str) -> Vec<RunRecord> {
    history::read(&local_store(setup), sync).unwrap()
}

/// Whether LaunchDarkly holds a batch it has not answered yet (held back by [`Faults::latency`]).
///
/// [`Faults::latency`]: ldsync_emulator::Faults::latency
pub fn patch_in_flight(setup: &Setup) -> bool {
    setup
        .emulator
        .requests()
        .iter()
        .any(|r| r.method == "PATCH" && r.status == 0)
}

/// `run` of pro-users was stopped by the first shutdown signal, after its request in flight, and left the checkpoint
/// where it was.
pub fn assert_interrupted_leaving_the_checkpoint(setup: &Setup, run: &RunRecord) {
    assert_eq!(run.outcome, RunOutcome::Interrupted);
    let error = run.error.as_deref().unwrap();
    assert!(
        error.contains("stopped by a shutdown signal after"),
        "{error}"
    );
    assert!(
        setup.checkpoint("pro-users").is_none(),
        "the checkpoint did not move"
    );
}
