//! Outbox relay throughput: committed rows → dispatcher → backend, with the in-memory backend so
//! the figure is the database's cost. Runs on SQLite always and on PostgreSQL when
//! `DATABASE_URL` is set; for each, a backlog of N and of 10 N rows (the per-event cost should
//! stay flat), and the overhead of `Outbox::enqueue` inside a user transaction against the same
//! transaction without it. On PostgreSQL the relay runs as one worker, as one dispatcher of two
//! workers, and as two dispatchers of one worker each (two processes sharing the outbox).
//!
//! `cargo bench -p eventbus-framework --features postgres,sqlite --bench outbox_relay`
//!
//! Environment: `OUTBOX_BENCH_N` (default 20 000), `OUTBOX_BENCH_KEYS` (default 1 000 partition
//! keys), `OUTBOX_BENCH_TXS` (default 2 000 transactions per enqueue variant),
//! `OUTBOX_BENCH_ANALYZE=1` (refresh the planner's statistics of the table after each fill; by
//! default the relay starts on a burst the database has no statistics of yet),
//! `OUTBOX_BENCH_ONLY=text` (only the rows whose label contains `text`, or one of several
//! texts split by `|`, without the enqueue overhead: `OUTBOX_BENCH_ONLY='concurrency 1'` to
//! profile one relay alone, `'raw|concurrency 1'` for it beside its baseline).
//!
//! CPU figures count this process and, on PostgreSQL, the database cluster's processes, each
//! share printed.
#![allow(missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::backend::memory::MemoryBackend;
use eventbus::outbox::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use eventbus::outbox::sqlx::{self, Connection, PgConnection, Pool, Postgres, Sqlite};
use eventbus::outbox::{postgres, sqlite, Outbox, Retention, SqlDatabase};
use eventbus::{event, Uuid};
use serde::{Deserialize, Serialize};

#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Clone)]
struct OrderCreated {
    order_id: String,
    total_cents: i64,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the row `label` runs: every row unless `OUTBOX_BENCH_ONLY` names others.
fn selected(label: &str) -> bool {
    std::env::var("OUTBOX_BENCH_ONLY").map_or(true, |only| {
        only.split('|').any(|part| label.contains(part))
    })
}

/// Whether the enqueue overhead runs: not when `OUTBOX_BENCH_ONLY` picks relay rows.
fn enqueue_selected() -> bool {
    std::env::var_os("OUTBOX_BENCH_ONLY").is_none()
}

/// Ways to get at a database the bench needs beyond the library.
trait BenchDb: SqlDatabase {
    const BEGIN: &'static str;
    fn state_change<'c>(
        conn: &'c mut Self::Connection,
        account: &'c str,
    ) -> futures::future::BoxFuture<'c, ()>;
    fn create_accounts(conn: &mut Self::Connection) -> futures::future::BoxFuture<'_, ()>;
    /// Refreshes the planner's statistics of the outbox table.
    fn analyze(conn: &mut Self::Connection) -> futures::future::BoxFuture<'_, ()>;
}

const ACCOUNTS: &str =
    "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)";
const ACCOUNT: &str = "INSERT INTO accounts (id, balance) VALUES ($1, 0)";

impl BenchDb for Postgres {
    fn analyze(conn: &mut PgConnection) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("ANALYZE outbox")
                .execute(conn)
                .await
                .expect("analyze");
        })
    }
    fn create_accounts(conn: &mut PgConnection) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(ACCOUNTS)
                .execute(&mut *conn)
                .await
                .expect("accounts");
            for i in 0..100 {
                sqlx::query(ACCOUNT)
                    .bind(format!("a-{i}"))
                    .execute(&mut *conn)
                    .await
                    .expect("account");
            }
        })
    }
    const BEGIN: &'static str = "BEGIN";
    fn state_change<'c>(
        conn: &'c mut PgConnection,
        account: &'c str,
    ) -> futures::future::BoxFuture<'c, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = $1")
                .bind(account)
                .execute(conn)
                .await
                .expect("update");
        })
    }
}

impl BenchDb for Sqlite {
    fn analyze(conn: &mut sqlx::SqliteConnection) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("ANALYZE outbox")
                .execute(conn)
                .await
                .expect("analyze");
        })
    }
    fn create_accounts(conn: &mut sqlx::SqliteConnection) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(ACCOUNTS)
                .execute(&mut *conn)
                .await
                .expect("accounts");
            for i in 0..100 {
                sqlx::query(ACCOUNT)
                    .bind(format!("a-{i}"))
                    .execute(&mut *conn)
                    .await
                    .expect("account");
            }
        })
    }
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    fn state_change<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        account: &'c str,
    ) -> futures::future::BoxFuture<'c, ()> {
        Box::pin(async move {
            sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = $1")
                .bind(account)
                .execute(conn)
                .await
                .expect("update");
        })
    }
}

