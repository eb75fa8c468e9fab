//! OpenTelemetry bridge (feature `opentelemetry`): joins the envelope's W3C `traceparent` to
//! the OpenTelemetry traces that `tracing-opentelemetry` builds from `tracing` spans.
//!
//! - Publishing: when the current `tracing` span (or, failing that, OpenTelemetry's current
//!   context) has a valid span context, the envelope's `traceparent` is written from it, so the
//!   trace of the calling request continues into the event. An explicit `traceparent` already
//!   in the envelope headers wins.
//! - Handling: the handler span (`eventbus.handle`) takes the envelope's `traceparent` as its
//!   remote parent, so the exported handler span is a child of the publishing span, in the same
//!   trace.
//!
//! Both directions need a `tracing_opentelemetry::layer()` in the `tracing` subscriber; without
//! one, publishing falls back to a new root trace as without the feature, and handler spans keep
//! their local parent.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{TraceParent, TRACEPARENT};
use crate::envelope::Headers;

/// The OpenTelemetry span context a `traceparent` describes, marked remote; `None` when the
/// trace or parent span id is not valid hex or is all zeros.
pub fn span_context_from_traceparent(traceparent: &TraceParent) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(&traceparent.trace_id).ok()?;
    let span_id = SpanId::from_hex(&traceparent.parent_id).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(traceparent.flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Parses a `traceparent` header value into a remote OpenTelemetry span context; `None` when
/// the value is malformed.
pub fn span_context_from_header(value: &str) -> Option<SpanContext> {
    span_context_from_traceparent(&TraceParent::parse(value)?)
}

/// The `traceparent` naming `context` as the parent span; `None` when `context` is not valid.
pub fn traceparent_from_span_context(context: &SpanContext) -> Option<TraceParent> {
    context.is_valid().then(|| TraceParent {
        trace_id: context.trace_id().to_string(),
        parent_id: context.span_id().to_string(),
        flags: context.trace_flags().to_u8(),
    })
}

/// The `traceparent` of the current span: the current `tracing` span's OpenTelemetry context,
/// or else OpenTelemetry's own current context; `None` when neither has a valid span.
pub fn current_traceparent() -> Option<TraceParent> {
    let from_tracing = tracing::Span::current().context();
    traceparent_from_span_context(from_tracing.span().span_context()).or_else(|| {
        let current = opentelemetry::Context::current();
        traceparent_from_span_context(current.span().span_context())
    })
}

/// Publish hook: writes the current span's `traceparent` into `headers` unless they already
/// carry one.
pub(crate) fn inject_current(headers: &mut Headers) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    if let Some(traceparent) = current_traceparent() {
        headers.insert(TRACEPARENT.to_owned(), traceparent.to_header());
    }
}

/// Handler hook: makes the span described by the `traceparent` header value the remote parent
/// of `span`. Returns whether a parent was set: `false` for a missing or malformed header, a
/// span that is disabled or already started, or a subscriber without the OpenTelemetry layer.
pub(crate) fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) -> bool {
    let Some(remote) = traceparent.and_then(span_context_from_header) else {
        return false;
    };
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_becomes_a_remote_sampled_span_context() {
        let context = span_context_from_header(HEADER).expect("valid traceparent");
        assert_eq!(
            context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            context.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(context.is_sampled());
        assert!(context.is_remote());
        let back = traceparent_from_span_context(&context).expect("valid span context");
        assert_eq!(back.to_header(), HEADER);
    }

    #[test]
    fn unsampled_flags_are_kept() {
        let context =
            span_context_from_header("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid traceparent");
        assert!(!context.is_sampled());
        assert_eq!(traceparent_from_span_context(&context).unwrap().flags, 0);
    }

    #[test]
    fn invalid_headers_and_ids_give_no_span_context() {
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(span_context_from_header(bad), None, "{bad:?}");
        }
        // Hand-built values skip `TraceParent::parse`; the conversion still rejects them.
        let zeros = TraceParent {
            trace_id: "0".repeat(32),
            parent_id: "00f067aa0ba902b7".to_owned(),
            flags: 1,
        };
        assert_eq!(span_context_from_traceparent(&zeros), None);
        let not_hex = TraceParent {
            trace_id: "not hex".to_owned(),
            parent_id: "00f067aa0ba902b7".to_owned(),
            flags: 1,
        };
        assert_eq!(span_context_from_traceparent(&not_hex), None);
        assert_eq!(
            traceparent_from_span_context(&SpanContext::empty_context()),
            None
        );
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_injected_or_parented() {
        let mut headers = Headers::new();
        inject_current(&mut headers);
        assert!(!headers.contains_key(TRACEPARENT));
        let span = tracing::info_span!("no-layer");
        assert!(!set_remote_parent(&span, Some(HEADER)));
        assert!(!set_remote_parent(&span, None));
    }

    #[test]
    fn an_explicit_traceparent_is_kept() {
        let mut headers = Headers::new();
        headers.insert(TRACEPARENT.to_owned(), HEADER.to_owned());
        inject_current(&mut headers);
        assert_eq!(headers[TRACEPARENT], HEADER);
    }
}
