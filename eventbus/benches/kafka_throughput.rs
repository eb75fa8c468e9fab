//! Kafka: the framework against raw rdkafka on the same broker, in one run.
//!
//! ```sh
//! cargo bench -p eventbus-framework --features kafka --bench kafka_throughput            # mock cluster
//! EVENTBUS_KAFKA_BROKERS=127.0.0.1:9092 cargo bench -p eventbus-framework --features kafka --bench kafka_throughput
//! ```
//!
//! Prints events/s for (a) a raw `FutureProducer` (same producer settings, each envelope
//! encoded by hand, 1 000 sends in flight), (b) `bus.publish` with 1 000 calls in flight,
//! (c) `publish_batch` of 1 000, (d) a raw `StreamConsumer` reading each record's `type` header,
//! decoding its envelope and committing every 100 messages, (e) the full consume pipeline (decode, inbox, retry, guard,
//! per-key ordering, commit after handling), the ratios b/a and e/d, and end-to-end latency
//! percentiles at a fixed rate. Without `EVENTBUS_KAFKA_BROKERS` it runs on librdkafka's mock
//! cluster (in-process broker).
//!
//! `KBENCH_TRACE=1` prints, for each full-pipeline round, the events handled in each 50 ms
//! (the catch-up's course: where it runs at the handlers' pace and where it waits). The mock
//! cluster keeps at most 100 000 records or 5 MB of record batches per partition: a
//! `KBENCH_EVENTS` past that loses the oldest before they are consumed, and the consume
//! phases then never finish.
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventbus::backend::kafka::rdkafka::config::ClientConfig;
use eventbus::backend::kafka::rdkafka::consumer::{
    CommitMode, Consumer, DefaultConsumerContext, StreamConsumer,
};
use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::backend::kafka::rdkafka::producer::FutureRecord;
use eventbus::backend::kafka::rdkafka::util::Timeout;
use eventbus::backend::kafka::rdkafka::Message as _;
// rdkafka's producer and stream consumer with the executor hook the backend uses (it spawns
// and sleeps on tokio here, as rdkafka's own `TokioRuntime` does).
use eventbus::backend::kafka::KafkaProducer as FutureProducer;
use eventbus::backend::kafka::{KafkaBackend, KafkaConfig, SeamRuntime, StartFrom};
use eventbus::{event, Bus, Envelope, RawEnvelope, Subscription};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

#[event(name = "kbench.tick", version = 1, key = account)]
#[derive(Serialize, Deserialize, Clone)]
struct Tick {
    n: u64,
    account: String,
    sent_us: u64,
    note: String,
}

#[event(name = "kbench.raw", version = 1, key = account)]
#[derive(Serialize, Deserialize, Clone)]
struct RawTick {
    n: u64,
    account: String,
    sent_us: u64,
    note: String,
}

#[event(name = "kbench.latency", version = 1, key = account)]
#[derive(Serialize, Deserialize, Clone)]
struct LatencyTick {
    n: u64,
    account: String,
    sent_us: u64,
    note: String,
}

