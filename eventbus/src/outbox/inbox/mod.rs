//! The SQL inbox: which events each consumer group has handled, in the `inbox` table (unique
//! on `(consumer_group, event_id)`).
//!
//! Two ways to use it, best together:
//! - as the pipeline's dedupe store, [`BusBuilder::inbox`](crate::BusBuilder::inbox): an event
//!   already recorded for the group is acknowledged without running the handler;
//! - inside the handler, [`ContextExt::transaction`] (or [`SqlInbox::begin`]): a transaction
//!   that already holds the inbox row, in which the handler makes its state change. Both commit
//!   together, so the side effect happens once even if the process dies between the commit and
//!   the acknowledgement and the broker redelivers. `None` means the group already handled
//!   the event: return `Ok(())`.
//!
//! Rows are kept for a retention period longer than the broker can redeliver or replay, then
//! removed in batches ([`SqlInbox::cleanup`], [`SqlInbox::start_cleanup`]).

use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::BoxFuture;
use sqlx::{Pool, Transaction};
use uuid::Uuid;

use super::cleanup::{self, validate_batch, CleanupHandle};
use super::{Outbox, SqlDatabase};
use crate::clock::{Clock, SystemClock};
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;
use crate::inbox::InboxStore;
use crate::runtime::default_runtime;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

fn inbox_error(operation: &'static str, error: sqlx::Error) -> Error {
    Error::Inbox {
        operation,
        source: Box::new(error),
    }
}

/// The inbox over a sqlx pool. Cheap to clone.
pub struct SqlInbox<DB: SqlDatabase> {
    pool: Pool<DB>,
}

impl<DB: SqlDatabase> Clone for SqlInbox<DB> {
    fn clone(&self) -> Self {
        SqlInbox {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: SqlDatabase> std::fmt::Debug for SqlInbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlInbox")
            .field("database", &DB::LABEL)
            .finish()
    }
}

impl<DB: SqlDatabase> SqlInbox<DB> {
    /// Default rows deleted per cleanup statement.
    pub const DEFAULT_CLEANUP_BATCH: u32 = 1_000;

    /// An inbox over `pool` (its tables created by the outbox migrations).
    pub fn new(pool: Pool<DB>) -> Self {
        SqlInbox { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Begins a transaction holding the inbox row of `(group, event_id)`, or returns `None` if
    /// the group already handled the event (the row is committed). Make the state change in
    /// the transaction and commit it; rolling back (or a failure) leaves the event unhandled.
    /// A concurrent delivery of the same event waits for this transaction to end.
    pub async fn begin(
        &self,
        group: &str,
        event_id: Uuid,
    ) -> Result<Option<Transaction<'static, DB>>, Error> {
        self.claim_in_task(group, event_id, false).await
    }

    /// Runs [`claim`] in a task of its own and waits for it.
    async fn claim_in_task(
        &self,
        group: &str,
        event_id: Uuid,
        replay: bool,
    ) -> Result<Option<Transaction<'static, DB>>, Error> {
        let work = claim(self.pool.clone(), group.to_owned(), event_id, replay);
        // sqlx 0.8's `begin` is not cancel-safe (launchbadge/sqlx#3932, #4393): a handler
        // cancelled halfway (shutdown timeout, handler timeout) could return a connection stuck
        // in a transaction to the pool. The claim runs to completion in its own task; if
        // nobody waits for it any more, its transaction is dropped and rolled back properly.
        let Ok(runtime) = default_runtime() else {
            return work.await;
        };
        let (sender, receiver) = oneshot::channel();
        runtime.spawn(Box::pin(async move {
            let _ = sender.send(work.await);
        }));
        receiver.await.unwrap_or_else(|_| {
            Err(Error::Inbox {
                operation: "begin",
                source: "the executor dropped the task".into(),
            })
        })
    }

    /// [`SqlInbox::begin`] for the delivery a handler is handling. A replay
    /// ([`Context::is_replay`]) is meant to run again: its transaction is begun even when the
    /// group handled the event before (the inbox row stays as it is).
    pub async fn begin_for(
        &self,
        ctx: &Context,
    ) -> Result<Option<Transaction<'static, DB>>, Error> {
        if ctx.is_replay() {
            return self
                .begin_replay(ctx.group(), ctx.event_id())
                .await
                .map(Some);
        }
        self.begin(ctx.group(), ctx.event_id()).await
    }

