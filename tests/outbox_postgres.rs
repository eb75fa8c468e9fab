//! The outbox and SQL inbox suite on PostgreSQL, plus what only PostgreSQL offers: several
//! dispatchers side by side and LISTEN/NOTIFY wake-ups. Needs `DATABASE_URL` (scripts/test
//! starts a throwaway cluster with fsync on); each test creates and drops its own database.

#[path = "outbox_suite/mod.rs"]
#[macro_use]
mod suite;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::backend::memory::MemoryBackend;
use eventbus::backend::{Backend, BackendAdmin, DeliveryStream, Message, SubscribeRequest};
use eventbus::outbox::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use eventbus::outbox::sqlx::{self, Connection, PgConnection, PgPool, Postgres};
use eventbus::outbox::{postgres, Outbox};
use eventbus::{Error, RawEnvelope, Uuid};
use futures::future::BoxFuture;
use suite::{credit, enqueue_committed, eventually, Credited, Fresh, TestDb};

impl_test_db!(Postgres, "BEGIN");

const SUITE: &str = "outbox_postgres";

async fn fresh(test: &str) -> Option<Fresh<Postgres>> {
    let url = eventbus_integration::require_server("DATABASE_URL", SUITE)?;
    let admin = PgConnectOptions::from_str(&url).expect("DATABASE_URL");
    let name = format!(
        "t_{}_{}",
        &test[..test.len().min(24)],
        Uuid::now_v7().simple()
    );
    let mut conn = PgConnection::connect_with(&admin).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    conn.close().await.expect("close");
    let pool = pool(&admin.clone().database(&name), 16).await;
    postgres::migrate(&pool).await.expect("migrate");
    for ddl in suite::app_schema("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY") {
        sqlx::query(&ddl).execute(&pool).await.expect("schema");
    }
    let teardown = move || -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        })
    };
    Some(Fresh {
        pool,
        teardown: Box::new(teardown),
    })
}

async fn pool(options: &PgConnectOptions, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .connect_with(options.clone())
        .await
        .expect("pool")
}

shared_tests! {
    fresh;
    rollback_publishes_nothing_commit_publishes_once,
    exactly_once_downstream_under_redelivery,
    kill_dispatcher_while_events_flow(100, 2),
    publish_failure_backs_off_then_dead_letters,
    failed_dead_letter_publish_is_retried,
    encryption_round_trip_and_rotation,
    cleanup_removes_sent_rows_and_old_inbox_rows,
    dispatcher_runs_the_cleanup,
    backlog_reports_size_and_age,
    inbox_transaction_claims_an_event_once,
    replay_reaches_a_handler_that_uses_the_inbox_transaction,
    config_errors_name_the_setting,
    a_bus_owned_outbox_relays_and_stops_with_the_bus,
    follow_on_events_commit_with_the_handler,
    outbox_metrics_follow_the_backlog,
    concurrent_steps_of_one_saga_lose_no_update,
    completed_sagas_are_deleted_after_their_retention,
    completed_sagas_are_archived_after_their_retention,
    a_scheduled_event_waits_in_the_outbox_until_due,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_concurrent() {
    let Some(db) = fresh("migrate").await else {
        return;
    };
    let (a, b) = tokio::join!(postgres::migrate(&db.pool), postgres::migrate(&db.pool));
    a.expect("first");
    b.expect("second");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .expect("migrations");
    assert_eq!(applied, 4);
    db.finish().await;
}

/// (dispatcher, event id, partition key, seq) of each published message, in publish order.
type PublishLog = Arc<Mutex<Vec<(usize, Uuid, Option<String>, i64)>>>;

/// A backend that logs who published what, in the order the in-memory broker received it.
struct Recording {
    inner: MemoryBackend,
    dispatcher: usize,
    log: PublishLog,
}

impl Backend for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        let mut log = self.log.lock().unwrap();
        for m in &messages {
            let env = RawEnvelope::decode(&m.payload).expect("envelope");
            let data: serde_json::Value = serde_json::from_str(env.data.get()).expect("data");
            let seq = data["seq"].as_i64().expect("seq");
            log.push((
                self.dispatcher,
                env.id,
                m.key.as_deref().map(str::to_owned),
                seq,
            ));
        }
        // The in-memory broker takes the messages before returning its future: the log and
        // the broker see the same order.
        let accepted = self.inner.publish(messages);
        drop(log);
        accepted
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        self.inner.subscribe(request)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        None
    }
}

/// Checks that every key's rows were published in the order of their `seq`.
fn assert_each_key_in_order(log: &[(usize, Uuid, Option<String>, i64)]) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, _, key, seq) in log {
        let key = key.as_deref().expect("keyed");
        if let Some(prev) = last.insert(key, *seq) {
            assert!(prev < *seq, "key {key}: {seq} published after {prev}");
        }
    }
}

