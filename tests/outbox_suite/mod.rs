//! The outbox and SQL inbox suite, written once and run on every database
//! (`outbox_postgres.rs`, `outbox_sqlite.rs`). Each test gets a fresh migrated database and
//! relays to the in-memory backend; "downstream" is a `Bus` on that backend whose handler
//! records a side effect (a row in `effects`) inside the inbox transaction.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::backend::memory::{Faults, MemoryBackend};
use eventbus::backend::Backend;
use eventbus::outbox::sqlx::{self, Pool, Transaction};
use eventbus::outbox::{
    ContextExt, KeyRing, Outbox, OutboxState, Retention, SqlDatabase, SqlInbox,
};
use eventbus::{event, Backoff, Bus, Context, Envelope, RawEnvelope, Subscription, Uuid};
use eventbus_integration::{serve_admin, sleep, spawn, unblock};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

mod saga;
pub use saga::{
    a_scheduled_event_waits_in_the_outbox_until_due,
    completed_sagas_are_archived_after_their_retention,
    completed_sagas_are_deleted_after_their_retention, concurrent_steps_of_one_saga_lose_no_update,
};

/// The test event: a credit to an account, keyed by account, numbered per test.
#[event(name = "ledger.credited", version = 1, key = account)]
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Credited {
    pub account: String,
    pub seq: i64,
    pub note: String,
}

/// Same event without a partition key.
#[event(name = "ledger.audited", version = 1)]
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Audited {
    pub seq: i64,
}

pub fn credit(account: impl Into<String>, seq: i64) -> Credited {
    Credited {
        account: account.into(),
        seq,
        note: String::new(),
    }
}

/// A bind argument for the few portable statements the suite runs itself.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// What the suite needs from a database besides the library: portable statements on the
/// caller's connection, and the user's transaction.
pub trait TestDb: SqlDatabase {
    fn exec<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        args: Vec<Arg>,
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;
    fn exec_pool<'p>(pool: &'p Pool<Self>, sql: &'p str, args: Vec<Arg>) -> BoxFuture<'p, u64>;
    fn scalar<'p>(pool: &'p Pool<Self>, sql: &'p str) -> BoxFuture<'p, i64>;
    fn effects(pool: &Pool<Self>) -> BoxFuture<'_, Vec<(String, String, i64)>>;
    fn stored_payloads(pool: &Pool<Self>) -> BoxFuture<'_, Vec<(Vec<u8>, Option<String>)>>;
    /// The user's write transaction (SQLite: `BEGIN IMMEDIATE`).
    fn begin(pool: &Pool<Self>) -> BoxFuture<'_, Transaction<'static, Self>>;
    fn commit(tx: Transaction<'static, Self>) -> BoxFuture<'static, Result<(), sqlx::Error>>;
    fn rollback(tx: Transaction<'static, Self>) -> BoxFuture<'static, ()>;
}

/// Generates one test per shared test, on the database `fresh` makes, run on the executor
/// `EVENTBUS_TEST_RUNTIME` names.
#[macro_export]
macro_rules! shared_tests {
    ($fresh:path; $($name:ident $(($($arg:expr),*))?),* $(,)?) => { $(
        #[test]
        fn $name() {
            eventbus_integration::run(2, async {
                let Some(db) = $fresh(stringify!($name)).await else { return };
                suite::$name(&db $($(, $arg)*)?).await;
                db.finish().await;
            });
        }
    )* };
}

/// Implements [`TestDb`] for a concrete database; the SQL is the same on both. `$begin` is
/// the statement that opens the user's write transaction.
#[macro_export]
macro_rules! impl_test_db {
    ($db:ty, $begin:literal) => {
        impl suite::TestDb for $db {
            fn exec<'c>(
                conn: &'c mut <$db as sqlx::Database>::Connection,
                sql: &'c str,
                args: Vec<suite::Arg>,
            ) -> futures::future::BoxFuture<'c, Result<u64, sqlx::Error>> {
                Box::pin(async move {
                    let mut query = sqlx::query(sql);
                    for arg in args {
                        query = match arg {
                            suite::Arg::Text(s) => query.bind(s),
                            suite::Arg::Int(i) => query.bind(i),
                        };
                    }
                    Ok(query.execute(conn).await?.rows_affected())
                })
            }

            fn exec_pool<'p>(
                pool: &'p sqlx::Pool<$db>,
                sql: &'p str,
                args: Vec<suite::Arg>,
            ) -> futures::future::BoxFuture<'p, u64> {
                Box::pin(async move {
                    let mut conn = pool.acquire().await.expect("connection");
                    Self::exec(&mut *conn, sql, args).await.expect(sql)
                })
            }

