//! The Redis Streams backend (feature `redis`).
//!
//! - **Publishing** appends each message to a stream per topic (per tenant and topic with
//!   [`RedisConfig::per_tenant_streams`]) with `XADD`; every 256th append to a stream also trims
//!   it by age (`XTRIM MINID ~`) and length (`XTRIM MAXLEN ~`), so retention costs nothing
//!   per event and needs no scan; a batch is one pipelined round trip. A topic with
//!   [`RedisConfig::partitions`] > 1 has one stream per partition; an event goes to the
//!   partition of its key ([`partition_of`], Kafka's murmur2).
//! - **One member per partition** ([`RedisConfig::exclusive_partitions`], the default): the
//!   members of a group split the partitions and hold a fenced lease on each (see the
//!   `ownership` module), so events of one key are handled by one member, in order.
//! - **Consuming** uses consumer groups (`XGROUP CREATE ... MKSTREAM`, idempotent) and
//!   `XREADGROUP BLOCK` over every stream the subscription's pattern covers: the catalog's topics
//!   at start, plus streams found later in the stream registry (`{prefix}:streams`, filled on
//!   publish), checked every [`RedisConfig::discovery_interval`] (2 s by default); a stream
//!   discovered later is read from its beginning, so its first entries are not missed.
//! - **Acknowledgement**: `XACK` only after the pipeline finished (handled, duplicate, or
//!   dead-lettered). A consumer that dies leaves its entries pending; the partition's next owner
//!   claims them first (in a shared group, any member claims them with `XAUTOCLAIM` after
//!   [`RedisConfig::claim_idle`]), and the pending list's delivery count
//!   becomes the redelivery count, so attempts carry on instead of starting over.
//! - **Delayed retries** are durable: the entry is acknowledged and parked in the
//!   `{prefix}:delayed` sorted set (in one `MULTI`), and moved by a Lua script to the group's
//!   own retry stream `{prefix}:retry:{group}` when due, from any process.
//! - **Dead letters** go to `{prefix}:dlq:{topic}`, with retention of their own.
//! - **Lost streams or groups** (`NOGROUP` after a restart without persistence or a
//!   `FLUSHALL`) are re-created with a warning and counted in [`RedisStats::groups_recreated`].
//! - **Connection loss**: pooled connections reconnect with backoff; the consumer's blocking
//!   connection is re-opened, and the bus's consumer loop backs off exponentially on errors.

mod acks;
mod append;
mod config;
mod connection;
mod consumer;
mod delayed;
mod entry;
mod inbox;
mod inbox_layout;
mod keys;
mod lease;
mod ownership;
mod partition;
mod pubsub;
mod read_reply;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

pub use crate::backend::key_hash::{murmur2, partition_of};
pub use config::{RedisConfig, Retention, StartFrom};
pub use inbox::RedisInbox;
pub use pubsub::RedisPubSub;

use self::connection::{Conn, SlotPipelines};
use self::keys::Keys;
use super::{
    Backend, BackendAdmin, BackendCounter, Cursor, DeliveryStream, GroupLag, KeyPage, Message,
    Page, StoredMessage, SubscribeRequest, MAX_PAGE, TENANT_HEADER,
};
use crate::error::Error;
use crate::runtime::{default_runtime, Runtime};

/// Counters of what the backend had to repair or recover.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedisStats {
    /// Consumer groups re-created after they vanished (`NOGROUP`).
    pub groups_recreated: u64,
    /// Pending entries claimed from idle consumers.
    pub claimed: u64,
    /// Deliveries parked for a delayed retry.
    pub deferred: u64,
    /// Delayed retries moved back to their group.
    pub delayed_moved: u64,
    /// Entries retention removed before a group finished them: trimmed while pending
    /// (delivered, not yet acknowledged) or before the group read them at all (a stopped or
    /// slow consumer). Lost to that group; logged as errors and exported as
    /// `event_retention_dropped_total{stream, group}`.
    pub retention_dropped: u64,
}

