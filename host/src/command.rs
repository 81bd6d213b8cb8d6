//! The command side: a command goes through the pipeline to an aggregate
//! plugin, and its events into the store.

pub mod error;
pub mod pipeline;
mod request;
pub mod slots;
pub mod state_cache;

pub use error::CommandError;
pub use pipeline::{CommandOutcome, Pipeline, StreamState};
pub use request::{CommandRequest, HOST_METADATA_KEYS, check_client_metadata};
