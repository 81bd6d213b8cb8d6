//! The runner of one saga: a single task that reads the log, calls the
//! plugin, commits, and dispatches the outbox.
//!
//! Everything that changes an instance (an event, a command's result, a
//! timer) goes through this one task, so an instance never sees two units
//! of work at once; commands execute on tasks of their own, at most one per
//! instance and `dispatch_concurrency` per saga.
//!
//! This file holds the loop and the commits; what the runner does with an
//! event is in `reactions`, with a command's result and timers in `outbox`,
//! and with an operator's request in `operator`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

mod operator;
mod outbox;
mod reactions;
mod records;

use super::dispatch::{self, Outcome};
use super::{SagaConfig, SagaError, SagaStores};
use crate::command::Pipeline;
use crate::runtime::bindings::saga::SagaPre;
use crate::runtime::bindings::to_wit_event;
use crate::runtime::bindings::{
    WitFailedCommand, WitFailure, WitOutgoingCommand, WitReaction, WitTimer,
};
use crate::runtime::saga::SagaInstance;
use crate::runtime::sandbox::PluginState;
use crate::runtime::{Plugin, PluginCode, PluginError, Runtime};
use crate::store::{
    EventLog, GlobalQuery, OutboxCommand, Position, RecordedEvent, SagaCommit, SagaInstanceRecord,
    SagaStatus, SagaStore, SagaTimerRecord, StoreError, now_us,
};
use crate::time::rfc3339;

/// Longest saga instance id a plugin may return.
pub const INSTANCE_CHARS_MAX: usize = 128;
/// Longest wait between two looks at timers and retries.
const IDLE_WAKE_MAX: Duration = Duration::from_secs(1);
/// Saga commits queued at once on a store that orders writes as queued.
const PENDING_COMMITS_MAX: usize = 2;

/// What the manager asks of a runner.
pub enum Control {
    /// Run a new version of the plugin from the next unit of work on.
    Swap(Arc<Plugin>),
    /// Put a dead letter back in its instance's outbox.
    RetryDeadLetter(u64, oneshot::Sender<Result<(), SagaError>>),
    /// Retry or skip the unit of work the plugin failed on.
    Resume {
        skip: bool,
        reply: oneshot::Sender<Result<String, SagaError>>,
    },
    Stop,
}

/// What a runner publishes about itself.
#[derive(Debug, Clone, Default)]
pub struct RunnerStatus {
    /// The checkpoint: the last global position processed.
    pub position: Position,
    /// Why the runner waits for an operator, if it does.
    pub error: Option<String>,
}

/// The unit of work the plugin failed on; the runner delivers nothing more
/// to the plugin until an operator retries or skips it.
#[derive(Debug, Clone)]
enum Poison {
    Event {
        position: Position,
        message: String,
    },
    Failure {
        instance: String,
        message: String,
    },
    Timer {
        instance: String,
        name: String,
        message: String,
    },
}

impl Poison {
    fn message(&self) -> String {
        match self {
            Poison::Event { position, message } => format!("event {position}: {message}"),
            Poison::Failure { instance, message } => {
                format!("on-failure of instance {instance}: {message}")
            }
            Poison::Timer {
                instance,
                name,
                message,
            } => format!("timer {name} of instance {instance}: {message}"),
        }
    }
}

/// An instance the runner holds in memory (every one not completed).
struct Instance {
    record: SagaInstanceRecord,
    /// Its outbox, in step order; the front one is the next to execute.
    queue: VecDeque<OutboxCommand>,
    in_flight: bool,
    /// Not before this time (ms) is the front command tried again.
    retry_at_ms: i64,
    /// A refused command waiting for `on-failure`, and when it was refused.
    refused: Option<(OutboxCommand, WitFailure, i64)>,
    /// The last commit that wrote its record.
    written_by: u64,
}

impl Instance {
    fn new(record: SagaInstanceRecord) -> Self {
        Self {
            record,
            queue: VecDeque::new(),
            in_flight: false,
            retry_at_ms: 0,
            refused: None,
            written_by: 0,
        }
    }

