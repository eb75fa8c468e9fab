//! The transactional outbox and the SQL inbox, on PostgreSQL (feature `postgres`) and SQLite
//! (feature `sqlite`), over [`sqlx`].
//!
//! **Outbox.** [`Outbox::enqueue`] writes an event into the `outbox` table inside *your*
//! transaction, next to your state change: roll the transaction back and there is no event;
//! commit it and the event is published eventually. A [`Dispatcher`] relays committed rows to
//! the configured [backend](crate::backend::Backend) in batches, retries failed publishes with
//! exponential backoff and jitter, and after [`OutboxConfig::retry_max`] attempts marks the row
//! `FAILED` and publishes it to the dead-letter topic (group `outbox`).
//!
//! **Inbox.** [`SqlInbox`] remembers which events each consumer group handled. It is the
//! pipeline's dedupe store ([`BusBuilder::inbox`](crate::BusBuilder::inbox)) and, through
//! [`ContextExt::transaction`], gives a handler a transaction that already holds the inbox row:
//! the handler's state change and the inbox row commit together, so its side effect happens
//! once even when the broker redelivers.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use eventbus::backend::memory::MemoryBackend;
//! use eventbus::outbox::sqlx::{self, Sqlite};
//! use eventbus::outbox::{sqlite, ContextExt, Outbox, SqlInbox};
//! use eventbus::{event, Bus, Context, Envelope, HandlerResult, Subscription};
//!
//! #[event(name = "order.placed", version = 1, key = order_id)]
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { order_id: String }
//!
//! async fn ship(ctx: Context, env: Envelope<OrderPlaced>) -> HandlerResult {
//!     // `None`: this group already handled the event; the side effect happened.
//!     let Some(mut tx) = ctx.transaction::<Sqlite>().await? else { return Ok(()) };
//!     sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
//!         .bind(&env.data.order_id)
//!         .execute(&mut *tx)
//!         .await?;
//!     tx.commit().await?;
//!     Ok(())
//! }
//!
//! let pool = sqlite::connect("app.db").await?;
//! sqlite::migrate(&pool).await?;
//! let backend = MemoryBackend::new();
//! let bus = Bus::builder()
//!     .backend(backend.clone())
//!     .inbox(std::sync::Arc::new(SqlInbox::new(pool.clone())))
//!     .extension(pool.clone())
//!     .subscribe(Subscription::new("order.*", ship))
//!     .start()
//!     .await?;
//!
//! let outbox = Outbox::new(pool.clone());
//! let dispatcher = outbox.dispatcher(bus.backend().clone()).start()?;
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind("o-1").execute(&mut *tx).await?;
//! outbox.enqueue(&mut tx, &OrderPlaced { order_id: "o-1".into() }).await?;
//! tx.commit().await?;
//! outbox.wake(); // relay now rather than at the next poll
//!
//! dispatcher.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! ## Schema and migrations
//!
//! Tables `outbox` (plus `outbox_archive`) and `inbox`, created by the SQL files in the
//! crate's `migrations/postgres` and `migrations/sqlite` directories. They are embedded
//! in the crate as `postgres::MIGRATOR` and `sqlite::MIGRATOR` (sqlx [`Migrator`]s) and
//! applied with `postgres::migrate(&pool)` / `sqlite::migrate(&pool)`; the files follow sqlx's
//! `<version>_<description>.sql` naming, so `sqlx migrate run --source` or a copy into your own
//! migrations directory works too. Migrations share sqlx's `_sqlx_migrations` table with your
//! own: run your migrator with `set_ignore_missing(true)` (ours does).
//!
//! ## Guarantees and choices
//!
//! - **At least once.** A row is marked `SENT` only after the backend accepted it. A dispatcher
//!   that dies between the two publishes the row again: consumers dedupe with the inbox.
//! - **Order per partition key.** Rows of one key are published in insertion (`id`) order; a
//!   row waiting for a retry holds back the later rows of its key; once it is `FAILED` (and
//!   dead-lettered) the next ones go. Rows without a key are independent. Insertion order is
//!   commit order when the transactions writing one key serialize on it (they usually update
//!   the same aggregate row); two concurrent transactions writing one key unserialized have no
//!   defined order.
//! - **Several dispatchers** (PostgreSQL): rows are claimed with `FOR UPDATE SKIP LOCKED` in
//!   the transaction that later marks them `SENT`; a dispatcher publishes a row of a key only if
//!   no earlier `PENDING` row of that key is held by another dispatcher or waiting for a retry,
//!   so no row is published by two dispatchers at once and order per key holds across them.
//!   `LISTEN eventbus_outbox` (a trigger notifies at commit) wakes dispatchers at once.
//!   The workers of one dispatcher ([`OutboxConfig::concurrency`]) each claim only their share
//!   of the keys (the key's `hashtext` modulo the worker count; rows without a key by id), so
//!   they never block one another; separate dispatchers do when their batches share keys.
//! - **SQLite**: one dispatcher per database file, one worker (`concurrency = 1`), WAL mode.
//!   It reads without a transaction and writes its results in a short one, so your own write
//!   transactions are never blocked for the duration of a publish. [`Outbox::wake`] relays at
//!   once after a commit in the same process.
//! - **Encryption at rest**: with a [`KeyRing`], payloads are sealed with AES-256-GCM under the
//!   active key and the row records the key id; old keys stay in the ring to decrypt older rows.
//!   Topic, event type, partition key and transport headers stay in clear (routing needs them).
//! - **A pass costs the same whatever the backlog**: each claim walks the partial index of
//!   `PENDING` rows in id order and stops at its batch, whatever the planner's statistics say
//!   (a burst PostgreSQL has not analyzed yet, an `ANALYZE` or `PRAGMA optimize` on SQLite
//!   taken during a backlog): PostgreSQL's pass runs with `enable_sort` off, SQLite's claim
//!   names its index (`INDEXED BY outbox_pending`). The `outbox_relay` bench prints the cost
//!   per event at a backlog of N and 10 N.
//! - **Cleanup**: `SENT` rows are deleted (or moved to `outbox_archive`) after
//!   [`Retention::sent`], in bounded batches, by the dispatcher; [`SqlInbox::cleanup`] does
//!   the same for inbox rows. `FAILED` rows stay until you [`Outbox::retry_failed`] them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_listener::Event as Signal;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::Pool;
use uuid::Uuid;