#[derive(Default)]
struct Counters {
    groups_recreated: AtomicU64,
    claimed: AtomicU64,
    deferred: AtomicU64,
    delayed_moved: AtomicU64,
    retention_dropped: AtomicU64,
    /// `retention_dropped` per (stream, group).
    retention_dropped_by: Mutex<std::collections::BTreeMap<(String, String), u64>>,
}

impl Counters {
    /// Counts `n` entries of `stream` lost to `group` by retention.
    fn retention_dropped(&self, stream: &str, group: &str, n: u64) {
        self.retention_dropped.fetch_add(n, Ordering::Relaxed);
        *self
            .retention_dropped_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((stream.to_owned(), group.to_owned()))
            .or_default() += n;
    }
}

/// The Redis Streams backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    keys: Keys,
    /// The server (or the cluster's seed node): blocking reads and pub/sub subscriptions.
    client: redis::Client,
    pool: Vec<Conn>,
    next: AtomicUsize,
    registered: Mutex<HashSet<String>>,
    /// Streams this backend's consumers read (topics, retry streams), for lag: a stream written
    /// by another producer is read without ever entering the registry.
    read: Mutex<HashSet<String>>,
    round_robin: partition::RoundRobin,
    appends: Mutex<std::collections::HashMap<String, u32>>,
    counters: Counters,
    runtime: Arc<dyn Runtime>,
    mover: std::sync::Once,
    acks: acks::AckQueue,
}

fn redis_error(operation: &'static str) -> impl Fn(redis::RedisError) -> Error {
    move |e| Error::backend("redis", operation, e)
}

fn now_ms() -> u64 {
    u64::try_from(crate::clock::unix_ms()).unwrap_or(0)
}

impl RedisBackend {
    /// Validates `config` and connects the pool.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::config("redis.url", e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(6);
        let mut pool = Vec::with_capacity(config.pool_size);
        if config.cluster {
            let cluster = redis::cluster::ClusterClient::builder([config.url.as_str()])
                .connection_timeout(config.command_timeout)
                .response_timeout(config.command_timeout)
                .build()
                .map_err(|e| Error::config("redis.url", e.to_string()))?;
            for _ in 0..config.pool_size {
                pool.push(Conn::Cluster(
                    cluster
                        .get_async_connection()
                        .await
                        .map_err(redis_error("connect to the cluster"))?,
                ));
            }
        } else {
            for _ in 0..config.pool_size {
                pool.push(Conn::Single(
                    client
                        .get_connection_manager_with_config(manager_config.clone())
                        .await
                        .map_err(redis_error("connect"))?,
                ));
            }
        }
        let runtime = default_runtime()?;
        let inner = Arc::new_cyclic(|weak| Inner {
            keys: Keys::new(&config.prefix, config.per_tenant_streams, config.cluster),
            config,
            client,
            pool,
            next: AtomicUsize::new(0),
            registered: Mutex::new(HashSet::new()),
            read: Mutex::new(HashSet::new()),
            round_robin: partition::RoundRobin::default(),
            appends: Mutex::new(Default::default()),
            counters: Counters::default(),
            acks: acks::AckQueue::start(&runtime, weak.clone()),
            runtime,
            mover: std::sync::Once::new(),
        });
        Ok(RedisBackend { inner })
    }

    /// Connects with settings from `EVENTBUS_REDIS_*` variables ([`RedisConfig::from_env`]).
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect(RedisConfig::from_env()?).await
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// What the backend recovered so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        RedisStats {
            groups_recreated: c.groups_recreated.load(Ordering::Relaxed),
            claimed: c.claimed.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            delayed_moved: c.delayed_moved.load(Ordering::Relaxed),
            retention_dropped: c.retention_dropped.load(Ordering::Relaxed),
        }
    }

    /// Which member holds each partition of `topic` for `group` (`None`: nobody), in partition
    /// order, as the leases in Redis say.
    pub async fn partition_owners(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Vec<Option<String>>, Error> {
        let mut conn = self.inner.conn();
        let mut tokens: Vec<Option<String>> = Vec::new();
        for stream in self.inner.topic_streams(topic) {
            tokens.push(
                redis::cmd("GET")
                    .arg(Keys::lease(&stream, group))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error("GET lease"))?,
            );
        }
        Ok(tokens
            .into_iter()
            .map(|t| t.map(|t| t.rsplit_once('|').map_or(t.clone(), |(m, _)| m.to_owned())))
            .collect())
    }

    /// A Redis-backed inbox sharing this backend's connections and prefix.
    pub fn inbox(&self) -> RedisInbox {
        RedisInbox::new(
            self.inner.conn(),
            self.inner.keys.clone(),
            self.inner.config.inbox_ttl,
            &self.inner.runtime,
        )
    }

    /// Ephemeral pub/sub notifications on this server (at most once).
    pub fn pubsub(&self) -> RedisPubSub {
        RedisPubSub::new(
            self.inner.client.clone(),
            self.inner.conn(),
            self.inner.keys.clone(),
        )
    }

    /// The stream key of `topic` (for a `tenant` when streams are per tenant).
    pub fn stream_key(&self, topic: &str, tenant: Option<&str>) -> String {
        self.inner.keys.stream(topic, tenant)
    }

    /// Pending (delivered, unacknowledged) entries of `group` on `topic`'s stream.
    pub async fn pending(&self, topic: &str, group: &str) -> Result<usize, Error> {
        let key = self.inner.keys.stream(topic, None);
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(&key)
            .arg(group)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error("XPENDING"))?;
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => Ok(*n as usize),
                _ => Ok(0),
            },
            _ => Ok(0),
        }
    }

    /// Number of entries in `topic`'s stream.
    pub async fn stream_len(&self, topic: &str) -> Result<usize, Error> {
        redis::cmd("XLEN")
            .arg(self.inner.keys.stream(topic, None))
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error("XLEN"))
    }
}

