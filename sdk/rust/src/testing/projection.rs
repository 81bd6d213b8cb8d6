//! Given/then tests for projections.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codec::{self, EVENT_SCHEMA};
use crate::projection::{self, RawEvent};
use crate::{Projection, StoreCalls, View};

/// An event to feed a [`ProjectionTest`] or a [`SagaTest`](super::SagaTest):
/// a stream, a type and JSON data, with optional metadata and recording
/// time. Its position and version are assigned when it is fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEvent {
    pub(super) stream_id: String,
    pub(super) event_type: String,
    pub(super) data: Vec<u8>,
    pub(super) metadata: Vec<u8>,
    pub(super) recorded_at_ms: Option<i64>,
}

impl TestEvent {
    /// `event` on `stream_id`, encoded as an aggregate's `handle` encodes
    /// it: its variant name is the type, its content the data.
    ///
    /// # Panics
    /// When `event` does not serialize as `{"type": ..., "data": ...}`.
    pub fn new<E: Serialize>(stream_id: impl Into<String>, event: &E) -> Self {
        let (event_type, data) = codec::encode_tagged(event)
            .unwrap_or_else(|message| panic!("cannot serialize the event: {message}"));
        Self {
            stream_id: stream_id.into(),
            event_type,
            data,
            metadata: Vec::new(),
            recorded_at_ms: None,
        }
    }

    /// An event as the host stores it: a type and a JSON payload (`""` for
    /// none), which need not be valid.
    pub fn json(
        stream_id: impl Into<String>,
        event_type: impl Into<String>,
        data: impl Into<String>,
    ) -> Self {
        Self {
            stream_id: stream_id.into(),
            event_type: event_type.into(),
            data: data.into().into_bytes(),
            metadata: Vec::new(),
            recorded_at_ms: None,
        }
    }

    /// The same event with `metadata` (a JSON object).
    #[must_use]
    pub fn with_metadata(mut self, metadata: &Value) -> Self {
        self.metadata = metadata.to_string().into_bytes();
        self
    }

    /// The same event recorded at `recorded_at_ms` instead of the default
    /// (its position × 1000).
    #[must_use]
    pub fn recorded_at(mut self, recorded_at_ms: i64) -> Self {
        self.recorded_at_ms = Some(recorded_at_ms);
        self
    }
}

/// A projection's view, fed batches of events the way the host feeds them.
///
/// Every event gets the next global position (1, 2, …) and the next version
/// of its stream, and is recorded at `position × 1000` ms unless
/// [`TestEvent::recorded_at`] says otherwise. An event whose type is not
/// among a non-empty [`Projection::SUBSCRIPTIONS`] is not delivered, as the
/// host would not deliver it, but it still takes its position and version.
/// Each `given*` call (or [`ProjectionTest::handle_batch`] call) is one batch
/// through the `handle-batch` export's code: [`Projection::begin`], decoding,
/// [`Projection::handle`], [`Projection::finish`], the [`View`]'s cache and
/// its write-back, over rows kept in memory.
///
/// The `then_*` methods panic with a description when their expectation
/// does not hold, and return the test so that steps chain.
pub struct ProjectionTest<P: Projection> {
    rows: BTreeMap<String, Vec<u8>>,
    position: u64,
    versions: BTreeMap<String, u64>,
    last_calls: StoreCalls,
    projection: PhantomData<P>,
}

impl<P: Projection> Default for ProjectionTest<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Projection> ProjectionTest<P> {
    /// An empty view, before the first event of the log.
    pub fn new() -> Self {
        Self {
            rows: BTreeMap::new(),
            position: 0,
            versions: BTreeMap::new(),
            last_calls: StoreCalls::default(),
            projection: PhantomData,
        }
    }

    /// A view that already holds `rows` (key, JSON value), as another
    /// version of the projection left it.
    pub fn with_rows(mut self, rows: Vec<(&str, Value)>) -> Self {
        for (key, value) in rows {
            self.rows
                .insert(key.to_owned(), value.to_string().into_bytes());
        }
        self
    }

