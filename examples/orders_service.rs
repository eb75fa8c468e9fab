//! A service as a team writes it on its first day: an HTTP API, PostgreSQL, the transactional
//! outbox, Kafka, a consumer with the SQL inbox, the admin server, and a graceful stop.
//!
//! - `POST /orders` `{"customer": "c-1", "total_cents": 1200}` writes the order and enqueues
//!   `order.created` in one PostgreSQL transaction (no order without its event, no event
//!   without its order); the bus's dispatcher publishes it to Kafka.
//! - A wildcard `order.*` subscriber with the SQL inbox confirms the order and enqueues the
//!   follow-on `order.confirmed` inside its inbox transaction, then records each
//!   `order.confirmed` it receives: every effect happens once however often Kafka delivers.
//! - The admin server (`/live`, `/ready`, `/metrics`, the dashboard) runs beside it.
//! - On SIGTERM or SIGINT: the HTTP API stops taking orders, `/ready` turns 503, the consumers
//!   drain, the outbox dispatcher stops, the producer flushes, the admin server closes.
//!
//! Configuration, all from the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `DATABASE_URL` | PostgreSQL, e.g. `postgres://app@db/orders` (required) |
//! | `EVENTBUS_KAFKA_BROKERS` | `host:port,...` (required); every `EVENTBUS_KAFKA_*` setting applies, SASL/TLS through `EVENTBUS_KAFKA_OPTION_SECURITY_PROTOCOL`, `..._SASL_MECHANISM`, `..._SASL_USERNAME`, `..._SASL_PASSWORD` |
//! | `ORDERS_HTTP_BIND` | the API's address (default `127.0.0.1:8080`) |
//! | `EVENTBUS_ADMIN_BIND` | the admin server's address (default `127.0.0.1:9090`; `0.0.0.0:9090` for Kubernetes probes) |
//! | `ORDERS_DRAIN_SECS` | how long the stop may take (default 20) |
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1/orders EVENTBUS_KAFKA_BROKERS=127.0.0.1:9092 \
//!     cargo run -p eventbus-examples --example orders_service
//! curl -X POST localhost:8080/orders -H 'content-type: application/json' \
//!     -d '{"customer":"c-1","total_cents":1200}'
//! ```
//!
//! `tests/orders_service.rs` runs it against PostgreSQL and a Kafka broker, posts orders,
//! stops it with SIGTERM in the middle, starts it again, and checks that every order got
//! exactly one confirmation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use eventbus::admin::{self, AdminConfig};
use eventbus::backend::kafka::{KafkaBackend, KafkaConfig, StartFrom};
use eventbus::outbox::sqlx::{self, PgPool, Postgres};
use eventbus::outbox::{postgres, ContextExt, Outbox, SqlInbox};
use eventbus::{event, Bus, CatalogEntry, Context, Envelope, HandlerResult, Subscription, Uuid};
use serde::{Deserialize, Serialize};

/// An order was taken.
#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderCreated {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Total in cents.
    pub total_cents: i64,
}

/// The order was confirmed: the follow-on of `order.created`.
#[event(name = "order.confirmed", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: String,
}

const CATALOG: &[CatalogEntry] = &[
    CatalogEntry::of::<OrderCreated>(),
    CatalogEntry::of::<OrderConfirmed>(),
];

/// The service's own tables, next to the outbox's and the inbox's.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY,
        customer TEXT NOT NULL,
        total_cents BIGINT NOT NULL,
        state TEXT NOT NULL DEFAULT 'new',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS confirmations (
        n BIGSERIAL PRIMARY KEY,
        order_id TEXT NOT NULL,
        event_id TEXT NOT NULL)",
];

/// `POST /orders`'s body.
#[derive(Deserialize)]
struct NewOrder {
    customer: String,
    total_cents: i64,
}

#[derive(Clone)]
struct Api {
    pool: PgPool,
    outbox: Outbox<Postgres>,
}

