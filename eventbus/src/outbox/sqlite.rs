//! The outbox on SQLite: migrations, a WAL-mode pool, enqueue and the single dispatcher's
//! claim. Times are stored as Unix milliseconds (UTC).
//!
//! One dispatcher per database file with one worker: SQLite has one writer, and the per-key
//! order relies on nobody else publishing the same rows. The dispatcher reads the batch
//! outside any transaction and writes the results in one short `BEGIN IMMEDIATE`
//! transaction, so your own writes never wait for a publish.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_listener::Event as Signal;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Executor, Pool, Row, Sqlite, SqlitePool};

use super::driver::{self, Claim, ClaimedRow, Guarded, NewRow, OutboxDriver, Settlement, Shard};
use super::{embedded_migrator, millis, Backlog, OutboxConfig, OutboxRow, OutboxState};
use crate::clock::Clock;
use crate::error::Error;

/// The outbox, inbox, saga and snapshot migrations for SQLite (`migrations/sqlite`), embedded. Run them with
/// [`migrate`] (which also switches the file to WAL mode) or `MIGRATOR.run(&pool)`.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    embedded_migrator(&[
        (
            20250101000001,
            "eventbus outbox",
            include_str!("../../migrations/sqlite/20250101000001_eventbus_outbox.sql"),
        ),
        (
            20250101000002,
            "eventbus inbox",
            include_str!("../../migrations/sqlite/20250101000002_eventbus_inbox.sql"),
        ),
        (
            20250101000003,
            "eventbus saga",
            include_str!("../../migrations/sqlite/20250101000003_eventbus_saga.sql"),
        ),
        (
            20250101000004,
            "eventbus snapshot",
            include_str!("../../migrations/sqlite/20250101000004_eventbus_snapshot.sql"),
        ),
    ])
});

/// Switches the database to WAL mode and creates or upgrades the `outbox`, `outbox_archive`
/// and `inbox` tables. Idempotent.
pub async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(pool)
        .await
        .map_err(|e| Error::backend("sqlite", "switching to WAL mode", e))?;
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| Error::backend("sqlite", "running the outbox migrations", e))
}

/// Connection options for an outbox database file: created if missing, WAL journal,
/// `synchronous = FULL` (a commit survives power loss, so a committed event is never lost),
/// 10 s busy timeout.
pub fn connect_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
}

/// A pool over the database file at `path` with [`connect_options`].
pub async fn connect(path: impl AsRef<Path>) -> Result<SqlitePool, Error> {
    SqlitePoolOptions::new()
        .connect_with(connect_options(path))
        .await
        .map_err(|e| Error::backend("sqlite", "opening the database", e))
}

const COLUMNS: &str = "id, event_id, topic, event_type, partition_key, payload, headers, key_id, \
                       state, attempts, last_error, created_at, available_at, first_failed_at, \
                       sent_at";

/// The columns a pass reads of each row it claims (see [`ClaimedRow`]).
const CLAIMED_COLUMNS: &str = "id, event_id, topic, event_type, partition_key, payload, headers, \
                               key_id, attempts, last_error, first_failed_at";

const INSERT: &str = "INSERT INTO outbox \
    (event_id, topic, event_type, partition_key, payload, headers, key_id, created_at, available_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)";

/// The oldest available `PENDING` rows, through the partial index of `PENDING` rows whatever
/// the planner's statistics say: with statistics of a backlog (after `ANALYZE` or
/// `PRAGMA optimize`) SQLite would rather walk the table in id order from its first row, past
/// every `SENT` row still kept, on every pass.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMED_COLUMNS} FROM outbox INDEXED BY outbox_pending \
         WHERE state = 'PENDING' AND available_at <= ?1 ORDER BY id LIMIT ?2"
    )
});

