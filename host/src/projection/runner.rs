//! One runner per projection generation: woken by commits, it reads the
//! global log from its checkpoint in batches, runs one instance per batch
//! and commits the batch's view writes with the new checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

mod read_ahead;

use read_ahead::ReadAhead;

use super::ProjectionConfig;
use super::view::{RowCache, ViewSession};
use crate::runtime::bindings::to_wit_event;
use crate::runtime::projection::ProjectionInstance;
use crate::runtime::{Plugin, PluginCode, PluginError, Runtime};
use crate::store::{
    EventLog, Position, RecordedEvent, RowWrite, SkipRecord, StoreError, ViewCommit, ViewStore,
};

/// Where the generation that serves reads is, for read-your-writes waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Serving {
    pub generation: u64,
    pub position: Position,
    /// The generation stopped on a poison event: it goes no further until
    /// an operator resumes it, so a wait for a later position ends at once.
    pub failed: bool,
}

/// A poison event: the plugin failed on it, so the generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// The event the plugin failed on (0 when it failed before any event,
    /// e.g. in `subscriptions`).
    pub position: Position,
    pub stream_id: String,
    pub event_type: String,
    pub message: String,
}

/// What a runner reports about itself.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The checkpoint.
    pub position: Position,
    /// The head the runner last saw.
    pub head: Position,
    pub poison: Option<Poison>,
    /// A transient store problem the runner is retrying.
    pub retrying: Option<String>,
    pub events_processed: u64,
    pub batches: u64,
    pub last_batch: Duration,
    /// Where the time went since start: waiting for reads, in the plugin
    /// (instantiate and call), and committing.
    pub read_time: Duration,
    pub plugin_time: Duration,
    pub commit_time: Duration,
    pub stopped: bool,
}

/// An operator's instruction to a runner.
#[derive(Debug)]
pub enum Control {
    /// Retry a failed generation, or skip its poison event; `reply` hears
    /// how the retry went once the runner knows.
    Resume {
        skip: bool,
        reply: oneshot::Sender<RetryOutcome>,
    },
    Stop,
}

/// How a resumed generation did on the event it had failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// It processed (or skipped) the event and went on.
    Passed,
    /// It failed again on it.
    FailedAgain(Poison),
}

/// What the runner tells the manager.
#[derive(Debug, Clone)]
pub enum RunnerEvent {
    /// The generation processed everything up to the head it saw.
    CaughtUp { name: Arc<str>, generation: u64 },
}

/// The state a runner shares with the manager and the API.
pub struct Generation {
    pub name: Arc<str>,
    pub generation: u64,
    pub plugin: Arc<Plugin>,
    pub progress: Mutex<Progress>,
    /// Whether this generation serves reads; it then publishes its position
    /// to `serving`.
    pub is_serving: AtomicBool,
    serving: Arc<watch::Sender<Serving>>,
    control: mpsc::Sender<Control>,
}

impl Generation {
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Make this generation the one reads use, from its current position.
    pub fn start_serving(&self) {
        self.is_serving.store(true, Ordering::SeqCst);
        let progress = self.progress();
        self.serving.send_replace(Serving {
            generation: self.generation,
            position: progress.position,
            failed: progress.poison.is_some(),
        });
    }

    /// Record (or clear) the poison event this generation stopped on, and
    /// tell the readers waiting on it when it serves.
    fn set_poison(&self, poison: Option<Poison>) {
        let failed = poison.is_some();
        self.update(|p| p.poison = poison);
        if self.is_serving.load(Ordering::SeqCst) {
            self.serving.send_if_modified(|s| {
                if s.generation == self.generation && s.failed != failed {
                    s.failed = failed;
                    true
                } else {
                    false
                }
            });
        }
    }

    pub fn stop_serving(&self) {
        self.is_serving.store(false, Ordering::SeqCst);
    }

    /// Send an instruction; false when the runner has ended.
    pub async fn control(&self, control: Control) -> bool {
        self.control.send(control).await.is_ok()
    }
}

/// Everything a runner needs.
pub struct RunnerContext {
    /// The log the runners read.
    pub log: Arc<dyn EventLog>,
    /// The views they write.
    pub views: Arc<dyn ViewStore>,
    pub runtime: Runtime,
    pub config: ProjectionConfig,
    pub events: mpsc::UnboundedSender<RunnerEvent>,
}

