//! The ready platform catalog (feature `platform-events`): every event the requirement
//! documents list is in it, publishes with its tenant, and reaches a wildcard subscriber with
//! its tenant in the envelope and in the data. Runs when the feature is on (the workspace's
//! test run turns it on through the integration crate).
#![cfg(feature = "platform-events")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::backend::memory::MemoryBackend;
use eventbus::platform_events::{self as platform, CATALOG};
use eventbus::{Bus, Envelope, Event, Subscription};

const NAMES: [&str; 13] = [
    "approval.requested",
    "approval.granted",
    "approval.rejected",
    "approval.expired",
    "user.invited",
    "user.joined",
    "order.created",
    "order.updated",
    "order.cancelled",
    "order.completed",
    "agent.started",
    "agent.completed",
    "agent.error",
];

/// (event type, envelope tenant, data) of each handled event.
type Seen = Arc<Mutex<Vec<(String, Option<String>, serde_json::Value)>>>;

#[test]
fn the_catalog_holds_every_listed_event_with_a_tenant() {
    let mut names: Vec<&str> = CATALOG.iter().map(|e| e.name).collect();
    names.sort_unstable();
    let mut expected = NAMES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    let document = eventbus::asyncapi::document("platform", CATALOG);
    let text = document.to_string();
    for name in NAMES {
        assert!(text.contains(name), "{name} in the AsyncAPI document");
    }
}

#[tokio::test]
async fn platform_events_reach_a_wildcard_subscriber_with_their_tenant() {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let bus = Bus::builder()
        .backend(MemoryBackend::new())
        .catalog(CATALOG)
        .subscribe(
            Subscription::new("#", move |env: Envelope<serde_json::Value>| {
                log.lock()
                    .unwrap()
                    .push((env.event_type.clone(), env.tenant_id.clone(), env.data));
                async { Ok(()) }
            })
            .group("audit"),
        )
        .start()
        .await
        .expect("start");
    let tenant = "acme".to_owned();
    let publisher = bus.publisher();
    macro_rules! publish {
        ($($event:expr),* $(,)?) => {
            $(publisher
                .publish_envelope(Envelope::new($event).with_tenant(tenant.clone()))
                .await
                .expect("publish");)*
        };
    }
    let t = || tenant.clone();
    publish!(
        platform::ApprovalRequested {
            tenant_id: t(),
            approval_id: "a-1".into(),
            requested_by: "u-1".into(),
            subject: "expense".into()
        },
        platform::ApprovalGranted {
            tenant_id: t(),
            approval_id: "a-1".into(),
            granted_by: "u-2".into()
        },
        platform::ApprovalRejected {
            tenant_id: t(),
            approval_id: "a-2".into(),
            rejected_by: "u-2".into(),
            reason: "budget".into()
        },
        platform::ApprovalExpired {
            tenant_id: t(),
            approval_id: "a-3".into()
        },
        platform::UserInvited {
            tenant_id: t(),
            email: "x@example.com".into(),
            invited_by: "u-1".into()
        },
        platform::UserJoined {
            tenant_id: t(),
            user_id: "u-3".into(),
            email: "x@example.com".into()
        },
        platform::OrderCreated {
            tenant_id: t(),
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            total_minor: 1299,
            currency: "EUR".into()
        },
        platform::OrderUpdated {
            tenant_id: t(),
            order_id: "o-1".into(),
            status: "packed".into()
        },
        platform::OrderCancelled {
            tenant_id: t(),
            order_id: "o-2".into(),
            reason: None
        },
        platform::OrderCompleted {
            tenant_id: t(),
            order_id: "o-1".into()
        },
        platform::AgentStarted {
            tenant_id: t(),
            run_id: "r-1".into(),
            agent: "summarizer".into()
        },
        platform::AgentCompleted {
            tenant_id: t(),
            run_id: "r-1".into(),
            agent: "summarizer".into(),
            duration_ms: 840
        },
        platform::AgentError {
            tenant_id: t(),
            run_id: "r-2".into(),
            agent: "summarizer".into(),
            error: "timeout".into()
        },
    );
    let start = Instant::now();
    while seen.lock().unwrap().len() < NAMES.len() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "handled {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let mut types: Vec<&str> = seen.iter().map(|(t, _, _)| t.as_str()).collect();
    types.sort_unstable();
    let mut expected = NAMES.to_vec();
    expected.sort_unstable();
    assert_eq!(types, expected);
    for (event_type, envelope_tenant, data) in &seen {
        assert_eq!(envelope_tenant.as_deref(), Some("acme"), "{event_type}");
        assert_eq!(data["tenant_id"], "acme", "{event_type}: {data}");
    }
    assert_eq!(platform::AgentError::NAME, "agent.error");
    bus.shutdown(Duration::from_secs(5)).await;
}
