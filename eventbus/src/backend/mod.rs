//! The backend trait every transport implements, and the message types crossing it.
//!
//! A backend moves opaque messages: it publishes them to topics and hands out deliveries to
//! consumer groups with an acknowledger. Decoding, deduplication, retries and dead-lettering
//! live in the [pipeline](crate::pipeline) so no backend re-implements them.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::error::Error;
use crate::pattern::Pattern;

#[cfg(any(feature = "redis", feature = "kafka"))]
pub(crate) mod env_vars;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(feature = "redis", feature = "kafka"))]
// Public through `backend::redis` only.
#[cfg_attr(not(feature = "redis"), allow(unreachable_pub))]
pub(crate) mod key_hash;
pub mod memory;
pub mod prefixed;
#[cfg(feature = "redis")]
pub mod redis;

pub use crate::wire::{
    is_internal_header, Message, MessageHeaders, RetryState, ATTEMPT_HEADER, FIRST_FAILURE_HEADER,
    ROUND_HEADER, TENANT_HEADER,
};
pub use prefixed::PrefixedBackend;

/// What a consumer asks a backend for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Consumer group: each group receives every matching message once; members split them.
    pub group: String,
    /// The event-type pattern of the subscription.
    pub pattern: Pattern,
    /// Topics known (from the catalog) to carry events matching the pattern.
    pub topics: Vec<String>,
    /// Upper bound of deliveries handed out and not yet acknowledged.
    pub prefetch: usize,
    /// What the names of the topics a wildcard pattern finds start with (set by
    /// [`PrefixedBackend`]; Kafka's subscription regex starts with it). Empty by default.
    pub topic_prefix: String,
}

/// One message handed to a consumer, with the means to settle it.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it was delivered before (0 on the first delivery).
    pub redeliveries: u32,
    /// Settles the delivery with the backend.
    pub acker: Box<dyn Acknowledger>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redeliveries", &self.redeliveries)
            .finish_non_exhaustive()
    }
}

/// Settles a delivery. Dropping it unsettled means the consumer died: the backend redelivers.
pub trait Acknowledger: Send + Sync + 'static {
    /// The message is done with (handled, duplicate, or dead-lettered): never deliver it again.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// The message was not processed: deliver it again soon, carrying its retry state.
    fn nack(self: Box<Self>, state: RetryState) -> BoxFuture<'static, Result<(), Error>>;

    /// Hands back a delivery that was never started (the consumer held it behind an earlier
    /// delivery of its key that went back to the backend, or it is stopping): the backend
    /// delivers it again, in its order, without counting an attempt. The default drops it, which
    /// the backend takes as abandoned (and may count).
    fn release(self: Box<Self>) {}

    /// Whether [`Acknowledger::defer`] is durable in the backend (survives a restart). When it
    /// is not, the consumer waits in-process without blocking other deliveries, then nacks.
    fn can_defer(&self) -> bool {
        false
    }

    /// Settles the delivery now and redelivers it to the same group after `delay`, carrying its
    /// retry state, without blocking later messages.
    fn defer(
        self: Box<Self>,
        delay: std::time::Duration,
        state: RetryState,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let _ = delay;
        self.nack(state)
    }
}

/// A stream of deliveries for one subscription; dropping it leaves the group.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, Error>>;

