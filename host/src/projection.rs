//! Projections: one runner per generation, hot swap between generations,
//! shadow builds, poison handling, and the status operators watch.
//!
//! A projection has at most two live generations: the *active* one, which
//! serves reads, and a *next* one being built from the start of history by
//! a new plugin version (or a rebuild). A `building` next generation takes
//! over reads as soon as it has caught up with the head and with the active
//! one; a `shadow` one waits for an operator to promote it. The replaced
//! generation stops, and its rows are dropped after a grace period (so a
//! read that started on it finishes).

pub mod diff;
mod leasing;
mod operations;
mod removal;
pub mod runner;
mod status;
#[cfg(all(test, feature = "examples"))]
mod tests;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};

use crate::lease::{Leases, PROJECTION_PREFIX};
use crate::runtime::{Plugin, Runtime};
use crate::store::{
    DeployMode, EventLog, GenerationRecord, GenerationRole, PluginCatalog, Position, StoreError,
    ViewId, ViewStore,
};
pub use operations::{ResumeOutcome, Resumed};
pub use runner::{Control, Generation, Poison, RetryOutcome, RunnerContext, RunnerEvent, Serving};
pub use status::{ErrorStatus, ProjectionStatus, RebuildStatus, TimeStatus};

/// Default events per projection batch.
pub const BATCH_SIZE_DEFAULT: u32 = 256;
/// Default view rows a runner keeps in memory.
pub const CACHE_ROWS_DEFAULT: usize = 100_000;

/// How long an undeployed projection's rows are kept, by default (see
/// [`ProjectionConfig::undeploy_grace`]).
pub const UNDEPLOY_GRACE_SECS_DEFAULT: u64 = 300;

/// How often a read on a host that does not run the projection checks the
/// stored checkpoint while it waits for a position.
const READ_POLL: Duration = Duration::from_millis(20);

/// Tuning of the projection runners.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Events per batch (one instance and one commit per batch).
    pub batch_size: u32,
    /// View rows each runner remembers between batches.
    pub cache_rows: usize,
    /// Longest wait between retries after a store error.
    pub retry_backoff_max: Duration,
    /// Rows deleted per transaction when dropping an old generation.
    pub drop_chunk: u32,
    /// How long a replaced generation's rows stay readable after a switch.
    pub retire_grace: Duration,
    /// Batches read ahead of the one in the plugin while catching up.
    pub read_ahead: usize,
    /// How long an undeployed projection's generations are kept: deployed
    /// again within it, it resumes from its checkpoints; after it, its rows
    /// are dropped (and a new deployment builds from the start).
    pub undeploy_grace: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            batch_size: BATCH_SIZE_DEFAULT,
            cache_rows: CACHE_ROWS_DEFAULT,
            retry_backoff_max: Duration::from_secs(5),
            drop_chunk: 10_000,
            retire_grace: Duration::from_secs(2),
            read_ahead: 2,
            undeploy_grace: Duration::from_secs(UNDEPLOY_GRACE_SECS_DEFAULT),
        }
    }
}

/// Why a projection operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Handling: 404 `not_found`.
    #[error("no projection named {0}")]
    NotFound(String),
    /// Handling: 404 `not_found`: undeployed, not deployed since.
    #[error("projection {0:?} was removed")]
    Removed(String),
    /// Handling: 409 with the message (the operation does not fit the state).
    #[error("{0}")]
    Conflict(String),
    /// Handling: 404 `not_found` with the message (a read of the shadow
    /// generation when there is none).
    #[error("{0}")]
    NoShadow(String),
    /// Handling: per [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One projection: its generations and where reads go.
pub struct Entry {
    pub name: String,
    state: Mutex<EntryState>,
    serving: Arc<watch::Sender<Serving>>,
    /// Whether this host runs the projection (holds its lease); when not,
    /// reads follow the stored checkpoint of the active generation.
    runs_here: AtomicBool,
}

