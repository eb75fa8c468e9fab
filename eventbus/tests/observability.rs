//! Metrics, trace context, tracing spans and publish circuit breakers, on the in-memory bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::memory::Faults;
use eventbus::circuit::{CircuitConfig, CircuitState};
use eventbus::observability::{TraceParent, TRACEPARENT};
use eventbus::testing::TestHarness;
use eventbus::{event, Context, Envelope, HandlerError, Subscription};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCreated {
    order_id: String,
}

#[event(name = "order.shipped", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderShipped {
    order_id: String,
}

fn created(id: &str) -> OrderCreated {
    OrderCreated {
        order_id: id.to_owned(),
    }
}

fn value_of(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let h = TestHarness::start(|bus| {
        bus.subscribe(
            Subscription::new(
                "order.created",
                |ctx: Context, env: Envelope<OrderCreated>| async move {
                    if env.data.order_id == "bad" {
                        return Err(HandlerError::permanent("bad order"));
                    }
                    if env.data.order_id == "flaky" && ctx.attempt() == 1 {
                        return Err(HandlerError::transient("flaky"));
                    }
                    Ok(())
                },
            )
            .group("billing"),
        )
    })
    .await
    .unwrap();
    for id in ["a", "b", "flaky", "bad"] {
        h.publish(created(id)).await.unwrap();
    }
    h.settle().await.unwrap();
    let text = h.bus().metrics().encode();
    let labels = r#"{service="test-harness",topic="order.created",group="billing""#;
    assert_eq!(
        value_of(
            &text,
            r#"event_published_total{service="test-harness",topic="order.created"}"#
        ),
        4.0
    );
    assert_eq!(
        value_of(
            &text,
            &format!(r#"event_handled_total{labels},outcome="handled"}}"#)
        ),
        3.0
    );
    assert_eq!(
        value_of(
            &text,
            &format!(r#"event_handled_total{labels},outcome="dead_lettered"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value_of(&text, &format!("event_dead_lettered_total{labels}}}")),
        1.0
    );
    assert_eq!(
        value_of(&text, &format!("event_retried_total{labels}}}")),
        1.0
    );
    assert_eq!(
        value_of(&text, &format!("event_failed_total{labels}}}")),
        2.0
    );
    assert_eq!(
        value_of(
            &text,
            &format!("event_handler_duration_seconds_count{labels}}}")
        ),
        5.0
    );
    assert!(
        text.contains(
            r#"event_consumer_lag_seconds{service="test-harness",topic="order.created"}"#
        ),
        "{text}"
    );
    let m = h.bus().metrics();
    m.outbox(42, Some(Duration::from_secs(3)));
    let text = m.encode();
    assert_eq!(
        value_of(&text, r#"event_outbox_backlog{service="test-harness"}"#),
        42.0
    );
    assert_eq!(
        value_of(
            &text,
            r#"event_publish_lag_seconds{service="test-harness"}"#
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_across_a_publish_consume_hop() {
    let got: Arc<Mutex<Vec<Envelope<OrderShipped>>>> = Arc::default();
    let g = got.clone();
    let h = TestHarness::start(move |bus| {
        let g = g.clone();
        bus.subscribe(
            Subscription::new(
                "order.created",
                |ctx: Context, env: Envelope<OrderCreated>| async move {
                    ctx.publish(OrderShipped {
                        order_id: env.data.order_id,
                    })
                    .await?;
                    Ok(())
                },
            )
            .group("shipper"),
        )
        .subscribe(
            Subscription::new("order.shipped", move |env: Envelope<OrderShipped>| {
                g.lock().unwrap().push(env);
                async { Ok(()) }
            })
            .group("notifier"),
        )
    })
    .await
    .unwrap();
    let root =
        TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let envelope = Envelope::new(created("o-1")).with_header(TRACEPARENT, root.to_header());
    h.bus()
        .publisher()
        .publish_envelope(envelope)
        .await
        .unwrap();
    h.publish(created("o-2")).await.unwrap();
    h.settle().await.unwrap();
    let got = got.lock().unwrap();
    let by_order: HashMap<&str, TraceParent> = got
        .iter()
        .map(|e| {
            (
                e.data.order_id.as_str(),
                TraceParent::parse(&e.headers[TRACEPARENT]).expect("valid traceparent"),
            )
        })
        .collect();
    assert_eq!(
        by_order["o-1"].trace_id, root.trace_id,
        "same trace across the hop"
    );
    assert_ne!(by_order["o-1"].parent_id, root.parent_id, "a child span");
    assert_eq!(
        by_order["o-2"].trace_id.len(),
        32,
        "a root trace was started for o-2"
    );
    assert_ne!(by_order["o-2"].trace_id, root.trace_id);
}

/// Records the fields of every `eventbus.*` span.
type Recorded = Vec<(String, HashMap<String, String>)>;
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Recorded>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: LayerContext<'_, S>,
    ) {
        let name = attrs.metadata().name();
        if name.starts_with("eventbus.") {
            let mut fields = HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push((name.to_owned(), fields));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_handle_spans_carry_the_event_fields() {
    // Handlers run on worker threads: the collector must be the global one.
    let spans = Spans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
        .expect("no other global subscriber in this test binary");
    let h = TestHarness::start(|bus| {
        bus.subscribe(
            Subscription::new("order.created", |_: Envelope<OrderCreated>| async {
                Ok(())
            })
            .group("g1"),
        )
    })
    .await
    .unwrap();
    let envelope = Envelope::new(created("o-7"))
        .with_tenant("acme")
        .with_correlation_id("flow-7");
    let id = envelope.id;
    h.bus()
        .publisher()
        .publish_envelope(envelope)
        .await
        .unwrap();
    h.settle().await.unwrap();
    let spans: Vec<_> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, f)| f.get("event.id") == Some(&id.to_string()))
        .cloned()
        .collect();
    let publish = &spans
        .iter()
        .find(|(n, _)| n == "eventbus.publish")
        .expect("publish span")
        .1;
    assert_eq!(publish["event.id"], id.to_string());
    assert_eq!(publish["event.type"], "order.created");
    assert_eq!(publish["tenant"], "acme");
    // OpenTelemetry messaging semantic conventions.
    assert_eq!(publish["otel.kind"], "producer");
    assert_eq!(publish["otel.name"], "send order.created");
    assert_eq!(publish["messaging.system"], "memory");
    assert_eq!(publish["messaging.operation.type"], "send");
    assert_eq!(publish["messaging.destination.name"], "order.created");
    assert_eq!(publish["messaging.message.id"], id.to_string());
    let handle = &spans
        .iter()
        .find(|(n, _)| n == "eventbus.handle")
        .expect("handle span")
        .1;
    assert_eq!(handle["event.id"], id.to_string());
    assert_eq!(handle["event.type"], "order.created");
    assert_eq!(handle["topic"], "order.created");
    assert_eq!(handle["group"], "g1");
    assert_eq!(handle["attempt"], "1");
    assert_eq!(handle["correlation_id"], "flow-7");
    assert_eq!(handle["tenant"], "acme");
    assert_eq!(handle["trace_id"].len(), 32);
    assert_eq!(handle["otel.kind"], "consumer");
    assert_eq!(handle["otel.name"], "process order.created");
    assert_eq!(handle["messaging.system"], "memory");
    assert_eq!(handle["messaging.operation.type"], "process");
    assert_eq!(handle["messaging.destination.name"], "order.created");
    assert_eq!(handle["messaging.consumer.group.name"], "g1");
    assert_eq!(handle["messaging.message.id"], id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_circuit_opens_fails_fast_half_opens_and_closes() {
    let h =
        TestHarness::start(|bus| bus.channel_circuit("order.created", CircuitConfig::critical()))
            .await
            .unwrap();
    h.inject(Faults {
        fail_publishes: 3,
        ..Faults::default()
    });
    for _ in 0..3 {
        let err = h.publish(created("x")).await.unwrap_err();
        assert!(matches!(err, eventbus::Error::Backend { .. }), "{err}");
    }
    let err = h.publish(created("x")).await.unwrap_err();
    assert!(
        matches!(err, eventbus::Error::CircuitOpen { .. }),
        "fails fast: {err}"
    );
    assert_eq!(
        h.backend().pending_faults(),
        Faults::default(),
        "the backend was not called"
    );
    let text = h.bus().metrics().encode();
    assert_eq!(
        value_of(
            &text,
            r#"event_circuit_state{service="test-harness",channel="order.created"}"#
        ),
        2.0
    );
    // Other channels are unaffected.
    h.publish(OrderShipped {
        order_id: "y".into(),
    })
    .await
    .unwrap();
    h.clock().advance(Duration::from_secs(15));
    for _ in 0..3 {
        h.publish(created("probe")).await.unwrap();
    }
    let circuits = h.bus().publisher().circuits().cloned().unwrap();
    let state = circuits
        .states()
        .into_iter()
        .find(|(c, _)| c == "order.created")
        .unwrap()
        .1;
    assert_eq!(state, CircuitState::Closed { failures: 0 });
}

/// The consumer lag gauge moves while nobody scrapes: the bus reads it from the backend on its
/// own interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_refreshed_without_a_scrape() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let bus = eventbus::Bus::builder()
        .backend(eventbus::backend::memory::MemoryBackend::new())
        .lag_interval(Duration::from_millis(20))
        .subscribe(
            Subscription::new("order.created", move |_env: Envelope<OrderCreated>| {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.map(|p| p.forget()).ok();
                    Ok(())
                }
            })
            .group("slow"),
        )
        .start()
        .await
        .expect("bus");
    // More than the consumer prefetches (16): the rest waits in the backend, not delivered.
    for i in 0..40 {
        bus.publish(created(&format!("o-{i}")))
            .await
            .expect("publish");
    }
    let series =
        r#"event_consumer_lag_messages{service="eventbus",group="slow",stream="order.created"}"#;
    let lag = |text: &str| {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = bus.metrics().encode();
        if lag(&text).is_some_and(|n| n >= 20.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a lag of 20 undelivered events never showed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.add_permits(40);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = bus.metrics().encode();
        if lag(&text) == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lag never went back to 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bus.shutdown(Duration::from_secs(5)).await;
}

/// An application's own registry exposes the bus's series beside its own, with the same
/// values as the bus's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_register_into_the_applications_registry() {
    use eventbus::observability::prometheus_client::{
        self, metrics::counter::Counter, registry::Registry,
    };
    let mut registry = Registry::default();
    let requests: Counter = Counter::default();
    registry.register("http_requests", "Requests served", requests.clone());
    let h = TestHarness::start(|bus| bus).await.unwrap();
    h.bus().metrics().register(&mut registry);
    requests.inc();
    h.bus().publish(created("o-1")).await.unwrap();
    h.bus().publish(created("o-2")).await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("http_requests_total 1"), "{text}");
    let ours = r#"event_published_total{service="test-harness",topic="order.created"}"#;
    assert_eq!(value_of(&text, ours), 2.0, "{text}");
    assert_eq!(value_of(&h.bus().metrics().encode(), ours), 2.0);
}