    /// Begins a transaction holding the inbox row of `(group, event_id)`, inserting it when
    /// missing, whether or not the group handled the event before: for replays.
    pub async fn begin_replay(
        &self,
        group: &str,
        event_id: Uuid,
    ) -> Result<Transaction<'static, DB>, Error> {
        let claimed = self.claim_in_task(group, event_id, true).await?;
        claimed.ok_or_else(|| Error::Inbox {
            operation: "begin",
            source: "a replay claim returned no transaction".into(),
        })
    }

    /// Inserts the inbox row in a transaction of your own (`&mut tx`); true if inserted, false
    /// if the group already handled the event.
    pub async fn mark(
        &self,
        conn: &mut DB::Connection,
        group: &str,
        event_id: Uuid,
    ) -> Result<bool, Error> {
        DB::inbox_insert(conn, group, event_id)
            .await
            .map_err(|e| inbox_error("insert", e))
    }

    /// Deletes rows processed more than `older_than` ago, `batch_size` per statement, until
    /// none is left; returns how many. `older_than` must exceed how long the broker may
    /// redeliver or replay an event, or a late duplicate is handled again.
    pub async fn cleanup(&self, older_than: Duration, batch_size: u32) -> Result<u64, Error> {
        validate_batch("inbox.cleanup.batch_size", batch_size)?;
        cleanup::drain(batch_size, || {
            DB::inbox_cleanup(&self.pool, older_than, batch_size)
        })
        .await
        .map_err(|e| inbox_error("cleanup", e))
    }

    /// Runs [`SqlInbox::cleanup`] every `every` on the default runtime until the handle is
    /// stopped or dropped.
    pub fn start_cleanup(
        &self,
        older_than: Duration,
        every: Duration,
    ) -> Result<CleanupHandle, Error> {
        if every.is_zero() {
            return Err(Error::config("inbox.cleanup.interval", "must be positive"));
        }
        let runtime = default_runtime()?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new(runtime.clone()));
        let inbox = self.clone();
        Ok(cleanup::spawn_periodic(
            &runtime,
            clock,
            every,
            "inbox",
            move || {
                let inbox = inbox.clone();
                async move { inbox.cleanup(older_than, Self::DEFAULT_CLEANUP_BATCH).await }
            },
        ))
    }
}

/// Begins the handler's transaction and inserts the inbox row in it.
async fn claim<DB: SqlDatabase>(
    pool: Pool<DB>,
    group: String,
    event_id: Uuid,
    replay: bool,
) -> Result<Option<Transaction<'static, DB>>, Error> {
    let mut tx = DB::inbox_begin(&pool)
        .await
        .map_err(|e| inbox_error("begin", e))?;
    let inserted = DB::inbox_insert(&mut *tx, &group, event_id)
        .await
        .map_err(|e| inbox_error("insert", e))?;
    // Not inserted: handled before. Nothing was written; dropping the transaction rolls it
    // back, unless this is a replay, which runs again.
    Ok((inserted || replay).then_some(tx))
}

impl<DB: SqlDatabase> InboxStore for SqlInbox<DB> {
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            DB::inbox_contains(&self.pool, group, id)
                .await
                .map_err(|e| inbox_error("contains", e))
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            DB::inbox_record(&self.pool, group, id)
                .await
                .map_err(|e| inbox_error("record", e))
        })
    }

    /// A record is an `INSERT` on the database: the consumer overlaps it with the next
    /// deliveries.
    fn records_remotely(&self) -> bool {
        true
    }
}