    /// Nothing executing, nothing refused, no dead letter, and the saga has
    /// seen every event its commands produced: a timer or failure may be
    /// delivered.
    fn settled(&self, checkpoint: Position) -> bool {
        !self.in_flight
            && self.record.status != SagaStatus::Failed
            && checkpoint >= self.record.awaited_position
    }
}

type DispatchResult = (String, u64, Outcome);

/// Why a unit of work stopped: the plugin failed (poison), or something
/// that may pass (the store, the instance pool).
enum Stop {
    Poison(String),
    Transient(String),
}

impl From<PluginError> for Stop {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::Instantiate { .. } => Stop::Transient(e.to_string()),
            other => Stop::Poison(other.to_string()),
        }
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Transient(e.to_string())
    }
}

struct Runner {
    plugin: Arc<Plugin>,
    /// The log the runner reads.
    log: Arc<dyn EventLog>,
    /// Where its checkpoint, instances and outbox are kept.
    store: Arc<dyn SagaStore>,
    runtime: Runtime,
    pipeline: Arc<Pipeline>,
    config: SagaConfig,
    subscriptions: Option<Vec<String>>,
    checkpoint: Position,
    instances: HashMap<String, Instance>,
    /// (fire at ms, instance, name)
    timers: BTreeSet<(i64, String, String)>,
    poison: Option<Poison>,
    results: mpsc::UnboundedSender<DispatchResult>,
    slots: Arc<Semaphore>,
    status: watch::Sender<RunnerStatus>,
    /// The changes not committed yet, and the instances they touch.
    commit: SagaCommit,
    dirty: HashSet<String>,
    /// After a store failure, nothing is read before this time.
    pause_until: Option<tokio::time::Instant>,
    /// The commits being written, oldest first: sequence number and task.
    /// The runner goes on with the next batch in memory meanwhile. One at a
    /// time, unless the store orders writes as queued; then up to
    /// `PENDING_COMMITS_MAX`.
    pending: VecDeque<(u64, JoinHandle<Result<(), StoreError>>)>,
    /// The sequence number the changes accumulating now will commit under.
    commit_seq: u64,
    /// The last commit written, or that any later append commits with or
    /// after (the store's `commit_saga_ordered`).
    ordered_seq: u64,
    /// Outbox commands not ordered yet, by (instance, step): the commit that
    /// writes them. They are dispatched only once it is ordered, so a
    /// command never takes effect unless the decision to send it does too.
    unsettled: HashMap<(String, u64), u64>,
}

/// Start the runner of `plugin`.
pub fn spawn(
    plugin: Arc<Plugin>,
    stores: SagaStores,
    runtime: Runtime,
    pipeline: Arc<Pipeline>,
    config: SagaConfig,
) -> (
    mpsc::Sender<Control>,
    watch::Receiver<RunnerStatus>,
    JoinHandle<()>,
) {
    let (control_tx, control_rx) = mpsc::channel(16);
    let (status_tx, status_rx) = watch::channel(RunnerStatus::default());
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let runner = Runner {
        slots: Arc::new(Semaphore::new(config.dispatch_concurrency.max(1))),
        commit: SagaCommit {
            saga: plugin.name.to_string(),
            ..SagaCommit::default()
        },
        plugin,
        log: stores.log,
        store: stores.sagas,
        runtime,
        pipeline,
        config,
        subscriptions: None,
        checkpoint: 0,
        instances: HashMap::new(),
        timers: BTreeSet::new(),
        poison: None,
        results: results_tx,
        status: status_tx,
        dirty: HashSet::new(),
        pause_until: None,
        pending: VecDeque::new(),
        commit_seq: 1,
        ordered_seq: 0,
        unsettled: HashMap::new(),
    };
    let task = tokio::spawn(runner.run(control_rx, results_rx));
    (control_tx, status_rx, task)
}

fn now_ms() -> i64 {
    now_us() / 1000
}

