//! `ServiceConfig`: every setting from a TOML file and the environment, durations in humantime
//! form, errors naming the setting, secrets kept out of `Debug`, the service name set once.

use std::time::Duration;

use eventbus::backend::kafka::{Compression, StartFrom};
use eventbus::config::ServiceConfig;
use eventbus::outbox::CleanupMode;
use eventbus::Backoff;

const FILE: &str = r#"
service = "orders"

[bus]
lag_interval = "5s"
drain = "45s"
topic_prefix = "staging."
dead_letter_topic = "orders.dlq"

[redis]
url = "redis://app:s3cret-redis@127.0.0.1:6379/0"
block = "250ms"
partitions = 8
retention = { max_age = "3d" }

[kafka]
brokers = "k1:9092,k2:9092"
options = { "sasl.username" = "app", "sasl.password" = "s3cret-kafka" }

[kafka.producer]
compression = "gzip"
linger = "20ms"

[kafka.consumer]
start_from = "earliest"
session_timeout = "10s"

[outbox]
batch_size = 200
poll_interval = "100ms"
backoff = { exponential = { initial = "1s", max = "2m" } }
retention = { sent = "2d", mode = "archive" }

[admin]
bind = "0.0.0.0:9191"
token = "s3cret-admin-token-0123456789"
prefix = "/ops"
"#;

