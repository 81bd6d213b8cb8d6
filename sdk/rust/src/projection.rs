//! The [`Projection`] trait, the [`Envelope`] its `handle` sees, and the
//! batch loop that the component's `handle-batch` export and the native test
//! harness share.

use serde::de::DeserializeOwned;

use crate::View;
use crate::codec;
use crate::variants::variant_names;

/// A projection: turns committed events into rows of a key-value [`View`].
///
/// The host calls the component's `handle-batch` export with batches of
/// events in global order; for each batch the SDK
///
/// 1. makes a fresh `Self` with [`Default::default()`] (a value lives for one
///    batch: keep per-batch state in it, such as running totals),
/// 2. calls [`Projection::begin`],
/// 3. for each event that [`Projection::accepts`], decodes it into
///    [`Projection::Event`] and calls [`Projection::handle`] with it,
/// 4. calls [`Projection::finish`],
/// 5. writes the rows the batch changed (see [`View`]: reads and writes are
///    cached for the batch).
///
/// Any method that returns `Err` fails the batch: nothing of it is written,
/// and the host stops this projection (and only it) until an operator acts.
/// The SDK prefixes an error from `handle` with the event's position, type
/// and stream. A panic is a trap, with the same effect.
///
/// # Which events reach `handle`
///
/// Events decode exactly like an aggregate's: `{"type": <event-type>, "data":
/// <data>}` is deserialized into [`Projection::Event`], so the usual event
/// type is an enum with `#[serde(tag = "type", content = "data")]` (often the
/// very enum of the aggregate that writes the events). Then:
///
/// - an event whose type is **not a variant** of that enum is **skipped**
///   when [`Projection::SUBSCRIPTIONS`] is empty (the projection receives
///   every event of the log and picks the ones it knows), and is an
///   **error** naming the type when the projection subscribed to a list of
///   types (the host sent a type the projection asked for but cannot decode:
///   a bug to fix, not an event to lose). A type that accepts every event
///   (`serde_json::Value`, a struct with a `type` field, an enum with a
///   `#[serde(other)]` variant) never skips.
/// - an event of a known type whose data does not decode is an error, with
///   serde's message.
///
/// Event types are not namespaced: two aggregates may both have an `Opened`
/// event. Use [`Projection::accepts`] to look only at some streams; it runs
/// before decoding.
///
/// Like an aggregate, a projection must be deterministic: rebuilding the
/// view from the same events gives the same rows. Read times from
/// [`Envelope::recorded_at_ms`], never from a clock.
pub trait Projection: Default {
    /// The events this projection decodes; see the trait's documentation.
    type Event: DeserializeOwned;

    /// The event types to receive (the `subscriptions` export); empty, the
    /// default, means every event.
    const SUBSCRIPTIONS: &'static [&'static str] = &[];

    /// Whether to decode and handle an event of `event_type` on `stream_id`;
    /// the others are skipped without being decoded. The default accepts
    /// every event.
    fn accepts(stream_id: &str, event_type: &str) -> bool {
        let _ = (stream_id, event_type);
        true
    }

    /// Called once at the start of every batch, before any event: load what
    /// the batch keeps in `self`. The default does nothing.
    ///
    /// # Errors
    /// Fails the batch.
    fn begin(&mut self, view: &mut View) -> Result<(), String> {
        let _ = view;
        Ok(())
    }

    /// Project one event into the view.
    ///
    /// # Errors
    /// Fails the batch; the message should say what is wrong with the event
    /// or the view (the SDK adds the event's position, type and stream).
    fn handle(&mut self, view: &mut View, event: &Envelope<Self::Event>) -> Result<(), String>;

    /// Called once at the end of every batch, after its last event: write
    /// back what `begin` loaded. The default does nothing.
    ///
    /// # Errors
    /// Fails the batch.
    fn finish(&mut self, view: &mut View) -> Result<(), String> {
        let _ = view;
        Ok(())
    }
}