use crate::backend::{Backend, Message, MessageHeaders};
use crate::envelope::{Envelope, RawEnvelope};
use crate::error::Error;
use crate::event::Event;
use crate::retry::Backoff;

mod cleanup;
mod crypto;
mod dispatcher;
mod driver;
pub mod inbox;
mod owned;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use cleanup::{CleanupHandle, CleanupMode, Retention};
pub use crypto::KeyRing;
pub use dispatcher::{Dispatcher, DispatcherHandle, DispatcherStats};
pub use inbox::{ContextExt, SqlInbox};
/// The sqlx version this module is built on, for matching pool and transaction types.
pub use sqlx;

use crate::saga::store::SagaDriver;
use driver::{InboxDriver, NewRow, OutboxDriver};
pub(crate) use owned::BusOutbox;

/// The outbox on PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgOutbox = Outbox<sqlx::Postgres>;
/// The outbox on SQLite.
#[cfg(feature = "sqlite")]
pub type SqliteOutbox = Outbox<sqlx::Sqlite>;
/// The SQL inbox on PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgInbox = SqlInbox<sqlx::Postgres>;
/// The SQL inbox on SQLite.
#[cfg(feature = "sqlite")]
pub type SqliteInbox = SqlInbox<sqlx::Sqlite>;

/// A database the outbox and the SQL inbox run on: `sqlx::Postgres` (feature `postgres`) or
/// `sqlx::Sqlite` (feature `sqlite`). Sealed: implemented by this crate only.
pub trait SqlDatabase: sqlx::Database + OutboxDriver + InboxDriver + SagaDriver {}

impl<DB: sqlx::Database + OutboxDriver + InboxDriver + SagaDriver> SqlDatabase for DB {}

/// The dead-letter group name of events the outbox could not publish.
pub const DEAD_LETTER_GROUP: &str = "outbox";

/// State of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting to be published (possibly after a retry delay).
    Pending,
    /// Accepted by the backend.
    Sent,
    /// Given up after `retry_max` attempts; dead-lettered when its payload could be read.
    Failed,
}

