//! The seam between the database-independent outbox/inbox logic and the SQL of each database:
//! one [`OutboxDriver`] and one [`InboxDriver`] impl per database (in `postgres.rs`,
//! `sqlite.rs`, `inbox/postgres.rs`, `inbox/sqlite.rs`).
//!
//! The traits are `pub` so they can bound the public [`SqlDatabase`](super::SqlDatabase), but
//! live in a private module: nothing outside the crate can name or implement them.
#![allow(unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Pool, Transaction};
use uuid::Uuid;

use super::{Backlog, OutboxConfig, OutboxRow, OutboxState};
use crate::clock::Clock;
use crate::error::Error;

/// A row a dispatcher pass claimed: the columns that publishing, retrying and dead-lettering
/// it read, and no others (a pass decodes every column it selects on every row).
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: i64,
    pub event_id: Uuid,
    /// Shared with the message it becomes, and with the claim's other rows of the same topic.
    pub topic: Arc<str>,
    /// Shared as `topic` is.
    pub event_type: Arc<str>,
    pub partition_key: Option<Arc<str>>,
    pub payload: Arc<[u8]>,
    pub headers: crate::backend::MessageHeaders,
    pub key_id: Option<String>,
    /// Publish attempts made so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub first_failed_at: Option<DateTime<Utc>>,
}

/// `text` as shared text: `previous` again when it holds the same text (the rows of a claim
/// mostly share their topic and event type), else a new copy.
pub fn shared_as(text: &str, previous: Option<&Arc<str>>) -> Arc<str> {
    match previous {
        Some(previous) if **previous == *text => previous.clone(),
        _ => Arc::from(text),
    }
}

/// Decodes a claim's rows in order, each given the row decoded before it (see [`shared_as`]).
pub fn decode_claim<R>(
    rows: &[R],
    decode: impl Fn(&R, Option<&ClaimedRow>) -> Result<ClaimedRow, sqlx::Error>,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let mut claimed: Vec<ClaimedRow> = Vec::with_capacity(rows.len());
    for row in rows {
        let decoded = decode(row, claimed.last())?;
        claimed.push(decoded);
    }
    Ok(claimed)
}

/// A row to insert, already encoded (and sealed).
#[derive(Debug, Clone)]
pub struct NewRow {
    pub event_id: Uuid,
    pub topic: String,
    pub event_type: String,
    pub partition_key: Option<String>,
    pub payload: Vec<u8>,
    /// Transport headers as a JSON object.
    pub headers: String,
    pub key_id: Option<String>,
    /// When a scheduled row falls due (its `created_at` and `available_at`); `None`: now.
    pub due: Option<chrono::DateTime<chrono::Utc>>,
}

/// A row whose publish failed and will be retried after `delay`.
#[derive(Debug, Clone)]
pub struct RetryRow {
    pub id: i64,
    pub attempts: u32,
    pub error: String,
    pub delay: Duration,
}

/// A row given up on.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub id: i64,
    pub attempts: u32,
    pub error: String,
}

/// What a pass writes back.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Accepted by the backend: `SENT`.
    pub sent: Vec<i64>,
    /// To retry later: attempts, error and `available_at` updated.
    pub retry: Vec<RetryRow>,
    /// Given up: `FAILED`.
    pub failed: Vec<FailedRow>,
}

impl Settlement {
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.retry.is_empty() && self.failed.is_empty()
    }
}

/// Rows claimed by one dispatcher pass. On PostgreSQL it holds the transaction whose row locks
/// keep other dispatchers off them; dropping it unsettled rolls back (the rows stay `PENDING`).
pub trait Claim: Send {
    /// Rows locked or read by the claim, before the per-key cut.
    fn claimed(&self) -> usize;
    /// Where the next claim may start once this one is settled, when the claim saw no
    /// `PENDING` row between the floor and its own last row that it does not hold. The
    /// dispatcher lowers it to any claimed row still `PENDING` after the pass.
    fn next_floor(&self) -> Option<i64> {
        None
    }
    /// The rows to publish, in `id` order, already cut so that every row of a key comes
    /// before any row of that key held elsewhere or waiting for a retry.
    fn take_rows(&mut self) -> Vec<ClaimedRow>;
    /// Writes the results and releases the claim.
    fn settle(
        self: Box<Self>,
        settlement: Settlement,
    ) -> BoxFuture<'static, Result<(), sqlx::Error>>;
}