/// A transport: in-memory, Redis Streams, Kafka. The core every bus needs: publish,
/// subscribe, flush, health. Operations tools (reading topics back, dead-letter tools,
/// deliveries to one group, lag) are the optional [`BackendAdmin`], reached through
/// [`Backend::admin`].
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Publishes messages, in order; returns once the backend has accepted all of them
    /// (durably, as far as the transport offers: Redis `XADD` replied, Kafka `acks=all`).
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>>;

    /// Joins the request's consumer group and streams its deliveries.
    ///
    /// # The contract
    ///
    /// Every backend guarantees, for the deliveries of one stream (`docs/contract.md` lists
    /// what each backend holds and the conformance case proving it):
    ///
    /// - **Acknowledgement**: a delivery is done with only when its [`Acknowledger`] settles
    ///   it. Until then the message stays owed to the group; dropping the acknowledger
    ///   unsettled means the consumer died, and the backend delivers the message again.
    /// - **Redelivery**: a nacked or abandoned delivery comes back to the group (to this member
    ///   or another) carrying its [`RetryState`], which the backend writes and reads only on its
    ///   own channels (a retry stream, a retry-tier topic, in process).
    /// - **In-flight exclusivity**: while one member holds a delivery, no other member of the
    ///   group is handed the same message, however long its handler runs.
    /// - **Order per key**: deliveries of one partition key reach a member in publish order;
    ///   across members, a backend keeps a key on one member while a delivery of it is in
    ///   flight (a Kafka partition, a Redis partition lease), or declares that it cannot (a
    ///   Redis group with `exclusive_partitions = false`).
    /// - **Trust**: [internal headers](is_internal_header) read from a live topic are dropped
    ///   ([`Message::strip_internal_headers`]); they count only on the backend's own channels.
    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>>;

    /// Waits until acknowledgements the backend batches in the background are sent. Called by
    /// [`Bus::shutdown`](crate::Bus::shutdown) after the consumers stopped.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Checks the backend is reachable.
    fn health(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// The operations tools of this backend, when it has them.
    fn admin(&self) -> Option<&dyn BackendAdmin>;

    /// Counters the backend keeps of transport events the pipeline never sees (Redis: entries
    /// removed by retention before a group finished them), exported with the bus's metrics at
    /// every scrape. Empty when the backend has none.
    fn counters(&self) -> Vec<BackendCounter> {
        Vec::new()
    }

    /// Gauges the backend keeps (Kafka: `consumer_lag{consumer_group,topic,partition}` and
    /// `broker_availability{broker_id}`), exported with the bus's metrics at every scrape.
    /// Empty when the backend has none.
    fn gauges(&self) -> Vec<BackendGauge> {
        Vec::new()
    }
}

/// A gauge a backend keeps itself, exported with the bus's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendGauge {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Labels besides `service`.
    pub labels: Vec<(&'static str, String)>,
    /// The value last seen.
    pub value: i64,
}

/// A counter a backend keeps itself, exported with the bus's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCounter {
    /// Metric name, ending in `_total`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Labels besides `service`.
    pub labels: Vec<(&'static str, String)>,
    /// The count so far.
    pub value: u64,
}