impl OutboxState {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "PENDING",
            OutboxState::Sent => "SENT",
            OutboxState::Failed => "FAILED",
        }
    }

    /// Parses a `state` column value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "PENDING" => Some(OutboxState::Pending),
            "SENT" => Some(OutboxState::Sent),
            "FAILED" => Some(OutboxState::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for OutboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the `outbox` table.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxRow {
    /// Insertion order (identity / autoincrement).
    pub id: i64,
    /// The event's id (the envelope's `id`).
    pub event_id: Uuid,
    /// Destination topic.
    pub topic: String,
    /// Event type.
    pub event_type: String,
    /// Partition key: rows of one key are published in `id` order.
    pub partition_key: Option<String>,
    /// The envelope's JSON bytes, sealed when `key_id` is set.
    pub payload: Vec<u8>,
    /// Transport headers.
    pub headers: MessageHeaders,
    /// Id of the [`KeyRing`] key the payload is sealed with; `None` when stored in clear.
    pub key_id: Option<String>,
    /// Where the row is in its life.
    pub state: OutboxState,
    /// Publish attempts made (including a successful one).
    pub attempts: u32,
    /// The last publish error.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// Not published before this time (retry backoff).
    pub available_at: DateTime<Utc>,
    /// First failed publish attempt.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// When the backend accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

/// The outbox's backlog, for metrics: export `pending` as `event_outbox_backlog` and
/// `oldest_pending_age` as `event_publish_lag_seconds`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Age of the oldest waiting row; `None` when nothing waits.
    pub oldest_pending_age: Option<Duration>,
    /// Rows given up on (`FAILED`), which need a person.
    pub failed: u64,
}

/// Dispatcher and cleanup settings. Every field has a default; [`OutboxBuilder::build`]
/// validates them and names the offending setting (`outbox.batch_size`, ...).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// Rows claimed and published per pass (one backend call per pass). Default 500.
    pub batch_size: u32,
    /// Passes run at once by one dispatcher (PostgreSQL only; SQLite needs 1). Default 1.
    /// The workers split the partition keys between them (by the key's hash, rows without a
    /// key by id), so they never wait on each other's keys.
    pub concurrency: usize,
    /// Wait between passes when there is nothing to do; NOTIFY (PostgreSQL) and
    /// [`Outbox::wake`] cut it short. Default 200 ms.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Publish attempts before a row becomes `FAILED` and is dead-lettered. Default 10.
    pub retry_max: u32,
    /// Wait before each retry of a row (via `available_at`), and the dispatcher's pause after
    /// a failed pass. Default exponential from 500 ms to 60 s with jitter.
    pub backoff: Backoff,
    /// What happens to `SENT` rows.
    pub retention: Retention,
    /// How often a dispatcher with metrics reads the backlog into `event_outbox_backlog` and
    /// `event_publish_lag_seconds` (one count query). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            batch_size: 500,
            concurrency: 1,
            poll_interval: Duration::from_millis(200),
            retry_max: 10,
            backoff: Backoff::exponential(Duration::from_millis(500), Duration::from_secs(60)),
            retention: Retention::default(),
            metrics_interval: Duration::from_secs(5),
        }
    }
}

impl OutboxConfig {
    /// Largest accepted `batch_size`.
    pub const MAX_BATCH_SIZE: u32 = 10_000;