impl Runner {
    fn name(&self) -> &str {
        &self.plugin.name
    }

    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut results: mpsc::UnboundedReceiver<DispatchResult>,
    ) {
        let mut head = self.log.subscribe_head();
        let mut load_failures = 0u32;
        while let Err(e) = self.load().await {
            load_failures += 1;
            tracing::warn!(saga = self.name(), error = %e, "saga runner cannot load its state; retrying");
            let wait = dispatch::backoff(load_failures, Duration::from_millis(200), IDLE_WAKE_MAX);
            tokio::select! {
                c = control.recv() => if matches!(c, None | Some(Control::Stop)) { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!(
            saga = self.name(),
            position = self.checkpoint,
            instances = self.instances.len(),
            "saga runner started"
        );
        loop {
            while let Ok(result) = results.try_recv() {
                self.on_result(result);
            }
            let paused = self
                .pause_until
                .is_some_and(|t| t > tokio::time::Instant::now());
            if !paused && self.poison.is_none() {
                let head_now = *head.borrow_and_update();
                self.process_events(head_now).await;
                self.deliver_failures().await;
                self.deliver_timers().await;
            }
            while self.pending.front().is_some_and(|(_, h)| h.is_finished()) {
                let done = wait_commit(&mut self.pending).await;
                self.commit_done(done).await;
            }
            self.send_commit().await;
            self.dispatch();
            self.publish();
            let caught_up = paused || self.poison.is_some() || self.checkpoint >= *head.borrow();
            if !caught_up {
                // More events to read: only look at the control channel.
                match control.try_recv() {
                    Ok(Control::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                    Ok(c) => self.on_control(c).await,
                    Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
                continue;
            }
            let wake = self.next_wake();
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                Some(result) = results.recv() => self.on_result(result),
                c = control.recv() => match c {
                    None | Some(Control::Stop) => return,
                    Some(c) => self.on_control(c).await,
                },
                done = wait_commit(&mut self.pending) => self.commit_done(done).await,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Send what changed as the next commit, unless one is being written.
    /// On a store that orders writes as queued, wait until it is queued (not
    /// written): its commands can be dispatched from then on.
    async fn send_commit(&mut self) {
        let wait_ordered = self.store.orders_writes_as_queued();
        let room = if wait_ordered { PENDING_COMMITS_MAX } else { 1 };
        if self.pending.len() >= room {
            return;
        }
        let Some(commit) = self.take_commit() else {
            return;
        };
        let seq = self.commit_seq;
        self.commit_seq += 1;
        let store = self.store.clone();
        let (ordered_tx, ordered_rx) = tokio::sync::oneshot::channel();
        self.pending.push_back((
            seq,
            tokio::spawn(async move { store.commit_saga_ordered(commit, ordered_tx).await }),
        ));
        if wait_ordered && ordered_rx.await.is_ok() {
            self.ordered_seq = self.ordered_seq.max(seq);
        }
    }

    /// A commit was written (or failed: start again from the store).
    async fn commit_done(&mut self, (seq, result): (u64, Result<(), StoreError>)) {
        match result {
            Ok(()) => {
                self.ordered_seq = self.ordered_seq.max(seq);
                self.unsettled.retain(|_, s| *s > seq);
                // Completed instances whose completion is written leave memory.
                let dirty = &self.dirty;
                self.instances.retain(|id, i| {
                    i.record.status != SagaStatus::Completed
                        || i.written_by > seq
                        || dirty.contains(id)
                });
            }
            Err(e) => self.recover(e).await,
        }
    }

    /// Read the checkpoint, the instances not completed, their outbox and
    /// their timers.
    async fn load(&mut self) -> Result<(), StoreError> {
        let loaded = self.store.saga_load(self.name()).await?;
        self.checkpoint = loaded.checkpoint.unwrap_or(0);
        self.instances.clear();
        self.timers.clear();
        for record in loaded.instances {
            self.instances
                .insert(record.instance.clone(), Instance::new(record));
        }
        for command in loaded.outbox {
            match self.instances.get_mut(&command.instance) {
                Some(i) => i.queue.push_back(command),
                None => {
                    tracing::error!(saga = %command.saga, instance = %command.instance, step = command.step, "outbox command of an unknown instance; ignored")
                }
            }
        }
        for t in loaded.timers {
            self.timers.insert((t.fire_at_ms, t.instance, t.name));
        }
        self.commit = SagaCommit {
            saga: self.name().to_string(),
            ..SagaCommit::default()
        };
        self.dirty.clear();
        Ok(())
    }

    /// After a failed commit the memory is ahead of the store: start again
    /// from the store. Commands executing finish; their results are matched
    /// by step, and a command dispatched twice is applied once (its key).
    async fn recover(&mut self, error: StoreError) {
        for (_, h) in self.pending.drain(..) {
            let _ = h.await;
        }
        self.unsettled.clear();
        tracing::warn!(saga = self.name(), error = %error, "saga commit failed; reloading from the store");
        self.pause_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
        if let Err(e) = self.load().await {
            tracing::warn!(saga = self.name(), error = %e, "saga reload failed");
        }
    }

    fn publish(&self) {
        self.status.send_replace(RunnerStatus {
            position: self.checkpoint,
            error: self.poison.as_ref().map(Poison::message),
        });
    }

    fn next_wake(&self) -> tokio::time::Instant {
        let now = now_ms();
        let mut wake_ms = now + IDLE_WAKE_MAX.as_millis() as i64;
        if let Some((at, _, _)) = self.timers.first() {
            wake_ms = wake_ms.min(*at);
        }
        for i in self.instances.values() {
            if !i.in_flight && !i.queue.is_empty() && i.retry_at_ms > now {
                wake_ms = wake_ms.min(i.retry_at_ms);
            }
        }
        let delay = Duration::from_millis((wake_ms - now).max(1) as u64);
        tokio::time::Instant::now() + delay
    }

    fn pre(&self) -> Result<SagaPre<PluginState>, Stop> {
        match &self.plugin.code {
            PluginCode::Saga(pre) => Ok(pre.clone()),
            _ => Err(Stop::Poison(format!(
                "plugin {} is not a saga",
                self.name()
            ))),
        }
    }

    async fn instance_at(&self, now_ms: i64) -> Result<SagaInstance, Stop> {
        let pre = self.pre()?;
        Ok(SagaInstance::new(&self.runtime, &self.plugin, &pre, now_ms).await?)
    }

    // ----- commit and dispatch -----

    /// The changes accumulated since the last commit, if any.
    fn take_commit(&mut self) -> Option<SagaCommit> {
        let mut dirty: Vec<String> = self.dirty.drain().collect();
        dirty.sort();
        for id in &dirty {
            if let Some(i) = self.instances.get_mut(id) {
                i.written_by = self.commit_seq;
                self.commit.instances.push(i.record.clone());
            }
        }
        let c = &self.commit;
        let empty = c.checkpoint.is_none()
            && c.instances.is_empty()
            && c.outbox_put.is_empty()
            && c.outbox_delete.is_empty()
            && c.dead_letters.is_empty()
            && c.dead_letters_delete.is_empty()
            && c.timers_put.is_empty()
            && c.timers_delete.is_empty()
            && c.history.is_empty();
        if empty {
            return None;
        }
        let saga = self.name().to_string();
        Some(std::mem::replace(
            &mut self.commit,
            SagaCommit {
                saga,
                ..SagaCommit::default()
            },
        ))
    }

    /// Write everything now (an operator's action answers once it is
    /// durable): wait for the commit being written, then commit the rest.
    async fn flush(&mut self) -> Result<(), StoreError> {
        while !self.pending.is_empty() {
            let (seq, result) = wait_commit(&mut self.pending).await;
            if let Err(e) = result {
                self.commit_done((seq, Err(e.clone()))).await;
                return Err(e);
            }
            self.commit_done((seq, Ok(()))).await;
        }
        let Some(mut commit) = self.take_commit() else {
            return Ok(());
        };
        commit.durable = true;
        let seq = self.commit_seq;
        self.commit_seq += 1;
        let result = self.store.commit_saga(commit).await;
        let failed = result.as_ref().err().cloned();
        self.commit_done((seq, result)).await;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The result of the oldest commit being written; never resolves when there
/// is none.
async fn wait_commit(
    pending: &mut VecDeque<(u64, JoinHandle<Result<(), StoreError>>)>,
) -> (u64, Result<(), StoreError>) {
    let Some((seq, handle)) = pending.front_mut() else {
        return std::future::pending().await;
    };
    let seq = *seq;
    let result = match handle.await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Unavailable(format!(
            "the commit task failed: {e}"
        ))),
    };
    pending.pop_front();
    (seq, result)
}
