//! Kafka backend settings: typed, with an escape hatch of raw librdkafka properties, read from
//! code or from `EVENTBUS_KAFKA_*` variables, and validated at startup with errors naming the
//! setting (`kafka.brokers`, `kafka.producer.linger`, `kafka.options[socket.timeout.ms]`, ...).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::backend::env_vars::EnvVars;
use crate::error::Error;

/// Compression codec of produced batches (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: small, slow.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4: fast, the default.
    #[default]
    Lz4,
    /// Zstandard: small and fairly fast; needs the `kafka-zstd` feature.
    Zstd,
}

impl Compression {
    /// The librdkafka / topic-config name of the codec.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.trim().to_ascii_lowercase().as_str() {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }
}

/// How a record carries its CloudEvent ([Kafka protocol binding of CloudEvents
/// 1.0](https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/kafka-protocol-binding.md)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudEventsMode {
    /// The value is the event as JSON (`content-type: application/cloudevents+json`).
    #[default]
    Structured,
    /// The value is the event's `data`; its attributes are `ce_*` headers
    /// (`content-type: application/json`).
    Binary,
}

pub use crate::backend::StartFrom;

/// Producer settings.
///
/// Always on: `acks=all` and `enable.idempotence=true` (no duplicates or reordering from
/// producer retries), so a published event is on every in-sync replica when `publish` returns.
///
/// Throughput versus latency is set by `linger` and `batch_size`: librdkafka waits up to `linger`
/// for a batch of a partition to fill up to `batch_size` bytes (or `batch_messages`), then
/// sends it compressed. The default, 5 ms and 1 MiB, costs at most 5 ms of latency per publish
/// and reaches full batches under load. [`ProducerSettings::low_latency`] (0 ms) sends at once;
/// [`ProducerSettings::high_throughput`] (25 ms, 4 MiB) makes bigger, better compressed batches.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    /// Codec of produced batches (`compression.type`); LZ4 by default.
    pub compression: Compression,
    /// How long to wait for more messages before sending a batch (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Largest batch per partition, in bytes (`batch.size`).
    pub batch_size: usize,
    /// Most messages per batch (`batch.num.messages`).
    pub batch_messages: usize,
    /// How long librdkafka keeps retrying a message before `publish` fails
    /// (`message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Most messages waiting in the producer's local queue (`queue.buffering.max.messages`);
    /// publishing beyond it waits for room.
    pub queue_messages: usize,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            compression: Compression::Lz4,
            linger: Duration::from_millis(5),
            batch_size: 1 << 20,
            batch_messages: 10_000,
            delivery_timeout: Duration::from_secs(30),
            queue_messages: 100_000,
        }
    }
}

impl ProducerSettings {
    /// Sends each message as soon as possible: `linger` 0.
    pub fn low_latency() -> Self {
        ProducerSettings {
            linger: Duration::ZERO,
            ..Self::default()
        }
    }