    /// Checks every value, naming the offending setting.
    pub fn validate(&self) -> Result<(), Error> {
        if self.batch_size == 0 || self.batch_size > Self::MAX_BATCH_SIZE {
            return Err(Error::config(
                "outbox.batch_size",
                format!(
                    "{} is not between 1 and {}",
                    self.batch_size,
                    Self::MAX_BATCH_SIZE
                ),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err(Error::config(
                "outbox.concurrency",
                format!("{} is not between 1 and 64", self.concurrency),
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config("outbox.poll_interval", "must be positive"));
        }
        if self.retry_max == 0 {
            return Err(Error::config("outbox.retry_max", "must be at least 1"));
        }
        if self.metrics_interval.is_zero() {
            return Err(Error::config("outbox.metrics_interval", "must be positive"));
        }
        self.backoff.validate("outbox")?;
        self.retention.validate()
    }
}

/// Configures an [`Outbox`].
#[must_use]
pub struct OutboxBuilder<DB: SqlDatabase> {
    pool: Pool<DB>,
    config: OutboxConfig,
    keyring: Option<KeyRing>,
    source: String,
}

impl<DB: SqlDatabase> OutboxBuilder<DB> {
    /// Replaces every setting.
    pub fn config(mut self, config: OutboxConfig) -> Self {
        self.config = config;
        self
    }

    /// Rows per dispatcher pass (`outbox.batch_size`).
    pub fn batch_size(mut self, rows: u32) -> Self {
        self.config.batch_size = rows;
        self
    }

    /// Passes one dispatcher runs at once (`outbox.concurrency`).
    pub fn concurrency(mut self, passes: usize) -> Self {
        self.config.concurrency = passes;
        self
    }

    /// Idle wait between passes (`outbox.poll_interval`).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// Attempts before a row is dead-lettered (`outbox.retry_max`).
    pub fn retry_max(mut self, attempts: u32) -> Self {
        self.config.retry_max = attempts;
        self
    }

    /// Retry backoff (`outbox.backoff`).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Retention of `SENT` rows (`outbox.retention`).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.config.retention = retention;
        self
    }

    /// How often the dispatcher refreshes the backlog metrics (`outbox.metrics_interval`).
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.config.metrics_interval = every;
        self
    }

    /// Seals payloads with the ring's active key, and decrypts with any of its keys.
    pub fn encryption(mut self, keyring: KeyRing) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The `source` stamped on envelopes that have none; defaults to `eventbus`.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Validates the settings (naming the bad one) and builds the outbox.
    pub fn build(self) -> Result<Outbox<DB>, Error> {
        self.config.validate()?;
        DB::outbox_check_config(&self.config)?;
        if self.source.trim().is_empty() {
            return Err(Error::config("outbox.source", "is empty"));
        }
        Ok(Outbox::assemble(
            self.pool,
            self.config,
            self.keyring,
            self.source,
        ))
    }
}

/// The transactional outbox over a sqlx pool. Cheap to clone; clones share configuration and
/// the in-process wake-up signal.
pub struct Outbox<DB: SqlDatabase> {
    inner: Arc<OutboxInner<DB>>,
}

struct OutboxInner<DB: SqlDatabase> {
    pool: Pool<DB>,
    config: OutboxConfig,
    keyring: Option<Arc<KeyRing>>,
    /// The `source` of envelopes enqueued without one.
    source: String,
    wake: Arc<Signal>,
}

impl<DB: SqlDatabase> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: SqlDatabase> std::fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("database", &DB::LABEL)
            .field("config", &self.inner.config)
            .field("keyring", &self.inner.keyring)
            .finish()
    }
}

impl<DB: SqlDatabase> Outbox<DB> {
    /// An outbox with the default settings, no encryption, source `eventbus`.
    pub fn new(pool: Pool<DB>) -> Self {
        Self::assemble(pool, OutboxConfig::default(), None, "eventbus".to_owned())
    }

    fn assemble(
        pool: Pool<DB>,
        config: OutboxConfig,
        keyring: Option<KeyRing>,
        source: String,
    ) -> Self {
        Outbox {
            inner: Arc::new(OutboxInner {
                pool,
                config,
                keyring: keyring.map(Arc::new),
                source,
                wake: Arc::new(Signal::new()),
            }),
        }
    }

