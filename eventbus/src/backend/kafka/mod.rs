//! The Kafka backend (feature `kafka`), over [`rdkafka`] (librdkafka, built from source).
//!
//! - **Publishing** ([`producer`](self#publishing)): one idempotent producer with `acks=all`,
//!   LZ4 and a 5 ms linger by default ([`ProducerSettings`] documents throughput versus
//!   latency). The event's key (`#[event(key = ...)]`) is the record key, so one key stays in
//!   one partition, in order; the envelope JSON is the value, and the event type, id, source,
//!   time and correlation id travel in headers next to the transport headers. A batch is
//!   enqueued at once and acknowledged together.
//! - **Consuming**: a consumer group per subscription group, cooperative-sticky assignment;
//!   the catalog's topics for the pattern plus a regex subscription (`^...$`) for topics created
//!   later. Per-partition queues hand messages out with concurrency across partitions and
//!   across keys (one message of a key at a time); offsets are committed after the pipeline
//!   finished each message (handled, deduplicated by the inbox, or dead-lettered), only as the
//!   contiguous done prefix of each partition, every 100 messages or 5 s. Partitions over their
//!   buffer limit are paused, so memory stays bounded. A rebalance lets in-flight messages of
//!   revoked partitions finish, commits them, and drops the rest for the next owner.
//! - **Retries**: in-process backoff first (the subscription's `retries`), then its delayed
//!   rounds go to non-blocking retry tiers `{topic}.retry.{delay}` consumed by the group's own
//!   consumer ([`retry_tiers`](self#retries)), then `{topic}.dlq`.
//! - **Dead letters** are read back from `{topic}.dlq`; redrive re-publishes to the original
//!   topic with the original key; purge and redrive append resolution markers (Kafka cannot
//!   delete single records).
//! - **Replay** of a time range through the pipeline: [`KafkaBackend::replay`].
//! - **Provisioning** from the catalog: [`KafkaBackend::provision`].
//! - **Shutdown**: the bus stops fetching, finishes in-flight handlers, then the consumers
//!   commit what is done and leave their groups ([`Backend::flush`] waits for it).
//!
//! TLS and SASL: enable the `kafka-ssl` (or `kafka-ssl-vendored`, `kafka-gssapi`) feature of
//! eventbus and set the librdkafka properties in [`KafkaConfig::options`]
//! (`security.protocol`, `sasl.mechanisms`, `sasl.username`, ...). [`rdkafka`] is re-exported
//! for the types a custom setup needs.
//!
//! ```no_run
//! # async fn run() -> Result<(), eventbus::Error> {
//! use eventbus::backend::kafka::{KafkaBackend, KafkaConfig};
//! use eventbus::Bus;
//!
//! let kafka = KafkaBackend::connect(KafkaConfig::new("localhost:9092")).await?;
//! let bus = Bus::builder().backend(kafka).discover().start().await?;
//! # bus.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod async_runtime;
mod binary;
mod config;
mod consumer;
mod fetch_flow;
mod producer;
mod provision;
mod reader;
mod record;
mod replay;
mod retry_tiers;
mod topics;
mod tracker;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::TopicPartitionList;

pub use rdkafka;

pub use async_runtime::{KafkaProducer, SeamRuntime};

pub use config::{
    CloudEventsMode, Compression, ConsumerSettings, KafkaConfig, ProducerSettings, StartFrom,
    TopicDefaults,
};
pub use provision::{
    OnDifference, ProvisionReport, TopicDifference, TopicPlan, TopicSettings, TopicSpec,
};
pub use reader::RESOLVES_HEADER;
pub use record::{
    CORRELATION_HEADER, EVENT_ID_HEADER, EVENT_SOURCE_HEADER, EVENT_TIME_HEADER,
    ORIGIN_TOPIC_HEADER, RETRY_DUE_HEADER, RETRY_GROUP_HEADER, TYPE_HEADER,
};
pub use replay::{ReplayBackend, ReplaySeek, ReplayWindow};
pub use retry_tiers::{is_tier_topic, tier_name, tier_topic, RETRY_INFIX};

