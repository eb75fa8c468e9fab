//! Redis partitions: one member against two on a 16-partition topic, publishing with and
//! without partitions, and end-to-end latency, each beside the raw `redis` client on the same
//! server, in one run.
//!
//! ```sh
//! EVENTBUS_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p eventbus-framework --features redis --bench redis_partitions
//! ```
//!
//! Prints events/s for (a) raw pipelined `XADD` to 16 streams by key hash, (b) the bus's
//! `publish_batch` on 16 partitions and (b1) on one stream, (c) a raw `XREADGROUP` + `XACK`
//! loop over the 16 streams (pre-filled), (d1) one member and (d2) two members of a group on
//! the 16 partitions (settled first; the time runs from the raw client's first append of the
//! events to the last one handled), with the ratios, and end-to-end latency percentiles at a
//! fixed rate with two members.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventbus::backend::redis::{partition_of, RedisBackend, RedisConfig, StartFrom};
use eventbus::{event, Bus, CatalogEntry, Envelope, Subscription};
use serde::{Deserialize, Serialize};

#[event(name = "bench.order", version = 1, key = customer)]
#[derive(Serialize, Deserialize, Clone)]
struct Order {
    customer: String,
    n: u64,
    sent_us: u64,
}

const EVENTS: u64 = 40_000;
const BATCH: usize = 100;
const PARTITIONS: u32 = 16;
const KEYS: u64 = 1000;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn order(n: u64) -> Order {
    Order {
        customer: format!("c{}", n % KEYS),
        n,
        sent_us: now_us(),
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn config(url: &str, prefix: &str, partitions: u32) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.prefix = prefix.to_owned();
    config.start_from = StartFrom::Earliest;
    config.batch_size = 256;
    config.partitions = partitions;
    config.lease_ttl = Duration::from_secs(3);
    config
}

/// The same job by hand: encode the envelope the bus publishes (a source, a correlation id and
/// a `traceparent`), hash the key, pipeline the `XADD`s of the entry the bus writes (topic,
/// type, key, payload) to the partition streams `{streams}#{p}`.
async fn raw_xadd(conn: &mut redis::aio::MultiplexedConnection, streams: &str) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while n < EVENTS {
        let mut pipe = redis::pipe();
        for i in n..n + BATCH as u64 {
            let event = order(i);
            let stream = format!("{streams}#{}", partition_of(&event.customer, PARTITIONS));
            let mut envelope = Envelope::new(event.clone());
            support::as_published(&mut envelope);
            let payload = envelope.encode().unwrap();
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("topic")
                .arg("bench.order")
                .arg("type")
                .arg("bench.order")
                .arg("key")
                .arg(&event.customer)
                .arg("payload")
                .arg(payload)
                .ignore();
        }
        pipe.query_async::<()>(conn).await.unwrap();
        n += BATCH as u64;
    }
    start.elapsed()
}

async fn bus_publish(backend: &RedisBackend) -> Duration {
    let bus = Bus::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let publisher = bus.publisher();
    let start = Instant::now();
    let mut n = 0;
    while n < EVENTS {
        let batch: Vec<_> = (n..n + BATCH as u64)
            .map(|i| Envelope::new(order(i)))
            .collect();
        publisher.publish_batch(batch).await.unwrap();
        n += BATCH as u64;
    }
    let elapsed = start.elapsed();
    bus.shutdown(Duration::from_secs(1)).await;
    elapsed
}