/// Operations tools over a backend: reading topics back (dead letters, replay) a page at a
/// time, deleting, delivering to one group (redrive, replay to a group) and consumer lag.
///
/// Every read is bounded: a page holds at most [`MAX_PAGE`] messages and tools walk a topic
/// page by page, so no request loads a whole topic into memory.
pub trait BackendAdmin: Send + Sync {
    /// Reads up to `limit` messages of `topic` (at most [`MAX_PAGE`]), oldest first, starting
    /// after `cursor` (from the topic's start when `None`). The page's
    /// [`next`](Page::next) continues the walk; it is `None` once the topic's end (as of this
    /// call) was reached.
    ///
    /// A page may hold fewer than `limit` messages and still have a `next` (a backend that
    /// hides records, such as Kafka's dead-letter resolution markers, stops after a bounded
    /// scan).
    fn read_page(
        &self,
        topic: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>>;

    /// Reads a page of the messages of `topic` whose envelope `time` lies between `from` and
    /// `to` (inclusive), walking like [`read_page`](Self::read_page). Messages outside the
    /// window are skipped, so a page may be empty and still have a `next`. The default starts
    /// at the topic's beginning; backends with a time index start at `from`.
    fn read_range_page(
        &self,
        topic: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        let read = self.read_page(topic, cursor, limit);
        Box::pin(async move { Ok(read.await?.within(from, to)) })
    }

    /// Reads up to `limit` messages of `topic` whose partition key is `key` (at most
    /// [`MAX_PAGE`]), oldest first, after `position` (from the start when `None`): the history
    /// of one aggregate ([`crate::aggregate`]). The page's [`KeyPage::position`] is where the
    /// next read of the key starts, also at the end, so a snapshot can resume from it.
    ///
    /// Backends that place a key by partition read only the key's partition (Redis: its
    /// partition stream; Kafka: the partition the producer's partitioner chose). The default
    /// walks [`read_page`](Self::read_page) and keeps the key's messages; its position at the
    /// topic's end is `None` (a resumed read starts over).
    fn read_key_page(
        &self,
        topic: &str,
        key: &str,
        position: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, Error>> {
        let read = self.read_page(topic, position, limit);
        let key = key.to_owned();
        Box::pin(async move {
            let page = read.await?;
            Ok(KeyPage {
                at_end: page.next.is_none(),
                position: page.next,
                messages: page
                    .messages
                    .into_iter()
                    .filter(|m| m.message.key.as_deref() == Some(key.as_str()))
                    .collect(),
            })
        })
    }

    /// The messages of `topic` with the given ids that still exist, oldest first (at most
    /// [`MAX_PAGE`] ids per call).
    fn read_ids(
        &self,
        topic: &str,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>>;

    /// How many messages `topic` holds. The default walks the topic page by page; backends
    /// that know the length (Redis `XLEN`) override it.
    fn count(&self, topic: &str) -> BoxFuture<'_, Result<u64, Error>> {
        let topic = topic.to_owned();
        Box::pin(async move {
            let mut count = 0u64;
            let mut cursor = None;
            loop {
                let page = self.read_page(&topic, cursor, MAX_PAGE).await?;
                count += page.messages.len() as u64;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(count),
                }
            }
        })
    }

    /// Delivers messages to one consumer group only (redrive, replay to a group), without
    /// the other groups of the topic seeing them again. The messages may carry internal
    /// headers (retry state, replay and redrive markers): this is a trusted channel.
    fn deliver_to_group(
        &self,
        group: &str,
        messages: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// Deletes messages from a topic by id (dead-letter purge).
    fn delete(&self, topic: &str, ids: Vec<String>) -> BoxFuture<'_, Result<usize, Error>>;

    /// Lag of every consumer group the backend knows.
    fn group_lag(&self) -> BoxFuture<'_, Result<Vec<GroupLag>, Error>>;

    /// The original topics that have a dead-letter topic in the backend, sorted: how the
    /// admin API finds dead letters of topics no catalog names (a wildcard subscription's
    /// topics, another process's topics, dead letters left from before a restart). The
    /// default knows none.
    fn dead_letter_topics(&self) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The admin tools of `backend`, or an error naming the operation it lacks.
pub fn admin_of<'a>(
    backend: &'a dyn Backend,
    operation: &'static str,
) -> Result<&'a dyn BackendAdmin, Error> {
    backend.admin().ok_or(Error::Unsupported {
        backend: backend.name(),
        operation,
    })
}

/// How far behind a consumer group is on one stream (topic, partition set).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupLag {
    /// Consumer group.
    pub group: String,
    /// Stream, topic or queue the figures are about.
    pub stream: String,
    /// Delivered and not yet acknowledged.
    pub pending: u64,
    /// Not yet delivered, when the backend knows.
    pub lag: Option<u64>,
}

/// Most messages in one [`Page`].
pub const MAX_PAGE: usize = 1000;

/// Where a walk through a topic stands: opaque, made by the backend that returned it (an entry
/// id on Redis, an offset per partition on Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub String);

/// One page of a topic read back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Where the next page starts; `None` at the topic's end.
    pub next: Option<Cursor>,
}

impl Page {
    /// Keeps the messages whose envelope `time` lies between `from` and `to` (inclusive).
    pub fn within(
        mut self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        self.messages.retain(|m| {
            crate::envelope::RawEnvelope::decode(&m.message.payload)
                .map(|e| e.time >= from && e.time <= to)
                .unwrap_or(false)
        });
        self
    }
}

/// Where a new consumer group starts reading a topic that already holds messages (Kafka's
/// `auto.offset.reset`; on Redis the group's first id, `$` or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// Only messages added after the group was created (Kafka's default).
    #[default]
    Latest,
    /// Everything the topic still retains.
    Earliest,
}

#[cfg(any(feature = "redis", feature = "kafka"))]
impl StartFrom {
    /// The values accepted in `EVENTBUS_*_START_FROM`.
    pub(crate) const CHOICES: &'static [(&'static str, StartFrom)] = &[
        ("earliest", StartFrom::Earliest),
        ("latest", StartFrom::Latest),
    ];
}

/// A page of one key's messages ([`BackendAdmin::read_key_page`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPage {
    /// The key's messages, oldest first (possibly none while `at_end` is false).
    pub messages: Vec<StoredMessage>,
    /// Where the next read of the key starts (after everything this read scanned).
    pub position: Option<Cursor>,
    /// Whether the read reached the end of the key's messages as of this call.
    pub at_end: bool,
}

/// A message read back from a topic, with the id the backend gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Backend id (offset, stream entry id).
    pub id: String,
    /// The message.
    pub message: Message,
}
