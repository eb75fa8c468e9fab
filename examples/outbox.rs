//! The transactional outbox and the SQL inbox on SQLite (a temp file, no server needed): an
//! order and its event written in one transaction, a rolled-back order that publishes
//! nothing, the dispatcher relaying committed events to an in-memory bus, and a handler whose
//! side effect happens once even though the broker delivers the event twice. Payloads are
//! encrypted at rest (the event carries an email address).
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example outbox
//! ```

use std::sync::Arc;
use std::time::Duration;

use eventbus::backend::memory::{Faults, MemoryBackend};
use eventbus::outbox::sqlx::{self, Sqlite};
use eventbus::outbox::{sqlite, ContextExt, KeyRing, Outbox, OutboxState, SqlInbox};
use eventbus::{event, Bus, Context, Envelope, HandlerResult, Subscription, Uuid};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[event(name = "order.placed", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// Total in cents.
    pub total_cents: i64,
    /// Where to send the confirmation (personal data: encrypted in the outbox).
    pub email: String,
}

/// Creates the shipment of an order, once per order event, in the inbox transaction.
async fn ship(ctx: Context, env: Envelope<OrderPlaced>) -> HandlerResult {
    let Some(mut tx) = ctx.transaction::<Sqlite>().await? else {
        println!(
            "[shipping] {}: duplicate delivery, already shipped",
            env.data.order_id
        );
        return Ok(());
    };
    sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
        .bind(&env.data.order_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    println!(
        "[shipping] {}: shipment created (attempt {})",
        env.data.order_id,
        ctx.attempt()
    );
    Ok(())
}

/// Writes an order and its event in one transaction, then commits or rolls back.
async fn place_order(
    pool: &sqlx::SqlitePool,
    outbox: &Outbox<Sqlite>,
    order_id: &str,
    commit: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    // IMMEDIATE takes SQLite's write lock up front (no lock upgrade failure later).
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, $2)")
        .bind(order_id)
        .bind(4_200_i64)
        .execute(&mut *tx)
        .await?;
    let event = OrderPlaced {
        order_id: order_id.to_owned(),
        total_cents: 4_200,
        email: "ana@example.com".to_owned(),
    };
    let id = outbox.enqueue(&mut tx, &event).await?;
    if commit {
        tx.commit().await?;
        outbox.wake(); // relay now rather than at the next poll
        println!("[shop]     {order_id}: committed with event {id}");
    } else {
        tx.rollback().await?;
        println!("[shop]     {order_id}: rolled back, so event {id} never exists");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("eventbus-outbox-example-{}.db", Uuid::now_v7()));
    let pool = sqlite::connect(&path).await?;
    sqlite::migrate(&pool).await?; // outbox, outbox_archive, inbox; WAL mode
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, total_cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE shipments (order_id TEXT NOT NULL)")
        .execute(&pool)
        .await?;

    // The broker will deliver the next event twice, as brokers sometimes do.
    let backend = MemoryBackend::new();
    backend.inject(Faults {
        duplicate_deliveries: 1,
        ..Faults::default()
    });
    let bus = Bus::builder()
        .backend(backend.clone())
        .source("shop")
        .inbox(Arc::new(SqlInbox::new(pool.clone())))
        .extension(pool.clone())
        .subscribe(Subscription::new("order.*", ship).group("shipping"))
        .start()
        .await?;

    // Load the key from your secret store; a fixed one keeps the example self-contained.
    let keys = KeyRing::new("2026-01", &[42u8; 32])?;
    let outbox = Outbox::builder(pool.clone())
        .source("shop")
        .encryption(keys)
        .build()?;
    let dispatcher = outbox.dispatcher(bus.backend().clone()).start()?;

    place_order(&pool, &outbox, "o-1", true).await?;
    place_order(&pool, &outbox, "o-2", false).await?;

    for _ in 0..500 {
        let shipped: i64 = sqlx::query_scalar("SELECT count(*) FROM shipments")
            .fetch_one(&pool)
            .await?;
        if shipped == 1 && backend.outstanding() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!();
    let orders: Vec<String> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&pool)
        .await?;
    let shipments: Vec<String> = sqlx::query_scalar("SELECT order_id FROM shipments")
        .fetch_all(&pool)
        .await?;
    println!("orders:    {orders:?}");
    println!("shipments: {shipments:?} (one, although the event was delivered twice)");
    for row in outbox.rows(OutboxState::Sent, 10).await? {
        println!(
            "outbox row {}: {} {} sealed under key {:?}, {} bytes at rest, {} attempt(s)",
            row.id,
            row.event_type,
            row.state,
            row.key_id,
            row.payload.len(),
            row.attempts
        );
    }
    println!("backlog:   {:?}", outbox.backlog().await?);
    println!("relay:     {:?}", dispatcher.stats());
    println!("consumers: {:?}", bus.stats());

    dispatcher.shutdown(Duration::from_secs(5)).await;
    bus.shutdown(Duration::from_secs(5)).await;
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
