//! Redis Streams: the framework against the raw `redis` client on the same server, in one run.
//!
//! ```sh
//! EVENTBUS_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p eventbus-framework --features redis --bench redis_throughput
//! ```
//!
//! Prints events/s for (a) raw pipelined `XADD`, (b) `publish_batch` through the bus,
//! (c) a raw `XREADGROUP` + `XACK` loop, (d) the full consume pipeline with the Redis inbox,
//! the ratios b/a and d/c, and end-to-end latency percentiles at a fixed rate.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom};
use eventbus::{event, Bus, CatalogEntry, Envelope, Subscription};
use serde::{Deserialize, Serialize};

#[event(name = "bench.tick", version = 1)]
#[derive(Serialize, Deserialize, Clone)]
struct Tick {
    n: u64,
    sent_us: u64,
    note: String,
}

const EVENTS: u64 = 50_000;
const BATCH: usize = 100;
/// Events published one by one (each awaited): fewer, since each costs a round trip.
const ONE_BY_ONE: u64 = 10_000;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn tick(n: u64) -> Tick {
    Tick {
        n,
        sent_us: now_us(),
        note: "order o-123 for customer c-42".into(),
    }
}

/// Publish rounds, raw and bus interleaved.
const PUBLISH_ROUNDS: usize = 3;
/// Consume rounds of the raw loops and the pipeline with the Redis inbox, interleaved.
const CONSUME_ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The same job by hand: build and encode each envelope, pipeline the `XADD`s, `batch` per
/// round trip (1: each `XADD` awaited before the next). `same_record`: the entry the bus writes
/// (`topic` and `type` fields, the envelope with a source, a correlation id and a
/// `traceparent`); otherwise a minimal one (`type` and a bare envelope).
async fn raw_xadd(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    events: u64,
    batch: u64,
    same_record: bool,
) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while n < events {
        let mut pipe = redis::pipe();
        for i in n..n + batch {
            let mut envelope = Envelope::new(tick(i));
            if same_record {
                support::as_published(&mut envelope);
            }
            let payload = envelope.encode().unwrap();
            let xadd = pipe.cmd("XADD").arg(stream).arg("*");
            if same_record {
                xadd.arg("topic").arg("bench.tick");
            }
            xadd.arg("type")
                .arg("bench.tick")
                .arg("payload")
                .arg(payload)
                .ignore();
        }
        pipe.query_async::<()>(conn).await.unwrap();
        n += batch;
    }
    start.elapsed()
}

/// `bus.publish` of each event, awaited before the next.
async fn bus_publish_one_by_one(bus: &Bus, events: u64) -> Duration {
    let publisher = bus.publisher();
    let start = Instant::now();
    for i in 0..events {
        publisher.publish(tick(i)).await.unwrap();
    }
    start.elapsed()
}

async fn bus_publish(bus: &Bus) -> Duration {
    let publisher = bus.publisher();
    let start = Instant::now();
    let mut n = 0;
    while n < EVENTS {
        let batch: Vec<_> = (n..n + BATCH as u64)
            .map(|i| Envelope::new(tick(i)))
            .collect();
        publisher.publish_batch(batch).await.unwrap();
        n += BATCH as u64;
    }
    start.elapsed()
}

/// Creates consumer group `group` on `stream` from its first entry (already there is fine).
async fn create_group(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) {
    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .query_async(conn)
        .await;
}

