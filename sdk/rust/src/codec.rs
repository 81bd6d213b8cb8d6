//! The JSON mapping between the WIT payloads (bytes) and an aggregate's Rust
//! types. The wasm exports and the native test harness both go through these
//! functions, so a native test checks exactly what the host will see.

use std::any::type_name;

use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::{Aggregate, CommandContext, Failure};

/// The schema version the SDK writes on every event it encodes.
pub const EVENT_SCHEMA: u32 = 1;

/// An event decided by `handle`, encoded for the host (the WIT `new-event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedEvent {
    pub(crate) event_type: String,
    pub(crate) schema: u32,
    pub(crate) data: Vec<u8>,
}

/// The state the host passed (an aggregate's or a saga instance's), decoded;
/// empty bytes are the initial state.
///
/// # Panics
/// When the bytes are not this plugin's state: the host only ever passes
/// back what `encode_state` made, so this is a bug (or a changed state type).
pub(crate) fn decode_state<T: Default + DeserializeOwned>(bytes: &[u8]) -> T {
    if bytes.is_empty() {
        return T::default();
    }
    serde_json::from_slice(bytes).unwrap_or_else(|error| {
        panic!(
            "kiln-sdk: cannot decode the state of {} from {} bytes of JSON: {error}",
            type_name::<T>(),
            bytes.len()
        )
    })
}

/// The state as JSON bytes for the host to keep.
///
/// # Panics
/// When serde cannot serialize the state (e.g. a map with non-string keys).
pub(crate) fn encode_state<T: Serialize>(state: &T) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_else(|error| {
        panic!(
            "kiln-sdk: cannot serialize the state of {} as JSON: {error}",
            type_name::<T>()
        )
    })
}

/// What the decoder does with a field of the payload that the type does not
/// have (and would silently drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownFields {
    /// The payload is refused: `unknown field `name``.
    Refuse,
    /// The field is ignored, serde's default.
    Allow,
}

/// Decode a command of type `command_type` with payload `data`.
///
/// Every failure is [`Failure::Invalid`] with serde's message; a field the
/// command does not have is one unless `unknown` allows it (see
/// [`Aggregate::ALLOW_UNKNOWN_COMMAND_FIELDS`]).
pub(crate) fn decode_command<C: DeserializeOwned>(
    command_type: &str,
    data: &[u8],
    unknown: UnknownFields,
) -> Result<C, Failure> {
    decode_tagged(command_type, data, Source::Command(unknown))
        .map_err(|message| Failure::invalid(format!("command `{command_type}`: {message}")))
}

/// Decode a committed event of type `event_type` with payload `data`.
///
/// # Panics
/// When the event does not decode: the plugin has a bug, or the stream holds
/// events another plugin (or an older version of this one) wrote.
pub(crate) fn decode_event<E: DeserializeOwned>(event_type: &str, data: &[u8]) -> E {
    try_decode_event(event_type, data).unwrap_or_else(|message| {
        panic!(
            "kiln-sdk: cannot decode event `{event_type}` as {}: {message}; data: {}",
            type_name::<E>(),
            String::from_utf8_lossy(&data[..data.len().min(200)])
        )
    })
}

/// Decode a committed event of type `event_type` with payload `data`, or
/// serde's message.
pub(crate) fn try_decode_event<E: DeserializeOwned>(
    event_type: &str,
    data: &[u8],
) -> Result<E, String> {
    decode_tagged(event_type, data, Source::Event)
}

/// Encode an event decided by `handle`.
///
/// # Panics
/// When the event type does not serialize as `{"type": "...", "data": ...}`,
/// i.e. it lacks `#[serde(tag = "type", content = "data")]`.
pub(crate) fn encode_event<E: Serialize>(event: &E) -> EncodedEvent {
    let (event_type, data) = encode_tagged(event).unwrap_or_else(|message| {
        panic!(
            "kiln-sdk: cannot encode an event of {}: {message}",
            type_name::<E>()
        )
    });
    EncodedEvent {
        event_type,
        schema: EVENT_SCHEMA,
        data,
    }
}

