//! The [`Aggregate`] trait and the types its methods see.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An event-sourced aggregate: decides commands into events and folds events
/// into its state.
///
/// The value of `Self` *is* the state: the host stores it as the JSON that
/// `serde_json` makes of it, and hands it back on the next call. The host
/// never reads it. A stream with no event starts from [`Default::default()`].
///
/// Both methods must be pure and deterministic: the same inputs give the same
/// outputs, so replaying the same events with the same logic rebuilds the
/// same state. Read the time from [`CommandContext::issued_at_ms`], never from
/// a clock.
///
/// See the [crate documentation](crate) for the JSON mapping and an example.
pub trait Aggregate: Default + Serialize + DeserializeOwned {
    /// The commands this aggregate understands: an enum tagged with
    /// `#[serde(tag = "type", content = "data")]` whose variant names are the
    /// command types.
    ///
    /// It is deserialized from the command's type and data each time the host
    /// calls `handle`. A failure to deserialize never reaches
    /// [`Aggregate::handle`]: the host gets [`Failure::Invalid`] with serde's
    /// message. A field of the data that the command does not have is such a
    /// failure (`unknown field `amuont``), unless
    /// [`Aggregate::ALLOW_UNKNOWN_COMMAND_FIELDS`] says otherwise.
    type Command: DeserializeOwned;

    /// Whether a command's data may hold fields its type does not have.
    ///
    /// `false` (the default): such a command is [`Failure::Invalid`] with
    /// `command `Deposit`: unknown field `amuont``, at any depth of the data,
    /// so that a client's misspelled field is not silently dropped. No
    /// `#[serde(deny_unknown_fields)]` is needed. A field whose type takes any
    /// key (a map, `serde_json::Value`) still takes any key.
    ///
    /// `true`: unknown fields are ignored, serde's default, e.g. for an
    /// aggregate whose clients send fields meant for others. Events are never
    /// refused for unknown fields: a stored event always decodes.
    const ALLOW_UNKNOWN_COMMAND_FIELDS: bool = false;

    /// The events this aggregate decides and folds: an enum tagged with
    /// `#[serde(tag = "type", content = "data")]`. The variant name becomes the
    /// event type, the variant's content the event's data, and the schema is
    /// always [`crate::EVENT_SCHEMA`].
    ///
    /// Serialized when [`Aggregate::handle`] returns events, deserialized for
    /// every event the host asks the plugin to apply.
    type Event: Serialize + DeserializeOwned;

    /// Decide `command` against the current state.
    ///
    /// Called by the host's command pipeline once per command, with the state
    /// folded from every committed event of the stream. Return the events to
    /// append (an empty list is a success that changes nothing), or a
    /// [`Failure`]: [`Failure::rejected`] when a business rule refuses the
    /// command, [`Failure::invalid`] when the command itself makes no sense
    /// (for example an amount that must be positive and is not).
    ///
    /// The events are not applied here: the host calls [`Aggregate::apply`]
    /// with them once it has committed them. A panic is a trap: the host
    /// reports it as a plugin fault, not as a rejection.
    fn handle(
        &self,
        command: Self::Command,
        ctx: &CommandContext,
    ) -> Result<Vec<Self::Event>, Failure>;

    /// Fold one committed event into the state.
    ///
    /// Called for every event of the stream, in stream order: in large batches
    /// when the host rebuilds the state from the store, and with the events a
    /// command has just produced. It cannot fail: an event that cannot be
    /// applied means the plugin has a bug, so panic (the host sees a trap).
    fn apply(&mut self, event: Self::Event);
}

/// Why a command was not accepted: the expected ways `handle` fails.
///
/// Anything else (a panic, running out of memory or of time) is a trap, and
/// the host reports it as a fault of the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A business rule refused the command. The host answers HTTP 422
    /// `rejected` and shows `message` to the client as is.
    Rejected {
        /// Optional machine-readable reason, e.g. `insufficient_funds`.
        code: Option<String>,
        /// Human-readable message.
        message: String,
    },
    /// The command cannot be understood: unknown type, missing or mistyped
    /// field, out-of-range value. The host answers HTTP 400
    /// `invalid_command`.
    Invalid(String),
}

impl Failure {
    /// A business rule refused the command. Add a machine-readable code
    /// with [`Failure::with_code`]:
    /// `Failure::rejected("insufficient funds").with_code("insufficient_funds")`
    /// (the order of every SDK: the message, then the code —
    /// `new Rejected(message, code)` in JavaScript,
    /// `Rejected(message, code=...)` in Python).
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::Rejected {
            code: None,
            message: message.into(),
        }
    }

    /// This rejection with `code` (e.g. `insufficient_funds`), which lets a
    /// client react without parsing the message. Only a rejection carries a
    /// code: an [`Failure::Invalid`] is returned unchanged.
    #[must_use]
    pub fn with_code(self, code: impl Into<String>) -> Self {
        match self {
            Self::Rejected { message, .. } => Self::Rejected {
                code: Some(code.into()),
                message,
            },
            invalid @ Self::Invalid(_) => invalid,
        }
    }

    /// The command cannot be understood.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The human-readable message, whichever the kind of failure.
    pub fn message(&self) -> &str {
        match self {
            Self::Rejected { message, .. } | Self::Invalid(message) => message,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                code: Some(code),
                message,
            } => write!(f, "rejected ({code}): {message}"),
            Self::Rejected {
                code: None,
                message,
            } => write!(f, "rejected: {message}"),
            Self::Invalid(message) => write!(f, "invalid command: {message}"),
        }
    }
}

impl std::error::Error for Failure {}

/// What the host tells `handle` about the command besides its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    command_type: String,
    stream_id: String,
    issued_at_ms: i64,
    metadata: Vec<u8>,
}

impl CommandContext {
    /// A context for the command `command_type` addressed to `stream_id`,
    /// issued at `issued_at_ms`, without metadata. The host builds the real
    /// one; this constructor is for tests.
    pub fn new(
        command_type: impl Into<String>,
        stream_id: impl Into<String>,
        issued_at_ms: i64,
    ) -> Self {
        Self {
            command_type: command_type.into(),
            stream_id: stream_id.into(),
            issued_at_ms,
            metadata: Vec::new(),
        }
    }

    /// The same context with the given metadata (a JSON object, as bytes).
    #[must_use]
    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// The same context for another command type.
    #[must_use]
    pub(crate) fn with_command_type(mut self, command_type: &str) -> Self {
        command_type.clone_into(&mut self.command_type);
        self
    }

    /// The command's type as the host received it, e.g. `Deposit`.
    pub fn command_type(&self) -> &str {
        &self.command_type
    }

    /// The stream the command is addressed to, `{aggregate}-{id}`.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The time the host stamped on the command, in milliseconds since the
    /// Unix epoch. Use it instead of a clock, so that decisions replay.
    pub fn issued_at_ms(&self) -> i64 {
        self.issued_at_ms
    }

    /// The command's metadata as the host passed it: a JSON object with
    /// `correlation-id`, `causation-id` and the caller's fields, or empty.
    pub fn metadata_bytes(&self) -> &[u8] {
        &self.metadata
    }

    /// The command's metadata parsed as JSON; `Value::Null` when there is none
    /// or it is not JSON.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::from_slice(&self.metadata).unwrap_or(serde_json::Value::Null)
    }
}

impl Default for CommandContext {
    /// A context for tests: stream `test-1`, issued at the Unix epoch.
    fn default() -> Self {
        Self::new("", "test-1", 0)
    }
}