/// Start a runner for `generation` of `plugin`'s projection, from `position`.
pub fn spawn(
    ctx: Arc<RunnerContext>,
    plugin: Arc<Plugin>,
    generation: u64,
    position: Position,
    serving: Arc<watch::Sender<Serving>>,
) -> Arc<Generation> {
    let (control, control_rx) = mpsc::channel(8);
    let shared = Arc::new(Generation {
        name: plugin.name.clone(),
        generation,
        plugin,
        progress: Mutex::new(Progress {
            position,
            ..Progress::default()
        }),
        is_serving: AtomicBool::new(false),
        serving,
        control,
    });
    let runner = Runner {
        ctx,
        shared: shared.clone(),
        position,
        claimed: position,
        control: control_rx,
        retry: None,
    };
    tokio::spawn(runner.run());
    shared
}

struct Runner {
    ctx: Arc<RunnerContext>,
    shared: Arc<Generation>,
    /// The checkpoint: the last position whose batch has committed.
    position: Position,
    /// The last position handed to the plugin: ahead of `position` while a
    /// batch's commit is in flight.
    claimed: Position,
    control: mpsc::Receiver<Control>,
    /// An operator's resume waiting to hear how the retry of the poison
    /// event went: the event's position and where to answer.
    retry: Option<(Position, oneshot::Sender<RetryOutcome>)>,
}

/// A batch whose commit runs while the next batch is in the plugin.
struct InFlight {
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
    to: Position,
    events: u64,
    started: Instant,
    last_batch: bool,
}

/// Why a batch did not commit.
enum BatchError {
    /// The plugin failed (trap, timeout, its own error): poison.
    Plugin(String),
    /// The store failed; retry later.
    Store(StoreError),
}

/// What the runner's loop does after a step.
enum Next {
    /// Go round again.
    Go,
    /// End the runner.
    Finish,
}

/// The loop's working state between batches.
struct Pass {
    /// The event types the projection asks for (`None`: all).
    types: Option<Arc<[String]>>,
    /// Batches read ahead while catching up.
    prefetched: Option<ReadAhead>,
    /// The previous batch's commit, running while the next batch is in the
    /// plugin.
    in_flight: Option<InFlight>,
    head_rx: watch::Receiver<Position>,
    cache: RowCache,
    backoff: Backoff,
}

impl Runner {
    async fn run(mut self) {
        let generation = self.shared.generation;
        tracing::info!(projection = %self.shared.name, generation, position = self.position, plugin = %self.shared.plugin.hash, "projection runner started");
        let types = match self.subscriptions().await {
            Ok(types) => types,
            Err(message) => {
                let poison = Poison {
                    position: 0,
                    stream_id: String::new(),
                    event_type: String::new(),
                    message,
                };
                match self.wait_while_failed(poison).await {
                    Some(_) => return self.restart().await,
                    None => return self.finish(),
                }
            }
        };
        // A retry of a failed `subscriptions` got this far.
        self.retry_passed(self.position);
        let mut pass = Pass {
            types: (!types.is_empty()).then(|| types.into()),
            prefetched: None,
            in_flight: None,
            head_rx: self.ctx.log.subscribe_head(),
            cache: RowCache::new(self.ctx.config.cache_rows),
            backoff: Backoff::new(self.ctx.config.retry_backoff_max),
        };
        loop {
            match self.control.try_recv() {
                Ok(Control::Stop) => {
                    let _ = self.settle(&mut pass.in_flight, &mut pass.cache).await;
                    return self.finish();
                }
                Ok(Control::Resume { reply, .. }) => not_failed(reply),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => return self.finish(),
            }
            let head = *pass.head_rx.borrow_and_update();
            self.shared.update(|p| p.head = head);
            let next = if self.claimed >= head {
                self.idle(&mut pass, head).await
            } else {
                self.next_batch(&mut pass, head).await
            };
            if let Next::Finish = next {
                return self.finish();
            }
        }
    }

    /// Caught up: settle the last commit, then wait for a commit to the log
    /// or an instruction.
    async fn idle(&mut self, pass: &mut Pass, head: Position) -> Next {
        if let Err(e) = self.settle(&mut pass.in_flight, &mut pass.cache).await {
            return self.retry_or_finish(&e, &mut pass.backoff).await;
        }
        if self.claimed < head {
            return Next::Go;
        }
        tokio::select! {
            changed = pass.head_rx.changed() => if changed.is_err() { return Next::Finish },
            control = self.control.recv() => match control {
                None | Some(Control::Stop) => return Next::Finish,
                Some(Control::Resume { reply, .. }) => not_failed(reply),
            },
        }
        Next::Go
    }

