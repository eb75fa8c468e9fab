//! The crate's error types: [`Error`] for the bus itself, [`DecodeError`] for incoming bytes.

use crate::pattern::PatternError;

/// A boxed error from a backend or store, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the bus outside a handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A subscription pattern or event name does not parse.
    #[error("invalid pattern `{pattern}` for `{subscriber}`: {source}")]
    Pattern {
        /// The offending pattern as written.
        pattern: String,
        /// The subscriber that declared it.
        subscriber: String,
        /// What is wrong with it.
        #[source]
        source: PatternError,
    },
    /// A configuration value is missing or out of range; `setting` names it.
    #[error("invalid setting `{setting}`: {message}")]
    Config {
        /// The name of the setting, as the user spells it.
        setting: String,
        /// Why the value was rejected.
        message: String,
    },
    /// An event could not be serialized.
    #[error("failed to encode event `{event_type}`")]
    Encode {
        /// The event's type name.
        event_type: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// Incoming bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The backend (broker, server) failed an operation.
    #[error("{backend} backend: {operation} failed")]
    Backend {
        /// Which backend: `memory`, `redis`, `kafka`.
        backend: &'static str,
        /// What it was doing.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The inbox store failed.
    #[error("inbox store: {operation} failed")]
    Inbox {
        /// What it was doing.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// An aggregate could not be rebuilt from its events, or its snapshot not stored.
    #[error("aggregate `{aggregate}` of key `{key}`: {reason}")]
    Aggregate {
        /// The aggregate.
        aggregate: &'static str,
        /// Its key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A saga instance could not be loaded or saved.
    #[error("saga `{saga}` instance `{id}`: {reason}")]
    Saga {
        /// The saga.
        saga: &'static str,
        /// The instance.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend does not offer this operation.
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// The missing operation.
        operation: &'static str,
    },
    /// A dead letter with this id does not exist.
    #[error("no dead letter `{id}` on topic `{topic}`")]
    DeadLetterNotFound {
        /// The DLQ topic searched.
        topic: String,
        /// The id asked for.
        id: String,
    },
    /// An operation did not complete in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
    /// The channel's publish circuit is open: failing fast instead of calling the backend.
    #[error("publish circuit for `{channel}` is open until {until}")]
    CircuitOpen {
        /// The channel (topic).
        channel: String,
        /// When probing starts again.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// The bus has been shut down and takes no more work.
    #[error("the bus is shut down")]
    Closed,
    /// Code running a delivery outside the handler's guard (a user layer, an inbox store)
    /// panicked; the delivery is left for redelivery and the consumer goes on.
    #[error("delivery pipeline panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
}

impl Error {
    /// Builds an [`Error::Config`] naming `setting`.
    pub fn config(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// Builds an [`Error::Backend`].
    pub fn backend(
        backend: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            operation,
            source: source.into(),
        }
    }
}

/// Why an incoming message could not be turned into a typed envelope.
///
/// A decode error is permanent: the message goes to the dead-letter queue with this reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not valid UTF-8.
    #[error("payload is not valid utf-8 at byte {valid_up_to}")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The bytes are not a JSON envelope, or a required envelope field is missing or has the
    /// wrong type.
    #[error("malformed envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The envelope's `type` is not one this handler accepts.
    #[error("unexpected event type `{found}`, expected one of {expected:?}")]
    UnexpectedType {
        /// The types the handler accepts.
        expected: &'static [&'static str],
        /// The type in the envelope.
        found: String,
    },
    /// The envelope's `version` is newer than the code knows.
    /// An envelope of a newer version than this build knows, refused by a subscriber with
    /// [`NewerVersions::DeadLetter`](crate::NewerVersions::DeadLetter).
    #[error("unsupported version {found} of `{event_type}`, this build knows up to {known}")]
    UnsupportedVersion {
        /// The event type.
        event_type: String,
        /// The version in the envelope.
        found: u32,
        /// The version the code was built with.
        known: u32,
    },
    /// An envelope of a newer version than this build knows whose data does not decode as the
    /// known version (a change that is not additive).
    #[error("version {found} of `{event_type}` does not decode as version {known}: {reason}")]
    NewerVersion {
        /// The event type.
        event_type: String,
        /// The version received.
        found: u32,
        /// The newest version this build knows.
        known: u32,
        /// Why it did not decode (without field values).
        reason: String,
    },
    /// An upcaster could not read the older payload it was given.
    #[error("upcasting `{event_type}` from version {from} failed: {reason}")]
    Upcast {
        /// The event type.
        event_type: String,
        /// The version the failing step reads.
        from: u32,
        /// Why (without field values).
        reason: String,
    },
    /// The `data` field does not match the event's schema.
    #[error("invalid data for `{event_type}`: {}", without_values(source))]
    Data {
        /// The event type.
        event_type: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The message is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// The deserializer's message without the offending value: `invalid type: string "4111 1111",
/// expected u32` becomes `invalid type: string, expected u32`. Dead-letter metadata and logs
/// carry the message; the value may be personal data. Field and variant names of the schema
/// (`missing field `order_id``, the `expected` part) stay.
pub fn without_values(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    for marker in ["invalid type: ", "invalid value: ", "unknown variant "] {
        if let Some(at) = rest.find(marker) {
            let start = at + marker.len();
            out.push_str(rest[..start].trim_end());
            let end = rest[start..]
                .find(", expected")
                .map_or(rest.len(), |e| start + e);
            let kept = drop_quoted(&rest[start..end]);
            if !kept.trim().is_empty() {
                out.push(' ');
                out.push_str(kept.trim());
            }
            rest = &rest[end..];
            break;
        }
    }
    out.push_str(rest);
    out
}

/// `segment` without its `"..."` and `` `...` `` parts.
fn drop_quoted(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// An error and its sources, `a: b: c` (a source whose text already ends the chain, as when a
/// wrapper repeats it, is not repeated).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod value_redaction_tests {
    use super::without_values;

    fn error_of<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        without_values(&serde_json::from_str::<T>(json).expect_err("must fail"))
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Card {
        number: u64,
        kind: Kind,
    }

    #[derive(Debug, serde::Deserialize)]
    enum Kind {
        Visa,
    }

    #[test]
    fn values_are_dropped_and_names_kept() {
        let e = error_of::<Card>(r#"{"number":"4111 1111 \"x\"","kind":"Visa"}"#);
        assert!(e.starts_with("invalid type: string, expected u64"), "{e}");
        assert!(!e.contains("4111"), "{e}");
        let e = error_of::<Card>(r#"{"number":1,"kind":"Amex-secret"}"#);
        assert!(e.starts_with("unknown variant, expected `Visa`"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = error_of::<Card>(r#"{"number":1}"#);
        assert!(e.contains("missing field `kind`"), "{e}");
    }
}