/// Per claimed key, the first earlier `PENDING` row this pass does not hold. With one
/// dispatcher, the claim holds every available row up to its last one, so only a row waiting
/// for a retry (`attempts > 0`, index `outbox_retrying`) can be missing. `?1` is a JSON array of
/// `[id, key]`.
const FIRST_FOREIGN: &str = "\
    WITH claimed(id, key) AS (SELECT value ->> 0, value ->> 1 FROM json_each(?1)), \
         last AS (SELECT key, max(id) AS last_id FROM claimed GROUP BY key) \
    SELECT l.key, min(o.id) \
    FROM last l \
    JOIN outbox o ON o.partition_key = l.key AND o.state = 'PENDING' AND o.attempts > 0 \
                 AND o.id < l.last_id \
    WHERE o.id NOT IN (SELECT id FROM claimed) \
    GROUP BY l.key";

const MARK_SENT: &str = "UPDATE outbox SET state = 'SENT', sent_at = ?1, attempts = attempts + 1 \
    WHERE id IN (SELECT value FROM json_each(?2))";

const MARK_RETRY: &str = "UPDATE outbox SET attempts = ?1, last_error = ?2, available_at = ?3, \
    first_failed_at = COALESCE(first_failed_at, ?4) WHERE id = ?5";

const MARK_FAILED: &str = "UPDATE outbox SET state = 'FAILED', attempts = ?1, last_error = ?2, \
    first_failed_at = COALESCE(first_failed_at, ?3) WHERE id = ?4";

const BACKLOG: &str = "SELECT \
    (SELECT count(*) FROM outbox WHERE state = 'PENDING'), \
    (SELECT count(*) FROM outbox WHERE state = 'FAILED'), \
    (SELECT min(created_at) FROM outbox WHERE state = 'PENDING')";

const RETRY_FAILED: &str = "UPDATE outbox SET state = 'PENDING', attempts = 0, available_at = ?1, \
    first_failed_at = NULL WHERE state = 'FAILED' AND id IN (SELECT value FROM json_each(?2))";

const SENT_BATCH: &str = "SELECT id FROM outbox WHERE state = 'SENT' AND sent_at <= ?1 \
    ORDER BY sent_at LIMIT ?2";

const DELETE_IDS: &str = "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1))";

const ARCHIVE_IDS: &str = "INSERT INTO outbox_archive (id, event_id, topic, event_type, \
    partition_key, payload, headers, key_id, attempts, created_at, sent_at, archived_at) \
    SELECT id, event_id, topic, event_type, partition_key, payload, headers, key_id, attempts, \
           created_at, sent_at, ?2 \
    FROM outbox WHERE id IN (SELECT value FROM json_each(?1))";

/// Now, in stored form.
pub(crate) use crate::clock::unix_ms as now_ms;

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn decode(row: &SqliteRow) -> Result<OutboxRow, sqlx::Error> {
    let state: String = row.try_get(8)?;
    Ok(OutboxRow {
        id: row.try_get(0)?,
        event_id: row.try_get(1)?,
        topic: row.try_get(2)?,
        event_type: row.try_get(3)?,
        partition_key: row.try_get(4)?,
        payload: row.try_get(5)?,
        headers: driver::headers(row.try_get(6)?),
        key_id: row.try_get(7)?,
        state: OutboxState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown outbox state `{state}`").into()))?,
        attempts: driver::attempts(row.try_get(9)?),
        last_error: row.try_get(10)?,
        created_at: time(row.try_get(11)?),
        available_at: time(row.try_get(12)?),
        first_failed_at: row.try_get::<Option<i64>, _>(13)?.map(time),
        sent_at: row.try_get::<Option<i64>, _>(14)?.map(time),
    })
}

/// Decodes a claimed row; `previous` is the row before it in the claim.
fn decode_claimed(
    row: &SqliteRow,
    previous: Option<&ClaimedRow>,
) -> Result<ClaimedRow, sqlx::Error> {
    let key: Option<&str> = row.try_get(4)?;
    let payload: &[u8] = row.try_get(5)?;
    Ok(ClaimedRow {
        id: row.try_get(0)?,
        event_id: row.try_get(1)?,
        topic: driver::shared_as(row.try_get(2)?, previous.map(|p| &p.topic)),
        event_type: driver::shared_as(row.try_get(3)?, previous.map(|p| &p.event_type)),
        partition_key: key.map(Arc::from),
        payload: Arc::from(payload),
        headers: driver::headers(row.try_get(6)?),
        key_id: row.try_get(7)?,
        attempts: driver::attempts(row.try_get(8)?),
        last_error: row.try_get(9)?,
        first_failed_at: row.try_get::<Option<i64>, _>(10)?.map(time),
    })
}

