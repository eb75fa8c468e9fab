//! A backend whose delivery stream fails between deliveries: the consumer loop backs off after
//! each error (once the deliveries read before it have started) and loses, repeats or reorders
//! nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::backend::memory::MemoryBackend;
use eventbus::backend::{Backend, BackendAdmin, DeliveryStream, Message, SubscribeRequest};
use eventbus::{event, Backoff, Bus, Envelope, Error, Subscription};
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCreated {
    order_id: String,
    seq: u32,
}

/// The in-memory backend, its delivery streams failing once before the deliveries whose
/// positions (0-based, per stream) are in `errors_before`.
struct FailingStreams {
    inner: MemoryBackend,
    errors_before: Vec<usize>,
}

impl Backend for FailingStreams {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.publish(messages)
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        let errors_before = self.errors_before.clone();
        Box::pin(async move {
            let deliveries = self.inner.subscribe(request).await?;
            let failing = deliveries.enumerate().flat_map(move |(at, delivery)| {
                let mut items = Vec::new();
                if errors_before.contains(&at) {
                    items.push(Err(Error::backend(
                        "memory",
                        "read",
                        format!("injected read failure before delivery {at}"),
                    )));
                }
                items.push(delivery);
                futures::stream::iter(items)
            });
            Ok(failing.boxed())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.flush()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.health()
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        self.inner.admin()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_backs_off_and_loses_nothing() {
    const BACKOFF: Duration = Duration::from_millis(400);
    let seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let record = seen.clone();
    // Before delivery 0 the read fails with nothing read yet; before delivery 2 it fails
    // after deliveries 0 and 1 of the same read.
    let backend = FailingStreams {
        inner: MemoryBackend::new(),
        errors_before: vec![0, 2],
    };
    let bus = Bus::builder()
        .backend(backend)
        .subscribe(
            Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                record.lock().unwrap().push((env.data.seq, Instant::now()));
                async { Ok(()) }
            })
            .backoff(Backoff::schedule([BACKOFF])),
        )
        .start()
        .await
        .expect("bus");
    let published = Instant::now();
    let orders = (0..5).map(|seq| {
        Envelope::new(OrderCreated {
            order_id: "o-1".into(),
            seq,
        })
    });
    // One append: the consumer finds all five ready at once.
    bus.publisher()
        .publish_batch(orders)
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.shutdown(Duration::from_secs(5)).await;
    let seen = seen.lock().unwrap().clone();
    let order: Vec<u32> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(order, [0, 1, 2, 3, 4], "handled, in order, each once");
    let first = seen[0].1 - published;
    assert!(
        first >= BACKOFF,
        "delivery 0 came {first:?} after the publish, before the back-off of the failed read"
    );
    let gap = seen[2].1 - seen[1].1;
    assert!(
        gap >= BACKOFF,
        "delivery 2 came {gap:?} after delivery 1: the read failure between them was not backed off"
    );
}