/// Three dispatchers (own pools, as three processes would have) of one, two and three workers
/// (so they split the keys three different ways) drain one outbox while events keep coming:
/// no row is published twice, every key keeps its order, and the work is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dispatchers_never_publish_a_row_twice_and_keep_key_order() {
    const HALF: i64 = 3_000;
    const KEYS: i64 = 400;
    let Some(db) = fresh("three_dispatchers").await else {
        return;
    };
    let writer = Outbox::new(db.pool.clone());
    let enqueue = |from: i64| {
        let writer = writer.clone();
        let pool = db.pool.clone();
        async move {
            for chunk in 0..HALF / 100 {
                let events: Vec<Credited> = (0..100)
                    .map(|i| {
                        let n = from + chunk * 100 + i;
                        credit(format!("k{}", n % KEYS), n)
                    })
                    .collect();
                enqueue_committed(&pool, &writer, &events).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    };
    enqueue(0).await;

    let log = PublishLog::default();
    let backend = MemoryBackend::new();
    let options = db.pool.connect_options().as_ref().clone();
    let mut dispatchers = Vec::new();
    for n in 0..3 {
        let pool = pool(&options, 4).await;
        let outbox = Outbox::builder(pool)
            .batch_size(50)
            .concurrency(n + 1)
            .poll_interval(Duration::from_millis(20))
            .build()
            .expect("outbox");
        let recording = Recording {
            inner: backend.clone(),
            dispatcher: n,
            log: log.clone(),
        };
        dispatchers.push(
            outbox
                .dispatcher(Arc::new(recording))
                .start()
                .expect("dispatcher"),
        );
    }
    enqueue(HALF).await;
    eventually("every row published", Duration::from_secs(60), || async {
        writer.backlog().await.expect("backlog").pending == 0
    })
    .await;
    for dispatcher in &dispatchers {
        assert!(dispatcher.shutdown(Duration::from_secs(5)).await);
    }

    let log = log.lock().unwrap().clone();
    let ids: HashSet<Uuid> = log.iter().map(|(_, id, _, _)| *id).collect();
    assert_eq!(ids.len() as i64, 2 * HALF, "every row published");
    assert_eq!(log.len() as i64, 2 * HALF, "no row published twice");
    assert_each_key_in_order(&log);
    let mut per_dispatcher = [0usize; 3];
    for (n, _, _, _) in &log {
        per_dispatcher[*n] += 1;
    }
    eprintln!("rows published per dispatcher: {per_dispatcher:?}");
    assert!(
        per_dispatcher.iter().filter(|&&n| n > 0).count() >= 2,
        "the dispatchers shared the work: {per_dispatcher:?}"
    );
    assert_eq!(
        Postgres::scalar(&db.pool, "SELECT count(*) FROM outbox WHERE state = 'SENT'").await,
        2 * HALF
    );
    db.finish().await;
}

/// The two workers of one dispatcher relay a backlog whose batches share their keys without
/// ever blocking each other (each holds its own keys), in key order, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_one_dispatcher_split_the_keys_and_never_block_each_other() {
    const ROWS: i64 = 4_000;
    const KEYS: i64 = 100;
    let Some(db) = fresh("two_workers").await else {
        return;
    };
    let outbox = Outbox::builder(db.pool.clone())
        .batch_size(100)
        .concurrency(2)
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    for chunk in 0..ROWS / 500 {
        let events: Vec<Credited> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                credit(format!("k{}", n % KEYS), n)
            })
            .collect();
        enqueue_committed(&db.pool, &outbox, &events).await;
    }
    let log = PublishLog::default();
    let recording = Recording {
        inner: MemoryBackend::new(),
        dispatcher: 0,
        log: log.clone(),
    };
    let dispatcher = outbox
        .dispatcher(Arc::new(recording))
        .start()
        .expect("dispatcher");
    eventually("every row published", Duration::from_secs(60), || async {
        outbox.backlog().await.expect("backlog").pending == 0
    })
    .await;
    assert!(dispatcher.shutdown(Duration::from_secs(5)).await);
    let stats = dispatcher.stats();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len() as i64, ROWS, "each row published once: {stats:?}");
    assert_each_key_in_order(&log);
    assert_eq!(
        stats.blocked, 0,
        "a worker left rows because the other held their key: {stats:?}"
    );
    db.finish().await;
}