/// One raw consumer over the 16 raw streams: `XREADGROUP` across all, decode, `XACK`.
async fn raw_consume(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Duration {
    let streams: Vec<String> = (0..PARTITIONS)
        .map(|p| format!("{prefix}:raw#{p}"))
        .collect();
    for stream in &streams {
        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("raw")
            .arg("0")
            .query_async(conn)
            .await;
    }
    let start = Instant::now();
    let mut done = 0u64;
    while done < EVENTS {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg("raw")
            .arg("c1")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        let reply: redis::streams::StreamReadReply = cmd.query_async(conn).await.unwrap();
        let mut pipe = redis::pipe();
        for key in &reply.keys {
            let mut ids = Vec::new();
            for entry in &key.ids {
                if let Some(redis::Value::BulkString(p)) = entry.map.get("payload") {
                    let env: Envelope<Order> = serde_json::from_slice(p).unwrap();
                    std::hint::black_box(env.data.n);
                }
                ids.push(entry.id.clone());
            }
            done += ids.len() as u64;
            pipe.cmd("XACK").arg(&key.key).arg("raw").arg(ids).ignore();
        }
        pipe.query_async::<()>(conn).await.unwrap();
    }
    start.elapsed()
}

/// `members` buses, each on its own connection, settle the partitions of a fresh topic between
/// them; then the raw client appends the events (to the partition streams, the documented
/// layout), and the time runs until the group handled them all.
async fn members_consume(url: &str, base: &str, members: usize) -> Duration {
    let prefix = &format!("{base}-m{members}");
    let handled = Arc::new(AtomicU64::new(0));
    let group = format!("members-{members}");
    let mut buses = Vec::new();
    for _ in 0..members {
        let h = handled.clone();
        let backend = RedisBackend::connect(config(url, prefix, PARTITIONS))
            .await
            .unwrap();
        buses.push(
            Bus::builder()
                .backend(backend)
                .catalog(&[CatalogEntry::of::<Order>()])
                .subscribe(
                    Subscription::new("bench.order", move |env: Envelope<Order>| {
                        std::hint::black_box(env.data.n);
                        h.fetch_add(1, Ordering::Relaxed);
                        async { Ok(()) }
                    })
                    .group(group.clone())
                    .concurrency(64),
                )
                .start()
                .await
                .unwrap(),
        );
    }
    // Members settle the partitions between them before the clock starts: the first member's
    // first beat takes everything; the others get their share on the next beats.
    let owners = RedisBackend::connect(config(url, prefix, PARTITIONS))
        .await
        .unwrap();
    let settle = Instant::now();
    loop {
        let held = owners
            .partition_owners("bench.order", &group)
            .await
            .unwrap();
        let distinct: std::collections::HashSet<_> = held.iter().flatten().collect();
        if held.iter().all(Option::is_some) && distinct.len() == members {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "members never settled: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = Instant::now();
    raw_xadd(&mut conn, &format!("{prefix}:events:bench.order")).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled.load(Ordering::Relaxed) < EVENTS {
        assert!(
            Instant::now() < deadline,
            "handled {} of {EVENTS}",
            handled.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    for bus in buses {
        bus.shutdown(Duration::from_secs(5)).await;
    }
    elapsed
}

async fn latency(url: &str, prefix: &str, per_second: u64, seconds: u64) -> Vec<u64> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut buses = Vec::new();
    for _ in 0..2 {
        let s = samples.clone();
        let backend = RedisBackend::connect(config(url, prefix, PARTITIONS))
            .await
            .unwrap();
        buses.push(
            Bus::builder()
                .backend(backend)
                .catalog(&[CatalogEntry::of::<Order>()])
                .subscribe(
                    Subscription::new("bench.order", move |env: Envelope<Order>| {
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
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = per_second * seconds;
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let start = Instant::now();
    for n in 0..total {
        let due = start + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        buses[0].publish(order(n)).await.unwrap();
    }
    while (samples.lock().unwrap().len() as u64) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for bus in buses {
        bus.shutdown(Duration::from_secs(5)).await;
    }
    let mut v = samples.lock().unwrap().clone();
    v.sort_unstable();
    v
}

fn pct(v: &[u64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("redis_partitions: run with `cargo bench` to measure");
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
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();

        let a = raw_xadd(&mut conn, &format!("{prefix}:raw")).await;
        let partitioned = RedisBackend::connect(config(&url, &prefix, PARTITIONS)).await.unwrap();
        let b = bus_publish(&partitioned).await;
        let single = RedisBackend::connect(config(&url, &format!("{prefix}-single"), 1)).await.unwrap();
        let b1 = bus_publish(&single).await;
        let c = raw_consume(&mut conn, &prefix).await;
        let d1 = members_consume(&url, &prefix, 1).await;
        let d2 = members_consume(&url, &prefix, 2).await;

        println!("redis partitions: {EVENTS} events of {KEYS} keys on {PARTITIONS} partitions, batches of {BATCH}, 2 cores");
        println!("(a) raw pipelined XADD by key hash   {:>10.0} events/s   (the entry the bus writes)", rate(EVENTS, a));
        println!("(b) bus publish_batch, 16 partitions {:>10.0} events/s   b/a = {:.2}", rate(EVENTS, b), a.as_secs_f64() / b.as_secs_f64());
        println!("(b1) bus publish_batch, one stream   {:>10.0} events/s   b1/a = {:.2}", rate(EVENTS, b1), a.as_secs_f64() / b1.as_secs_f64());
        println!("(c) raw XREADGROUP+XACK, 16 streams  {:>10.0} events/s", rate(EVENTS, c));
        println!("(d1) one member, 16 partitions       {:>10.0} events/s   d1/c = {:.2}", rate(EVENTS, d1), c.as_secs_f64() / d1.as_secs_f64());
        println!("(d2) two members, 16 partitions      {:>10.0} events/s   d2/c = {:.2}   d2/d1 = {:.2}", rate(EVENTS, d2), c.as_secs_f64() / d2.as_secs_f64(), d1.as_secs_f64() / d2.as_secs_f64());
        let lat = latency(&url, &format!("{prefix}-latency"), 2000, 5).await;
        println!(
            "e2e latency, two members, 2000 events/s for 5 s: p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            pct(&lat, 0.50), pct(&lat, 0.95), pct(&lat, 0.99), pct(&lat, 1.0)
        );
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(format!("*{prefix}*")).query_async(&mut conn).await.unwrap();
        keys.truncate(10_000);
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
        }
    });
}