            fn scalar<'p>(
                pool: &'p sqlx::Pool<$db>,
                sql: &'p str,
            ) -> futures::future::BoxFuture<'p, i64> {
                Box::pin(async move {
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(pool)
                        .await
                        .expect(sql)
                })
            }

            fn effects(
                pool: &sqlx::Pool<$db>,
            ) -> futures::future::BoxFuture<'_, Vec<(String, String, i64)>> {
                Box::pin(async move {
                    sqlx::query_as("SELECT event_id, account, seq FROM effects ORDER BY n")
                        .fetch_all(pool)
                        .await
                        .expect("effects")
                })
            }

            fn stored_payloads(
                pool: &sqlx::Pool<$db>,
            ) -> futures::future::BoxFuture<'_, Vec<(Vec<u8>, Option<String>)>> {
                Box::pin(async move {
                    sqlx::query_as("SELECT payload, key_id FROM outbox ORDER BY id")
                        .fetch_all(pool)
                        .await
                        .expect("payloads")
                })
            }

            fn begin(
                pool: &sqlx::Pool<$db>,
            ) -> futures::future::BoxFuture<'_, sqlx::Transaction<'static, $db>> {
                Box::pin(async move { pool.begin_with($begin).await.expect("begin") })
            }

            fn commit(
                tx: sqlx::Transaction<'static, $db>,
            ) -> futures::future::BoxFuture<'static, Result<(), sqlx::Error>> {
                Box::pin(tx.commit())
            }

            fn rollback(
                tx: sqlx::Transaction<'static, $db>,
            ) -> futures::future::BoxFuture<'static, ()> {
                Box::pin(async move { tx.rollback().await.expect("rollback") })
            }
        }
    };
}

/// A fresh database for one test, removed by [`Fresh::finish`].
pub struct Fresh<DB: TestDb> {
    pub pool: Pool<DB>,
    pub teardown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

impl<DB: TestDb> Fresh<DB> {
    pub async fn finish(self) {
        self.pool.close().await;
        (self.teardown)().await;
    }
}

/// The application's own tables, created next to the outbox's in each fresh database;
/// `identity` is the database's auto-numbered key column type.
pub fn app_schema(identity: &str) -> [String; 2] {
    [
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)".to_owned(),
        format!(
            "CREATE TABLE effects (n {identity}, event_id TEXT NOT NULL, account TEXT NOT NULL, \
             seq BIGINT NOT NULL)"
        ),
    ]
}

/// Polls `check` every 10 ms until it holds; panics after `timeout` (scaled by the suite's
/// time factor, as every wait of the suites).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let held = eventbus_integration::eventually_reads(timeout, check, |held| *held).await;
    assert!(
        held.is_ok(),
        "timed out after {:?} waiting for {what}",
        eventbus_integration::scaled(timeout)
    );
}

/// Events seen by the handler for the first time (after its inbox transaction committed).
#[derive(Clone, Default)]
pub struct FirstSeen(Arc<Mutex<Vec<(String, i64)>>>);

impl FirstSeen {
    pub fn all(&self) -> Vec<(String, i64)> {
        self.0.lock().unwrap().clone()
    }
}

/// Enqueues `events` in a transaction of their own and commits it, as a service's write that
/// carries nothing but events would; the events' ids, in order.
pub async fn enqueue_committed<DB: TestDb, E: eventbus::Event + Clone>(
    pool: &Pool<DB>,
    outbox: &Outbox<DB>,
    events: &[E],
) -> Vec<Uuid> {
    let mut tx = DB::begin(pool).await;
    let ids = outbox
        .enqueue_batch(&mut *tx, events)
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    ids
}

/// The handler's side effect: a row of `effects` for `env`, in the caller's transaction.
async fn record_effect<DB: TestDb>(
    conn: &mut DB::Connection,
    env: &Envelope<Credited>,
) -> Result<u64, sqlx::Error> {
    DB::exec(
        conn,
        "INSERT INTO effects (event_id, account, seq) VALUES ($1, $2, $3)",
        vec![
            Arg::Text(env.id.to_string()),
            Arg::Text(env.data.account.clone()),
            Arg::Int(env.data.seq),
        ],
    )
    .await
}

/// A bus on `backend` with the SQL inbox as its dedupe store and a handler that records
/// each credit as a row of `effects` inside the inbox transaction.
pub async fn downstream<DB: TestDb>(
    pool: &Pool<DB>,
    backend: &MemoryBackend,
    concurrency: usize,
) -> (Bus, FirstSeen) {
    let seen = FirstSeen::default();
    let log = seen.clone();
    let handler = move |ctx: Context, env: Envelope<Credited>| {
        let log = log.clone();
        async move {
            let Some(mut tx) = ctx.transaction::<DB>().await? else {
                return Ok(());
            };
            record_effect::<DB>(&mut tx, &env).await?;
            DB::commit(tx).await?;
            log.0.lock().unwrap().push((env.data.account, env.data.seq));
            Ok(())
        }
    };
    let bus = Bus::builder()
        .backend(backend.clone())
        .inbox(Arc::new(SqlInbox::new(pool.clone())))
        .extension(pool.clone())
        .subscribe(
            Subscription::new("ledger.credited", handler)
                .group("ledger")
                .concurrency(concurrency)
                .retries(20)
                .backoff(Backoff::exponential(
                    Duration::from_millis(5),
                    Duration::from_millis(100),
                )),
        )
        .start()
        .await
        .expect("bus");
    (bus, seen)
}

fn memory(backend: &MemoryBackend) -> Arc<dyn Backend> {
    Arc::new(backend.clone())
}

fn fast<DB: TestDb>(pool: &Pool<DB>) -> eventbus::outbox::OutboxBuilder<DB> {
    Outbox::builder(pool.clone())
        .poll_interval(Duration::from_millis(20))
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .retention(Retention::keep())
}

fn decode(payload: &[u8]) -> RawEnvelope {
    RawEnvelope::decode(payload).expect("envelope")
}

fn seq_of(payload: &[u8]) -> (Option<String>, i64) {
    let env = decode(payload);
    let data: serde_json::Value = serde_json::from_str(env.data.get()).expect("data");
    (
        data["account"].as_str().map(str::to_owned),
        data["seq"].as_i64().expect("seq"),
    )
}