#[derive(Default)]
struct EntryState {
    active: Option<Arc<Generation>>,
    next: Option<(Arc<Generation>, GenerationRole)>,
    next_generation: u64,
    /// The current version and how it was deployed: what this host starts
    /// when it takes the projection's lease.
    current: Option<(Arc<Plugin>, DeployMode)>,
}

impl Entry {
    /// Whether this host runs the projection's runners.
    pub fn runs_here(&self) -> bool {
        self.runs_here.load(Ordering::SeqCst)
    }

    /// The generation reads use and its position.
    pub fn serving(&self) -> Serving {
        *self.serving.borrow()
    }

    /// Wait until the serving generation has processed `position`. It
    /// ends early when that generation is stopped on a poison event before
    /// `position`: nothing moves it on until an operator acts.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> Waited {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.serving.subscribe();
        loop {
            let waited = tokio::time::timeout_at(
                deadline,
                rx.wait_for(|s| s.position >= position || s.failed),
            )
            .await
            .map(|seen| seen.map(|s| *s));
            let Ok(Ok(serving)) = waited else {
                return Waited::TimedOut(self.serving());
            };
            if serving.position >= position {
                return Waited::Reached(serving);
            }
            if let Some(poison) = self.failure(serving.generation).await {
                return Waited::Failed(serving, poison);
            }
            // Resumed meanwhile: wait for the flag to change again.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let cleared = tokio::time::timeout(left, rx.wait_for(|s| !s.failed))
                .await
                .is_ok_and(|seen| seen.is_ok());
            if !cleared {
                return Waited::TimedOut(self.serving());
            }
        }
    }

    /// The poison event the serving generation `generation` stopped on.
    async fn failure(&self, generation: u64) -> Option<Poison> {
        let state = self.state.lock().await;
        state
            .active
            .as_ref()
            .filter(|a| a.generation == generation)
            .and_then(|a| a.progress().poison)
    }
}

/// How a read's wait for a position ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// The serving generation has processed it (or none was asked for).
    Reached(Serving),
    /// The time ran out first; where the serving generation was.
    TimedOut(Serving),
    /// The serving generation stopped on a poison event before it.
    Failed(Serving, Poison),
}

/// All projections of this host.
pub struct Projections {
    ctx: Arc<RunnerContext>,
    /// Where the plugin versions of older generations are read from.
    catalog: Arc<dyn PluginCatalog>,
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
    /// A projection runs only while this host holds its lease (always,
    /// when leases are off).
    leases: Arc<Leases>,
    /// Projections undeployed and not deployed since.
    removed: removal::Removed,
}

/// The parts of the store projections use.
#[derive(Clone)]
pub struct ProjectionStores {
    pub log: Arc<dyn EventLog>,
    pub views: Arc<dyn ViewStore>,
    pub catalog: Arc<dyn PluginCatalog>,
}