    /// Feed `events` (stream id, event) as one batch.
    ///
    /// # Panics
    /// When the batch fails: a given step is not supposed to.
    pub fn given(self, events: Vec<(&str, P::Event)>) -> Self
    where
        P::Event: Serialize,
    {
        self.given_events(
            events
                .iter()
                .map(|(stream_id, event)| TestEvent::new(*stream_id, event))
                .collect(),
        )
    }

    /// Feed `events` (stream id, event type, JSON data) as one batch.
    ///
    /// # Panics
    /// When the batch fails.
    pub fn given_json(self, events: Vec<(&str, &str, &str)>) -> Self {
        self.given_events(
            events
                .into_iter()
                .map(|(stream_id, event_type, data)| TestEvent::json(stream_id, event_type, data))
                .collect(),
        )
    }

    /// Feed `events` as one batch.
    ///
    /// # Panics
    /// When the batch fails.
    pub fn given_events(mut self, events: Vec<TestEvent>) -> Self {
        if let Err(message) = self.handle_batch(events) {
            panic!("the given events failed: {message}");
        }
        self
    }

    /// Feed `events` as one batch and return what `handle-batch` returns.
    /// When it fails the rows stay as they were, as in the host; the events
    /// keep their positions.
    ///
    /// # Errors
    /// The projection's error, as the host would get it.
    pub fn handle_batch(&mut self, events: Vec<TestEvent>) -> Result<(), String> {
        let raw: Vec<RawEvent> = events
            .into_iter()
            .map(|event| self.assign(event))
            .filter(|event| {
                P::SUBSCRIPTIONS.is_empty() || P::SUBSCRIPTIONS.contains(&event.event_type.as_str())
            })
            .collect();
        let mut view = View::in_memory(std::mem::take(&mut self.rows));
        let result = projection::handle_batch::<P>(&mut view, raw);
        self.last_calls = view.calls();
        // A failed batch never flushed: the rows are the ones before it.
        self.rows = view.into_rows();
        result
    }

