//! The handler's [`Context`]: what the handler may want to know about the delivery, and a
//! publisher for follow-on events that keeps the causal chain.

use std::sync::Arc;

use uuid::Uuid;

use crate::envelope::{Envelope, Headers};
use crate::error::Error;
use crate::event::Event;
use crate::extensions::Extensions;
use crate::observability::{TraceParent, TRACEPARENT};
use crate::publisher::Publisher;

pub use crate::wire::REPLAY_HEADER;

/// Facts about the delivery being handled. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    event_id: Uuid,
    event_type: String,
    topic: String,
    group: String,
    attempt: u32,
    correlation_id: Option<String>,
    tenant_id: Option<String>,
    user_id: Option<String>,
    headers: Headers,
    replay: bool,
    publisher: Publisher,
    extensions: Arc<Extensions>,
}

/// What a delivery's [`Context`] takes besides the envelope, held until the handler asks for
/// one.
pub(crate) struct ContextParts<'a> {
    pub(crate) topic: &'a str,
    pub(crate) group: &'a str,
    pub(crate) attempt: u32,
    pub(crate) replay: bool,
    pub(crate) publisher: &'a Publisher,
    pub(crate) extensions: &'a Arc<Extensions>,
}

impl ContextParts<'_> {
    /// The context of the delivery of `envelope`.
    pub(crate) fn build<T>(&self, envelope: &Envelope<T>) -> Context {
        Context {
            inner: Arc::new(ContextInner {
                event_id: envelope.id,
                event_type: envelope.event_type.clone(),
                topic: self.topic.to_owned(),
                group: self.group.to_owned(),
                attempt: self.attempt,
                correlation_id: envelope.correlation_id.clone(),
                tenant_id: envelope.tenant_id.clone(),
                user_id: envelope.user_id.clone(),
                headers: envelope.headers.clone(),
                replay: self.replay,
                publisher: self.publisher.clone(),
                extensions: self.extensions.clone(),
            }),
        }
    }
}

impl Context {
    /// Id of the event being handled.
    pub fn event_id(&self) -> Uuid {
        self.inner.event_id
    }

    /// Type of the event being handled.
    pub fn event_type(&self) -> &str {
        &self.inner.event_type
    }

    /// Topic it was delivered from.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Consumer group handling it.
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// Attempt number, 1 on the first try.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Correlation id of the flow.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.correlation_id.as_deref()
    }

    /// Tenant of the event.
    pub fn tenant_id(&self) -> Option<&str> {
        self.inner.tenant_id.as_deref()
    }

    /// User of the event.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }

    /// Envelope headers.
    pub fn headers(&self) -> &Headers {
        &self.inner.headers
    }

    /// Whether this delivery is a replay of an already handled event.
    pub fn is_replay(&self) -> bool {
        self.inner.replay
    }

    /// A shared value registered with [`BusBuilder::extension`](crate::BusBuilder::extension).
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.extensions.get::<T>()
    }

    /// The bus's publisher, without the causal chain; prefer [`Context::publish`].
    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    /// Publishes a follow-on event: `causation_id` is the handled event's id, and the
    /// correlation id, tenant and user are carried over.
    pub async fn publish<E: Event>(&self, event: E) -> Result<Uuid, Error> {
        self.publish_envelope(Envelope::new(event)).await
    }

    /// Publishes a follow-on envelope, filling the causal metadata it leaves empty.
    pub async fn publish_envelope<E: Event>(&self, envelope: Envelope<E>) -> Result<Uuid, Error> {
        self.inner
            .publisher
            .publish_envelope(self.follow_on(envelope))
            .await
    }

    /// Fills the causal metadata of a follow-on envelope.
    pub fn follow_on<T>(&self, mut envelope: Envelope<T>) -> Envelope<T> {
        let inner = &self.inner;
        envelope.causation_id = Some(inner.event_id.to_string());
        if envelope.correlation_id.is_none() {
            envelope.correlation_id = inner.correlation_id.clone();
        }
        if envelope.tenant_id.is_none() {
            envelope.tenant_id = inner.tenant_id.clone();
        }
        if envelope.user_id.is_none() {
            envelope.user_id = inner.user_id.clone();
        }
        // With OpenTelemetry, the handler's exported span is the follow-on's parent.
        #[cfg(feature = "opentelemetry")]
        crate::observability::otel::inject_current(&mut envelope.headers);
        if let Some(parent) = inner
            .headers
            .get(TRACEPARENT)
            .and_then(|v| TraceParent::parse(v))
        {
            envelope
                .headers
                .entry(TRACEPARENT.to_owned())
                .or_insert_with(|| parent.child().to_header());
        }
        envelope
    }
}