fn json_ids(ids: impl IntoIterator<Item = i64>) -> String {
    let ids: Vec<i64> = ids.into_iter().collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned())
}

/// Rows read by the single dispatcher; nothing is held until the settlement.
struct SqliteClaim {
    pool: SqlitePool,
    claimed: usize,
    rows: Vec<ClaimedRow>,
}

impl Claim for SqliteClaim {
    fn claimed(&self) -> usize {
        self.claimed
    }

    fn take_rows(&mut self) -> Vec<ClaimedRow> {
        std::mem::take(&mut self.rows)
    }

    fn settle(self: Box<Self>, s: Settlement) -> BoxFuture<'static, Result<(), sqlx::Error>> {
        let pool = self.pool;
        Box::pin(async move {
            if s.is_empty() {
                return Ok(());
            }
            let now = now_ms();
            let mut conn = Guarded::acquire(&pool).await?;
            let tx: &mut sqlx::SqliteConnection = conn.conn();
            tx.execute("BEGIN IMMEDIATE").await?;
            if !s.sent.is_empty() {
                sqlx::query(MARK_SENT)
                    .bind(now)
                    .bind(json_ids(s.sent))
                    .execute(&mut *tx)
                    .await?;
            }
            for r in &s.retry {
                sqlx::query(MARK_RETRY)
                    .bind(i64::from(r.attempts))
                    .bind(&r.error)
                    .bind(now.saturating_add(millis(r.delay)))
                    .bind(now)
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?;
            }
            for r in &s.failed {
                sqlx::query(MARK_FAILED)
                    .bind(i64::from(r.attempts))
                    .bind(&r.error)
                    .bind(now)
                    .bind(r.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.execute("COMMIT").await?;
            conn.release();
            Ok(())
        })
    }
}

impl OutboxDriver for Sqlite {
    const LABEL: &'static str = "sqlite";

    fn outbox_check_config(config: &OutboxConfig) -> Result<(), Error> {
        if config.concurrency != 1 {
            return Err(Error::config(
                "outbox.concurrency",
                format!(
                    "{} workers asked for; SQLite has one writer and runs exactly 1",
                    config.concurrency
                ),
            ));
        }
        Ok(())
    }

    fn outbox_insert(
        conn: &mut Self::Connection,
        rows: Vec<NewRow>,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let now = now_ms();
            for row in rows {
                sqlx::query(INSERT)
                    .bind(row.event_id)
                    .bind(row.topic)
                    .bind(row.event_type)
                    .bind(row.partition_key)
                    .bind(row.payload)
                    .bind(row.headers)
                    .bind(row.key_id)
                    .bind(row.due.map_or(now, |due| due.timestamp_millis()))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }

    fn outbox_floor(_: &Pool<Self>) -> BoxFuture<'_, Result<i64, sqlx::Error>> {
        // SQLite removes index entries on update: nothing to skip.
        Box::pin(async { Ok(0) })
    }

    fn outbox_claim(
        pool: &Pool<Self>,
        limit: u32,
        _floor: i64,
        // One worker (`concurrency = 1`, checked at build): every row.
        _shard: Shard,
    ) -> BoxFuture<'_, Result<Box<dyn Claim>, sqlx::Error>> {
        Box::pin(async move {
            let fetched = sqlx::query(&CLAIM)
                .bind(now_ms())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let rows = driver::decode_claim(&fetched, decode_claimed)?;
            let claimed = rows.len();
            let (ids, keys) = driver::keyed(&rows);
            let rows = if ids.is_empty() {
                rows
            } else {
                let pairs: Vec<(i64, &str)> = ids.into_iter().zip(keys).collect();
                let json =
                    serde_json::to_string(&pairs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                let first_foreign: HashMap<String, i64> = sqlx::query(FIRST_FOREIGN)
                    .bind(json)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?;
                driver::cut_blocked(rows, &first_foreign)
            };
            Ok(Box::new(SqliteClaim {
                pool: pool.clone(),
                claimed,
                rows,
            }) as Box<dyn Claim>)
        })
    }

