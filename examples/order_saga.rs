//! A saga with a compensation and a timeout: `order.created` → `payment.requested`;
//! `payment.completed` → `shipment.requested`; `payment.failed` → `order.cancelled` (the
//! compensation); no answer within the payment timeout → `payment.timed_out` →
//! `order.cancelled`. A stand-in payment service answers every third order with a success,
//! every third with a failure, and never answers the rest.
//!
//! Runs with no server (SQLite and the in-memory backend):
//!
//! ```sh
//! cargo run -p eventbus-examples --example order_saga
//! ```
//!
//! and against real servers, which is how `tests/order_saga.rs` runs it (and kills it with
//! `kill -9` in the middle):
//!
//! | variable | meaning |
//! |---|---|
//! | `DATABASE_URL` | PostgreSQL for the saga, the outbox and the inbox; SQLite when unset |
//! | `ORDER_SAGA_SQLITE` | the SQLite file (default: a new file in the temp directory) |
//! | `EVENTBUS_BACKEND` | `memory` (default), `redis` (`EVENTBUS_REDIS_*`) or `kafka` (`EVENTBUS_KAFKA_*`) |
//! | `ORDER_SAGA_RUN` | the prefix of the order ids (default: random) |
//! | `ORDER_SAGA_ORDERS` | orders to place at start, in one transaction (default 9; 0 places none) |
//! | `ORDER_SAGA_EXPECT` | orders of the run to wait for before exiting (default: `ORDER_SAGA_ORDERS`) |
//! | `ORDER_SAGA_PAYMENT_TIMEOUT` | how long the saga waits for the payment (default `2s`) |
//! | `ORDER_SAGA_PAYMENT_DELAY` | how long the payment service takes per request (default `0s`) |
//!
//! It prints `order-saga: placed N` after placing, and `order-saga: done shipped=A
//! cancelled=B` when every expected order's saga completed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::backend::kafka::{self, KafkaBackend, KafkaConfig};
use eventbus::backend::memory::MemoryBackend;
use eventbus::backend::redis::{self, RedisBackend, RedisConfig};
use eventbus::backend::Backend;
use eventbus::outbox::sqlx::{self, Pool, Postgres, Sqlite};
use eventbus::outbox::{postgres, sqlite, Outbox, SqlDatabase};
use eventbus::saga::{self, SagaContext};
use eventbus::{Bus, Context, Envelope, HandlerResult, Subscription, Uuid};
use serde::{Deserialize, Serialize};

/// The events of the order flow.
#[eventbus::catalog]
pub mod events {
    use serde::{Deserialize, Serialize};

    /// An order was placed.
    #[eventbus::event(name = "order.created", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct OrderCreated {
        /// The order.
        pub order_id: String,
        /// Its total, in cents.
        pub cents: i64,
    }

    /// The saga asks the payment service to charge the order.
    #[eventbus::event(name = "payment.requested", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct PaymentRequested {
        /// The order.
        pub order_id: String,
        /// The amount, in cents.
        pub cents: i64,
    }

    /// The payment went through.
    #[eventbus::event(name = "payment.completed", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct PaymentCompleted {
        /// The order.
        pub order_id: String,
    }

    /// The payment was refused.
    #[eventbus::event(name = "payment.failed", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct PaymentFailed {
        /// The order.
        pub order_id: String,
        /// Why.
        pub reason: String,
    }

    /// The payment did not answer in time (scheduled by the saga).
    #[eventbus::event(name = "payment.timed_out", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct PaymentTimedOut {
        /// The order.
        pub order_id: String,
    }

    /// Ship it.
    #[eventbus::event(name = "shipment.requested", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct ShipmentRequested {
        /// The order.
        pub order_id: String,
    }

    /// The order is off (the compensation).
    #[eventbus::event(name = "order.cancelled", version = 1, key = order_id)]
    #[derive(Serialize, Deserialize, Debug, Clone)]
    pub struct OrderCancelled {
        /// The order.
        pub order_id: String,
        /// Why.
        pub reason: String,
    }
}

use events::*;

/// Where one order's saga is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    /// Created, payment requested.
    #[default]
    AwaitingPayment,
    /// Paid, shipment requested.
    Shipped,
    /// Cancelled (payment failed or timed out).
    Cancelled,
}

/// The state of one order's saga.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct OrderSaga {
    /// Where it is.
    pub stage: Stage,
    /// The amount charged.
    pub cents: i64,
}

