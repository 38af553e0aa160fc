//! Where a sync's model SQL comes from: its file under `sql/`, or a dbt model that `model: ref('…')` names,
//! resolved through the dbt project's `target/manifest.json` (`manifest.rs`). A materialized model runs as
//! `SELECT * FROM <its relation>`, of which ldsync reads only the columns the sync names; an ephemeral model runs
//! as the compiled SQL the manifest holds. The exposures that tell the dbt project which LaunchDarkly segments
//! depend on its models are written in `exposures.rs`.

mod exposures;
mod manifest;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, DbtRef, Model, WarehouseConfig};
use crate::vocab::ErrorClass;

pub use exposures::{ExposureError, exposures};
use manifest::{Lookup, Node};
pub use manifest::{MANIFEST_SCHEMA, Manifest};

/// Why a `ref()` could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DbtError {
    #[error("{reference} names a dbt model, but connector.yaml has no `dbt:` section")]
    NotConfigured { reference: DbtRef },
    #[error(
        "no dbt manifest at {manifest}: run `dbt compile` or `dbt build` in the dbt project first, so that ref() \
         has a manifest to resolve against (or point dbt.manifest at it)"
    )]
    ManifestMissing { manifest: PathBuf },
    #[error("cannot read the dbt manifest {manifest}: {source}")]
    ManifestRead {
        manifest: PathBuf,
        source: std::io::Error,
    },
    #[error("{manifest} is not a dbt manifest ldsync can read: {source}")]
    ManifestInvalid {
        manifest: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{manifest} is a dbt manifest of schema {schema}; ldsync reads {MANIFEST_SCHEMA} (dbt 1.8 to 1.11): \
         build the project with one of those"
    )]
    ManifestSchema { manifest: PathBuf, schema: String },
    #[error(
        "the dbt manifest {manifest} was built for the `{adapter}` adapter, but warehouse.kind is {warehouse}: \
         ldsync queries the relations dbt built, so build the project with dbt-{warehouse} into the warehouse \
         connector.yaml names"
    )]
    Adapter {
        manifest: PathBuf,
        adapter: String,
        warehouse: &'static str,
    },
    #[error(
        "{reference}: the dbt manifest {manifest} has no model, seed or snapshot of that name{}",
        closest_text(closest)
    )]
    NotFound {
        manifest: PathBuf,
        reference: DbtRef,
        closest: Vec<String>,
    },
    #[error(
        "{reference} is ambiguous in the dbt manifest {manifest}: it names {}; say which with ref('package', 'name')",
        unique_ids.join(" and ")
    )]
    Ambiguous {
        manifest: PathBuf,
        reference: DbtRef,
        unique_ids: Vec<String>,
    },
    #[error(
        "{reference} is {unique_id}, which is disabled in the dbt project (manifest {manifest}): enable it, or \
         point the sync at another model"
    )]
    Disabled {
        manifest: PathBuf,
        reference: DbtRef,
        unique_id: String,
    },
    #[error(
        "{reference} is the ephemeral model {unique_id}, and the dbt manifest {manifest} holds no compiled SQL for \
         it: run `dbt compile` (or `dbt build`) in the dbt project, then try again"
    )]
    NotCompiled {
        manifest: PathBuf,
        reference: DbtRef,
        unique_id: String,
    },
    #[error(
        "{reference} is {unique_id}, and the dbt manifest {manifest} names no relation for it to read"
    )]
    NoRelation {
        manifest: PathBuf,
        reference: DbtRef,
        unique_id: String,
    },
}

fn closest_text(closest: &[String]) -> String {
    match closest {
        [] => "; it has none".to_string(),
        _ => format!("; the closest are: {}", closest.join(", ")),
    }
}

impl DbtError {
    /// Each says what to change in connector.yaml or the dbt project before running again.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

/// Why a sync's model SQL could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read the model {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Dbt(#[from] DbtError),
}

impl ModelError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ModelError::File { .. } => ErrorClass::Config,
            ModelError::Dbt(e) => e.class(),
        }
    }
}

/// A sync's model SQL, with the dbt model it came from when `model:` names one.
#[derive(Debug, Clone)]
pub struct ModelSql {
    pub sql: String,
    pub dbt: Option<DbtModel>,
}

/// The dbt model a `ref()` resolved to, as `validate` and `plan` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbtModel {
    /// `model.<package>.<name>`.
    pub unique_id: String,
    /// The relation the model's SQL reads; `None` for an ephemeral model, whose compiled SQL runs.
    pub relation: Option<String>,
    pub materialized: String,
    /// When dbt wrote the manifest, as the manifest says.
    pub generated_at: String,
    pub manifest: String,
}

/// The SQL of `model` for the sync named `sync`: its file's text, or the dbt model `ref()` names. A manifest
/// older than the dbt model's file, or than `dbt.max_manifest_age`, is logged as a warning.
pub fn model_sql(config: &Config, sync: &str, model: &Model) -> Result<ModelSql, ModelError> {
    match model {
        Model::File(name) => {
            let path = config.model_file(name);
            let sql = std::fs::read_to_string(&path)
                .map_err(|source| ModelError::File { path, source })?;
            Ok(ModelSql { sql, dbt: None })
        }
        Model::Dbt(reference) => Ok(resolve(config, sync, reference)?),
    }
}