    /// Bigger, better compressed batches: `linger` 25 ms, 4 MiB batches.
    pub fn high_throughput() -> Self {
        ProducerSettings {
            linger: Duration::from_millis(25),
            batch_size: 4 << 20,
            ..Self::default()
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Where a new group starts.
    pub start_from: StartFrom,
    /// A member not heard from in this long is removed from its group
    /// (`session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often members heartbeat (`heartbeat.interval.ms`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Commit once this many messages are done since the last commit ...
    pub commit_every: usize,
    /// ... or this long after the last commit, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Messages fetched and not yet done, per partition, above which the partition is paused
    /// (resumed at half): memory stays bounded however slow the handlers are. librdkafka's own
    /// prefetch is bounded by [`fetch_queue_kbytes`](Self::fetch_queue_kbytes).
    ///
    /// A resumed partition is fetched at once, unless a fetch for the member's caught-up
    /// partitions is waiting at the broker: then it waits for that one, up to librdkafka's
    /// `fetch.wait.max.ms` (500 ms by default; `consumer_options` sets it). A small buffer on
    /// a member whose other partitions are caught up pays that wait at each resumption: on the
    /// bench with 1 000 records, 27-31 k events/s at 500 ms, 61 k at 100 ms, 86 k at 20 ms.
    pub max_buffered_per_partition: usize,
    /// How long a revoked partition waits for its in-flight messages to finish before its
    /// done offsets are committed and the rest is dropped for the new owner.
    #[serde(with = "humantime_serde")]
    pub rebalance_drain_timeout: Duration,
    /// How often topics are re-listed for pattern (regex) subscriptions, so topics created
    /// later are picked up (`topic.metadata.refresh.interval.ms`).
    #[serde(with = "humantime_serde")]
    pub topic_refresh_interval: Duration,
    /// Upper bound of librdkafka's own prefetch queue, in KiB
    /// (`queued.max.messages.kbytes`).
    pub fetch_queue_kbytes: usize,
    /// How long librdkafka waits before fetching a partition again once its prefetch queue
    /// went over [`fetch_queue_kbytes`](Self::fetch_queue_kbytes) (`fetch.queue.backoff.ms`).
    /// librdkafka's own default, 1 s, stalls a consumer that drains its queue faster than that:
    /// on the mock cluster it held the bench's consumer at 60 k records/s (one 16 MiB queue a
    /// second), against 360 k/s with 10 ms.
    #[serde(with = "humantime_serde")]
    pub fetch_queue_backoff: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            start_from: StartFrom::Latest,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            commit_every: 100,
            commit_interval: Duration::from_secs(5),
            max_buffered_per_partition: 10_000,
            rebalance_drain_timeout: Duration::from_secs(10),
            topic_refresh_interval: Duration::from_secs(5),
            fetch_queue_kbytes: 16 * 1024,
            fetch_queue_backoff: Duration::from_millis(10),
        }
    }
}

/// Settings of topics the backend creates itself (retry tiers, dead letters, and topics
/// published to before being provisioned when [`KafkaConfig::auto_create_topics`] is on).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// Partitions of a new topic whose source topic is unknown.
    pub partitions: i32,
    /// Replication factor; `None` uses the broker's default.
    pub replication_factor: Option<i32>,
    /// `retention.ms` of new event and retry topics; `None` uses the broker's default.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// `retention.ms` of new dead-letter topics.
    #[serde(with = "humantime_serde")]
    pub dlq_retention: Option<Duration>,
}

impl Default for TopicDefaults {
    /// 6 partitions, the broker's replication factor, 7 days for events, 30 days for dead letters.
    fn default() -> Self {
        TopicDefaults {
            partitions: 6,
            replication_factor: None,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            dlq_retention: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }
}

/// Settings of the Kafka backend.
///
/// ```
/// use eventbus::backend::kafka::{KafkaConfig, ProducerSettings, StartFrom};
///
/// let mut config = KafkaConfig::new("broker-1:9092,broker-2:9092");
/// config.producer = ProducerSettings::high_throughput();
/// config.consumer.start_from = StartFrom::Earliest;
/// // Anything librdkafka knows, passed through as is:
/// config.options.insert("security.protocol".into(), "plaintext".into());
/// config.validate().unwrap();
/// ```
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas (`bootstrap.servers`).
    pub brokers: String,
    /// Client id shown in broker logs and metrics (`client.id`).
    pub client_id: String,
    /// Producer settings.
    pub producer: ProducerSettings,
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Settings of topics the backend creates.
    pub topics: TopicDefaults,
    /// Create missing topics (with [`KafkaConfig::topics`]) the first time this process
    /// publishes to them. Production clusters usually provision instead; see
    /// [`KafkaBackend::provision`](super::KafkaBackend::provision).
    pub auto_create_topics: bool,
    /// How records carry the CloudEvent: the whole event as the value (structured, the
    /// default) or `data` as the value and the attributes as `ce_*` headers (binary). Records
    /// of both modes are read whatever this says.
    pub cloudevents: CloudEventsMode,
    /// Timeout of metadata, admin and health requests.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Raw librdkafka properties for every client (TLS, SASL, socket tuning, ...), applied
    /// after the typed settings, so they win.
    pub options: BTreeMap<String, String>,
    /// Raw librdkafka properties for the producer only.
    pub producer_options: BTreeMap<String, String>,
    /// Raw librdkafka properties for consumers only.
    pub consumer_options: BTreeMap<String, String>,
}