use super::{
    Backend, BackendAdmin, Cursor, DeliveryStream, GroupLag, KeyPage, Message, Page, StoredMessage,
    SubscribeRequest,
};
use crate::error::Error;
use crate::runtime;
use crate::wire::{is_dlq_topic, DLQ_SUFFIX};

/// Counters of what the backend's consumers did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KafkaStats {
    /// Consumers started by this backend.
    pub consumers: u64,
    /// Partition assignments and revocations seen.
    pub rebalances: u64,
    /// Offset commits sent.
    pub commits: u64,
    /// Records not for the subscription (other event types, other groups' retries, dead
    /// letters matched by a wide pattern), committed without delivery.
    pub skipped: u64,
    /// Deliveries produced to a retry tier.
    pub deferred: u64,
    /// Times a partition was paused (backpressure or a retry not due yet).
    pub pauses: u64,
}

/// The Kafka backend. Cheap to clone; clones share the producer and the consumers.
#[derive(Clone)]
pub struct KafkaBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: KafkaConfig,
    producer: producer::Producer,
    admin: AdminClient<DefaultClientContext>,
    topics: topics::TopicCache,
    consumers: Mutex<Vec<Arc<consumer::MemberState>>>,
    groups: Mutex<HashMap<String, String>>,
    resolved: reader::ResolvedIndex,
    /// Lag per (group, topic, partition) at the last [`BackendAdmin::group_lag`].
    partition_lag: Mutex<std::collections::BTreeMap<(String, String, i32), i64>>,
    /// Brokers seen in the cluster metadata, and whether the last metadata fetch listed them.
    brokers: Mutex<std::collections::BTreeMap<i32, bool>>,
}

impl Inner {
    /// Records the brokers the last metadata fetch listed: those are available, every broker
    /// seen before and missing now is not.
    fn note_brokers(&self, listed: &[i32]) {
        let mut brokers = self.brokers.lock().unwrap_or_else(|p| p.into_inner());
        for available in brokers.values_mut() {
            *available = false;
        }
        for id in listed {
            brokers.insert(*id, true);
        }
    }

