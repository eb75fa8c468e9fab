//! The outbox on PostgreSQL: migrations, enqueue, the dispatcher's claim (`FOR UPDATE SKIP
//! LOCKED` plus the per-key cut), and `LISTEN eventbus_outbox`.
//!
//! A pass, in one transaction:
//! 1. lock the oldest available `PENDING` rows no one else holds (`FOR UPDATE SKIP LOCKED`),
//!    scanning from the worker's *floor*, the first id that may still be `PENDING`: the index
//!    entries of rows already sent stay in the partial indexes until VACUUM, and starting
//!    below the floor would walk them on every pass;
//! 2. check cheaply that no `PENDING` row this pass does not hold lies inside or before the
//!    claimed range with one of its keys; only if one may, find each key's first such row and
//!    keep only the rows before it; rows given up are released (the transaction restarts and
//!    locks only the kept rows again), so another dispatcher can take them at once;
//! 3. publish, then mark `SENT` (or a retry time, or `FAILED`) and commit.
//!
//! Locks are held only by the pass that publishes the rows, and a row is published only when
//! every earlier `PENDING` row of its key is in the same pass, so dispatchers never publish a
//! row twice nor a key out of order, however many run.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = eventbus::outbox::sqlx::PgPool::connect("postgres://localhost/app").await?;
//! eventbus::outbox::postgres::migrate(&pool).await?;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use event_listener::Event as Signal;
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{Executor, PgPool, Pool, Postgres, Row};

use super::driver::{self, Claim, ClaimedRow, Guarded, NewRow, OutboxDriver, Settlement, Shard};
use super::{embedded_migrator, millis, Backlog, OutboxConfig, OutboxRow, OutboxState};
use crate::clock::Clock;
use crate::error::Error;

/// The channel dispatchers `LISTEN` on; the `outbox` insert trigger notifies it at commit.
pub const NOTIFY_CHANNEL: &str = "eventbus_outbox";

/// The outbox, inbox, saga and snapshot migrations for PostgreSQL (`migrations/postgres`), embedded. Run them
/// with [`migrate`] or `MIGRATOR.run(&pool)`. It ignores applied migrations it does not know
/// (your own, in the shared `_sqlx_migrations` table).
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    embedded_migrator(&[
        (
            20250101000001,
            "eventbus outbox",
            include_str!("../../migrations/postgres/20250101000001_eventbus_outbox.sql"),
        ),
        (
            20250101000002,
            "eventbus inbox",
            include_str!("../../migrations/postgres/20250101000002_eventbus_inbox.sql"),
        ),
        (
            20250101000003,
            "eventbus saga",
            include_str!("../../migrations/postgres/20250101000003_eventbus_saga.sql"),
        ),
        (
            20250101000004,
            "eventbus snapshot",
            include_str!("../../migrations/postgres/20250101000004_eventbus_snapshot.sql"),
        ),
    ])
});

/// Creates or upgrades the `outbox`, `outbox_archive` and `inbox` tables. Idempotent; safe to
/// run from several processes at once (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| Error::backend("postgres", "running the outbox migrations", e))
}

const COLUMNS: &str = "id, event_id, topic, event_type, partition_key, payload, headers::text, \
                       key_id, state, attempts, last_error, created_at, available_at, \
                       first_failed_at, sent_at";

/// The columns a pass reads of each row it claims (see [`ClaimedRow`]).
const CLAIMED_COLUMNS: &str = "id, event_id, topic, event_type, partition_key, payload, \
                               headers::text, key_id, attempts, last_error, first_failed_at";

const INSERT_ONE: &str = "INSERT INTO outbox \
    (event_id, topic, event_type, partition_key, payload, headers, key_id, created_at, available_at) \
    VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, COALESCE($8, now()), COALESCE($8, now()))";

const INSERT_MANY: &str = "INSERT INTO outbox \
    (event_id, topic, event_type, partition_key, payload, headers, key_id, created_at, available_at) \
    SELECT e, t, ty, k, p, h::jsonb, kid, COALESCE(d, now()), COALESCE(d, now()) \
    FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], \
                $7::text[], $8::timestamptz[]) \
         WITH ORDINALITY AS u(e, t, ty, k, p, h, kid, d, n) \
    ORDER BY n";