/// Split a value that serializes as `{"type": t, "data": d}` into `t` and the
/// JSON bytes of `d` (`{}` when there is no `data`, as for a unit variant).
pub(crate) fn encode_tagged<T: Serialize>(value: &T) -> Result<(String, Vec<u8>), String> {
    const SHAPE: &str = "expected an enum with #[serde(tag = \"type\", content = \"data\")]";
    let Value::Object(mut object) = serde_json::to_value(value).map_err(|e| e.to_string())? else {
        return Err(format!("it does not serialize as a JSON object; {SHAPE}"));
    };
    let tag = match object.remove("type") {
        Some(Value::String(tag)) => tag,
        _ => return Err(format!("it has no string field `type`; {SHAPE}")),
    };
    let data = object
        .remove("data")
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    if let Some(key) = object.keys().next() {
        return Err(format!(
            "it has a field `{key}` besides `type` and `data`; {SHAPE}"
        ));
    }
    let data = serde_json::to_vec(&data).map_err(|e| e.to_string())?;
    Ok((tag, data))
}

/// Where a payload comes from, which decides how far it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A client's command: checked to be one JSON value before anything else,
    /// and its unknown fields refused or allowed as the aggregate says.
    Command(UnknownFields),
    /// A committed event: it was one JSON value when it was appended, and
    /// fields an older version of the plugin wrote are ignored.
    Event,
}

/// Deserialize `{"type": tag, "data": <data>}` into `T`.
///
/// Empty or `null` data means "no fields": it is tried as `{}` (a struct
/// variant without fields), then with no `data` at all (a unit variant), and
/// `{}` falls back to no `data` the same way. The error is serde's message for
/// the first attempt.
fn decode_tagged<T: DeserializeOwned>(tag: &str, data: &[u8], source: Source) -> Result<T, String> {
    let data = data.trim_ascii();
    // A payload that is not JSON is reported on its own, so a syntax error's
    // position refers to the caller's bytes, not to the document assembled
    // here. Untrusted payloads (commands) are checked first, so that
    // trailing content cannot add fields to that document; event payloads
    // were checked to be one JSON value when they were appended, so they are
    // checked only when they fail, which keeps replay to one parse per event.
    let invalid_json = |data: &[u8]| {
        serde_json::from_slice::<IgnoredAny>(data)
            .err()
            .map(|error| format!("data is not valid JSON: {error}"))
    };
    if source != Source::Event
        && !data.is_empty()
        && let Some(message) = invalid_json(data)
    {
        return Err(message);
    }
    let tag_json = serde_json::to_string(tag).map_err(|e| e.to_string())?;
    let no_fields = data.is_empty() || data == b"null";
    let first: &[u8] = if no_fields { b"{}" } else { data };

    let mut document = Vec::with_capacity(tag_json.len() + first.len() + 20);
    document.extend_from_slice(b"{\"type\":");
    document.extend_from_slice(tag_json.as_bytes());
    document.extend_from_slice(b",\"data\":");
    document.extend_from_slice(first);
    document.push(b'}');

    let attempt = match source {
        Source::Command(UnknownFields::Refuse) => deserialize_refusing_unknown(&document),
        Source::Command(UnknownFields::Allow) | Source::Event => {
            serde_json::from_slice::<T>(&document)
        }
    };
    match attempt {
        Ok(value) => Ok(value),
        Err(_) if !data.is_empty() && invalid_json(data).is_some() => {
            Err(invalid_json(data).unwrap_or_default())
        }
        Err(error) if no_fields || is_empty_object(data) => {
            let bare = format!("{{\"type\":{tag_json}}}");
            serde_json::from_str::<T>(&bare).map_err(|_| message_of(&error))
        }
        Err(error) => Err(message_of(&error)),
    }
}

/// `document` as `T`, where a field that `T` would ignore is an error
/// instead, as if every struct in `T` had `#[serde(deny_unknown_fields)]`.
///
/// serde_ignored reports each value the deserializer skips, at the moment it
/// skips it. The first one is the error, even when the deserialization failed
/// afterwards (a misspelled field is usually also a missing one): that is the
/// problem `deny_unknown_fields` would have stopped at, since serde stops at
/// the first problem in document order. serde's own message lists the fields
/// the struct expected; the derive gives those names to the deserializer only
/// when the attribute is written, so the message names the unknown field
/// alone (the JavaScript and Python SDKs say the same).
fn deserialize_refusing_unknown<T: DeserializeOwned>(
    document: &[u8],
) -> Result<T, serde_json::Error> {
    let mut unknown: Option<String> = None;
    let mut deserializer = serde_json::Deserializer::from_slice(document);
    let result = serde_ignored::deserialize(&mut deserializer, |path| {
        if unknown.is_none() {
            unknown = Some(unknown_field(&path));
        }
    })
    .and_then(|value| deserializer.end().map(|()| value));
    match unknown {
        Some(message) => Err(serde::de::Error::custom(message)),
        None => result,
    }
}