    fn register(&self, consumer: Arc<consumer::MemberState>) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        consumers.push(consumer);
    }

    fn consumers(&self) -> Vec<Arc<consumer::MemberState>> {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl KafkaBackend {
    /// Validates `config`, creates the producer and checks the cluster answers within
    /// [`KafkaConfig::operation_timeout`].
    pub async fn connect(config: KafkaConfig) -> Result<Self, Error> {
        config.validate()?;
        let producer = producer::Producer::new(&config)?;
        let admin: AdminClient<DefaultClientContext> = config
            .admin_client_config()
            .create()
            .map_err(|e| config.config_error(e, "options"))?;
        let backend = KafkaBackend {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                topics: topics::TopicCache::default(),
                consumers: Mutex::new(Vec::new()),
                groups: Mutex::new(HashMap::new()),
                resolved: reader::ResolvedIndex::default(),
                partition_lag: Mutex::default(),
                brokers: Mutex::default(),
            }),
        };
        backend.health().await.map_err(|e| match e {
            Error::Backend { source, .. } => Error::backend("kafka", "connect", source),
            other => other,
        })?;
        Ok(backend)
    }

    /// Connects with settings from `EVENTBUS_KAFKA_*` variables ([`KafkaConfig::from_env`]).
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect(KafkaConfig::from_env()?).await
    }

    /// The settings in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// The underlying producer, for what the bus does not cover.
    pub fn producer(&self) -> &KafkaProducer {
        self.inner.producer.rdkafka()
    }

    /// What the consumers did so far.
    pub fn stats(&self) -> KafkaStats {
        let consumers = self.inner.consumers();
        let mut stats = KafkaStats {
            consumers: consumers.len() as u64,
            ..KafkaStats::default()
        };
        for c in consumers {
            let k = &c.counters;
            stats.rebalances += k.rebalances.load(Ordering::Relaxed);
            stats.commits += k.commits.load(Ordering::Relaxed);
            stats.skipped += k.skipped.load(Ordering::Relaxed);
            stats.deferred += k.deferred.load(Ordering::Relaxed);
            stats.pauses += k.pauses.load(Ordering::Relaxed);
        }
        stats
    }

    /// The partitions held by this backend's running consumers of `group`.
    pub fn assignment(&self, group: &str) -> Vec<(String, i32)> {
        let mut tps: Vec<(String, i32)> = self
            .inner
            .consumers()
            .iter()
            .filter(|c| c.group == group && !c.is_stopping())
            .flat_map(|c| c.assignment())
            .collect();
        tps.sort();
        tps
    }

    /// Fault injection for tests: stops every consumer of this backend as a process crash
    /// would. Nothing more is committed, deliveries still in flight are abandoned (settling
    /// them later has no effect) and the other members of the groups take the partitions over
    /// from the last committed offsets. Await [`KafkaBackend::consumers_closed`] for the
    /// consumers to be gone.
    pub fn crash_consumers(&self) {
        for c in self.inner.consumers() {
            c.crash();
        }
    }

    /// Completes when every stopped consumer of this backend has closed (left its group).
    pub async fn consumers_closed(&self) {
        for c in self
            .inner
            .consumers()
            .into_iter()
            .filter(|c| c.is_stopping())
        {
            c.closed().await;
        }
    }

    /// The offsets `group` has committed on `topic`'s partitions (`None` where nothing was
    /// committed).
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, Option<i64>)>, Error> {
        let inner = self.inner.clone();
        let (group, topic) = (group.to_owned(), topic.to_owned());
        runtime::unblock(move || {
            let timeout = inner.config.operation_timeout;
            let consumer: BaseConsumer = inner
                .config
                .reader_client_config()
                .set("group.id", &group)
                .create()
                .map_err(|e| inner.config.config_error(e, "consumer_options"))?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| Error::backend("kafka", "fetch metadata", e))?;
            let mut tpl = TopicPartitionList::new();
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    tpl.add_partition(&topic, p.id());
                }
            }
            let committed = consumer
                .committed_offsets(tpl, timeout)
                .map_err(|e| Error::backend("kafka", "fetch committed offsets", e))?;
            let mut out: Vec<(i32, Option<i64>)> = committed
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset().to_raw().filter(|o| *o >= 0)))
                .collect();
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Number of partitions of `topic` (`None` when it does not exist).
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, Error> {
        Ok(topics::describe(&self.inner, Some(topic))
            .await?
            .get(topic)
            .map(|t| t.partitions))
    }

    /// Creates the plan's topics and checks the existing ones; see [`TopicPlan`].
    pub async fn provision(&self, plan: &TopicPlan) -> Result<ProvisionReport, Error> {
        provision::provision(&self.inner, plan).await
    }

    /// A backend replaying `window` of this cluster to the subscriptions of a bus built on it;
    /// see [`ReplayWindow`].
    pub fn replay(&self, window: ReplayWindow) -> ReplayBackend {
        ReplayBackend::new(self.clone(), window)
    }
}

impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(());
            }
            for message in &messages {
                // A dead letter goes to a dead-letter topic, never back to a live one: only a
                // redrive (fresh headers) re-publishes its event.
                if message
                    .headers
                    .contains_key(crate::wire::DLQ_ORIGINAL_TOPIC)
                    && !is_dlq_topic(&message.topic)
                {
                    return Err(Error::backend(
                        "kafka",
                        "produce",
                        format!("refusing to publish a dead letter to `{}`, which is not a dead-letter topic", message.topic),
                    ));
                }
            }
            if self.inner.config.auto_create_topics {
                let topics = messages.iter().map(|m| &*m.topic);
                self.inner.topics.ensure(&self.inner, topics).await?;
            }
            self.inner.producer.send_all(&messages).await.map(drop)
        })
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        Box::pin(async move {
            {
                let mut groups = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
                let pattern = request.pattern.as_str().to_owned();
                match groups.get(&request.group) {
                    Some(existing) if existing != &pattern => {
                        return Err(Error::config(
                            format!("subscriptions[{}].group", request.group),
                            format!(
                                "group `{}` already subscribes `{existing}` on this Kafka backend; a Kafka consumer \
                                 group splits its partitions between members, so a second pattern `{pattern}` in \
                                 the same group would miss events: use another group",
                                request.group
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        groups.insert(request.group.clone(), pattern);
                    }
                }
            }
            let (_, stream) = consumer::start(self.inner.clone(), request).await?;
            Ok(stream)
        })
    }

    /// A metadata request answered within [`KafkaConfig::operation_timeout`].
    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            runtime::unblock(move || {
                let metadata = inner
                    .admin
                    .inner()
                    .fetch_metadata(None, inner.config.operation_timeout);
                let listed: Vec<i32> = metadata
                    .as_ref()
                    .map(|m| m.brokers().iter().map(|b| b.id()).collect())
                    .unwrap_or_default();
                inner.note_brokers(&listed);
                let metadata =
                    metadata.map_err(|e| Error::backend("kafka", "fetch metadata", e))?;
                if metadata.brokers().is_empty() {
                    return Err(Error::backend(
                        "kafka",
                        "fetch metadata",
                        "the cluster reported no brokers",
                    ));
                }
                Ok(())
            })
            .await
        })
    }

    /// Waits until stopped consumers committed and left their groups, and the producer
    /// delivered everything enqueued.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let limit = self.inner.config.consumer.rebalance_drain_timeout
                + self.inner.config.operation_timeout;
            for consumer in self
                .inner
                .consumers()
                .into_iter()
                .filter(|c| c.is_stopping())
            {
                if runtime::timeout(limit, consumer.closed()).await.is_none() {
                    return Err(Error::Timeout {
                        what: format!(
                            "the consumer of group `{}` to commit and leave",
                            consumer.group
                        ),
                        after: limit,
                    });
                }
            }
            let inner = self.inner.clone();
            runtime::unblock(move || inner.producer.flush(Duration::from_secs(10))).await
        })
    }

    /// Names common in Kafka monitoring: `consumer_lag{consumer_group,topic,partition}` (messages, as of the
    /// last lag reading: the bus reads it every `lag_interval`, the admin server at each
    /// `/lag` and `/metrics`) and `broker_availability{broker_id}` (1 when the last metadata
    /// fetch listed the broker, 0 when it no longer did or failed; read at each health check).
    fn gauges(&self) -> Vec<crate::backend::BackendGauge> {
        let lag = self
            .inner
            .partition_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(
                |((group, topic, partition), lag)| crate::backend::BackendGauge {
                    name: "consumer_lag",
                    help: "Messages not yet consumed, per consumer group, topic and partition",
                    labels: vec![
                        ("consumer_group", group.clone()),
                        ("topic", topic.clone()),
                        ("partition", partition.to_string()),
                    ],
                    value: *lag,
                },
            )
            .collect::<Vec<_>>();
        let brokers = self
            .inner
            .brokers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, available)| crate::backend::BackendGauge {
                name: "broker_availability",
                help: "1 when the last cluster metadata listed the broker, else 0",
                labels: vec![("broker_id", id.to_string())],
                value: i64::from(*available),
            })
            .collect::<Vec<_>>();
        lag.into_iter().chain(brokers).collect()
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        Some(self)
    }
}

impl BackendAdmin for KafkaBackend {
    fn read_page(
        &self,
        topic: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        let topic = topic.to_owned();
        Box::pin(async move { reader::read_page(&self.inner, &topic, cursor, limit).await })
    }