/// Handler-side access to the SQL inbox through the [`Context`].
pub trait ContextExt {
    /// A transaction on the bus's database that already holds this delivery's inbox row
    /// (group, event id), or `None` when the group already handled the event. A replay
    /// always gets its transaction: replays are meant to run again.
    ///
    /// The pool comes from the bus's extensions: a [`SqlInbox<DB>`] or a `sqlx::Pool<DB>`
    /// registered with [`BusBuilder::extension`](crate::BusBuilder::extension).
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # mod demo {
    /// use eventbus::outbox::sqlx;
    /// use eventbus::outbox::ContextExt;
    /// use eventbus::{Context, Envelope, HandlerResult};
    ///
    /// async fn credit(ctx: Context, env: Envelope<serde_json::Value>) -> HandlerResult {
    ///     let Some(mut tx) = ctx.transaction::<sqlx::Postgres>().await? else {
    ///         return Ok(()); // handled before: the credit was already applied
    ///     };
    ///     sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     tx.commit().await?;
    ///     Ok(())
    /// }
    /// # }
    /// ```
    fn transaction<DB: SqlDatabase>(
        &self,
    ) -> BoxFuture<'_, Result<Option<Transaction<'static, DB>>, Error>>;

    /// Writes a follow-on event into the outbox inside the handler's transaction (`&mut tx`
    /// from [`ContextExt::transaction`]), with the causal metadata of
    /// [`Context::publish`] (causation id, correlation id, tenant, user, trace). The inbox row,
    /// the handler's writes and its follow-on events then commit or roll back together; the
    /// bus's dispatcher publishes the event after the commit. [`Context::publish`], by
    /// contrast, goes to the broker at once, and a crash after the commit loses it.
    ///
    /// The outbox comes from [`BusBuilder::outbox`](crate::BusBuilder::outbox) (or an
    /// [`Outbox<DB>`](super::Outbox) registered as an extension).
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # mod demo {
    /// use eventbus::outbox::sqlx::{self, Postgres};
    /// use eventbus::outbox::ContextExt;
    /// use eventbus::{event, Context, Envelope, HandlerResult};
    ///
    /// #[event(name = "order.created", version = 1, key = order_id)]
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct OrderCreated { order_id: String }
    ///
    /// #[event(name = "shipment.requested", version = 1, key = order_id)]
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct ShipmentRequested { order_id: String }
    ///
    /// async fn ship(ctx: Context, env: Envelope<OrderCreated>) -> HandlerResult {
    ///     let Some(mut tx) = ctx.transaction::<Postgres>().await? else { return Ok(()) };
    ///     sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
    ///         .bind(&env.data.order_id)
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     let follow_on = ShipmentRequested { order_id: env.data.order_id.clone() };
    ///     ctx.enqueue::<Postgres, _>(&mut tx, follow_on).await?;
    ///     tx.commit().await?;
    ///     Ok(())
    /// }
    /// # }
    /// ```
    fn enqueue<'a, DB: SqlDatabase, E: Event>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: E,
    ) -> BoxFuture<'a, Result<Uuid, Error>>;
}

impl ContextExt for Context {
    fn transaction<DB: SqlDatabase>(
        &self,
    ) -> BoxFuture<'_, Result<Option<Transaction<'static, DB>>, Error>> {
        let inbox = if let Some(inbox) = self.extension::<SqlInbox<DB>>() {
            Ok(inbox.clone())
        } else if let Some(pool) = self.extension::<Pool<DB>>() {
            Ok(SqlInbox::new(pool.clone()))
        } else {
            Err(Error::config(
                "extensions",
                format!(
                    "no {} pool for the inbox transaction: register a `sqlx::Pool` or a \
                     `SqlInbox` with `BusBuilder::extension`",
                    DB::LABEL
                ),
            ))
        };
        Box::pin(async move { inbox?.begin_for(self).await })
    }

    fn enqueue<'a, DB: SqlDatabase, E: Event>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: E,
    ) -> BoxFuture<'a, Result<Uuid, Error>> {
        let outbox = self.extension::<Outbox<DB>>().cloned().ok_or_else(|| {
            Error::config(
                "outbox",
                format!(
                    "no {} outbox for follow-on events: give the bus one with \
                     `BusBuilder::outbox`",
                    DB::LABEL
                ),
            )
        });
        let envelope = self.follow_on(Envelope::new(event));
        Box::pin(async move { outbox?.enqueue_envelope(conn, envelope).await })
    }
}
