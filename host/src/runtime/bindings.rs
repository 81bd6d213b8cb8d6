//! The one place the host binds `wit/`.
//!
//! Each world gets its own module; the aggregate world's `log` and `types`
//! bindings are reused by the others through `with`, so one host `log`
//! implementation serves all plugin kinds.

use crate::store::RecordedEvent;

/// The `aggregate` world.
pub mod aggregate {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "aggregate",
        // Calls run on the async runtime's threads and yield at every epoch
        // tick, so a slow plugin never holds a thread for its whole budget.
        exports: { default: async },
    });
}

/// The `projection` world. `log` and `types` are the aggregate world's;
/// the `view` reads are async (they may go to the store) and trappable (a
/// store failure or a value over the limit stops the batch).
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "projection",
        exports: { default: async },
        imports: {
            "kiln:plugin/view.get": async | trappable,
            "kiln:plugin/view.scan": async | trappable,
            default: trappable,
        },
        with: {
            "kiln:plugin/log": super::aggregate::kiln::plugin::log,
            "kiln:plugin/types": super::aggregate::kiln::plugin::types,
        },
    });
}

/// The `saga` world, sharing `log` and `types` with the others.
pub mod saga {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "saga",
        exports: { default: async },
        with: {
            "kiln:plugin/log": super::aggregate::kiln::plugin::log,
            "kiln:plugin/types": super::aggregate::kiln::plugin::types,
        },
    });
}

pub use aggregate::kiln::plugin::log::Level as LogLevel;
pub use aggregate::kiln::plugin::types::{
    Command as WitCommand, Event as WitEvent, FailedCommand as WitFailedCommand,
    Failure as WitFailure, NewEvent as WitNewEvent, OutgoingCommand as WitOutgoingCommand,
    Reaction as WitReaction, Rejection as WitRejection, Timer as WitTimer,
};

/// The event as a plugin sees it.
pub fn to_wit_event(e: &RecordedEvent) -> WitEvent {
    WitEvent {
        position: e.position,
        stream_id: e.stream_id.clone(),
        version: e.version,
        event_type: e.event_type.clone(),
        schema: e.schema,
        data: e.data.clone().into_bytes(),
        metadata: e.metadata.clone().into_bytes(),
        recorded_at_ms: e.recorded_at_us.div_euclid(1000),
    }
}