    fn assign(&mut self, event: TestEvent) -> RawEvent {
        self.position += 1;
        let version = self.versions.entry(event.stream_id.clone()).or_insert(0);
        *version += 1;
        RawEvent {
            position: self.position,
            version: *version,
            stream_id: event.stream_id,
            event_type: event.event_type,
            schema: EVENT_SCHEMA,
            data: event.data,
            metadata: event.metadata,
            recorded_at_ms: event.recorded_at_ms.unwrap_or_else(|| {
                i64::try_from(self.position)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000)
            }),
        }
    }

    /// The position of the last event fed (0 before the first).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The calls the last batch made to the view's store (the host, in a
    /// component): with the per-batch cache, one `get` and at most one
    /// `put` per distinct key read and written.
    pub fn last_batch_calls(&self) -> StoreCalls {
        self.last_calls
    }

    /// The row under `key`, decoded.
    ///
    /// # Panics
    /// When the row does not decode as a `T`.
    pub fn row<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.rows.get(key).map(|bytes| {
            serde_json::from_slice(bytes).unwrap_or_else(|error| {
                panic!(
                    "the row `{key}` does not decode as {}: {error}; row: {}",
                    std::any::type_name::<T>(),
                    String::from_utf8_lossy(bytes)
                )
            })
        })
    }

    /// Every row whose key starts with `prefix`, in key order, as JSON.
    ///
    /// # Panics
    /// When a row is not JSON.
    pub fn rows(&self, prefix: &str) -> Vec<(String, Value)> {
        self.rows
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| (key.clone(), self.row::<Value>(key).unwrap_or(Value::Null)))
            .collect()
    }

    /// Expect the row under `key` to be exactly `expected` as JSON.
    pub fn then_expect_row(self, key: &str, expected: Value) -> Self {
        match self.row::<Value>(key) {
            Some(actual) => assert_eq!(actual, expected, "row `{key}`"),
            None => panic!("expected the row `{key}` = {expected}, there is none"),
        }
        self
    }

    /// Expect no row under `key`.
    pub fn then_expect_no_row(self, key: &str) -> Self {
        if let Some(actual) = self.row::<Value>(key) {
            panic!("expected no row `{key}`, found {actual}");
        }
        self
    }

    /// Expect the rows whose key starts with `prefix` to be exactly
    /// `expected`, in key order.
    pub fn then_expect_rows(self, prefix: &str, expected: Vec<(&str, Value)>) -> Self {
        let expected: Vec<(String, Value)> = expected
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        assert_eq!(self.rows(prefix), expected, "rows with prefix `{prefix}`");
        self
    }

    /// Run `check` on the row under `key`, decoded as a `T` (`None` when
    /// there is no row).
    pub fn then_expect<T: DeserializeOwned>(
        self,
        key: &str,
        check: impl FnOnce(Option<T>),
    ) -> Self {
        check(self.row(key));
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;
    use crate::Envelope;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Event {
        Added { n: i64 },
        Cleared {},
    }

    /// Sums per stream under the stream id, counts batches under `_batches`.
    #[derive(Default)]
    struct Sums {
        batches: u64,
    }

    impl Projection for Sums {
        type Event = Event;

        fn begin(&mut self, view: &mut View) -> Result<(), String> {
            self.batches = view.get("_batches")?.unwrap_or(0) + 1;
            Ok(())
        }

        fn handle(&mut self, view: &mut View, event: &Envelope<Event>) -> Result<(), String> {
            let key = event.stream_id.as_str();
            match event.event {
                Event::Added { n } if n < 0 => Err(format!("negative {n}")),
                Event::Added { n } => {
                    let sum: i64 = view.get(key)?.unwrap_or(0);
                    view.put(key, &(sum + n))
                }
                Event::Cleared {} => {
                    view.delete(key);
                    Ok(())
                }
            }
        }

        fn finish(&mut self, view: &mut View) -> Result<(), String> {
            view.put("_batches", &self.batches)
        }
    }

    /// Subscribes to `Added` by name, and records what the envelope says.
    #[derive(Default)]
    struct Subscribed;

    impl Projection for Subscribed {
        type Event = Event;
        const SUBSCRIPTIONS: &'static [&'static str] = &["Added", "Renamed"];

        fn accepts(stream_id: &str, _event_type: &str) -> bool {
            !stream_id.starts_with("ignored-")
        }

        fn handle(&mut self, view: &mut View, event: &Envelope<Event>) -> Result<(), String> {
            view.put(
                &format!("event-{}", event.position),
                &json!({
                    "stream": event.stream_id,
                    "category": event.category(),
                    "id": event.aggregate_id(),
                    "version": event.version,
                    "type": event.event_type,
                    "schema": event.schema,
                    "recorded_at_ms": event.recorded_at_ms,
                    "metadata": event.metadata_json(),
                }),
            )
        }
    }

    #[test]
    fn given_then() {
        ProjectionTest::<Sums>::new()
            .given(vec![
                ("s-1", Event::Added { n: 2 }),
                ("s-2", Event::Added { n: 5 }),
                ("s-1", Event::Added { n: 3 }),
            ])
            .then_expect_row("s-1", json!(5))
            .then_expect_row("s-2", json!(5))
            .then_expect_row("_batches", json!(1))
            .given_json(vec![
                ("s-2", "Cleared", ""),
                ("s-1", "Added", r#"{"n": 1}"#),
            ])
            .then_expect_no_row("s-2")
            .then_expect_rows("s-", vec![("s-1", json!(6))])
            .then_expect_row("_batches", json!(2))
            .then_expect::<i64>("s-1", |sum| assert_eq!(sum, Some(6)));
    }

    #[test]
    fn each_key_costs_one_get_and_one_put_per_batch() {
        let mut test = ProjectionTest::<Sums>::new();
        let events = (0..100)
            .map(|i| TestEvent::new(format!("s-{}", i % 3), &Event::Added { n: i }))
            .collect();
        test.handle_batch(events).unwrap();
        assert_eq!(
            test.last_batch_calls(),
            StoreCalls {
                gets: 4,
                puts: 4,
                deletes: 0,
                scans: 0
            }
        );
        assert_eq!(test.position(), 100);
    }

    #[test]
    fn unknown_types_are_skipped_when_subscribed_to_all() {
        ProjectionTest::<Sums>::new()
            .given_json(vec![
                ("s-1", "Added", r#"{"n": 1}"#),
                ("s-1", "Renamed", r#"{"to": "x"}"#),
                ("s-1", "Added", r#"{"n": 1}"#),
            ])
            .then_expect_row("s-1", json!(2));
    }

    #[test]
    fn a_failed_batch_writes_nothing() {
        let mut test = ProjectionTest::<Sums>::new().given(vec![("s-1", Event::Added { n: 1 })]);
        let error = test
            .handle_batch(vec![
                TestEvent::new("s-1", &Event::Added { n: 1 }),
                TestEvent::new("s-1", &Event::Added { n: -1 }),
            ])
            .unwrap_err();
        assert_eq!(error, "event 3 (`Added` on `s-1`): negative -1");
        let test = test
            .then_expect_row("s-1", json!(1))
            .then_expect_row("_batches", json!(1));
        assert_eq!(test.position(), 3);
    }

    #[test]
    fn data_that_does_not_decode_is_an_error() {
        let mut test = ProjectionTest::<Sums>::new();
        let error = test
            .handle_batch(vec![TestEvent::json("s-1", "Added", r#"{"n": "x"}"#)])
            .unwrap_err();
        assert!(
            error.starts_with("event 1 (`Added` on `s-1`): cannot decode its data: invalid type"),
            "{error}"
        );
        let error = test
            .handle_batch(vec![TestEvent::json("s-1", "Added", "{")])
            .unwrap_err();
        assert!(error.contains("data is not valid JSON"), "{error}");
    }

    #[test]
    #[should_panic(expected = "the given events failed: event 1")]
    fn a_failing_given_panics() {
        let _ = ProjectionTest::<Sums>::new().given(vec![("s-1", Event::Added { n: -1 })]);
    }

    #[test]
    fn the_envelope_carries_the_event_context() {
        ProjectionTest::<Subscribed>::new()
            .given_events(vec![
                TestEvent::new("acc-1", &Event::Added { n: 1 }),
                TestEvent::new("acc-1", &Event::Cleared {}),
                TestEvent::new("ignored-1", &Event::Added { n: 1 }),
                TestEvent::json("acc-x-y", "Added", r#"{"n": 2}"#)
                    .with_metadata(&json!({"user": "ann"}))
                    .recorded_at(77),
            ])
            .then_expect_row(
                "event-1",
                json!({
                    "stream": "acc-1", "category": "acc", "id": "1", "version": 1,
                    "type": "Added", "schema": 1, "recorded_at_ms": 1000, "metadata": null
                }),
            )
            // Not subscribed: not delivered, but it took position 2.
            .then_expect_no_row("event-2")
            // Not accepted.
            .then_expect_no_row("event-3")
            .then_expect_row(
                "event-4",
                json!({
                    "stream": "acc-x-y", "category": "acc", "id": "x-y", "version": 1,
                    "type": "Added", "schema": 1, "recorded_at_ms": 77,
                    "metadata": {"user": "ann"}
                }),
            );
    }

    #[test]
    fn a_subscribed_type_without_a_variant_is_an_error() {
        let mut test = ProjectionTest::<Subscribed>::new();
        let error = test
            .handle_batch(vec![TestEvent::json("acc-1", "Renamed", "{}")])
            .unwrap_err();
        assert!(
            error.starts_with("event 1 (`Renamed` on `acc-1`): the projection subscribes to"),
            "{error}"
        );
        assert!(error.contains("no variant `Renamed`"), "{error}");
        // Unless the stream is not accepted: then it is not even looked at.
        test.handle_batch(vec![TestEvent::json("ignored-1", "Renamed", "{}")])
            .unwrap();
    }

    #[test]
    fn existing_rows_can_be_given() {
        ProjectionTest::<Sums>::new()
            .with_rows(vec![("s-1", json!(10)), ("_batches", json!(7))])
            .given(vec![("s-1", Event::Added { n: 1 })])
            .then_expect_row("s-1", json!(11))
            .then_expect_row("_batches", json!(8));
    }
}