/// Asserts each key's sequence numbers come in increasing order.
fn assert_ordered_per_key(events: impl IntoIterator<Item = (String, i64)>) {
    let mut last: HashMap<String, i64> = HashMap::new();
    for (key, seq) in events {
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(prev < seq, "key {key}: {seq} after {prev}");
        }
    }
}

pub async fn migrate_is_idempotent<DB: TestDb>(
    _db: &Fresh<DB>,
    migrate: impl Fn() -> BoxFuture<'static, ()>,
) {
    migrate().await;
    migrate().await;
}

/// Rolled back: no row, nothing published. Committed: published, handled exactly once.
pub async fn rollback_publishes_nothing_commit_publishes_once<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let (bus, seen) = downstream(pool, &backend, 2).await;
    let outbox = fast(pool).build().expect("outbox");
    let dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");

    let mut tx = DB::begin(pool).await;
    let insert = "INSERT INTO accounts (id, balance) VALUES ($1, 0)";
    DB::exec(&mut *tx, insert, vec![Arg::Text("ghost".into())])
        .await
        .expect("insert");
    let ghost = outbox
        .enqueue(&mut *tx, &credit("ghost", 1))
        .await
        .expect("enqueue");
    DB::rollback(tx).await;

    let mut tx = DB::begin(pool).await;
    DB::exec(&mut *tx, insert, vec![Arg::Text("alice".into())])
        .await
        .expect("insert");
    let id = outbox
        .enqueue(&mut *tx, &credit("alice", 2))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    outbox.wake();

    eventually(
        "the committed event to be handled",
        Duration::from_secs(10),
        || async { DB::scalar(pool, "SELECT count(*) FROM effects").await == 1 },
    )
    .await;
    // The row is marked SENT after the publish, and the handler's log after its commit.
    eventually(
        "the row to be marked SENT",
        Duration::from_secs(10),
        || async {
            outbox
                .rows(OutboxState::Sent, 10)
                .await
                .expect("rows")
                .len()
                == 1
        },
    )
    .await;
    eventually("the handler's log", Duration::from_secs(10), || async {
        !seen.all().is_empty()
    })
    .await;
    // Give a stray (rolled back) event time to show up, then check nothing else came.
    sleep(Duration::from_millis(200)).await;
    let published = backend.messages("ledger.credited");
    assert_eq!(published.len(), 1, "exactly one message published");
    assert_eq!(decode(&published[0].message.payload).id, id);
    assert_ne!(ghost, id);
    assert_eq!(
        DB::effects(pool).await,
        vec![(id.to_string(), "alice".to_owned(), 2)]
    );
    assert_eq!(DB::scalar(pool, "SELECT count(*) FROM accounts").await, 1);
    assert_eq!(
        DB::scalar(pool, "SELECT count(*) FROM outbox").await,
        1,
        "no row for the rollback"
    );
    let sent = outbox.rows(OutboxState::Sent, 10).await.expect("rows");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].event_id, id);
    assert_eq!(sent[0].attempts, 1);
    assert!(sent[0].sent_at.is_some());
    assert_eq!(seen.all(), vec![("alice".to_owned(), 2)]);
    assert!(dispatcher.shutdown(Duration::from_secs(5)).await);
    bus.shutdown(Duration::from_secs(5)).await;
}

/// The broker duplicates deliveries and loses acks: the handler's side effect still happens
/// once per event, thanks to the inbox transaction.
pub async fn exactly_once_downstream_under_redelivery<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let (bus, _) = downstream(pool, &backend, 4).await;
    backend.inject(Faults {
        duplicate_deliveries: 15,
        lose_acks: 15,
        ..Faults::default()
    });
    let outbox = fast(pool).batch_size(7).build().expect("outbox");
    let dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    let mut ids = HashSet::new();
    for batch in 0..5 {
        let mut tx = DB::begin(pool).await;
        let events: Vec<Credited> = (0..6)
            .map(|i| credit(format!("a{}", i % 3), batch * 6 + i))
            .collect();
        ids.extend(
            outbox
                .enqueue_batch(&mut *tx, &events)
                .await
                .expect("enqueue"),
        );
        DB::commit(tx).await.expect("commit");
    }
    outbox.wake();
    eventually("30 effects", Duration::from_secs(20), || async {
        DB::scalar(pool, "SELECT count(*) FROM effects").await >= 30 && backend.outstanding() == 0
    })
    .await;
    let effects = DB::effects(pool).await;
    assert_eq!(effects.len(), 30);
    let handled: HashSet<Uuid> = effects
        .iter()
        .map(|(id, _, _)| id.parse().unwrap())
        .collect();
    assert_eq!(handled, ids);
    assert_ordered_per_key(effects.into_iter().map(|(_, k, s)| (k, s)));
    let stats = bus.stats();
    assert!(
        stats.duplicates > 0,
        "the faults caused redeliveries: {stats:?}"
    );
    assert_eq!(DB::scalar(pool, "SELECT count(*) FROM inbox").await, 30);
    dispatcher.shutdown(Duration::from_secs(5)).await;
    bus.shutdown(Duration::from_secs(5)).await;
}