    /// Read the next batch up to `head`, run it in the plugin and start its
    /// commit (or handle its failure).
    async fn next_batch(&mut self, pass: &mut Pass, head: Position) -> Next {
        // Catching up, the next batches are read while this one runs.
        if pass
            .prefetched
            .as_ref()
            .is_none_or(|r| r.next_from != self.claimed + 1)
        {
            pass.prefetched = Some(ReadAhead::spawn(
                self.ctx.log.clone(),
                self.claimed + 1,
                head,
                self.ctx.config.batch_size,
                pass.types.clone(),
                self.ctx.config.read_ahead.max(1),
            ));
        }
        let Some(reader) = pass.prefetched.as_mut() else {
            return Next::Go;
        };
        let read_started = Instant::now();
        let read = reader.batches.recv().await;
        let read_took = read_started.elapsed();
        self.shared.update(|p| p.read_time += read_took);
        let (events, to, last_batch) = match read {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => {
                pass.prefetched = None;
                return self.retry_or_finish(&e, &mut pass.backoff).await;
            }
            None => {
                pass.prefetched = None;
                return Next::Go;
            }
        };
        reader.next_from = to + 1;
        if last_batch {
            pass.prefetched = None;
        }
        let started = Instant::now();
        let outcome = self.run_plugin(&events, &mut pass.cache).await;
        // The previous batch's commit ran while this batch was in the
        // plugin; this batch stands on it, so settle it first.
        if let Err(e) = self.settle(&mut pass.in_flight, &mut pass.cache).await {
            pass.prefetched = None;
            return self.retry_or_finish(&e, &mut pass.backoff).await;
        }
        match outcome {
            Ok(writes) => {
                pass.backoff.reset();
                pass.cache.set_pending(&writes);
                let commit = self.commit_to(to, writes, None);
                let store = self.ctx.views.clone();
                pass.in_flight = Some(InFlight {
                    task: tokio::spawn(async move { store.commit_view(commit).await }),
                    to,
                    events: events.len() as u64,
                    started,
                    last_batch,
                });
                self.claimed = to;
                Next::Go
            }
            Err(BatchError::Store(e)) => self.retry_or_finish(&e, &mut pass.backoff).await,
            Err(BatchError::Plugin(message)) => {
                pass.prefetched = None;
                self.on_plugin_failure(&events, pass, message).await
            }
        }
    }

    /// The plugin failed on a batch: find the event it fails on, stop there
    /// and wait for an operator to retry or skip it.
    async fn on_plugin_failure(
        &mut self,
        events: &[RecordedEvent],
        pass: &mut Pass,
        message: String,
    ) -> Next {
        let poison = match self.find_poison(events, &mut pass.cache, message).await {
            Ok(poison) => poison,
            Err(e) => return self.retry_or_finish(&e, &mut pass.backoff).await,
        };
        let Some(poison) = poison else {
            return Next::Go;
        };
        match self.wait_while_failed(poison.clone()).await {
            None => return Next::Finish,
            Some(false) => {}
            Some(true) => {
                if let Err(e) = self.skip(&poison).await {
                    tracing::warn!(projection = %self.shared.name, error = %e, "could not record the skip; retrying the event");
                }
            }
        }
        Next::Go
    }

    /// After a store error: go on after a wait, or end the runner.
    async fn retry_or_finish(&mut self, error: &StoreError, backoff: &mut Backoff) -> Next {
        if self.retry_later(error, backoff).await {
            Next::Go
        } else {
            Next::Finish
        }
    }

