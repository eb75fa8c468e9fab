//! Catches handler panics and bounds handler time; both count as transient failures.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, Either};
use futures::FutureExt;
use tracing::Instrument;

use super::{DeliveryCx, Outcome, Stage};
use crate::clock::Clock;
use crate::handler::ErrorKind;
use crate::observability::{Metrics, TraceParent, TRACEPARENT};

/// Runs each handler call in a tracing span, turns a panic into a transient failure (the
/// consumer keeps running), and fails calls that exceed the timeout.
pub(crate) struct GuardLayer {
    timeout: Option<Duration>,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
    system: &'static str,
}

impl GuardLayer {
    /// A guard with an optional per-call timeout.
    pub(crate) fn new(timeout: Option<Duration>, clock: Arc<dyn Clock>) -> Self {
        GuardLayer {
            timeout,
            clock,
            metrics: None,
            system: "eventbus",
        }
    }

    /// The `messaging.system` its spans name (the backend: `kafka`, `redis`, `memory`).
    pub(crate) fn with_system(mut self, system: &'static str) -> Self {
        self.system = system;
        self
    }

    /// Records each call's duration and failures in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// An event id for a span field: empty when the envelope is not decoded.
struct EventId(Option<uuid::Uuid>);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => id.fmt(f),
            None => Ok(()),
        }
    }
}

impl GuardLayer {
    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let span = {
            let env = cx.envelope.as_ref();
            // Formatted only if a subscriber records the span.
            let id = EventId(env.map(|e| e.id));
            // OpenTelemetry messaging conventions beside our own fields: a consumer span
            // named `process {topic}`.
            tracing::info_span!(
                "eventbus.handle",
                otel.name = %format_args!("process {}", cx.message.topic),
                otel.kind = "consumer",
                messaging.system = self.system,
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.destination.name = %cx.message.topic,
                messaging.consumer.group.name = %cx.group,
                messaging.message.id = %id,
                event.id = %id,
                event.r#type = %cx.message.event_type,
                topic = %cx.message.topic,
                group = %cx.group,
                attempt = cx.attempt,
                correlation_id = %env.and_then(|e| e.correlation_id.as_deref()).unwrap_or(""),
                tenant = %env.and_then(|e| e.tenant_id.as_deref()).unwrap_or(""),
                trace_id = %env
                    .and_then(|e| e.headers.get(TRACEPARENT))
                    .and_then(|v| TraceParent::parse(v))
                    .map(|t| t.trace_id)
                    .unwrap_or_default(),
            )
        };
        #[cfg(feature = "opentelemetry")]
        crate::observability::otel::set_remote_parent(
            &span,
            cx.envelope
                .as_ref()
                .and_then(|e| e.headers.get(TRACEPARENT))
                .map(String::as_str),
        );
        let started = std::time::Instant::now();
        let attempt = cx.attempt;
        let first_failure = cx.first_failure;
        let call = AssertUnwindSafe(next.run(&mut *cx))
            .catch_unwind()
            .instrument(span);
        let result = match self.timeout {
            None => Some(call.await),
            Some(limit) => match future::select(Box::pin(call), self.clock.sleep(limit)).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(_) => None,
            },
        };
        if let Some(metrics) = &self.metrics {
            let failed = !matches!(result, Some(Ok(Outcome::Handled)));
            cx.series(metrics).handler_call(started.elapsed(), failed);
        }
        let outcome = match result {
            Some(Ok(outcome)) => outcome,
            Some(Err(payload)) => {
                let now = self.clock.now();
                cx.attempt = attempt;
                cx.first_failure = first_failure.or(cx.first_failure);
                let message = format!("handler panicked: {}", panic_message(&*payload));
                Outcome::Failed(cx.failure(ErrorKind::Transient, message, now))
            }
            None => {
                let now = self.clock.now();
                let message = format!(
                    "handler timed out after {:?}",
                    self.timeout.unwrap_or_default()
                );
                Outcome::Failed(cx.failure(ErrorKind::Transient, message, now))
            }
        };
        // A failed, panicked or timed-out call may have taken the envelope's metadata into
        // the handler's envelope: the retry, the dead letter and the layers around get it back.
        if !matches!(outcome, Outcome::Handled) {
            cx.restore_lent_envelope();
        }
        outcome
    }
}