fn resolve(config: &Config, sync: &str, reference: &DbtRef) -> Result<ModelSql, DbtError> {
    let (Some(path), Some(project_dir)) = (config.dbt_manifest(), config.dbt_project_dir()) else {
        return Err(DbtError::NotConfigured {
            reference: reference.clone(),
        });
    };
    let manifest = Manifest::load(&path)?;
    check_adapter(&manifest, &path, &config.warehouse)?;
    let node = find(&manifest, &path, reference)?;
    let sql = node_sql(node, &path, reference)?;
    warn_if_stale(config, sync, &path, &manifest, &project_dir, node);
    Ok(ModelSql {
        sql,
        dbt: Some(DbtModel {
            unique_id: node.unique_id.clone(),
            relation: node.relation_name.clone().filter(|_| !node.is_ephemeral()),
            materialized: node.config.materialized.clone().unwrap_or_default(),
            generated_at: manifest.metadata.generated_at.clone(),
            manifest: path.display().to_string(),
        }),
    })
}

/// The manifest must have been built for the kind of warehouse ldsync queries.
fn check_adapter(
    manifest: &Manifest,
    path: &Path,
    warehouse: &WarehouseConfig,
) -> Result<(), DbtError> {
    let kind = match warehouse {
        WarehouseConfig::DuckDb { .. } => "duckdb",
        WarehouseConfig::Postgres { .. } => "postgres",
    };
    match manifest.metadata.adapter_type.as_deref() {
        Some(adapter) if adapter != kind => Err(DbtError::Adapter {
            manifest: path.to_path_buf(),
            adapter: adapter.to_string(),
            warehouse: kind,
        }),
        _ => Ok(()),
    }
}

fn find<'m>(manifest: &'m Manifest, path: &Path, reference: &DbtRef) -> Result<&'m Node, DbtError> {
    let manifest_path = path.to_path_buf();
    let reference = reference.clone();
    match manifest.lookup(&reference) {
        Lookup::Found(node) => Ok(node),
        Lookup::Disabled(node) => Err(DbtError::Disabled {
            manifest: manifest_path,
            reference,
            unique_id: node.unique_id.clone(),
        }),
        Lookup::Ambiguous(nodes) => Err(DbtError::Ambiguous {
            manifest: manifest_path,
            reference,
            unique_ids: nodes.iter().map(|n| n.unique_id.clone()).collect(),
        }),
        Lookup::Missing(closest) => Err(DbtError::NotFound {
            manifest: manifest_path,
            reference,
            closest,
        }),
    }
}

/// What runs for `node`: its relation read whole, or an ephemeral model's compiled SQL.
fn node_sql(node: &Node, path: &Path, reference: &DbtRef) -> Result<String, DbtError> {
    if node.is_ephemeral() {
        return match node.compiled_code.as_deref() {
            Some(code) if !code.trim().is_empty() => Ok(code.to_string()),
            _ => Err(DbtError::NotCompiled {
                manifest: path.to_path_buf(),
                reference: reference.clone(),
                unique_id: node.unique_id.clone(),
            }),
        };
    }
    match &node.relation_name {
        Some(relation) => Ok(format!("SELECT * FROM {relation}")),
        None => Err(DbtError::NoRelation {
            manifest: path.to_path_buf(),
            reference: reference.clone(),
            unique_id: node.unique_id.clone(),
        }),
    }
}

/// Warns when the manifest may not say what the dbt project does now: its model's file changed after dbt wrote it,
/// or it is older than `dbt.max_manifest_age`.
fn warn_if_stale(
    config: &Config,
    sync: &str,
    path: &Path,
    manifest: &Manifest,
    project_dir: &Path,
    node: &Node,
) {
    let generated_at = &manifest.metadata.generated_at;
    let Ok(generated) = DateTime::parse_from_rfc3339(generated_at).map(|t| t.with_timezone(&Utc))
    else {
        return;
    };
    if let Some(file) = node
        .original_file_path
        .as_deref()
        .map(|f| project_dir.join(f))
        && let Some(changed) = modified(&file)
        && changed > generated
    {
        tracing::warn!(
            sync = %sync,
            "the dbt manifest {} was generated at {generated_at}, before {} was changed at {}: ref() resolves \
             against the manifest as it is on disk; run `dbt compile` or `dbt build` to bring it up to date",
            path.display(),
            file.display(),
            changed.to_rfc3339(),
        );
    }
    let max_age = config.dbt.as_ref().and_then(|d| d.max_manifest_age);
    if let Some(max_age) = max_age
        && let Ok(age) = (Utc::now() - generated).to_std()
        && age > max_age
    {
        tracing::warn!(
            sync = %sync,
            "the dbt manifest {} was generated at {generated_at}, {} ago, longer than dbt.max_manifest_age ({}) \
             at {}: run `dbt build` to bring it up to date",
            path.display(),
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age),
            Utc::now().to_rfc3339(),
        );
    }
}

fn modified(file: &Path) -> Option<DateTime<Utc>> {
    let time: SystemTime = std::fs::metadata(file).ok()?.modified().ok()?;
    Some(time.into())
}