    /// Starts configuring an outbox over `pool`.
    pub fn builder(pool: Pool<DB>) -> OutboxBuilder<DB> {
        OutboxBuilder {
            pool,
            config: OutboxConfig::default(),
            keyring: None,
            source: "eventbus".to_owned(),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }

    /// The settings.
    pub fn config(&self) -> &OutboxConfig {
        &self.inner.config
    }

    /// Writes `event` (with a fresh envelope) into the outbox inside the caller's transaction
    /// (`&mut tx` works where a connection is expected); returns the event id. Nothing is
    /// published until the transaction commits.
    pub async fn enqueue<E: Event + Clone>(
        &self,
        conn: &mut DB::Connection,
        event: &E,
    ) -> Result<Uuid, Error> {
        self.enqueue_envelope(conn, Envelope::new(event.clone()))
            .await
    }

    /// Writes an envelope (tenant, correlation, headers set by the caller) into the outbox
    /// inside the caller's transaction; returns its id.
    pub async fn enqueue_envelope<E: Event>(
        &self,
        conn: &mut DB::Connection,
        envelope: Envelope<E>,
    ) -> Result<Uuid, Error> {
        let id = envelope.id;
        let row = self.row(id, self.encode(envelope)?)?;
        DB::outbox_insert(conn, vec![row])
            .await
            .map_err(|e| db_error::<DB>("outbox enqueue", e))?;
        Ok(id)
    }

    /// Writes several events in one go (one statement on PostgreSQL), in order, inside the
    /// caller's transaction; returns their ids.
    pub async fn enqueue_batch<'e, E: Event + Clone>(
        &self,
        conn: &mut DB::Connection,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Uuid>, Error> {
        let envelopes: Vec<Envelope<E>> = events
            .into_iter()
            .map(|e| Envelope::new(e.clone()))
            .collect();
        self.enqueue_envelopes(conn, envelopes).await
    }

    /// Writes several envelopes in one go, in order, inside the caller's transaction.
    pub async fn enqueue_envelopes<E: Event>(
        &self,
        conn: &mut DB::Connection,
        envelopes: impl IntoIterator<Item = Envelope<E>>,
    ) -> Result<Vec<Uuid>, Error> {
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for envelope in envelopes {
            ids.push(envelope.id);
            rows.push(self.row(envelope.id, self.encode(envelope)?)?);
        }
        if !rows.is_empty() {
            DB::outbox_insert(conn, rows)
                .await
                .map_err(|e| db_error::<DB>("outbox enqueue", e))?;
        }
        Ok(ids)
    }

    /// Writes an already encoded message (forwarding, replay) inside the caller's
    /// transaction; the event id is read from its envelope.
    pub async fn enqueue_message(
        &self,
        conn: &mut DB::Connection,
        message: Message,
    ) -> Result<Uuid, Error> {
        let id = RawEnvelope::decode(&message.payload)?.id;
        let row = self.row(id, message)?;
        DB::outbox_insert(conn, vec![row])
            .await
            .map_err(|e| db_error::<DB>("outbox enqueue", e))?;
        Ok(id)
    }

    /// Writes `envelope` inside the caller's transaction to be published at `due` (delayed
    /// delivery that survives restarts: the row waits in the outbox). A scheduled event is
    /// published without its partition key, so it never holds back the events of its key
    /// while it waits; `created_at` is the due time, so the publish lag measures lateness.
    pub async fn schedule_envelope<E: Event>(
        &self,
        conn: &mut DB::Connection,
        envelope: Envelope<E>,
        due: DateTime<Utc>,
    ) -> Result<Uuid, Error> {
        self.enqueue_message_at(conn, self.encode(envelope)?, Some(due))
            .await
    }

    /// Like [`Outbox::enqueue_message`], published at `due` when given (see
    /// [`Outbox::schedule_envelope`]).
    pub(crate) async fn enqueue_message_at(
        &self,
        conn: &mut DB::Connection,
        mut message: Message,
        due: Option<DateTime<Utc>>,
    ) -> Result<Uuid, Error> {
        let id = RawEnvelope::decode(&message.payload)?.id;
        if due.is_some() {
            message.key = None;
        }
        let mut row = self.row(id, message)?;
        row.due = due;
        DB::outbox_insert(conn, vec![row])
            .await
            .map_err(|e| db_error::<DB>("outbox enqueue", e))?;
        Ok(id)
    }

    /// Encodes an envelope as the publisher would, stamped with this outbox's source.
    fn encode<E: Event>(&self, envelope: Envelope<E>) -> Result<Message, Error> {
        crate::wire::encode(envelope, &self.inner.source, Utc::now)
    }

    fn row(&self, event_id: Uuid, message: Message) -> Result<NewRow, Error> {
        let headers = serde_json::to_string(&message.headers).map_err(|source| Error::Encode {
            event_type: message.event_type.to_string(),
            source,
        })?;
        let (key_id, payload) = match &self.inner.keyring {
            Some(ring) => {
                let (key_id, sealed) = ring.seal(&message.payload, event_id)?;
                (Some(key_id.to_owned()), sealed)
            }
            None => (None, message.payload.to_vec()),
        };
        Ok(NewRow {
            event_id,
            topic: message.topic.to_string(),
            event_type: message.event_type.to_string(),
            partition_key: message.key.as_deref().map(str::to_owned),
            payload,
            headers,
            key_id,
            due: None,
        })
    }

    /// Wakes this process's dispatchers of this outbox now, instead of at their next poll.
    /// Call it after committing (SQLite has no LISTEN/NOTIFY; on PostgreSQL the commit
    /// notifies every dispatcher anyway).
    pub fn wake(&self) {
        self.inner.wake.notify(usize::MAX);
    }

    /// Rows waiting, the age of the oldest, and rows given up on. `pending` counts rows, which
    /// costs time proportional to the backlog.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        DB::outbox_backlog(&self.inner.pool)
            .await
            .map_err(|e| db_error::<DB>("outbox backlog", e))
    }