/// Aborts the dispatcher 20 times while 5 000 events are enqueued and relayed: every event
/// arrives, each side effect happens once, order per key holds.
pub async fn kill_dispatcher_while_events_flow<DB: TestDb>(
    db: &Fresh<DB>,
    batch_size: u32,
    concurrency: usize,
) {
    const EVENTS: i64 = 5_000;
    const PER_TX: i64 = 50;
    const KEYS: i64 = 40;
    const KILLS: usize = 20;
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let (bus, seen) = downstream(pool, &backend, 8).await;
    let outbox = fast(pool)
        .batch_size(batch_size)
        .concurrency(concurrency)
        .build()
        .expect("outbox");

    let producer = {
        let outbox = outbox.clone();
        let pool = pool.clone();
        spawn(async move {
            for chunk in 0..EVENTS / PER_TX {
                let events: Vec<Credited> = (0..PER_TX)
                    .map(|i| {
                        let n = chunk * PER_TX + i;
                        credit(format!("k{}", n % KEYS), n)
                    })
                    .collect();
                enqueue_committed(&pool, &outbox, &events).await;
                outbox.wake();
                sleep(Duration::from_millis(fastrand::u64(2..12))).await;
            }
        })
    };

    let mut dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    for _ in 0..KILLS {
        sleep(Duration::from_millis(fastrand::u64(10..50))).await;
        dispatcher.abort().await;
        dispatcher = outbox
            .dispatcher(memory(&backend))
            .start()
            .expect("dispatcher");
    }
    producer.await;
    eventually(
        "all 5 000 side effects",
        Duration::from_secs(120),
        || async { DB::scalar(pool, "SELECT count(*) FROM effects").await >= EVENTS },
    )
    .await;
    eventually("the backlog to drain", Duration::from_secs(30), || async {
        outbox.backlog().await.expect("backlog").pending == 0 && backend.outstanding() == 0
    })
    .await;
    let published = backend.messages("ledger.credited").len() as i64;
    let effects = DB::effects(pool).await;
    let distinct: HashSet<&String> = effects.iter().map(|(id, _, _)| id).collect();
    assert_eq!(
        effects.len() as i64,
        EVENTS,
        "every event's side effect exactly once"
    );
    assert_eq!(distinct.len() as i64, EVENTS);
    assert!(published >= EVENTS, "{published} published");
    let stats = bus.stats();
    eprintln!(
        "{} kills: {published} messages published for {EVENTS} events ({} republished), \
         {} duplicates absorbed by the inbox",
        KILLS,
        published - EVENTS,
        stats.duplicates
    );
    assert_ordered_per_key(seen.all());
    assert_eq!(
        DB::scalar(pool, "SELECT count(*) FROM outbox WHERE state = 'SENT'").await,
        EVENTS
    );
    dispatcher.shutdown(Duration::from_secs(5)).await;
    bus.shutdown(Duration::from_secs(5)).await;
}

/// A failing publish is retried after a backoff without letting later rows of its key
/// overtake it; after `retry_max` attempts the row is `FAILED` and dead-lettered.
pub async fn publish_failure_backs_off_then_dead_letters<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let outbox = fast(pool)
        .retry_max(3)
        .backoff(
            Backoff::exponential(Duration::from_millis(40), Duration::from_millis(200))
                .with_jitter(false),
        )
        .build()
        .expect("outbox");

    // Two rows of one key; the batch call and the first single call fail.
    backend.inject(Faults {
        fail_publishes: 2,
        ..Faults::default()
    });
    let mut tx = DB::begin(pool).await;
    let first = outbox
        .enqueue(&mut *tx, &credit("k", 1))
        .await
        .expect("enqueue");
    let second = outbox
        .enqueue(&mut *tx, &credit("k", 2))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    let started = Instant::now();
    let dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually("both rows sent", Duration::from_secs(10), || async {
        backend.messages("ledger.credited").len() == 2
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "waited for the backoff"
    );
    let order: Vec<Uuid> = backend
        .messages("ledger.credited")
        .iter()
        .map(|m| decode(&m.message.payload).id)
        .collect();
    assert_eq!(order, vec![first, second], "the retried row kept its place");
    eventually("rows marked sent", Duration::from_secs(5), || async {
        outbox
            .rows(OutboxState::Sent, 10)
            .await
            .expect("rows")
            .len()
            == 2
    })
    .await;
    let sent = outbox.rows(OutboxState::Sent, 10).await.expect("rows");
    assert_eq!(sent[0].attempts, 2, "one failure, one success");
    assert!(sent[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("injected publish failure"));
    assert_eq!(sent[1].attempts, 1);

    // A row that fails every time: three attempts, then the dead-letter queue.
    backend.inject(Faults {
        fail_publishes: 3,
        ..Faults::default()
    });
    let mut tx = DB::begin(pool).await;
    let doomed = outbox
        .enqueue(&mut *tx, &credit("d", 3))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    let started = Instant::now();
    outbox.wake();
    eventually("the row to fail", Duration::from_secs(10), || async {
        !outbox
            .rows(OutboxState::Failed, 10)
            .await
            .expect("rows")
            .is_empty()
    })
    .await;
    // Waits of 40 ms and 80 ms between the three attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
    let failed = outbox.rows(OutboxState::Failed, 10).await.expect("rows");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event_id, doomed);
    assert_eq!(failed[0].attempts, 3);
    assert!(failed[0].first_failed_at.is_some());
    let dead = bus_dead_letters(&backend).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].group, "outbox");
    assert_eq!(dead[0].failure.attempts, 3);
    assert!(
        dead[0].failure.message.contains("injected publish failure"),
        "{}",
        dead[0].failure.message
    );
    assert_eq!(dead[0].envelope().expect("envelope").id, doomed);
    assert_eq!(
        backend.messages("ledger.credited").len(),
        2,
        "never published"
    );
    let backlog = outbox.backlog().await.expect("backlog");
    assert_eq!((backlog.pending, backlog.failed), (0, 1));
    assert!(dispatcher.stats().dead_lettered == 1 && dispatcher.stats().retries >= 3);

    // Fixed: requeue it.
    assert_eq!(
        outbox.retry_failed(&[failed[0].id]).await.expect("requeue"),
        1
    );
    eventually("the requeued row sent", Duration::from_secs(5), || async {
        backend.messages("ledger.credited").len() == 3
    })
    .await;
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