    /// Reads the key's partition (as the producer's partitioner places it) from `position`
    /// (offsets per partition, like [`read_page`](BackendAdmin::read_page)'s cursors).
    fn read_key_page(
        &self,
        topic: &str,
        key: &str,
        position: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, Error>> {
        let (topic, key) = (topic.to_owned(), key.to_owned());
        Box::pin(
            async move { reader::read_key_page(&self.inner, &topic, &key, position, limit).await },
        )
    }

    fn read_ids(
        &self,
        topic: &str,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        let topic = topic.to_owned();
        Box::pin(async move { reader::read_ids(&self.inner, &topic, ids).await })
    }

    fn delete(&self, topic: &str, ids: Vec<String>) -> BoxFuture<'_, Result<usize, Error>> {
        let topic = topic.to_owned();
        Box::pin(async move { reader::resolve(&self.inner, &topic, ids).await })
    }

    /// Delivers `messages` to `group` only, through its retry-tier topic of delay zero
    /// (`{topic}.retry.0ms`, due at once): only that group's consumers read it, and they restore
    /// the original topic.
    fn deliver_to_group(
        &self,
        group: &str,
        messages: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let group = group.to_owned();
        Box::pin(async move {
            let records: Vec<Message> = messages
                .iter()
                .map(|m| retry_tiers::tier_message(m, &group, Duration::ZERO, &m.retry_state()))
                .collect();
            if self.inner.config.auto_create_topics {
                let topics = records.iter().map(|m| &*m.topic);
                self.inner.topics.ensure(&self.inner, topics).await?;
            }
            self.inner.producer.send_all(&records).await.map(drop)
        })
    }

    /// For each group consuming through this backend and each topic it holds partitions of:
    /// deliveries in flight here (`pending`) and records not yet committed (`lag`, high
    /// watermark minus committed offset, summed over the topic's partitions).
    fn dead_letter_topics(&self) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move {
            Ok(topics::describe(&self.inner, None)
                .await?
                .into_keys()
                .filter_map(|t| t.strip_suffix(DLQ_SUFFIX).map(str::to_owned))
                .collect())
        })
    }

    fn group_lag(&self) -> BoxFuture<'_, Result<Vec<GroupLag>, Error>> {
        Box::pin(async move {
            let mut groups: std::collections::BTreeMap<
                String,
                (u64, std::collections::BTreeSet<String>),
            > = std::collections::BTreeMap::new();
            for c in self.inner.consumers().iter().filter(|c| !c.is_stopping()) {
                let entry = groups.entry(c.group.clone()).or_default();
                entry.0 += c.outstanding() as u64;
                entry.1.extend(c.assignment().into_iter().map(|(t, _)| t));
            }
            let mut out = Vec::new();
            for (group, (pending, topics)) in groups {
                for topic in topics {
                    let committed = self.committed_offsets(&group, &topic).await?;
                    let inner = self.inner.clone();
                    let (t, parts): (String, Vec<i32>) =
                        (topic.clone(), committed.iter().map(|(p, _)| *p).collect());
                    let highs = runtime::unblock(move || {
                        parts
                            .iter()
                            .map(|p| {
                                inner
                                    .admin
                                    .inner()
                                    .fetch_watermarks(&t, *p, inner.config.operation_timeout)
                                    .map(|(_, h)| h)
                            })
                            .collect::<Result<Vec<i64>, _>>()
                    })
                    .await
                    .map_err(|e| Error::backend("kafka", "fetch watermarks", e))?;
                    let lags: Vec<(i32, i64)> = committed
                        .iter()
                        .zip(highs)
                        .map(|((p, c), h)| (*p, (h - c.unwrap_or(0)).max(0)))
                        .collect();
                    {
                        let mut by_partition = self
                            .inner
                            .partition_lag
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        by_partition.retain(|(g, t, _), _| g != &group || t != &topic);
                        for (partition, lag) in &lags {
                            by_partition.insert((group.clone(), topic.clone(), *partition), *lag);
                        }
                    }
                    let lag: i64 = lags.iter().map(|(_, lag)| lag).sum();
                    out.push(GroupLag {
                        group: group.clone(),
                        stream: topic,
                        pending,
                        lag: Some(lag as u64),
                    });
                }
            }
            Ok(out)
        })
    }
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("brokers", &self.inner.config.brokers)
            .field("stats", &self.stats())
            .finish()
    }
}