/// The next new entries of `stream` for `group`, up to 128, waiting up to a second.
async fn read_group(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> redis::streams::StreamReadReply {
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c1")
        .arg("COUNT")
        .arg(128)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap()
}

/// CPU seconds the Redis server's main thread has used (`INFO cpu`): what a phase costs the
/// server, apart from what it costs the client.
async fn server_cpu(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| {
            matches!(
                *name,
                "used_cpu_sys_main_thread" | "used_cpu_user_main_thread"
            )
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// The server's call count of each command so far (`INFO commandstats`).
async fn server_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let mut calls: std::collections::BTreeMap<String, u64> = info
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect();
    // The reads the server's event loop served: one per client round trip, or fewer when
    // requests arrive together.
    let stats: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    if let Some(reads) = stats
        .lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
    {
        calls.insert("(reads)".into(), reads);
    }
    calls
}

/// What the Redis server had done at one moment: its main thread's CPU time and its call
/// counts. Two of them, around a consume phase, give what the phase cost the server.
struct ServerSnapshot {
    cpu: f64,
    calls: std::collections::BTreeMap<String, u64>,
}

/// One consume phase as the server saw it: the wall time, the server's CPU seconds, and the
/// commands it served per event.
struct PhaseCost {
    name: &'static str,
    wall: Duration,
    cpu: f64,
    commands: String,
}

impl ServerSnapshot {
    async fn take(conn: &mut redis::aio::MultiplexedConnection) -> Self {
        ServerSnapshot {
            cpu: server_cpu(conn).await,
            calls: server_calls(conn).await,
        }
    }

    /// The cost of the phase `name` that ran since this snapshot, in `wall`.
    async fn phase(
        self,
        conn: &mut redis::aio::MultiplexedConnection,
        name: &'static str,
        wall: Duration,
    ) -> PhaseCost {
        let after = ServerSnapshot::take(conn).await;
        PhaseCost {
            name,
            wall,
            cpu: after.cpu - self.cpu,
            commands: calls_per_event(&self.calls, &after.calls),
        }
    }
}

/// Commands per event between two [`server_calls`] snapshots, the commands the bench itself
/// sends to read the snapshots left out.
fn calls_per_event(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut calls: Vec<(String, f64)> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| {
            (
                name.clone(),
                (n - before.get(name).copied().unwrap_or(0)) as f64 / EVENTS as f64,
            )
        })
        .filter(|(_, per)| *per >= 0.001)
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    calls
        .iter()
        .map(|(name, per)| format!("{name} {per:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn raw_consume(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Duration {
    create_group(conn, stream, group).await;
    let start = Instant::now();
    let mut done = 0u64;
    while done < EVENTS {
        let reply = read_group(conn, stream, group).await;
        let ids: Vec<String> = reply
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|e| e.id.clone()))
            .collect();
        if ids.is_empty() {
            continue;
        }
        for key in &reply.keys {
            for entry in &key.ids {
                if let Some(redis::Value::BulkString(p)) = entry.map.get("payload") {
                    let env: Envelope<Tick> = serde_json::from_slice(p).unwrap();
                    std::hint::black_box(env.data.n);
                }
            }
        }
        redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(&ids)
            .query_async::<()>(conn)
            .await
            .unwrap();
        done += ids.len() as u64;
    }
    start.elapsed()
}

/// The raw loop of (c) with the dedupe a hand-rolled inbox does, batched as tightly as a
/// client can, in the layout of the bus's Redis inbox (a set per group and 10 seconds of event
/// time, `{prefix}:inbox:{group}:@{seconds}`, holding the 16-byte ids): per read of 128
/// entries, one `SMISMEMBER` per set their ids fall in, the entries not found handled, then
/// one pipeline of an `SADD` and a `PEXPIREAT` per set and the `XACK`. The same Redis work per
/// event as the pipeline with the Redis inbox (d), with none of its per-delivery machinery.
async fn raw_consume_with_inbox(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    prefix: &str,
    group: &str,
) -> Duration {
    const BUCKET_MS: u64 = 10_000;
    const TTL_MS: u64 = 30 * 86_400_000;
    create_group(conn, stream, group).await;
    let start = Instant::now();
    let mut done = 0u64;
    while done < EVENTS {
        let reply = read_group(conn, stream, group).await;
        let mut ids = Vec::new();
        // Per set (by its start, unix ms): the events whose ids fall in it.
        let mut sets: Vec<(u64, Vec<Envelope<Tick>>)> = Vec::new();
        for key in &reply.keys {
            for entry in &key.ids {
                ids.push(entry.id.clone());
                if let Some(redis::Value::BulkString(p)) = entry.map.get("payload") {
                    let env: Envelope<Tick> = serde_json::from_slice(p).unwrap();
                    let b = env.id.as_bytes();
                    let made = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
                    let bucket = made - made % BUCKET_MS;
                    match sets.iter_mut().find(|(start, _)| *start == bucket) {
                        Some((_, events)) => events.push(env),
                        None => sets.push((bucket, vec![env])),
                    }
                }
            }
        }
        if ids.is_empty() {
            continue;
        }
        let key = |bucket: u64| format!("{prefix}:inbox:{group}:@{}", bucket / 1000);
        let mut lookups = redis::pipe();
        for (bucket, events) in &sets {
            let members: Vec<&[u8]> = events.iter().map(|e| &e.id.as_bytes()[..]).collect();
            lookups.cmd("SMISMEMBER").arg(key(*bucket)).arg(members);
        }
        let seen: Vec<Vec<bool>> = lookups.query_async(conn).await.unwrap();
        let mut pipe = redis::pipe();
        for ((bucket, events), seen) in sets.iter().zip(seen) {
            let mut fresh: Vec<&[u8]> = Vec::new();
            for (env, seen) in events.iter().zip(seen) {
                if !seen {
                    std::hint::black_box(env.data.n);
                    fresh.push(&env.id.as_bytes()[..]);
                }
            }
            if !fresh.is_empty() {
                pipe.cmd("SADD").arg(key(*bucket)).arg(fresh).ignore();
                pipe.cmd("PEXPIREAT")
                    .arg(key(*bucket))
                    .arg(bucket + BUCKET_MS + TTL_MS)
                    .ignore();
            }
        }
        pipe.cmd("XACK").arg(stream).arg(group).arg(&ids).ignore();
        pipe.query_async::<()>(conn).await.unwrap();
        done += ids.len() as u64;
    }
    start.elapsed()
}

/// `round` names the group, so that each round reads the whole stream afresh.
async fn pipeline_consume(
    backend: &RedisBackend,
    concurrency: usize,
    redis_inbox: bool,
    round: usize,
) -> Duration {
    // The handler signals the last event itself: a task polling the count every millisecond
    // would cost the pipeline's side CPU the raw loops do not pay.
    let handled = Arc::new(AtomicU64::new(0));
    let all_handled = Arc::new(tokio::sync::Notify::new());
    let done = all_handled.clone();
    let start = Instant::now();
    let mut builder = Bus::builder()
        .backend(backend.clone())
        .catalog(&[CatalogEntry::of::<Tick>()]);
    if redis_inbox {
        builder = builder.inbox(Arc::new(backend.inbox()));
    }
    let bus = builder
        .subscribe(
            Subscription::new("bench.tick", move |env: Envelope<Tick>| {
                std::hint::black_box(env.data.n);
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == EVENTS {
                    done.notify_one();
                }
                async { Ok(()) }
            })
            .group(format!("pipeline-{concurrency}-{redis_inbox}-{round}"))
            .concurrency(concurrency),
        )
        .start()
        .await
        .unwrap();
    all_handled.notified().await;
    let elapsed = start.elapsed();
    bus.shutdown(Duration::from_secs(5)).await;
    elapsed
}

async fn latency(backend: &RedisBackend, per_second: u64, seconds: u64) -> Vec<u64> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let s = samples.clone();
    let bus = Bus::builder()
        .backend(backend.clone())
        .catalog(&[CatalogEntry::of::<Tick>()])
        .inbox(Arc::new(backend.inbox()))
        .subscribe(
            Subscription::new("bench.tick", move |env: Envelope<Tick>| {
                s.lock()
                    .unwrap()
                    .push(now_us().saturating_sub(env.data.sent_us));
                async { Ok(()) }
            })
            .group("latency")
            .concurrency(8),
        )
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = per_second * seconds;
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let start = Instant::now();
    for n in 0..total {
        let due = start + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        bus.publish(tick(n)).await.unwrap();
    }
    while (samples.lock().unwrap().len() as u64) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.shutdown(Duration::from_secs(5)).await;
    let mut v = samples.lock().unwrap().clone();
    v.sort_unstable();
    v
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure.
        println!("redis_throughput: run with `cargo bench` to measure");
        return;
    }
    let Ok(url) = std::env::var("EVENTBUS_REDIS_URL") else {
        eprintln!("EVENTBUS_REDIS_URL is not set; start a redis-server and point it there");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let prefix = format!("bench-{}", eventbus::Uuid::now_v7().simple());
        let mut config = RedisConfig::new(&url);
        config.prefix = prefix.clone();
        config.start_from = StartFrom::Earliest;
        config.batch_size = 256;
        let backend = RedisBackend::connect(config).await.unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let raw_stream = format!("{prefix}:raw");

        // Publishing: raw and bus rounds interleaved, each figure the median of its rounds. The
        // consumers below read the first round's streams.
        let bus = Bus::builder().backend(backend.clone()).start().await.unwrap();
        let (mut a, mut a_min, mut a1, mut b, mut b1) = (vec![], vec![], vec![], vec![], vec![]);
        // The server's CPU in the batched publishing phases, (a) and (b), over every round.
        let (mut a_cpu, mut b_cpu) = (0.0, 0.0);
        // RBENCH_ONLY=publish: the batched publishing rounds alone, (a) and (b), then exit (for
        // a profile of the client).
        let only_publish = std::env::var("RBENCH_ONLY").as_deref() == Ok("publish");
        for round in 0..PUBLISH_ROUNDS {
            let stream = if round == 0 { raw_stream.clone() } else { format!("{raw_stream}-{round}") };
            let cpu = server_cpu(&mut conn).await;
            a.push(raw_xadd(&mut conn, &stream, EVENTS, BATCH as u64, true).await);
            a_cpu += server_cpu(&mut conn).await - cpu;
            let cpu = server_cpu(&mut conn).await;
            b.push(bus_publish(&bus).await);
            b_cpu += server_cpu(&mut conn).await - cpu;
            if only_publish {
                continue;
            }
            a_min.push(raw_xadd(&mut conn, &format!("{stream}-minimal"), EVENTS, BATCH as u64, false).await);
            a1.push(raw_xadd(&mut conn, &format!("{stream}-single"), ONE_BY_ONE, 1, true).await);
            b1.push(bus_publish_one_by_one(&bus, ONE_BY_ONE).await);
        }
        bus.shutdown(Duration::from_secs(1)).await;
        let published = (PUBLISH_ROUNDS as u64 * EVENTS) as f64;
        let publish_cpu = format!(
            "Redis main thread, CPU per event publishing: a {:.1} µs, b {:.1} µs",
            a_cpu * 1e6 / published,
            b_cpu * 1e6 / published
        );
        if only_publish {
            let (a, b) = (median(a), median(b));
            println!("(a) raw pipelined XADD            {:>10.0} events/s", rate(EVENTS, a));
            println!("(b) bus publish_batch             {:>10.0} events/s   b/a = {:.2}", rate(EVENTS, b), a.as_secs_f64() / b.as_secs_f64());
            println!("{publish_cpu}");
            return;
        }
        let (a, a_min, a1, b, b1) = (median(a), median(a_min), median(a1), median(b), median(b1));
        // What each consume phase cost the server: CPU and commands per event (of the last
        // round).
        let mut phases = Vec::new();
        // RBENCH_CONSUMER=inbox1 (or inbox64, inbox256, memory64) runs that consumer alone, for
        // a profile of it.
        let alone = std::env::var("RBENCH_CONSUMER").unwrap_or_default();
        let consume = |name: &'static str, concurrency: usize, redis_inbox: bool, round: usize| {
            let run = alone.is_empty() || alone == name;
            let backend = backend.clone();
            async move {
                if run {
                    pipeline_consume(&backend, concurrency, redis_inbox, round).await
                } else {
                    Duration::ZERO
                }
            }
        };
        // The raw loops and the pipeline with the Redis inbox at concurrency 64, interleaved
        // (each round a group of its own): the ratio is of their medians.
        let (mut c, mut c_inbox, mut d64) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..CONSUME_ROUNDS {
            let last = round + 1 == CONSUME_ROUNDS;
            let before = ServerSnapshot::take(&mut conn).await;
            let t = raw_consume(&mut conn, &raw_stream, &format!("raw-{round}")).await;
            if last {
                phases.push(before.phase(&mut conn, "c", t).await);
            }
            c.push(t);
            let before = ServerSnapshot::take(&mut conn).await;
            let group = format!("raw-inbox-{round}");
            let t = raw_consume_with_inbox(&mut conn, &raw_stream, &prefix, &group).await;
            if last {
                phases.push(before.phase(&mut conn, "c'", t).await);
            }
            c_inbox.push(t);
            let before = ServerSnapshot::take(&mut conn).await;
            let t = consume("inbox64", 64, true, round).await;
            if last {
                phases.push(before.phase(&mut conn, "d c64", t).await);
            }
            d64.push(t);
        }
        let (c, c_inbox, d64) = (median(c), median(c_inbox), median(d64));
        let d1 = consume("inbox1", 1, true, 0).await;
        let d256 = consume("inbox256", 256, true, 0).await;
        let before = ServerSnapshot::take(&mut conn).await;
        let m64 = consume("memory64", 64, false, 0).await;
        phases.push(before.phase(&mut conn, "d' c64", m64).await);

        println!("redis streams, {EVENTS} events of {} bytes, batches of {BATCH}", Envelope::new(tick(0)).encode().unwrap().len());
        println!("publishing: median of {PUBLISH_ROUNDS} interleaved rounds; consuming: (c), (c') and (d) at concurrency 64 median of {CONSUME_ROUNDS} interleaved rounds");
        println!("(a) raw pipelined XADD            {:>10.0} events/s   (the entry the bus writes)", rate(EVENTS, a));
        println!("(a') raw XADD, minimal entry      {:>10.0} events/s   (type + bare envelope)", rate(EVENTS, a_min));
        println!("(b) bus publish_batch             {:>10.0} events/s   b/a = {:.2}", rate(EVENTS, b), a.as_secs_f64() / b.as_secs_f64());
        println!("(a1) raw XADD, one by one         {:>10.0} events/s   ({ONE_BY_ONE} events)", rate(ONE_BY_ONE, a1));
        println!("(b1) bus.publish, one by one      {:>10.0} events/s   b1/a1 = {:.2}", rate(ONE_BY_ONE, b1), a1.as_secs_f64() / b1.as_secs_f64());
        println!("(c) raw XREADGROUP+XACK loop      {:>10.0} events/s", rate(EVENTS, c));
        println!("(c') raw loop + inbox SMISMEMBER/SADD {:>6.0} events/s   (the Redis work of (d), batched per read)", rate(EVENTS, c_inbox));
        println!("(d) pipeline+inbox, concurrency 1 {:>10.0} events/s   d/c = {:.2}", rate(EVENTS, d1), c.as_secs_f64() / d1.as_secs_f64());
        println!("(d) pipeline+inbox, concurrency 64{:>10.0} events/s   d/c = {:.2}   d/c' = {:.2}", rate(EVENTS, d64), c.as_secs_f64() / d64.as_secs_f64(), c_inbox.as_secs_f64() / d64.as_secs_f64());
        println!("(d) pipeline+inbox, concurrency 256{:>9.0} events/s   d/c = {:.2}", rate(EVENTS, d256), c.as_secs_f64() / d256.as_secs_f64());
        println!("(d') pipeline, in-process inbox, c64{:>9.0} events/s   d'/c = {:.2}", rate(EVENTS, m64), c.as_secs_f64() / m64.as_secs_f64());
        println!("{publish_cpu}");
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / EVENTS as f64;
        println!(
            "Redis main thread, CPU / wall per event: {}",
            phases
                .iter()
                .map(|phase| format!(
                    "{} {:.1} / {:.1} µs",
                    phase.name,
                    phase.cpu * 1e6 / EVENTS as f64,
                    per_event(phase.wall)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for phase in &phases {
            println!("Redis commands per event, {}: {}", phase.name, phase.commands);
        }
        let mut fresh = RedisConfig::new(&url);
        fresh.prefix = format!("{prefix}-latency");
        let latency_backend = RedisBackend::connect(fresh).await.unwrap();
        let lat = latency(&latency_backend, 2000, 5).await;
        println!(
            "e2e latency at 2000 events/s for 5 s: p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            pct(&lat, 0.50), pct(&lat, 0.95), pct(&lat, 0.99), pct(&lat, 1.0)
        );
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
        keys.truncate(10_000);
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
        }
    });
}