/// The rows one worker of a dispatcher claims: the workers of a dispatcher split the
/// partition keys between them (and the rows without a key, by id), so they never hold rows
/// of one key at once. Without it, consecutive batches sharing keys (the common case: a
/// batch of 500 rows over a few hundred keys) blocked one another, and a second worker made
/// the relay slower than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker's share, `0..count`.
    pub index: u32,
    /// How many workers the dispatcher runs; 1 claims every row.
    pub count: u32,
}

impl Shard {
    /// The shard of a dispatcher with one worker: every row.
    pub const ALL: Shard = Shard { index: 0, count: 1 };
}

/// Outbox SQL of one database.
pub trait OutboxDriver: sqlx::Database + Sized {
    /// Name for errors and logs: `postgres`, `sqlite`.
    const LABEL: &'static str;

    /// Database-specific checks of the settings.
    fn outbox_check_config(config: &OutboxConfig) -> Result<(), Error>;

    /// Inserts rows, in order, on the caller's connection (inside its transaction).
    fn outbox_insert(
        conn: &mut Self::Connection,
        rows: Vec<NewRow>,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// Claims up to `limit` available `PENDING` rows with `id >= floor`, of `shard` only (a
    /// database with one worker a dispatcher may ignore it).
    fn outbox_claim(
        pool: &Pool<Self>,
        limit: u32,
        floor: i64,
        shard: Shard,
    ) -> BoxFuture<'_, Result<Box<dyn Claim>, sqlx::Error>>;

    /// The smallest id that may still be `PENDING` (a claim's `floor`): scans below it would
    /// only walk rows already sent. Rows that turn up below it later (a late commit, a requeue)
    /// wait for the next refresh.
    fn outbox_floor(pool: &Pool<Self>) -> BoxFuture<'_, Result<i64, sqlx::Error>>;

    /// Counts the backlog.
    fn outbox_backlog(pool: &Pool<Self>) -> BoxFuture<'_, Result<Backlog, sqlx::Error>>;

    /// Reads rows in a state, oldest first.
    fn outbox_rows(
        pool: &Pool<Self>,
        state: OutboxState,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>>;

    /// `FAILED` → `PENDING` for `ids`.
    fn outbox_retry_failed<'a>(
        pool: &'a Pool<Self>,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Deletes or archives up to `limit` `SENT` rows older than `age`; returns how many.
    fn outbox_cleanup_sent(
        pool: &Pool<Self>,
        age: Duration,
        limit: u32,
        archive: bool,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;

    /// A task waking `wake` whenever rows are committed (LISTEN/NOTIFY), or `None` when the
    /// database cannot tell.
    fn outbox_listen(
        pool: Pool<Self>,
        wake: std::sync::Arc<event_listener::Event>,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Option<BoxFuture<'static, ()>>;
}

/// Inbox SQL of one database.
pub trait InboxDriver: sqlx::Database + Sized {
    /// Begins a transaction fit for a handler's state change (SQLite: `BEGIN IMMEDIATE`).
    fn inbox_begin(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>>;

    /// Inserts `(group, id)` on the caller's connection unless present; true if inserted.
    /// Waits for a concurrent uncommitted insert of the same pair and then reports it.
    fn inbox_insert<'c>(
        conn: &'c mut Self::Connection,
        group: &'c str,
        id: Uuid,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>>;

    /// Inserts `(group, id)` unless present, in its own statement.
    fn inbox_record<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Whether `(group, id)` is recorded.
    fn inbox_contains<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>>;

    /// Deletes up to `limit` rows processed more than `age` ago; returns how many.
    fn inbox_cleanup(
        pool: &Pool<Self>,
        age: Duration,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>>;
}

/// A pooled connection that goes back to the pool only when [`Guarded::release`]d after its
/// transaction ended; dropped any other way (an error, a cancelled pass) it is closed, and the
/// server rolls back whatever it was doing. sqlx 0.8's `begin` is not cancel-safe
/// (launchbadge/sqlx#3932 for SQLite, #4393 for PostgreSQL): an aborted dispatcher must never
/// hand the application a connection stuck inside a transaction.
pub struct Guarded<DB: sqlx::Database> {
    conn: Option<PoolConnection<DB>>,
}

impl<DB: sqlx::Database> Guarded<DB> {
    pub async fn acquire(pool: &Pool<DB>) -> Result<Self, sqlx::Error> {
        Ok(Guarded {
            conn: Some(pool.acquire().await?),
        })
    }

    /// The connection, for queries (and the `BEGIN`/`COMMIT` of its transaction).
    pub fn conn(&mut self) -> &mut DB::Connection {
        match self.conn.as_mut() {
            Some(conn) => conn,
            None => unreachable!("a guarded connection is only taken by release or drop"),
        }
    }

    /// Returns the connection to the pool; call once its transaction committed.
    pub fn release(mut self) {
        drop(self.conn.take());
    }
}

impl<DB: sqlx::Database> Drop for Guarded<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Keeps, per partition key, the claimed rows before the first row of that key held elsewhere
/// (`first_foreign`: the smallest such id per key). Rows without a key are always kept.
pub fn cut_blocked(rows: Vec<ClaimedRow>, first_foreign: &HashMap<String, i64>) -> Vec<ClaimedRow> {
    if first_foreign.is_empty() {
        return rows;
    }
    rows.into_iter()
        .filter(|row| match &row.partition_key {
            None => true,
            Some(key) => first_foreign
                .get(&**key)
                .is_none_or(|&first| row.id < first),
        })
        .collect()
}

/// Keeps the rows in `locked`, and per partition key only those before the first row that is
/// not (someone else took it between a release and a re-lock: later rows of its key must wait).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub fn keep_locked(rows: Vec<ClaimedRow>, locked: &HashSet<i64>) -> Vec<ClaimedRow> {
    let mut lost: HashSet<Arc<str>> = HashSet::new();
    rows.into_iter()
        .filter(|row| {
            let held = locked.contains(&row.id);
            match &row.partition_key {
                None => held,
                Some(key) if lost.contains(&**key) => false,
                Some(key) => {
                    if !held {
                        lost.insert(key.clone());
                    }
                    held
                }
            }
        })
        .collect()
}

/// `(ids, keys)` of the keyed rows, for the foreign-row query.
pub fn keyed(rows: &[ClaimedRow]) -> (Vec<i64>, Vec<&str>) {
    rows.iter()
        .filter_map(|r| r.partition_key.as_deref().map(|k| (r.id, k)))
        .unzip()
}

/// Converts a stored attempt count.
pub fn attempts(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// Parses the stored headers; malformed headers read as none rather than blocking the row.
pub fn headers(json: &str) -> crate::backend::MessageHeaders {
    serde_json::from_str(json).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, key: Option<&str>) -> ClaimedRow {
        ClaimedRow {
            id,
            event_id: Uuid::now_v7(),
            topic: "t".into(),
            event_type: "t".into(),
            partition_key: key.map(Arc::from),
            payload: Arc::from([]),
            headers: Default::default(),
            key_id: None,
            attempts: 0,
            last_error: None,
            first_failed_at: None,
        }
    }

    #[test]
    fn cut_keeps_the_prefix_of_each_key_before_a_foreign_row() {
        let rows = vec![
            row(1, Some("a")),
            row(2, Some("b")),
            row(3, None),
            row(5, Some("a")),
            row(6, Some("b")),
            row(8, Some("a")),
        ];
        let foreign = HashMap::from([("a".to_owned(), 4), ("b".to_owned(), 0)]);
        let kept: Vec<i64> = cut_blocked(rows, &foreign).iter().map(|r| r.id).collect();
        assert_eq!(kept, [1, 3]);
    }

    #[test]
    fn a_claims_rows_share_their_topic_until_it_changes() {
        let fetched = [
            (1, "a.created"),
            (2, "a.created"),
            (3, "b.created"),
            (4, "b.created"),
        ];
        let rows = decode_claim(&fetched, |&(id, topic), previous| {
            let mut decoded = row(id, None);
            decoded.topic = shared_as(topic, previous.map(|p| &p.topic));
            Ok(decoded)
        })
        .expect("decoded");
        let topics: Vec<&str> = rows.iter().map(|r| &*r.topic).collect();
        assert_eq!(topics, ["a.created", "a.created", "b.created", "b.created"]);
        assert!(
            Arc::ptr_eq(&rows[0].topic, &rows[1].topic),
            "one copy of `a.created`"
        );
        assert!(
            Arc::ptr_eq(&rows[2].topic, &rows[3].topic),
            "one copy of `b.created`"
        );
    }

    #[test]
    fn keep_locked_stops_a_key_at_its_first_lost_row() {
        let rows = vec![
            row(1, Some("a")),
            row(2, Some("b")),
            row(3, None),
            row(4, Some("a")),
            row(5, None),
        ];
        let locked = HashSet::from([2, 4, 5]);
        let kept: Vec<i64> = keep_locked(rows, &locked).iter().map(|r| r.id).collect();
        assert_eq!(kept, [2, 5], "`a` lost row 1, so its row 4 waits");
    }
}
