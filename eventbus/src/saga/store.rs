//! The seam between the saga runner and the SQL of each database: one [`SagaDriver`] impl per
//! database (`postgres.rs`, `sqlite.rs`). Public so it can bound
//! [`SqlDatabase`](crate::outbox::SqlDatabase), in a private module so nothing outside the
//! crate can name or implement it.
#![allow(unreachable_pub)]

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Pool;

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    /// The state, as JSON.
    pub state: String,
    /// Saves so far (1 after the first).
    pub version: i64,
    /// The instance completed.
    pub completed: bool,
}

/// The SQL of the saga table on one database.
pub trait SagaDriver: sqlx::Database {
    /// The instance `(saga, id)`, on `conn` (the step's transaction, or a pooled connection).
    fn saga_load<'c>(
        conn: &'c mut Self::Connection,
        saga: &'c str,
        id: &'c str,
    ) -> BoxFuture<'c, Result<Option<SagaRow>, sqlx::Error>>;

    /// Creates the instance at version 1; `false` when it exists already (another step
    /// created it first).
    fn saga_insert<'c>(
        conn: &'c mut Self::Connection,
        saga: &'c str,
        id: &'c str,
        state: &'c str,
        completed: bool,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>>;

    /// Saves the instance loaded at `version`; `false` when another step saved it since.
    fn saga_update<'c>(
        conn: &'c mut Self::Connection,
        saga: &'c str,
        id: &'c str,
        state: &'c str,
        version: i64,
        completed: bool,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>>;

    /// Deletes (or archives) up to `limit` instances completed more than `age` ago.
    fn saga_cleanup(
        pool: &Pool<Self>,
        age: Duration,
        limit: u32,
        archive: bool,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
}
