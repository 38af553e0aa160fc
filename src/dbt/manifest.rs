//! dbt's `target/manifest.json` (schema v12, what dbt 1.8 to 1.11 write), read with only the fields ldsync uses,
//! and `ref()` looked up in it the way dbt resolves one: a model, seed or snapshot by name (and package), its latest
//! version, the root project's node first when two packages have one of that name.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::DbtError;
use crate::config::DbtRef;

/// The manifest schema this build reads.
pub const MANIFEST_SCHEMA: &str = "https://schemas.getdbt.com/dbt/manifest/v12.json";

/// The parts of a manifest ldsync reads.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub metadata: Metadata,
    #[serde(default)]
    nodes: HashMap<String, Node>,
    /// Disabled nodes, by unique id (dbt keeps a list: one per configuration that disabled it).
    #[serde(default)]
    disabled: HashMap<String, Vec<Node>>,
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub dbt_schema_version: String,
    /// When dbt wrote the manifest (RFC 3339, UTC).
    pub generated_at: String,
    /// The dbt adapter the project was built with: `duckdb`, `postgres`, ….
    #[serde(default)]
    pub adapter_type: Option<String>,
    #[serde(default)]
    pub project_name: Option<String>,
}

/// One node: a model, seed, snapshot, test, ….
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub resource_type: String,
    pub unique_id: String,
    pub package_name: String,
    pub name: String,
    /// The relation dbt builds, quoted as the adapter needs; `None` for an ephemeral model.
    #[serde(default)]
    pub relation_name: Option<String>,
    #[serde(default)]
    pub config: NodeConfig,
    /// The SQL with every `ref()` and macro expanded; only after `dbt compile`, `dbt run` or `dbt build`.
    #[serde(default)]
    pub compiled_code: Option<String>,
    /// The model's file, relative to the dbt project.
    #[serde(default)]
    pub original_file_path: Option<String>,
    #[serde(default)]
    version: Option<serde_json::Value>,
    #[serde(default)]
    latest_version: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeConfig {
    #[serde(default)]
    pub materialized: Option<String>,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            materialized: None,
            enabled: true,
        }
    }
}

fn enabled() -> bool {
    true
}

impl Node {
    /// Whether `ref()` may name it: a model, a seed or a snapshot.
    fn is_referable(&self) -> bool {
        matches!(self.resource_type.as_str(), "model" | "seed" | "snapshot")
    }

    fn matches(&self, reference: &DbtRef) -> bool {
        self.is_referable()
            && self.name == reference.name
            && reference
                .package
                .as_ref()
                .is_none_or(|package| *package == self.package_name)
    }

    /// Whether it is the version an unversioned `ref()` means: the latest, or the only one.
    fn is_latest(&self) -> bool {
        self.version.is_none() || self.version == self.latest_version
    }

    pub fn is_ephemeral(&self) -> bool {
        self.config.materialized.as_deref() == Some("ephemeral")
    }
}

/// What looking a `ref()` up found.
pub enum Lookup<'m> {
    Found(&'m Node),
    Disabled(&'m Node),
    Ambiguous(Vec<&'m Node>),
    /// Nothing of that name: the closest names there are, nearest first.
    Missing(Vec<String>),
}

impl Manifest {
    /// Reads the manifest at `path`, checking its schema version.
    pub fn load(path: &Path) -> Result<Manifest, DbtError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DbtError::ManifestMissing {
                manifest: path.to_path_buf(),
            },
            _ => DbtError::ManifestRead {
                manifest: path.to_path_buf(),
                source,
            },
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| DbtError::ManifestInvalid {
                manifest: path.to_path_buf(),
                source,
            })?;
        if manifest.metadata.dbt_schema_version != MANIFEST_SCHEMA {
            return Err(DbtError::ManifestSchema {
                manifest: path.to_path_buf(),
                schema: manifest.metadata.dbt_schema_version,
            });
        }
        Ok(manifest)
    }

    /// Finds the node `reference` names.
    pub fn lookup(&self, reference: &DbtRef) -> Lookup<'_> {
        let mut found: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.matches(reference) && n.config.enabled && n.is_latest())
            .collect();
        let root = self.metadata.project_name.as_deref();
        let in_root = |n: &&Node| Some(n.package_name.as_str()) == root;
        if found.len() > 1 && found.iter().any(in_root) {
            found.retain(in_root);
        }
        found.sort_by(|a, b| a.unique_id.cmp(&b.unique_id));
        match found.as_slice() {
            [node] => Lookup::Found(node),
            [] => match self.disabled_node(reference) {
                Some(node) => Lookup::Disabled(node),
                None => Lookup::Missing(self.closest_names(&reference.name)),
            },
            _ => Lookup::Ambiguous(found),
        }
    }

    fn disabled_node(&self, reference: &DbtRef) -> Option<&Node> {
        let disabled = self.disabled.values().flatten();
        let in_nodes = self.nodes.values().filter(|n| !n.config.enabled);
        let mut matching: Vec<&Node> = disabled
            .chain(in_nodes)
            .filter(|n| n.matches(reference))
            .collect();
        matching.sort_by(|a, b| a.unique_id.cmp(&b.unique_id));
        matching.first().copied()
    }

    /// Up to three enabled models, seeds or snapshots whose names are closest to `name`.
    fn closest_names(&self, name: &str) -> Vec<String> {
        let mut names: Vec<(usize, &str)> = self
            .nodes
            .values()
            .filter(|n| n.is_referable() && n.config.enabled)
            .map(|n| (strsim::levenshtein(name, &n.name), n.name.as_str()))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .take(3)
            .map(|(_, name)| name.to_string())
            .collect()
    }
}
