//! Assembling a host: store, runtime, plugins, pipeline, HTTP; and stopping
//! it gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::command::Pipeline;
use crate::config::{Limits, PipelineConfig};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{EventStore, now_us};

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
    pub admin_token: Option<String>,
    /// Use wasmtime's pooling allocator (fast instantiation).
    pub pooling: bool,
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
            admin_token: None,
            pooling: true,
        }
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
}

/// Open the store, load the plugins, bind the socket and start serving.
pub async fn start(config: HostConfig) -> anyhow::Result<Host> {
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&config.db, config.sqlite.clone())
            .await
            .with_context(|| format!("opening the event store {}", config.db))?,
    );
    let runtime = Runtime::new(config.limits.clone(), config.pooling)
        .context("starting the WebAssembly runtime")?;
    let registry = Arc::new(Registry::default());
    if let Some(dir) = &config.plugins_dir {
        registry
            .load_dir(&runtime, dir)
            .await
            .with_context(|| format!("loading plugins from {}", dir.display()))?;
    }
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        registry.clone(),
        runtime.clone(),
        config.pipeline.clone(),
    ));
    let state = Arc::new(AppState {
        pipeline,
        registry,
        runtime,
        metrics: Arc::new(Metrics::default()),
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = api::app(state.clone());
    let served = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let purger = spawn_idempotency_purger(store.clone(), config.pipeline.idempotency_window);
    tracing::info!(%addr, db = %config.db, plugins = state.registry.len(), "kiln listening");
    Ok(Host {
        addr,
        state,
        stop,
        served,
        store,
        purger,
    })
}

impl Host {
    /// Stop taking connections, let in-flight requests finish, then flush
    /// and close the store: nothing acknowledged is lost.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let served = self.served.await;
        self.purger.abort();
        self.store.close().await;
        served.context("the HTTP server task failed")??;
        Ok(())
    }
}

/// Forget expired idempotency keys once a minute.
fn spawn_idempotency_purger(store: Arc<dyn EventStore>, window: Duration) -> JoinHandle<()> {
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
        }
    })
}