    /// Up to `limit` rows in `state`, oldest first (inspection, tooling). Payloads are as
    /// stored (sealed when encrypted).
    pub async fn rows(&self, state: OutboxState, limit: u32) -> Result<Vec<OutboxRow>, Error> {
        DB::outbox_rows(&self.inner.pool, state, limit)
            .await
            .map_err(|e| db_error::<DB>("outbox read", e))
    }

    /// Puts `FAILED` rows back to `PENDING` with their attempts reset (after fixing the cause);
    /// returns how many were requeued. Running dispatchers pick them up within about a second
    /// (they are older than the rows being relayed; see the claim floor in `outbox::postgres`).
    pub async fn retry_failed(&self, ids: &[i64]) -> Result<u64, Error> {
        let n = DB::outbox_retry_failed(&self.inner.pool, ids)
            .await
            .map_err(|e| db_error::<DB>("outbox requeue", e))?;
        self.wake();
        Ok(n)
    }

    /// Deletes (or archives) `SENT` rows older than [`Retention::sent`], and saga instances
    /// completed longer than [`Retention::completed_sagas`] ago, in batches of
    /// [`Retention::batch_size`], until none is left; returns how many rows. Each does nothing
    /// when its retention is off. The dispatcher runs it every [`Retention::interval`].
    pub async fn cleanup(&self) -> Result<u64, Error> {
        let retention = &self.inner.config.retention;
        let archive = retention.mode == CleanupMode::Archive;
        let limit = retention.batch_size;
        let mut removed = 0;
        if let Some(age) = retention.sent {
            removed += cleanup::drain(limit, || {
                DB::outbox_cleanup_sent(&self.inner.pool, age, limit, archive)
            })
            .await
            .map_err(|e| db_error::<DB>("outbox cleanup", e))?;
        }
        if let Some(age) = retention.completed_sagas {
            removed += cleanup::drain(limit, || {
                DB::saga_cleanup(&self.inner.pool, age, limit, archive)
            })
            .await
            .map_err(|e| db_error::<DB>("saga cleanup", e))?;
        }
        Ok(removed)
    }

    /// The `source` stamped on envelopes enqueued without one.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// A dispatcher relaying this outbox to `backend` (see [`Dispatcher::start`]).
    pub fn dispatcher(&self, backend: Arc<dyn Backend>) -> Dispatcher<DB> {
        Dispatcher::new(self.clone(), backend)
    }

    pub(crate) fn keyring(&self) -> Option<&Arc<KeyRing>> {
        self.inner.keyring.as_ref()
    }

    pub(crate) fn wake_signal(&self) -> &Arc<Signal> {
        &self.inner.wake
    }
}

/// Maps a database error into the crate's error, naming the database and the operation.
pub(crate) fn db_error<DB: SqlDatabase>(operation: &'static str, error: sqlx::Error) -> Error {
    Error::backend(DB::LABEL, operation, error)
}

/// Builds a migrator from embedded `(version, description, sql)` files, as `sqlx::migrate!`
/// would (same checksums), tolerant of the application's own migrations in the shared
/// `_sqlx_migrations` table.
pub(crate) fn embedded_migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations: Vec<Migration> = files
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into(),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: migrations.into(),
        ignore_missing: true,
        locking: true,
        no_tx: false,
    }
}

/// Milliseconds of a duration, saturating, for SQL intervals.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
