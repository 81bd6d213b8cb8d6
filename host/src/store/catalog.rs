//! The plugin catalog: every deployed plugin version, content-addressed,
//! and the history of deployments.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

/// How a plugin version got deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// Takes over (a projection rebuilds, then switches).
    Live,
    /// A projection built beside the active one, not serving reads.
    Shadow,
    /// A previous version deployed again.
    Rollback,
    /// Undeployed (`DELETE /plugins/{name}`): the entry names the version
    /// that served until then; nothing of the name runs.
    Removed,
}

impl DeployMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployMode::Live => "live",
            DeployMode::Shadow => "shadow",
            DeployMode::Rollback => "rollback",
            DeployMode::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "live" => DeployMode::Live,
            "shadow" => DeployMode::Shadow,
            "rollback" => DeployMode::Rollback,
            "removed" => DeployMode::Removed,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown deploy mode {other:?}"
                )));
            }
        })
    }
}

/// One deployment of a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub id: u64,
    pub name: String,
    /// `sha256:<hex>` of the component.
    pub hash: String,
    pub kind: String,
    pub mode: DeployMode,
    /// `upload`, `directory`, `rollback`, `promote` (a shadow promoted),
    /// `drop-shadow` (the serving version current again) or `undeploy`.
    pub source: String,
    pub size: u64,
    /// Microseconds since the Unix epoch.
    pub deployed_at_us: i64,
}

/// A deployment to record, with the component's bytes.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub name: String,
    pub hash: String,
    pub kind: String,
    pub mode: DeployMode,
    pub source: String,
    pub bytes: Arc<Vec<u8>>,
}

/// The plugin catalog. What the deployer needs.
#[async_trait]
pub trait PluginCatalog: Send + Sync + 'static {
    /// Store a plugin version (content-addressed) and record its deployment.
    async fn record_deployment(&self, deployment: NewDeployment) -> Result<Deployment, StoreError>;

    /// Deployments of a plugin name, newest first.
    async fn plugin_history(&self, name: &str) -> Result<Vec<Deployment>, StoreError>;

    /// Record that `name` was undeployed: a copy of its latest deployment
    /// in mode [`DeployMode::Removed`], from `source`. `None` (nothing
    /// recorded) when the name has no deployment or its latest one is a
    /// removal already.
    async fn record_removal(
        &self,
        name: &str,
        source: &str,
    ) -> Result<Option<Deployment>, StoreError>;

    /// The latest deployment of every plugin name (a removed one's is its
    /// removal).
    async fn current_deployments(&self) -> Result<Vec<Deployment>, StoreError>;

    /// The bytes of a stored plugin version.
    async fn plugin_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError>;
}
