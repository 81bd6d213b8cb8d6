//! The runner of one saga: a single task that reads the log, calls the
//! plugin, commits, and dispatches the outbox.
//!
//! Everything that changes an instance (an event, a command's result, a
//! timer) goes through this one task, so an instance never sees two units
//! of work at once; commands execute on tasks of their own, at most one per
//! instance and `dispatch_concurrency` per saga.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::dispatch::{self, Outcome};
use super::{SagaConfig, SagaError, rfc3339};
use crate::command::Pipeline;
use crate::command::pipeline::to_wit_event;
use crate::runtime::bindings::saga::SagaPre;
use crate::runtime::bindings::{
    WitFailedCommand, WitFailure, WitOutgoingCommand, WitReaction, WitTimer,
};
use crate::runtime::saga::SagaInstance;
use crate::runtime::sandbox::PluginState;
use crate::runtime::{Plugin, PluginCode, PluginError, Runtime};
use crate::store::{
    EventStore, GlobalQuery, OutboxCommand, Position, RecordedEvent, SagaCommit, SagaHistoryEntry,
    SagaInstanceRecord, SagaStatus, SagaTimerRecord, StoreError, now_us,
};

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
    store: Arc<dyn EventStore>,
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
    store: Arc<dyn EventStore>,
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
        store,
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
        let mut head = self.store.subscribe_head();
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

    // ----- events -----

    async fn process_events(&mut self, head: Position) {
        if self.checkpoint >= head {
            return;
        }
        if self.subscriptions.is_none() {
            match self.load_subscriptions().await {
                Ok(s) => self.subscriptions = Some(s),
                Err(Stop::Poison(message)) => {
                    self.poison = Some(Poison::Event {
                        position: self.checkpoint + 1,
                        message,
                    });
                    return;
                }
                Err(Stop::Transient(message)) => {
                    self.pause(&message);
                    return;
                }
            }
        }
        let types = self.subscriptions.clone().unwrap_or_default();
        let events = match self
            .store
            .read_global(GlobalQuery {
                from_position: self.checkpoint + 1,
                until_position: Some(head),
                limit: self.config.batch_size.max(1),
                types: (!types.is_empty()).then_some(types.as_slice()),
            })
            .await
        {
            Ok(events) => events,
            Err(e) => {
                self.pause(&e.to_string());
                return;
            }
        };
        let full = events.len() >= self.config.batch_size.max(1) as usize;
        let mut last = match (full, events.last()) {
            (true, Some(e)) => e.position,
            _ => head,
        };
        // Which instance each event belongs to, first, so that the instances
        // not in memory are read in one query rather than one per event.
        let mut ids: Vec<Option<String>> = Vec::with_capacity(events.len());
        let mut stopped: Option<(Position, Stop)> = None;
        // One plugin instance maps the whole batch: a JavaScript or Python
        // instance costs about a millisecond to start.
        let mut correlator: Option<SagaInstance> = None;
        for event in &events {
            match self.correlate(&mut correlator, event).await {
                Ok(id) => ids.push(id),
                Err(stop) => {
                    stopped = Some((event.position, stop));
                    break;
                }
            }
        }
        drop(correlator);
        let completed = match self.load_instances(&ids).await {
            Ok(completed) => completed,
            Err(e) => {
                self.pause(&e.to_string());
                return;
            }
        };
        for (event, id) in events.iter().zip(ids) {
            let Some(id) = id else { continue };
            if let Err(stop) = self.react_to(event, id, &completed).await {
                stopped = Some((event.position, stop));
                break;
            }
        }
        if let Some((position, stop)) = stopped {
            last = position - 1;
            match stop {
                Stop::Poison(message) => {
                    tracing::error!(saga = self.name(), position, %message, "saga failed on an event; it waits for an operator");
                    self.poison = Some(Poison::Event { position, message });
                }
                Stop::Transient(message) => self.pause(&message),
            }
        }
        if last > self.checkpoint {
            let from = self.commit.checkpoint.map_or(self.checkpoint, |(f, _)| f);
            self.commit.checkpoint = Some((from, last));
            self.checkpoint = last;
        }
    }

    fn pause(&mut self, message: &str) {
        tracing::warn!(saga = self.name(), %message, "saga paused after a transient failure");
        self.pause_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
    }

    async fn load_subscriptions(&self) -> Result<Vec<String>, Stop> {
        let mut instance = self.instance_at(now_ms()).await?;
        Ok(instance.subscriptions().await?)
    }

    /// The instance an event belongs to, if any, asked of `plugin` (started
    /// on first use and reused for the rest of the batch).
    async fn correlate(
        &self,
        plugin: &mut Option<SagaInstance>,
        event: &RecordedEvent,
    ) -> Result<Option<String>, Stop> {
        let wit = to_wit_event(event);
        let plugin = match plugin {
            Some(plugin) => plugin,
            None => plugin.insert(self.instance_at(wit.recorded_at_ms).await?),
        };
        let Some(id) = plugin.correlate(&wit).await? else {
            return Ok(None);
        };
        validate_instance_id(&id).map_err(Stop::Poison)?;
        Ok(Some(id))
    }

    /// Read the instances among `ids` not in memory (every instance not
    /// completed is in memory once loaded, so these are new or completed);
    /// the completed ones.
    async fn load_instances(
        &mut self,
        ids: &[Option<String>],
    ) -> Result<HashSet<String>, StoreError> {
        let mut unknown: Vec<String> = ids
            .iter()
            .flatten()
            .filter(|id| !self.instances.contains_key(*id))
            .cloned()
            .collect();
        unknown.sort();
        unknown.dedup();
        let mut completed = HashSet::new();
        if unknown.is_empty() {
            return Ok(completed);
        }
        for record in self.store.saga_instances(self.name(), &unknown).await? {
            if record.status == SagaStatus::Completed {
                completed.insert(record.instance);
            } else {
                self.instances
                    .insert(record.instance.clone(), Instance::new(record));
            }
        }
        Ok(completed)
    }

    /// React to an event of instance `id` (a new one unless it is in memory
    /// or in `completed`, which takes no more events).
    async fn react_to(
        &mut self,
        event: &RecordedEvent,
        id: String,
        completed: &HashSet<String>,
    ) -> Result<(), Stop> {
        if !self.instances.contains_key(&id) {
            if completed.contains(&id) {
                return Ok(());
            }
            let now = now_us();
            let record = SagaInstanceRecord {
                saga: self.name().to_string(),
                instance: id.clone(),
                state: Vec::new(),
                status: SagaStatus::Running,
                done: false,
                next_step: 1,
                awaited_position: 0,
                created_at_us: now,
                updated_at_us: now,
            };
            self.instances.insert(id.clone(), Instance::new(record));
        }
        let Some(state) = self
            .instances
            .get(&id)
            .filter(|i| !i.record.done)
            .map(|i| i.record.state.clone())
        else {
            return Ok(());
        };
        let wit = to_wit_event(event);
        let mut plugin = self.instance_at(wit.recorded_at_ms).await?;
        let reaction = plugin
            .react(&state, &wit)
            .await?
            .map_err(|e| Stop::Poison(format!("react returned an error: {e}")))?;
        let entry = json!({
            "kind": "event",
            "position": event.position,
            "stream_id": event.stream_id,
            "type": event.event_type,
        });
        self.apply(&id, reaction, &event.position.to_string(), entry)
            .map_err(Stop::Poison)
    }

    // ----- reactions -----

    /// Record what the plugin decided for instance `id`: new state, outbox
    /// commands, timer, flags; `entry` is the history entry, completed with
    /// what was decided.
    fn apply(
        &mut self,
        id: &str,
        reaction: WitReaction,
        causation: &str,
        mut entry: Value,
    ) -> Result<(), String> {
        let limits = self.pipeline.limits().clone();
        if reaction.state.len() > limits.view_value_bytes_max {
            return Err(format!(
                "the instance state of {} bytes is over the limit of {} bytes",
                reaction.state.len(),
                limits.view_value_bytes_max
            ));
        }
        for c in &reaction.commands {
            validate_command(c, limits.event_bytes_max)?;
        }
        if let Some(t) = &reaction.timer
            && t.name.is_empty()
        {
            return Err("a timer has an empty name".into());
        }
        let saga = self.name().to_string();
        let now = now_us();
        let Some(inst) = self.instances.get_mut(id) else {
            return Err(format!("instance {id} is not loaded"));
        };
        inst.record.state = reaction.state;
        inst.record.updated_at_us = now;
        if reaction.cancel_pending {
            let keep = usize::from(inst.in_flight);
            while inst.queue.len() > keep {
                if let Some(c) = inst.queue.pop_back() {
                    drop_from_outbox(&mut self.commit, id, c.step);
                    self.commit.history.push(history(
                        id,
                        json!({"kind": "command", "step": c.step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "outcome": "cancelled"}),
                    ));
                }
            }
            inst.retry_at_ms = 0;
        }
        let mut steps = Vec::new();
        for c in reaction.commands {
            let step = inst.record.next_step;
            inst.record.next_step += 1;
            let metadata = json!({
                "correlation_id": id,
                "causation_id": causation,
                "saga": saga,
                "saga_instance": id,
                "saga_step": step,
            });
            let command = OutboxCommand {
                saga: saga.clone(),
                instance: id.to_string(),
                step,
                aggregate: c.aggregate,
                aggregate_id: c.id,
                command_type: c.command_type,
                data: String::from_utf8(c.data).unwrap_or_default(),
                metadata: metadata.to_string(),
                compensating: reaction.compensating,
                attempts: 0,
                errors: Vec::new(),
                created_at_us: now,
                idempotency_key: dispatch::idempotency_key(&saga, id, step, now),
            };
            steps.push(json!({"step": step, "aggregate": command.aggregate, "id": command.aggregate_id, "type": command.command_type}));
            self.commit.outbox_put.push(command.clone());
            self.unsettled
                .insert((id.to_string(), step), self.commit_seq);
            inst.queue.push_back(command);
        }
        if let Some(t) = reaction.timer {
            self.timers.retain(|(_, i, n)| !(i == id && *n == t.name));
            self.timers
                .insert((t.fire_at_ms, id.to_string(), t.name.clone()));
            self.commit.timers_put.push(SagaTimerRecord {
                instance: id.to_string(),
                name: t.name.clone(),
                fire_at_ms: t.fire_at_ms,
            });
            entry["timer"] = json!({"name": t.name, "fire_at": rfc3339(t.fire_at_ms * 1000)});
        }
        if reaction.compensating && inst.record.status != SagaStatus::Failed {
            inst.record.status = SagaStatus::Compensating;
        }
        if reaction.done {
            inst.record.done = true;
        }
        entry["commands"] = Value::Array(steps);
        entry["compensating"] = reaction.compensating.into();
        entry["cancel_pending"] = reaction.cancel_pending.into();
        entry["done"] = reaction.done.into();
        self.commit.history.push(history(id, entry));
        self.dirty.insert(id.to_string());
        self.maybe_complete(id);
        Ok(())
    }

    /// Complete an instance that is done once nothing of it is left to run.
    fn maybe_complete(&mut self, id: &str) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if !inst.record.done
            || !inst.queue.is_empty()
            || inst.in_flight
            || inst.refused.is_some()
            || inst.record.status == SagaStatus::Failed
        {
            return;
        }
        inst.record.status = SagaStatus::Completed;
        self.timers.retain(|(_, i, _)| i != id);
        self.commit.timers_delete.push((id.to_string(), None));
        self.commit
            .history
            .push(history(id, json!({"kind": "completed"})));
        self.dirty.insert(id.to_string());
    }

    // ----- command results -----

    fn on_result(&mut self, (id, step, outcome): DispatchResult) {
        let max_attempts = self.config.max_attempts.max(1);
        let (base, max) = (self.config.retry_base, self.config.retry_max);
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        if inst.queue.front().map(|c| c.step) != Some(step) {
            // A result of a command this runner no longer holds (reloaded
            // or cancelled meanwhile).
            return;
        }
        inst.in_flight = false;
        let now = now_us();
        inst.record.updated_at_us = now;
        self.dirty.insert(id.clone());
        match outcome {
            Outcome::Applied {
                position,
                version,
                events,
                replayed,
            } => {
                let Some(c) = inst.queue.pop_front() else {
                    return;
                };
                inst.record.awaited_position = inst.record.awaited_position.max(position);
                inst.retry_at_ms = 0;
                drop_from_outbox(&mut self.commit, &id, step);
                self.commit.history.push(history(
                    &id,
                    json!({"kind": "command", "step": step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "outcome": "applied", "version": version, "position": position, "events": events, "replayed": replayed, "attempts": c.attempts + 1}),
                ));
                self.maybe_complete(&id);
            }
            Outcome::Refused(failure) => {
                let Some(c) = inst.queue.pop_front() else {
                    return;
                };
                drop_from_outbox(&mut self.commit, &id, step);
                self.commit.history.push(history(
                    &id,
                    json!({"kind": "command", "step": step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "outcome": "refused", "error": failure_json(&failure)}),
                ));
                inst.refused = Some((c, failure, now / 1000));
            }
            Outcome::Transient { code, message } => {
                let Some(c) = inst.queue.front_mut() else {
                    return;
                };
                c.attempts += 1;
                c.errors
                    .push(json!({"at": rfc3339(now), "code": code, "message": message}));
                let attempts = c.attempts;
                let summary = json!({"kind": "command", "step": step, "aggregate": c.aggregate, "id": c.aggregate_id, "type": c.command_type, "compensating": c.compensating, "attempt": attempts, "error": {"code": code, "message": message}});
                if attempts >= max_attempts {
                    let Some(c) = inst.queue.pop_front() else {
                        return;
                    };
                    tracing::warn!(saga = %c.saga, instance = %id, step, attempts, "saga command moved to the dead-letter list");
                    inst.record.status = SagaStatus::Failed;
                    self.commit.dead_letters.push(c);
                    let mut entry = summary;
                    entry["outcome"] = "dead_letter".into();
                    self.commit.history.push(history(&id, entry));
                } else {
                    let delay = dispatch::backoff(attempts, base, max);
                    inst.retry_at_ms = now / 1000 + delay.as_millis() as i64;
                    self.commit.outbox_put.push(c.clone());
                    let mut entry = summary;
                    entry["outcome"] = "retry".into();
                    entry["retry_in_ms"] = (delay.as_millis() as u64).into();
                    self.commit.history.push(history(&id, entry));
                }
            }
        }
    }

    // ----- failures and timers -----

    async fn deliver_failures(&mut self) {
        let ready: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, i)| i.refused.is_some() && i.settled(self.checkpoint))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            if self.poison.is_some() {
                return;
            }
            let Some((command, failure, at_ms)) =
                self.instances.get(&id).and_then(|i| i.refused.clone())
            else {
                continue;
            };
            let state = self
                .instances
                .get(&id)
                .map(|i| i.record.state.clone())
                .unwrap_or_default();
            let failed = WitFailedCommand {
                command: WitOutgoingCommand {
                    aggregate: command.aggregate.clone(),
                    id: command.aggregate_id.clone(),
                    command_type: command.command_type.clone(),
                    data: command.data.clone().into_bytes(),
                },
                failure: failure.clone(),
            };
            let result = async {
                let mut plugin = self.instance_at(at_ms).await?;
                plugin
                    .on_failure(&state, &failed)
                    .await?
                    .map_err(|e| Stop::Poison(format!("on-failure returned an error: {e}")))
            }
            .await;
            let entry = json!({"kind": "failure", "step": command.step, "type": command.command_type, "error": failure_json(&failure)});
            let applied = match result {
                Ok(reaction) => {
                    if let Some(i) = self.instances.get_mut(&id) {
                        i.refused = None;
                    }
                    self.apply(&id, reaction, &format!("command:{}", command.step), entry)
                        .map_err(Stop::Poison)
                }
                Err(stop) => Err(stop),
            };
            match applied {
                Ok(()) => {}
                Err(Stop::Poison(message)) => {
                    if let Some(i) = self.instances.get_mut(&id) {
                        i.refused = Some((command, failure, at_ms));
                    }
                    tracing::error!(saga = self.name(), instance = %id, %message, "saga failed in on-failure; it waits for an operator");
                    self.poison = Some(Poison::Failure {
                        instance: id,
                        message,
                    });
                }
                Err(Stop::Transient(message)) => {
                    self.pause(&message);
                    return;
                }
            }
        }
    }

    async fn deliver_timers(&mut self) {
        let now = now_ms();
        let due: Vec<(i64, String, String)> = self
            .timers
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .filter(|(_, id, _)| {
                self.instances
                    .get(id)
                    .is_some_and(|i| i.refused.is_none() && i.settled(self.checkpoint))
            })
            .cloned()
            .collect();
        for (at, id, name) in due {
            if self.poison.is_some() {
                return;
            }
            let state = self
                .instances
                .get(&id)
                .map(|i| i.record.state.clone())
                .unwrap_or_default();
            let timer = WitTimer {
                name: name.clone(),
                fire_at_ms: at,
            };
            let result = async {
                let mut plugin = self.instance_at(at).await?;
                plugin
                    .on_timer(&state, &timer)
                    .await?
                    .map_err(|e| Stop::Poison(format!("on-timer returned an error: {e}")))
            }
            .await;
            let entry = json!({"kind": "timer", "name": name, "fire_at": rfc3339(at * 1000)});
            let applied = match result {
                Ok(reaction) => {
                    self.timers.remove(&(at, id.clone(), name.clone()));
                    self.commit
                        .timers_delete
                        .push((id.clone(), Some(name.clone())));
                    self.apply(&id, reaction, &format!("timer:{name}"), entry)
                        .map_err(Stop::Poison)
                }
                Err(stop) => Err(stop),
            };
            match applied {
                Ok(()) => {}
                Err(Stop::Poison(message)) => {
                    tracing::error!(saga = self.name(), instance = %id, timer = %name, %message, "saga failed in on-timer; it waits for an operator");
                    self.poison = Some(Poison::Timer {
                        instance: id,
                        name,
                        message,
                    });
                }
                Err(Stop::Transient(message)) => {
                    self.pause(&message);
                    return;
                }
            }
        }
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
                let message = e.to_string();
                self.commit_done((seq, Err(e))).await;
                return Err(StoreError::Unavailable(message));
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
        let failed = result
            .as_ref()
            .err()
            .map(|e| StoreError::Unavailable(e.to_string()));
        self.commit_done((seq, result)).await;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Start the next command of every instance that has one ready.
    fn dispatch(&mut self) {
        let now = now_ms();
        for (id, inst) in self.instances.iter_mut() {
            if inst.in_flight
                || inst.refused.is_some()
                || inst.record.status == SagaStatus::Failed
                || inst.retry_at_ms > now
            {
                continue;
            }
            let Some(command) = inst.queue.front().cloned() else {
                continue;
            };
            if self
                .unsettled
                .get(&(id.clone(), command.step))
                .is_some_and(|seq| *seq > self.ordered_seq)
            {
                // Its commit is neither written nor ordered before it yet.
                continue;
            }
            inst.in_flight = true;
            let pipeline = self.pipeline.clone();
            let results = self.results.clone();
            let slots = self.slots.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let outcome = dispatch::execute(&pipeline, &command).await;
                let _ = results.send((id, command.step, outcome));
            });
        }
    }

    // ----- operators -----

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Stop => {}
            Control::Swap(plugin) => {
                tracing::info!(saga = self.name(), hash = %plugin.hash, "saga runs a new version");
                self.plugin = plugin;
                self.subscriptions = None;
                self.poison = None;
            }
            Control::RetryDeadLetter(id, reply) => {
                let result = self.retry_dead_letter(id).await;
                let _ = reply.send(result);
            }
            Control::Resume { skip, reply } => {
                let result = self.resume(skip).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn retry_dead_letter(&mut self, id: u64) -> Result<(), SagaError> {
        let letter = self
            .store
            .dead_letter(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(format!("no dead letter {id}")))?;
        let mut command = letter.command;
        let instance = command.instance.clone();
        if !self.instances.contains_key(&instance) {
            let record = self
                .store
                .saga_instance(self.name(), &instance)
                .await?
                .ok_or_else(|| {
                    SagaError::NotFound(format!(
                        "the instance {instance} of dead letter {id} is gone"
                    ))
                })?;
            self.instances
                .insert(instance.clone(), Instance::new(record));
        }
        command.attempts = 0;
        let Some(inst) = self.instances.get_mut(&instance) else {
            return Err(SagaError::NotFound(format!("instance {instance}")));
        };
        let at = inst
            .queue
            .iter()
            .position(|c| c.step > command.step)
            .unwrap_or(inst.queue.len());
        if at == 0 && inst.in_flight {
            return Err(SagaError::Conflict(format!(
                "instance {instance} has a command executing; retry in a moment"
            )));
        }
        inst.queue.insert(at, command.clone());
        inst.retry_at_ms = 0;
        inst.record.status = if command.compensating || inst.queue.iter().any(|c| c.compensating) {
            SagaStatus::Compensating
        } else {
            SagaStatus::Running
        };
        self.commit.dead_letters_delete.push(id);
        self.commit.outbox_put.push(command.clone());
        self.commit.history.push(history(
            &instance,
            json!({"kind": "retry", "dead_letter": id, "step": command.step}),
        ));
        self.dirty.insert(instance);
        self.flush().await?;
        self.dispatch();
        Ok(())
    }

    async fn resume(&mut self, skip: bool) -> Result<String, SagaError> {
        let Some(poison) = self.poison.take() else {
            return Err(SagaError::Conflict(format!(
                "saga {} is not waiting for an operator",
                self.name()
            )));
        };
        if !skip {
            return Ok(format!("retrying {}", poison.message()));
        }
        match &poison {
            Poison::Event { position, .. } => {
                let from = self.commit.checkpoint.map_or(self.checkpoint, |(f, _)| f);
                self.commit.checkpoint = Some((from, *position));
                self.checkpoint = *position;
            }
            Poison::Failure { instance, .. } => {
                if let Some(i) = self.instances.get_mut(instance) {
                    i.refused = None;
                }
                self.commit.history.push(history(
                    instance,
                    json!({"kind": "failure", "outcome": "skipped"}),
                ));
                self.dirty.insert(instance.clone());
                self.maybe_complete(&instance.clone());
            }
            Poison::Timer { instance, name, .. } => {
                self.timers
                    .retain(|(_, i, n)| !(i == instance && n == name));
                self.commit
                    .timers_delete
                    .push((instance.clone(), Some(name.clone())));
                self.commit.history.push(history(
                    instance,
                    json!({"kind": "timer", "name": name, "outcome": "skipped"}),
                ));
            }
        }
        if let Err(e) = self.flush().await {
            self.poison = Some(poison);
            return Err(e.into());
        }
        self.publish();
        Ok(format!("skipped {}", poison.message()))
    }
}

