//! In-memory publish → handle throughput through the whole pipeline (decode, inbox, retry
//! guard, ack), against a raw channel carrying the same encoded envelopes as baseline (with the
//! source, correlation id and `traceparent` the publisher adds): sent one by one as encoded
//! (encoding and decoding overlap), and in the mode of `publish_batch` (all encoded, then sent).
//!
//! `cargo bench -p eventbus-framework --bench memory_throughput`
#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use eventbus::backend::memory::MemoryBackend;
use eventbus::{event, Bus, Envelope, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Clone)]
struct OrderCreated {
    order_id: String,
    total_cents: i64,
}

const BATCH: u64 = 10_000;

fn orders(n: u64, keys: u64) -> Vec<Envelope<OrderCreated>> {
    (0..n)
        .map(|i| {
            Envelope::new(OrderCreated {
                order_id: format!("o-{}", i % keys),
                total_cents: i as i64,
            })
        })
        .collect()
}

/// A bus whose handler counts the events it handled and wakes `reached` at `target`.
struct CountedBus {
    bus: Bus,
    handled: Arc<AtomicU64>,
    target: Arc<AtomicU64>,
    reached: Arc<tokio::sync::Notify>,
}

/// `retention`: the backend's messages kept per topic (`None`: the default, 10 000).
async fn counted_bus(concurrency: usize, retention: Option<usize>) -> CountedBus {
    let handled = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let reached = Arc::new(tokio::sync::Notify::new());
    let (h, t, r) = (handled.clone(), target.clone(), reached.clone());
    let bus = Bus::builder()
        .backend(retention.map_or_else(MemoryBackend::new, MemoryBackend::with_retention))
        .subscribe(
            Subscription::new("order.*", move |env: Envelope<OrderCreated>| {
                std::hint::black_box(&env.data.total_cents);
                if h.fetch_add(1, Ordering::Relaxed) + 1 == t.load(Ordering::Relaxed) {
                    r.notify_one();
                }
                async { Ok(()) }
            })
            .concurrency(concurrency),
        )
        .start()
        .await
        .expect("bus");
    CountedBus {
        bus,
        handled,
        target,
        reached,
    }
}

/// How the bench hands its events over, to the bus or to the raw channel.
#[derive(Clone, Copy)]
enum Publishing {
    /// All at once: one `publish_batch` call, or the batch encoded, then sent.
    Batch,
    /// Each on its own: one awaited `publish_envelope` call, or one send as encoded.
    OneByOne,
}

/// Publishes `BATCH` events and waits until they are handled.
async fn publish_and_wait(counted: &CountedBus, publishing: Publishing) -> Duration {
    let batch = orders(BATCH, 64);
    let publisher = counted.bus.publisher();
    counted.target.store(
        counted.handled.load(Ordering::Relaxed) + BATCH,
        Ordering::Relaxed,
    );
    let start = Instant::now();
    match publishing {
        Publishing::Batch => {
            publisher.publish_batch(batch).await.expect("publish");
        }
        Publishing::OneByOne => {
            for envelope in batch {
                publisher.publish_envelope(envelope).await.expect("publish");
            }
        }
    }
    counted.reached.notified().await;
    start.elapsed()
}

/// An envelope as the bus publishes it (a source, a correlation id and a `traceparent`),
/// encoded by hand.
fn encode_by_hand(mut env: Envelope<OrderCreated>) -> Vec<u8> {
    support::as_published(&mut env);
    env.encode().expect("encode")
}

/// A task that decodes what it receives over `rx`, one batch of encoded envelopes per item,
/// and returns how many it decoded.
fn decoding_task(
    mut rx: futures::channel::mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(batch) = rx.next().await {
            for bytes in batch {
                let env: Envelope<OrderCreated> = serde_json::from_slice(&bytes).expect("decode");
                std::hint::black_box(env.data.total_cents);
                n += 1;
            }
        }
        n
    })
}

