//! The test harness as a user's handler tests use it: calling a `#[subscriber]` directly with a
//! `Context`, and reading what was published and handled, typed.

use std::time::{Duration, Instant};

use eventbus::testing::TestHarness;
use eventbus::{event, subscriber, Context, Envelope, Error, HandlerResult};
use serde::{Deserialize, Serialize};

#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct OrderCreated {
    order_id: String,
}

#[event(name = "order.shipped", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct OrderShipped {
    order_id: String,
}

#[subscriber("order.created", group = "shipping")]
async fn ship(ctx: Context, env: Envelope<OrderCreated>) -> HandlerResult {
    ctx.publish(OrderShipped {
        order_id: env.data.order_id.clone(),
    })
    .await?;
    Ok(())
}

#[subscriber("order.shipped", group = "mailer")]
async fn mail(env: Envelope<OrderShipped>) -> HandlerResult {
    if env.data.order_id.is_empty() {
        return Err(eventbus::HandlerError::permanent("no order"));
    }
    Ok(())
}

fn created(id: &str) -> OrderCreated {
    OrderCreated {
        order_id: id.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_callable_with_a_context_from_the_harness() {
    let h = TestHarness::start(|bus| bus).await.expect("harness");
    let envelope = Envelope::new(created("o-1")).with_correlation_id("flow-1");
    let ctx = h.context(&envelope, "shipping").expect("context");
    assert_eq!(ctx.group(), "shipping");
    assert_eq!(ctx.event_id(), envelope.id);
    ship::handle(ctx, envelope.clone()).await.expect("handled");
    let shipped = h.published::<OrderShipped>();
    assert_eq!(shipped.len(), 1, "the handler's follow-on");
    assert_eq!(shipped[0].data.order_id, "o-1");
    assert_eq!(shipped[0].causation_id, Some(envelope.id.to_string()));
    assert_eq!(shipped[0].correlation_id.as_deref(), Some("flow-1"));
    assert!(
        mail::handle(Envelope::new(OrderShipped {
            order_id: String::new()
        }))
        .await
        .is_err(),
        "the handler's own error comes back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_records_what_was_published_and_handled_typed() {
    let h = TestHarness::start(|bus| bus.subscribe(ship).subscribe(mail))
        .await
        .expect("harness");
    for id in ["o-1", "o-2", "o-3"] {
        h.publish(created(id)).await.expect("publish");
    }
    h.settle().await.expect("settle");
    let ids = |envs: Vec<Envelope<OrderCreated>>| -> Vec<String> {
        let mut ids: Vec<String> = envs.into_iter().map(|e| e.data.order_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(h.published::<OrderCreated>()), ["o-1", "o-2", "o-3"]);
    assert_eq!(ids(h.handled::<OrderCreated>()), ["o-1", "o-2", "o-3"]);
    assert_eq!(h.handled_by::<OrderCreated>("shipping").len(), 3);
    assert!(h.handled_by::<OrderCreated>("mailer").is_empty());
    assert_eq!(h.published::<OrderShipped>().len(), 3, "one follow-on each");
    assert_eq!(h.handled_by::<OrderShipped>("mailer").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_gives_up_after_its_timeout() {
    let h = TestHarness::start(|bus| {
        bus.subscribe(eventbus::Subscription::new(
            "order.created",
            |_: Envelope<OrderCreated>| async {
                futures::future::pending::<()>().await;
                Ok(())
            },
        ))
    })
    .await
    .expect("harness")
    .settle_timeout(Duration::from_millis(200));
    h.publish(created("stuck")).await.expect("publish");
    let started = Instant::now();
    let error = h.settle().await.expect_err("a handler that never ends");
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(h.handled::<OrderCreated>().is_empty());
}
