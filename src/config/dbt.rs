//! `dbt:` and `model: ref('…')`: where the dbt project and its manifest are, who owns the syncs in the exposures
//! ldsync writes for it, and a sync's model named as a dbt model rather than a file under `sql/`. No I/O.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::fields::{duration, model_file_name};
use super::raw::RawDbt;
use super::visit::{from_map, from_str};

/// Where a sync's model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// `sql/<name>.sql` beside connector.yaml.
    File(String),
    /// A dbt model, resolved through the dbt project's manifest.
    Dbt(DbtRef),
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::File(name) => f.write_str(name),
            Model::Dbt(reference) => reference.fmt(f),
        }
    }
}

impl Model {
    /// The dbt model it names, if it names one.
    pub fn dbt(&self) -> Option<&DbtRef> {
        match self {
            Model::Dbt(reference) => Some(reference),
            Model::File(_) => None,
        }
    }
}

/// `ref('name')` or `ref('package', 'name')`, as dbt writes a reference to a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbtRef {
    pub package: Option<String>,
    pub name: String,
}

impl fmt::Display for DbtRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.package {
            Some(package) => write!(f, "ref('{package}', '{}')", self.name),
            None => write!(f, "ref('{}')", self.name),
        }
    }
}

const REF_RULE: &str = "name a dbt model as ref('name') or ref('package', 'name')";

impl DbtRef {
    /// Reads `ref('name')` or `ref('package', 'name')` (either quote); `None` when `text` is not a `ref(…)` at all.
    fn parse(text: &str) -> Option<Result<DbtRef, String>> {
        let inner = text.trim().strip_prefix("ref")?.trim_start();
        let inner = inner.strip_prefix('(')?;
        let Some(inner) = inner.trim_end().strip_suffix(')') else {
            return Some(Err(format!("model `{text}`: {REF_RULE}")));
        };
        let args: Option<Vec<String>> = inner.split(',').map(quoted_name).collect();
        Some(match args.as_deref() {
            Some([name]) => Ok(DbtRef {
                package: None,
                name: name.clone(),
            }),
            Some([package, name]) => Ok(DbtRef {
                package: Some(package.clone()),
                name: name.clone(),
            }),
            _ => Err(format!("model `{text}`: {REF_RULE}")),
        })
    }
}

/// A name in single or double quotes, of the characters dbt allows in model and package names.
fn quoted_name(arg: &str) -> Option<String> {
    let arg = arg.trim();
    let name = arg
        .strip_prefix('\'')
        .and_then(|a| a.strip_suffix('\''))
        .or_else(|| arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')))?;
    let allowed = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!name.is_empty() && name.chars().all(allowed)).then(|| name.to_string())
}

impl<'de> Deserialize<'de> for Model {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str(
            deserializer,
            "a model name or ref('name')",
            |text| match DbtRef::parse(text) {
                Some(reference) => reference.map(Model::Dbt),
                None => model_file_name(text).map(Model::File),
            },
        )
    }
}

/// `dbt:`, the dbt project whose models syncs name with `ref()`.
#[derive(Debug, Clone)]
pub struct DbtConfig {
    /// The dbt project's directory (where dbt_project.yml is), as written: relative to connector.yaml's directory.
    pub project_dir: String,
    /// The manifest, as written (relative to connector.yaml's directory); `None`:
    /// `<project_dir>/target/manifest.json`.
    pub manifest: Option<String>,
    /// The owner of the syncs' exposures (`ldsync dbt exposures`).
    pub owner: Option<DbtOwner>,
    /// A manifest generated longer ago than this is a warning; `None`: only a model changed since is.
    pub max_manifest_age: Option<Duration>,
}

/// An exposure's owner, as dbt has it: a name, an email, or both.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbtOwner {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl<'de> Deserialize<'de> for DbtConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, DbtConfig::from_raw)
    }
}

impl DbtConfig {
    fn from_raw(raw: RawDbt) -> Result<Self, String> {
        if raw.project_dir.0.is_empty() {
            return Err(
                "`project_dir` names the dbt project's directory (where dbt_project.yml is)".into(),
            );
        }
        if let Some(owner) = &raw.owner
            && owner.name.is_none()
            && owner.email.is_none()
        {
            return Err("`owner` takes a `name`, an `email` or both".into());
        }
        let max_manifest_age = raw
            .max_manifest_age
            .map(|age| duration("max_manifest_age", "12h or 2d", Some(age), Duration::ZERO))
            .transpose()?;
        Ok(DbtConfig {
            project_dir: raw.project_dir.0,
            manifest: raw.manifest.map(|m| m.0),
            owner: raw.owner,
            max_manifest_age,
        })
    }
}
