//! Assembling a host: store, runtime, plugins, pipeline, HTTP; and stopping
//! it gracefully.

mod http;

pub use http::OpenConnections;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::command::Pipeline;
use crate::config::{HttpConfig, Limits, PipelineConfig};
use crate::deploy::{DeferredPlugin, Deployer};
use crate::lease::{LEASE_TTL_MS_DEFAULT, LeaseHolder, Leases};
use crate::metrics::Metrics;
use crate::plugin_watch::PluginDirWatcher;
use crate::projection::{ProjectionConfig, ProjectionStores, Projections};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::saga::{SagaConfig, SagaStores, Sagas};
use crate::store::postgres::PostgresOptions;
use crate::store::sqlite::SqliteOptions;
use crate::store::{EventStore, SagaStore, now_us};

/// Everything `kiln serve` needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// `sqlite://path` or a path.
    pub db: String,
    pub listen: SocketAddr,
    /// Directory of `*.wasm` plugins to load at start.
    pub plugins_dir: Option<PathBuf>,
    pub limits: Limits,
    pub pipeline: PipelineConfig,
    pub sqlite: SqliteOptions,
    pub postgres: PostgresOptions,
    pub admin_token: Option<String>,
    /// Use wasmtime's pooling allocator (fast instantiation).
    pub pooling: bool,
    pub projections: ProjectionConfig,
    pub sagas: SagaConfig,
    /// Where compiled plugins are cached; by default beside the database.
    pub compile_cache_dir: Option<PathBuf>,
    /// How often the plugin directory is checked for changes (`None`: not watched).
    pub watch_interval: Option<Duration>,
    /// How long a graceful shutdown waits for open connections.
    pub shutdown_grace: Duration,
    /// How often a host on a shared database looks for versions deployed
    /// through other hosts.
    pub deployment_poll: Duration,
    /// How long a lease on a projection or saga lasts without renewal (on
    /// PostgreSQL, where several hosts may share the database): another
    /// host takes over a dead host's work within about this time.
    pub lease_ttl: Duration,
    /// Timeouts and the connection bound of the HTTP server.
    pub http: HttpConfig,
}

impl HostConfig {
    /// Defaults for everything but the database and the address.
    pub fn new(db: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            db: db.into(),
            listen,
            plugins_dir: None,
            limits: Limits::default(),
            pipeline: PipelineConfig::default(),
            sqlite: SqliteOptions::default(),
            postgres: PostgresOptions::default(),
            admin_token: None,
            pooling: true,
            projections: ProjectionConfig::default(),
            sagas: SagaConfig::default(),
            compile_cache_dir: None,
            watch_interval: Some(Duration::from_secs(1)),
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            deployment_poll: Duration::from_secs(2),
            lease_ttl: Duration::from_millis(LEASE_TTL_MS_DEFAULT),
            http: HttpConfig::default(),
        }
    }

    /// The compile cache directory: the configured one, or `<db file>.compiled`
    /// beside a file database.
    pub fn compile_cache_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.compile_cache_dir {
            return Some(dir.clone());
        }
        if crate::store::is_postgres_url(&self.db) {
            return None;
        }
        let path = self
            .db
            .strip_prefix("sqlite://")
            .or_else(|| self.db.strip_prefix("sqlite:"))
            .unwrap_or(&self.db);
        let path = path.split('?').next().unwrap_or(path);
        (!path.is_empty() && !path.contains(":memory:"))
            .then(|| PathBuf::from(format!("{path}.compiled")))
    }
}

/// A running host.
pub struct Host {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
    store: Arc<dyn EventStore>,
    purger: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
    follower: Option<JoinHandle<()>>,
    /// Compiles the large plugins the start left for later.
    background_loads: JoinHandle<()>,
    lease_manager: Option<JoinHandle<()>>,
    shutdown_grace: Duration,
    connections: Arc<http::Slots>,
}

