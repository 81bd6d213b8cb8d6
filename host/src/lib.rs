//! Kiln: a WebAssembly-plugin event processing host.
//!
//! One host process owns an append-only event store ([`store`]) and the
//! command pipeline ([`command`]); domain logic lives in WebAssembly
//! components run sandboxed by the [`runtime`]. The HTTP API is in [`api`].

pub mod api;
pub mod cli;
pub mod command;
pub mod config;
pub mod deploy;
pub mod lease;
pub mod metrics;
pub mod plugin_watch;
pub mod projection;
pub mod registry;
pub mod runtime;
pub mod saga;
pub mod server;
pub mod store;
pub mod time;
pub mod verify;

/// The directory of the example plugins built with this binary, if any.
pub fn default_plugins_dir() -> Option<std::path::PathBuf> {
    #[cfg(feature = "examples")]
    {
        Some(std::path::PathBuf::from(
            kiln_plugin_artifacts::EXAMPLES_DIR,
        ))
    }
    #[cfg(not(feature = "examples"))]
    {
        None
    }
}