/// A committed event as a projection sees it: where it sits in the log and
/// its stream, and its payload decoded into `E`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope<E> {
    /// Position in the global order, 1-based, gap-free.
    pub position: u64,
    /// `{category}-{id}`, e.g. `bank_account-42`.
    pub stream_id: String,
    /// Version inside the stream, 1-based.
    pub version: u64,
    /// The event's type, e.g. `Deposited`.
    pub event_type: String,
    /// The version of the payload's schema.
    pub schema: u32,
    /// The event's metadata: a JSON object (`correlation-id`,
    /// `causation-id` and the caller's fields), as bytes.
    pub metadata: Vec<u8>,
    /// When the host recorded the event, in milliseconds since the Unix
    /// epoch.
    pub recorded_at_ms: i64,
    /// The decoded event.
    pub event: E,
}

impl<E> Envelope<E> {
    /// The stream's category, before the first `-`: the aggregate's name,
    /// e.g. `bank_account` for `bank_account-42`. Aggregate names never
    /// contain `-`.
    pub fn category(&self) -> &str {
        self.stream_id
            .split_once('-')
            .map_or(self.stream_id.as_str(), |(category, _)| category)
    }

    /// The aggregate id, after the first `-`: `42` for `bank_account-42`
    /// (ids may contain `-` themselves); empty when the stream id has none.
    pub fn aggregate_id(&self) -> &str {
        self.stream_id.split_once('-').map_or("", |(_, id)| id)
    }

    /// The metadata parsed as JSON; `Value::Null` when there is none or it
    /// is not JSON.
    pub fn metadata_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.metadata).unwrap_or(serde_json::Value::Null)
    }

    /// The metadata field `key` when it is a string; `None` when it is
    /// missing, not a string, or the metadata is not a JSON object.
    pub fn metadata_str(&self, key: &str) -> Option<String> {
        match self.metadata_field(key)? {
            serde_json::Value::String(value) => Some(value),
            _ => None,
        }
    }

    /// The `correlation_id` metadata field: the id the host (or the caller)
    /// gave the flow this event belongs to. Events produced by a command that
    /// a saga dispatched carry the saga instance's id here.
    pub fn correlation_id(&self) -> Option<String> {
        self.metadata_str("correlation_id")
    }

    /// The `causation_id` metadata field: what caused the command that
    /// produced this event. For a command a saga dispatched: the position
    /// (as a string) of the event it reacted to, `timer:<name>`, or
    /// `command:<step>`.
    pub fn causation_id(&self) -> Option<String> {
        self.metadata_str("causation_id")
    }

    /// The saga instance whose command produced this event, when that
    /// command was dispatched by the saga named `saga` (its plugin name):
    /// the `saga_instance` metadata field when the `saga` field is `saga`,
    /// else `None`. This is how a saga correlates the results of its own
    /// commands:
    ///
    /// ```text
    /// Event::Withdrawn { .. } => event.saga_instance("transfer_saga"),
    /// ```
    pub fn saga_instance(&self, saga: &str) -> Option<String> {
        let serde_json::Value::Object(mut metadata) = self.metadata_json() else {
            return None;
        };
        if metadata.get("saga").and_then(serde_json::Value::as_str) != Some(saga) {
            return None;
        }
        match metadata.remove("saga_instance")? {
            serde_json::Value::String(instance) => Some(instance),
            _ => None,
        }
    }

    /// The step number (the `saga_step` metadata field, 1-based in the order
    /// the instance dispatched its commands) of the command that produced
    /// this event, when the saga named `saga` dispatched it.
    pub fn saga_step(&self, saga: &str) -> Option<u64> {
        self.saga_instance(saga)?;
        match self.metadata_field("saga_step")? {
            serde_json::Value::Number(step) => step.as_u64(),
            serde_json::Value::String(step) => step.parse().ok(),
            _ => None,
        }
    }

    fn metadata_field(&self, key: &str) -> Option<serde_json::Value> {
        match self.metadata_json() {
            serde_json::Value::Object(mut metadata) => metadata.remove(key),
            _ => None,
        }
    }
}

/// An event as the host passes it (the WIT `event`), before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) position: u64,
    pub(crate) stream_id: String,
    pub(crate) version: u64,
    pub(crate) event_type: String,
    pub(crate) schema: u32,
    pub(crate) data: Vec<u8>,
    pub(crate) metadata: Vec<u8>,
    pub(crate) recorded_at_ms: i64,
}

impl RawEvent {
    /// How an error names this event: `event 7 (`Deposited` on `bank_account-42`)`.
    pub(crate) fn describe(&self) -> String {
        describe(self.position, &self.event_type, &self.stream_id)
    }