impl Inner {
    fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    /// A dedicated connection for blocking reads, with a response timeout above the block time.
    async fn blocking_connection(&self) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.command_timeout))
            .set_response_timeout(Some(self.config.block + self.config.command_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(redis_error("connect"))
    }

    /// Every partition stream of `topic` (without tenant), in partition order.
    fn topic_streams(&self, topic: &str) -> Vec<String> {
        if crate::wire::is_dlq_topic(topic) {
            return vec![self.keys.stream(topic, None)];
        }
        let partitions = self.config.partitions_of(topic);
        (0..partitions)
            .map(|p| self.keys.partition_stream(topic, None, p, partitions))
            .collect()
    }

    /// Up to `count` entries of `topic`'s stream from entry id `start` on, as messages.
    /// Remembers streams a consumer of this backend reads.
    fn note_read(&self, streams: &[String]) {
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(streams.iter().cloned());
    }

    /// Up to `limit` entries of `topic`'s stream from `start` (an `XRANGE` bound), as a page.
    async fn xrange_page(&self, topic: &str, start: &str, limit: usize) -> Result<Page, Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        let stream = self.keys.stream(topic, None);
        let messages = self.xrange(&stream, topic, start, "+", limit).await?;
        let next = (messages.len() == limit)
            .then(|| messages.last().map(|m| Cursor(m.id.clone())))
            .flatten();
        Ok(Page { messages, next })
    }

    /// The entries of `topic`'s stream between two ids (inclusive).
    async fn xrange_between(
        &self,
        topic: &str,
        start: &str,
        end: &str,
    ) -> Result<Vec<StoredMessage>, Error> {
        let stream = self.keys.stream(topic, None);
        self.xrange(&stream, topic, start, end, MAX_PAGE).await
    }

    async fn xrange(
        &self,
        stream: &str,
        topic: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StoredMessage>, Error> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error("XRANGE"))?;
        Ok(reply
            .ids
            .iter()
            .map(|entry| StoredMessage {
                id: entry.id.clone(),
                message: entry::from_fields(topic, &entry.map, true),
            })
            .collect())
    }

    /// A page of a topic with several partitions, merged in append-time order (entry ids,
    /// then partition). The cursor holds the last id taken from each partition
    /// (`{id0},{id1},...`, empty where none was); `first` is the start bound of a partition
    /// without one; entries appended after `end_ms` end the walk. Message ids are
    /// `{partition}/{entry id}`.
    async fn partitioned_page(
        &self,
        topic: &str,
        streams: &[String],
        cursor: Option<Cursor>,
        first: &str,
        end_ms: Option<i64>,
        limit: usize,
    ) -> Result<Page, Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut positions: Vec<Option<String>> = match &cursor {
            Some(c) => {
                c.0.split(',')
                    .map(|id| (!id.is_empty()).then(|| id.to_owned()))
                    .collect()
            }
            None => vec![None; streams.len()],
        };
        if positions.len() != streams.len() || positions.iter().flatten().any(|id| !is_entry_id(id))
        {
            return Err(Error::config(
                "cursor",
                format!("not a cursor of `{topic}`'s {} partitions", streams.len()),
            ));
        }
        let mut merged = Vec::new();
        let mut more = vec![false; streams.len()];
        for (p, stream) in streams.iter().enumerate() {
            let start = positions[p]
                .as_ref()
                .map_or_else(|| first.to_owned(), |id| format!("({id}"));
            let entries = self.xrange(stream, topic, &start, "+", limit).await?;
            more[p] = entries.len() == limit;
            for entry in entries {
                if end_ms.is_some_and(|end| entry_ms(&entry.id) > end) {
                    more[p] = false;
                    break;
                }
                merged.push((entry_order(&entry.id), p, entry));
            }
        }
        merged.sort_by_key(|(order, partition, _)| (*order, *partition));
        let left_over = merged.len() > limit;
        let mut messages = Vec::new();
        for (_, p, mut entry) in merged.into_iter().take(limit) {
            positions[p] = Some(entry.id.clone());
            entry.id = format!("{p}/{}", entry.id);
            messages.push(entry);
        }
        let next = (left_over || more.iter().any(|m| *m)).then(|| {
            Cursor(
                positions
                    .iter()
                    .map(|p| p.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        });
        Ok(Page { messages, next })
    }

    /// Creates `group` on `stream` at `start` if it does not exist.
    async fn ensure_group(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        stream: &str,
        group: &str,
        start: &str,
    ) -> Result<(), Error> {
        let result: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(Error::backend("redis", "XGROUP CREATE", e)),
        }
    }

    fn start_mover(self: &Arc<Self>) {
        self.mover.call_once(|| {
            let weak = Arc::downgrade(self);
            self.runtime.spawn(Box::pin(delayed::move_due(weak)));
        });
    }
}

