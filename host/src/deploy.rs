//! Deploying plugin versions: compile off the async threads, store the bytes
//! content-addressed with a deployment record, make the version current,
//! and start a projection's new generation. Also what happens at start
//! (restore the stored versions, then apply the plugin directory) and while
//! running (the directory is watched).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::plugin_watch::PluginDirWatcher;
use crate::projection::{ProjectionError, Projections};
use crate::registry::{Registry, RegistryError, validate_name};
use crate::runtime::{LoadError, Plugin, PluginKind, Runtime};
use crate::saga::Sagas;
use crate::store::{
    DeployMode, Deployment, GenerationRecord, NewDeployment, PluginCatalog, StoreError, ViewStore,
};

/// Why a deployment failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Handling: 400 or 422, per [`RegistryError`].
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Handling: 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// A directory file of a removed plugin. Handling: log it (the file is
    /// ignored); 404 `not_found` if ever answered.
    #[error("plugin {0:?} was removed; its file in the plugin directory is ignored")]
    Removed(String),
    /// Handling: per [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Handling: per [`ProjectionError`].
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl From<LoadError> for DeployError {
    fn from(e: LoadError) -> Self {
        DeployError::Registry(RegistryError::Load(e))
    }
}

/// Directory plugins larger than this whose compiled form is not cached are
/// compiled after the host starts serving (a 10–20 MB JavaScript or Python
/// component takes 10–20 s). Rust components are tens of kilobytes.
pub const BACKGROUND_COMPILE_BYTES: usize = 1024 * 1024;

/// Removes the markers of queued compiles when the background task ends
/// (finished, or aborted at shutdown).
struct ClearQueued {
    registry: Arc<Registry>,
    queued: Vec<(String, String)>,
}

impl Drop for ClearQueued {
    fn drop(&mut self) {
        for (name, hash) in &self.queued {
            self.registry.finish_compiling(name, hash);
        }
    }
}

/// A directory plugin whose compile was left for after the start.
pub struct DeferredPlugin {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Where a deployment came from.
pub const SOURCE_UPLOAD: &str = "upload";
pub const SOURCE_DIRECTORY: &str = "directory";
pub const SOURCE_UNDEPLOY: &str = "undeploy";
/// A shadow promoted by an operator (mode `live`).
pub const SOURCE_PROMOTE: &str = "promote";
/// A shadow dropped: the serving version is current again (mode `rollback`).
pub const SOURCE_DROP_SHADOW: &str = "drop-shadow";

/// Deploys plugin versions.
pub struct Deployer {
    /// The stored versions and their history.
    store: Arc<dyn PluginCatalog>,
    /// The projections' generations, to restore them with their versions.
    views: Arc<dyn ViewStore>,
    runtime: Runtime,
    registry: Arc<Registry>,
    projections: Arc<Projections>,
    sagas: Arc<Sagas>,
}

impl Deployer {
    pub fn new(
        store: Arc<dyn PluginCatalog>,
        views: Arc<dyn ViewStore>,
        runtime: Runtime,
        registry: Arc<Registry>,
        projections: Arc<Projections>,
        sagas: Arc<Sagas>,
    ) -> Self {
        Self {
            store,
            views,
            runtime,
            registry,
            projections,
            sagas,
        }
    }

    /// Compile on the blocking pool (a cache hit takes a millisecond, a
    /// compile tens of milliseconds for a Rust component, 10–20 s for a
    /// JavaScript or Python one). Meanwhile `GET /plugins` shows the version
    /// as compiling, and the current version, if any, keeps serving.
    async fn compile(&self, name: &str, bytes: Arc<Vec<u8>>) -> Result<Plugin, DeployError> {
        validate_name(name)?;
        let hash = crate::runtime::plugin::content_hash(&bytes);
        let _compiling = self.registry.begin_compiling(name, &hash, bytes.len());
        let runtime = self.runtime.clone();
        let owned = name.to_string();
        let plugin = tokio::task::spawn_blocking(move || runtime.compile(&owned, &bytes))
            .await
            .map_err(|e| LoadError::Invalid(format!("compilation panicked: {e}")))??;
        Ok(plugin)
    }

