//! The wire format's encode side: an envelope into the [`Message`] a backend carries. The
//! publisher and the outbox both encode through [`encode`], so what the broker sees is the
//! same whichever path an event takes.

use chrono::{DateTime, Utc};

use crate::backend::{Message, MessageHeaders, TENANT_HEADER};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;
use crate::observability::{TraceParent, TRACEPARENT};

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