impl RedisBackend {
    /// The event streams this backend knows: the stream registry's and those its consumers
    /// read (a stream written by another producer may be in only the latter), sorted.
    async fn known_streams(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.inner.conn();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.registry())
            .query_async(&mut conn)
            .await
            .map_err(redis_error("SMEMBERS"))?;
        let mut streams: Vec<String> = members
            .iter()
            .filter_map(|m| Keys::parse_registry_member(m).map(|(s, _)| s.to_owned()))
            .collect();
        streams.extend(
            self.inner
                .read
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        streams.sort_unstable();
        streams.dedup();
        Ok(streams)
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(());
            }
            let inner = &self.inner;
            let now = now_ms();
            let mut conn = inner.conn();
            let append::Batch { pipes, new_members } =
                inner.append_batch(&messages, conn.is_cluster(), now);
            pipes.send(&mut conn).await.map_err(redis_error("XADD"))?;
            if !new_members.is_empty() {
                let mut registered = inner.registered.lock().unwrap_or_else(|p| p.into_inner());
                registered.extend(new_members);
            }
            Ok(())
        })
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        Box::pin(async move {
            self.inner.start_mover();
            let reader = consumer::StreamReader::start(self.inner.clone(), request).await?;
            Ok(reader.into_stream().boxed())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.inner.acks.flush().await;
            Ok(())
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let pong: String = redis::cmd("PING")
                .query_async(&mut self.inner.conn())
                .await
                .map_err(redis_error("PING"))?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(Error::backend(
                    "redis",
                    "PING",
                    format!("unexpected reply {pong:?}"),
                ))
            }
        })
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        Some(self)
    }

    fn counters(&self) -> Vec<BackendCounter> {
        self.inner
            .counters
            .retention_dropped_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((stream, group), &value)| BackendCounter {
                name: "event_retention_dropped_total",
                help: "Entries removed by stream retention before the group finished them",
                labels: vec![("stream", stream.clone()), ("group", group.clone())],
                value,
            })
            .collect()
    }
}

