//! Sagas (process managers): one runner per saga plugin turns events of the
//! global log into commands, durably.
//!
//! ```text
//! global log ─► correlate ─► react ─► commit { checkpoint, instance states, outbox } ─► dispatch
//!                                                                                         │
//!   on-failure ◄── refused ◄── command pipeline (idempotency key per step) ◄──────────────┘
//!   on-timer   ◄── due timers                       transient failure ─► retry with backoff ─► dead letter
//! ```
//!
//! A runner reads the log from its checkpoint, asks the plugin which
//! instance each event belongs to and how it reacts, and commits the batch's
//! checkpoint, instance states and new outbox commands in one transaction.
//! Only then are the commands dispatched, through the same pipeline as HTTP
//! commands, one at a time per instance, each with an idempotency key
//! derived from the saga, the instance and the step: after a crash the
//! outbox is dispatched again and a command already applied is not applied
//! twice. See `docs/design.md` ("Sagas") for the guarantees.

mod dispatch;
pub mod runner;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::Pipeline;
use crate::lease::{LeaseHolder, Leases, SAGA_PREFIX};
use crate::runtime::{Plugin, Runtime};
use crate::store::{
    DeadLetter, EventLog, OutboxCommand, Position, SagaCounts, SagaHistoryEntry,
    SagaInstanceRecord, SagaStore, StoreError,
};
pub use runner::{Control, RunnerStatus};

/// Default attempts of a saga command before it becomes a dead letter.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 10;
/// Default first retry delay of a transiently failing saga command.
pub const RETRY_BASE_MS_DEFAULT: u64 = 200;
/// Default longest retry delay.
pub const RETRY_MAX_MS_DEFAULT: u64 = 30_000;
/// Days the history of a completed instance is kept, by default.
pub const HISTORY_DAYS_DEFAULT: u64 = 30;
/// History entries shown per instance.
pub const HISTORY_SHOWN_MAX: u32 = 500;

/// Tuning of the saga runners.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Events read and reacted to per batch (one commit per batch).
    pub batch_size: u32,
    /// Attempts of a command (transient failures) before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Commands of one saga executing at once.
    pub dispatch_concurrency: usize,
    /// How long the history of a completed instance is kept (None: for
    /// ever). The instance's own row stays.
    pub history_retention: Option<Duration>,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            retry_base: Duration::from_millis(RETRY_BASE_MS_DEFAULT),
            retry_max: Duration::from_millis(RETRY_MAX_MS_DEFAULT),
            dispatch_concurrency: 64,
            history_retention: Some(Duration::from_secs(HISTORY_DAYS_DEFAULT * 24 * 3600)),
        }
    }
}

/// Why a saga operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// Handling: 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// Handling: 409 `conflict`: the operation does not fit the state.
    #[error("{0}")]
    Conflict(String),
    /// Handling: per [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A saga's status, as `GET /sagas/{name}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SagaInfo {
    pub name: String,
    pub plugin: String,
    /// `running`, or `failed` when the plugin trapped and the runner waits
    /// for an operator (`POST /sagas/{name}/resume`); `elsewhere` when
    /// another host runs it (the position is then the stored checkpoint).
    pub state: &'static str,
    /// Whether this host runs it.
    pub runs_here: bool,
    /// The host holding its lease (`null` when leases are off or none holds it).
    pub host: Option<String>,
    pub position: Position,
    pub head: Position,
    pub lag: u64,
    pub error: Option<String>,
    pub instances: SagaCounts,
}

/// One instance with what it waits for and what it did.
#[derive(Debug, Clone)]
pub struct InstanceDetail {
    pub record: SagaInstanceRecord,
    /// Commands decided and not applied yet, in dispatch order.
    pub pending: Vec<OutboxCommand>,
    /// Steps and their outcomes, oldest first (at most `HISTORY_SHOWN_MAX`).
    pub history: Vec<SagaHistoryEntry>,
}

/// The parts of the store sagas use.
#[derive(Clone)]
pub struct SagaStores {
    pub log: Arc<dyn EventLog>,
    pub sagas: Arc<dyn SagaStore>,
}

struct Handle {
    plugin: Arc<Plugin>,
    control: mpsc::Sender<Control>,
    status: watch::Receiver<RunnerStatus>,
    task: tokio::task::JoinHandle<()>,
}

/// The sagas of this host.
pub struct Sagas {
    stores: SagaStores,
    runtime: Runtime,
    pipeline: Arc<Pipeline>,
    config: SagaConfig,
    runners: RwLock<HashMap<String, Handle>>,
    /// The current version of every saga this host knows, running here or not.
    plugins: RwLock<HashMap<String, Arc<Plugin>>>,
    /// A saga runs only while this host holds its lease (always, when
    /// leases are off).
    leases: Arc<Leases>,
    /// Sagas undeployed and not deployed since.
    removed: RwLock<HashSet<String>>,
}