/// Opens a pass's transaction, in the same round trip telling the planner to plan no sort in
/// it: the claim must walk the partial index of `PENDING` rows in id order and stop at its
/// limit. Without statistics of the backlog (a burst of rows, before autovacuum analyzes the
/// table) PostgreSQL would rather read every `PENDING` row above the floor and sort them, on
/// every pass: a cost per pass that grows with the backlog. No other statement of a pass
/// needs a sort.
const BEGIN_PASS: &str = "BEGIN; SET LOCAL enable_sort = off";

/// The oldest available rows no other dispatcher holds, locked until this pass commits.
/// `$2` is the floor: the old index entries of rows already sent (until VACUUM removes them)
/// lie below it, so the scan does not walk them.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMED_COLUMNS} FROM outbox \
         WHERE state = 'PENDING' AND available_at <= now() AND id >= $2 \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
    )
});

/// The row's shard among `$n` workers (`$i` is the worker's): its key's hash, or its id when
/// it has no key. `hashtext` is PostgreSQL's hash of a text (an int4, made non-negative).
macro_rules! in_shard {
    ($n:literal, $i:literal) => {
        concat!(
            "mod(COALESCE(hashtext(partition_key)::int8 + 2147483648, id), $",
            $n,
            ") = $",
            $i
        )
    };
}

/// [`CLAIM`] for one worker of several: only the rows of its shard (`$3` workers, this one
/// `$4`).
static CLAIM_SHARD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CLAIMED_COLUMNS} FROM outbox \
         WHERE state = 'PENDING' AND available_at <= now() AND id >= $2 AND {} \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        in_shard!(3, 4)
    )
});

/// What the claim may have missed, cheaply: whether every `PENDING` row between its first
/// and last id ($1, $2) is claimed (count $3), whether any `PENDING` row lies between the
/// floor ($4) and its first id, and whether one of those has a claimed key ($5). When
/// nothing has, [`FIRST_FOREIGN`], several times dearer, is skipped: the common case with one
/// dispatcher and no retries.
const GAPS: &str = "SELECT \
    (SELECT count(*) FROM outbox WHERE state = 'PENDING' AND id BETWEEN $1 AND $2) = $3, \
    NOT EXISTS (SELECT 1 FROM outbox WHERE state = 'PENDING' AND id >= $4 AND id < $1), \
    NOT EXISTS (SELECT 1 FROM outbox WHERE state = 'PENDING' AND id >= $4 AND id < $1 \
                AND partition_key = ANY($5))";

/// [`GAPS`] within a worker's shard (`$6` workers, this one `$7`): a row of one of its keys is
/// in its shard, so rows of other shards cannot block it.
const GAPS_SHARD: &str = concat!(
    "SELECT \
    (SELECT count(*) FROM outbox WHERE state = 'PENDING' AND id BETWEEN $1 AND $2 AND ",
    in_shard!(6, 7),
    ") = $3, \
    NOT EXISTS (SELECT 1 FROM outbox WHERE state = 'PENDING' AND id >= $4 AND id < $1 AND ",
    in_shard!(6, 7),
    "), \
    NOT EXISTS (SELECT 1 FROM outbox WHERE state = 'PENDING' AND id >= $4 AND id < $1 \
                AND partition_key = ANY($5))"
);

/// Per claimed key, the first earlier `PENDING` row this pass does not hold (locked by another
/// dispatcher, or waiting for a retry), from the floor $3.
const FIRST_FOREIGN: &str = "\
    WITH claimed(id, key) AS (SELECT * FROM UNNEST($1::bigint[], $2::text[])), \
         last AS (SELECT key, max(id) AS last_id FROM claimed GROUP BY key) \
    SELECT l.key, min(o.id) \
    FROM last l \
    JOIN outbox o ON o.partition_key = l.key AND o.state = 'PENDING' \
                 AND o.id >= $3 AND o.id < l.last_id \
    WHERE NOT EXISTS (SELECT 1 FROM claimed c WHERE c.id = o.id) \
    GROUP BY l.key";