fn history(instance: &str, entry: Value) -> SagaHistoryEntry {
    SagaHistoryEntry {
        instance: instance.to_string(),
        at_us: now_us(),
        entry,
    }
}

fn failure_json(failure: &WitFailure) -> Value {
    match failure {
        WitFailure::Rejected(r) => {
            json!({"code": "rejected", "reason": r.code, "message": r.message})
        }
        WitFailure::Invalid(m) => json!({"code": "invalid_command", "message": m}),
    }
}

fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > INSTANCE_CHARS_MAX || id.chars().any(char::is_control)
    {
        return Err(format!(
            "correlate returned the instance id {id:?}: use 1 to {INSTANCE_CHARS_MAX} characters, no control characters"
        ));
    }
    Ok(())
}

fn validate_command(c: &WitOutgoingCommand, data_bytes_max: usize) -> Result<(), String> {
    crate::registry::validate_name(&c.aggregate)
        .map_err(|e| format!("a command names a bad aggregate: {e}"))?;
    if c.id.is_empty()
        || c.id.chars().count() > crate::command::pipeline::ID_CHARS_MAX
        || c.id.chars().any(char::is_control)
    {
        return Err(format!(
            "a command for {} has a bad id {:?}",
            c.aggregate, c.id
        ));
    }
    if c.command_type.is_empty() {
        return Err(format!(
            "a command for {}-{} has an empty type",
            c.aggregate, c.id
        ));
    }
    if c.data.len() > data_bytes_max {
        return Err(format!(
            "a {} command has data of {} bytes, over the limit of {data_bytes_max}",
            c.command_type,
            c.data.len()
        ));
    }
    let text = std::str::from_utf8(&c.data)
        .map_err(|_| format!("the data of a {} command is not UTF-8 JSON", c.command_type))?;
    serde_json::from_str::<&serde_json::value::RawValue>(text)
        .map_err(|e| format!("the data of a {} command is not JSON: {e}", c.command_type))?;
    Ok(())
}

