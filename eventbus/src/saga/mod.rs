//! Sagas (process managers): a long-running process across events, such as order → payment →
//! shipment with a payment timeout and a compensation, written as a state type and one
//! method per event (features `postgres`, `sqlite`).
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # mod demo {
//! use std::time::Duration;
//!
//! use eventbus::saga::SagaContext;
//! use eventbus::{event, saga, Envelope, HandlerResult};
//! use serde::{Deserialize, Serialize};
//!
//! #[event(name = "order.placed", version = 1, key = order_id)]
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: String, cents: i64 }
//!
//! #[event(name = "payment.requested", version = 1, key = order_id)]
//! #[derive(Serialize, Deserialize)]
//! struct PaymentRequested { order_id: String, cents: i64 }
//!
//! #[event(name = "payment.settled", version = 1, key = order_id)]
//! #[derive(Serialize, Deserialize)]
//! struct PaymentSettled { order_id: String }
//!
//! #[event(name = "payment.overdue", version = 1, key = order_id)]
//! #[derive(Serialize, Deserialize)]
//! struct PaymentOverdue { order_id: String }
//!
//! #[event(name = "order.abandoned", version = 1, key = order_id)]
//! #[derive(Serialize, Deserialize)]
//! struct OrderAbandoned { order_id: String }
//!
//! /// The state of one order's checkout.
//! #[derive(Serialize, Deserialize, Default)]
//! struct Checkout { cents: i64 }
//!
//! #[saga(name = "checkout", correlate = order_id)]
//! impl Checkout {
//!     #[start]
//!     fn placed(&mut self, e: &Envelope<OrderPlaced>, saga: &mut SagaContext) -> HandlerResult {
//!         self.cents = e.data.cents;
//!         saga.send(PaymentRequested { order_id: e.data.order_id.clone(), cents: e.data.cents });
//!         saga.schedule(Duration::from_secs(900), PaymentOverdue { order_id: e.data.order_id.clone() });
//!         Ok(())
//!     }
//!
//!     #[handle]
//!     fn settled(&mut self, _: &Envelope<PaymentSettled>, saga: &mut SagaContext) -> HandlerResult {
//!         saga.complete();
//!         Ok(())
//!     }
//!
//!     #[handle]
//!     fn overdue(&mut self, e: &Envelope<PaymentOverdue>, saga: &mut SagaContext) -> HandlerResult {
//!         saga.send(OrderAbandoned { order_id: e.data.order_id.clone() });
//!         saga.complete();
//!         Ok(())
//!     }
//! }
//!
//! // Bus::builder().outbox(outbox).subscribe_all(eventbus::saga::subscriptions::<Checkout, Sqlite>())
//! # }
//! ```
//!
//! - **Correlation**: `correlate = order_id` names a field every handled event has (a compile
//!   error names the event that lacks it); its value is the instance id.
//! - **One transaction per step**: the inbox row of the delivery, loading the state, the
//!   method, saving the state, and the events it sends or schedules, all in the step's
//!   database transaction. A crash anywhere before the commit leaves nothing; the broker
//!   redelivers and the step runs again. A redelivery after the commit is recognised by the
//!   inbox and runs nothing.
//! - **Concurrency**: the row has a version; a save names the version it loaded. Two steps of
//!   one instance at once: one commits, the other finds the version moved, rolls back and
//!   runs again on the new state (up to [`MAX_CONFLICT_RETRIES`] times in a row, then the
//!   delivery is retried like a transient failure). No update is lost.
//! - **Starting**: a `#[start]` method creates the instance when none exists (and runs on the
//!   existing one otherwise); a `#[handle]` method for an instance that does not exist yet
//!   fails transiently ("no instance yet"): retried with the subscription's backoff, then
//!   dead-lettered — an event that arrives before its saga's start is not dropped.
//! - **Completing**: [`SagaContext::complete`]; later events for the instance (a timeout that
//!   fired after the payment) are acknowledged, logged and counted
//!   (`event_saga_steps_total{outcome="completed"}`). The row is removed, or archived to
//!   `saga_archive`, after the outbox's `retention.completed_sagas` (7 days).
//! - **Timeouts**: [`SagaContext::schedule`] writes the event into the outbox to be published
//!   later; it survives restarts.
//!
//! Each handled event gets its own subscription (consumer group `{saga}.{event}`), so events
//! of different types on one topic never take each other's deliveries.

mod context;
#[cfg(feature = "postgres")]
mod postgres;
mod run;
#[cfg(feature = "sqlite")]
mod sqlite;
pub(crate) mod store;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Pool;

pub use context::SagaContext;
pub use run::{step, Entry, MAX_CONFLICT_RETRIES};

use crate::error::Error;
use crate::outbox::SqlDatabase;
use crate::subscription::Subscription;

/// A saga: its state type, its name, and the subscriptions of its steps. Implemented by
/// `#[saga(name = "...", correlate = field)]` on the state type's `impl` block.
pub trait Saga: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The saga's name: the instances' namespace and the prefix of its consumer groups.
    const NAME: &'static str;

    /// One subscription per handled event, running its step on database `DB`.
    fn subscriptions<DB: SqlDatabase>() -> Vec<Subscription>;
}

/// The subscriptions of saga `S` on database `DB`, for
/// [`BusBuilder::subscribe_all`](crate::BusBuilder::subscribe_all). The bus needs the outbox
/// ([`BusBuilder::outbox`](crate::BusBuilder::outbox)): the steps write into it.
pub fn subscriptions<S: Saga, DB: SqlDatabase>() -> Vec<Subscription> {
    S::subscriptions::<DB>()
}

/// One saga instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance<S> {
    /// The state.
    pub state: S,
    /// Saves so far.
    pub version: i64,
    /// Whether the instance completed.
    pub completed: bool,
}

/// Reads instance `id` of saga `S` (for tooling and tests; steps load their own).
pub async fn load<S: Saga, DB: SqlDatabase>(
    pool: &Pool<DB>,
    id: &str,
) -> Result<Option<Instance<S>>, Error> {
    let mut conn = pool.acquire().await.map_err(|e| saga_error("load", e))?;
    let row = DB::saga_load(&mut *conn, S::NAME, id)
        .await
        .map_err(|e| saga_error("load", e))?;
    row.map(|row| {
        Ok(Instance {
            state: serde_json::from_str(&row.state).map_err(|e| Error::Saga {
                saga: S::NAME,
                id: id.to_owned(),
                reason: format!("stored state does not decode: {e}"),
            })?,
            version: row.version,
            completed: row.completed,
        })
    })
    .transpose()
}

pub(crate) fn saga_error(operation: &'static str, error: sqlx::Error) -> Error {
    Error::backend("saga", operation, error)
}