/// The message for the ignored value at `path`: serde's words for an
/// unknown field, without its list of the expected ones.
fn unknown_field(path: &serde_ignored::Path<'_>) -> String {
    match path {
        serde_ignored::Path::Map { key, .. } => format!("unknown field `{key}`"),
        other => format!("unknown value at `{other}`"),
    }
}

fn is_empty_object(data: &[u8]) -> bool {
    data.first() == Some(&b'{')
        && data.last() == Some(&b'}')
        && data[1..data.len() - 1].trim_ascii().is_empty()
}

/// serde's message without the position, which points into a document the
/// caller never saw.
fn message_of(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => message,
    }
}

/// `handle` as the host calls it, on encoded inputs and outputs.
pub(crate) fn handle<A: Aggregate>(
    state: &[u8],
    command_type: &str,
    data: &[u8],
    ctx: &CommandContext,
) -> Result<Vec<EncodedEvent>, Failure> {
    let unknown = if A::ALLOW_UNKNOWN_COMMAND_FIELDS {
        UnknownFields::Allow
    } else {
        UnknownFields::Refuse
    };
    let command: A::Command = decode_command(command_type, data, unknown)?;
    let state: A = decode_state(state);
    let events = state.handle(command, ctx)?;
    Ok(events.iter().map(encode_event).collect())
}