async fn bus_dead_letters(backend: &MemoryBackend) -> Vec<eventbus::dead_letter::DeadLetter> {
    eventbus::dead_letter::DeadLetters::new(memory(backend))
        .list("ledger.credited")
        .await
        .expect("dead letters")
}

/// When the dead-letter publish fails too, the row stays `PENDING` and a later pass
/// dead-letters it.
pub async fn failed_dead_letter_publish_is_retried<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let outbox = fast(pool).retry_max(2).build().expect("outbox");
    backend.inject(Faults {
        fail_publishes: 3, // two attempts, then the first dead-letter publish
        ..Faults::default()
    });
    let mut tx = DB::begin(pool).await;
    outbox
        .enqueue(&mut *tx, &credit("x", 1))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    let dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually("the row to fail", Duration::from_secs(10), || async {
        outbox.backlog().await.expect("backlog").failed == 1
    })
    .await;
    assert_eq!(bus_dead_letters(&backend).await.len(), 1);
    assert_eq!(backend.pending_faults().fail_publishes, 0);
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// Rows sealed under key A still dispatch after the active key becomes B; payloads are
/// unreadable at rest; a row whose key left the ring ends `FAILED`, not dead-lettered.
pub async fn encryption_round_trip_and_rotation<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let key_a = [0x11u8; 32];
    let key_b = [0x22u8; 32];
    let writer_a = fast(pool)
        .encryption(KeyRing::new("A", &key_a).expect("ring"))
        .build()
        .expect("outbox");
    let secret = |seq: i64| Credited {
        account: "acct-7".into(),
        seq,
        note: format!("alice-{seq}@example.com"),
    };
    let mut tx = DB::begin(pool).await;
    let a = writer_a
        .enqueue(&mut *tx, &secret(1))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");

    let rotated = KeyRing::new("B", &key_b)
        .expect("ring")
        .with_old_key("A", &key_a)
        .expect("old");
    let writer_b = fast(pool).encryption(rotated).build().expect("outbox");
    let mut tx = DB::begin(pool).await;
    let b = writer_b
        .enqueue(&mut *tx, &secret(2))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");

    let stored = DB::stored_payloads(pool).await;
    assert_eq!(
        stored.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
        vec![Some("A".to_owned()), Some("B".to_owned())]
    );
    for (payload, _) in &stored {
        assert!(
            !payload.windows(5).any(|w| w == b"alice"),
            "PII readable at rest"
        );
        assert!(RawEnvelope::decode(payload).is_err());
    }

    let dispatcher = writer_b
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually("both sent", Duration::from_secs(10), || async {
        backend.messages("ledger.credited").len() == 2
    })
    .await;
    let got: Vec<(Uuid, String)> = backend
        .messages("ledger.credited")
        .iter()
        .map(|m| {
            let env = decode(&m.message.payload);
            let data: Credited = serde_json::from_str(env.data.get()).expect("data");
            (env.id, data.note)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (a, "alice-1@example.com".to_owned()),
            (b, "alice-2@example.com".to_owned())
        ]
    );
    dispatcher.shutdown(Duration::from_secs(5)).await;

    // Key A retired too early: the row cannot be read, so it fails without a dead letter.
    let mut tx = DB::begin(pool).await;
    writer_a
        .enqueue(&mut *tx, &secret(3))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    let b_only = fast(pool)
        .retry_max(2)
        .encryption(KeyRing::new("B", &key_b).expect("ring"))
        .build()
        .expect("outbox");
    let dispatcher = b_only
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually(
        "the unreadable row to fail",
        Duration::from_secs(10),
        || async { b_only.backlog().await.expect("backlog").failed == 1 },
    )
    .await;
    let failed = b_only.rows(OutboxState::Failed, 10).await.expect("rows");
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("`A` is not in the key ring"));
    assert_eq!(dispatcher.stats().undecryptable, 1);
    assert!(bus_dead_letters(&backend).await.is_empty());
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// `SENT` rows past retention go in batches (deleted or archived); `PENDING` and `FAILED`
/// rows stay; old inbox rows go too.
pub async fn cleanup_removes_sent_rows_and_old_inbox_rows<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let relay = fast(pool).build().expect("outbox");
    let events: Vec<Credited> = (0..10).map(|i| credit("c", i)).collect();
    enqueue_committed(pool, &relay, &events).await;
    let dispatcher = relay
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually("ten rows sent", Duration::from_secs(10), || async {
        DB::scalar(pool, "SELECT count(*) FROM outbox WHERE state = 'SENT'").await == 10
    })
    .await;
    dispatcher.shutdown(Duration::from_secs(5)).await;
    let mut tx = DB::begin(pool).await;
    relay
        .enqueue(&mut *tx, &credit("p", 99))
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");

    let keep_a_day = fast(pool)
        .retention(Retention::delete_after(Duration::from_secs(86_400)))
        .build()
        .expect("outbox");
    assert_eq!(keep_a_day.cleanup().await.expect("cleanup"), 0, "too young");

    sleep(Duration::from_millis(5)).await;
    let archive = fast(pool)
        .retention(Retention::archive_after(Duration::ZERO).batch_size(3))
        .build()
        .expect("outbox");
    // Ten rows in batches of three: four statements, everything archived.
    assert_eq!(archive.cleanup().await.expect("archive"), 10);
    assert_eq!(
        DB::scalar(pool, "SELECT count(*) FROM outbox_archive").await,
        10
    );
    assert_eq!(
        DB::scalar(pool, "SELECT count(*) FROM outbox").await,
        1,
        "pending row stays"
    );
    assert_eq!(
        DB::scalar(pool, "SELECT count(*) FROM outbox WHERE state = 'PENDING'").await,
        1
    );

    let inbox = SqlInbox::new(pool.clone());
    for _ in 0..10 {
        use eventbus::inbox::InboxStore;
        inbox.record("g", Uuid::now_v7()).await.expect("record");
    }
    assert_eq!(
        inbox
            .cleanup(Duration::from_secs(3600), 4)
            .await
            .expect("cleanup"),
        0
    );
    sleep(Duration::from_millis(5)).await;
    assert_eq!(inbox.cleanup(Duration::ZERO, 4).await.expect("cleanup"), 10);
    assert_eq!(DB::scalar(pool, "SELECT count(*) FROM inbox").await, 0);
    let err = inbox.cleanup(Duration::ZERO, 0).await.expect_err("batch 0");
    assert!(
        err.to_string().contains("inbox.cleanup.batch_size"),
        "{err}"
    );
}