struct Relay {
    events_per_sec: f64,
    micros_per_event: f64,
    cpu_micros_per_event: f64,
    /// The database cluster's share of `cpu_micros_per_event` (0 for SQLite, in process).
    db_cpu_micros_per_event: f64,
}

impl Relay {
    /// The figures of `n` events relayed in `elapsed`, using `cpu` (this process and the
    /// database cluster, see [`cpu_seconds`]).
    fn of(n: usize, elapsed: Duration, cpu: Cpu) -> Self {
        let per_event = |seconds: f64| seconds * 1e6 / n as f64;
        Relay {
            events_per_sec: n as f64 / elapsed.as_secs_f64(),
            micros_per_event: per_event(elapsed.as_secs_f64()),
            cpu_micros_per_event: per_event(cpu.own + cpu.cluster),
            db_cpu_micros_per_event: per_event(cpu.cluster),
        }
    }
}

/// CPU seconds, this process's and the database cluster's.
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    cluster: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            own: self.own - earlier.own,
            cluster: self.cluster - earlier.cluster,
        }
    }
}

/// CPU seconds used so far by this process and, when given, a PostgreSQL cluster (postmaster,
/// its live children, and its exited children). Linux only; zero elsewhere. Less disturbed
/// than wall time by other work on a shared machine.
fn cpu_seconds(postmaster: Option<u32>) -> Cpu {
    fn fields(pid: &str) -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        Some(
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect(),
        )
    }
    // After the command name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let ticks = 100.0;
    let own = fields("self").map_or(0, |f| f[11] + f[12]);
    let mut cluster = 0;
    if let Some(pm) = postmaster {
        if let Some(f) = fields(&pm.to_string()) {
            cluster += f[11] + f[12] + f[13] + f[14];
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some(f) = fields(pid) {
                if f[1] == u64::from(pm) {
                    cluster += f[11] + f[12];
                }
            }
        }
    }
    Cpu {
        own: own as f64 / ticks,
        cluster: cluster as f64 / ticks,
    }
}