    /// Deploy `bytes` as the new current version of `name`.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        mode: DeployMode,
        source: &str,
    ) -> Result<Arc<Plugin>, DeployError> {
        let bytes = Arc::new(bytes);
        let plugin = self.compile(name, bytes.clone()).await?;
        // Only the API brings a removed plugin back (checked again after
        // the compile: it may have been removed meanwhile).
        if source == SOURCE_DIRECTORY && self.registry.removed(name).is_some() {
            return Err(DeployError::Removed(name.to_string()));
        }
        // A removed name keeps its kind.
        if let Some(kind) = self.registry.kind_of(name)
            && kind != plugin.kind
        {
            return Err(LoadError::Invalid(format!(
                "plugin {name} is {}; {} cannot replace it under the same name",
                kind.with_article(),
                plugin.kind.with_article()
            ))
            .into());
        }
        if mode == DeployMode::Shadow && plugin.kind != PluginKind::Projection {
            return Err(LoadError::Invalid(format!(
                "only a projection can be deployed as a shadow; this is {}",
                plugin.kind.with_article()
            ))
            .into());
        }
        self.store
            .record_deployment(NewDeployment {
                name: name.to_string(),
                hash: plugin.hash.clone(),
                kind: plugin.kind.as_str().to_string(),
                mode,
                source: source.to_string(),
                bytes,
            })
            .await?;
        // The upload's buffers are freed once its request ends.
        crate::runtime::memory::release_free_heap_soon();
        let plugin = self.registry.insert(plugin);
        tracing::info!(plugin = %plugin.name, kind = plugin.kind.as_str(), hash = %plugin.hash, mode = mode.as_str(), source, "plugin deployed");
        match plugin.kind {
            PluginKind::Projection => self.start_projection(plugin.clone(), mode).await?,
            PluginKind::Saga => self.sagas.deploy(plugin.clone()).await,
            PluginKind::Aggregate => {}
        }
        Ok(plugin)
    }

    /// `DELETE /plugins/{name}`: record the removal and stop what runs of
    /// the plugin (see [`Deployer::unload`]). The removal's history entry.
    pub async fn undeploy(&self, name: &str) -> Result<Deployment, DeployError> {
        let Some(removal) = self.store.record_removal(name, SOURCE_UNDEPLOY).await? else {
            let known = !self.store.plugin_history(name).await?.is_empty();
            return Err(DeployError::NotFound(if known {
                format!("plugin {name:?} was removed already")
            } else {
                format!("no plugin named {name}")
            }));
        };
        self.unload(&removal).await;
        tracing::info!(plugin = name, kind = %removal.kind, hash = %removal.hash, "plugin removed");
        Ok(removal)
    }

    /// Stop serving a removed plugin: an aggregate takes no more commands
    /// (its events stay), a projection stops and its rows go after the
    /// grace period, a saga stops dispatching (its outbox and instances
    /// stay for a new deployment).
    async fn unload(&self, removal: &Deployment) {
        let Some(kind) = parse_kind(&removal.kind) else {
            tracing::error!(plugin = %removal.name, kind = %removal.kind, "removed plugin of an unknown kind");
            return;
        };
        self.registry.remove(&removal.name, kind);
        match kind {
            PluginKind::Projection => {
                self.projections
                    .undeploy(&removal.name, removal.deployed_at_us)
                    .await
            }
            PluginKind::Saga => self.sagas.undeploy(&removal.name).await,
            PluginKind::Aggregate => {}
        }
    }