impl BackendAdmin for RedisBackend {
    /// Cursors are the entry id of the last message returned; on a topic with several
    /// partitions, the last id taken from each (pages merge the partitions in append order).
    fn read_page(
        &self,
        topic: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        let topic = topic.to_owned();
        Box::pin(async move {
            let streams = self.inner.topic_streams(&topic);
            if streams.len() > 1 {
                return self
                    .inner
                    .partitioned_page(&topic, &streams, cursor, "-", None, limit)
                    .await;
            }
            let start = cursor.map_or_else(|| "-".to_owned(), |c| format!("({}", c.0));
            self.inner.xrange_page(&topic, &start, limit).await
        })
    }

    /// Reads the key's partition stream only. Positions are the last entry id scanned;
    /// message ids are those of [`read_page`](BackendAdmin::read_page) (`{partition}/{id}`
    /// on a partitioned topic).
    fn read_key_page(
        &self,
        topic: &str,
        key: &str,
        position: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, Error>> {
        let topic = topic.to_owned();
        let key = key.to_owned();
        Box::pin(async move {
            let partitions = self.inner.config.partitions_of(&topic);
            let partition = partition_of(&key, partitions);
            let stream = self
                .inner
                .keys
                .partition_stream(&topic, None, partition, partitions);
            if let Some(p) = &position {
                if !is_entry_id(&p.0) {
                    return Err(Error::config(
                        "cursor",
                        format!("`{}` is not a stream entry id", p.0),
                    ));
                }
            }
            let start = position
                .as_ref()
                .map_or_else(|| "-".to_owned(), |p| format!("({}", p.0));
            let limit = limit.clamp(1, MAX_PAGE);
            let scanned = self
                .inner
                .xrange(&stream, &topic, &start, "+", limit)
                .await?;
            let at_end = scanned.len() < limit;
            let position = scanned.last().map(|m| Cursor(m.id.clone())).or(position);
            let messages = scanned
                .into_iter()
                .filter(|m| m.message.key.as_deref() == Some(key.as_str()))
                .map(|mut m| {
                    if partitions > 1 {
                        m.id = format!("{partition}/{}", m.id);
                    }
                    m
                })
                .collect();
            Ok(KeyPage {
                messages,
                position,
                at_end,
            })
        })
    }

    fn read_range_page(
        &self,
        topic: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        // Entry ids are append times in ms: the walk starts at `from`'s id and ends at the
        // first entry appended after `to` (plus a minute of clock skew); the envelope time
        // decides what is in the window.
        let topic = topic.to_owned();
        let first = format!("{}-0", from.timestamp_millis().max(0));
        let end_ms = (to + chrono::Duration::minutes(1))
            .timestamp_millis()
            .max(0);
        Box::pin(async move {
            let streams = self.inner.topic_streams(&topic);
            if streams.len() > 1 {
                let page = self
                    .inner
                    .partitioned_page(&topic, &streams, cursor, &first, Some(end_ms), limit)
                    .await?;
                return Ok(page.within(from, to));
            }
            let start = cursor.map_or(first, |c| format!("({}", c.0));
            let mut page = self.inner.xrange_page(&topic, &start, limit).await?;
            if page.messages.iter().any(|m| entry_ms(&m.id) > end_ms) {
                page.next = None;
            }
            Ok(page.within(from, to))
        })
    }

    fn read_ids(
        &self,
        topic: &str,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        let topic = topic.to_owned();
        Box::pin(async move {
            let mut found = Vec::new();
            let mut ids: Vec<String> = ids
                .into_iter()
                .filter(|id| is_entry_id(id))
                .take(MAX_PAGE)
                .collect();
            ids.sort_by_key(|id| entry_order(id));
            ids.dedup();
            for id in ids {
                let page = self.inner.xrange_between(&topic, &id, &id).await?;
                found.extend(page);
            }
            Ok(found)
        })
    }

    fn count(&self, topic: &str) -> BoxFuture<'_, Result<u64, Error>> {
        let streams = self.inner.topic_streams(topic);
        Box::pin(async move {
            let mut conn = self.inner.conn();
            let mut total = 0u64;
            for stream in &streams {
                let length: u64 = redis::cmd("XLEN")
                    .arg(stream)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error("XLEN"))?;
                total += length;
            }
            Ok(total)
        })
    }

    fn dead_letter_topics(&self) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move {
            let mut topics: Vec<String> = self
                .known_streams()
                .await?
                .iter()
                .map(|s| Keys::topic_of(s).to_owned())
                .collect();
            topics.sort_unstable();
            topics.dedup();
            let mut conn = self.inner.conn();
            let mut found = Vec::new();
            for topic in topics {
                let dlq = self
                    .inner
                    .keys
                    .stream(&crate::wire::dlq_topic(&topic), None);
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&dlq)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error("EXISTS"))?;
                if exists {
                    found.push(topic);
                }
            }
            Ok(found)
        })
    }

    fn group_lag(&self) -> BoxFuture<'_, Result<Vec<GroupLag>, Error>> {
        Box::pin(async move {
            let streams = self.known_streams().await?;
            let mut conn = self.inner.conn();
            let mut lags = Vec::new();
            for stream in streams {
                let info: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                    redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&stream)
                        .query_async(&mut conn)
                        .await;
                let Ok(info) = info else { continue };
                for group in info.groups {
                    lags.push(GroupLag {
                        group: group.name,
                        stream: stream.clone(),
                        pending: group.pending as u64,
                        lag: group.lag.map(|l| l as u64),
                    });
                }
            }
            Ok(lags)
        })
    }

    fn deliver_to_group(
        &self,
        group: &str,
        messages: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let stream = self.inner.keys.retry_stream(group);
        Box::pin(async move {
            let mut conn = self.inner.conn();
            let mut pipes = SlotPipelines::with_capacity(conn.is_cluster(), messages.len());
            for message in &messages {
                pipes.add(&stream, entry::xadd(&stream, message));
            }
            pipes.send(&mut conn).await.map_err(redis_error("XADD"))
        })
    }

    fn delete(&self, topic: &str, ids: Vec<String>) -> BoxFuture<'_, Result<usize, Error>> {
        let key = self.inner.keys.stream(topic, None);
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(0);
            }
            redis::cmd("XDEL")
                .arg(&key)
                .arg(&ids)
                .query_async(&mut self.inner.conn())
                .await
                .map_err(redis_error("XDEL"))
        })
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.config.prefix)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Whether `id` has the shape of a stream entry id (`{ms}-{seq}`).
fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The (ms, seq) order of an entry id.
pub(super) fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The append time (ms) of an entry id.
fn entry_ms(id: &str) -> i64 {
    i64::try_from(entry_order(id).0).unwrap_or(i64::MAX)
}