/// `apply` as the host calls it: fold a batch of `(event-type, data)` pairs.
pub(crate) fn apply<'a, A: Aggregate>(
    state: &[u8],
    events: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<u8> {
    let mut events = events.into_iter().peekable();
    if events.peek().is_none() {
        return state.to_vec();
    }
    let mut aggregate: A = decode_state(state);
    for (event_type, data) in events {
        aggregate.apply(decode_event(event_type, data));
    }
    encode_state(&aggregate)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Cmd {
        Open { owner: String },
        Deposit { amount: i64 },
        Close {},
        Ping,
        Rename(String),
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Counter {
        total: i64,
        closed: bool,
    }

    impl Aggregate for Counter {
        type Command = Cmd;
        type Event = Cmd;

        fn handle(&self, command: Cmd, _ctx: &CommandContext) -> Result<Vec<Cmd>, Failure> {
            match command {
                Cmd::Deposit { amount } if amount <= 0 => Err(Failure::invalid("amount")),
                Cmd::Close {} if self.closed => Err(Failure::rejected("closed")),
                other => Ok(vec![other]),
            }
        }

        fn apply(&mut self, event: Cmd) {
            match event {
                Cmd::Deposit { amount } => self.total += amount,
                Cmd::Close {} => self.closed = true,
                _ => {}
            }
        }
    }

    fn cmd(tag: &str, data: &str) -> Result<Cmd, Failure> {
        decode_command(tag, data.as_bytes(), UnknownFields::Refuse)
    }

    fn lenient(tag: &str, data: &str) -> Result<Cmd, Failure> {
        decode_command(tag, data.as_bytes(), UnknownFields::Allow)
    }

    fn invalid_message(result: Result<Cmd, Failure>) -> String {
        match result {
            Err(Failure::Invalid(message)) => message,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn commands_decode_from_type_and_data() {
        assert_eq!(
            cmd("Deposit", r#"{"amount": 5}"#).unwrap(),
            Cmd::Deposit { amount: 5 }
        );
        assert_eq!(
            cmd("Rename", r#""new""#).unwrap(),
            Cmd::Rename("new".into())
        );
    }

    #[test]
    fn unknown_fields_of_a_command_are_invalid() {
        assert_eq!(
            invalid_message(cmd("Deposit", r#"{"amount": 5, "note": "x"}"#)),
            "command `Deposit`: unknown field `note`"
        );
        assert_eq!(
            invalid_message(cmd("Close", r#"{"reason": null}"#)),
            "command `Close`: unknown field `reason`"
        );
        // A misspelled field is also a missing one: the unknown field is
        // reported, as `#[serde(deny_unknown_fields)]` would.
        assert_eq!(
            invalid_message(cmd("Deposit", r#"{"amuont": 5}"#)),
            "command `Deposit`: unknown field `amuont`"
        );
    }

    #[test]
    fn the_first_problem_in_document_order_is_reported() {
        assert_eq!(
            invalid_message(cmd("Deposit", r#"{"note": 1, "amount": "5"}"#)),
            "command `Deposit`: unknown field `note`"
        );
        assert_eq!(
            invalid_message(cmd("Deposit", r#"{"amount": "5", "note": 1}"#)),
            "command `Deposit`: invalid type: string \"5\", expected i64"
        );
        assert_eq!(
            invalid_message(cmd("Deposit", r#"{"amount": 1, "amount": 2, "x": 3}"#)),
            "command `Deposit`: duplicate field `amount`"
        );
    }

    #[test]
    fn allowed_unknown_fields_are_ignored() {
        assert_eq!(
            lenient("Deposit", r#"{"amount": 5, "note": "x"}"#).unwrap(),
            Cmd::Deposit { amount: 5 }
        );
        assert_eq!(lenient("Close", r#"{"reason": 1}"#).unwrap(), Cmd::Close {});
        let message = invalid_message(lenient("Deposit", r#"{"amuont": 5}"#));
        assert_eq!(message, "command `Deposit`: missing field `amount`");
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Address {
        city: String,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Nested {
        Move {
            to: Address,
            #[serde(default)]
            via: Vec<Address>,
            #[serde(default)]
            note: Option<Address>,
        },
        Tag {
            labels: std::collections::BTreeMap<String, i64>,
            extra: Value,
        },
    }

    fn nested(tag: &str, data: &str) -> Result<Nested, Failure> {
        decode_command(tag, data.as_bytes(), UnknownFields::Refuse)
    }

    #[test]
    fn unknown_fields_are_refused_at_any_depth() {
        for (data, field) in [
            (r#"{"to": {"city": "a", "zip": 1}}"#, "zip"),
            (
                r#"{"to": {"city": "a"}, "via": [{"city": "b"}, {"cty": "c"}]}"#,
                "cty",
            ),
            (
                r#"{"to": {"city": "a"}, "note": {"city": "b", "x": []}}"#,
                "x",
            ),
        ] {
            let message = match nested("Move", data) {
                Err(Failure::Invalid(message)) => message,
                other => panic!("{data}: expected invalid, got {other:?}"),
            };
            assert_eq!(message, format!("command `Move`: unknown field `{field}`"));
        }
        // Maps and JSON values take any key: nothing of theirs is ignored.
        let tag = nested(
            "Tag",
            r#"{"labels": {"a": 1, "b": 2}, "extra": {"any": {"thing": 1}}}"#,
        );
        assert!(tag.is_ok(), "{tag:?}");
    }

    #[test]
    fn events_with_unknown_fields_still_decode() {
        let event: Cmd = decode_event("Deposit", br#"{"amount": 2, "added_later": true}"#);
        assert_eq!(event, Cmd::Deposit { amount: 2 });
        let state = apply::<Counter>(b"", [("Deposit", &br#"{"amount":2,"x":1}"#[..])]);
        assert_eq!(state, br#"{"total":2,"closed":false}"#);
    }

    #[test]
    fn fieldless_commands_accept_empty_null_and_empty_object() {
        for data in ["", "null", "{}", " { } ", "  "] {
            assert_eq!(cmd("Close", data).unwrap(), Cmd::Close {}, "data {data:?}");
            assert_eq!(cmd("Ping", data).unwrap(), Cmd::Ping, "data {data:?}");
        }
    }

    #[test]
    fn unknown_type_is_invalid_with_serde_message() {
        let message = invalid_message(cmd("Explode", "{}"));
        assert!(message.contains("unknown variant `Explode`"), "{message}");
        assert!(message.contains("expected one of"), "{message}");
        assert!(!message.contains("line 1"), "{message}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_invalid() {
        let message = invalid_message(cmd("Deposit", "{}"));
        assert!(message.contains("missing field `amount`"), "{message}");
        let message = invalid_message(cmd("Deposit", ""));
        assert!(message.contains("missing field `amount`"), "{message}");
        let message = invalid_message(cmd("Deposit", r#"{"amount": "5"}"#));
        assert!(message.contains("invalid type: string"), "{message}");
        let message = invalid_message(cmd("Deposit", r#"{"amount": 1e400}"#));
        assert!(message.contains("number out of range"), "{message}");
        let message = invalid_message(cmd("Deposit", r#"{"amount": 99999999999999999999}"#));
        assert!(message.contains("expected i64"), "{message}");
    }

    #[test]
    fn unparseable_data_is_invalid_with_its_own_position() {
        let message = invalid_message(cmd("Deposit", r#"{"amount": 5"#));
        assert!(
            message.starts_with("command `Deposit`: data is not valid JSON"),
            "{message}"
        );
        assert!(message.contains("line 1 column 12"), "{message}");
        // Trailing content after the payload must not be smuggled in.
        let message = invalid_message(cmd("Deposit", r#"{"amount": 5}, "x": 1"#));
        assert!(message.contains("not valid JSON"), "{message}");
        let message = invalid_message(cmd("Deposit", "\u{0}"));
        assert!(message.contains("not valid JSON"), "{message}");
    }

    #[test]
    fn events_encode_as_type_data_and_schema_one() {
        let event = encode_event(&Cmd::Deposit { amount: 3 });
        assert_eq!(event.event_type, "Deposit");
        assert_eq!(event.schema, EVENT_SCHEMA);
        assert_eq!(event.data, br#"{"amount":3}"#);
        assert_eq!(encode_event(&Cmd::Close {}).data, b"{}");
        assert_eq!(encode_event(&Cmd::Ping).data, b"{}");
        assert_eq!(encode_event(&Cmd::Rename("a".into())).data, br#""a""#);
    }

    #[test]
    fn events_round_trip() {
        for event in [
            Cmd::Open {
                owner: "Ann".into(),
            },
            Cmd::Deposit { amount: -1 },
            Cmd::Close {},
            Cmd::Ping,
            Cmd::Rename("b".into()),
        ] {
            let encoded = encode_event(&event);
            let decoded: Cmd = decode_event(&encoded.event_type, &encoded.data);
            assert_eq!(decoded, event);
        }
    }

    #[test]
    #[should_panic(expected = "cannot encode an event")]
    fn untagged_event_types_are_a_bug() {
        #[derive(Serialize)]
        struct NotTagged {
            amount: i64,
        }
        let _ = encode_event(&NotTagged { amount: 1 });
    }

    #[test]
    #[should_panic(expected = "cannot decode event `Unknown`")]
    fn undecodable_events_panic() {
        let _: Cmd = decode_event("Unknown", b"{}");
    }

    #[test]
    fn empty_state_is_default_and_state_is_plain_json() {
        assert_eq!(decode_state::<Counter>(b""), Counter::default());
        let state = apply::<Counter>(b"", [("Deposit", &br#"{"amount":2}"#[..])]);
        assert_eq!(state, br#"{"total":2,"closed":false}"#);
        let state = apply::<Counter>(
            &state,
            [("Deposit", &br#"{"amount":3}"#[..]), ("Close", &b""[..])],
        );
        assert_eq!(
            decode_state::<Counter>(&state),
            Counter {
                total: 5,
                closed: true
            }
        );
    }

    #[test]
    fn an_empty_batch_returns_the_state_unchanged() {
        assert_eq!(apply::<Counter>(b"", []), b"");
        assert_eq!(
            apply::<Counter>(b"{\"total\":1,\"closed\":false}", []),
            b"{\"total\":1,\"closed\":false}"
        );
    }

    #[test]
    #[should_panic(expected = "cannot decode the state")]
    fn undecodable_state_panics() {
        let _ = decode_state::<Counter>(b"[1]");
    }

    #[test]
    fn handle_maps_results_and_failures() {
        let ctx = CommandContext::default();
        let events = handle::<Counter>(b"", "Deposit", br#"{"amount":4}"#, &ctx).unwrap();
        assert_eq!(
            events,
            vec![EncodedEvent {
                event_type: "Deposit".into(),
                schema: 1,
                data: br#"{"amount":4}"#.to_vec()
            }]
        );
        assert_eq!(
            handle::<Counter>(b"", "Deposit", br#"{"amount":0}"#, &ctx),
            Err(Failure::invalid("amount"))
        );
        let closed = br#"{"total":0,"closed":true}"#;
        assert_eq!(
            handle::<Counter>(closed, "Close", b"", &ctx),
            Err(Failure::rejected("closed"))
        );
        assert!(matches!(
            handle::<Counter>(closed, "Nope", b"", &ctx),
            Err(Failure::Invalid(_))
        ));
    }

    /// `Counter` with unknown command fields allowed.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct LenientCounter(Counter);

    impl Aggregate for LenientCounter {
        type Command = Cmd;
        type Event = Cmd;
        const ALLOW_UNKNOWN_COMMAND_FIELDS: bool = true;

        fn handle(&self, command: Cmd, ctx: &CommandContext) -> Result<Vec<Cmd>, Failure> {
            self.0.handle(command, ctx)
        }

        fn apply(&mut self, event: Cmd) {
            self.0.apply(event);
        }
    }

    #[test]
    fn handle_refuses_unknown_fields_unless_the_aggregate_allows_them() {
        let ctx = CommandContext::default();
        let data = br#"{"amount":4,"memo":"rent"}"#;
        assert_eq!(
            handle::<Counter>(b"", "Deposit", data, &ctx),
            Err(Failure::invalid("command `Deposit`: unknown field `memo`"))
        );
        let events = handle::<LenientCounter>(b"", "Deposit", data, &ctx).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, br#"{"amount":4}"#);
    }
}