/// How long the saga waits for the payment service.
fn payment_timeout() -> Duration {
    std::env::var("ORDER_SAGA_PAYMENT_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(2))
}

#[eventbus::saga(name = "order-fulfilment", correlate = order_id)]
impl OrderSaga {
    /// Requests the payment and starts the payment timeout.
    #[start]
    fn created(&mut self, e: &Envelope<OrderCreated>, saga: &mut SagaContext) -> HandlerResult {
        self.cents = e.data.cents;
        saga.send(PaymentRequested {
            order_id: e.data.order_id.clone(),
            cents: e.data.cents,
        });
        saga.schedule(
            payment_timeout(),
            PaymentTimedOut {
                order_id: e.data.order_id.clone(),
            },
        );
        Ok(())
    }

    /// Paid: ship.
    #[handle]
    fn paid(&mut self, e: &Envelope<PaymentCompleted>, saga: &mut SagaContext) -> HandlerResult {
        self.stage = Stage::Shipped;
        saga.send(ShipmentRequested {
            order_id: e.data.order_id.clone(),
        });
        saga.complete();
        Ok(())
    }

    /// Refused: cancel the order.
    #[handle]
    fn refused(&mut self, e: &Envelope<PaymentFailed>, saga: &mut SagaContext) -> HandlerResult {
        self.cancel(&e.data.order_id, &e.data.reason, saga);
        Ok(())
    }

    /// No answer in time: cancel the order.
    #[handle]
    fn timed_out(
        &mut self,
        e: &Envelope<PaymentTimedOut>,
        saga: &mut SagaContext,
    ) -> HandlerResult {
        self.cancel(&e.data.order_id, "payment timed out", saga);
        Ok(())
    }

    fn cancel(&mut self, order_id: &str, reason: &str, saga: &mut SagaContext) {
        self.stage = Stage::Cancelled;
        saga.send(OrderCancelled {
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
        });
        saga.complete();
    }
}

/// The stand-in payment service: order number `n` (the id's suffix) succeeds when `n % 3 ==
/// 0`, fails when `n % 3 == 1`, and gets no answer otherwise.
async fn payments(ctx: Context, e: Envelope<PaymentRequested>) -> HandlerResult {
    let delay = std::env::var("ORDER_SAGA_PAYMENT_DELAY")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let n: u64 = e
        .data
        .order_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let order_id = e.data.order_id.clone();
    match n % 3 {
        0 => {
            ctx.publish(PaymentCompleted { order_id }).await?;
        }
        1 => {
            ctx.publish(PaymentFailed {
                order_id,
                reason: "card declined".into(),
            })
            .await?;
        }
        _ => {}
    }
    Ok(())
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn count(name: &str, default: usize) -> Result<usize, Box<dyn std::error::Error>> {
    match setting(name) {
        Some(v) => Ok(v
            .parse()
            .map_err(|e| format!("{name}={v}: not a count: {e}"))?),
        None => Ok(default),
    }
}

/// The broker; a new consumer group reads what is already there (the saga must see every
/// order placed since it was deployed).
async fn backend() -> Result<Arc<dyn Backend>, Box<dyn std::error::Error>> {
    Ok(
        match setting("EVENTBUS_BACKEND").as_deref().unwrap_or("memory") {
            "memory" => Arc::new(MemoryBackend::new()),
            "redis" => {
                let mut config = RedisConfig::from_env()?;
                config.start_from = redis::StartFrom::Earliest;
                Arc::new(RedisBackend::connect(config).await?)
            }
            "kafka" => {
                let mut config = KafkaConfig::from_env()?;
                config.consumer.start_from = kafka::StartFrom::Earliest;
                Arc::new(KafkaBackend::connect(config).await?)
            }
            other => {
                return Err(format!(
                    "EVENTBUS_BACKEND={other}: expected `memory`, `redis` or `kafka`"
                )
                .into())
            }
        },
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = backend().await?;
    match setting("DATABASE_URL") {
        Some(url) => {
            let pool: Pool<Postgres> = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect(&url)
                .await?;
            postgres::migrate(&pool).await?;
            run(pool, backend).await
        }
        None => {
            let path = setting("ORDER_SAGA_SQLITE").map_or_else(
                || std::env::temp_dir().join(format!("order-saga-{}.db", Uuid::now_v7())),
                Into::into,
            );
            let pool: Pool<Sqlite> = sqlite::connect(&path).await?;
            sqlite::migrate(&pool).await?;
            println!("order-saga: sqlite {}", path.display());
            run(pool, backend).await
        }
    }
}

async fn run<DB: SqlDatabase>(
    pool: Pool<DB>,
    backend: Arc<dyn Backend>,
) -> Result<(), Box<dyn std::error::Error>> {
    let run = setting("ORDER_SAGA_RUN").unwrap_or_else(|| Uuid::now_v7().simple().to_string());
    let orders = count("ORDER_SAGA_ORDERS", 9)?;
    let expect = count("ORDER_SAGA_EXPECT", orders)?;
    let outbox = Outbox::builder(pool.clone())
        .poll_interval(Duration::from_millis(50))
        .build()?;
    let bus = Bus::builder()
        .backend_arc(backend)
        .source("order-saga")
        .catalog(CATALOG)
        .outbox(outbox.clone())
        .subscribe_all(saga::subscriptions::<OrderSaga, DB>())
        .subscribe(
            Subscription::new("payment.requested", payments)
                .group("payments")
                .concurrency(8),
        )
        .start()
        .await?;

    // The orders, in one transaction: all of them or none.
    if orders > 0 {
        let mut tx = pool.begin().await?;
        for n in 0..orders {
            let order = OrderCreated {
                order_id: format!("{run}-{n:04}"),
                cents: 1_000 + n as i64,
            };
            outbox.enqueue(&mut *tx, &order).await?;
        }
        tx.commit().await?;
        outbox.wake();
        println!("order-saga: placed {orders}");
    }

    // Until every expected order's saga completed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut shipped, mut cancelled);
    loop {
        (shipped, cancelled) = (0, 0);
        for n in 0..expect {
            let id = format!("{run}-{n:04}");
            match saga::load::<OrderSaga, DB>(&pool, &id).await? {
                Some(instance) if instance.completed => match instance.state.stage {
                    Stage::Shipped => shipped += 1,
                    _ => cancelled += 1,
                },
                _ => {}
            }
        }
        if shipped + cancelled == expect {
            break;
        }
        if Instant::now() > deadline {
            bus.shutdown(Duration::from_secs(10)).await;
            return Err(format!(
                "after 120 s only {} of {expect} sagas completed",
                shipped + cancelled
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = bus.shutdown(Duration::from_secs(20)).await;
    println!("order-saga: done shipped={shipped} cancelled={cancelled} ({report:?})");
    Ok(())
}
