//! Log through the host's tracing, tagged with the plugin's name.
//!
//! In a component these functions call the WIT `log` import; in a native
//! build (unit tests) they write `[level] message` to stderr, which the test
//! harness captures. Logging never fails and never changes a decision, so it
//! is safe to call from `handle` and `apply`.
//!
//! ```
//! kiln_sdk::log::info("opening account");
//! kiln_sdk::log::warn(&format!("balance {} below zero", -5));
//! ```

use std::fmt;

/// How important a message is; maps onto the host's tracing levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Details useful when debugging the plugin.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        })
    }
}

/// Log `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::aggregate::kiln::plugin::log as wit;
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level}] {message}");
}

/// Log `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Log `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log `message` at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}