/// See [`OutboxDriver::outbox_floor`]: the first `PENDING` id, or past the last id when none.
const FLOOR: &str = "SELECT COALESCE( \
    (SELECT min(id) FROM outbox WHERE state = 'PENDING'), \
    (SELECT COALESCE(max(id), 0) + 1 FROM outbox))";

/// Locks again the rows a pass keeps after releasing its claim (see `outbox_claim`).
const RELOCK: &str = "SELECT id FROM outbox WHERE id = ANY($1) AND state = 'PENDING' \
    FOR UPDATE SKIP LOCKED";

const MARK_SENT: &str = "UPDATE outbox SET state = 'SENT', sent_at = now(), \
    attempts = attempts + 1 WHERE id = ANY($1)";

const MARK_RETRY: &str = "UPDATE outbox o SET attempts = u.attempts, last_error = u.error, \
    available_at = now() + u.delay_ms * interval '1 millisecond', \
    first_failed_at = COALESCE(o.first_failed_at, now()) \
    FROM UNNEST($1::bigint[], $2::int4[], $3::text[], $4::int8[]) AS u(id, attempts, error, delay_ms) \
    WHERE o.id = u.id";

const MARK_FAILED: &str = "UPDATE outbox o SET state = 'FAILED', attempts = u.attempts, \
    last_error = u.error, first_failed_at = COALESCE(o.first_failed_at, now()) \
    FROM UNNEST($1::bigint[], $2::int4[], $3::text[]) AS u(id, attempts, error) \
    WHERE o.id = u.id";

const BACKLOG: &str = "SELECT \
    (SELECT count(*) FROM outbox WHERE state = 'PENDING'), \
    (SELECT count(*) FROM outbox WHERE state = 'FAILED'), \
    (SELECT EXTRACT(EPOCH FROM (now() - min(created_at)))::float8 FROM outbox \
     WHERE state = 'PENDING')";

const RETRY_FAILED: &str = "UPDATE outbox SET state = 'PENDING', attempts = 0, \
    available_at = now(), first_failed_at = NULL WHERE state = 'FAILED' AND id = ANY($1)";

const SENT_BATCH: &str = "SELECT id FROM outbox \
    WHERE state = 'SENT' AND sent_at <= now() - $1 * interval '1 millisecond' \
    ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED";

static DELETE_SENT: LazyLock<String> =
    LazyLock::new(|| format!("DELETE FROM outbox WHERE id IN ({SENT_BATCH})"));

static ARCHIVE_SENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH moved AS (DELETE FROM outbox WHERE id IN ({SENT_BATCH}) \
             RETURNING id, event_id, topic, event_type, partition_key, payload, headers, key_id, \
                       attempts, created_at, sent_at) \
         INSERT INTO outbox_archive (id, event_id, topic, event_type, partition_key, payload, \
                                     headers, key_id, attempts, created_at, sent_at) \
         SELECT * FROM moved"
    )
});

fn decode(row: &PgRow) -> Result<OutboxRow, sqlx::Error> {
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
        attempts: driver::attempts(row.try_get::<i32, _>(9)?.into()),
        last_error: row.try_get(10)?,
        created_at: row.try_get(11)?,
        available_at: row.try_get(12)?,
        first_failed_at: row.try_get(13)?,
        sent_at: row.try_get(14)?,
    })
}

/// Decodes a claimed row; `previous` is the row before it in the claim.
fn decode_claimed(row: &PgRow, previous: Option<&ClaimedRow>) -> Result<ClaimedRow, sqlx::Error> {
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
        attempts: driver::attempts(row.try_get::<i32, _>(8)?.into()),
        last_error: row.try_get(9)?,
        first_failed_at: row.try_get(10)?,
    })
}

fn clamp_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Rows claimed inside a transaction; their row locks keep other dispatchers off them.
struct PgClaim {
    conn: Guarded<Postgres>,
    claimed: usize,
    rows: Vec<ClaimedRow>,
    next_floor: Option<i64>,
}

impl Claim for PgClaim {
    fn claimed(&self) -> usize {
        self.claimed
    }

    fn next_floor(&self) -> Option<i64> {
        self.next_floor
    }

    fn take_rows(&mut self) -> Vec<ClaimedRow> {
        std::mem::take(&mut self.rows)
    }