/// Open the store, load the plugins, bind the socket and start serving.
pub async fn start(config: HostConfig) -> anyhow::Result<Host> {
    let store = crate::store::open(&config.db, config.sqlite.clone(), config.postgres.clone())
        .await
        .with_context(|| format!("opening the event store {}", redact(&config.db)))?;
    let mut runtime = Runtime::new(config.limits.clone(), config.pooling)
        .context("starting the WebAssembly runtime")?;
    if let Some(dir) = config.compile_cache_dir() {
        runtime = runtime
            .with_compile_cache(&dir)
            .with_context(|| format!("opening the compile cache {}", dir.display()))?;
    }
    let state = Arc::new(assemble(&config, store.clone(), runtime));
    if let Some(warning) = admin_lock_warning(state.admin_token.as_deref()) {
        tracing::warn!("{warning}");
    }
    let loading = load_plugins(&config, &state.deployer).await?;
    let holders: Vec<Weak<dyn LeaseHolder>> = vec![
        Arc::downgrade(&state.projections) as Weak<dyn LeaseHolder>,
        Arc::downgrade(&state.sagas) as Weak<dyn LeaseHolder>,
    ];
    let lease_manager = state.leases.spawn(holders);
    tracing::info!(host = %state.leases.holder(), leases = state.leases.enabled(), "host id");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = api::app(state.clone());
    let connections = Arc::new(http::Slots::new(
        config.http.max_connections,
        config.http.health_connections,
    ));
    let served = tokio::spawn(http::serve(
        listener,
        app,
        config.http.clone(),
        connections.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let background_loads = state.deployer.load_in_background(loading.deferred);
    let purger = spawn_purger(
        store.clone(),
        config.pipeline.idempotency_window,
        config.sagas.history_retention,
    );
    tracing::info!(%addr, db = %redact(&config.db), plugins = state.registry.len(), "kiln listening");
    Ok(Host {
        addr,
        state,
        stop,
        served,
        store,
        purger,
        watcher: loading.watcher,
        follower: loading.follower,
        background_loads,
        lease_manager,
        shutdown_grace: config.shutdown_grace,
        connections,
    })
}

/// The parts of a host, each given the roles of the store it needs.
fn assemble(config: &HostConfig, store: Arc<dyn EventStore>, runtime: Runtime) -> AppState {
    let registry = Arc::new(Registry::default());
    // Several hosts may share a PostgreSQL database: each projection and
    // saga then runs on the one holding its lease.
    let leases = Leases::new(
        store.clone(),
        config.lease_ttl,
        crate::store::is_postgres_url(&config.db),
    );
    let projections = Projections::new(
        ProjectionStores {
            log: store.clone(),
            views: store.clone(),
            catalog: store.clone(),
        },
        runtime.clone(),
        config.projections.clone(),
        leases.clone(),
    );
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        registry.clone(),
        runtime.clone(),
        config.pipeline.clone(),
    ));
    let sagas = Sagas::new(
        SagaStores {
            log: store.clone(),
            sagas: store.clone(),
        },
        runtime.clone(),
        pipeline.clone(),
        config.sagas.clone(),
        leases.clone(),
    );
    let deployer = Arc::new(Deployer::new(
        store.clone(),
        store.clone(),
        runtime.clone(),
        registry.clone(),
        projections.clone(),
        sagas.clone(),
    ));
    AppState {
        store,
        pipeline,
        registry,
        runtime,
        projections,
        sagas,
        deployer,
        metrics: Arc::new(Metrics::default()),
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
        live: Default::default(),
        leases,
    }
}

/// What loading the plugins left running or for later.
struct Loading {
    /// Large plugins to compile in the background.
    deferred: Vec<DeferredPlugin>,
    /// The plugin directory's watcher.
    watcher: Option<JoinHandle<()>>,
    /// The follower of deployments made through other hosts.
    follower: Option<JoinHandle<()>>,
}

/// Restore the stored plugin versions and apply the plugin directory;
/// start watching the directory and, on a shared database, following the
/// other hosts' deployments.
async fn load_plugins(config: &HostConfig, deployer: &Arc<Deployer>) -> anyhow::Result<Loading> {
    // The watcher records the directory before it is loaded (see `watch`).
    let baseline = match (&config.plugins_dir, config.watch_interval) {
        (Some(dir), Some(interval)) => {
            let mut watcher = PluginDirWatcher::new(dir, false);
            let watcher = tokio::task::spawn_blocking(move || {
                watcher.scan_once();
                watcher
            })
            .await
            .context("scanning the plugin directory")?;
            Some((watcher, interval))
        }
        _ => None,
    };
    let deferred = deployer
        .restore(config.plugins_dir.as_deref())
        .await
        .context("loading plugins")?;
    let watcher = baseline.map(|(watcher, interval)| deployer.watch(watcher, interval));
    // Hosts sharing a database load what was deployed through the others.
    let follower = crate::store::is_postgres_url(&config.db)
        .then(|| deployer.follow_store(config.deployment_poll));
    Ok(Loading {
        deferred,
        watcher,
        follower,
    })
}

impl Host {
    /// The HTTP connections open now.
    pub fn open_connections(&self) -> OpenConnections {
        self.connections.open()
    }

