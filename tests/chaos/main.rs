//! The chaos harness: proves that nothing is lost and nothing is applied twice while
//! processes die and the broker restarts.
//!
//! A **producer** commits orders and their events (through the transactional outbox) in
//! PostgreSQL; a **dispatcher** relays the outbox to the broker (Redis Streams or Kafka); two
//! **consumers** (`--consumers`), members of one group, apply each event to a ledger table
//! inside the inbox transaction. The **driver** runs them as separate OS processes, `kill -9`s
//! a random one again and again and restarts it, restarts the broker a few times, and finally
//! checks the invariants:
//!
//! - every committed order's event is applied exactly once in the ledger;
//! - each customer's orders are applied in the order they were committed (`inversions=0`);
//! - no ledger entry exists without its committed order;
//! - every poison event (a fraction injected on purpose) is in the dead-letter queue with its
//!   reason, and not in the ledger.
//!
//! With `--backend redis` (the default) it uses the Redis server of `EVENTBUS_REDIS_URL` (and
//! `EVENTBUS_REDIS_DIR`/`EVENTBUS_REDIS_SERVER` to restart it) under a fresh key prefix. With
//! `--backend kafka` the driver hosts librdkafka's mock cluster (a Kafka-protocol broker on a
//! loopback port, which the roles reach over TCP) and takes its broker down and up again. With
//! `--backend tansu` it starts a tansu broker of its own (`EVENTBUS_TANSU_BIN`) in a fresh
//! directory and restarts it. All need `DATABASE_URL`; `scripts/test` exports them all.
//!
//! ```sh
//! cargo run -p eventbus-integration --bin chaos -- --events 3000 --kills 12 --broker-restarts 2
//! cargo run -p eventbus-integration --bin chaos -- --backend kafka --events 3000 --kills 12
//! cargo run --release -p eventbus-integration --bin chaos -- --kills 50 --events 100000   # long run
//! ```

use std::collections::HashSet;
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::backend::kafka::rdkafka::producer::DefaultProducerContext;
use eventbus::backend::kafka::{KafkaBackend, KafkaConfig, OnDifference, TopicPlan, TopicSettings};
use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom};
use eventbus::backend::Backend;
use eventbus::outbox::sqlx::{self, PgPool, Postgres};
use eventbus::outbox::{postgres, ContextExt, Outbox, SqlInbox};
use eventbus::{
    event, Bus, CatalogEntry, Context, Envelope, Event, HandlerError, HandlerResult, Subscription,
    Uuid,
};
use eventbus_integration::Tansu;
use serde::{Deserialize, Serialize};

#[event(name = "chaos.order.placed", version = 1, key = customer)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderPlaced {
    n: i64,
    customer: String,
    poison: bool,
}

/// One event in this many is poison: its handler fails permanently.
const POISON_EVERY: i64 = 97;
const GROUP: &str = "ledger";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"))
}

/// The broker the events travel through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Broker {
    /// The Redis server of `EVENTBUS_REDIS_URL`.
    Redis,
    /// librdkafka's mock cluster, hosted by the driver process and reached over TCP.
    Kafka,
    /// A tansu broker of the run's own.
    Tansu,
}