    /// Deploy an earlier version again: `hash`, or the newest one that
    /// differs from the current version.
    pub async fn rollback(
        &self,
        name: &str,
        hash: Option<&str>,
    ) -> Result<Arc<Plugin>, DeployError> {
        let mut history = self.store.plugin_history(name).await?;
        let current = history.first().cloned().ok_or_else(|| {
            DeployError::NotFound(format!("plugin {name} has no stored versions"))
        })?;
        // A removal is no version: rolling back after one deploys the
        // version that was removed, by default.
        history.retain(|d| d.mode != DeployMode::Removed);
        let target = match hash {
            None if current.mode == DeployMode::Removed => history
                .iter()
                .find(|d| d.hash == current.hash)
                .ok_or_else(|| {
                    DeployError::NotFound(format!("plugin {name} has no version to deploy again"))
                })?,
            Some(hash) => history.iter().find(|d| d.hash == hash).ok_or_else(|| {
                DeployError::NotFound(format!("plugin {name} has no version {hash}"))
            })?,
            None => history
                .iter()
                .find(|d| d.hash != current.hash)
                .ok_or_else(|| {
                    DeployError::NotFound(format!(
                        "plugin {name} has no earlier version to roll back to"
                    ))
                })?,
        };
        let bytes = self
            .store
            .plugin_bytes(&target.hash)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("the bytes of {} are missing", target.hash))
            })?;
        self.deploy(name, bytes, DeployMode::Rollback, "rollback")
            .await
    }

    /// Versions deployed under `name`, newest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Deployment>, DeployError> {
        let history = self.store.plugin_history(name).await?;
        if history.is_empty() {
            return Err(DeployError::NotFound(format!("no plugin named {name}")));
        }
        Ok(history)
    }

    /// `DELETE /projections/{name}/shadow`: drop the shadow and make the
    /// serving version current again (recorded as a rollback).
    pub async fn drop_shadow(&self, name: &str) -> Result<Arc<Plugin>, DeployError> {
        let serving = self.projections.drop_shadow(name).await?;
        self.record_again(name, &serving, DeployMode::Rollback, SOURCE_DROP_SHADOW)
            .await?;
        Ok(self.registry.insert((*serving).clone()))
    }

    /// `POST /projections/{name}/promote`: the shadow's version goes live.
    /// Recorded in the history (mode `live`, source `promote`) before the
    /// generation turns from shadow to building; the generation's role is
    /// what a restart resumes. Returns the promoted generation.
    pub async fn promote(&self, name: &str) -> Result<u64, DeployError> {
        let shadow = self.projections.shadow_plugin(name).await?;
        self.record_again(name, &shadow, DeployMode::Live, SOURCE_PROMOTE)
            .await?;
        Ok(self.projections.promote(name).await?)
    }

    /// Record a deployment of a version already stored.
    async fn record_again(
        &self,
        name: &str,
        plugin: &Plugin,
        mode: DeployMode,
        source: &str,
    ) -> Result<(), DeployError> {
        let bytes = self
            .store
            .plugin_bytes(&plugin.hash)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("the bytes of {} are missing", plugin.hash))
            })?;
        self.store
            .record_deployment(NewDeployment {
                name: name.to_string(),
                hash: plugin.hash.clone(),
                kind: plugin.kind.as_str().to_string(),
                mode,
                source: source.to_string(),
                bytes: Arc::new(bytes),
            })
            .await?;
        Ok(())
    }

    /// At start: load the stored current versions, apply the plugin
    /// directory (a file whose bytes differ from the stored version is a new
    /// deployment), then resume every projection where it stopped.
    ///
    /// A directory file larger than [`BACKGROUND_COMPILE_BYTES`] whose
    /// compiled form is not in the cache is not compiled here: it is
    /// returned, for [`Deployer::load_in_background`] once the host serves.
    pub async fn restore(&self, dir: Option<&Path>) -> Result<Vec<DeferredPlugin>, DeployError> {
        let mut modes = self.load_stored().await?;
        let deferred = match dir {
            Some(dir) => self.load_directory(dir, &mut modes).await?,
            None => Vec::new(),
        };
        // Sagas start once every aggregate they may command is loaded.
        for plugin in self.registry.list() {
            if plugin.kind == PluginKind::Saga {
                self.sagas.deploy(plugin).await;
            }
        }
        self.resume_projections(&modes).await?;
        for removal in self.store.current_deployments().await? {
            if removal.mode == DeployMode::Removed
                && self.registry.removed(&removal.name) == Some(PluginKind::Projection)
            {
                self.projections
                    .restore_removed(&removal.name, removal.deployed_at_us)
                    .await;
            }
        }
        Ok(deferred)
    }

    /// Load the current stored version of every plugin; how each was
    /// deployed, by name.
    async fn load_stored(&self) -> Result<HashMap<String, DeployMode>, DeployError> {
        let mut modes = HashMap::new();
        for deployment in self.store.current_deployments().await? {
            if deployment.mode == DeployMode::Removed {
                if let Some(kind) = parse_kind(&deployment.kind) {
                    self.registry.remove(&deployment.name, kind);
                }
                continue;
            }
            let Some(bytes) = self.store.plugin_bytes(&deployment.hash).await? else {
                tracing::error!(plugin = %deployment.name, hash = %deployment.hash, "stored plugin bytes missing; skipped");
                continue;
            };
            match self.compile(&deployment.name, Arc::new(bytes)).await {
                Ok(plugin) => {
                    modes.insert(deployment.name.clone(), deployment.mode);
                    self.registry.insert(plugin);
                }
                Err(e) => {
                    tracing::error!(plugin = %deployment.name, error = %e, "stored plugin does not load; skipped")
                }
            }
        }
        Ok(modes)
    }

    /// Deploy the directory's files whose bytes differ from the loaded
    /// version; the large ones not compiled yet are returned for later.
    async fn load_directory(
        &self,
        dir: &Path,
        modes: &mut HashMap<String, DeployMode>,
    ) -> Result<Vec<DeferredPlugin>, DeployError> {
        let mut deferred = Vec::new();
        for (name, path) in crate::registry::wasm_files(dir)? {
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "plugin file not readable");
                    continue;
                }
            };
            let hash = crate::runtime::plugin::content_hash(&bytes);
            if self.registry.get(&name).is_some_and(|p| p.hash == hash) {
                continue;
            }
            if self.registry.removed(&name).is_some() {
                warn_removed_file(&name, &path);
                continue;
            }
            if bytes.len() > BACKGROUND_COMPILE_BYTES && !self.runtime.is_compiled(&bytes) {
                tracing::info!(plugin = %name, bytes = bytes.len(), "large plugin not in the compile cache; compiling it in the background");
                deferred.push(DeferredPlugin { name, bytes });
                continue;
            }
            match self.deploy_quietly(&name, bytes).await {
                Ok(plugin) => {
                    modes.insert(name.clone(), DeployMode::Live);
                    tracing::info!(plugin = %plugin.name, kind = plugin.kind.as_str(), hash = %plugin.hash, "plugin loaded from the directory");
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "plugin not loaded")
                }
            }
        }
        Ok(deferred)
    }

    /// Resume every loaded projection from its stored generations, with the
    /// versions those generations were built by.
    async fn resume_projections(
        &self,
        modes: &HashMap<String, DeployMode>,
    ) -> Result<(), DeployError> {
        let records = self.views.generations().await?;
        for plugin in self.registry.list() {
            if plugin.kind != PluginKind::Projection {
                continue;
            }
            let mode = modes
                .get(&*plugin.name)
                .copied()
                .unwrap_or(DeployMode::Live);
            self.resume_from(plugin, mode, &records).await?;
        }
        Ok(())
    }

    /// Start a projection's new version. A removed projection deployed
    /// again resumes its stored generations (kept during the undeploy
    /// grace), or builds from the start.
    async fn start_projection(
        &self,
        plugin: Arc<Plugin>,
        mode: DeployMode,
    ) -> Result<(), DeployError> {
        if !self.projections.cancel_removal(&plugin.name).await {
            return Ok(self.projections.deploy(plugin, mode).await?);
        }
        let records = self.views.generations().await?;
        self.resume_from(plugin, mode, &records).await
    }

    /// Resume `plugin`'s projection from its generations among `records`,
    /// with the versions those generations were built by.
    async fn resume_from(
        &self,
        plugin: Arc<Plugin>,
        mode: DeployMode,
        records: &[GenerationRecord],
    ) -> Result<(), DeployError> {
        let mine: Vec<_> = records
            .iter()
            .filter(|r| *r.name == *plugin.name)
            .cloned()
            .collect();
        let mut versions = HashMap::new();
        for record in &mine {
            if record.plugin_hash == plugin.hash || versions.contains_key(&record.plugin_hash) {
                continue;
            }
            if let Some(bytes) = self.store.plugin_bytes(&record.plugin_hash).await?
                && let Ok(version) = self.compile(&plugin.name, Arc::new(bytes)).await
            {
                versions.insert(record.plugin_hash.clone(), Arc::new(version));
            }
        }
        self.projections
            .restore(plugin, mode, &mine, &versions)
            .await?;
        Ok(())
    }

    /// Deploy the plugins [`Deployer::restore`] left for later, one at a
    /// time (a compile uses every core), as if their files had just
    /// changed. Until each is done, `GET /plugins` shows it compiling and
    /// the version stored before, if any, keeps serving.
    pub fn load_in_background(self: &Arc<Self>, deferred: Vec<DeferredPlugin>) -> JoinHandle<()> {
        // Every one of them shows as compiling from now on, not only the one
        // being compiled.
        let queued: Vec<(String, String)> = deferred
            .iter()
            .map(|p| {
                let hash = crate::runtime::plugin::content_hash(&p.bytes);
                self.registry.queue_compiling(&p.name, &hash, p.bytes.len());
                (p.name.clone(), hash)
            })
            .collect();
        let registry = self.registry.clone();
        let deployer = Arc::downgrade(self);
        tokio::spawn(async move {
            // Whatever happens, the markers go with the task.
            let _clear = ClearQueued { registry, queued };
            for plugin in deferred {
                let Some(deployer) = deployer.upgrade() else {
                    return;
                };
                let started = std::time::Instant::now();
                let hash = crate::runtime::plugin::content_hash(&plugin.bytes);
                let result = deployer
                    .deploy(
                        &plugin.name,
                        plugin.bytes,
                        DeployMode::Live,
                        SOURCE_DIRECTORY,
                    )
                    .await;
                deployer.registry.finish_compiling(&plugin.name, &hash);
                match result {
                    Ok(loaded) => {
                        tracing::info!(plugin = %loaded.name, kind = loaded.kind.as_str(), hash = %loaded.hash, elapsed_ms = started.elapsed().as_millis() as u64, "plugin compiled in the background and loaded")
                    }
                    Err(e) => {
                        tracing::error!(plugin = %plugin.name, error = %e, "plugin not loaded")
                    }
                }
            }
        })
    }

    /// Compile, record and make current, without starting projections
    /// (used at start, before they are restored).
    async fn deploy_quietly(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<Plugin>, DeployError> {
        let bytes = Arc::new(bytes);
        let plugin = self.compile(name, bytes.clone()).await?;
        self.store
            .record_deployment(NewDeployment {
                name: name.to_string(),
                hash: plugin.hash.clone(),
                kind: plugin.kind.as_str().to_string(),
                mode: DeployMode::Live,
                source: SOURCE_DIRECTORY.to_string(),
                bytes,
            })
            .await?;
        Ok(self.registry.insert(plugin))
    }

    /// Deploy what `watcher` reports, like an upload: a new or changed
    /// `.wasm` file. Take the watcher's first (recording) scan before
    /// [`Deployer::restore`] reads the directory, so that a file changed in
    /// between is reported rather than missed, and the files already there
    /// are not deployed again later over a newer upload.
    pub fn watch(
        self: &Arc<Self>,
        watcher: PluginDirWatcher,
        interval: Duration,
    ) -> JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel(16);
        let watcher = watcher.spawn(interval, tx);
        let deployer = self.clone();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                if deployer
                    .registry
                    .get(&change.name)
                    .is_some_and(|p| p.hash == change.hash)
                {
                    continue;
                }
                if deployer.registry.removed(&change.name).is_some() {
                    warn_removed_file(&change.name, &change.path);
                    continue;
                }
                match deployer
                    .deploy(
                        &change.name,
                        change.bytes,
                        DeployMode::Live,
                        SOURCE_DIRECTORY,
                    )
                    .await
                {
                    Ok(plugin) => {
                        tracing::info!(plugin = %plugin.name, hash = %plugin.hash, file = %change.path.display(), "changed plugin file deployed")
                    }
                    Err(e) => {
                        tracing::error!(file = %change.path.display(), error = %e, "changed plugin file not deployed")
                    }
                }
            }
            watcher.abort();
        })
    }
}

