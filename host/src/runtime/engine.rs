//! The engine: configuration, the epoch ticker, compiling plugins.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::aggregate::{Aggregate, AggregatePre};
use super::bindings::projection::{ProjectionPre, kiln::plugin::view};
use super::bindings::saga::SagaPre;
use super::compile_cache::CompileCache;
use super::memory;
use super::plugin::SharedCode;
use super::plugin::{self, LoadError, Plugin, PluginCode, PluginKind};
use super::sandbox::PluginState;
use super::shelf::Shelf;
use crate::config::Limits;

/// How often the epoch advances. A time limit is enforced to within one
/// tick, and a running call yields to the async runtime at every tick, so
/// the tick is also the slice other work waits for behind a spinning call.
/// Measured (docs/benchmarks.md): 10 ms let 40 spins on two threads delay
/// other commands by up to 1 s; 2 ms made a command beside one spin on a
/// single thread slower (more turns of the scheduler per request); 5 ms
/// did well in both.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of a freed linear memory reset in place rather than returned to
/// the kernel.
const LINEAR_MEMORY_KEEP_RESIDENT_BYTES: usize = 1024 * 1024;
/// The same for tables.
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;

/// Instance slots in the pooling allocator: the most units of work that can
/// run at once. Each slot reserves address space, not memory. (Set in
/// `config`, where the per-plugin share is derived from it.)
pub const POOL_INSTANCES: u32 = crate::config::WASM_SLOTS;

/// The engine and what every instance shares.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    linker: Arc<Linker<PluginState>>,
    pub(crate) limits: Limits,
    /// Compiled components on disk, so a restart loads in milliseconds.
    compile_cache: Option<Arc<CompileCache>>,
    /// Compiled components in memory, shared by content hash.
    shelf: Arc<Shelf>,
}

impl Runtime {
    /// An engine with deterministic execution, epoch interruption and (unless
    /// `pooling` is off) the pooling allocator, and a ticker thread.
    pub fn new(limits: Limits, pooling: bool) -> anyhow::Result<Self> {
        memory::tune_allocator();
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Replay must give the same result: no NaN bit differences, no
        // platform-dependent relaxed SIMD (threads are not compiled in).
        config.cranelift_nan_canonicalization(true);
        config.relaxed_simd_deterministic(true);
        if pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(POOL_INSTANCES);
            pool.total_core_instances(POOL_INSTANCES * 8);
            pool.total_memories(POOL_INSTANCES * 2);
            pool.total_tables(POOL_INSTANCES * 4);
            pool.max_memory_size(limits.memory_bytes_max);
            // Reset a freed slot with memset instead of madvise: madvise
            // makes the kernel flush TLBs on every core (an IPI per instance,
            // costly in a VM), and a Rust plugin's memory is small.
            pool.linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT_BYTES);
            pool.table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
            // One fiber stack per running instance (async calls).
            pool.total_stacks(POOL_INSTANCES);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linker = Linker::<PluginState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Aggregate::add_to_linker::<_, wasmtime::component::HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        // The projection world adds `view`; `log` is already linked.
        view::add_to_linker::<_, wasmtime::component::HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        spawn_epoch_ticker(&engine);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
            compile_cache: None,
            shelf: Arc::default(),
        })
    }

    /// Keep compiled components in `dir`, keyed by content and engine.
    pub fn with_compile_cache(mut self, dir: &std::path::Path) -> std::io::Result<Self> {
        self.compile_cache = Some(Arc::new(CompileCache::open(dir)?));
        Ok(self)
    }

    /// Whether the compiled form of `bytes` is in the on-disk cache, so that
    /// loading it takes a millisecond rather than a compile.
    pub fn is_compiled(&self, bytes: &[u8]) -> bool {
        self.compile_cache
            .as_ref()
            .is_some_and(|cache| cache.path_for(&self.engine, bytes).is_file())
    }

    /// Compile and check a plugin. Blocking and CPU-heavy (tens of ms for a
    /// small component, seconds for a large one): never call it on a request
    /// or dispatch thread. Bytes already loaded (under any name) are not
    /// compiled again: the plugin shares their code.
    pub fn compile(&self, name: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let hash = plugin::content_hash(bytes);
        let shared = match self.shelf.get(&hash) {
            Some(shared) => shared,
            None => {
                let built = self.build(name, bytes)?;
                let shared = self.shelf.insert(&hash, built);
                memory::release_free_heap();
                shared
            }
        };
        Ok(Plugin::new(name, hash, bytes.len(), shared))
    }

    /// Components compiled or loaded from the compile cache since start
    /// (bytes loaded already are shared, not built again).
    pub fn components_built(&self) -> u64 {
        self.shelf.built()
    }

    /// Distinct components in memory now.
    pub fn components_loaded(&self) -> usize {
        self.shelf.loaded()
    }

    /// Compile `bytes` (or load their compiled form) and link them to the
    /// world they fit.
    fn build(&self, name: &str, bytes: &[u8]) -> Result<SharedCode, LoadError> {
        plugin::check_header(bytes)?;
        let component = match &self.compile_cache {
            Some(cache) => cache
                .load_or_compile(&self.engine, bytes)
                .map(|(c, outcome)| {
                    tracing::debug!(plugin = name, ?outcome, "compile cache");
                    c
                }),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::NotAComponent(format!("{e:#}")))?;
        let kind = plugin::detect_kind(&self.engine, &component)?;
        let code =
            match kind {
                PluginKind::Aggregate => {
                    // Imports resolve by semver (a guest built against WASI
                    // 0.2.6 links to the host's 0.2.12). An import the host does
                    // not provide refuses the plugin here, naming the import.
                    // (`define_unknown_imports_as_traps` would shadow the semver
                    // match with exact-name stubs, so it is not used.)
                    let pre = self.linker.instantiate_pre(&component).map_err(|e| {
                        LoadError::Invalid(format!("cannot link the plugin: {e:#}"))
                    })?;
                    let pre = AggregatePre::new(pre).map_err(|e| {
                        LoadError::Invalid(format!("does not match the aggregate world: {e:#}"))
                    })?;
                    PluginCode::Aggregate(pre)
                }
                PluginKind::Projection => {
                    let pre = self.linker.instantiate_pre(&component).map_err(|e| {
                        LoadError::Invalid(format!("cannot link the plugin: {e:#}"))
                    })?;
                    let pre = ProjectionPre::new(pre).map_err(|e| {
                        LoadError::Invalid(format!("does not match the projection world: {e:#}"))
                    })?;
                    PluginCode::Projection(pre)
                }
                PluginKind::Saga => {
                    let pre = self.linker.instantiate_pre(&component).map_err(|e| {
                        LoadError::Invalid(format!("cannot link the plugin: {e:#}"))
                    })?;
                    let pre = SagaPre::new(pre).map_err(|e| {
                        LoadError::Invalid(format!("does not match the saga world: {e:#}"))
                    })?;
                    PluginCode::Saga(pre)
                }
            };
        Ok(SharedCode { kind, code })
    }
}

/// Advance the engine's epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("kiln-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the epoch ticker; time limits are not enforced");
    }
}
