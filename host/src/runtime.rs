//! The WebAssembly runtime: one engine, plugins compiled once, a fresh
//! sandboxed instance per unit of work.

pub mod aggregate;
pub mod bindings;
pub mod call;
pub mod compile_cache;
pub mod engine;
pub mod memory;
pub mod plugin;
pub mod projection;
pub mod saga;
pub mod sandbox;
pub mod shelf;
pub mod view;

pub use aggregate::AggregateInstance;
pub use engine::Runtime;
pub use plugin::{LoadError, Plugin, PluginCode, PluginKind};
pub use view::ViewAccess;

/// How running a plugin failed. Expected failures (a rejection, invalid
/// input) are not errors at this level: they are values of the WIT
/// `failure` variant.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The plugin trapped: a panic, an `unreachable`, an out-of-bounds access.
    ///
    /// Handling: 500 `plugin_trap`; only this unit of work fails.
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    /// The plugin tried to use more memory than its limit.
    ///
    /// Handling: 500 `plugin_trap`.
    #[error("plugin {plugin} exceeded its memory limit of {limit_bytes} bytes")]
    OutOfMemory { plugin: String, limit_bytes: usize },
    /// The plugin ran past its time limit and was interrupted.
    ///
    /// Handling: 503 `plugin_timeout`.
    #[error("plugin {plugin} ran past its time limit of {limit_ms} ms and was stopped")]
    Timeout { plugin: String, limit_ms: u64 },
    /// The plugin produced output the host refuses (bad JSON, an event over
    /// the size limit, a state that is not what it must be).
    ///
    /// Handling: 413 `too_large` for size, else 500 `plugin_trap`.
    #[error("plugin {plugin} returned an event of {size} bytes, over the limit of {limit} bytes")]
    EventTooLarge {
        plugin: String,
        size: usize,
        limit: usize,
    },
    /// The plugin's output breaks the contract (e.g. data that is not JSON).
    ///
    /// Handling: 500 `plugin_trap`.
    #[error("plugin {plugin} broke the contract: {message}")]
    Contract { plugin: String, message: String },
    /// The plugin's share of the wasm slots (or every slot) stayed taken
    /// for as long as a unit of work may wait for one.
    ///
    /// Handling: 503 `plugin_busy`; retry later.
    #[error("{message}")]
    Busy { plugin: String, message: String },
    /// No instance could be created (e.g. the instance pool is exhausted).
    ///
    /// Handling: 503 `unavailable`; retry later.
    #[error("plugin {plugin} could not be instantiated: {message}")]
    Instantiate { plugin: String, message: String },
}
