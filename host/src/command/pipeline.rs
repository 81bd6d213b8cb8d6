//! The command pipeline: load state, decide, append.
//!
//! ```text
//! request ─► idempotency check ─► stream lock ─► state (cache │ snapshot + events │ replay)
//!        ─► one wasm instance: apply(pending) + handle(command) ─► append(expected = loaded version)
//! ```
//!
//! Commands on one stream are serialized by a striped lock; commands on
//! different streams run in parallel (wasm on the blocking pool, appends
//! group-committed by the store). The append always carries the version the
//! decision was made on, so a concurrent writer elsewhere is detected and the
//! command is retried on fresh state.

use std::hash::BuildHasher;
use std::sync::Arc;

use super::error::CommandError;
pub use super::request::{
    CommandRequest, EVENT_TYPE_BYTES_MAX, ID_CHARS_MAX, IDEMPOTENCY_KEY_CHARS_MAX,
};
use super::request::{
    check_event_type, event_metadata, refusal, request_hash, validate_id, validate_idempotency_key,
};
use super::slots::{Slot, SlotError, WasmSlots};
use super::state_cache::{CachedState, StateCache};
use crate::config::{Limits, PipelineConfig};
use crate::registry::Registry;
use crate::runtime::bindings::aggregate::AggregatePre;
use crate::runtime::bindings::{WitCommand, WitEvent, WitFailure, WitNewEvent, to_wit_event};
use crate::runtime::sandbox::PluginState;
use crate::runtime::{AggregateInstance, Plugin, PluginCode, PluginError, PluginKind, Runtime};
use crate::store::{
    AppendOutcome, AppendRequest, EventLog, ExpectedVersion, IdempotencyClaim, IdempotencyEntry,
    NewEvent, RecordedEvent, SAGA_IDEMPOTENCY_PREFIX, SAGA_IDEMPOTENCY_RETENTION_US, Snapshot,
    StoreError, StreamQuery, now_us,
};

/// Stripes of the per-stream lock. Two streams share a stripe with
/// probability 1/STRIPES; they then wait for each other, nothing worse.
const LOCK_STRIPES: usize = 4096;

/// A command's result.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    pub stream_id: String,
    /// The stream's version after the command.
    pub version: u64,
    /// The position of the last event written, or the head of the log when
    /// the command wrote none: waiting for it gives read-your-writes.
    pub position: u64,
    pub events: Vec<RecordedEvent>,
    /// True when this is the stored result of an earlier request with the
    /// same idempotency key.
    pub replayed: bool,
}

/// A stream's state as folded by its aggregate.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub stream_id: String,
    pub version: u64,
    pub state: Vec<u8>,
}

/// Which state of a stream to compute.
#[derive(Debug, Clone, Copy)]
pub enum StateAt {
    Latest,
    Version(u64),
    /// Microseconds since the Unix epoch.
    Time(i64),
}

/// The command pipeline. One per host.
pub struct Pipeline {
    store: Arc<dyn EventLog>,
    registry: Arc<Registry>,
    runtime: Runtime,
    cache: StateCache,
    locks: Vec<tokio::sync::Mutex<()>>,
    lock_hasher: std::collections::hash_map::RandomState,
    config: PipelineConfig,
    /// Units of work running wasm at once, in all (bounded by the instance
    /// pool, so a burst waits for a slot instead of failing to instantiate)
    /// and per plugin (so one plugin cannot starve the others).
    wasm_slots: WasmSlots,
    /// Commands decided again because another writer had appended to their
    /// stream first (a stale cached state, or a race).
    conflict_retries: std::sync::atomic::AtomicU64,
}

/// State loaded for a unit of work: folded up to `base_version`, plus
/// events not folded yet, plus the instance used to fold, if any.
struct Loaded {
    base_version: u64,
    base_state: Arc<[u8]>,
    pending: Vec<RecordedEvent>,
    instance: Option<AggregateInstance>,
}

