//! Producers in other languages: a Python script (`tests/python/produce.py`, the `redis` and
//! `confluent-kafka` clients in the venv `scripts/test` makes) writes events into a Redis stream
//! and a Kafka topic exactly as the README's "Producing from other languages" says, with no
//! catalog entry; a wildcard subscriber handles every one, with its id, key and data.
//!
//! Gated on `EVENTBUS_PYTHON` (the venv's interpreter; marker `foreign_producers`), Redis on
//! `EVENTBUS_REDIS_URL`; Kafka runs on librdkafka's mock cluster.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::backend::kafka::{KafkaBackend, KafkaConfig, StartFrom as KafkaStart};
use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom as RedisStart};
use eventbus::backend::Backend;
use eventbus::{Bus, Envelope, Subscription, Uuid};
use eventbus_integration::{eventually, require_server, unique_prefix};

const COUNT: usize = 6;

/// (data, source) per event id.
type Seen = Arc<Mutex<BTreeMap<Uuid, (serde_json::Value, String)>>>;

/// Runs the script; the ids and keys it says it sent.
fn produce(python: &str, args: &[&str]) -> Vec<(Uuid, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/produce.py");
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {python} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} {args:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("sent "))
        .map(|l| {
            let (id, key) = l.split_once(' ').expect("`sent <id> <key>`");
            (id.parse().expect("a uuid"), key.to_owned())
        })
        .collect()
}

/// A bus with one wildcard subscription and no catalog, recording what it handled.
async fn wildcard_bus(backend: Arc<dyn Backend>, seen: &Seen) -> Bus {
    let seen = seen.clone();
    Bus::builder()
        .backend_arc(backend)
        .subscribe(
            Subscription::new("py.order.*", move |env: Envelope<serde_json::Value>| {
                seen.lock()
                    .expect("lock")
                    .insert(env.id, (env.data, env.source));
                async { Ok(()) }
            })
            .group(format!("py-{}", Uuid::now_v7().simple())),
        )
        .start()
        .await
        .expect("start")
}

/// Every event the script sent was handled with its data.
async fn assert_handled(bus: &Bus, seen: &Seen, sent: &[(Uuid, String)]) {
    assert_eq!(sent.len(), COUNT, "the script sent {sent:?}");
    assert!(
        eventually(Duration::from_secs(60), || seen.lock().expect("lock").len()
            == COUNT)
        .await,
        "handled {:?} of {sent:?}; {:?}",
        seen.lock().expect("lock").keys().collect::<Vec<_>>(),
        bus.stats()
    );
    let seen = seen.lock().expect("lock").clone();
    for (n, (id, key)) in sent.iter().enumerate() {
        let (data, source) = seen
            .get(id)
            .unwrap_or_else(|| panic!("{id} not handled: {seen:?}"));
        assert_eq!(data["order_id"], key.as_str(), "{data}");
        assert_eq!(data["n"], n, "{data}");
        assert_eq!(source, "python-producer");
    }
    assert_eq!(bus.stats().dead_lettered, 0, "{:?}", bus.stats());
}

#[test]
fn python_writes_a_redis_stream_a_wildcard_subscriber_reads() {
    let Some(python) = require_server("EVENTBUS_PYTHON", "foreign_producers") else {
        return;
    };
    let Some(url) = require_server("EVENTBUS_REDIS_URL", "foreign_producers_redis") else {
        return;
    };
    eventbus_integration::run(2, async move {
        let prefix = unique_prefix("py");
        let mut config = RedisConfig::new(&url);
        config.prefix = prefix.clone();
        config.start_from = RedisStart::Earliest;
        config.discovery_interval = Duration::from_millis(200);
        let backend = RedisBackend::connect(config).await.expect("connect");
        let seen: Seen = Arc::default();
        let bus = wildcard_bus(Arc::new(backend), &seen).await;
        let sent = eventbus_integration::unblock(move || {
            produce(
                &python,
                &[
                    "redis",
                    &url,
                    &prefix,
                    "py.order.placed",
                    &COUNT.to_string(),
                ],
            )
        })
        .await;
        assert_handled(&bus, &seen, &sent).await;
        bus.shutdown(Duration::from_secs(10)).await;
    });
}

#[test]
fn python_writes_a_kafka_topic_a_wildcard_subscriber_reads() {
    let Some(python) = require_server("EVENTBUS_PYTHON", "foreign_producers") else {
        return;
    };
    eventbus_integration::mark_ran("foreign_producers_kafka");
    eventbus_integration::run(2, async move {
        let mock = MockCluster::new(1).expect("mock cluster");
        let brokers = mock.bootstrap_servers();
        mock.create_topic("py.order.placed", 3, 1).expect("topic");
        let mut config = KafkaConfig::new(&brokers);
        config.consumer.start_from = KafkaStart::Earliest;
        config.consumer.topic_refresh_interval = Duration::from_millis(500);
        config.auto_create_topics = false;
        let backend = KafkaBackend::connect(config).await.expect("connect");
        let seen: Seen = Arc::default();
        let bus = wildcard_bus(Arc::new(backend), &seen).await;
        let args = [
            "kafka".to_owned(),
            brokers.clone(),
            "py.order.placed".to_owned(),
            COUNT.to_string(),
        ];
        let sent = eventbus_integration::unblock(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            produce(&python, &args)
        })
        .await;
        assert_handled(&bus, &seen, &sent).await;
        bus.shutdown(Duration::from_secs(10)).await;
        drop(mock);
    });
}