/// Writes the order and its event in one transaction.
async fn create_order(
    State(api): State<Api>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<serde_json::Value>), (StatusCode, String)> {
    let failed = |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    if order.customer.trim().is_empty() || order.total_cents < 0 {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "customer must be set and total_cents at least 0".into(),
        ));
    }
    let order_id = Uuid::now_v7().to_string();
    let mut tx = api.pool.begin().await.map_err(|e| failed(&e))?;
    sqlx::query("INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3)")
        .bind(&order_id)
        .bind(&order.customer)
        .bind(order.total_cents)
        .execute(&mut *tx)
        .await
        .map_err(|e| failed(&e))?;
    let event = OrderCreated {
        order_id: order_id.clone(),
        customer: order.customer,
        total_cents: order.total_cents,
    };
    api.outbox
        .enqueue(&mut tx, &event)
        .await
        .map_err(|e| failed(&e))?;
    tx.commit().await.map_err(|e| failed(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "order_id": order_id })),
    ))
}

/// The wildcard subscriber: confirms new orders (the follow-on event commits with the
/// state change and the inbox row) and records confirmations.
async fn fulfil(ctx: Context, env: Envelope<serde_json::Value>) -> HandlerResult {
    let Some(mut tx) = ctx.transaction::<Postgres>().await? else {
        return Ok(()); // handled before: its effects are committed
    };
    let order_id = env.data["order_id"].as_str().unwrap_or_default().to_owned();
    match env.event_type.as_str() {
        "order.created" => {
            sqlx::query("UPDATE orders SET state = 'confirmed' WHERE id = $1")
                .bind(&order_id)
                .execute(&mut *tx)
                .await?;
            ctx.enqueue::<Postgres, _>(&mut tx, OrderConfirmed { order_id })
                .await?;
        }
        "order.confirmed" => {
            sqlx::query("INSERT INTO confirmations (order_id, event_id) VALUES ($1, $2)")
                .bind(&order_id)
                .bind(env.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        _ => {}
    }
    tx.commit().await?;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let http_bind: SocketAddr = env_or("ORDERS_HTTP_BIND", "127.0.0.1:8080")
        .parse()
        .map_err(|e| format!("ORDERS_HTTP_BIND: {e}"))?;
    let drain = Duration::from_secs(
        env_or("ORDERS_DRAIN_SECS", "20")
            .parse()
            .map_err(|e| format!("ORDERS_DRAIN_SECS: {e}"))?,
    );

    let pool = PgPool::connect(&database_url).await?;
    postgres::migrate(&pool).await?;
    for ddl in SCHEMA {
        sqlx::query(ddl).execute(&pool).await?;
    }

    let mut kafka = KafkaConfig::from_env()?;
    if std::env::var("EVENTBUS_KAFKA_START_FROM").is_err() {
        // A new consumer group reads what was published before it first joined.
        kafka.consumer.start_from = StartFrom::Earliest;
    }
    let backend = KafkaBackend::connect(kafka).await?;
    let outbox = Outbox::builder(pool.clone())
        .source("orders-service")
        .build()?;
    let bus = Arc::new(
        Bus::builder()
            .backend(backend)
            .source("orders-service")
            .catalog(CATALOG)
            .inbox(Arc::new(SqlInbox::new(pool.clone())))
            .outbox(outbox.clone())
            .subscribe(
                Subscription::new("order.*", fulfil)
                    .group("fulfilment")
                    .concurrency(8),
            )
            .start()
            .await?,
    );
    let admin_server = admin::serve(
        bus.clone(),
        AdminConfig::from_env(env!("CARGO_PKG_VERSION"))?.database(pool.clone()),
    )
    .await?;

    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(Api {
            pool: pool.clone(),
            outbox,
        });
    let listener = tokio::net::TcpListener::bind(http_bind).await?;
    println!(
        "orders-service: api http://{} admin http://{}",
        listener.local_addr()?,
        admin_server.local_addr()
    );
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = api_stopped.await;
            })
            .await
    });

    let signal = admin::shutdown_signal().await?;
    println!("orders-service: {signal}, stopping");
    // No new orders, then the bus (ready 503, consumers drain, dispatcher, producer flush),
    // then the admin server.
    let _ = stop_api.send(());
    api.await??;
    let report = admin::run_until(&bus, Some(admin_server), async {}, drain).await;
    pool.close().await;
    println!(
        "orders-service: stopped (drained: {}, aborted: {})",
        report.drained, report.aborted
    );
    if report.drained {
        Ok(())
    } else {
        Err("the drain did not finish in time".into())
    }
}