/// The dispatcher's own periodic cleanup deletes `SENT` rows.
pub async fn dispatcher_runs_the_cleanup<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let outbox = fast(pool)
        .retention(
            Retention::delete_after(Duration::ZERO)
                .interval(Duration::from_millis(50))
                .batch_size(2),
        )
        .build()
        .expect("outbox");
    let dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    let events: Vec<Credited> = (0..5).map(|i| credit("r", i)).collect();
    enqueue_committed(pool, &outbox, &events).await;
    outbox.wake();
    eventually("sent rows deleted", Duration::from_secs(10), || async {
        backend.messages("ledger.credited").len() == 5
            && DB::scalar(pool, "SELECT count(*) FROM outbox").await == 0
    })
    .await;
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// Backlog size and age of the oldest pending row (metrics hooks).
pub async fn backlog_reports_size_and_age<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let outbox = fast(pool).build().expect("outbox");
    assert_eq!(outbox.backlog().await.expect("backlog"), Default::default());
    let events: Vec<Audited> = (0..5).map(|seq| Audited { seq }).collect();
    enqueue_committed(pool, &outbox, &events).await;
    sleep(Duration::from_millis(120)).await;
    let backlog = outbox.backlog().await.expect("backlog");
    assert_eq!(backlog.pending, 5);
    let age = backlog.oldest_pending_age.expect("age");
    assert!(
        age >= Duration::from_millis(100) && age < Duration::from_secs(30),
        "{age:?}"
    );

    let backend = MemoryBackend::new();
    let dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually("backlog drained", Duration::from_secs(10), || async {
        outbox.backlog().await.expect("backlog").pending == 0
    })
    .await;
    let backlog = outbox.backlog().await.expect("backlog");
    assert_eq!(backlog.oldest_pending_age, None);
    // Keyless rows keep their order too (one batch, one call).
    let seqs: Vec<i64> = backend
        .messages("ledger.audited")
        .iter()
        .map(|m| seq_of(&m.message.payload).1)
        .collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// The inbox transaction: `None` once the event is committed as handled; a rolled back one
/// leaves the event unhandled; two concurrent deliveries of one event: one wins.
pub async fn inbox_transaction_claims_an_event_once<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let inbox = SqlInbox::new(pool.clone());
    let id = Uuid::now_v7();
    let tx = inbox
        .begin("g", id)
        .await
        .expect("begin")
        .expect("first time");
    DB::rollback(tx).await;
    let tx = inbox
        .begin("g", id)
        .await
        .expect("begin")
        .expect("rolled back: still new");
    DB::commit(tx).await.expect("commit");
    assert!(
        inbox.begin("g", id).await.expect("begin").is_none(),
        "already handled"
    );
    assert!(
        inbox.begin("other", id).await.expect("begin").is_some(),
        "per group"
    );

    // Concurrent: the second waits for the first and then sees it handled.
    let id = Uuid::now_v7();
    let first = inbox.begin("g", id).await.expect("begin").expect("new");
    let second = {
        let inbox = inbox.clone();
        spawn(async move { inbox.begin("g", id).await.expect("begin").is_some() })
    };
    sleep(Duration::from_millis(100)).await;
    assert!(
        !second.is_finished(),
        "the second delivery waits for the first"
    );
    DB::commit(first).await.expect("commit");
    assert!(!second.await, "the second delivery sees the event handled");
}