impl Projections {
    /// The manager, and its task that switches generations when they catch up.
    pub fn new(
        stores: ProjectionStores,
        runtime: Runtime,
        config: ProjectionConfig,
        leases: Arc<Leases>,
    ) -> Arc<Self> {
        let (events, mut events_rx) = mpsc::unbounded_channel();
        let projections = Arc::new(Self {
            ctx: Arc::new(RunnerContext {
                log: stores.log,
                views: stores.views,
                runtime,
                config,
                events,
            }),
            catalog: stores.catalog,
            entries: RwLock::new(BTreeMap::new()),
            leases,
            removed: removal::Removed::default(),
        });
        let weak: Weak<Self> = Arc::downgrade(&projections);
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let Some(projections) = weak.upgrade() else {
                    break;
                };
                match event {
                    RunnerEvent::CaughtUp { name, generation } => {
                        projections.maybe_switch(&name, generation).await;
                    }
                }
            }
        });
        projections
    }

    fn views(&self) -> &Arc<dyn ViewStore> {
        &self.ctx.views
    }

    /// Whether this host may run `name`'s runners (taking its lease if free).
    async fn claim(&self, name: &str) -> bool {
        self.leases
            .claim(&format!("{PROJECTION_PREFIX}{name}"))
            .await
    }

    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn entry(&self, name: &str, next_generation: u64) -> Arc<Entry> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Entry {
                    name: name.to_string(),
                    state: Mutex::new(EntryState {
                        next_generation,
                        ..EntryState::default()
                    }),
                    serving: Arc::new(watch::channel(Serving::default()).0),
                    runs_here: AtomicBool::new(false),
                })
            })
            .clone()
    }

    fn spawn(
        &self,
        entry: &Entry,
        plugin: Arc<Plugin>,
        generation: u64,
        position: Position,
    ) -> Arc<Generation> {
        runner::spawn(
            self.ctx.clone(),
            plugin,
            generation,
            position,
            entry.serving.clone(),
        )
    }

    /// Pick up where the last run stopped: resume the stored generations of
    /// `plugin`'s projection and start a new one if its version has none.
    /// `versions` holds the plugins of older generations, by hash.
    pub async fn restore(
        &self,
        plugin: Arc<Plugin>,
        mode: DeployMode,
        records: &[GenerationRecord],
        versions: &HashMap<String, Arc<Plugin>>,
    ) -> Result<(), ProjectionError> {
        let next_generation = records.iter().map(|r| r.generation).max().unwrap_or(0) + 1;
        let entry = self.entry(&plugin.name, next_generation);
        if !self.claim(&plugin.name).await {
            let mut state = entry.state.lock().await;
            state.current = Some((plugin.clone(), mode));
            tracing::info!(projection = %plugin.name, "another host runs this projection");
            return Ok(());
        }
        self.resume_records(&entry, &plugin, records, versions)
            .await;
        if self.adopt_running(&entry, &plugin).await {
            // What ran before the stop goes on from its checkpoints, as it
            // was: a promoted shadow serves, a shadow stays a shadow.
            return Ok(());
        }
        self.deploy(plugin, mode).await
    }

    /// Whether a resumed generation already runs `plugin` (serving, or
    /// being built): then it is the current version, in the role its
    /// stored generation has, and nothing new is started for it.
    async fn adopt_running(&self, entry: &Entry, plugin: &Arc<Plugin>) -> bool {
        let mut state = entry.state.lock().await;
        let mode = match (&state.active, &state.next) {
            (_, Some((next, GenerationRole::Shadow))) if next.plugin.hash == plugin.hash => {
                DeployMode::Shadow
            }
            (_, Some((next, _))) if next.plugin.hash == plugin.hash => DeployMode::Live,
            (Some(active), _) if active.plugin.hash == plugin.hash => DeployMode::Live,
            _ => return false,
        };
        state.current = Some((plugin.clone(), mode));
        true
    }

    /// Start runners for the stored generations that can run.
    async fn resume_records(
        &self,
        entry: &Arc<Entry>,
        plugin: &Arc<Plugin>,
        records: &[GenerationRecord],
        versions: &HashMap<String, Arc<Plugin>>,
    ) {
        let next_generation = records.iter().map(|r| r.generation).max().unwrap_or(0) + 1;
        {
            let mut state = entry.state.lock().await;
            state.next_generation = state.next_generation.max(next_generation);
            entry.runs_here.store(true, Ordering::SeqCst);
            for record in records {
                let version = if record.plugin_hash == plugin.hash {
                    Some(plugin.clone())
                } else {
                    versions.get(&record.plugin_hash).cloned()
                };
                match (record.role, version) {
                    (GenerationRole::Active, Some(version)) if state.active.is_none() => {
                        let generation =
                            self.spawn(entry, version, record.generation, record.position);
                        generation.start_serving();
                        state.active = Some(generation);
                    }
                    (role @ (GenerationRole::Building | GenerationRole::Shadow), Some(version))
                        if version.hash == plugin.hash && state.next.is_none() =>
                    {
                        let generation =
                            self.spawn(entry, version, record.generation, record.position);
                        state.next = Some((generation, role));
                    }
                    (_, _)
                        if state
                            .active
                            .as_ref()
                            .is_some_and(|g| g.generation == record.generation)
                            || state
                                .next
                                .as_ref()
                                .is_some_and(|(g, _)| g.generation == record.generation) => {}
                    _ => self.retire_record(record),
                }
            }
        }
    }

    /// A projection that runs on this host: operations on its generations
    /// are for the host holding its lease.
    fn entry_here(&self, name: &str) -> Result<Arc<Entry>, ProjectionError> {
        let entry = self.get(name).ok_or_else(|| self.missing(name))?;
        if !entry.runs_here() {
            return Err(ProjectionError::Conflict(format!(
                "projection {name} runs on another host (see GET /cluster); ask that host"
            )));
        }
        Ok(entry)
    }

    /// The active generation and its stored checkpoint.
    async fn stored_serving(&self, name: &str) -> Result<Serving, StoreError> {
        Ok(self
            .views()
            .generations()
            .await?
            .into_iter()
            .find(|r| r.name == name && r.role == GenerationRole::Active)
            .map(|r| Serving {
                generation: r.generation,
                position: r.position,
                failed: false,
            })
            .unwrap_or_default())
    }

    /// The generation reads use, once it has processed `min_position` (if
    /// given): from the runner when it runs here, else from the stored
    /// checkpoint, polled. The position reached when `timeout` ran out
    /// otherwise, or at once the poison event the serving generation
    /// stopped on (known where it runs).
    pub async fn serving_after(
        &self,
        entry: &Entry,
        min_position: Option<Position>,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        if entry.runs_here() {
            return Ok(match min_position {
                None => Waited::Reached(entry.serving()),
                Some(position) => entry.wait_for(position, timeout).await,
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let serving = self.stored_serving(&entry.name).await?;
            let Some(position) = min_position else {
                return Ok(Waited::Reached(serving));
            };
            if serving.position >= position {
                return Ok(Waited::Reached(serving));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Waited::TimedOut(serving));
            }
            if entry.runs_here() {
                // Taken over meanwhile: the runner reports from now on.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                return Ok(entry.wait_for(position, left).await);
            }
            tokio::time::sleep(READ_POLL.min(deadline - tokio::time::Instant::now())).await;
        }
    }

    /// Start using a new version of a projection: the first generation, or a
    /// hot swap (`Live`), or a shadow build (`Shadow`).
    pub async fn deploy(
        &self,
        plugin: Arc<Plugin>,
        mode: DeployMode,
    ) -> Result<(), ProjectionError> {
        let entry = self.entry(&plugin.name, 1);
        if !self.claim(&plugin.name).await {
            let mut state = entry.state.lock().await;
            state.current = Some((plugin, mode));
            return Ok(());
        }
        let mut state = entry.state.lock().await;
        state.current = Some((plugin.clone(), mode));
        entry.runs_here.store(true, Ordering::SeqCst);
        let Some(active) = state.active.clone() else {
            let generation = self
                .create(&entry, &mut state, plugin, GenerationRole::Active)
                .await?;
            generation.start_serving();
            state.active = Some(generation);
            return Ok(());
        };
        if let Some((next, role)) = &state.next
            && next.plugin.hash == plugin.hash
        {
            match (*role, mode) {
                // Already building this version, as asked.
                (GenerationRole::Shadow, DeployMode::Shadow) => return Ok(()),
                (GenerationRole::Shadow, _) => {
                    // Deployed live while it is the shadow: promote it.
                    let generation = self.promote_next(&entry.name, &mut state).await?;
                    drop(state);
                    self.maybe_switch(&entry.name, generation).await;
                    return Ok(());
                }
                (_, DeployMode::Shadow) => {}
                (_, _) => return Ok(()),
            }
        }
        if active.plugin.hash == plugin.hash && mode != DeployMode::Shadow {
            // Back to the version that serves: drop what was being built.
            if let Some((next, _)) = state.next.take() {
                self.retire(next).await;
            }
            return Ok(());
        }
        let role = if mode == DeployMode::Shadow {
            GenerationRole::Shadow
        } else {
            GenerationRole::Building
        };
        if let Some((next, _)) = state.next.take() {
            self.retire(next).await;
        }
        let generation = self.create(&entry, &mut state, plugin, role).await?;
        tracing::info!(projection = %entry.name, generation = generation.generation, mode = role.as_str(), "building a new generation from the start of history");
        state.next = Some((generation, role));
        Ok(())
    }

    async fn create(
        &self,
        entry: &Entry,
        state: &mut EntryState,
        plugin: Arc<Plugin>,
        role: GenerationRole,
    ) -> Result<Arc<Generation>, ProjectionError> {
        let generation = state.next_generation;
        self.views()
            .save_generation(GenerationRecord {
                name: entry.name.clone(),
                generation,
                plugin_hash: plugin.hash.clone(),
                role,
                position: 0,
            })
            .await?;
        state.next_generation += 1;
        Ok(self.spawn(entry, plugin, generation, 0))
    }

    /// Switch reads to `generation` if it is the building one and has
    /// caught up with the active one.
    async fn maybe_switch(&self, name: &str, generation: u64) {
        let Some(entry) = self.get(name) else { return };
        let mut state = entry.state.lock().await;
        let Some((next, GenerationRole::Building)) = &state.next else {
            return;
        };
        if next.generation != generation {
            return;
        }
        let next = next.clone();
        let progress = next.progress();
        if progress.poison.is_some() || progress.position < progress.head {
            return;
        }
        if let Some(active) = &state.active {
            let old = active.progress();
            if old.poison.is_none() && old.position > progress.position {
                // The old one is ahead: the new one is woken for those
                // events and reports again.
                return;
            }
        }
        if let Err(e) = self.views().promote_generation(name, generation).await {
            tracing::error!(projection = name, generation, error = %e, "could not switch generations; will retry when it reports again");
            return;
        }
        next.start_serving();
        let old = state.active.replace(next);
        state.next = None;
        tracing::info!(
            projection = name,
            generation,
            position = progress.position,
            "projection switched to the new generation"
        );
        if let Some(old) = old {
            old.stop_serving();
            self.retire(old).await;
        }
    }

    /// Stop a generation and drop its rows after the grace period.
    async fn retire(&self, generation: Arc<Generation>) {
        let _ = generation.control(Control::Stop).await;
        let record = GenerationRecord {
            name: generation.name.to_string(),
            generation: generation.generation,
            plugin_hash: generation.plugin.hash.clone(),
            role: GenerationRole::Retired,
            position: 0,
        };
        if let Err(e) = self.views().save_generation(record.clone()).await {
            tracing::warn!(projection = %generation.name, error = %e, "could not mark a generation retired");
        }
        self.retire_record(&record);
    }

    /// Drop a retired generation's rows in chunks, in the background.
    fn retire_record(&self, record: &GenerationRecord) {
        let store = self.views().clone();
        let name = record.name.clone();
        let number = record.generation;
        let grace = self.ctx.config.retire_grace;
        let chunk = self.ctx.config.drop_chunk;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let mut dropped = 0u64;
            loop {
                let view = ViewId {
                    projection: &name,
                    generation: number,
                };
                match store.drop_generation(view, chunk).await {
                    Ok(0) => break,
                    Ok(n) => {
                        dropped += n;
                        tracing::debug!(projection = %name, generation = number, dropped, "dropping an old generation");
                    }
                    Err(e) => {
                        tracing::warn!(projection = %name, generation = number, error = %e, "could not drop an old generation; it stays until the next start");
                        return;
                    }
                }
            }
            tracing::info!(projection = %name, generation = number, rows = dropped, "old generation dropped");
        });
    }

    /// Stop every runner (at shutdown).
    pub async fn stop_all(&self) {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for entry in entries {
            entry.runs_here.store(false, Ordering::SeqCst);
            let state = entry.state.lock().await;
            for generation in state.active.iter().chain(state.next.iter().map(|(g, _)| g)) {
                let _ = generation.control(Control::Stop).await;
            }
        }
    }
}
