//! In-memory publish → handle throughput through the whole pipeline (decode, inbox, retry
//! guard, ack), against a raw channel carrying the same encoded envelopes as baseline (with the
//! source, correlation id and `traceparent` the publisher adds).
//!
//! `cargo bench -p eventbus-framework --bench memory_throughput`
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

    for concurrency in [1usize, 8] {
        let handled = Arc::new(AtomicU64::new(0));
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let reached = Arc::new(tokio::sync::Notify::new());
        let (h, t, r) = (handled.clone(), target.clone(), reached.clone());
        let bus = rt.block_on(async move {
            Bus::builder()
                .backend(MemoryBackend::new())
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
                .expect("bus")
        });
        let publisher = bus.publisher();
        group.bench_function(format!("bus_concurrency_{concurrency}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let batch = orders(BATCH, 64);
                        target.store(handled.load(Ordering::Relaxed) + BATCH, Ordering::Relaxed);
                        let start = Instant::now();
                        publisher.publish_batch(batch).await.expect("publish");
                        reached.notified().await;
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
        rt.block_on(bus.shutdown(Duration::from_secs(5)));
    }

    group.bench_function("raw_channel_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = orders(BATCH, 64);
                    let start = Instant::now();
                    let (tx, mut rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
                    let consumer = tokio::spawn(async move {
                        let mut n = 0u64;
                        while let Some(bytes) = rx.next().await {
                            let env: Envelope<OrderCreated> =
                                serde_json::from_slice(&bytes).expect("decode");
                            std::hint::black_box(env.data.total_cents);
                            n += 1;
                        }
                        n
                    });
                    for mut env in batch {
                        // The envelope the bus publishes: a source, a correlation id and a
                        // `traceparent`.
                        env.source = "eventbus".into();
                        env.correlation_id = Some(env.id.to_string());
                        let trace = format!(
                            "00-{:032x}-{:016x}-01",
                            fastrand::u128(..),
                            fastrand::u64(..)
                        );
                        env.headers.insert("traceparent".into(), trace);
                        tx.unbounded_send(env.encode().expect("encode"))
                            .expect("send");
                    }
                    drop(tx);
                    assert_eq!(consumer.await.expect("join"), BATCH);
                    total += start.elapsed();
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