    fn outbox_backlog(pool: &Pool<Self>) -> BoxFuture<'_, Result<Backlog, sqlx::Error>> {
        Box::pin(async move {
            let row = sqlx::query(BACKLOG).fetch_one(pool).await?;
            let pending: i64 = row.try_get(0)?;
            let failed: i64 = row.try_get(1)?;
            let oldest: Option<i64> = row.try_get(2)?;
            Ok(Backlog {
                pending: pending.max(0) as u64,
                failed: failed.max(0) as u64,
                oldest_pending_age: oldest
                    .map(|ms| Duration::from_millis(now_ms().saturating_sub(ms).max(0) as u64)),
            })
        })
    }

    fn outbox_rows(
        pool: &Pool<Self>,
        state: OutboxState,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>> {
        Box::pin(async move {
            let sql = format!("SELECT {COLUMNS} FROM outbox WHERE state = ?1 ORDER BY id LIMIT ?2");
            sqlx::query(&sql)
                .bind(state.as_str())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(decode)
                .collect()
        })
    }

    fn outbox_retry_failed<'a>(
        pool: &'a Pool<Self>,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(RETRY_FAILED)
                .bind(now_ms())
                .bind(json_ids(ids.iter().copied()))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn outbox_cleanup_sent(
        pool: &Pool<Self>,
        age: Duration,
        limit: u32,
        archive: bool,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let now = now_ms();
            let mut conn = Guarded::acquire(pool).await?;
            let tx: &mut sqlx::SqliteConnection = conn.conn();
            tx.execute("BEGIN IMMEDIATE").await?;
            let ids: Vec<i64> = sqlx::query_scalar(SENT_BATCH)
                .bind(now.saturating_sub(millis(age)))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            let removed = if ids.is_empty() {
                0
            } else {
                let ids = json_ids(ids);
                if archive {
                    sqlx::query(ARCHIVE_IDS)
                        .bind(&ids)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(DELETE_IDS)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            tx.execute("COMMIT").await?;
            conn.release();
            Ok(removed)
        })
    }

    fn outbox_listen(
        _: Pool<Self>,
        _: Arc<Signal>,
        _: Arc<dyn Clock>,
    ) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// The plan SQLite picks for the claim, one line per step.
    async fn claim_plan(conn: &mut sqlx::SqliteConnection) -> Vec<String> {
        sqlx::query(&format!("EXPLAIN QUERY PLAN {}", *CLAIM))
            .bind(i64::MAX)
            .bind(1_000_i64)
            .fetch_all(&mut *conn)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get::<String, _>(3))
            .collect()
    }

    #[test]
    fn the_claim_walks_the_pending_index_whatever_the_statistics_say() {
        // An SQLite connection runs on its own thread: no executor needed beyond this one.
        futures::executor::block_on(async {
            let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
                .await
                .expect("connect");
            MIGRATOR.run(&mut conn).await.expect("migrate");
            // A backlog of 2 000 rows, every one PENDING, as statistics taken during a burst
            // describe it.
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1999) \
                 INSERT INTO outbox (event_id, topic, event_type, partition_key, payload, \
                 created_at, available_at) \
                 SELECT randomblob(16), 't', 'e', 'k-' || (i % 100), x'00', 1, 1 FROM n",
            )
            .execute(&mut conn)
            .await
            .expect("backlog");
            let before = claim_plan(&mut conn).await;
            conn.execute("ANALYZE").await.expect("analyze");
            let after = claim_plan(&mut conn).await;
            for (when, plan) in [("before ANALYZE", &before), ("after ANALYZE", &after)] {
                assert!(
                    plan.iter()
                        .any(|step| step.contains("USING INDEX outbox_pending")),
                    "{when}: {plan:?}"
                );
            }
        });
    }
}