/// Events per phase (`KBENCH_EVENTS`, default 100 000), read once: the loops under measure
/// compare against it per record, and an environment lookup there would be counted against
/// whichever side makes it.
fn events() -> u64 {
    static EVENTS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EVENTS.get_or_init(|| {
        std::env::var("KBENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    })
}
const IN_FLIGHT: usize = 1_000;
const PARTITIONS: i32 = 6;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn tick(n: u64) -> Tick {
    Tick {
        n,
        account: format!("acc-{}", n % 512),
        sent_us: now_us(),
        note: "order o-123 for customer c-42".into(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn config(brokers: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(brokers);
    c.consumer.start_from = StartFrom::Earliest;
    c.auto_create_topics = false;
    if let Some(n) = std::env::var("KBENCH_MAX_BUFFERED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.consumer.max_buffered_per_partition = n;
    }
    if let Ok(options) = std::env::var("KBENCH_CONSUMER_OPTIONS") {
        for pair in options.split(',').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                c.consumer_options.insert(k.into(), v.into());
            }
        }
    }
    c
}

/// A producer built by hand with the same settings the backend uses.
fn raw_producer(brokers: &str) -> FutureProducer {
    let p = &config(brokers).producer;
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", p.compression.as_str())
        .set("linger.ms", p.linger.as_millis().to_string())
        .set("batch.size", p.batch_size.to_string())
        .create()
        .expect("raw producer")
}

/// The same job by hand. `same_record`: the record the bus produces (envelope with source and
/// correlation id, key, `type` and envelope-metadata headers); otherwise a minimal one (bare
/// envelope, `type` header only).
///
/// `batched`: 1 000 sends, all awaited before the next 1 000 (the shape of `publish_batch`);
/// otherwise 1 000 in flight, one more sent as each completes.
async fn raw_publish(
    producer: &FutureProducer,
    topic: &str,
    same_record: bool,
    batched: bool,
) -> Duration {
    use eventbus::backend::kafka::rdkafka::message::{Header, OwnedHeaders};
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for n in 0..events() {
        let t = tick(n);
        let key = t.account.clone();
        let mut envelope = Envelope::new(RawTick {
            n,
            account: t.account,
            sent_us: t.sent_us,
            note: t.note,
        });
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "type",
            value: Some("kbench.raw"),
        });
        if same_record {
            let id = envelope.id.to_string();
            let time = envelope
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            support::as_published(&mut envelope);
            headers = headers
                .insert(Header {
                    key: "event-id",
                    value: Some(&id),
                })
                .insert(Header {
                    key: "event-source",
                    value: Some("eventbus"),
                })
                .insert(Header {
                    key: "event-time",
                    value: Some(&time),
                })
                .insert(Header {
                    key: "correlation-id",
                    value: Some(&id),
                });
        }
        let payload = envelope.encode().unwrap();
        in_flight.push(async move {
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            producer
                .send(record, Timeout::Never)
                .await
                .map(drop)
                .map_err(|(e, _)| e)
        });
        if in_flight.len() >= IN_FLIGHT {
            if batched {
                while let Some(r) = in_flight.next().await {
                    r.unwrap();
                }
            } else {
                in_flight.next().await.unwrap().unwrap();
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        r.unwrap();
    }
    start.elapsed()
}

async fn bus_publish(bus: &Bus) -> Duration {
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for n in 0..events() {
        in_flight.push(bus.publish(tick(n)));
        if in_flight.len() >= IN_FLIGHT {
            in_flight.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = in_flight.next().await {
        r.unwrap();
    }
    start.elapsed()
}

/// The backend alone: messages prepared by the publisher up front, then `Backend::publish`
/// one message per call, 1 000 calls in flight.
async fn backend_publish(backend: &KafkaBackend, bus: &Bus) -> Duration {
    use eventbus::backend::Backend;
    let publisher = bus.publisher();
    let messages: Vec<_> = (0..events())
        .map(|n| publisher.prepare(Envelope::new(tick(n))).unwrap())
        .collect();
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for message in messages {
        in_flight.push(backend.publish(vec![message]));
        if in_flight.len() >= IN_FLIGHT {
            in_flight.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = in_flight.next().await {
        r.unwrap();
    }
    start.elapsed()
}

async fn bus_publish_batch(bus: &Bus) -> Duration {
    let publisher = bus.publisher();
    let start = Instant::now();
    let mut n = 0;
    while n < events() {
        let batch: Vec<_> = (n..n + IN_FLIGHT as u64)
            .map(|i| Envelope::new(tick(i)))
            .collect();
        publisher.publish_batch(batch).await.unwrap();
        n += IN_FLIGHT as u64;
    }
    start.elapsed()
}

/// A consumer loop by hand: decode each envelope, commit every 100 messages.
/// A consume run: the wait for the first record (joining the group, the first fetch) apart
/// from the rate after it, which is what each record costs.
struct Consumed {
    first: Duration,
    steady: Duration,
}

impl Consumed {
    /// Records per second after the first.
    fn rate(&self) -> f64 {
        events().saturating_sub(1) as f64 / self.steady.as_secs_f64()
    }
}

/// Times a consume run: started before subscribing, marked at every record.
struct ConsumeClock {
    start: Instant,
    first: Option<Instant>,
}

impl ConsumeClock {
    fn start() -> Self {
        ConsumeClock {
            start: Instant::now(),
            first: None,
        }
    }

    fn record(&mut self) {
        self.first.get_or_insert_with(Instant::now);
    }

    fn finish(self) -> Consumed {
        let end = Instant::now();
        let first = self.first.unwrap_or(end);
        Consumed {
            first: first - self.start,
            steady: end - first,
        }
    }
}

async fn raw_consume(brokers: &str, topic: &str) -> Consumed {
    // The backend's prefetch bounds, so both read with the same fetch queue.
    let settings = &config(brokers).consumer;
    let consumer: StreamConsumer<DefaultConsumerContext, SeamRuntime> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "queued.max.messages.kbytes",
            settings.fetch_queue_kbytes.to_string(),
        )
        .set(
            "fetch.queue.backoff.ms",
            settings.fetch_queue_backoff.as_millis().to_string(),
        )
        .set("group.id", format!("raw-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).unwrap();
    let mut clock = ConsumeClock::start();
    let mut done = 0u64;
    while done < events() {
        let m = consumer.recv().await.expect("message");
        clock.record();
        // Dispatch on the record's `type` header, as a consumer of a topic carrying more than
        // one event type must (the backend reads it too); librdkafka parses a record's headers
        // on this first access.
        let event_type = m
            .headers()
            .and_then(|h| {
                use eventbus::backend::kafka::rdkafka::message::Headers as _;
                h.iter().find(|h| h.key == "type").and_then(|h| h.value)
            })
            .expect("type header");
        std::hint::black_box(event_type);
        let envelope = RawEnvelope::decode(m.payload().unwrap_or_default()).expect("envelope");
        let _tick: Tick = serde_json::from_str(envelope.data.get()).expect("tick");
        done += 1;
        if done % 100 == 0 {
            consumer.commit_message(&m, CommitMode::Async).unwrap();
        }
    }
    clock.finish()
}

async fn pipeline_consume(backend: &KafkaBackend, concurrency: usize) -> Consumed {
    // The handler marks the first record and signals the last itself, so the run is timed
    // without a task waking up to look (a 1 ms poll here cost the pipeline's side CPU the raw
    // loop's side did not pay). KBENCH_TRACE samples the count every 50 ms instead.
    let count = Arc::new(AtomicU64::new(0));
    let first: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let all_handled = Arc::new(tokio::sync::Notify::new());
    let (c, f, done) = (count.clone(), first.clone(), all_handled.clone());
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new("kbench.tick", move |_: Envelope<Tick>| {
                let handled = c.fetch_add(1, Ordering::Relaxed) + 1;
                if handled == 1 {
                    f.get_or_init(Instant::now);
                }
                if handled == events() {
                    done.notify_one();
                }
                async { Ok(()) }
            })
            .group(format!("pipeline-{}", uuid::Uuid::now_v7().simple()))
            .concurrency(concurrency),
        )
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    if std::env::var("KBENCH_TRACE").is_ok() {
        let mut trace = Vec::new();
        while count.load(Ordering::Relaxed) < events() {
            trace.push(count.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let steps: Vec<u64> = trace.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("handled per 50 ms (concurrency {concurrency}): {steps:?}");
    }
    all_handled.notified().await;
    let end = Instant::now();
    let first = first.get().copied().unwrap_or(end);
    bus.shutdown(Duration::from_secs(10)).await;
    Consumed {
        first: first - start,
        steady: end - first,
    }
}

/// The backend alone: its delivery stream, each delivery acknowledged at once (no pipeline).
async fn backend_consume(backend: &KafkaBackend) -> Consumed {
    use eventbus::backend::{Backend, SubscribeRequest};
    let request = SubscribeRequest {
        group: format!("stream-{}", uuid::Uuid::now_v7().simple()),
        pattern: eventbus::pattern::Pattern::parse("kbench.tick").unwrap(),
        topics: vec!["kbench.tick".into()],
        prefetch: 64,
        topic_prefix: String::new(),
    };
    let mut stream = backend.subscribe(request).await.unwrap();
    let mut clock = ConsumeClock::start();
    let mut done = 0;
    while done < events() {
        let delivery = stream.next().await.unwrap().unwrap();
        clock.record();
        delivery.acker.ack().await.unwrap();
        done += 1;
    }
    clock.finish()
}

async fn latency(
    backend: &KafkaBackend,
    per_second: u64,
    seconds: u64,
) -> (Duration, Duration, Duration, Duration) {
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = samples.clone();
    let group = format!("latency-{}", uuid::Uuid::now_v7().simple());
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new("kbench.latency", move |env: Envelope<LatencyTick>| {
                s.lock()
                    .unwrap()
                    .push(now_us().saturating_sub(env.data.sent_us));
                async { Ok(()) }
            })
            .group(group.clone())
            .concurrency(8),
        )
        .start()
        .await
        .unwrap();
    // Let the group join before measuring.
    while backend.assignment(&group).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = per_second * seconds;
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let publisher = bus.publisher();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            let t = tick(n);
            publisher
                .publish(LatencyTick {
                    n,
                    account: t.account,
                    sent_us: now_us(),
                    note: t.note,
                })
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    while (samples.lock().unwrap().len() as u64) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.shutdown(Duration::from_secs(10)).await;
    let mut all = samples.lock().unwrap().clone();
    all.sort_unstable();
    let pct =
        |p: f64| Duration::from_micros(all[((all.len() as f64 * p) as usize).min(all.len() - 1)]);
    (pct(0.50), pct(0.95), pct(0.99), pct(1.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure.
        println!("kafka_throughput: run with `cargo bench` to measure");
        return;
    }
    let mock;
    let (brokers, broker_name) = match std::env::var("EVENTBUS_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => (b.clone(), format!("broker {b}")),
        _ => {
            mock = MockCluster::new(1).expect("mock cluster");
            for topic in ["kbench.tick", "kbench.raw", "kbench.latency"] {
                mock.create_topic(topic, PARTITIONS, 1).expect("topic");
            }
            (
                mock.bootstrap_servers(),
                "librdkafka mock cluster (in-process)".to_owned(),
            )
        }
    };
    println!("kafka_throughput on {broker_name}: {} events of ~250 bytes, {PARTITIONS} partitions, LZ4, linger 5 ms, acks=all, idempotent", events());
    let backend = KafkaBackend::connect(config(&brokers))
        .await
        .expect("connect");
    if std::env::var("EVENTBUS_KAFKA_BROKERS").is_ok_and(|b| !b.is_empty()) {
        use eventbus::backend::kafka::{OnDifference, TopicPlan, TopicSettings};
        let mut plan = TopicPlan::new()
            .retry_tiers([])
            .dead_letters(false)
            .on_difference(OnDifference::Warn);
        for topic in ["kbench.tick", "kbench.raw", "kbench.latency"] {
            plan = plan.topic(topic, TopicSettings::new(PARTITIONS));
        }
        backend.provision(&plan).await.expect("bench topics");
    }
    let bus = Bus::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();

    let producer = raw_producer(&brokers);
    // Warm up both paths (connections, metadata).
    let _ = raw_publish_n(&producer, "kbench.raw", 1_000).await;
    for n in 0..1_000 {
        bus.publish(tick(n)).await.ok();
        if n > 10 {
            break;
        }
    }
    let only = std::env::var("KBENCH_ONLY").unwrap_or_default();
    let rounds = std::env::var("KBENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    println!("(each figure: median of {rounds} interleaved rounds)");
    if only.is_empty() || only == "produce" {
        let mut r: [Vec<f64>; 6] = Default::default();
        for _ in 0..rounds {
            r[0].push(rate(
                events(),
                raw_publish(&producer, "kbench.raw", true, false).await,
            ));
            r[1].push(rate(
                events(),
                raw_publish(&producer, "kbench.raw", false, false).await,
            ));
            r[5].push(rate(
                events(),
                raw_publish(&producer, "kbench.raw", true, true).await,
            ));
            r[2].push(rate(events(), bus_publish(&bus).await));
            r[3].push(rate(events(), backend_publish(&backend, &bus).await));
            r[4].push(rate(events(), bus_publish_batch(&bus).await));
        }
        let [raw, minimal, ours, layer, batch, raw_batched] = r.map(median);
        println!("produce  raw FutureProducer, same record     {raw:>9.0} ev/s");
        println!("produce  raw FutureProducer, minimal record  {minimal:>9.0} ev/s");
        println!(
            "produce  bus.publish                        {ours:>9.0} ev/s   ratio {:.3} vs same record (target >= 0.95), {:.3} vs minimal",
            ours / raw,
            ours / minimal
        );
        println!(
            "produce  KafkaBackend::publish (prepared)   {layer:>9.0} ev/s   ratio {:.3} (the backend layer alone)",
            layer / raw
        );
        println!("produce  raw FutureProducer, same record, 1000 sent then awaited {raw_batched:>9.0} ev/s");
        println!(
            "produce  publish_batch(1000), sequential    {batch:>9.0} ev/s   ratio {:.3} vs 1000 sent then awaited (target >= 0.95), {:.3} vs 1000 in flight",
            batch / raw_batched,
            batch / raw
        );
    } else {
        for _ in 0..rounds {
            bus_publish(&bus).await;
        }
    }
    if only.is_empty() || only == "consume" {
        // kbench.tick holds rounds x 3 x events() records; each consumer reads the first events().
        let mut r: [Vec<f64>; 5] = Default::default();
        let mut joins: [Vec<f64>; 5] = Default::default();
        // The pipeline again with a small buffer (paused and resumed often while it catches
        // up); KBENCH_SMALL_BUFFER overrides its 1 000 records per partition.
        let small_buffer: usize = std::env::var("KBENCH_SMALL_BUFFER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000);
        let small = {
            let mut c = config(&brokers);
            c.consumer.max_buffered_per_partition = small_buffer;
            KafkaBackend::connect(c).await.expect("connect")
        };
        for _ in 0..rounds {
            // KBENCH_CONSUMER=backend (or raw, pipeline1, pipeline8, pipeline1-small) runs that
            // consumer alone, for a profile of it.
            let alone = std::env::var("KBENCH_CONSUMER").unwrap_or_default();
            let wanted = |name: &str| alone.is_empty() || alone == name;
            let skipped = || Consumed {
                first: Duration::ZERO,
                steady: Duration::ZERO,
            };
            let runs = [
                if wanted("raw") {
                    raw_consume(&brokers, "kbench.tick").await
                } else {
                    skipped()
                },
                if wanted("backend") {
                    backend_consume(&backend).await
                } else {
                    skipped()
                },
                if wanted("pipeline1") {
                    pipeline_consume(&backend, 1).await
                } else {
                    skipped()
                },
                if wanted("pipeline8") {
                    pipeline_consume(&backend, 8).await
                } else {
                    skipped()
                },
                if wanted("pipeline1-small") {
                    pipeline_consume(&small, 1).await
                } else {
                    skipped()
                },
            ];
            for (i, run) in runs.iter().enumerate() {
                r[i].push(run.rate());
                joins[i].push(run.first.as_secs_f64());
            }
        }
        let [raw, alone, p1, p8, p1_small] = r.map(median);
        let [raw_join, alone_join, p1_join, p8_join, _] = joins.map(|j| {
            j.iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join("/")
        });
        println!(
            "consume  rates count from each consumer's first record; until it (group join, first fetch), each round, in s: raw {raw_join}, backend {alone_join}, pipeline {p1_join} and {p8_join}"
        );
        println!("consume  raw StreamConsumer + commit loop    {raw:>9.0} ev/s");
        println!(
            "consume  backend stream + ack (no pipeline)  {alone:>9.0} ev/s   ratio {:.3}",
            alone / raw
        );
        println!("consume  full pipeline, concurrency 1        {p1:>9.0} ev/s   ratio {:.3} (target >= 0.85)", p1 / raw);
        println!(
            "consume  full pipeline, concurrency 8        {p8:>9.0} ev/s   ratio {:.3}",
            p8 / raw
        );
        println!(
            "consume  full pipeline, concurrency 1, buffer of {small_buffer} records per partition {p1_small:>9.0} ev/s   ratio {:.3} ({} pauses)",
            p1_small / raw,
            small.stats().pauses
        );
        println!("         backend {:?}", backend.stats());
    }
    bus.shutdown(Duration::from_secs(10)).await;
    if !(only.is_empty() || only == "latency") {
        return;
    }

    // The mock cluster answers a fetch with no data only after `fetch.wait.max.ms` (it does not
    // wake waiting fetches on produce, unlike Kafka): keep that short for the latency phase.
    let mut low = config(&brokers);
    low.consumer_options
        .insert("fetch.wait.max.ms".into(), "5".into());
    let latency_backend = KafkaBackend::connect(low).await.expect("connect");
    let (p50, p95, p99, max) = latency(&latency_backend, 1_000, 5).await;
    println!("e2e latency at 1000 ev/s for 5 s: p50 {p50:?}  p95 {p95:?}  p99 {p99:?}  max {max:?} (targets p95 < 100 ms, p99 < 20 ms)");
}

async fn raw_publish_n(producer: &FutureProducer, topic: &str, n: u64) -> Duration {
    let start = Instant::now();
    for i in 0..n.min(10) {
        let payload = Envelope::new(tick(i)).encode().unwrap();
        let record = FutureRecord::to(topic).key("warm").payload(&payload);
        producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    start.elapsed()
}
