//! The Kafka backend across a broker restart: a tansu broker of the test's own (sqlite storage,
//! `EVENTBUS_TANSU_BIN`, marker `kafka_restart`) is stopped and started again in the middle of
//! a stream; and the same on the mock cluster. A member's warnings over a broker outage.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::backend::kafka::{
    KafkaBackend, KafkaConfig, OnDifference, StartFrom, TopicPlan, TopicSettings,
};
use eventbus::inbox::MemoryInbox;
use eventbus::{event, Bus, Envelope, Subscription, Uuid};
use eventbus_integration::{eventually, require_server, with_diagnosis, Tansu};
use serde::{Deserialize, Serialize};

#[event(name = "rst.ledger.posted", version = 1, key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct LedgerPosted {
    account: String,
    n: u32,
    run: String,
}

/// Streams 5 000 events while `restart` takes the broker away and back, and checks every event
/// was handled exactly once (redeliveries absorbed by the inbox).
async fn stream_across_a_restart(
    backend: KafkaBackend,
    restart: impl std::future::Future<Output = ()>,
) {
    let run = Uuid::now_v7().simple().to_string();
    let seen: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let effects = Arc::new(AtomicUsize::new(0));
    let (s, e, r) = (seen.clone(), effects.clone(), run.clone());
    let bus = Bus::builder()
        .backend(backend.clone())
        .inbox(Arc::new(MemoryInbox::new()))
        .subscribe(
            Subscription::new("rst.ledger.posted", move |env: Envelope<LedgerPosted>| {
                if env.data.run == r {
                    s.lock().unwrap().insert(env.id);
                    e.fetch_add(1, Ordering::SeqCst);
                }
                async { Ok(()) }
            })
            .group(format!("ledger-{run}"))
            .concurrency(8),
        )
        .start()
        .await
        .unwrap();
    let publisher = bus.publisher();
    let total = 5_000u32;
    let producer_run = run.clone();
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut retries = 0;
        for chunk in 0..(total / 100) {
            let batch: Vec<_> = (0..100)
                .map(|i| {
                    Envelope::new(LedgerPosted {
                        account: format!("acc-{}", i % 32),
                        n: chunk * 100 + i,
                        run: producer_run.clone(),
                    })
                })
                .collect();
            ids.extend(batch.iter().map(|e| e.id));
            // A publish failing during the restart is retried with the same envelopes.
            while let Err(error) = publisher.publish_batch(batch.clone()).await {
                retries += 1;
                let source = std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                assert!(retries < 100, "publish kept failing: {error}: {source}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ids, retries)
    });
    assert!(
        eventually(Duration::from_secs(60), || seen.lock().unwrap().len()
            >= 1500)
        .await
    );
    restart.await;
    let (ids, retries) = producer.await.unwrap();
    assert!(
        eventually(Duration::from_secs(120), || seen.lock().unwrap().len()
            == total as usize)
        .await,
        "handled {} of {total}",
        seen.lock().unwrap().len()
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ids.into_iter().collect::<HashSet<_>>(),
        "every published event handled"
    );
    let stats = bus.stats();
    eprintln!(
        "publish retries during the restart: {retries}, handler calls {} for {total} events, {stats:?}, {:?}",
        effects.load(Ordering::SeqCst),
        backend.stats()
    );
    assert_eq!(
        effects.load(Ordering::SeqCst),
        total as usize,
        "redeliveries were absorbed by the inbox"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

fn config(brokers: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.consumer.start_from = StartFrom::Earliest;
    config.consumer.session_timeout = Duration::from_secs(10);
    config.consumer.heartbeat_interval = Duration::from_millis(500);
    config.consumer.commit_interval = Duration::from_millis(500);
    config.producer.delivery_timeout = Duration::from_secs(60);
    config.operation_timeout = Duration::from_secs(10);
    config
}

/// tansu, stopped (SIGTERM) and started again on its sqlite database.
///
/// The producer runs with `enable.idempotence=false` here (still `acks=all`): tansu 0.6.0's
/// sqlite storage panics ("more or less than one row", `tansu-storage/src/lite.rs:503`) when an
/// idempotent producer from before the restart produces again, and its storage stays dead
/// afterwards. The idempotent producer across a broker outage is covered on the mock cluster
/// below. Producer retries without idempotence can duplicate records: the inbox absorbs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tansu_restart_in_the_middle_of_a_stream_loses_nothing() {
    let Some(_) = require_server("EVENTBUS_TANSU_BIN", "kafka_restart") else {
        return;
    };
    let tansu = Arc::new(
        tokio::task::spawn_blocking(Tansu::private)
            .await
            .expect("start tansu"),
    );
    let mut config = config(&tansu.brokers());
    config
        .producer_options
        .insert("enable.idempotence".into(), "false".into());
    let backend = KafkaBackend::connect(config).await.expect("connect");
    let plan = TopicPlan::new()
        .retry_tiers([])
        .on_difference(OnDifference::Warn)
        .topic("rst.ledger.posted", TopicSettings::new(4));
    backend.provision(&plan).await.expect("topic");
    let broker = tansu.clone();
    let restart = async move {
        tokio::task::spawn_blocking(move || broker.restart())
            .await
            .unwrap()
    };
    with_diagnosis(stream_across_a_restart(backend, restart), || {
        tokio::task::block_in_place(|| tansu.diagnose())
    })
    .await;
}

/// The mock cluster's broker goes down for two seconds and comes back (connections refused,
/// in-flight requests failed), with the idempotent producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mock_broker_outage_in_the_middle_of_a_stream_loses_nothing() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("rst.ledger.posted", 4, 1).expect("topic");
    let backend = KafkaBackend::connect(config(&mock.bootstrap_servers()))
        .await
        .expect("connect");
    let outage = async {
        mock.broker_down(1).expect("down");
        tokio::time::sleep(Duration::from_secs(2)).await;
        mock.broker_up(1).expect("up");
    };
    stream_across_a_restart(backend, outage).await;
}

#[event(name = "rst.outage.noticed", version = 1)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OutageNoticed {
    n: u32,
    run: String,
}