/// Shows secret-looking properties (`sasl.password`, `ssl.key.password`, ...) as `<redacted>`.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::redact::Settings;
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("producer", &self.producer)
            .field("consumer", &self.consumer)
            .field("topics", &self.topics)
            .field("auto_create_topics", &self.auto_create_topics)
            .field("cloudevents", &self.cloudevents)
            .field("operation_timeout", &self.operation_timeout)
            .field("options", &Settings(&self.options))
            .field("producer_options", &Settings(&self.producer_options))
            .field("consumer_options", &Settings(&self.consumer_options))
            .finish()
    }
}

/// Properties the backend manages itself; setting them through the escape hatch is an error.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("metadata.broker.list", "set kafka.brokers instead"),
    ("group.id", "the group is the subscription's group"),
    (
        "enable.auto.commit",
        "offsets are committed by the backend after the pipeline finished each message",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed by the backend after the pipeline finished each message",
    ),
    ("auto.offset.reset", "set kafka.consumer.start_from instead"),
    (
        "transactional.id",
        "transactions are not used by this backend",
    ),
    ("enable.partition.eof", "managed by the backend"),
];

/// Every default, brokers unset (`kafka.brokers` must then come from the configuration).
impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::new("")
    }
}

impl KafkaConfig {
    /// Defaults for the cluster at `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            client_id: "eventbus".into(),
            producer: ProducerSettings::default(),
            consumer: ConsumerSettings::default(),
            topics: TopicDefaults::default(),
            auto_create_topics: true,
            cloudevents: CloudEventsMode::Structured,
            operation_timeout: Duration::from_secs(10),
            options: BTreeMap::new(),
            producer_options: BTreeMap::new(),
            consumer_options: BTreeMap::new(),
        }
    }

    /// Reads the settings from the process environment: see [`KafkaConfig::from_vars`].
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the settings from `EVENTBUS_KAFKA_*` variables: `BROKERS` (required), `CLIENT_ID`,
    /// `COMPRESSION` (`none`/`gzip`/`snappy`/`lz4`/`zstd`), `LINGER_MS`, `BATCH_SIZE`,
    /// `COMMIT_EVERY`, `COMMIT_INTERVAL_MS`, `START_FROM` (`earliest`/`latest`),
    /// `CLOUDEVENTS_MODE` (`structured`/`binary`),
    /// `AUTO_CREATE_TOPICS` (`true`/`false`), `MAX_BUFFERED_PER_PARTITION`, and any librdkafka
    /// property as `EVENTBUS_KAFKA_OPTION_<NAME>`, the name upper-cased with `.` written as `_`
    /// (`EVENTBUS_KAFKA_OPTION_SECURITY_PROTOCOL=sasl_ssl` sets `security.protocol`).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        const P: &str = "EVENTBUS_KAFKA_";
        let vars: BTreeMap<String, String> =
            vars.into_iter().filter(|(k, _)| k.starts_with(P)).collect();
        let env = EnvVars::new(P, |name| vars.get(name).cloned());
        let mut config = KafkaConfig::new(env.required("BROKERS")?);
        if let Some(id) = env.get("CLIENT_ID") {
            config.client_id = id;
        }
        if let Some(v) = env.get("COMPRESSION") {
            config.producer.compression = Compression::parse(&v).ok_or_else(|| {
                Error::config(
                    env.name("COMPRESSION"),
                    format!("`{v}` is not none, gzip, snappy, lz4 or zstd"),
                )
            })?;
        }
        if let Some(d) = env.millis("LINGER_MS")? {
            config.producer.linger = d;
        }
        if let Some(n) = env.number("BATCH_SIZE")? {
            config.producer.batch_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = env.number("COMMIT_EVERY")? {
            config.consumer.commit_every = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(d) = env.millis("COMMIT_INTERVAL_MS")? {
            config.consumer.commit_interval = d;
        }
        if let Some(n) = env.number("MAX_BUFFERED_PER_PARTITION")? {
            config.consumer.max_buffered_per_partition = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(start) = env.choice("START_FROM", StartFrom::CHOICES)? {
            config.consumer.start_from = start;
        }
        if let Some(mode) = env.choice(
            "CLOUDEVENTS_MODE",
            &[
                ("structured", CloudEventsMode::Structured),
                ("binary", CloudEventsMode::Binary),
            ],
        )? {
            config.cloudevents = mode;
        }
        if let Some(on) = env.flag("AUTO_CREATE_TOPICS")? {
            config.auto_create_topics = on;
        }
        for (name, value) in &vars {
            if let Some(option) = name.strip_prefix(&format!("{P}OPTION_")) {
                let key = option.to_ascii_lowercase().replace('_', ".");
                config.options.insert(key, value.clone());
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting, naming the first bad one; also asks librdkafka to accept the
    /// resulting producer and consumer properties (unknown property names and bad values of
    /// the escape-hatch maps are reported with their key).
    pub fn validate(&self) -> Result<(), Error> {
        let brokers: Vec<&str> = self
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        if brokers.is_empty() {
            return Err(Error::config(
                "kafka.brokers",
                "is empty; expected host:port[,host:port...]",
            ));
        }
        for broker in &brokers {
            let address = broker.rsplit_once("://").map_or(*broker, |(_, rest)| rest);
            let port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return Err(Error::config(
                    "kafka.brokers",
                    format!("`{broker}` is not host:port"),
                ));
            }
        }
        if self.client_id.trim().is_empty() {
            return Err(Error::config("kafka.client_id", "is empty"));
        }
        let p = &self.producer;
        if p.linger > Duration::from_secs(900) {
            return Err(Error::config(
                "kafka.producer.linger",
                "is over 900 s (librdkafka's limit)",
            ));
        }
        if !(1..=2_147_483_647).contains(&p.batch_size) {
            return Err(Error::config(
                "kafka.producer.batch_size",
                "must be between 1 byte and 2 GiB",
            ));
        }
        if !(1..=1_000_000).contains(&p.batch_messages) {
            return Err(Error::config(
                "kafka.producer.batch_messages",
                "must be in 1..=1000000",
            ));
        }
        if p.delivery_timeout.is_zero() {
            return Err(Error::config(
                "kafka.producer.delivery_timeout",
                "must be positive",
            ));
        }
        if !(1..=10_000_000).contains(&p.queue_messages) {
            return Err(Error::config(
                "kafka.producer.queue_messages",
                "must be in 1..=10000000",
            ));
        }
        if p.compression == Compression::Zstd && !cfg!(feature = "kafka-zstd") {
            return Err(Error::config(
                "kafka.producer.compression",
                "zstd needs the `kafka-zstd` feature of eventbus",
            ));
        }
        let c = &self.consumer;
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(Error::config(
                    format!("kafka.consumer.{name}"),
                    "must be positive",
                ))
            } else {
                Ok(())
            }
        };
        positive("session_timeout", c.session_timeout)?;
        positive("heartbeat_interval", c.heartbeat_interval)?;
        positive("commit_interval", c.commit_interval)?;
        positive("rebalance_drain_timeout", c.rebalance_drain_timeout)?;
        positive("topic_refresh_interval", c.topic_refresh_interval)?;
        if c.heartbeat_interval >= c.session_timeout {
            return Err(Error::config(
                "kafka.consumer.heartbeat_interval",
                format!(
                    "{:?} must be below session_timeout {:?}",
                    c.heartbeat_interval, c.session_timeout
                ),
            ));
        }
        if c.commit_every == 0 {
            return Err(Error::config(
                "kafka.consumer.commit_every",
                "must be at least 1",
            ));
        }
        if c.max_buffered_per_partition < 2 {
            return Err(Error::config(
                "kafka.consumer.max_buffered_per_partition",
                "must be at least 2",
            ));
        }
        if c.fetch_queue_kbytes == 0 {
            return Err(Error::config(
                "kafka.consumer.fetch_queue_kbytes",
                "must be positive",
            ));
        }
        let t = &self.topics;
        if t.partitions < 1 {
            return Err(Error::config(
                "kafka.topics.partitions",
                "must be at least 1",
            ));
        }
        if t.replication_factor.is_some_and(|r| r < 1) {
            return Err(Error::config(
                "kafka.topics.replication_factor",
                "must be at least 1 (or None for the broker default)",
            ));
        }
        if t.retention.is_some_and(|r| r.is_zero()) {
            return Err(Error::config(
                "kafka.topics.retention",
                "must be positive (or None for the broker default)",
            ));
        }
        if t.dlq_retention.is_some_and(|r| r.is_zero()) {
            return Err(Error::config(
                "kafka.topics.dlq_retention",
                "must be positive (or None for the broker default)",
            ));
        }
        if self.operation_timeout.is_zero() {
            return Err(Error::config("kafka.operation_timeout", "must be positive"));
        }
        for (map, options) in [
            ("options", &self.options),
            ("producer_options", &self.producer_options),
            ("consumer_options", &self.consumer_options),
        ] {
            for key in options.keys() {
                if let Some((_, why)) = RESERVED.iter().find(|(k, _)| k == key) {
                    return Err(Error::config(
                        format!("kafka.{map}[{key}]"),
                        format!("is managed by eventbus: {why}"),
                    ));
                }
            }
        }
        self.producer_client_config()
            .create_native_config()
            .map_err(|e| self.config_error(e, "producer_options"))?;
        self.consumer_client_config("eventbus-validate")
            .create_native_config()
            .map_err(|e| self.config_error(e, "consumer_options"))?;
        Ok(())
    }

    /// Turns a librdkafka configuration error into one naming our setting.
    pub(crate) fn config_error(&self, error: KafkaError, client_map: &str) -> Error {
        match error {
            KafkaError::ClientConfig(_, description, key, _) => {
                let setting = if self.options.contains_key(&key) {
                    format!("kafka.options[{key}]")
                } else if client_map == "producer_options"
                    && self.producer_options.contains_key(&key)
                {
                    format!("kafka.producer_options[{key}]")
                } else if client_map == "consumer_options"
                    && self.consumer_options.contains_key(&key)
                {
                    format!("kafka.consumer_options[{key}]")
                } else {
                    typed_setting(&key).map_or_else(|| format!("kafka ({key})"), str::to_owned)
                };
                Error::config(setting, description)
            }
            other => Error::config("kafka", other.to_string()),
        }
    }

    fn common(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.trim())
            .set("client.id", &self.client_id)
            .set("log.connection.close", "false");
        c
    }

    /// The producer's librdkafka properties.
    /// The partition the producer puts `key` in among `partitions`, as its partitioner
    /// (`partitioner`, librdkafka's default `consistent_random`) computes it; `None` for a
    /// partitioner that does not place keys by hash alone.
    pub(crate) fn key_partition(&self, key: &str, partitions: i32) -> Option<i32> {
        use crate::backend::key_hash::{crc32_partition_of, partition_of};
        let n = u32::try_from(partitions).ok().filter(|n| *n > 0)?;
        let config = self.producer_client_config();
        let placed = match config.get("partitioner").unwrap_or("consistent_random") {
            "consistent" | "consistent_random" => crc32_partition_of(key, n),
            "murmur2" | "murmur2_random" => partition_of(key, n),
            _ => return None,
        };
        i32::try_from(placed).ok()
    }

    pub(crate) fn producer_client_config(&self) -> ClientConfig {
        let p = &self.producer;
        let mut c = self.common();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", p.compression.as_str())
            .set("linger.ms", p.linger.as_millis().to_string())
            .set("batch.size", p.batch_size.to_string())
            .set("batch.num.messages", p.batch_messages.to_string())
            .set(
                "message.timeout.ms",
                p.delivery_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", p.queue_messages.to_string());
        for (k, v) in self.options.iter().chain(&self.producer_options) {
            c.set(k, v);
        }
        c
    }

    /// A consumer's librdkafka properties for `group`.
    pub(crate) fn consumer_client_config(&self, group: &str) -> ClientConfig {
        let s = &self.consumer;
        let mut c = self.common();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "auto.offset.reset",
                match s.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set(
                "session.timeout.ms",
                s.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                s.heartbeat_interval.as_millis().to_string(),
            )
            .set(
                "topic.metadata.refresh.interval.ms",
                s.topic_refresh_interval.as_millis().to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                s.fetch_queue_kbytes.to_string(),
            )
            .set(
                "fetch.queue.backoff.ms",
                s.fetch_queue_backoff.as_millis().to_string(),
            )
            .set("allow.auto.create.topics", "false");
        for (k, v) in self.options.iter().chain(&self.consumer_options) {
            c.set(k, v);
        }
        c
    }

    /// A group-less client's properties (reading topics, replay, admin). It takes the
    /// consumer's options too, and the session timeout they may be checked against (a
    /// `max.poll.interval.ms` below librdkafka's default session timeout is refused otherwise).
    pub(crate) fn reader_client_config(&self) -> ClientConfig {
        let mut c = self.common();
        c.set(
            "session.timeout.ms",
            self.consumer.session_timeout.as_millis().to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "queued.max.messages.kbytes",
            self.consumer.fetch_queue_kbytes.to_string(),
        )
        .set(
            "fetch.queue.backoff.ms",
            self.consumer.fetch_queue_backoff.as_millis().to_string(),
        )
        .set("allow.auto.create.topics", "false");
        for (k, v) in self.options.iter().chain(&self.consumer_options) {
            c.set(k, v);
        }
        c
    }

    /// The admin client's properties.
    pub(crate) fn admin_client_config(&self) -> ClientConfig {
        let mut c = self.common();
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// The typed setting behind a librdkafka property the backend sets.
fn typed_setting(key: &str) -> Option<&'static str> {
    Some(match key {
        "bootstrap.servers" => "kafka.brokers",
        "client.id" => "kafka.client_id",
        "compression.type" => "kafka.producer.compression",
        "linger.ms" => "kafka.producer.linger",
        "batch.size" => "kafka.producer.batch_size",
        "batch.num.messages" => "kafka.producer.batch_messages",
        "message.timeout.ms" => "kafka.producer.delivery_timeout",
        "queue.buffering.max.messages" => "kafka.producer.queue_messages",
        "session.timeout.ms" => "kafka.consumer.session_timeout",
        "heartbeat.interval.ms" => "kafka.consumer.heartbeat_interval",
        "topic.metadata.refresh.interval.ms" => "kafka.consumer.topic_refresh_interval",
        "queued.max.messages.kbytes" => "kafka.consumer.fetch_queue_kbytes",
        "fetch.queue.backoff.ms" => "kafka.consumer.fetch_queue_backoff",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_sasl_and_key_passwords() {
        let mut config = KafkaConfig::new("b:9092");
        config
            .options
            .insert("sasl.password".into(), "hunter2".into());
        config
            .producer_options
            .insert("ssl.key.password".into(), "hunter3".into());
        config.options.insert("sasl.username".into(), "app".into());
        let text = format!("{config:?}");
        assert!(!text.contains("hunter"), "{text}");
        assert!(text.contains("\"app\""), "{text}");
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_the_environment() {
        let c = KafkaConfig::from_vars(vars(&[
            ("EVENTBUS_KAFKA_BROKERS", "k1:9092,k2:9092"),
            ("EVENTBUS_KAFKA_COMPRESSION", "gzip"),
            ("EVENTBUS_KAFKA_LINGER_MS", "20"),
            ("EVENTBUS_KAFKA_START_FROM", "earliest"),
            ("EVENTBUS_KAFKA_OPTION_SOCKET_TIMEOUT_MS", "30000"),
            ("UNRELATED", "x"),
        ]))
        .expect("valid");
        assert_eq!(c.producer.compression, Compression::Gzip);
        assert_eq!(c.producer.linger, Duration::from_millis(20));
        assert_eq!(c.consumer.start_from, StartFrom::Earliest);
        assert_eq!(
            c.options.get("socket.timeout.ms").map(String::as_str),
            Some("30000")
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "EVENTBUS_KAFKA_BROKERS"),
            (&[("EVENTBUS_KAFKA_BROKERS", "")], "kafka.brokers"),
            (&[("EVENTBUS_KAFKA_BROKERS", "localhost")], "kafka.brokers"),
            (
                &[
                    ("EVENTBUS_KAFKA_BROKERS", "h:1"),
                    ("EVENTBUS_KAFKA_LINGER_MS", "soon"),
                ],
                "EVENTBUS_KAFKA_LINGER_MS",
            ),
            (
                &[
                    ("EVENTBUS_KAFKA_BROKERS", "h:1"),
                    ("EVENTBUS_KAFKA_COMPRESSION", "brotli"),
                ],
                "EVENTBUS_KAFKA_COMPRESSION",
            ),
            (
                &[
                    ("EVENTBUS_KAFKA_BROKERS", "h:1"),
                    ("EVENTBUS_KAFKA_COMMIT_EVERY", "0"),
                ],
                "kafka.consumer.commit_every",
            ),
            (
                &[
                    ("EVENTBUS_KAFKA_BROKERS", "h:1"),
                    ("EVENTBUS_KAFKA_OPTION_NO_SUCH_THING", "1"),
                ],
                "kafka.options[no.such.thing]",
            ),
            (
                &[
                    ("EVENTBUS_KAFKA_BROKERS", "h:1"),
                    ("EVENTBUS_KAFKA_OPTION_SOCKET_TIMEOUT_MS", "-5"),
                ],
                "kafka.options[socket.timeout.ms]",
            ),
            (
                &[
                    ("EVENTBUS_KAFKA_BROKERS", "h:1"),
                    ("EVENTBUS_KAFKA_OPTION_GROUP_ID", "x"),
                ],
                "kafka.options[group.id]",
            ),
        ];
        for (vars_, setting) in cases {
            let err = KafkaConfig::from_vars(vars(vars_)).expect_err(setting);
            assert!(
                err.to_string().contains(setting),
                "{err} does not name {setting}"
            );
        }
    }

    #[test]
    fn librdkafka_rejections_name_the_map_they_came_from() {
        let mut c = KafkaConfig::new("h:1");
        c.producer_options
            .insert("linger.ms".into(), "not-a-number".into());
        let err = c.validate().expect_err("bad linger");
        assert!(
            err.to_string()
                .contains("kafka.producer_options[linger.ms]"),
            "{err}"
        );
        let mut c = KafkaConfig::new("h:1");
        c.consumer.session_timeout = Duration::from_millis(1);
        c.consumer.heartbeat_interval = Duration::from_micros(10);
        let err = c.validate().expect_err("librdkafka refuses 0 ms heartbeat");
        assert!(err.to_string().contains("kafka.consumer."), "{err}");
    }

    #[test]
    fn idempotence_and_acks_all_are_always_on() {
        let c = KafkaConfig::new("h:1").producer_client_config();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
    }
}