/// A replay reaches a handler that does its work in the inbox transaction: the event is
/// handled already, but a replay is meant to run again, so the transaction is begun anyway.
pub async fn replay_reaches_a_handler_that_uses_the_inbox_transaction<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let (bus, seen) = downstream(pool, &backend, 1).await;
    let from = chrono::Utc::now() - chrono::Duration::seconds(1);
    bus.publish(Credited {
        account: "a".into(),
        seq: 1,
        note: String::new(),
    })
    .await
    .expect("publish");
    eventually("first delivery handled", Duration::from_secs(10), || {
        let n = seen.all().len();
        async move { n == 1 }
    })
    .await;
    let progress = bus
        .replay(eventbus::replay::ReplayRequest {
            topic: "ledger.credited".into(),
            from,
            to: chrono::Utc::now(),
            event_type: None,
            group: Some("ledger".into()),
        })
        .expect("replay");
    eventually(
        "the replay handled in its transaction",
        Duration::from_secs(10),
        || {
            let n = seen.all().len();
            async move { n == 2 }
        },
    )
    .await;
    // The replay counts an event after handing it over, which the handler may see first.
    eventually("the replay to finish", Duration::from_secs(10), || {
        let done = progress.status().done;
        async move { done }
    })
    .await;
    assert_eq!(progress.status().replayed, 1, "{:?}", progress.status());
    assert_eq!(
        DB::effects(pool).await.len(),
        2,
        "the replay's effect committed"
    );
    bus.shutdown(Duration::from_secs(5)).await;
}

/// Settings are checked and errors name them.
pub async fn config_errors_name_the_setting<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let cases: Vec<(eventbus::outbox::OutboxBuilder<DB>, &str)> = vec![
        (
            Outbox::builder(pool.clone()).batch_size(0),
            "outbox.batch_size",
        ),
        (
            Outbox::builder(pool.clone()).retry_max(0),
            "outbox.retry_max",
        ),
        (
            Outbox::builder(pool.clone()).poll_interval(Duration::ZERO),
            "outbox.poll_interval",
        ),
        (
            Outbox::builder(pool.clone()).concurrency(0),
            "outbox.concurrency",
        ),
        (
            Outbox::builder(pool.clone()).backoff(Backoff::exponential(
                Duration::from_secs(5),
                Duration::from_secs(1),
            )),
            "outbox.backoff.initial",
        ),
        (
            Outbox::builder(pool.clone())
                .retention(Retention::delete_after(Duration::ZERO).batch_size(0)),
            "outbox.retention.batch_size",
        ),
        (Outbox::builder(pool.clone()).source(" "), "outbox.source"),
    ];
    for (builder, setting) in cases {
        let err = builder.build().expect_err(setting).to_string();
        assert!(err.contains(setting), "{setting}: {err}");
    }
}

/// The bus runs the outbox: enqueued events reach the handler, the publishes are counted by the
/// bus's publisher, and shutting the bus down stops the dispatcher.
pub async fn a_bus_owned_outbox_relays_and_stops_with_the_bus<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let seen = FirstSeen::default();
    let log = seen.clone();
    let outbox = fast(pool).build().expect("outbox");
    let bus = Bus::builder()
        .backend(backend.clone())
        .source("ledger-service")
        .outbox(outbox.clone())
        .subscribe(
            Subscription::new("ledger.credited", move |env: Envelope<Credited>| {
                log.0.lock().unwrap().push((env.data.account, env.data.seq));
                async { Ok(()) }
            })
            .group("ledger"),
        )
        .start()
        .await
        .expect("bus");
    assert_eq!(bus.dispatchers().len(), 1);
    let events: Vec<Credited> = (0..5).map(|i| credit("a", i)).collect();
    enqueue_committed(pool, &outbox, &events).await;
    outbox.wake();
    eventually("5 events handled", Duration::from_secs(10), || {
        let n = seen.all().len();
        async move { n == 5 }
    })
    .await;
    assert_eq!(
        seen.all(),
        (0..5).map(|i| ("a".to_owned(), i)).collect::<Vec<_>>()
    );
    // The publisher counts a publish, and the dispatcher its batch, after the backend took
    // it, which the handler may see first.
    let published = r#"event_published_total{service="ledger-service",topic="ledger.credited"} 5"#;
    let counted = eventbus_integration::eventually_reads(
        Duration::from_secs(10),
        || {
            let seen = (
                bus.metrics().encode(),
                bus.dispatchers()[0].stats().published,
            );
            async move { seen }
        },
        |(text, batches)| text.contains(published) && *batches == 5,
    )
    .await;
    if let Err((text, batches)) = counted {
        panic!("the relay publishes through the bus's publisher: {batches} counted by the dispatcher, metrics:\n{text}");
    }
    assert!(bus.dispatchers()[0].is_running());
    let report = bus.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained, "{report:?}");
    assert!(
        !bus.dispatchers()[0].is_running(),
        "the bus's shutdown stops its dispatcher"
    );
}