impl Broker {
    fn parse(name: &str) -> Result<Broker, String> {
        match name {
            "redis" => Ok(Broker::Redis),
            "kafka" => Ok(Broker::Kafka),
            "tansu" => Ok(Broker::Tansu),
            other => Err(format!(
                "--backend: `{other}` is not a backend; expected redis, kafka or tansu"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Kafka => "kafka",
            Broker::Tansu => "tansu",
        }
    }

    /// The broker of this run, as the driver passed it to the roles in `CHAOS_BACKEND`.
    fn of_run() -> Broker {
        Broker::parse(&env("CHAOS_BACKEND")).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn redis_config() -> RedisConfig {
    let mut config = RedisConfig::new(env("EVENTBUS_REDIS_URL"));
    config.prefix = env("CHAOS_PREFIX");
    config.start_from = StartFrom::Earliest;
    config.claim_idle = Duration::from_millis(1500);
    config.claim_interval = Duration::from_millis(500);
    config.block = Duration::from_millis(300);
    config.command_timeout = Duration::from_secs(2);
    // Members split 4 partitions; a killed member's leases lapse after 3 s.
    config.partitions = 4;
    config.lease_ttl = Duration::from_secs(3);
    config
}

fn kafka_config() -> KafkaConfig {
    let mut config = KafkaConfig::new(env("CHAOS_KAFKA_BROKERS"));
    config.consumer.start_from = eventbus::backend::kafka::StartFrom::Earliest;
    // A killed consumer's partitions go to its successor once its session has expired.
    config.consumer.session_timeout = Duration::from_secs(6);
    config.consumer.heartbeat_interval = Duration::from_millis(500);
    config.consumer.commit_interval = Duration::from_millis(500);
    config.producer.delivery_timeout = Duration::from_secs(60);
    config.operation_timeout = Duration::from_secs(10);
    if Broker::of_run() == Broker::Tansu {
        // tansu 0.6's sqlite storage fails an idempotent producer that outlived a broker
        // restart (see tests/kafka_restart.rs); without idempotence a retried send may be
        // duplicated, and the inbox absorbs it.
        config
            .producer_options
            .insert("enable.idempotence".into(), "false".into());
    }
    if let Ok(debug) = std::env::var("CHAOS_KAFKA_DEBUG") {
        config.consumer_options.insert("debug".into(), debug);
    }
    config
}

/// Connects to the run's broker, trying again while it is down (it may be restarting).
async fn connect(broker: Broker) -> Arc<dyn Backend> {
    loop {
        let backend: Result<Arc<dyn Backend>, eventbus::Error> = match broker {
            Broker::Redis => RedisBackend::connect(redis_config())
                .await
                .map(|b| Arc::new(b) as Arc<dyn Backend>),
            Broker::Kafka | Broker::Tansu => KafkaBackend::connect(kafka_config())
                .await
                .map(|b| Arc::new(b) as Arc<dyn Backend>),
        };
        match backend {
            Ok(backend) => return backend,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn pool() -> PgPool {
    PgPool::connect(&env("CHAOS_DATABASE_URL"))
        .await
        .expect("connect to the chaos database")
}

/// Commits orders with their events, in transactions of 20, resuming after the last committed.
async fn producer(events: i64) {
    let pool = pool().await;
    let outbox = Outbox::new(pool.clone());
    let start: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(n) + 1, 0) FROM chaos_orders")
        .fetch_one(&pool)
        .await
        .expect("resume point");
    let mut n = start;
    while n < events {
        let mut tx = pool.begin().await.expect("begin");
        for _ in 0..20.min(events - n) {
            let event = OrderPlaced {
                n,
                customer: format!("c{}", n % 50),
                poison: n % POISON_EVERY == 13,
            };
            let id = outbox.enqueue(&mut tx, &event).await.expect("enqueue");
            sqlx::query("INSERT INTO chaos_orders (n, event_id, poison) VALUES ($1, $2, $3)")
                .bind(n)
                .bind(id)
                .bind(event.poison)
                .execute(&mut *tx)
                .await
                .expect("insert order");
            n += 1;
        }
        tx.commit().await.expect("commit");
    }
}

async fn dispatcher() -> ExitCode {
    let pool = pool().await;
    let backend = connect(Broker::of_run()).await;
    let outbox = Outbox::builder(pool)
        .batch_size(200)
        .build()
        .expect("outbox");
    let _running = outbox.dispatcher(backend).start().expect("dispatcher");
    futures::future::pending::<ExitCode>().await
}

async fn apply(ctx: Context, env: Envelope<OrderPlaced>) -> HandlerResult {
    if env.data.poison {
        return Err(HandlerError::permanent(format!(
            "order {} is poison",
            env.data.n
        )));
    }
    let Some(mut tx) = ctx.transaction::<Postgres>().await? else {
        return Ok(());
    };
    sqlx::query("INSERT INTO chaos_ledger (event_id, n) VALUES ($1, $2)")
        .bind(env.id)
        .bind(env.data.n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn consumer() -> ExitCode {
    let pool = pool().await;
    let backend = connect(Broker::of_run()).await;
    let _bus = Bus::builder()
        .backend_arc(backend)
        .source("chaos-consumer")
        .catalog(&[CatalogEntry::of::<OrderPlaced>()])
        .inbox(Arc::new(SqlInbox::new(pool.clone())))
        .extension(pool)
        .subscribe(
            Subscription::new("chaos.order.*", apply)
                .group(GROUP)
                .concurrency(8)
                .retries(3)
                .backoff(eventbus::Backoff::exponential(
                    Duration::from_millis(50),
                    Duration::from_millis(500),
                )),
        )
        .start()
        .await
        .expect("bus");
    futures::future::pending::<ExitCode>().await
}

struct Options {
    backend: Broker,
    consumers: usize,
    events: i64,
    kills: u32,
    broker_restarts: u32,
    timeout: Duration,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        backend: Broker::Redis,
        consumers: 2,
        events: 3000,
        kills: 12,
        broker_restarts: 2,
        timeout: Duration::from_secs(600),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--backend" => o.backend = Broker::parse(value)?,
            "--events" => o.events = number(value)? as i64,
            "--consumers" => o.consumers = (number(value)? as usize).max(1),
            "--kills" => o.kills = number(value)? as u32,
            "--broker-restarts" => o.broker_restarts = number(value)? as u32,
            "--timeout-secs" => o.timeout = Duration::from_secs(number(value)?),
            other => return Err(format!("unknown option {other}; expected --backend, --consumers, --events, --kills, --broker-restarts, --timeout-secs")),
        }
    }
    Ok(o)
}

/// The broker server the driver restarts.
enum BrokerServer {
    /// The Redis server of `EVENTBUS_REDIS_URL`: shut down (AOF flushed) and started again.
    Redis,
    /// The mock cluster: its broker goes down (connections refused, requests failed) for two
    /// seconds and comes back with its log intact.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// The run's tansu broker: stopped and started again on its sqlite database.
    Tansu(Arc<Tansu>),
}

impl BrokerServer {
    async fn restart(&self) {
        match self {
            BrokerServer::Redis => tokio::task::spawn_blocking(eventbus_integration::restart_redis)
                .await
                .expect("restart redis"),
            BrokerServer::Mock(mock) => {
                mock.broker_down(1).expect("broker down");
                tokio::time::sleep(Duration::from_secs(2)).await;
                mock.broker_up(1).expect("broker up");
            }
            BrokerServer::Tansu(tansu) => {
                let tansu = tansu.clone();
                tokio::task::spawn_blocking(move || tansu.restart())
                    .await
                    .expect("restart tansu")
            }
        }
    }
}

fn spawn(role: &str, vars: &[(&str, String)], events: i64) -> Child {
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.arg(role).arg(events.to_string());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null());
    // With CHAOS_LOG set (a tracing filter such as `eventbus=debug`), each role logs to
    // `chaos-{role}.log` in the temporary directory.
    if std::env::var_os("CHAOS_LOG").is_some() {
        let path = std::env::temp_dir().join(format!("chaos-{role}.log"));
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => {
                cmd.stderr(file);
            }
            Err(error) => eprintln!("chaos: cannot open {}: {error}", path.display()),
        }
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {role}: {e}"))
}

/// The dead letters of the orders topic, and the ids of the events they hold.
async fn dead_letters(
    backend: Arc<dyn Backend>,
) -> Result<(Vec<eventbus::dead_letter::DeadLetter>, HashSet<Uuid>), eventbus::Error> {
    let dead = eventbus::dead_letter::DeadLetters::new(backend)
        .list("chaos.order.placed")
        .await?;
    let ids = dead
        .iter()
        .filter_map(|d| d.envelope().ok().map(|e| e.id))
        .collect();
    Ok((dead, ids))
}

async fn driver(options: Options) -> ExitCode {
    let started = Instant::now();
    // A fresh database and key prefix for this run.
    let admin = PgPool::connect(&env("DATABASE_URL"))
        .await
        .expect("connect to postgres");
    let db = format!("chaos_{}", Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create database");
    let base = env("DATABASE_URL");
    let db_url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("DATABASE_URL has no database part"),
    };
    let prefix = format!("chaos-{}", Uuid::now_v7().simple());
    std::env::set_var("CHAOS_DATABASE_URL", &db_url);
    std::env::set_var("CHAOS_PREFIX", &prefix);
    let pool = pool().await;
    postgres::migrate(&pool).await.expect("migrate");
    sqlx::query("CREATE TABLE chaos_orders (n BIGINT PRIMARY KEY, event_id UUID NOT NULL, poison BOOL NOT NULL)")
        .execute(&pool)
        .await
        .expect("orders table");
    sqlx::query("CREATE TABLE chaos_ledger (seq BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL, n BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .expect("ledger table");

    let mut vars = vec![
        ("CHAOS_BACKEND", options.backend.name().to_owned()),
        ("CHAOS_DATABASE_URL", db_url.clone()),
        ("CHAOS_PREFIX", prefix.clone()),
    ];
    std::env::set_var("CHAOS_BACKEND", options.backend.name());
    let server = match options.backend {
        Broker::Redis => {
            vars.push(("EVENTBUS_REDIS_URL", env("EVENTBUS_REDIS_URL")));
            BrokerServer::Redis
        }
        Broker::Kafka => {
            let mock = MockCluster::new(1).expect("mock cluster");
            mock.create_topic(OrderPlaced::NAME, 4, 1).expect("topic");
            mock.create_topic(&format!("{}.dlq", OrderPlaced::NAME), 1, 1)
                .expect("dead-letter topic");
            std::env::set_var("CHAOS_KAFKA_BROKERS", mock.bootstrap_servers());
            vars.push(("CHAOS_KAFKA_BROKERS", mock.bootstrap_servers()));
            BrokerServer::Mock(mock)
        }
        Broker::Tansu => {
            let tansu = tokio::task::spawn_blocking(Tansu::private)
                .await
                .expect("start tansu");
            std::env::set_var("CHAOS_KAFKA_BROKERS", tansu.brokers());
            vars.push(("CHAOS_KAFKA_BROKERS", tansu.brokers()));
            let plan = TopicPlan::new()
                .retry_tiers([])
                .on_difference(OnDifference::Fail)
                .topic(OrderPlaced::NAME, TopicSettings::new(4));
            let admin = KafkaBackend::connect(kafka_config())
                .await
                .expect("connect to tansu");
            admin
                .provision(&plan)
                .await
                .expect("provision the chaos topics");
            BrokerServer::Tansu(Arc::new(tansu))
        }
    };
    let mut roles = vec!["producer", "dispatcher"];
    roles.extend(std::iter::repeat_n("consumer", options.consumers));
    let mut children: Vec<Option<Child>> = roles
        .iter()
        .map(|r| Some(spawn(r, &vars, options.events)))
        .collect();
    let mut producer_done = false;
    let (mut kills, mut restarts) = (0u32, 0u32);
    let mut rng = fastrand::Rng::with_seed(42);
    let restart_at: Vec<u32> = (1..=options.broker_restarts)
        .map(|i| i * options.kills.max(1) / (options.broker_restarts + 1))
        .collect();
    let mut chaos_done = options.kills == 0 && options.broker_restarts == 0;
    let mut last_progress = (0i64, Instant::now());
    // Reads the dead letters once the chaos is over (connected then: after any broker restart).
    let mut dlq_reader: Option<Arc<dyn Backend>> = None;
    loop {
        if started.elapsed() > options.timeout {
            eprintln!("chaos: timed out after {:?}", options.timeout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(200..800))).await;
        if !producer_done {
            if let Some(child) = children[0].as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    if status.success() {
                        producer_done = true;
                        children[0] = None;
                    } else {
                        children[0] = Some(spawn("producer", &vars, options.events));
                    }
                }
            }
        }
        if !chaos_done {
            if restarts < options.broker_restarts
                && restart_at.get(restarts as usize) == Some(&kills)
            {
                restarts += 1;
                server.restart().await;
            }
            let candidates: Vec<usize> = (0..roles.len())
                .filter(|&i| children[i].is_some())
                .collect();
            if kills < options.kills && !candidates.is_empty() {
                let victim = candidates[rng.usize(..candidates.len())];
                if let Some(mut child) = children[victim].take() {
                    let _ = child.kill(); // SIGKILL
                    let _ = child.wait();
                }
                kills += 1;
                children[victim] = Some(spawn(roles[victim], &vars, options.events));
            }
            chaos_done = kills >= options.kills && restarts >= options.broker_restarts;
        }
        if producer_done && chaos_done {
            let committed: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM chaos_orders WHERE NOT poison")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            let applied: i64 =
                sqlx::query_scalar("SELECT COUNT(DISTINCT event_id) FROM chaos_ledger")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(-1);
            // A poison event's dead letter has no later event of its key to wait behind (the
            // last of a customer's orders, or one in flight when its consumer was killed and
            // waiting for the takeover): wait for each, as for the applied orders.
            let poison: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chaos_orders WHERE poison")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            let reader = match &dlq_reader {
                Some(reader) => Arc::clone(reader),
                None => dlq_reader.insert(connect(options.backend).await).clone(),
            };
            let dead_lettered = match dead_letters(reader).await {
                Ok((_, ids)) => ids.len() as i64,
                Err(_) => -1,
            };
            if applied >= committed && pending == 0 && dead_lettered >= poison {
                // Give stragglers (redeliveries) a moment, then check.
                tokio::time::sleep(Duration::from_secs(3)).await;
                break;
            }
            let progress = applied + dead_lettered.max(0);
            if progress != last_progress.0 {
                last_progress = (progress, Instant::now());
            } else if last_progress.1.elapsed() > Duration::from_secs(60) {
                eprintln!("chaos: no progress for 60 s ({applied} of {committed} applied, {pending} pending in the outbox, {dead_lettered} of {poison} poison events dead-lettered)");
                break;
            }
        }
    }
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }

    // The invariants.
    let orders: Vec<(i64, Uuid, bool)> =
        sqlx::query_as("SELECT n, event_id, poison FROM chaos_orders")
            .fetch_all(&pool)
            .await
            .expect("orders");
    let ledger: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT event_id, n FROM chaos_ledger ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("ledger");
    // Per-key order: each customer's orders were committed (and published) in `n` order; an
    // inversion is an order applied after a later order of the same customer.
    let mut latest: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let mut inversions = 0usize;
    for (_, n) in &ledger {
        let customer = n % 50;
        match latest.get(&customer) {
            Some(&last) if *n < last => inversions += 1,
            _ => {
                latest.insert(customer, *n);
            }
        }
    }
    let committed: HashSet<Uuid> = orders.iter().filter(|o| !o.2).map(|o| o.1).collect();
    let poison: HashSet<Uuid> = orders.iter().filter(|o| o.2).map(|o| o.1).collect();
    let all_orders: HashSet<Uuid> = orders.iter().map(|o| o.1).collect();
    let applied: HashSet<Uuid> = ledger.iter().map(|l| l.0).collect();
    let reader = match dlq_reader {
        Some(reader) => reader,
        None => connect(options.backend).await,
    };
    let (dead, dead_ids) = dead_letters(reader).await.expect("dlq");
    let reasons_ok = dead.iter().all(|d| d.failure.message.contains("is poison"));
    let lost = committed.difference(&applied).count();
    let duplicated = ledger.len() - applied.len();
    let orphans = applied.difference(&all_orders).count();
    let poison_applied = poison.intersection(&applied).count();
    let poison_missing = poison.difference(&dead_ids).count();
    let misplaced = dead_ids.difference(&poison).count();
    println!(
        "chaos: backend={} consumers={} events={} committed={} kills={kills} broker_restarts={restarts} lost={lost} duplicated={duplicated} inversions={inversions} dead_lettered={} orphans={orphans} poison_applied={poison_applied} poison_missing={poison_missing} misplaced={misplaced} seconds={:.0}",
        options.backend.name(),
        options.consumers,
        options.events,
        orders.len(),
        dead_ids.len(),
        started.elapsed().as_secs_f64()
    );
    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await;
    let complete = orders.len() as i64 == options.events;
    if lost == 0
        && duplicated == 0
        && inversions == 0
        && orphans == 0
        && poison_applied == 0
        && poison_missing == 0
        && misplaced == 0
        && reasons_ok
        && complete
    {
        ExitCode::SUCCESS
    } else {
        if !complete {
            eprintln!(
                "chaos: the producer committed {} of {} orders",
                orders.len(),
                options.events
            );
        }
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("CHAOS_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("producer") => {
            let events = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            rt.block_on(producer(events));
            ExitCode::SUCCESS
        }
        Some("dispatcher") => rt.block_on(dispatcher()),
        Some("consumer") => rt.block_on(consumer()),
        _ => {
            let rest = if args.first().map(String::as_str) == Some("driver") {
                &args[1..]
            } else {
                &args[..]
            };
            match parse_options(rest) {
                Ok(options) => rt.block_on(driver(options)),
                Err(message) => {
                    eprintln!("chaos: {message}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
