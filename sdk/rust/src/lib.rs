//! Write Kiln plugins in Rust.
//!
//! A Kiln plugin is a WebAssembly component written against one world of the
//! WIT contract in `wit/`. This crate turns plain Rust types into such
//! components; the plugin crate depends on `kiln-sdk` and `serde` only.
//!
//! - An **aggregate** decides commands into events and folds events into
//!   state (the `aggregate` world): implement [`Aggregate`] and call
//!   [`export_aggregate!`] once.
//! - A **projection** turns committed events into the rows of a key-value
//!   read model (the `projection` world): implement [`Projection`], write
//!   through [`View`], and call [`export_projection!`] once. See
//!   [Projections](#projections).
//! - A **saga** (process manager) turns events into commands for other
//!   aggregates, with timers and compensation (the `saga` world): implement
//!   [`Saga`], decide through [`SagaContext`], and call [`export_saga!`]
//!   once. See [Sagas](#sagas).
//!
//! All are tested natively, without wasm or a host, with the given/then
//! harnesses in [`testing`].
//!
//! # The JSON mapping
//!
//! Payloads cross the boundary as UTF-8 JSON bytes. The SDK maps them as
//! follows, and [`testing`] goes through the very same code:
//!
//! - **State** is the aggregate type itself, serialized with `serde_json`.
//!   The empty byte string (a stream with no event yet) is
//!   [`Default::default()`].
//! - **Commands** arrive as a command type and a data payload. The SDK
//!   deserializes `{"type": <command-type>, "data": <data>}` into
//!   [`Aggregate::Command`], so the command enum is adjacently tagged with
//!   `#[serde(tag = "type", content = "data")]` and the variant name is the
//!   command type. Empty or `null` data stands for "no fields": a field-less
//!   variant such as `Close {}` (or the unit variant `Close`) accepts
//!   `{}`, `null` and no data at all. An unknown command type, a missing or
//!   mistyped field, or data that is not JSON becomes [`Failure::Invalid`]
//!   carrying serde's message. So does a field the command does not have, at
//!   any depth (`command `Deposit`: unknown field `amuont``), without
//!   `#[serde(deny_unknown_fields)]`: a client's misspelled field is not
//!   silently dropped. An aggregate that must take extra fields sets
//!   [`Aggregate::ALLOW_UNKNOWN_COMMAND_FIELDS`] to `true`.
//! - **Events** are tagged the same way: the variant name is the event type,
//!   the variant's content is the event's data, and the schema is
//!   [`EVENT_SCHEMA`]. Fields of an event that its type does not have are
//!   ignored (events written by an older version of the plugin still
//!   decode). An event that `apply` cannot decode is a bug in the
//!   plugin (or a store that holds events this plugin never wrote): the plugin
//!   panics, which the host sees as a trap.
//!
//! # Example
//!
//! ```
//! use kiln_sdk::{Aggregate, CommandContext, Failure};
//! use serde::{Deserialize, Serialize};
//!
//! /// A counter that refuses to go above a limit.
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! pub struct Counter {
//!     value: u32,
//! }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! pub enum Command {
//!     Increment { by: u32 },
//!     Reset {},
//! }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! pub enum Event {
//!     Incremented { by: u32 },
//!     Reset {},
//! }
//!
//! impl Aggregate for Counter {
//!     type Command = Command;
//!     type Event = Event;
//!
//!     fn handle(&self, command: Command, _ctx: &CommandContext) -> Result<Vec<Event>, Failure> {
//!         match command {
//!             Command::Increment { by: 0 } => Err(Failure::invalid("`by` must be positive")),
//!             Command::Increment { by } if self.value.saturating_add(by) > 10 => {
//!                 Err(Failure::rejected("the counter cannot exceed 10").with_code("limit"))
//!             }
//!             Command::Increment { by } => Ok(vec![Event::Incremented { by }]),
//!             Command::Reset {} => Ok(vec![Event::Reset {}]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: Event) {
//!         match event {
//!             Event::Incremented { by } => self.value += by,
//!             Event::Reset {} => self.value = 0,
//!         }
//!     }
//! }
//!
//! // One line makes `Counter` the component's `apply` and `handle` exports
//! // when built for wasm32-wasip2 (natively it only checks the type).
//! kiln_sdk::export_aggregate!(Counter);
//!
//! // Native given/when/then tests go through the same JSON mapping as the host.
//! use kiln_sdk::testing::AggregateTest;
//!
//! AggregateTest::<Counter>::given(vec![Event::Incremented { by: 7 }])
//!     .when(Command::Increment { by: 2 })
//!     .then_expect_events(vec![Event::Incremented { by: 2 }])
//!     .then_expect_state(|counter| assert_eq!(counter.value, 9));
//!
//! AggregateTest::<Counter>::given(vec![Event::Incremented { by: 7 }])
//!     .when(Command::Increment { by: 5 })
//!     .then_expect_rejection("cannot exceed 10");
//!
//! AggregateTest::<Counter>::given_no_previous_events()
//!     .when_json("Increment", r#"{"by": "two"}"#)
//!     .then_expect_invalid_message("invalid type: string");
//!
//! AggregateTest::<Counter>::given_no_previous_events()
//!     .when_json("Increment", r#"{"by": 2, "note": "x"}"#)
//!     .then_expect_invalid_message("command `Increment`: unknown field `note`");
//! ```
//!
//! # Projections
//!
//! A projection receives batches of committed events in global order and
//! writes rows (string keys, JSON values) into its [`View`]; the host commits
//! a batch's writes together with the projection's checkpoint. Its event type
//! decodes exactly like an aggregate's (it is often the aggregate's own
//! event enum). A value of the projection type lives for one batch:
//! [`Projection::begin`] and [`Projection::finish`] load and save what it
//! keeps across the batch's events, and the view caches rows for the batch,
//! so each distinct key costs the host one read and one write per batch.
//! Events of types the enum does not know are skipped when the projection
//! subscribes to every event, and are an error when it subscribed to them by
//! name (see [`Projection`]).
//!
//! ```
//! use kiln_sdk::{Envelope, Projection, View};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! pub enum Event {
//!     Incremented { by: u32 },
//!     Reset {},
//! }
//!
//! /// One row per counter, `{"value": n}` under the counter's id, and the
//! /// number of increments of all counters under `_increments`.
//! #[derive(Default)]
//! pub struct Counters {
//!     increments: u64,
//! }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Row {
//!     value: u32,
//! }
//!
//! impl Projection for Counters {
//!     type Event = Event;
//!     const SUBSCRIPTIONS: &'static [&'static str] = &["Incremented", "Reset"];
//!
//!     fn accepts(stream_id: &str, _event_type: &str) -> bool {
//!         stream_id.starts_with("counter-")
//!     }
//!
//!     fn begin(&mut self, view: &mut View) -> Result<(), String> {
//!         self.increments = view.get("_increments")?.unwrap_or(0);
//!         Ok(())
//!     }
//!
//!     fn handle(&mut self, view: &mut View, event: &Envelope<Event>) -> Result<(), String> {
//!         let key = event.aggregate_id();
//!         let mut row: Row = view.get(key)?.unwrap_or_default();
//!         match event.event {
//!             Event::Incremented { by } => {
//!                 row.value += by;
//!                 self.increments += 1;
//!             }
//!             Event::Reset {} => row.value = 0,
//!         }
//!         view.put(key, &row)
//!     }
//!
//!     fn finish(&mut self, view: &mut View) -> Result<(), String> {
//!         view.put("_increments", &self.increments)
//!     }
//! }
//!
//! // The component's `subscriptions` and `handle-batch` exports.
//! kiln_sdk::export_projection!(Counters);
//!
//! use kiln_sdk::testing::{ProjectionTest, json};
//!
//! ProjectionTest::<Counters>::new()
//!     .given(vec![
//!         ("counter-a", Event::Incremented { by: 2 }),
//!         ("counter-b", Event::Incremented { by: 5 }),
//!         ("counter-a", Event::Incremented { by: 1 }),
//!     ])
//!     .then_expect_row("a", json!({"value": 3}))
//!     .then_expect_row("_increments", json!(3))
//!     .given_json(vec![("counter-b", "Reset", "{}"), ("other-1", "Reset", "{}")])
//!     .then_expect_row("b", json!({"value": 0}))
//!     .then_expect_no_row("1");
//! ```
//!
//! # Sagas
//!
//! A saga coordinates several aggregates. Each event it receives is first
//! mapped to an instance ([`Saga::correlate`]), then handed to that
//! instance ([`Saga::react`]) with its state, which is the saga type
//! serialized as JSON, like an aggregate's. A reaction updates the state and
//! asks the [`SagaContext`] to dispatch commands (adjacently tagged like an
//! aggregate's command enum), set a timer, or complete the instance. The
//! host dispatches an instance's commands in order, one at a time; a command
//! that is refused comes back to [`Saga::on_failure`], a timer that fires to
//! [`Saga::on_timer`]. The events produced by the saga's own commands carry
//! its instance in their metadata ([`Envelope::saga_instance`]). Events
//! decode like a projection's.
//!
//! ```
//! use kiln_sdk::{Envelope, FailedCommand, Saga, SagaContext, Timer};
//! use serde::{Deserialize, Serialize};
//!
//! /// The events the saga reads: an order's, and the stock's.
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! pub enum Event {
//!     OrderPlaced { item: String, quantity: u32 },
//!     Reserved { quantity: u32 },
//! }
//!
//! /// The commands it dispatches.
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! pub enum Command {
//!     Reserve { quantity: u32 },
//!     Confirm {},
//!     Cancel { reason: String },
//! }
//!
//! /// One instance per order: reserve the stock, then confirm the order, or
//! /// cancel it when the stock refuses or takes more than a minute.
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! pub struct Fulfilment {
//!     order: String,
//! }
//!
//! impl Saga for Fulfilment {
//!     type Event = Event;
//!     const SUBSCRIPTIONS: &'static [&'static str] = &["OrderPlaced", "Reserved"];
//!
//!     fn correlate(event: &Envelope<Event>) -> Option<String> {
//!         match event.event {
//!             Event::OrderPlaced { .. } => Some(event.aggregate_id().to_owned()),
//!             // Only the reservations this saga asked for.
//!             Event::Reserved { .. } => event.saga_instance("fulfilment"),
//!         }
//!     }
//!
//!     fn react(&mut self, event: &Envelope<Event>, ctx: &mut SagaContext) -> Result<(), String> {
//!         match &event.event {
//!             Event::OrderPlaced { item, quantity } => {
//!                 self.order = event.aggregate_id().to_owned();
//!                 ctx.dispatch("stock", item, &Command::Reserve { quantity: *quantity });
//!                 ctx.set_timer("timeout", ctx.now_ms() + 60_000);
//!             }
//!             Event::Reserved { .. } => {
//!                 ctx.dispatch("order", &self.order, &Command::Confirm {});
//!                 ctx.complete();
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn on_failure(&mut self, failed: &FailedCommand, ctx: &mut SagaContext) -> Result<(), String> {
//!         if failed.command_type == "Reserve" {
//!             let reason = failed.message().to_owned();
//!             ctx.dispatch("order", &self.order, &Command::Cancel { reason });
//!         }
//!         ctx.complete();
//!         Ok(())
//!     }
//!
//!     fn on_timer(&mut self, _timer: &Timer, ctx: &mut SagaContext) -> Result<(), String> {
//!         ctx.cancel_pending();
//!         let reason = "timed out".to_owned();
//!         ctx.dispatch("order", &self.order, &Command::Cancel { reason });
//!         ctx.complete();
//!         Ok(())
//!     }
//! }
//!
//! // The component's `subscriptions`, `correlate`, `react`, `on-failure`
//! // and `on-timer` exports.
//! kiln_sdk::export_saga!(Fulfilment);
//!
//! use kiln_sdk::testing::{SagaTest, json};
//!
//! let placed = Event::OrderPlaced { item: "tea".into(), quantity: 2 };
//! SagaTest::<Fulfilment>::new("fulfilment")
//!     .given_event("order-7", &placed)
//!     .then_expect_instance("7")
//!     .then_expect_commands(vec![("stock", "tea", "Reserve", json!({"quantity": 2}))])
//!     .then_expect_timer("timeout", 61_000)
//!     // The reservation succeeded: its event carries the saga's metadata.
//!     .when_applied(vec![Event::Reserved { quantity: 2 }])
//!     .then_expect_instance("7")
//!     .then_expect_commands(vec![("order", "7", "Confirm", json!({}))])
//!     .then_expect_done();
//!
//! SagaTest::<Fulfilment>::new("fulfilment")
//!     .given_event("order-8", &placed)
//!     .when_rejected("only 1 tea left", Some("out_of_stock"))
//!     .then_expect_commands(vec![("order", "8", "Cancel", json!({"reason": "only 1 tea left"}))])
//!     .then_expect_done();
//!
//! SagaTest::<Fulfilment>::new("fulfilment")
//!     .given_event("order-9", &placed)
//!     .when_timer("timeout")
//!     .then_expect_cancel_pending()
//!     .then_expect_pending(vec![("order", "9", "Cancel", json!({"reason": "timed out"}))]);
//!
//! // The same event type from a command of someone else belongs to no instance.
//! SagaTest::<Fulfilment>::new("fulfilment")
//!     .given_event("stock-tea", Event::Reserved { quantity: 1 })
//!     .then_expect_ignored();
//! ```

mod aggregate;
#[doc(hidden)]
pub mod bindings;
mod codec;
mod export;
pub mod log;
mod projection;
mod saga;
pub mod testing;
mod variants;
mod view;

pub use aggregate::{Aggregate, CommandContext, Failure};
pub use codec::EVENT_SCHEMA;
pub use projection::{Envelope, Projection};
pub use saga::{FailedCommand, Saga, SagaContext, Timer};
/// `serde_json`, re-exported so a plugin can name [`serde_json::Value`] without
/// depending on it.
pub use serde_json;
pub use view::{StoreCalls, View};

/// Items used by the code that [`export_aggregate!`],
/// [`export_projection!`] and [`export_saga!`] generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{AggregateExport, ProjectionExport, SagaExport};
}

/// Export an [`Aggregate`] as the component's implementation of the Kiln
/// `aggregate` world: its `apply` and `handle` functions.
///
/// Call it once, at the root of the plugin crate, with the aggregate's type:
///
/// ```text
/// kiln_sdk::export_aggregate!(BankAccount);
/// ```
///
/// The generated glue lives in an anonymous `const _: () = { ... };` item, so
/// it adds no name to the plugin crate. When the crate is built for a target
/// other than `wasm32` the macro only checks that the type implements
/// [`Aggregate`]: native builds run the plugin's unit tests and have nothing to
/// export.
#[macro_export]
macro_rules! export_aggregate {
    ($aggregate:ty) => {
        #[doc(hidden)]
        #[allow(
            unsafe_code,
            reason = "the canonical ABI exports wit-bindgen generates are unsafe"
        )]
        const _: () = {
            // The generated `export!` macro accepts an identifier only, so the
            // adapter is named by a local alias first.
            #[allow(dead_code, reason = "used only when building for wasm32")]
            type __KilnAggregateExport = $crate::__private::AggregateExport<$aggregate>;

            #[cfg(target_arch = "wasm32")]
            $crate::bindings::aggregate::export_aggregate_world!(
                __KilnAggregateExport with_types_in $crate::bindings::aggregate
            );

            #[cfg(not(target_arch = "wasm32"))]
            fn __kiln_assert_aggregate<A: $crate::Aggregate>() {}
            #[cfg(not(target_arch = "wasm32"))]
            let _ = __kiln_assert_aggregate::<$aggregate>;
        };
    };
}

/// Export a [`Projection`] as the component's implementation of the Kiln
/// `projection` world: its `subscriptions` and `handle-batch` functions.
///
/// Call it once, at the root of the plugin crate, with the projection's type:
///
/// ```text
/// kiln_sdk::export_projection!(AccountBalances);
/// ```
///
/// Like [`export_aggregate!`], the glue lives in an anonymous `const`, and
/// outside `wasm32` the macro only checks that the type implements
/// [`Projection`]. A crate exports one world: call one export macro, once.
/// A crate whose projection logic another plugin crate reuses should put that
/// logic in a library crate of its own: the export of every crate linked into
/// a component is part of it.
#[macro_export]
macro_rules! export_projection {
    ($projection:ty) => {
        #[doc(hidden)]
        #[allow(
            unsafe_code,
            reason = "the canonical ABI exports wit-bindgen generates are unsafe"
        )]
        const _: () = {
            #[allow(dead_code, reason = "used only when building for wasm32")]
            type __KilnProjectionExport = $crate::__private::ProjectionExport<$projection>;

            #[cfg(target_arch = "wasm32")]
            $crate::bindings::projection::export_projection_world!(
                __KilnProjectionExport with_types_in $crate::bindings::projection
            );

            #[cfg(not(target_arch = "wasm32"))]
            fn __kiln_assert_projection<P: $crate::Projection>() {}
            #[cfg(not(target_arch = "wasm32"))]
            let _ = __kiln_assert_projection::<$projection>;
        };
    };
}