impl Sagas {
    pub fn new(
        stores: SagaStores,
        runtime: Runtime,
        pipeline: Arc<Pipeline>,
        config: SagaConfig,
        leases: Arc<Leases>,
    ) -> Arc<Self> {
        Arc::new(Self {
            stores,
            runtime,
            pipeline,
            config,
            runners: RwLock::new(HashMap::new()),
            plugins: RwLock::new(HashMap::new()),
            leases,
            removed: RwLock::new(HashSet::new()),
        })
    }

    fn store(&self) -> &Arc<dyn SagaStore> {
        &self.stores.sagas
    }

    fn plugins(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Plugin>>> {
        self.plugins.write().unwrap_or_else(|p| p.into_inner())
    }

    /// This host took the saga's lease: start its runner from the stored
    /// checkpoint, outbox and timers (nothing when it runs already).
    fn resume_here(&self, name: &str) {
        let running = self.read().get(name).is_some_and(|h| !h.task.is_finished());
        if running {
            return;
        }
        let Some(plugin) = self.plugins().get(name).cloned() else {
            return;
        };
        tracing::info!(
            saga = name,
            "took over the saga; resuming from its checkpoint"
        );
        self.start(plugin);
    }

    /// This host lost the saga's lease: stop its runner (commands executing
    /// finish; the new holder dispatches the outbox again, idempotently).
    async fn stop_here(&self, name: &str) {
        if self.stop_runner(name).await {
            tracing::info!(saga = name, "stopped the saga: another host runs it");
        }
    }

    /// Stop the runner of `name` if it runs here; whether it did.
    async fn stop_runner(&self, name: &str) -> bool {
        let Some(h) = self.write().remove(name) else {
            return false;
        };
        let _ = h.control.send(Control::Stop).await;
        if tokio::time::timeout(Duration::from_secs(5), h.task)
            .await
            .is_err()
        {
            tracing::warn!(saga = name, "a saga runner did not stop in time");
        }
        true
    }

    /// `DELETE /plugins/{name}`: stop the saga and forget its version. Its
    /// checkpoint, instances, outbox and timers stay in the store: deployed
    /// again, it resumes from them (commands already sent are not applied
    /// twice, by their idempotency keys).
    pub async fn undeploy(&self, name: &str) {
        self.plugins().remove(name);
        self.removed_names().insert(name.to_string());
        self.stop_runner(name).await;
        self.leases.forget(&format!("{SAGA_PREFIX}{name}")).await;
        tracing::info!(
            saga = name,
            "saga removed; its outbox and instances are kept"
        );
    }

    fn removed_names(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.removed.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Not found: removed, or never known here.
    fn missing(&self, name: &str) -> SagaError {
        SagaError::NotFound(if self.removed_names().contains(name) {
            format!("saga {name:?} was removed")
        } else {
            format!("no saga named {name}")
        })
    }

    fn start(&self, plugin: Arc<Plugin>) {
        let (control, status, task) = runner::spawn(
            plugin.clone(),
            self.stores.clone(),
            self.runtime.clone(),
            self.pipeline.clone(),
            self.config.clone(),
        );
        self.write().insert(
            plugin.name.to_string(),
            Handle {
                plugin,
                control,
                status,
                task,
            },
        );
    }

    /// Start the runner of a saga, or hand a running one a new version
    /// (the next unit of work runs the new logic).
    pub async fn deploy(&self, plugin: Arc<Plugin>) {
        self.removed_names().remove(&*plugin.name);
        self.plugins()
            .insert(plugin.name.to_string(), plugin.clone());
        if !self
            .leases
            .claim(&format!("{SAGA_PREFIX}{}", plugin.name))
            .await
        {
            tracing::info!(saga = %plugin.name, "another host runs this saga");
            return;
        }
        let existing = self
            .read()
            .get(&*plugin.name)
            .map(|h| (h.control.clone(), h.task.is_finished()));
        if let Some((control, false)) = existing
            && control.send(Control::Swap(plugin.clone())).await.is_ok()
        {
            if let Some(h) = self.write().get_mut(&*plugin.name) {
                h.plugin = plugin;
            }
            return;
        }
        self.start(plugin);
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.plugins().keys().cloned().collect();
        names.sort();
        names
    }

    /// The status of one saga.
    pub async fn info(&self, name: &str) -> Result<SagaInfo, SagaError> {
        let running = {
            let runners = self.read();
            runners
                .get(name)
                .map(|h| (h.plugin.hash.clone(), h.status.borrow().clone()))
        };
        let host = if self.leases.enabled() {
            self.leases.holder_of(&format!("{SAGA_PREFIX}{name}")).await
        } else {
            None
        };
        let head = *self.stores.log.subscribe_head().borrow();
        let Some((plugin, status)) = running else {
            let plugin = self
                .plugins()
                .get(name)
                .map(|p| p.hash.clone())
                .ok_or_else(|| self.missing(name))?;
            let head = head.max(self.stores.log.head_position().await?);
            let position = self.store().saga_load(name).await?.checkpoint.unwrap_or(0);
            return Ok(SagaInfo {
                name: name.to_string(),
                plugin,
                state: "elsewhere",
                runs_here: false,
                host,
                position,
                head,
                lag: head.saturating_sub(position),
                error: None,
                instances: self.store().saga_counts(name).await?,
            });
        };
        Ok(SagaInfo {
            name: name.to_string(),
            plugin,
            state: if status.error.is_some() {
                "failed"
            } else {
                "running"
            },
            runs_here: true,
            host,
            position: status.position,
            head,
            lag: head.saturating_sub(status.position),
            error: status.error,
            instances: self.store().saga_counts(name).await?,
        })
    }

    /// The status of every saga, by name.
    pub async fn infos(&self) -> Vec<SagaInfo> {
        let mut all = Vec::new();
        for name in self.names() {
            if let Ok(info) = self.info(&name).await {
                all.push(info);
            }
        }
        all
    }

    /// One instance with its pending commands and history.
    pub async fn instance(&self, name: &str, instance: &str) -> Result<InstanceDetail, SagaError> {
        if !self.plugins().contains_key(name) {
            return Err(self.missing(name));
        }
        let record = self
            .store()
            .saga_instance(name, instance)
            .await?
            .ok_or_else(|| {
                SagaError::NotFound(format!("saga {name} has no instance {instance:?}"))
            })?;
        let pending = self.store().saga_outbox(name, instance).await?;
        let history = self
            .store()
            .saga_history(name, instance, HISTORY_SHOWN_MAX)
            .await?;
        Ok(InstanceDetail {
            record,
            pending,
            history,
        })
    }

    /// Dead letters of every saga, oldest first.
    pub async fn dead_letters(&self, after: u64, limit: u32) -> Result<Vec<DeadLetter>, SagaError> {
        Ok(self.store().dead_letters(after, limit).await?)
    }

    /// Put a dead letter back in its instance's outbox, attempts reset.
    pub async fn retry_dead_letter(&self, id: u64) -> Result<DeadLetter, SagaError> {
        let letter = self
            .store()
            .dead_letter(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(format!("no dead letter {id}")))?;
        let (reply, answer) = oneshot::channel();
        self.send(&letter.command.saga, Control::RetryDeadLetter(id, reply))
            .await?;
        answer
            .await
            .map_err(|_| SagaError::Conflict("the saga runner stopped".into()))??;
        Ok(letter)
    }

    /// Retry (or skip) the unit of work a saga's plugin failed on.
    pub async fn resume(&self, name: &str, skip: bool) -> Result<String, SagaError> {
        let (reply, answer) = oneshot::channel();
        self.send(name, Control::Resume { skip, reply }).await?;
        answer
            .await
            .map_err(|_| SagaError::Conflict("the saga runner stopped".into()))?
    }

    async fn send(&self, name: &str, control: Control) -> Result<(), SagaError> {
        let sender = self
            .read()
            .get(name)
            .map(|h| h.control.clone())
            .ok_or_else(|| SagaError::NotFound(format!("no saga named {name} runs here")))?;
        sender
            .send(control)
            .await
            .map_err(|_| SagaError::Conflict(format!("the runner of saga {name} stopped")))
    }

    /// Stop every runner (commands executing finish on their own; the
    /// outbox dispatches them again at the next start, idempotently).
    pub async fn stop_all(&self) {
        let handles: Vec<Handle> = self.write().drain().map(|(_, h)| h).collect();
        for h in handles {
            let _ = h.control.send(Control::Stop).await;
            if tokio::time::timeout(Duration::from_secs(5), h.task)
                .await
                .is_err()
            {
                tracing::warn!("a saga runner did not stop in time");
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Handle>> {
        self.runners.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Handle>> {
        self.runners.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl LeaseHolder for Sagas {
    fn lease_prefix(&self) -> &'static str {
        SAGA_PREFIX
    }

    async fn take_over(&self, name: &str) {
        self.resume_here(name);
    }

    async fn let_go(&self, name: &str) {
        self.stop_here(name).await;
    }
}