    fn settle(self: Box<Self>, s: Settlement) -> BoxFuture<'static, Result<(), sqlx::Error>> {
        let mut conn = self.conn;
        Box::pin(async move {
            let tx: &mut sqlx::PgConnection = conn.conn();
            if !s.sent.is_empty() {
                sqlx::query(MARK_SENT)
                    .bind(&s.sent)
                    .execute(&mut *tx)
                    .await?;
            }
            if !s.retry.is_empty() {
                let ids: Vec<i64> = s.retry.iter().map(|r| r.id).collect();
                let attempts: Vec<i32> = s.retry.iter().map(|r| clamp_i32(r.attempts)).collect();
                let errors: Vec<&str> = s.retry.iter().map(|r| r.error.as_str()).collect();
                let delays: Vec<i64> = s.retry.iter().map(|r| millis(r.delay)).collect();
                sqlx::query(MARK_RETRY)
                    .bind(ids)
                    .bind(attempts)
                    .bind(errors)
                    .bind(delays)
                    .execute(&mut *tx)
                    .await?;
            }
            if !s.failed.is_empty() {
                let ids: Vec<i64> = s.failed.iter().map(|r| r.id).collect();
                let attempts: Vec<i32> = s.failed.iter().map(|r| clamp_i32(r.attempts)).collect();
                let errors: Vec<&str> = s.failed.iter().map(|r| r.error.as_str()).collect();
                sqlx::query(MARK_FAILED)
                    .bind(ids)
                    .bind(attempts)
                    .bind(errors)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.execute("COMMIT").await?;
            conn.release();
            Ok(())
        })
    }
}

impl OutboxDriver for Postgres {
    const LABEL: &'static str = "postgres";

    fn outbox_check_config(_: &OutboxConfig) -> Result<(), Error> {
        Ok(())
    }

    fn outbox_insert(
        conn: &mut Self::Connection,
        rows: Vec<NewRow>,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if let [row] = rows.as_slice() {
                sqlx::query(INSERT_ONE)
                    .bind(row.event_id)
                    .bind(&row.topic)
                    .bind(&row.event_type)
                    .bind(&row.partition_key)
                    .bind(&row.payload)
                    .bind(&row.headers)
                    .bind(&row.key_id)
                    .bind(row.due)
                    .execute(&mut *conn)
                    .await?;
                return Ok(());
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut topics = Vec::with_capacity(rows.len());
            let mut types = Vec::with_capacity(rows.len());
            let mut keys = Vec::with_capacity(rows.len());
            let mut payloads = Vec::with_capacity(rows.len());
            let mut headers = Vec::with_capacity(rows.len());
            let mut key_ids = Vec::with_capacity(rows.len());
            let mut dues = Vec::with_capacity(rows.len());
            for row in rows {
                ids.push(row.event_id);
                topics.push(row.topic);
                types.push(row.event_type);
                keys.push(row.partition_key);
                payloads.push(row.payload);
                headers.push(row.headers);
                key_ids.push(row.key_id);
                dues.push(row.due);
            }
            sqlx::query(INSERT_MANY)
                .bind(ids)
                .bind(topics)
                .bind(types)
                .bind(keys)
                .bind(payloads)
                .bind(headers)
                .bind(key_ids)
                .bind(dues)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn outbox_floor(pool: &Pool<Self>) -> BoxFuture<'_, Result<i64, sqlx::Error>> {
        Box::pin(async move { sqlx::query_scalar(FLOOR).fetch_one(pool).await })
    }

    fn outbox_claim(
        pool: &Pool<Self>,
        limit: u32,
        floor: i64,
        shard: Shard,
    ) -> BoxFuture<'_, Result<Box<dyn Claim>, sqlx::Error>> {
        Box::pin(async move {
            let mut conn = Guarded::acquire(pool).await?;
            let tx: &mut sqlx::PgConnection = conn.conn();
            tx.execute(BEGIN_PASS).await?;
            let sharded = shard.count > 1;
            let claim = if sharded {
                sqlx::query(&CLAIM_SHARD)
                    .bind(i64::from(limit))
                    .bind(floor)
                    .bind(i64::from(shard.count))
                    .bind(i64::from(shard.index))
            } else {
                sqlx::query(&CLAIM).bind(i64::from(limit)).bind(floor)
            };
            let rows = driver::decode_claim(&claim.fetch_all(&mut *tx).await?, decode_claimed)?;
            let claimed = rows.len();
            let (ids, keys) = driver::keyed(&rows);
            let claim = |conn, rows, next_floor| {
                Ok(Box::new(PgClaim {
                    conn,
                    claimed,
                    rows,
                    next_floor,
                }) as Box<dyn Claim>)
            };
            if claimed == 0 {
                return claim(conn, rows, None);
            }
            let (first, last) = (rows[0].id, rows[claimed - 1].id);
            let mut distinct = keys.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let gaps = sqlx::query_as(if sharded { GAPS_SHARD } else { GAPS })
                .bind(first)
                .bind(last)
                .bind(claimed as i64)
                .bind(floor)
                .bind(distinct);
            let gaps = if sharded {
                gaps.bind(i64::from(shard.count))
                    .bind(i64::from(shard.index))
            } else {
                gaps
            };
            let (gapless, nothing_below, none_of_ours_below): (bool, bool, bool) =
                gaps.fetch_one(&mut *tx).await?;
            let next_floor = (gapless && nothing_below).then_some(last + 1);
            if ids.is_empty() || (gapless && none_of_ours_below) {
                return claim(conn, rows, next_floor);
            }
            let first_foreign: HashMap<String, i64> = sqlx::query(FIRST_FOREIGN)
                .bind(ids)
                .bind(keys)
                .bind(floor)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            let mut rows = driver::cut_blocked(rows, &first_foreign);
            if rows.len() < claimed {
                // Rows this pass must leave (their key is held by another dispatcher) are
                // released at once rather than held, and skipped by everyone, until the pass
                // commits: start over and lock only the rows kept. (A savepoint would do it
                // without a new transaction, but locking in a subtransaction and updating in
                // its parent costs a MultiXact per row on the common path.)
                tx.execute("ROLLBACK; BEGIN").await?;
                let wanted: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let locked: HashSet<i64> = if wanted.is_empty() {
                    HashSet::new()
                } else {
                    sqlx::query_scalar(RELOCK)
                        .bind(wanted)
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect()
                };
                rows = driver::keep_locked(rows, &locked);
            }
            claim(conn, rows, None)
        })
    }