#[test]
fn a_file_and_the_environment_fill_every_section() {
    let dir = std::env::temp_dir().join(format!("eventbus-config-{}", eventbus::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("service.toml");
    std::fs::write(&path, FILE).expect("write");
    // The environment wins over the file.
    std::env::set_var("EVENTBUS_KAFKA__CONSUMER__SESSION_TIMEOUT", "12s");
    std::env::set_var("EVENTBUS_OUTBOX__BATCH_SIZE", "300");
    let loaded = ServiceConfig::load(Some(&path));
    std::env::remove_var("EVENTBUS_KAFKA__CONSUMER__SESSION_TIMEOUT");
    std::env::remove_var("EVENTBUS_OUTBOX__BATCH_SIZE");
    let _ = std::fs::remove_dir_all(&dir);
    let config = loaded.expect("valid configuration");

    assert_eq!(config.service, "orders");
    assert_eq!(config.bus.lag_interval, Duration::from_secs(5));
    assert_eq!(config.bus.drain, Duration::from_secs(45));
    assert_eq!(config.bus.topic_prefix.as_deref(), Some("staging."));
    assert_eq!(config.bus.dead_letter_topic.as_deref(), Some("orders.dlq"));
    let redis = config.redis.as_ref().expect("redis section");
    assert_eq!(redis.block, Duration::from_millis(250));
    assert_eq!(redis.partitions, 8);
    assert_eq!(
        redis.retention.max_age,
        Some(Duration::from_secs(3 * 86_400))
    );
    assert_eq!(
        redis.batch_size, 128,
        "a setting left out keeps its default"
    );
    let kafka = config.kafka.as_ref().expect("kafka section");
    assert_eq!(kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(kafka.client_id, "orders", "the service name, set once");
    assert_eq!(kafka.producer.compression, Compression::Gzip);
    assert_eq!(kafka.producer.linger, Duration::from_millis(20));
    assert_eq!(kafka.consumer.start_from, StartFrom::Earliest);
    assert_eq!(kafka.consumer.session_timeout, Duration::from_secs(12));
    assert_eq!(config.outbox.batch_size, 300);
    assert_eq!(config.outbox.poll_interval, Duration::from_millis(100));
    assert_eq!(
        config.outbox.retention.sent,
        Some(Duration::from_secs(2 * 86_400))
    );
    assert_eq!(config.outbox.retention.mode, CleanupMode::Archive);
    assert!(matches!(
        config.outbox.backoff,
        Backoff::Exponential { initial, max, .. }
            if initial == Duration::from_secs(1) && max == Duration::from_secs(120)
    ));
    assert_eq!(config.admin.bind(), "0.0.0.0:9191".parse().expect("addr"));
    assert_eq!(config.admin.path_prefix(), Some("/ops"));
    assert!(config.admin.has_token());
}

#[test]
fn secrets_stay_out_of_debug() {
    let config = ServiceConfig::from_toml(FILE).expect("valid");
    let shown = format!("{config:?}");
    for secret in ["s3cret-redis", "s3cret-kafka", "s3cret-admin-token"] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(shown.contains("orders"), "{shown}");
}

#[test]
fn bad_settings_fail_naming_them() {
    let cases = [
        (
            "[kafka]\nbrokers = \"k:9092\"\nconsumer = { session_timeout = \"ten seconds\" }",
            "kafka.consumer.session_timeout",
        ),
        ("[kafka]\nbrokerz = \"k:9092\"", "brokerz"),
        (
            "[redis]\nurl = \"redis://h:1\"\nbatch_size = 0",
            "redis.batch_size",
        ),
        ("[redis]\nblock = \"1s\"", "redis.url"),
        ("[outbox]\nbatch_size = 0", "outbox.batch_size"),
        ("[outbox]\nbackoff = { linear = \"1s\" }", "outbox.backoff"),
        ("[admin]\nbind = \"not an address\"", "admin.bind"),
        ("[admin]\nprefix = \"ops\"", "admin.prefix"),
        ("service = \" \"", "service"),
        ("[bus]\nlag_interval = \"0s\"", "bus.lag_interval"),
        ("[bus]\ntopic_prefix = \"has space\"", "bus.topic_prefix"),
        (
            "[bus]\ndead_letter_topic = \"orders-dead\"",
            "bus.dead_letter_topic",
        ),
    ];
    for (text, setting) in cases {
        let error = ServiceConfig::from_toml(text)
            .expect_err(setting)
            .to_string();
        assert!(error.contains(setting), "{setting}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_name_is_the_source_of_what_the_bus_publishes() {
    let config = ServiceConfig::from_toml("service = \"billing\"").expect("valid");
    let backend = eventbus::backend::memory::MemoryBackend::new();
    let bus = config
        .bus_builder()
        .backend(backend.clone())
        .start()
        .await
        .expect("bus");
    let published = bus
        .publisher()
        .prepare(eventbus::Envelope::new(Invoiced { n: 1 }))
        .expect("prepare");
    let envelope = eventbus::RawEnvelope::decode(&published.payload).expect("decode");
    assert_eq!(envelope.source, "billing");
    assert!(bus.metrics().service() == "billing");
    bus.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_settings_put_topics_under_the_prefix_and_letters_in_one_topic() {
    let config = ServiceConfig::from_toml(
        "service = \"billing\"\n[bus]\ntopic_prefix = \"staging.\"\ndead_letter_topic = \"billing.dlq\"",
    )
    .expect("valid");
    let backend = eventbus::backend::memory::MemoryBackend::new();
    let bus = config
        .bus_builder()
        .backend(backend.clone())
        .start()
        .await
        .expect("bus");
    bus.publish(Invoiced { n: 1 }).await.expect("publish");
    assert_eq!(bus.topic_prefix(), Some("staging."));
    let admin = eventbus::backend::Backend::admin(&backend).expect("admin");
    let stored = admin
        .read_page("staging.invoice.issued", None, 10)
        .await
        .expect("read");
    assert_eq!(stored.messages.len(), 1, "published under the prefix");
    assert_eq!(
        bus.dead_letters().routing(),
        &eventbus::dead_letter::DeadLetterTopics::Single("billing.dlq".into())
    );
    bus.shutdown(Duration::from_secs(5)).await;
}

#[eventbus::event(name = "invoice.issued", version = 1)]
#[derive(serde::Serialize, serde::Deserialize)]
struct Invoiced {
    n: u32,
}
