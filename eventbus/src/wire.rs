//! The wire format next to the envelope: the [`Message`] a backend carries with its transport
//! headers and retry state, the names of those headers and of dead-letter topics, and the
//! encoding of an envelope into a message.
//! The publisher and the outbox both encode through [`encode`], so what the broker sees is the
//! same whichever path an event takes.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;
use crate::observability::TraceParent;

/// Transport-level headers (next to the envelope, not inside it): attempt counts and
/// dead-letter metadata.
pub type MessageHeaders = BTreeMap<String, String>;

/// A message as a backend stores it: the encoded envelope plus routing data.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Destination topic (stream); shared, so a copy of the message does not copy it.
    pub topic: Arc<str>,
    /// Partition key: messages with the same key are delivered in order.
    pub key: Option<Arc<str>>,
    /// The event's type, duplicated from the envelope so routing does not parse the payload.
    pub event_type: Arc<str>,
    /// Transport headers.
    pub headers: MessageHeaders,
    /// The envelope's JSON bytes.
    pub payload: Arc<[u8]>,
}

impl Message {
    /// The attempt count the message carries (0 when never attempted).
    pub fn attempts_header(&self) -> u32 {
        self.headers
            .get(ATTEMPT_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The retry state the message carries.
    pub fn retry_state(&self) -> RetryState {
        RetryState {
            attempts: self.attempts_header(),
            round: self
                .headers
                .get(ROUND_HEADER)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            first_failure: self
                .headers
                .get(FIRST_FAILURE_HEADER)
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        }
    }

    /// Drops every [internal header](is_internal_header): backends call it on records read
    /// from a live topic, where only producers (never the framework's retry channels) write.
    /// Returns how many were dropped; a non-zero count is logged.
    pub fn strip_internal_headers(&mut self) -> usize {
        let before = self.headers.len();
        self.headers.retain(|name, _| !is_internal_header(name));
        let dropped = before - self.headers.len();
        if dropped > 0 {
            tracing::warn!(
                topic = %self.topic,
                event_type = %self.event_type,
                dropped,
                "ignored internal eventbus headers on a live topic (forged or copied by another producer)"
            );
        }
        dropped
    }

    /// Writes a retry state into the headers.
    pub fn set_retry_state(&mut self, state: &RetryState) {
        self.headers
            .insert(ATTEMPT_HEADER.to_owned(), state.attempts.to_string());
        self.headers
            .insert(ROUND_HEADER.to_owned(), state.round.to_string());
        if let Some(first) = state.first_failure {
            self.headers
                .insert(FIRST_FAILURE_HEADER.to_owned(), first.to_rfc3339());
        }
    }
}

/// How far a delivery got through its retry policy; carried across redeliveries in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryState {
    /// Attempts made so far.
    pub attempts: u32,
    /// Delayed-retry rounds done so far.
    pub round: u32,
    /// When the first attempt failed.
    pub first_failure: Option<chrono::DateTime<chrono::Utc>>,
}

/// `bytes` as shared text, copied once; invalid UTF-8 is replaced (U+FFFD), as a broker's
/// bytes written by a foreign producer may hold anything.
#[cfg(any(feature = "kafka", feature = "redis"))]
pub(crate) fn shared_text(bytes: &[u8]) -> Arc<str> {
    Arc::from(String::from_utf8_lossy(bytes).as_ref())
}

/// `bytes` as text, invalid UTF-8 replaced (U+FFFD).
#[cfg(any(feature = "kafka", feature = "redis"))]
pub(crate) fn owned_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Header carrying how many attempts a message has had before this delivery.
pub const ATTEMPT_HEADER: &str = "eventbus-attempt";
/// Header carrying how many delayed-retry rounds a message has been through.
pub const ROUND_HEADER: &str = "eventbus-round";
/// Header carrying when the message first failed (RFC 3339).
pub const FIRST_FAILURE_HEADER: &str = "eventbus-first-failure";
/// Header carrying the envelope's tenant, for backends that route per tenant.
pub const TENANT_HEADER: &str = "eventbus-tenant";

/// Whether `name` is a header only the framework itself writes, on its own channels (retry
/// tiers, retry streams, deliveries to one group): attempt counts, retry rounds and due times,
/// origin topics, replay and redrive markers. Every `eventbus-` header but
/// [`TENANT_HEADER`] (routing data the publisher copies from the envelope).
///
/// Such a header on a live topic was forged (or copied by a foreign producer): backends drop
/// it with [`Message::strip_internal_headers`] so it can neither dead-letter an event early,
/// hide it from a group, nor unpark a key.
pub fn is_internal_header(name: &str) -> bool {
    name.starts_with("eventbus-") && name != TENANT_HEADER
}

/// Header set on replayed deliveries.
pub const REPLAY_HEADER: &str = "eventbus-replay";

/// Header marking a message re-published from the dead-letter queue.
pub const REDRIVE_HEADER: &str = "eventbus-redrive";

/// The envelope header holding the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";

/// Suffix of dead-letter topics.
pub const DLQ_SUFFIX: &str = ".dlq";

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// Whether `topic` is a dead-letter topic; consumers never receive from these by pattern.
pub fn is_dlq_topic(topic: &str) -> bool {
    topic.ends_with(DLQ_SUFFIX)
}

/// Dead-letter header: the topic the message failed on.
pub(crate) const DLQ_ORIGINAL_TOPIC: &str = "dlq-original-topic";
/// Dead-letter header: the consumer group that failed it.
pub(crate) const DLQ_GROUP: &str = "dlq-group";
/// Dead-letter header: `transient` or `permanent`.
pub(crate) const DLQ_ERROR_KIND: &str = "dlq-error-kind";
/// Dead-letter header: the last error's text.
pub(crate) const DLQ_ERROR: &str = "dlq-error";
/// Dead-letter header: attempts made.
pub(crate) const DLQ_ATTEMPTS: &str = "dlq-attempts";
/// Dead-letter header: when it first failed.
pub(crate) const DLQ_FIRST_FAILURE: &str = "dlq-first-failure";
/// Dead-letter header: when it last failed.
pub(crate) const DLQ_LAST_FAILURE: &str = "dlq-last-failure";
/// Header of a metadata-only dead letter: the payload's size and why it could not be stored.
pub const PAYLOAD_OMITTED: &str = "dlq-payload-omitted";

/// Fills an envelope's missing metadata and encodes it: `source` when empty, the correlation
/// id (its own id when none), the time (read from `now` only when unset), a `traceparent`
/// (with feature `opentelemetry` from the current span's context, else a new trace); the key
/// is the event's partition key, the topic its `TOPIC`, the tenant a transport header.
pub(crate) fn encode<E: Event>(
    mut envelope: Envelope<E>,
    source: &str,
    now: impl FnOnce() -> DateTime<Utc>,
) -> Result<Message, Error> {
    if envelope.source.is_empty() {
        envelope.source = source.to_owned();
    }
    if envelope.correlation_id.is_none() {
        // Written into a buffer: `to_string` goes through the formatter, three times slower.
        let id = envelope
            .id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned();
        envelope.correlation_id = Some(id);
    }
    if envelope.time == DateTime::<Utc>::default() {
        envelope.time = now();
    }
    #[cfg(feature = "opentelemetry")]
    crate::observability::otel::inject_current(&mut envelope.headers);
    if !envelope.headers.contains_key(TRACEPARENT) {
        envelope
            .headers
            .insert(TRACEPARENT.to_owned(), TraceParent::new_root_header());
    }
    let key = envelope.data.partition_key();
    let payload = encode_payload(&envelope)?;
    let mut headers = MessageHeaders::new();
    if let Some(tenant) = &envelope.tenant_id {
        headers.insert(TENANT_HEADER.to_owned(), tenant.clone());
    }
    let (topic, event_type) = crate::shared_names::topic_and_type::<E>(&envelope.event_type);
    Ok(Message {
        topic,
        key: key.map(Arc::from),
        event_type,
        headers,
        payload,
    })
}

/// The largest encoding buffer a thread keeps for its next envelope; a larger one (after an
/// unusually large event) is freed.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    /// The buffer this thread's last envelope was encoded in, reused by the next: the payload
    /// is then one allocation of its exact size, copied from memory already in the cache.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The envelope's JSON wire form, as a message's payload.
fn encode_payload<E: Event>(envelope: &Envelope<E>) -> Result<Arc<[u8]>, Error> {
    let mut buffer = SCRATCH.take();
    buffer.clear();
    envelope.encode_into(&mut buffer)?;
    let payload = Arc::from(&buffer[..]);
    if buffer.capacity() <= SCRATCH_KEPT {
        SCRATCH.set(buffer);
    }
    Ok(payload)
}