/// Export a [`Saga`] as the component's implementation of the Kiln `saga`
/// world: its `subscriptions`, `correlate`, `react`, `on-failure` and
/// `on-timer` functions.
///
/// Call it once, at the root of the plugin crate, with the saga's type:
///
/// ```text
/// kiln_sdk::export_saga!(TransferSaga);
/// ```
///
/// Like [`export_aggregate!`], the glue lives in an anonymous `const`, and
/// outside `wasm32` the macro only checks that the type implements
/// [`Saga`]. A crate exports one world: call one export macro, once.
#[macro_export]
macro_rules! export_saga {
    ($saga:ty) => {
        #[doc(hidden)]
        #[allow(
            unsafe_code,
            reason = "the canonical ABI exports wit-bindgen generates are unsafe"
        )]
        const _: () = {
            #[allow(dead_code, reason = "used only when building for wasm32")]
            type __KilnSagaExport = $crate::__private::SagaExport<$saga>;

            #[cfg(target_arch = "wasm32")]
            $crate::bindings::saga::export_saga_world!(
                __KilnSagaExport with_types_in $crate::bindings::saga
            );

            #[cfg(not(target_arch = "wasm32"))]
            fn __kiln_assert_saga<S: $crate::Saga>() {}
            #[cfg(not(target_arch = "wasm32"))]
            let _ = __kiln_assert_saga::<$saga>;
        };
    };
}
