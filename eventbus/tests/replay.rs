//! Replay on the in-memory backend: a time window, a type filter, one target group.

use std::sync::{Arc, Mutex};

use chrono::{Duration as Minutes, TimeZone, Utc};
use eventbus::replay::ReplayRequest;
use eventbus::testing::TestHarness;
use eventbus::{event, Context, Envelope, Subscription};
use serde::{Deserialize, Serialize};

#[event(name = "order.created", version = 1, topic = "orders", key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCreated {
    order_id: String,
    n: u32,
}

#[event(name = "order.cancelled", version = 1, topic = "orders", key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCancelled {
    order_id: String,
    n: u32,
}

type Seen = Arc<Mutex<Vec<(String, u32, bool)>>>;

fn recorder(seen: &Seen, group: &str) -> Subscription {
    let seen = seen.clone();
    Subscription::new(
        "order.*",
        move |ctx: Context, env: Envelope<serde_json::Value>| {
            let n = env.data["n"].as_u64().unwrap_or(0) as u32;
            seen.lock()
                .unwrap()
                .push((env.event_type.clone(), n, ctx.is_replay()));
            async { Ok(()) }
        },
    )
    .group(group)
    .with_name(group.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_exactly_the_window_filtered_by_type_to_one_group() {
    let projections: Seen = Arc::default();
    let audit: Seen = Arc::default();
    let (p, a) = (projections.clone(), audit.clone());
    let h = TestHarness::start(move |bus| {
        bus.subscribe(recorder(&p, "projection"))
            .subscribe(recorder(&a, "audit"))
    })
    .await
    .unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap();
    let publisher = h.bus().publisher();
    for n in 0..10u32 {
        let time = t0 + Minutes::minutes(i64::from(n));
        if n % 2 == 0 {
            let mut env = Envelope::new(OrderCreated {
                order_id: format!("o{n}"),
                n,
            });
            env.time = time;
            publisher.publish_envelope(env).await.unwrap();
        } else {
            let mut env = Envelope::new(OrderCancelled {
                order_id: format!("o{n}"),
                n,
            });
            env.time = time;
            publisher.publish_envelope(env).await.unwrap();
        }
    }
    h.settle().await.unwrap();
    assert_eq!(projections.lock().unwrap().len(), 10);
    projections.lock().unwrap().clear();
    audit.lock().unwrap().clear();

    let request = ReplayRequest {
        topic: "orders".into(),
        from: t0 + Minutes::minutes(2),
        to: t0 + Minutes::minutes(7),
        event_type: Some("order.created".into()),
        group: Some("projection".into()),
    };
    let progress = h.bus().replay(request).unwrap();
    while !progress.status().done {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    h.settle().await.unwrap();
    let status = progress.status();
    assert_eq!(
        (status.scanned, status.matched, status.replayed),
        (6, 3, 3),
        "{status:?}"
    );
    assert_eq!(status.error, None);
    let mut got = projections.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("order.created".into(), 2, true),
            ("order.created".into(), 4, true),
            ("order.created".into(), 6, true)
        ],
        "replayed past the inbox, flagged as replay"
    );
    assert!(
        audit.lock().unwrap().is_empty(),
        "other groups do not see a targeted replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replay_requests_name_the_field() {
    let h = TestHarness::start(|bus| bus).await.unwrap();
    let t0 = Utc::now();
    let base = ReplayRequest {
        topic: "orders".into(),
        from: t0,
        to: t0,
        event_type: None,
        group: Some("projection".into()),
    };
    let cases = [
        (
            ReplayRequest {
                group: None,
                ..base.clone()
            },
            "`group`",
        ),
        (
            ReplayRequest {
                topic: " ".into(),
                ..base.clone()
            },
            "`topic`",
        ),
        (
            ReplayRequest {
                topic: "orders.dlq".into(),
                ..base.clone()
            },
            "`topic`",
        ),
        (
            ReplayRequest {
                from: t0 + Minutes::minutes(1),
                ..base.clone()
            },
            "`from`",
        ),
        (
            ReplayRequest {
                event_type: Some("order..x".into()),
                ..base.clone()
            },
            "`type`",
        ),
    ];
    for (request, field) in cases {
        let err = h.bus().replay(request).unwrap_err();
        assert!(
            err.to_string().contains(field),
            "{err} does not name {field}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lag_counts_what_a_stuck_group_has_not_settled() {
    let h = TestHarness::start(|bus| {
        bus.subscribe(
            Subscription::new("order.*", |_: Envelope<OrderCreated>| async {
                futures::future::pending::<()>().await;
                Ok(())
            })
            .group("stuck"),
        )
    })
    .await
    .unwrap();
    for n in 0..5 {
        h.publish(OrderCreated {
            order_id: "same-key".into(),
            n,
        })
        .await
        .unwrap();
    }
    // Wait (up to 10 s) for the consumer to take the first event, which it never settles.
    let admin = h.bus().backend().admin().expect("admin tools");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lag = loop {
        let lag = admin.group_lag().await.unwrap();
        if lag.iter().any(|l| l.pending >= 1) || std::time::Instant::now() > deadline {
            break lag;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0].group, "stuck");
    assert_eq!(lag[0].pending + lag[0].lag.unwrap_or(0), 5, "{lag:?}");
    assert!(lag[0].pending >= 1, "{lag:?}");
}
