//! The wire format next to the envelope: the names of the transport headers and of
//! dead-letter topics, and the encoding of an envelope into the [`Message`] a backend carries.
//! The publisher and the outbox both encode through [`encode`], so what the broker sees is the
//! same whichever path an event takes.
use chrono::{DateTime, Utc};

use crate::backend::{Message, MessageHeaders};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;
use crate::observability::TraceParent;

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
/// id (its own id when none), the time (`now` when unset), a `traceparent` (with feature
/// `opentelemetry` from the current span's context, else a new trace); the key is the event's
/// partition key, the topic its `TOPIC`, the tenant a transport header.
pub(crate) fn encode<E: Event>(
    mut envelope: Envelope<E>,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Message, Error> {
    if envelope.source.is_empty() {
        envelope.source = source.to_owned();
    }
    if envelope.correlation_id.is_none() {
        envelope.correlation_id = Some(envelope.id.to_string());
    }
    if envelope.time == DateTime::<Utc>::default() {
        envelope.time = now;
    }
    #[cfg(feature = "opentelemetry")]
    crate::observability::otel::inject_current(&mut envelope.headers);
    if !envelope.headers.contains_key(TRACEPARENT) {
        envelope
            .headers
            .insert(TRACEPARENT.to_owned(), TraceParent::new_root_header());
    }
    let key = envelope.data.partition_key();
    let payload = envelope.encode()?;
    let mut headers = MessageHeaders::new();
    if let Some(tenant) = &envelope.tenant_id {
        headers.insert(TENANT_HEADER.to_owned(), tenant.clone());
    }
    Ok(Message {
        topic: E::TOPIC.to_owned(),
        key,
        event_type: envelope.event_type,
        headers,
        payload: payload.into(),
    })
}