    fn outbox_backlog(pool: &Pool<Self>) -> BoxFuture<'_, Result<Backlog, sqlx::Error>> {
        Box::pin(async move {
            let row = sqlx::query(BACKLOG).fetch_one(pool).await?;
            let pending: i64 = row.try_get(0)?;
            let failed: i64 = row.try_get(1)?;
            let age: Option<f64> = row.try_get(2)?;
            Ok(Backlog {
                pending: pending.max(0) as u64,
                failed: failed.max(0) as u64,
                oldest_pending_age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
            })
        })
    }

    fn outbox_rows(
        pool: &Pool<Self>,
        state: OutboxState,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<OutboxRow>, sqlx::Error>> {
        Box::pin(async move {
            let sql = format!("SELECT {COLUMNS} FROM outbox WHERE state = $1 ORDER BY id LIMIT $2");
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
            let done = sqlx::query(RETRY_FAILED).bind(ids).execute(pool).await?;
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
            let sql: &str = if archive { &ARCHIVE_SENT } else { &DELETE_SENT };
            let done = sqlx::query(sql)
                .bind(millis(age))
                .bind(i64::from(limit))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn outbox_listen(
        pool: Pool<Self>,
        wake: Arc<Signal>,
        clock: Arc<dyn Clock>,
    ) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(async move {
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                        Ok(()) => {
                            // Rows may have committed while nobody listened.
                            wake.notify(usize::MAX);
                            loop {
                                match listener.try_recv().await {
                                    // `None`: the connection dropped and is being re-established;
                                    // a notification may have been lost, so wake anyway.
                                    Ok(_) => {
                                        wake.notify(usize::MAX);
                                    }
                                    Err(error) => {
                                        tracing::warn!(%error, "outbox LISTEN connection failed");
                                        break;
                                    }
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "outbox LISTEN failed"),
                    },
                    Err(error) => tracing::warn!(%error, "outbox LISTEN connection failed"),
                }
                clock.sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}