/// Remove an outbox command in `commit`, and any write of it the same
/// commit holds (a retry's new attempt count), so that the row cannot come
/// back whatever order a backend applies them in.
fn drop_from_outbox(commit: &mut SagaCommit, instance: &str, step: u64) {
    commit
        .outbox_put
        .retain(|c| !(c.instance == instance && c.step == step));
    commit.outbox_delete.push((instance.to_string(), step));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_command_is_not_written_back_by_the_same_commit() {
        let command = OutboxCommand {
            saga: "s".into(),
            instance: "i".into(),
            step: 2,
            aggregate: "bank_account".into(),
            aggregate_id: "a".into(),
            command_type: "Deposit".into(),
            data: "{}".into(),
            metadata: "{}".into(),
            compensating: false,
            attempts: 1,
            errors: vec![],
            created_at_us: 0,
            idempotency_key: "k".into(),
        };
        let mut other = command.clone();
        other.step = 3;
        let mut commit = SagaCommit {
            outbox_put: vec![command, other],
            ..SagaCommit::default()
        };
        drop_from_outbox(&mut commit, "i", 2);
        assert_eq!(
            commit.outbox_put.iter().map(|c| c.step).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(commit.outbox_delete, vec![("i".to_string(), 2)]);
    }

    #[test]
    fn instance_ids_and_commands_are_checked() {
        assert!(validate_instance_id("t1").is_ok());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("a\nb").is_err());
        assert!(validate_instance_id(&"x".repeat(INSTANCE_CHARS_MAX + 1)).is_err());
        let ok = WitOutgoingCommand {
            aggregate: "bank_account".into(),
            id: "a".into(),
            command_type: "Deposit".into(),
            data: br#"{"amount": 5}"#.to_vec(),
        };
        assert!(validate_command(&ok, 1024).is_ok());
        let mut bad = ok.clone();
        bad.data = b"{not json".to_vec();
        assert!(
            validate_command(&bad, 1024)
                .unwrap_err()
                .contains("not JSON")
        );
        let mut bad = ok.clone();
        bad.aggregate = "Bank-Account".into();
        assert!(validate_command(&bad, 1024).is_err());
        assert!(
            validate_command(&ok, 4)
                .unwrap_err()
                .contains("over the limit")
        );
    }
}
