//! The eventbus quickstart: typed events, a wildcard subscriber, a typed subscriber, an event
//! group, a retry and a dead letter, all on the in-memory backend (no server needed).
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eventbus::backend::memory::MemoryBackend;
use eventbus::{subscriber, Bus, Context, Envelope, EventGroup, HandlerError, HandlerResult};

/// The events of the approvals, users and orders domains.
#[eventbus::catalog]
pub mod events {
    use serde::{Deserialize, Serialize};

    /// Someone asked for an approval.
    #[eventbus::event(name = "approval.requested", version = 1, key = approval_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct ApprovalRequested {
        /// The approval.
        pub approval_id: String,
        /// Who asked.
        pub requested_by: String,
    }

    /// The approval was granted.
    #[eventbus::event(name = "approval.granted", version = 1, key = approval_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct ApprovalGranted {
        /// The approval.
        pub approval_id: String,
    }

    /// The approval was rejected.
    #[eventbus::event(name = "approval.rejected", version = 1, key = approval_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct ApprovalRejected {
        /// The approval.
        pub approval_id: String,
        /// Why.
        pub reason: String,
    }

    /// Nobody answered in time.
    #[eventbus::event(name = "approval.expired", version = 1, key = approval_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct ApprovalExpired {
        /// The approval.
        pub approval_id: String,
    }

    /// A user was invited.
    #[eventbus::event(name = "user.invited", version = 1)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct UserInvited {
        /// Their email.
        pub email: String,
    }

    /// A user joined.
    #[eventbus::event(name = "user.joined", version = 1)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct UserJoined {
        /// Their email.
        pub email: String,
    }

    /// An order was placed.
    #[eventbus::event(name = "order.created", version = 1, topic = "order-events", key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct OrderCreated {
        /// The order.
        pub order_id: String,
        /// Total in cents.
        pub total_cents: i64,
    }

    /// An order was cancelled.
    #[eventbus::event(name = "order.cancelled", version = 1, topic = "order-events", key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct OrderCancelled {
        /// The order.
        pub order_id: String,
    }
}

use events::*;

/// Both order events, for one handler.
#[derive(EventGroup)]
pub enum OrderEvent {
    /// Placed.
    Created(OrderCreated),
    /// Cancelled.
    Cancelled(OrderCancelled),
}

/// Every approval event, whatever its type: an audit trail.
#[subscriber("approval.*", group = "audit")]
async fn audit(env: Envelope<serde_json::Value>) -> HandlerResult {
    println!("[audit]    {} {}", env.event_type, env.data);
    Ok(())
}

static NOTIFY_CALLS: AtomicU32 = AtomicU32::new(0);

/// Notifies the requester; the mail server is flaky and fails the first attempt.
#[subscriber(
    "approval.granted",
    group = "notifier",
    retries = 3,
    backoff(initial = "50ms", max = "1s")
)]
async fn notify(ctx: Context, env: Envelope<ApprovalGranted>) -> HandlerResult {
    if NOTIFY_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        println!(
            "[notifier] attempt {}: mail server timed out, will retry",
            ctx.attempt()
        );
        return Err(HandlerError::transient("mail server timed out"));
    }
    println!(
        "[notifier] attempt {}: told the requester that {} was granted",
        ctx.attempt(),
        env.data.approval_id
    );
    Ok(())
}

/// Books orders; a negative total is a bug upstream and goes to the dead-letter queue.
#[subscriber("order.*", group = "billing")]
async fn billing(ctx: Context, env: Envelope<OrderEvent>) -> HandlerResult {
    match env.data {
        OrderEvent::Created(order) if order.total_cents < 0 => Err(HandlerError::permanent(
            format!("order {} has a negative total", order.order_id),
        )),
        OrderEvent::Created(order) => {
            println!(
                "[billing]  booked {} for {} cents",
                order.order_id, order.total_cents
            );
            // A follow-on event keeps the correlation id and points back at its cause.
            ctx.publish(UserJoined {
                email: format!("buyer-of-{}@example.com", order.order_id),
            })
            .await?;
            Ok(())
        }
        OrderEvent::Cancelled(order) => {
            println!("[billing]  refunded {}", order.order_id);
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = MemoryBackend::new();
    let bus = Bus::builder()
        .backend(backend.clone())
        .source("quickstart")
        .catalog(events::CATALOG)
        .discover() // every #[subscriber] in the program
        .start()
        .await?;
    println!("subscriptions: {:?}\n", bus.subscriptions());

    let publish = events::Publisher::new(bus.publisher());
    publish
        .approval_requested(ApprovalRequested {
            approval_id: "ap-1".into(),
            requested_by: "ana".into(),
        })
        .await?;
    publish
        .approval_granted(ApprovalGranted {
            approval_id: "ap-1".into(),
        })
        .await?;
    publish
        .order_created(OrderCreated {
            order_id: "o-1".into(),
            total_cents: 4_200,
        })
        .await?;
    publish
        .order_created(OrderCreated {
            order_id: "o-2".into(),
            total_cents: -5,
        })
        .await?;
    publish
        .order_cancelled(OrderCancelled {
            order_id: "o-1".into(),
        })
        .await?;

    while backend.outstanding() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!();
    for letter in bus.dead_letters().list("order-events").await? {
        println!(
            "dead letter {} on {}: {} event, {} error after {} attempt(s): {}",
            letter.id,
            letter.dlq_topic,
            letter.event_type,
            letter.failure.kind,
            letter.failure.attempts,
            letter.failure.message
        );
    }
    println!("stats: {:?}", bus.stats());
    let report = bus.shutdown(Duration::from_secs(5)).await;
    println!("shutdown: {report:?}");
    Ok(())
}