impl Deployer {
    /// Follow deployments made through other hosts sharing the store: every
    /// `interval`, a name whose current stored version differs from the one
    /// loaded here is loaded from its stored bytes (not recorded again).
    /// Aggregates serve their next command with it, sagas react with it from
    /// their next unit of work, and a projection's new version is built by
    /// the host holding its lease (see docs/design.md §10).
    pub fn follow_store(self: &Arc<Self>, interval: Duration) -> JoinHandle<()> {
        let deployer = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                if let Err(e) = deployer.load_newer_deployments().await {
                    tracing::warn!(error = %e, "could not read the stored deployments");
                }
            }
        })
    }

    /// Load the stored current versions that differ from the loaded ones;
    /// the names loaded.
    pub async fn load_newer_deployments(&self) -> Result<Vec<String>, DeployError> {
        let mut loaded = Vec::new();
        for deployment in self.store.current_deployments().await? {
            if deployment.mode == DeployMode::Removed {
                if self.registry.get(&deployment.name).is_some() {
                    self.unload(&deployment).await;
                    tracing::info!(plugin = %deployment.name, "removed through another host");
                    loaded.push(deployment.name);
                }
                continue;
            }
            if self
                .registry
                .get(&deployment.name)
                .is_some_and(|p| p.hash == deployment.hash)
            {
                continue;
            }
            let Some(bytes) = self.store.plugin_bytes(&deployment.hash).await? else {
                continue;
            };
            let plugin = match self.compile(&deployment.name, Arc::new(bytes)).await {
                Ok(plugin) => plugin,
                Err(e) => {
                    tracing::error!(plugin = %deployment.name, hash = %deployment.hash, error = %e, "a version deployed through another host does not load here");
                    continue;
                }
            };
            if self
                .registry
                .get(&deployment.name)
                .is_some_and(|p| p.kind != plugin.kind)
            {
                continue;
            }
            let plugin = self.registry.insert(plugin);
            tracing::info!(plugin = %plugin.name, hash = %plugin.hash, "loaded a version deployed through another host");
            match plugin.kind {
                PluginKind::Saga => self.sagas.deploy(plugin).await,
                // The host holding the projection's lease builds the new
                // generation (a hot swap, or a shadow); the others only
                // record the version they would run if they took it over.
                PluginKind::Projection => {
                    if let Err(e) = self.start_projection(plugin, deployment.mode).await {
                        tracing::error!(plugin = %deployment.name, error = %e, "could not start a projection version deployed through another host");
                    }
                }
                PluginKind::Aggregate => {}
            }
            loaded.push(deployment.name);
        }
        Ok(loaded)
    }
}

/// The plugin directory does not bring back a removed plugin: only a
/// deployment through the API does (see docs/api.md, "Undeploy").
fn warn_removed_file(name: &str, path: &Path) {
    tracing::warn!(plugin = name, file = %path.display(), "plugin file ignored: the plugin was removed (DELETE /plugins/{{name}}); deploy it with PUT /plugins/{{name}} to bring it back, or delete the file");
}

fn parse_kind(kind: &str) -> Option<PluginKind> {
    [
        PluginKind::Aggregate,
        PluginKind::Projection,
        PluginKind::Saga,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)
}