async fn postmaster(pool: &Pool<Postgres>) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How the relay runs: `dispatchers` dispatchers side by side (as separate processes would
/// run them), each with `concurrency` workers.
#[derive(Clone, Copy)]
struct Relays {
    dispatchers: usize,
    concurrency: usize,
}

impl Relays {
    const ONE: Relays = Relays {
        dispatchers: 1,
        concurrency: 1,
    };
}

/// Enqueues `n` events (committed, 1 000 per transaction), then times the relay of all of them.
async fn relay<DB: BenchDb>(
    pool: &Pool<DB>,
    n: usize,
    keys: usize,
    relays: Relays,
    postmaster: Option<u32>,
) -> Relay {
    let outbox = fill(pool, n, keys, relays.concurrency).await;
    let backend = Arc::new(MemoryBackend::new());
    let cpu = cpu_seconds(postmaster);
    let started = Instant::now();
    let dispatchers: Vec<_> = (0..relays.dispatchers)
        .map(|_| {
            outbox
                .dispatcher(backend.clone())
                .start()
                .expect("dispatcher")
        })
        .collect();
    let published = || dispatchers.iter().map(|d| d.stats().published).sum::<u64>();
    while published() < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(postmaster) - cpu;
    for dispatcher in &dispatchers {
        dispatcher.shutdown(Duration::from_secs(10)).await;
    }
    assert_eq!(outbox.backlog().await.expect("backlog").pending, 0);
    Relay::of(n, elapsed, cpu)
}

/// A row the raw relay claims: id, topic, event type, partition key, payload.
type ClaimedRow = (i64, String, String, Option<String>, Vec<u8>);

/// The raw baseline on PostgreSQL: the same backlog relayed by hand, one transaction per batch of
/// 1 000: claim the oldest `PENDING` rows above the last id claimed (so the scan does not walk
/// the index entries of rows already sent) `FOR UPDATE SKIP LOCKED` (planned without a sort, as
/// the dispatcher's claim is), hand them to the same in-memory backend, mark them `SENT`,
/// commit. No per-key cut, no retries, no metrics: the floor any relay over this table pays.
async fn raw_relay(pool: &Pool<Postgres>, n: usize, keys: usize, postmaster: Option<u32>) -> Relay {
    use eventbus::backend::{Backend, Message, MessageHeaders};
    fill(pool, n, keys, 1).await;
    let backend = MemoryBackend::new();
    let cpu = cpu_seconds(postmaster);
    let started = Instant::now();
    let mut relayed = 0;
    let mut floor = 0i64;
    while relayed < n {
        let mut tx = pool.begin().await.expect("begin");
        // As the dispatcher does: the claim walks the index in id order whatever the
        // statistics say (without them PostgreSQL reads and sorts every row left).
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await
            .expect("planner setting");
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "SELECT id, topic, event_type, partition_key, payload FROM outbox \
             WHERE state = 'PENDING' AND id > $1 ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .bind(floor)
        .fetch_all(&mut *tx)
        .await
        .expect("claim");
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        floor = ids.last().copied().unwrap_or(floor);
        let messages: Vec<Message> = rows
            .into_iter()
            .map(|(_, topic, event_type, key, payload)| Message {
                topic: topic.into(),
                key: key.map(Into::into),
                event_type: event_type.into(),
                headers: MessageHeaders::new(),
                payload: payload.into(),
            })
            .collect();
        relayed += messages.len();
        backend.publish(messages).await.expect("publish");
        sqlx::query("UPDATE outbox SET state = 'SENT', sent_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .expect("mark");
        tx.commit().await.expect("commit");
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(postmaster) - cpu;
    Relay::of(n, elapsed, cpu)
}

/// Commits `n` events through the outbox, 1 000 per transaction; returns the outbox.
async fn fill<DB: BenchDb>(
    pool: &Pool<DB>,
    n: usize,
    keys: usize,
    concurrency: usize,
) -> Outbox<DB> {
    let outbox = Outbox::builder(pool.clone())
        .batch_size(1_000)
        .concurrency(concurrency)
        .retention(Retention::keep())
        .build()
        .expect("outbox");
    let mut seq = 0;
    while seq < n {
        let events: Vec<OrderCreated> = (seq..(seq + 1_000).min(n))
            .map(|i| OrderCreated {
                order_id: format!("o-{}", i % keys),
                total_cents: i as i64,
            })
            .collect();
        seq += events.len();
        let mut tx = pool.begin_with(DB::BEGIN).await.expect("begin");
        outbox
            .enqueue_batch(&mut tx, &events)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    if env("OUTBOX_BENCH_ANALYZE", 0) == 1 {
        let mut conn = pool.acquire().await.expect("connection");
        DB::analyze(&mut conn).await;
    }
    outbox
}

/// Mean latency of `txs` sequential committed transactions doing a state change, with and
/// without an outbox insert.
async fn enqueue_overhead<DB: BenchDb>(pool: &Pool<DB>, txs: usize) -> (Duration, Duration) {
    {
        let mut conn = pool.acquire().await.expect("connection");
        DB::create_accounts(&mut conn).await;
    }
    let outbox = Outbox::new(pool.clone());
    let mut plain = Duration::ZERO;
    let mut with_outbox = Duration::ZERO;
    // Interleaved, so both variants see the same database state and noise.
    for i in 0..txs {
        let account = format!("a-{}", i % 100);
        let started = Instant::now();
        let mut tx = pool.begin_with(DB::BEGIN).await.expect("begin");
        DB::state_change(&mut tx, &account).await;
        tx.commit().await.expect("commit");
        plain += started.elapsed();

        let started = Instant::now();
        let mut tx = pool.begin_with(DB::BEGIN).await.expect("begin");
        DB::state_change(&mut tx, &account).await;
        let event = OrderCreated {
            order_id: account.clone(),
            total_cents: i as i64,
        };
        outbox.enqueue(&mut tx, &event).await.expect("enqueue");
        tx.commit().await.expect("commit");
        with_outbox += started.elapsed();
    }
    (plain / txs as u32, with_outbox / txs as u32)
}

fn report(label: &str, n: usize, small: &Relay, large: &Relay) {
    for (backlog, r) in [(n, small), (n * 10, large)] {
        println!(
            "{label:<26} backlog {backlog:>7}: {:>8.0} events/s ({:>5.1} µs/event wall, {:>5.1} µs/event CPU, of it {:>5.1} the database's)",
            r.events_per_sec, r.micros_per_event, r.cpu_micros_per_event, r.db_cpu_micros_per_event
        );
    }
    let own = |r: &Relay| r.cpu_micros_per_event - r.db_cpu_micros_per_event;
    println!(
        "{label:<26} 10x backlog per-event cost ratio: {:.2} wall, {:.2} CPU ({:.2} the relay's process, {:.2} the database's)",
        large.micros_per_event / small.micros_per_event,
        large.cpu_micros_per_event / small.cpu_micros_per_event,
        own(large) / own(small),
        large.db_cpu_micros_per_event / small.db_cpu_micros_per_event.max(f64::MIN_POSITIVE)
    );
}

async fn sqlite_pool() -> (Pool<Sqlite>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("eventbus-outbox-bench-{}.db", Uuid::now_v7()));
    let pool = sqlite::connect(&path).await.expect("sqlite");
    sqlite::migrate(&pool).await.expect("migrate");
    (pool, path)
}

fn remove(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

async fn pg_pool(url: &str) -> (Pool<Postgres>, PgConnectOptions, String) {
    let admin = PgConnectOptions::from_str(url).expect("DATABASE_URL");
    let name = format!("outbox_bench_{}", Uuid::now_v7().simple());
    let mut conn = PgConnection::connect_with(&admin).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(admin.clone().database(&name))
        .await
        .expect("pool");
    postgres::migrate(&pool).await.expect("migrate");
    (pool, admin, name)
}

async fn pg_drop(pool: Pool<Postgres>, admin: &PgConnectOptions, name: &str) {
    pool.close().await;
    let mut conn = PgConnection::connect_with(admin).await.expect("connect");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop");
}

async fn run() {
    let n = env("OUTBOX_BENCH_N", 20_000);
    let keys = env("OUTBOX_BENCH_KEYS", 1_000);
    let txs = env("OUTBOX_BENCH_TXS", 2_000);
    println!("relay: batch_size 1000, {keys} partition keys, in-memory backend");

    const SQLITE: &str = "sqlite (WAL, sync=FULL)";
    if selected(SQLITE) {
        let (pool, path) = sqlite_pool().await;
        let small = relay(&pool, n, keys, Relays::ONE, None).await;
        pool.close().await;
        remove(&path);
        let (pool, path) = sqlite_pool().await;
        let large = relay(&pool, n * 10, keys, Relays::ONE, None).await;
        report(SQLITE, n, &small, &large);
        pool.close().await;
        remove(&path);
    }
    if enqueue_selected() {
        let (pool, path) = sqlite_pool().await;
        let (plain, with) = enqueue_overhead(&pool, txs).await;
        println!(
            "sqlite enqueue overhead: {plain:?} per transaction without, {with:?} with the outbox \
             insert (ratio {:.2})",
            with.as_secs_f64() / plain.as_secs_f64()
        );
        pool.close().await;
        remove(&path);
    }

    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("postgres: skipped (DATABASE_URL not set)");
        return;
    };
    const RAW: &str = "postgres raw claim+mark";
    if selected(RAW) {
        let (pool, admin, name) = pg_pool(&url).await;
        let pm = postmaster(&pool).await;
        let small = raw_relay(&pool, n, keys, pm).await;
        pg_drop(pool, &admin, &name).await;
        let (pool, admin, name) = pg_pool(&url).await;
        let large = raw_relay(&pool, n * 10, keys, pm).await;
        pg_drop(pool, &admin, &name).await;
        report(RAW, n, &small, &large);
    }
    // Two dispatchers of one worker each: two processes relaying one outbox.
    for (label, relays) in [
        ("postgres (concurrency 1)", Relays::ONE),
        (
            "postgres (concurrency 2)",
            Relays {
                dispatchers: 1,
                concurrency: 2,
            },
        ),
        (
            "postgres (2 dispatchers)",
            Relays {
                dispatchers: 2,
                concurrency: 1,
            },
        ),
    ] {
        if !selected(label) {
            continue;
        }
        let (pool, admin, name) = pg_pool(&url).await;
        let pm = postmaster(&pool).await;
        let small = relay(&pool, n, keys, relays, pm).await;
        pg_drop(pool, &admin, &name).await;
        let (pool, admin, name) = pg_pool(&url).await;
        let large = relay(&pool, n * 10, keys, relays, pm).await;
        pg_drop(pool, &admin, &name).await;
        report(label, n, &small, &large);
    }
    if !enqueue_selected() {
        return;
    }
    let (pool, admin, name) = pg_pool(&url).await;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')",
    )
    .fetch_all(&pool)
    .await
    .expect("settings");
    let (plain, with) = enqueue_overhead(&pool, txs).await;
    println!(
        "postgres enqueue overhead: {plain:?} per transaction without, {with:?} with the outbox \
         insert (ratio {:.2}); {settings:?}",
        with.as_secs_f64() / plain.as_secs_f64()
    );
    pg_drop(pool, &admin, &name).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::args().any(|a| a == "--bench") {
        rt.block_on(run());
    } else {
        // `cargo test --all-targets`: a smoke run on SQLite that the bench still works.
        rt.block_on(async {
            let (pool, path) = sqlite_pool().await;
            let figures = relay(&pool, 300, 10, Relays::ONE, None).await;
            assert!(figures.events_per_sec > 0.0);
            enqueue_overhead(&pool, 5).await;
            pool.close().await;
            remove(&path);
        });
    }
}
