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
    fn describe(&self) -> String {
        describe(self.position, &self.event_type, &self.stream_id)
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
    let known = variant_names::<P::Event>();
    let mut projection = P::default();
    projection.begin(view)?;
    for raw in events {
        if !P::accepts(&raw.stream_id, &raw.event_type) {
            continue;
        }
        if let Some(known) = known
            && !known.contains(&raw.event_type.as_str())
        {
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
        let event = codec::try_decode_event(&raw.event_type, &raw.data)
            .map_err(|message| format!("{}: cannot decode its data: {message}", raw.describe()))?;
        let envelope = Envelope {
            position: raw.position,
            stream_id: raw.stream_id,
            version: raw.version,
            event_type: raw.event_type,
            schema: raw.schema,
            metadata: raw.metadata,
            recorded_at_ms: raw.recorded_at_ms,
            event,
        };
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