    /// The variants `E` knows when this event's type is not one of them;
    /// `None` when `E` has a variant for it (or accepts every type).
    pub(crate) fn unknown_to<E: DeserializeOwned>(&self) -> Option<&'static [&'static str]> {
        variant_names::<E>().filter(|known| !known.contains(&self.event_type.as_str()))
    }

    /// The event with its data decoded into `E`, or an error naming the
    /// event with serde's message.
    pub(crate) fn decode<E: DeserializeOwned>(self) -> Result<Envelope<E>, String> {
        let event = codec::try_decode_event(&self.event_type, &self.data)
            .map_err(|message| format!("{}: cannot decode its data: {message}", self.describe()))?;
        Ok(Envelope {
            position: self.position,
            stream_id: self.stream_id,
            version: self.version,
            event_type: self.event_type,
            schema: self.schema,
            metadata: self.metadata,
            recorded_at_ms: self.recorded_at_ms,
            event,
        })
    }
}

/// How an error names the event it is about.
fn describe(position: u64, event_type: &str, stream_id: &str) -> String {
    format!("event {position} (`{event_type}` on `{stream_id}`)")
}

/// `handle-batch` as the host calls it: run one batch through `P` and, when
/// it succeeds, write the changed rows to the view's store.
pub(crate) fn handle_batch<P: Projection>(
    view: &mut View,
    events: impl IntoIterator<Item = RawEvent>,
) -> Result<(), String> {
    let mut projection = P::default();
    projection.begin(view)?;
    for raw in events {
        if !P::accepts(&raw.stream_id, &raw.event_type) {
            continue;
        }
        if let Some(known) = raw.unknown_to::<P::Event>() {
            if P::SUBSCRIPTIONS.is_empty() {
                continue;
            }
            return Err(format!(
                "{}: the projection subscribes to {:?} but its event type has no variant \
                 `{}` (it knows {known:?})",
                raw.describe(),
                P::SUBSCRIPTIONS,
                raw.event_type,
            ));
        }
        let envelope = raw.decode::<P::Event>()?;
        projection.handle(view, &envelope).map_err(|message| {
            format!(
                "{}: {message}",
                describe(envelope.position, &envelope.event_type, &envelope.stream_id)
            )
        })?;
    }
    projection.finish(view)?;
    view.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_metadata(metadata: &serde_json::Value) -> Envelope<()> {
        Envelope {
            position: 1,
            stream_id: "bank_account-a-1".into(),
            version: 1,
            event_type: "Deposited".into(),
            schema: 1,
            metadata: metadata.to_string().into_bytes(),
            recorded_at_ms: 0,
            event: (),
        }
    }

    #[test]
    fn metadata_helpers_read_the_host_fields() {
        let event = with_metadata(&json!({
            "correlation_id": "t1", "causation_id": "17", "saga": "transfer_saga",
            "saga_instance": "t1", "saga_step": 2, "user": 5
        }));
        assert_eq!(event.category(), "bank_account");
        assert_eq!(event.aggregate_id(), "a-1");
        assert_eq!(event.correlation_id().as_deref(), Some("t1"));
        assert_eq!(event.causation_id().as_deref(), Some("17"));
        assert_eq!(event.saga_instance("transfer_saga").as_deref(), Some("t1"));
        assert_eq!(event.saga_instance("other_saga"), None);
        assert_eq!(event.saga_step("transfer_saga"), Some(2));
        assert_eq!(event.saga_step("other_saga"), None);
        // Only strings.
        assert_eq!(event.metadata_str("user"), None);
        assert_eq!(event.metadata_str("missing"), None);
        let event = with_metadata(&json!({"saga": "s", "saga_instance": "i", "saga_step": "3"}));
        assert_eq!(event.saga_step("s"), Some(3));
        assert_eq!(event.correlation_id(), None);
        let event = with_metadata(&json!({"saga_instance": "i"}));
        assert_eq!(event.saga_instance("s"), None);
        let mut event = with_metadata(&json!(null));
        event.metadata.clear();
        assert_eq!(event.saga_instance("s"), None);
        assert_eq!(event.causation_id(), None);
    }
}