/// The same job by hand: `BATCH` envelopes encoded and sent over an unbounded channel to a
/// task that decodes them. One by one, each is sent as encoded, so encoding and decoding
/// overlap on two cores; in batch mode (`publish_batch`'s: one that fails to encode would stop
/// the batch before anything is sent), every envelope is encoded first, then the batch sent at
/// once.
async fn raw_channel(publishing: Publishing) -> Duration {
    let batch = orders(BATCH, 64);
    let start = Instant::now();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let consumer = decoding_task(rx);
    match publishing {
        Publishing::OneByOne => {
            for env in batch {
                tx.unbounded_send(vec![encode_by_hand(env)]).expect("send");
            }
        }
        Publishing::Batch => {
            let encoded: Vec<Vec<u8>> = batch.into_iter().map(encode_by_hand).collect();
            tx.unbounded_send(encoded).expect("send");
        }
    }
    drop(tx);
    assert_eq!(consumer.await.expect("join"), BATCH);
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("memory_publish_handle");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));

    for (name, concurrency, publishing, retention) in [
        ("bus_concurrency_1", 1usize, Publishing::Batch, None),
        ("bus_concurrency_8", 8, Publishing::Batch, None),
        (
            "bus_one_by_one_concurrency_1",
            1,
            Publishing::OneByOne,
            None,
        ),
        (
            "bus_concurrency_1_retention_100000",
            1,
            Publishing::Batch,
            Some(100_000),
        ),
    ] {
        let counted = rt.block_on(counted_bus(concurrency, retention));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += publish_and_wait(&counted, publishing).await;
                    }
                    total
                })
            })
        });
        rt.block_on(counted.bus.shutdown(Duration::from_secs(5)));
    }

    for (name, publishing) in [
        ("raw_channel_baseline", Publishing::OneByOne),
        ("raw_channel_batch_baseline", Publishing::Batch),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += raw_channel(publishing).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

/// `MEMORY_BENCH_BATCHES=n` publishes and handles n batches through the bus at concurrency 1
/// (or 8, `MEMORY_BENCH_PATH=bus8`; or one by one, `bus_one_by_one`; or over a backend keeping
/// 1 000 messages a topic, `bus_retention_1000`, or n, `MEMORY_BENCH_RETENTION=n`; or a raw
/// channel, `raw` or `raw_batch`)
/// and exits, without criterion: a fixed amount
/// of work, for instruction counts (`valgrind --tool=cachegrind`) and A/B runs of two builds.
fn main() {
    if let Ok(batches) = std::env::var("MEMORY_BENCH_BATCHES") {
        let batches: u64 = batches.parse().expect("MEMORY_BENCH_BATCHES: a number");
        // MEMORY_BENCH_THREADS=1: publisher and consumer take turns on one thread, so the
        // time is the path's CPU time, without the other core's noise.
        let rt = match std::env::var("MEMORY_BENCH_THREADS").as_deref() {
            Ok("1") => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            _ => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        }
        .expect("runtime");
        // MEMORY_BENCH_PATH=raw (or raw_batch): a raw channel baseline instead of the bus.
        let path = std::env::var("MEMORY_BENCH_PATH").unwrap_or_default();
        let elapsed = rt.block_on(async {
            let mut total = Duration::ZERO;
            // MEMORY_BENCH_PATH=bus_one_by_one: the bus, each event published on its own.
            // MEMORY_BENCH_PATH=bus8: the bus at concurrency 8.
            let (raw, publishing) = match path.as_str() {
                "raw" => (true, Publishing::OneByOne),
                "raw_batch" => (true, Publishing::Batch),
                "bus_one_by_one" => (false, Publishing::OneByOne),
                _ => (false, Publishing::Batch),
            };
            let concurrency = if path == "bus8" { 8 } else { 1 };
            if raw {
                for _ in 0..batches {
                    total += raw_channel(publishing).await;
                }
                return total;
            }
            // MEMORY_BENCH_PATH=bus_retention_1000: the bus over a backend keeping 1 000
            // messages a topic; MEMORY_BENCH_RETENTION=n: keeping n.
            let retention = match std::env::var("MEMORY_BENCH_RETENTION") {
                Ok(n) => Some(n.parse().expect("MEMORY_BENCH_RETENTION: a number")),
                Err(_) => (path == "bus_retention_1000").then_some(1_000),
            };
            let counted = counted_bus(concurrency, retention).await;
            for _ in 0..batches {
                total += publish_and_wait(&counted, publishing).await;
            }
            counted.bus.shutdown(Duration::from_secs(5)).await;
            total
        });
        let events = batches * BATCH;
        println!(
            "{events} events in {elapsed:?}: {:.0} events/s",
            events as f64 / elapsed.as_secs_f64()
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
