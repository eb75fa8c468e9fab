//! The OpenTelemetry bridge (feature `opentelemetry`) on the in-memory bus: a publish inside a
//! traced request continues that trace into the envelope's `traceparent`, and the handler span
//! is exported as a child of the publishing span in the same trace.

use std::sync::{Arc, Mutex};

use eventbus::observability::{TraceParent, TRACEPARENT};
use eventbus::testing::TestHarness;
use eventbus::{event, Context, Envelope, Subscription};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[event(name = "order.placed", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderPlaced {
    order_id: String,
}

/// Published by the `order.placed` handler as a follow-on when the order id is `FOLLOW_ON`.
#[event(name = "order.shipped", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderShipped {
    order_id: String,
}

const FOLLOW_ON: &str = "o-follow-on";

fn placed(id: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: id.to_owned(),
    }
}

/// Runs `publish` on a current-thread tokio runtime under a `tracing` subscriber that exports
/// to OpenTelemetry's in-memory exporter, with handlers recording the `traceparent` they
/// received. Returns the headers received by the `order.placed` handler, those received by the
/// `order.shipped` handler (follow-ons), and the exported spans.
///
/// The subscriber is this thread's default only, and the runtime runs every task on this
/// thread, so the bus's tasks are traced without touching other tests.
fn traced_run<F>(
    publish: impl FnOnce(Arc<TestHarness>) -> F,
) -> (Vec<String>, Vec<String>, Vec<SpanData>)
where
    F: std::future::Future<Output = ()>,
{
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("eventbus-test")));
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let shipped: Arc<Mutex<Vec<String>>> = Arc::default();
    let (seen, seen_shipped) = (received.clone(), shipped.clone());
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let h = TestHarness::start(move |bus| {
                let (seen, seen_shipped) = (seen.clone(), seen_shipped.clone());
                bus.subscribe(
                    Subscription::new(
                        "order.placed",
                        move |ctx: Context, env: Envelope<OrderPlaced>| {
                            let header = env.headers.get(TRACEPARENT).cloned().unwrap_or_default();
                            seen.lock().unwrap().push(header);
                            async move {
                                if env.data.order_id == FOLLOW_ON {
                                    ctx.publish(OrderShipped {
                                        order_id: env.data.order_id,
                                    })
                                    .await?;
                                }
                                Ok(())
                            }
                        },
                    )
                    .group("fulfilment"),
                )
                .subscribe(
                    Subscription::new("order.shipped", move |env: Envelope<OrderShipped>| {
                        let header = env.headers.get(TRACEPARENT).cloned().unwrap_or_default();
                        seen_shipped.lock().unwrap().push(header);
                        async { Ok(()) }
                    })
                    .group("notifications"),
                )
            })
            .await
            .expect("bus starts");
            let h = Arc::new(h);
            publish(h.clone()).await;
            h.settle().await.expect("every delivery settles");
            h.bus().shutdown(std::time::Duration::from_secs(5)).await;
        });
    });
    provider.force_flush().expect("flush the tracer provider");
    let spans = exporter.get_finished_spans().expect("exported spans");
    let received = received.lock().unwrap().clone();
    let shipped = shipped.lock().unwrap().clone();
    (received, shipped, spans)
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let mut found = spans.iter().filter(|s| s.name == name);
    let span = found.next().unwrap_or_else(|| {
        panic!(
            "no exported span {name:?} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });
    assert!(
        found.next().is_none(),
        "more than one exported span {name:?}"
    );
    span
}

#[test]
fn the_handler_span_continues_the_trace_of_the_publishing_request() {
    let (received, _, spans) = traced_run(|h| async move {
        async { h.publish(placed("o-1")).await.expect("publish") }
            .instrument(tracing::info_span!("http.request"))
            .await;
    });

    assert_eq!(received.len(), 1, "the handler ran once: {received:?}");
    let traceparent =
        TraceParent::parse(&received[0]).expect("a valid traceparent in the envelope");

    let request = one(&spans, "http.request");
    // Spans are named by the OpenTelemetry messaging conventions: `send {topic}`,
    // `process {topic}`, kinds producer and consumer.
    let publish = one(&spans, "send order.placed");
    let handle = one(&spans, "process order.placed");
    assert_eq!(publish.span_kind, opentelemetry::trace::SpanKind::Producer);
    assert_eq!(handle.span_kind, opentelemetry::trace::SpanKind::Consumer);
    let trace_id = request.span_context.trace_id();
    assert_ne!(trace_id, TraceId::INVALID);

    // user span -> publish: the publish span is a local child of the request span.
    assert_eq!(
        publish.span_context.trace_id(),
        trace_id,
        "publish joins the request's trace"
    );
    assert_eq!(publish.parent_span_id, request.span_context.span_id());

    // publish -> envelope: the traceparent names the publish span in the request's trace.
    assert_eq!(
        traceparent.trace_id,
        trace_id.to_string(),
        "the envelope carries the request's trace"
    );
    assert_eq!(
        traceparent.parent_id,
        publish.span_context.span_id().to_string()
    );

    // envelope -> handler: the handler span's remote parent is the span in the traceparent.
    assert_eq!(
        handle.span_context.trace_id(),
        trace_id,
        "the handler joins the request's trace"
    );
    let parent = SpanId::from_hex(&traceparent.parent_id).expect("hex span id");
    assert_eq!(
        handle.parent_span_id, parent,
        "the handler's parent is the envelope's span"
    );
    assert!(
        handle.parent_span_is_remote,
        "the handler's parent came over the wire"
    );
}

#[test]
fn an_explicit_traceparent_wins_over_the_current_span() {
    const EXPLICIT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (received, _, spans) = traced_run(|h| async move {
        let envelope = Envelope::new(placed("o-2")).with_header(TRACEPARENT, EXPLICIT);
        async {
            h.bus()
                .publisher()
                .publish_envelope(envelope)
                .await
                .expect("publish")
        }
        .instrument(tracing::info_span!("http.request"))
        .await;
    });

    assert_eq!(
        received,
        vec![EXPLICIT.to_owned()],
        "the explicit traceparent is delivered as given"
    );
    let request = one(&spans, "http.request");
    let handle = one(&spans, "process order.placed");
    let explicit = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex trace id");
    assert_ne!(request.span_context.trace_id(), explicit);
    assert_eq!(
        handle.span_context.trace_id(),
        explicit,
        "the handler joins the explicit trace"
    );
    assert_eq!(
        handle.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").expect("hex span id")
    );
}

#[test]
fn a_follow_on_event_names_the_handler_span_as_its_parent() {
    let (received, shipped, spans) = traced_run(|h| async move {
        async { h.publish(placed(FOLLOW_ON)).await.expect("publish") }
            .instrument(tracing::info_span!("http.request"))
            .await;
    });
    assert_eq!(
        received.len(),
        1,
        "the order.placed handler ran once: {received:?}"
    );
    assert_eq!(
        shipped.len(),
        1,
        "the follow-on was handled once: {shipped:?}"
    );
    let follow_on = TraceParent::parse(&shipped[0]).expect("a valid traceparent on the follow-on");
    let request = one(&spans, "http.request");
    let first_handler = spans
        .iter()
        .find(|s| {
            s.name == "process order.placed"
                && s.parent_span_id.to_string()
                    == TraceParent::parse(&received[0])
                        .expect("traceparent")
                        .parent_id
        })
        .expect("the order.placed handler span");
    assert_eq!(
        follow_on.trace_id,
        request.span_context.trace_id().to_string(),
        "the follow-on stays in the request's trace"
    );
    assert_eq!(
        follow_on.parent_id,
        first_handler.span_context.span_id().to_string(),
        "the follow-on's parent is the span of the handler that published it"
    );
}