/// A handler's follow-on events go to the outbox inside its inbox transaction: exactly one
/// follow-on per handled event, with the causal metadata, through lost acknowledgements
/// (the handled event comes back and the inbox turns it away) and a failure after the
/// follow-on was written (its transaction rolls back, the retry writes it again).
pub async fn follow_on_events_commit_with_the_handler<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let outbox = fast(pool).build().expect("outbox");
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let audits = Arc::new(Mutex::new(Vec::new()));
    let audit_log = audits.clone();
    let handler = move |ctx: Context, env: Envelope<Credited>| {
        let failed_once = failed_once.clone();
        async move {
            let Some(mut tx) = ctx.transaction::<DB>().await? else {
                return Ok(());
            };
            record_effect::<DB>(&mut tx, &env).await?;
            ctx.enqueue::<DB, _>(&mut tx, Audited { seq: env.data.seq })
                .await?;
            if env.data.seq % 3 == 0 && failed_once.lock().unwrap().insert(env.data.seq) {
                // Dropped uncommitted: the effect and the follow-on roll back together.
                return Err(eventbus::HandlerError::transient(
                    "fails once after the follow-on",
                ));
            }
            DB::commit(tx).await?;
            Ok(())
        }
    };
    let bus = Bus::builder()
        .backend(backend.clone())
        .inbox(Arc::new(SqlInbox::new(pool.clone())))
        .outbox(outbox.clone())
        .subscribe(
            Subscription::new("ledger.credited", handler)
                .group("ledger")
                .concurrency(2)
                .retries(10)
                .backoff(Backoff::exponential(
                    Duration::from_millis(5),
                    Duration::from_millis(50),
                )),
        )
        .subscribe(
            Subscription::new("ledger.audited", move |env: Envelope<Audited>| {
                audit_log.lock().unwrap().push(env);
                async { Ok(()) }
            })
            .group("audit"),
        )
        .start()
        .await
        .expect("bus");
    backend.inject(Faults {
        lose_acks: 6,
        ..Faults::default()
    });
    let publisher = bus.publisher();
    let mut credits = HashMap::new();
    for seq in 0..12 {
        let envelope = Envelope::new(credit(format!("a{}", seq % 4), seq))
            .with_correlation_id(format!("flow-{seq}"));
        credits.insert(envelope.id, seq);
        publisher.publish_envelope(envelope).await.expect("publish");
    }
    eventually("12 follow-ons handled", Duration::from_secs(20), || {
        let n = audits.lock().unwrap().len();
        let outstanding = backend.outstanding();
        async move { n >= 12 && outstanding == 0 }
    })
    .await;
    assert_eq!(DB::scalar(pool, "SELECT count(*) FROM effects").await, 12);
    assert_eq!(
        DB::scalar(pool, "SELECT count(*) FROM outbox").await,
        12,
        "one follow-on row per credit: none from the rolled-back attempts, none from the redeliveries"
    );
    let audits = audits.lock().unwrap().clone();
    assert_eq!(audits.len(), 12, "each follow-on handled once");
    let mut caused = HashSet::new();
    for audit in &audits {
        let cause: Uuid = audit
            .causation_id
            .as_deref()
            .and_then(|c| c.parse().ok())
            .expect("causation id");
        let seq = credits[&cause];
        assert_eq!(audit.data.seq, seq);
        assert_eq!(
            audit.correlation_id.as_deref(),
            Some(format!("flow-{seq}").as_str())
        );
        assert!(caused.insert(cause), "two follow-ons of one credit");
    }
    assert!(
        bus.stats().duplicates > 0,
        "the lost acks redelivered: {:?}",
        bus.stats()
    );
    bus.shutdown(Duration::from_secs(5)).await;
}

/// The value of the first series of gauge `name` in a Prometheus text scrape.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes `url` every 20 ms until `check` holds for the text; panics after 10 s with the
/// last scrape.
async fn scrape_until(url: &str, what: &str, check: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let url = url.to_owned();
        let last = unblock(move || {
            ureq::get(&url)
                .call()
                .expect("GET /metrics")
                .body_mut()
                .read_to_string()
                .expect("body")
        })
        .await;
        if check(&last) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} never showed; last scrape:\n{last}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// `event_outbox_backlog` and `event_publish_lag_seconds` follow the outbox, read from the
/// admin server's `/metrics` while the broker refuses publishes and after it recovers.
pub async fn outbox_metrics_follow_the_backlog<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    backend.inject(Faults {
        fail_publishes: u32::MAX,
        ..Faults::default()
    });
    let outbox = fast(pool)
        .retry_max(1000)
        .metrics_interval(Duration::from_millis(20))
        .build()
        .expect("outbox");
    let bus = Bus::builder()
        .backend(backend.clone())
        .source("ledger-service")
        .outbox(outbox.clone())
        .start()
        .await
        .expect("bus");
    let bus = Arc::new(bus);
    let admin = serve_admin(
        bus.clone(),
        eventbus::admin::AdminConfig::new(([127, 0, 0, 1], 0).into()),
    )
    .await;
    let url = format!("http://{}/metrics", admin.local_addr());
    let events: Vec<Credited> = (0..5).map(|i| credit("a", i)).collect();
    enqueue_committed(pool, &outbox, &events).await;
    scrape_until(&url, "backlog 5 and a publish lag", |text| {
        gauge(text, "event_outbox_backlog") == Some(5.0)
            && gauge(text, "event_publish_lag_seconds").is_some_and(|l| l > 0.0)
    })
    .await;
    backend.clear_faults();
    outbox.wake();
    scrape_until(&url, "the backlog drained", |text| {
        gauge(text, "event_outbox_backlog") == Some(0.0)
            && gauge(text, "event_publish_lag_seconds") == Some(0.0)
    })
    .await;
    admin.shutdown().await;
    bus.shutdown(Duration::from_secs(5)).await;
}
