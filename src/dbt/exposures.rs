//! `ldsync dbt exposures`: the dbt exposure YAML that tells a dbt project which LaunchDarkly segments its models
//! feed, one `type: application` exposure per segment sync whose model is a `ref()`, so that dbt's lineage (and
//! `dbt ls --select +exposure:…`) shows them and a team can keep the file in the project and check it for drift.

use serde::Serialize;

use crate::config::{Config, DbtOwner, DbtRef, Mode, SegmentSyncConfig};
use crate::vocab::ErrorClass;

/// Why the exposures could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error("no sync names a dbt model (model: ref('…')), so there are no exposures to write")]
    NoDbtSyncs,
    #[error(
        "dbt exposures need an owner: add `owner: {{name: …, email: …}}` to the `dbt:` section of connector.yaml"
    )]
    NoOwner,
    #[error(
        "syncs `{first}` and `{second}` would both be the exposure `{name}` (dbt names take letters, digits and \
         `_`); rename one of them"
    )]
    NameClash {
        name: String,
        first: String,
        second: String,
    },
    #[error("cannot write the exposures as YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

impl ExposureError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ExposureError::Yaml(_) => ErrorClass::Internal,
            _ => ErrorClass::Config,
        }
    }
}

/// A dbt properties file holding exposures.
#[derive(Serialize)]
struct ExposureFile {
    version: u32,
    exposures: Vec<Exposure>,
}

#[derive(Serialize)]
struct Exposure {
    name: String,
    label: String,
    #[serde(rename = "type")]
    kind: &'static str,
    url: String,
    description: String,
    depends_on: Vec<String>,
    owner: DbtOwner,
    meta: Meta,
}

#[derive(Serialize)]
struct Meta {
    ldsync: SyncMeta,
}

/// What the sync does, under `meta.ldsync`.
#[derive(Serialize)]
struct SyncMeta {
    sync: String,
    segment: String,
    project: String,
    environment: String,
    mode: Mode,
    context_kind: String,
}

/// The exposures of `config`'s segment syncs that name a dbt model, as a dbt properties file.
pub fn exposures(config: &Config) -> Result<String, ExposureError> {
    let owner = config
        .dbt
        .as_ref()
        .and_then(|d| d.owner.clone())
        .ok_or(ExposureError::NoOwner)?;
    let mut exposures: Vec<(&str, Exposure)> = Vec::new();
    for sync in &config.syncs {
        let Some(reference) = sync.model.dbt() else {
            continue;
        };
        let exposure = exposure(config, sync, reference, owner.clone());
        if let Some((first, _)) = exposures.iter().find(|(_, e)| e.name == exposure.name) {
            return Err(ExposureError::NameClash {
                name: exposure.name,
                first: first.to_string(),
                second: sync.name.clone(),
            });
        }
        exposures.push((&sync.name, exposure));
    }
    if exposures.is_empty() {
        return Err(ExposureError::NoDbtSyncs);
    }
    let file = ExposureFile {
        version: 2,
        exposures: exposures.into_iter().map(|(_, e)| e).collect(),
    };
    Ok(serde_yaml_ng::to_string(&file)?)
}

fn exposure(
    config: &Config,
    sync: &SegmentSyncConfig,
    reference: &DbtRef,
    owner: DbtOwner,
) -> Exposure {
    let ld = &config.launchdarkly;
    Exposure {
        name: exposure_name(&sync.name),
        label: format!("ldsync: {}", sync.name),
        kind: "application",
        url: format!(
            "{}/projects/{}/segments/{}/targeting?env={}&selected-env={}",
            ld.base_url, ld.project, sync.segment, ld.environment, ld.environment
        ),
        description: format!(
            "ldsync's `{}` sync: {} the `{}` contexts of {reference} into the LaunchDarkly segment `{}` \
             (project `{}`, environment `{}`).",
            sync.name,
            match sync.mode {
                Mode::Add => "adds",
                Mode::Remove => "removes",
                Mode::Mirror => "mirrors",
            },
            sync.context_kind,
            sync.segment,
            ld.project,
            ld.environment,
        ),
        depends_on: vec![reference.to_string()],
        owner,
        meta: Meta {
            ldsync: SyncMeta {
                sync: sync.name.clone(),
                segment: sync.segment.clone(),
                project: ld.project.clone(),
                environment: ld.environment.clone(),
                mode: sync.mode,
                context_kind: sync.context_kind.clone(),
            },
        },
    }
}

/// A dbt resource name for the sync: `ldsync_` and its name, with what dbt does not take in a name as `_`.
fn exposure_name(sync: &str) -> String {
    let name: String = sync
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("ldsync_{name}")
}