    /// Wait for the in-flight commit, if any: on success the checkpoint
    /// moves; on failure the cache (which had its writes) is dropped and
    /// the runner goes back to the last committed position.
    async fn settle(
        &mut self,
        in_flight: &mut Option<InFlight>,
        cache: &mut RowCache,
    ) -> Result<(), StoreError> {
        let Some(flight) = in_flight.take() else {
            return Ok(());
        };
        let waited = Instant::now();
        let result = flight
            .task
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("commit task failed: {e}"))));
        let commit_took = waited.elapsed();
        self.shared.update(|p| p.commit_time += commit_took);
        match result {
            Ok(()) => {
                cache.pending_committed();
                self.advanced(flight.to, flight.events, flight.started.elapsed());
                if flight.last_batch {
                    let _ = self.ctx.events.send(RunnerEvent::CaughtUp {
                        name: self.shared.name.clone(),
                        generation: self.shared.generation,
                    });
                }
                Ok(())
            }
            Err(e) => {
                cache.clear();
                self.claimed = self.position;
                Err(e)
            }
        }
    }

    /// Run a generation again from its checkpoint after `subscriptions` failed.
    async fn restart(self) {
        Box::pin(self.run()).await;
    }

    fn finish(&self) {
        self.shared.update(|p| p.stopped = true);
        tracing::info!(projection = %self.shared.name, generation = self.shared.generation, position = self.position, "projection runner stopped");
    }

    async fn subscriptions(&self) -> Result<Vec<String>, String> {
        let pre = self.pre().map_err(|e| e.to_string())?;
        let mut instance = ProjectionInstance::new(&self.ctx.runtime, &self.shared.plugin, pre, 0)
            .await
            .map_err(|e| e.to_string())?;
        instance.subscriptions().await.map_err(|e| e.to_string())
    }

    fn pre(
        &self,
    ) -> Result<
        &crate::runtime::bindings::projection::ProjectionPre<crate::runtime::sandbox::PluginState>,
        PluginError,
    > {
        match &self.shared.plugin.code {
            PluginCode::Projection(pre) => Ok(pre),
            _ => Err(PluginError::Contract {
                plugin: self.shared.plugin.name.to_string(),
                message: "not a projection".into(),
            }),
        }
    }

    /// One instance, one call: the batch's view writes, not committed.
    async fn run_plugin(
        &self,
        events: &[RecordedEvent],
        cache: &mut RowCache,
    ) -> Result<Vec<(String, RowWrite)>, BatchError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = &self.ctx;
        let started = Instant::now();
        let pre = self.pre().map_err(|e| BatchError::Plugin(e.to_string()))?;
        let now_ms = events
            .last()
            .map_or(0, |e| e.recorded_at_us.div_euclid(1000));
        let mut instance = ProjectionInstance::new(&ctx.runtime, &self.shared.plugin, pre, now_ms)
            .await
            .map_err(|e| match e {
                // The pool is exhausted: not the plugin's fault.
                PluginError::Instantiate { .. } => {
                    BatchError::Store(StoreError::Unavailable(e.to_string()))
                }
                other => BatchError::Plugin(other.to_string()),
            })?;
        let wit: Vec<_> = events.iter().map(to_wit_event).collect();
        let session = ViewSession::new(
            ctx.views.clone(),
            self.shared.name.clone(),
            self.shared.generation,
            std::mem::replace(cache, RowCache::new(1)),
            ctx.runtime.limits.view_value_bytes_max,
        );
        let (result, mut session) = instance.handle_batch(&wit, session).await;
        drop(instance);
        let took = started.elapsed();
        self.shared.update(|p| p.plugin_time += took);
        if let Some(e) = session.store_error.take() {
            *cache = session.abandon();
            return Err(BatchError::Store(e));
        }
        match result {
            Ok(Ok(())) => {
                let (writes, kept) = session.finish();
                *cache = kept;
                Ok(writes)
            }
            Ok(Err(message)) => {
                *cache = session.abandon();
                Err(BatchError::Plugin(format!(
                    "projection {} returned an error: {message}",
                    self.shared.name
                )))
            }
            Err(e) => {
                *cache = session.abandon();
                Err(BatchError::Plugin(e.to_string()))
            }
        }
    }

    /// The commit that moves this generation's checkpoint from where it is
    /// to `to`.
    fn commit_to(
        &self,
        to: Position,
        writes: Vec<(String, RowWrite)>,
        skip: Option<SkipRecord>,
    ) -> ViewCommit {
        ViewCommit {
            projection: self.shared.name.to_string(),
            generation: self.shared.generation,
            from_position: self.position,
            to_position: to,
            writes,
            skip,
        }
    }

    /// One batch run and committed before returning (used event by event
    /// when looking for a poison event).
    async fn process(
        &self,
        events: &[RecordedEvent],
        cache: &mut RowCache,
        to: Position,
    ) -> Result<(), BatchError> {
        let writes = self.run_plugin(events, cache).await?;
        let commit = self.commit_to(to, writes, None);
        cache.set_pending(&commit.writes);
        let started = Instant::now();
        let committed = self.ctx.views.commit_view(commit).await;
        let took = started.elapsed();
        self.shared.update(|p| p.commit_time += took);
        match committed {
            Ok(()) => {
                cache.pending_committed();
                Ok(())
            }
            Err(e) => {
                cache.clear();
                Err(BatchError::Store(e))
            }
        }
    }

    fn advanced(&mut self, to: Position, events: u64, took: Duration) {
        self.position = to;
        self.claimed = self.claimed.max(to);
        self.shared.update(|p| {
            p.position = to;
            p.events_processed += events;
            p.batches += 1;
            p.last_batch = took;
            p.poison = None;
            p.retrying = None;
        });
        if self.shared.is_serving.load(Ordering::SeqCst) {
            self.shared.serving.send_if_modified(|s| {
                if s.generation == self.shared.generation && (s.position < to || s.failed) {
                    s.position = s.position.max(to);
                    s.failed = false;
                    true
                } else {
                    false
                }
            });
        }
        self.retry_passed(to);
    }

    /// The checkpoint reached `to`: a resume waiting on an event at or
    /// before it hears that the retry passed.
    fn retry_passed(&mut self, to: Position) {
        if self.retry.as_ref().is_some_and(|(at, _)| *at <= to)
            && let Some((_, reply)) = self.retry.take()
        {
            let _ = reply.send(RetryOutcome::Passed);
        }
    }

    /// A batch failed in the plugin: run its events one at a time, each
    /// committed, to find the exact event. `None` if all of them pass now.
    async fn find_poison(
        &mut self,
        events: &[RecordedEvent],
        cache: &mut RowCache,
        message: String,
    ) -> Result<Option<Poison>, StoreError> {
        if events.len() <= 1 {
            return Ok(events.first().map(|e| poison_at(e, message)));
        }
        for event in events {
            let started = Instant::now();
            match self
                .process(std::slice::from_ref(event), cache, event.position)
                .await
            {
                Ok(()) => self.advanced(event.position, 1, started.elapsed()),
                Err(BatchError::Plugin(message)) => return Ok(Some(poison_at(event, message))),
                Err(BatchError::Store(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Stop on a poison event until an operator acts. `Some(skip)` to go
    /// on, `None` to end the runner.
    async fn wait_while_failed(&mut self, poison: Poison) -> Option<bool> {
        tracing::error!(
            projection = %self.shared.name,
            generation = self.shared.generation,
            position = poison.position,
            event_type = %poison.event_type,
            error = %poison.message,
            "projection failed; it waits for POST /projections/{}/resume",
            self.shared.name
        );
        // A resume that retried this event hears that it failed again.
        if let Some((_, reply)) = self.retry.take() {
            let _ = reply.send(RetryOutcome::FailedAgain(poison.clone()));
        }
        let at = poison.position;
        self.shared.set_poison(Some(poison));
        match self.control.recv().await {
            None | Some(Control::Stop) => None,
            Some(Control::Resume { skip, reply }) => {
                tracing::info!(projection = %self.shared.name, skip, "projection resumed by an operator");
                self.retry = Some((at, reply));
                self.shared.set_poison(None);
                Some(skip)
            }
        }
    }

    /// Move the checkpoint past the poison event, recording the skip.
    async fn skip(&mut self, poison: &Poison) -> Result<(), StoreError> {
        if poison.position <= self.position {
            return Ok(());
        }
        let skip = SkipRecord {
            position: poison.position,
            stream_id: poison.stream_id.clone(),
            event_type: poison.event_type.clone(),
            reason: poison.message.clone(),
        };
        let commit = self.commit_to(poison.position, Vec::new(), Some(skip));
        self.ctx.views.commit_view(commit).await?;
        tracing::warn!(projection = %self.shared.name, position = poison.position, "poison event skipped");
        self.advanced(poison.position, 0, Duration::ZERO);
        Ok(())
    }

    /// After a store error: wait and go on (true), or give up (false) when
    /// the error will not go away.
    async fn retry_later(&mut self, error: &StoreError, backoff: &mut Backoff) -> bool {
        match error {
            StoreError::ShuttingDown => false,
            StoreError::CheckpointMoved { actual, .. } => {
                // Another runner owns this generation now, or it was dropped.
                tracing::warn!(projection = %self.shared.name, generation = self.shared.generation, ?actual, "checkpoint moved under the runner; stopping it");
                false
            }
            other => {
                let wait = backoff.next();
                tracing::warn!(projection = %self.shared.name, error = %other, retry_in_ms = wait.as_millis() as u64, "store error in a projection; retrying");
                self.shared.update(|p| p.retrying = Some(other.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => true,
                    control = self.control.recv() => !matches!(control, None | Some(Control::Stop)),
                }
            }
        }
    }
}

/// A resume that reached a runner which has not failed (another resume
/// came first): nothing to retry, it goes on.
fn not_failed(reply: oneshot::Sender<RetryOutcome>) {
    let _ = reply.send(RetryOutcome::Passed);
}

fn poison_at(event: &RecordedEvent, message: String) -> Poison {
    Poison {
        position: event.position,
        stream_id: event.stream_id.clone(),
        event_type: event.event_type.clone(),
        message,
    }
}

/// Exponential backoff from 50 ms to a ceiling.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);

    fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST,
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}