/// A broker down for 25 s is reported, and not once per failed connection: the member's client
/// errors are warnings at most once every 10 s (so at most three in the window), the rest at
/// debug. After the broker is back, the member handles events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_is_a_warning_every_ten_seconds_not_one_per_error() {
    const OUTAGE: Duration = Duration::from_secs(25);
    eventbus_integration::logs::install();
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("rst.outage.noticed", 1, 1)
        .expect("topic");
    let backend = KafkaBackend::connect(config(&mock.bootstrap_servers()))
        .await
        .expect("connect");
    let run = Uuid::now_v7().simple().to_string();
    let group = format!("outage-{run}");
    let handled = Arc::new(AtomicUsize::new(0));
    let (h, r) = (handled.clone(), run.clone());
    let bus = Bus::builder()
        .backend(backend)
        .subscribe(
            Subscription::new("rst.outage.noticed", move |env: Envelope<OutageNoticed>| {
                if env.data.run == r {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                async { Ok(()) }
            })
            .group(group.clone()),
        )
        .start()
        .await
        .unwrap();
    let publisher = bus.publisher();
    let event = |n| OutageNoticed {
        n,
        run: run.clone(),
    };
    publisher.publish(event(1)).await.expect("publish");
    assert!(
        eventually(Duration::from_secs(60), || handled.load(Ordering::SeqCst)
            == 1)
        .await,
        "the first event was not handled before the outage"
    );

    let start = eventbus_integration::logs::mark();
    mock.broker_down(1).expect("down");
    let began = std::time::Instant::now();
    // The window is the point of the case: how many warnings a member logs over 25 s of
    // connections refused.
    tokio::time::sleep(OUTAGE).await;
    let during = eventbus_integration::logs::since(start, &[&group]);
    mock.broker_up(1).expect("up");
    eprintln!(
        "the member's warnings and errors over {:?} of outage: {during:#?}",
        began.elapsed()
    );
    assert!(
        !during.is_empty(),
        "a broker down for {OUTAGE:?} left no warning naming the group"
    );
    assert!(
        during.len() <= 3,
        "{} warnings in {OUTAGE:?}, more than one every 10 s: {during:#?}",
        during.len()
    );

    publisher
        .publish(event(2))
        .await
        .expect("publish after the outage");
    assert!(
        eventually(Duration::from_secs(60), || handled.load(Ordering::SeqCst)
            == 2)
        .await,
        "the member handled {} of 2 events after the broker came back",
        handled.load(Ordering::SeqCst)
    );
    bus.shutdown(Duration::from_secs(10)).await;
}