/// A commit wakes the dispatcher through LISTEN/NOTIFY long before its poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_dispatcher_before_the_poll_interval() {
    let Some(db) = fresh("notify").await else {
        return;
    };
    let backend = MemoryBackend::new();
    let outbox = Outbox::builder(db.pool.clone())
        .poll_interval(Duration::from_secs(60))
        .build()
        .expect("outbox");
    let dispatcher = outbox
        .dispatcher(Arc::new(backend.clone()))
        .start()
        .expect("dispatcher");
    tokio::time::sleep(Duration::from_millis(500)).await; // first pass done, LISTEN set up
    for round in 0..3 {
        let mut tx = Postgres::begin(&db.pool).await;
        outbox
            .enqueue(&mut *tx, &credit("n", round))
            .await
            .expect("enqueue");
        let committed = Instant::now();
        Postgres::commit(tx).await.expect("commit");
        eventually(
            "the notified dispatcher to publish",
            Duration::from_secs(5),
            || async { backend.messages("ledger.credited").len() as i64 == round + 1 },
        )
        .await;
        let latency = committed.elapsed();
        eprintln!("commit → publish latency with a 60 s poll interval: {latency:?}");
        assert!(latency < Duration::from_secs(5));
    }
    dispatcher.shutdown(Duration::from_secs(5)).await;
    db.finish().await;
}

/// Rows of `outbox` read so far by scans of any kind (entries read from its indexes, rows read
/// by sequential scans), and rows updated, as PostgreSQL's statistics have them.
async fn outbox_reads(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT COALESCE(sum(idx_tup_read), 0)::bigint FROM pg_stat_user_indexes \
                 WHERE relname = 'outbox') + COALESCE(t.seq_tup_read, 0), \
                COALESCE(t.n_tup_upd, 0) \
         FROM pg_stat_user_tables t WHERE t.relname = 'outbox'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_user_tables")
}

/// A burst the planner has no statistics of (autovacuum has not analyzed the table yet; here it
/// is off) is relayed reading each row a few times: each pass walks the index of `PENDING`
/// rows and stops at its batch, instead of reading and sorting the whole backlog left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_without_statistics_is_relayed_reading_each_row_a_few_times() {
    const ROWS: i64 = 20_000;
    const BATCH: u32 = 100;
    let Some(db) = fresh("burst").await else {
        return;
    };
    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .expect("autovacuum off");
    // The relay's own connections: closing them flushes their statistics.
    let relay_pool = pool(&db.pool.connect_options(), 2).await;
    let outbox = Outbox::builder(relay_pool.clone())
        .batch_size(BATCH)
        .build()
        .expect("outbox");
    for chunk in 0..ROWS / 1_000 {
        let events: Vec<_> = (0..1_000)
            .map(|i| credit(format!("a-{}", i % 100), chunk * 1_000 + i))
            .collect();
        enqueue_committed(&db.pool, &outbox, &events).await;
    }
    let (reads_before, _) = outbox_reads(&db.pool).await;
    // The whole burst stays readable: by default a topic keeps its last 10 000 messages.
    let backend = MemoryBackend::with_retention(ROWS as usize);
    let dispatcher = outbox
        .dispatcher(Arc::new(backend.clone()))
        .start()
        .expect("dispatcher");
    let relayed = eventbus_integration::eventually_reads(
        Duration::from_secs(120),
        || async { backend.messages("ledger.credited").len() as i64 },
        |&relayed| relayed >= ROWS,
    )
    .await;
    if let Err(relayed) = relayed {
        panic!("the burst was not relayed in time: {relayed} of {ROWS} messages readable");
    }
    dispatcher.shutdown(Duration::from_secs(10)).await;
    relay_pool.close().await;
    // The relay's statistics reach the views once its backends flush them (at exit at the
    // latest): every row marked SENT is counted then.
    let flushed = eventbus_integration::eventually_reads(
        Duration::from_secs(30),
        || outbox_reads(&db.pool),
        |&(_, updated)| updated >= ROWS,
    )
    .await;
    let (reads_after, updated) = flushed.unwrap_or_else(|(_, updated)| {
        panic!("the relay's statistics were not flushed in 30 s: {updated} rows updated of {ROWS}")
    });
    assert_eq!(updated, ROWS, "rows marked SENT");
    let reads = reads_after - reads_before;
    eprintln!(
        "relaying {ROWS} rows in batches of {BATCH} read {reads} rows and index entries ({:.1} a row)",
        reads as f64 / ROWS as f64
    );
    // A pass reads its batch from the index of `PENDING` rows, counts it again (the gap
    // check) and marks it through the primary key: about 4 reads a row. A claim planned as a
    // read and sort of every `PENDING` row reads the whole backlog left on each pass it is so
    // planned: with statistics missing, the first five passes (PostgreSQL plans a prepared
    // statement afresh for its first five executions), about 5 more reads a row.
    assert!(
        reads < 6 * ROWS,
        "{reads} rows and index entries read to relay {ROWS}: the claim reads past its batch"
    );
    db.finish().await;
}