    /// Stop taking connections, let in-flight requests finish, then flush
    /// and close the store: nothing acknowledged is lost.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Live feeds never end by themselves; graceful shutdown would wait for them.
        self.state.live.shutdown();
        let _ = self.stop.send(());
        // A client that stops reading holds its connection (and a live feed)
        // open; past the grace period the server is stopped anyway. The store
        // is closed below either way, so nothing acknowledged is lost.
        let mut served_task = self.served;
        let served = match tokio::time::timeout(self.shutdown_grace, &mut served_task).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!(
                    grace_ms = self.shutdown_grace.as_millis() as u64,
                    "connections still open after the grace period; closing them"
                );
                served_task.abort();
                Ok(Ok(()))
            }
        };
        self.purger.abort();
        if let Some(watcher) = self.watcher {
            watcher.abort();
        }
        if let Some(follower) = self.follower {
            follower.abort();
        }
        self.background_loads.abort();
        if let Some(manager) = self.lease_manager {
            manager.abort();
        }
        self.state.sagas.stop_all().await;
        self.state.projections.stop_all().await;
        // The runners stopped: another host may take over at once.
        self.state.leases.release_all().await;
        self.store.close().await;
        served.context("the HTTP server task failed")??;
        Ok(())
    }
}

/// The warning logged at start when no admin token is set: every admin
/// route then answers `401`, which an operator should not find out from a
/// client.
pub fn admin_lock_warning(admin_token: Option<&str>) -> Option<&'static str> {
    admin_token.is_none_or(str::is_empty).then_some(
        "no admin token is configured: every admin route (deploy, rollback, rebuild, resume, \
         promote, dead-letter retry…) is locked and answers 401; start kiln with \
         --admin-token <token> or KILN_ADMIN_TOKEN set to unlock them",
    )
}

/// How long a graceful shutdown waits for open connections, by default.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(10);

/// Saga history entries deleted per statement by the purger (each a writer
/// transaction of its own, so that appends are not held up behind one large
/// delete).
pub const SAGA_HISTORY_PURGE_CHUNK: u32 = 10_000;

/// Once a minute: forget expired idempotency keys, and the history of saga
/// instances completed longer than `saga_history` ago.
fn spawn_purger(
    store: Arc<dyn EventStore>,
    window: Duration,
    saga_history: Option<Duration>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let before = now_us() - window.as_micros() as i64;
            match store.purge_idempotency(before).await {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "expired idempotency keys"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not purge idempotency keys"),
            }
            if let Some(keep) = saga_history {
                purge_saga_history(&*store, now_us() - keep.as_micros() as i64).await;
            }
        }
    })
}

/// Delete the history of instances completed before `before_us`, a chunk at
/// a time, until none is left.
pub async fn purge_saga_history(store: &dyn SagaStore, before_us: i64) -> u64 {
    let mut purged = 0;
    loop {
        match store
            .purge_saga_history(before_us, SAGA_HISTORY_PURGE_CHUNK)
            .await
        {
            Ok(n) => {
                purged += n;
                if n < u64::from(SAGA_HISTORY_PURGE_CHUNK) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not purge saga history");
                break;
            }
        }
    }
    if purged > 0 {
        tracing::info!(purged, "history of completed saga instances deleted");
    }
    purged
}

/// A database URL fit for a log line: the password replaced.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_admin_token_is_said_at_start() {
        for token in [None, Some("")] {
            let warning = admin_lock_warning(token).expect("a warning");
            assert!(warning.contains("locked"), "{warning}");
            assert!(warning.contains("--admin-token"), "{warning}");
            assert!(warning.contains("KILN_ADMIN_TOKEN"), "{warning}");
        }
        assert_eq!(admin_lock_warning(Some("secret")), None);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgres://kiln:secret@db:5432/kiln"),
            "postgres://kiln:***@db:5432/kiln"
        );
        assert_eq!(redact("sqlite://kiln.db"), "sqlite://kiln.db");
        let config = HostConfig::new("postgres://k:p@h/d", "127.0.0.1:0".parse().expect("addr"));
        assert_eq!(config.compile_cache_dir(), None);
    }

    /// The purger deletes chunk after chunk until the old history is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_saga_history_purge_goes_on_until_nothing_is_left() {
        use crate::store::sqlite::{SqliteOptions, SqliteStore};
        use crate::store::{SagaCommit, SagaHistoryEntry, SagaInstanceRecord, SagaStatus};
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default())
            .await
            .expect("open");
        let entries = SAGA_HISTORY_PURGE_CHUNK as usize + 5;
        store
            .commit_saga(SagaCommit {
                saga: "s".into(),
                instances: vec![SagaInstanceRecord {
                    saga: "s".into(),
                    instance: "i".into(),
                    state: b"{}".to_vec(),
                    status: SagaStatus::Completed,
                    done: true,
                    next_step: 1,
                    awaited_position: 0,
                    created_at_us: 1,
                    updated_at_us: 1,
                }],
                history: (0..entries)
                    .map(|n| SagaHistoryEntry {
                        instance: "i".into(),
                        at_us: n as i64,
                        entry: serde_json::json!({"n": n}),
                    })
                    .collect(),
                ..SagaCommit::default()
            })
            .await
            .expect("commit");
        assert_eq!(purge_saga_history(&store, 2).await, entries as u64);
        assert!(
            store
                .saga_history("s", "i", 10)
                .await
                .expect("history")
                .is_empty()
        );
        store.close().await;
    }
}