impl Loaded {
    fn version(&self) -> u64 {
        self.base_version + self.pending.len() as u64
    }
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn EventLog>,
        registry: Arc<Registry>,
        runtime: Runtime,
        config: PipelineConfig,
    ) -> Self {
        Self {
            store,
            registry,
            cache: StateCache::new(config.state_cache_entries),
            runtime,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            lock_hasher: Default::default(),
            wasm_slots: WasmSlots::new(
                crate::config::WASM_SLOTS as usize,
                config.plugin_concurrency,
            ),
            conflict_retries: Default::default(),
            config,
        }
    }

    /// Commands decided again after a conflict with another writer, since
    /// start.
    pub fn conflict_retries(&self) -> u64 {
        self.conflict_retries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The event log commands are appended to.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.runtime.limits
    }

    /// Run one command to its end: events committed, or a failure.
    pub async fn execute(&self, request: CommandRequest) -> Result<CommandOutcome, CommandError> {
        let plugin = self.aggregate(&request.aggregate)?;
        validate_id(&request.id)?;
        let stream_id = format!("{}-{}", request.aggregate, request.id);
        let Some(key) = &request.idempotency_key else {
            return self.run(plugin, stream_id, &request, "").await;
        };
        validate_idempotency_key(key)?;
        let request_hash = request_hash(&request);
        // The key is not looked up first: the writer checks it in the
        // append's own transaction (a repeat is answered `AlreadyApplied`
        // and writes nothing), which saves a read for every new key. Only
        // a command that fails now is checked: deciding it again on a state
        // its first run already moved may refuse what was done.
        match self.run(plugin, stream_id, &request, &request_hash).await {
            Err(e) if !matches!(e, CommandError::Store(_)) => {
                match self
                    .store
                    .find_idempotency(key, self.window_start(key))
                    .await?
                {
                    Some(entry) => self.replay_idempotent(entry, &request_hash).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    /// Decide the command on the stream's state and append its events.
    async fn run(
        &self,
        plugin: Arc<Plugin>,
        stream_id: String,
        request: &CommandRequest,
        request_hash: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let issued_at_ms = now_us() / 1000;
        let command_id = uuid::Uuid::new_v4().to_string();
        let metadata = event_metadata(request.metadata.clone(), &command_id);
        let command = WitCommand {
            command_type: request.command_type.clone(),
            data: serde_json::to_vec(&request.data).unwrap_or_else(|_| b"{}".to_vec()),
            metadata: metadata.clone().into_bytes(),
            stream_id: stream_id.clone(),
            issued_at_ms,
        };
        let _guard = self.lock(&stream_id).await;
        let mut attempt = 0;
        let mut catch_up_first = false;
        loop {
            let (loaded, fresh) = self
                .load_to_decide(&plugin, &stream_id, issued_at_ms, catch_up_first)
                .await?;
            let loaded_version = loaded.version();
            if !request.expected.matches(loaded_version) {
                if !fresh {
                    catch_up_first = true;
                    continue;
                }
                return Err(CommandError::WrongExpectedVersion {
                    stream_id,
                    expected: request.expected,
                    actual: loaded_version,
                });
            }
            let (state, decision) = self
                .decide(&plugin, &stream_id, loaded, command.clone(), issued_at_ms)
                .await?;
            // A refusal appends nothing, so no version check would notice it
            // was decided on a state another host had moved on from: confirm
            // it against the store, and decide again on the latest state.
            if decision.is_err() && !fresh && self.moved_on(&stream_id, loaded_version).await? {
                catch_up_first = true;
                continue;
            }
            let folded = CachedState {
                plugin_hash: Arc::from(plugin.hash.as_str()),
                base_version: loaded_version,
                base_state: state,
                pending: Arc::from(Vec::new()),
            };
            let new_events = match decision {
                Ok(events) => self.check_events(&plugin, events, &metadata)?,
                Err(failure) => {
                    self.cache.put(&stream_id, folded);
                    return Err(refusal(failure));
                }
            };
            let append = AppendRequest {
                stream_id: stream_id.clone(),
                expected: ExpectedVersion::Exact(loaded_version),
                events: new_events,
                idempotency: self.claim(request, request_hash),
            };
            match self.store.append(append).await {
                Ok(AppendOutcome::Committed { version, events }) => {
                    return Ok(self.committed(stream_id, folded, version, events));
                }
                Ok(AppendOutcome::AlreadyApplied(entry)) => {
                    return self.replay_idempotent(entry, request_hash).await;
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    attempt += 1;
                    self.conflict(request, &stream_id, loaded_version, actual, attempt)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The idempotency record the command's append writes, if it has a key.
    fn claim(&self, request: &CommandRequest, request_hash: &str) -> Option<IdempotencyClaim> {
        request.idempotency_key.clone().map(|key| IdempotencyClaim {
            window_start_us: self.window_start(&key),
            key,
            request_hash: request_hash.to_string(),
        })
    }

    /// The state to decide a command on, and whether it is known to be the
    /// stream's latest: caught up first when asked to, or when another host
    /// is known to have moved the stream on (one read of the newer events is
    /// cheaper than a conflict found by the writer, then a retry).
    async fn load_to_decide(
        &self,
        plugin: &Arc<Plugin>,
        stream_id: &str,
        issued_at_ms: i64,
        catch_up_first: bool,
    ) -> Result<(Loaded, bool), CommandError> {
        let mut loaded = self.load(plugin, stream_id, issued_at_ms).await?;
        let fresh = if catch_up_first || self.store.newer_version_known(stream_id, loaded.version())
        {
            self.catch_up(stream_id, &mut loaded).await?;
            true
        } else {
            // A file has one writer, this host: its cache is never behind.
            !self.store.shared()
        };
        Ok((loaded, fresh))
    }

    /// The outcome of a committed append; the stream's state is cached
    /// with the new events pending.
    fn committed(
        &self,
        stream_id: String,
        folded: CachedState,
        version: u64,
        events: Vec<RecordedEvent>,
    ) -> CommandOutcome {
        let position = match events.last() {
            Some(e) => e.position,
            None => *self.store.subscribe_head().borrow(),
        };
        self.cache.put(
            &stream_id,
            CachedState {
                pending: Arc::from(events.clone()),
                ..folded
            },
        );
        CommandOutcome {
            stream_id,
            version,
            position,
            events,
            replayed: false,
        }
    }

    /// Another writer appended first: the cached state is stale. `Ok` to
    /// decide again (the client asked for no version, and retries are
    /// left), else the conflict to report.
    fn conflict(
        &self,
        request: &CommandRequest,
        stream_id: &str,
        loaded_version: u64,
        actual: u64,
        attempt: u32,
    ) -> Result<(), CommandError> {
        self.cache.remove(stream_id);
        let retry = matches!(request.expected, ExpectedVersion::Any)
            && attempt <= self.config.conflict_retries;
        if !retry {
            return Err(CommandError::WrongExpectedVersion {
                stream_id: stream_id.to_string(),
                expected: match request.expected {
                    ExpectedVersion::Any => ExpectedVersion::Exact(loaded_version),
                    other => other,
                },
                actual,
            });
        }
        self.conflict_retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%stream_id, attempt, "conflict with another writer; retrying");
        Ok(())
    }

    /// The state of a stream, now or in the past (time travel).
    pub async fn state(&self, stream_id: &str, at: StateAt) -> Result<StreamState, CommandError> {
        let (category, _) = stream_id.split_once('-').ok_or_else(|| {
            CommandError::NotFound(format!("stream {stream_id} has no aggregate category"))
        })?;
        let plugin = self.aggregate(category)?;
        let now_ms = now_us() / 1000;
        let loaded = match at {
            StateAt::Latest => {
                let mut loaded = self.load(&plugin, stream_id, now_ms).await?;
                // The cache may be behind when other hosts share the store:
                // a read sees every event committed before it. (With one
                // writer, this host, the cache is never behind.)
                if self.store.shared() {
                    self.catch_up(stream_id, &mut loaded).await?;
                }
                loaded
            }
            StateAt::Version(v) => {
                self.replay(&plugin, stream_id, None, Some(v), None, now_ms)
                    .await?
            }
            StateAt::Time(t) => {
                self.replay(&plugin, stream_id, None, None, Some(t), now_ms)
                    .await?
            }
        };
        let version = loaded.version();
        if version == 0 {
            return Err(CommandError::NotFound(match at {
                StateAt::Latest => format!("stream {stream_id} has no events"),
                StateAt::Version(_) => format!("stream {stream_id} has no events"),
                StateAt::Time(_) => format!("stream {stream_id} had no events at that time"),
            }));
        }
        if let StateAt::Version(v) = at
            && version < v
        {
            return Err(CommandError::NotFound(format!(
                "stream {stream_id} has no version {v}; it is at version {version}"
            )));
        }
        let (_, state) = self.fold(&plugin, stream_id, loaded, now_ms).await?;
        Ok(StreamState {
            stream_id: stream_id.to_string(),
            version,
            state: state.to_vec(),
        })
    }

    fn aggregate(&self, name: &str) -> Result<Arc<Plugin>, CommandError> {
        match self.registry.get(name) {
            Some(p) if matches!(p.code, PluginCode::Aggregate(_)) => Ok(p),
            Some(p) => Err(CommandError::NotFound(format!(
                "plugin {name} is {}, not an aggregate",
                p.kind.with_article()
            ))),
            None if self.registry.removed(name) == Some(PluginKind::Aggregate) => Err(
                CommandError::NotFound(format!("aggregate {name:?} was removed")),
            ),
            None => Err(CommandError::NotFound(format!("unknown aggregate {name}"))),
        }
    }

    /// Keys used before this time are forgotten. The saga manager's keys
    /// are kept longer than the clients' (see [`SAGA_IDEMPOTENCY_RETENTION_US`]).
    fn window_start(&self, key: &str) -> i64 {
        if key.starts_with(SAGA_IDEMPOTENCY_PREFIX) {
            return now_us() - SAGA_IDEMPOTENCY_RETENTION_US;
        }
        now_us() - self.config.idempotency_window.as_micros() as i64
    }

    async fn lock(&self, stream_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let i = (self.lock_hasher.hash_one(stream_id) as usize) % self.locks.len();
        self.locks[i].lock().await
    }

    /// The current state of a stream: from the cache, else the latest
    /// snapshot of this plugin version plus the events after it, else a full
    /// replay.
    async fn load(
        &self,
        plugin: &Arc<Plugin>,
        stream_id: &str,
        now_ms: i64,
    ) -> Result<Loaded, CommandError> {
        if let Some(cached) = self.cache.get(stream_id, &plugin.hash) {
            return Ok(Loaded {
                base_version: cached.base_version,
                base_state: cached.base_state,
                pending: cached.pending.to_vec(),
                instance: None,
            });
        }
        let snapshot = self.store.load_snapshot(stream_id, &plugin.hash).await?;
        self.replay(plugin, stream_id, snapshot, None, None, now_ms)
            .await
    }

    /// Add to `loaded` the events committed after it (by another host).
    /// Whether the stream has events after `version` in the store.
    async fn moved_on(&self, stream_id: &str, version: u64) -> Result<bool, CommandError> {
        let next = self
            .store
            .read_stream(StreamQuery {
                stream_id,
                from_version: version + 1,
                to_version: None,
                recorded_until_us: None,
                limit: 1,
            })
            .await?;
        Ok(!next.is_empty())
    }

    async fn catch_up(&self, stream_id: &str, loaded: &mut Loaded) -> Result<(), CommandError> {
        let batch = self.config.replay_batch.max(1);
        loop {
            let page = self
                .store
                .read_stream(StreamQuery {
                    stream_id,
                    from_version: loaded.version() + 1,
                    to_version: None,
                    recorded_until_us: None,
                    limit: batch,
                })
                .await?;
            let full = page.len() == batch as usize;
            loaded.pending.extend(page);
            if !full {
                return Ok(());
            }
        }
    }

    /// Read a stream from a snapshot (or the start) up to a version or time,
    /// folding full pages as they come so memory stays bounded. The last,
    /// partial page is left pending for the caller's unit of work.
    async fn replay(
        &self,
        plugin: &Arc<Plugin>,
        stream_id: &str,
        from: Option<Snapshot>,
        to_version: Option<u64>,
        until_us: Option<i64>,
        now_ms: i64,
    ) -> Result<Loaded, CommandError> {
        let mut loaded = match from {
            Some(s) => Loaded {
                base_version: s.version,
                base_state: Arc::from(s.state),
                pending: Vec::new(),
                instance: None,
            },
            None => Loaded {
                base_version: 0,
                base_state: Arc::from(Vec::new()),
                pending: Vec::new(),
                instance: None,
            },
        };
        let batch = self.config.replay_batch.max(1);
        loop {
            let page = self
                .store
                .read_stream(StreamQuery {
                    stream_id,
                    from_version: loaded.version() + 1,
                    to_version,
                    recorded_until_us: until_us,
                    limit: batch,
                })
                .await?;
            let full = page.len() == batch as usize;
            loaded.pending.extend(page);
            if !full {
                return Ok(loaded);
            }
            let base_version = loaded.version();
            let (instance, state) = self.fold(plugin, stream_id, loaded, now_ms).await?;
            loaded = Loaded {
                base_version,
                base_state: state,
                pending: Vec::new(),
                instance: Some(instance),
            };
        }
    }

    /// Fold the pending events of `loaded` in one wasm call.
    async fn fold(
        &self,
        plugin: &Arc<Plugin>,
        stream_id: &str,
        loaded: Loaded,
        now_ms: i64,
    ) -> Result<(AggregateInstance, Arc<[u8]>), CommandError> {
        let from_version = loaded.base_version;
        let to_version = loaded.version();
        let runtime = self.runtime.clone();
        let p = plugin.clone();
        let _slot = self.wasm_slot(plugin).await?;
        let mut instance = instance_for(&runtime, &p, loaded.instance, now_ms).await?;
        let state = fold_pending(&mut instance, loaded.base_state, &loaded.pending).await?;
        self.maybe_snapshot(plugin, stream_id, from_version, to_version, &state);
        Ok((instance, state))
    }

    /// Fold pending events and decide the command, in one instance and one
    /// hop to the blocking pool.
    async fn decide(
        &self,
        plugin: &Arc<Plugin>,
        stream_id: &str,
        loaded: Loaded,
        command: WitCommand,
        now_ms: i64,
    ) -> Result<(Arc<[u8]>, Result<Vec<WitNewEvent>, WitFailure>), CommandError> {
        let from_version = loaded.base_version;
        let to_version = loaded.version();
        let runtime = self.runtime.clone();
        let p = plugin.clone();
        let _slot = self.wasm_slot(plugin).await?;
        let mut instance = instance_for(&runtime, &p, loaded.instance, now_ms).await?;
        let state = fold_pending(&mut instance, loaded.base_state, &loaded.pending).await?;
        let decision = instance.handle(&state, &command).await?;
        self.maybe_snapshot(plugin, stream_id, from_version, to_version, &state);
        Ok((state, decision))
    }

    /// A wasm slot for a unit of work of `plugin`. The wait counts toward
    /// the command's answer time, not toward the plugin's time limit: it
    /// lasts at most that limit, then the command is refused as busy.
    async fn wasm_slot(&self, plugin: &Plugin) -> Result<Slot<'_>, CommandError> {
        let wait_max = std::time::Duration::from_millis(self.runtime.limits.command_timeout_ms);
        self.wasm_slots
            .acquire(&plugin.name, wait_max)
            .await
            .map_err(|e| match e {
                SlotError::Closed => CommandError::Store(StoreError::ShuttingDown),
                busy => PluginError::Busy {
                    plugin: plugin.name.to_string(),
                    message: busy.to_string(),
                }
                .into(),
            })
    }

    /// Save a snapshot when folding crossed a multiple of the interval. Off
    /// the hot path: a lost snapshot costs a longer replay, nothing else.
    fn maybe_snapshot(
        &self,
        plugin: &Plugin,
        stream_id: &str,
        from_version: u64,
        to_version: u64,
        state: &Arc<[u8]>,
    ) {
        let every = self.config.snapshot_every;
        if every == 0 || to_version / every <= from_version / every {
            return;
        }
        let store = self.store.clone();
        let snapshot = Snapshot {
            stream_id: stream_id.to_string(),
            plugin_hash: plugin.hash.clone(),
            version: to_version,
            state: state.to_vec(),
        };
        tokio::spawn(async move {
            if let Err(e) = store.save_snapshot(snapshot).await {
                tracing::warn!(error = %e, "snapshot not saved");
            }
        });
    }

    /// Validate and convert the events a plugin decided.
    fn check_events(
        &self,
        plugin: &Plugin,
        events: Vec<WitNewEvent>,
        metadata: &str,
    ) -> Result<Vec<NewEvent>, CommandError> {
        let limit = self.runtime.limits.event_bytes_max;
        events
            .into_iter()
            .map(|e| {
                if e.data.len() > limit {
                    return Err(PluginError::EventTooLarge {
                        plugin: plugin.name.to_string(),
                        size: e.data.len(),
                        limit,
                    }
                    .into());
                }
                let data = String::from_utf8(e.data)
                    .ok()
                    .filter(|s| serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok())
                    .ok_or_else(|| PluginError::Contract {
                        plugin: plugin.name.to_string(),
                        message: format!("event {} has data that is not JSON", e.event_type),
                    })?;
                if let Err(message) = check_event_type(&e.event_type) {
                    return Err(PluginError::Contract {
                        plugin: plugin.name.to_string(),
                        message,
                    }
                    .into());
                }
                Ok(NewEvent {
                    event_type: e.event_type,
                    schema: e.schema.max(1),
                    data,
                    metadata: metadata.to_string(),
                })
            })
            .collect()
    }

    async fn replay_idempotent(
        &self,
        entry: IdempotencyEntry,
        request_hash: &str,
    ) -> Result<CommandOutcome, CommandError> {
        if entry.request_hash != request_hash {
            return Err(CommandError::IdempotencyConflict { key: entry.key });
        }
        let events = match entry.first_position {
            Some(first) => self.store.read_positions(first, entry.event_count).await?,
            None => Vec::new(),
        };
        let position = match events.last() {
            Some(e) => e.position,
            None => *self.store.subscribe_head().borrow(),
        };
        Ok(CommandOutcome {
            stream_id: entry.stream_id,
            version: entry.version,
            position,
            events,
            replayed: true,
        })
    }
}

async fn instance_for(
    runtime: &Runtime,
    plugin: &Plugin,
    existing: Option<AggregateInstance>,
    now_ms: i64,
) -> Result<AggregateInstance, PluginError> {
    if let Some(instance) = existing {
        return Ok(instance);
    }
    let pre: &AggregatePre<PluginState> = match &plugin.code {
        PluginCode::Aggregate(pre) => pre,
        PluginCode::Projection(_) | PluginCode::Saga(_) => {
            return Err(PluginError::Contract {
                plugin: plugin.name.to_string(),
                message: "not an aggregate".into(),
            });
        }
    };
    AggregateInstance::new(runtime, plugin, pre, now_ms).await
}

async fn fold_pending(
    instance: &mut AggregateInstance,
    base: Arc<[u8]>,
    pending: &[RecordedEvent],
) -> Result<Arc<[u8]>, PluginError> {
    if pending.is_empty() {
        return Ok(base);
    }
    let events: Vec<WitEvent> = pending.iter().map(to_wit_event).collect();
    Ok(Arc::from(instance.apply(&base, &events).await?))
}
