//! Replay: consume a time range of topics again, through the normal pipeline, with the replay
//! flag set ([`Context::is_replay`](crate::Context::is_replay)).
//!
//! [`KafkaBackend::replay`](super::KafkaBackend::replay) returns a [`ReplayBackend`]: run a bus
//! on it with the handlers to replay to. Each subscription then reads its topics from the
//! offsets of the window's start (found with `offsets_for_times`) to those of its end, on a
//! dedicated throwaway consumer group (`{group}.replay.{uuid}`, manual assignment, nothing ever
//! committed, so live groups are untouched), skipping records outside the window or of other
//! event types, and ends when every partition reached the window's end. Publishing (follow-on
//! events, dead letters) goes to the cluster as usual.
//!
//! Give replay subscriptions a group of their own: the inbox is per group, and a live group's
//! inbox would drop every replayed event as already handled.
//!
//! ```no_run
//! # async fn run(kafka: eventbus::backend::kafka::KafkaBackend) -> Result<(), eventbus::Error> {
//! use eventbus::backend::kafka::ReplayWindow;
//! use eventbus::{Bus, Envelope, Subscription};
//!
//! let to = chrono::Utc::now();
//! let window = ReplayWindow::new(to - chrono::Duration::hours(2), to).event_types(["order.created"]);
//! let replay = kafka.replay(window);
//! let bus = Bus::builder()
//!     .backend(replay.clone())
//!     .subscribe(Subscription::new("order.*", |env: Envelope<serde_json::Value>| async move {
//!         println!("replaying {}", env.id);
//!         Ok(())
//!     }).group("orders-rebuild"))
//!     .start()
//!     .await?;
//! replay.finished().await;
//! bus.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;

use super::consumer::{delivery_stream, MemberState};
use super::fetch_flow;
use super::reader::throwaway_consumer;
use super::record;
use super::retry_tiers::is_tier_topic;
use super::topics::describe;
use super::tracker::{Limits, Pending, Tp};
use super::KafkaBackend;
use crate::backend::{
    Backend, BackendAdmin, DeliveryStream, Message, StoredMessage, SubscribeRequest,
};
use crate::error::Error;
use crate::hash_tables::SharedNames;
use crate::pattern::Pattern;
use crate::wire::{is_dlq_topic, REPLAY_HEADER};

/// How the start of a window is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplaySeek {
    /// Ask the brokers for the first offset at or after each bound (`offsets_for_times`).
    #[default]
    ByTimestamp,
    /// Read each partition from its beginning and filter by timestamp: for brokers without
    /// timestamp lookup (librdkafka's mock cluster answers it with "no offset").
    Scan,
}

/// What to replay: `[from, to)` by record timestamp, optionally only some event types or
/// topics.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayWindow {
    /// Start of the range (inclusive).
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    pub to: DateTime<Utc>,
    /// Event-type patterns to replay; empty means every type the subscription matches.
    pub event_types: Vec<String>,
    /// Topics to read; empty means the subscription's topics (catalog and pattern).
    pub topics: Vec<String>,
    /// How the start offsets are found.
    pub seek: ReplaySeek,
}

impl ReplayWindow {
    /// Every event of the subscriptions' topics with a timestamp in `[from, to)`.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        ReplayWindow {
            from,
            to,
            event_types: Vec::new(),
            topics: Vec::new(),
            seek: ReplaySeek::ByTimestamp,
        }
    }

    /// Only these event types (patterns such as `order.created` or `order.*`).
    pub fn event_types<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.event_types = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Only these topics.
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Finds the start by scanning instead of asking the brokers.
    pub fn scan(mut self) -> Self {
        self.seek = ReplaySeek::Scan;
        self
    }
}

/// A backend that replays a window of a Kafka cluster to the subscriptions of a bus. Cheap to
/// clone; clones share progress.
#[derive(Clone)]
pub struct ReplayBackend {
    kafka: KafkaBackend,
    window: Arc<ReplayWindow>,
    runs: Arc<Mutex<Vec<Arc<MemberState>>>>,
}

impl std::fmt::Debug for ReplayBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBackend")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl ReplayBackend {
    pub(crate) fn new(kafka: KafkaBackend, window: ReplayWindow) -> Self {
        ReplayBackend {
            kafka,
            window: Arc::new(window),
            runs: Arc::default(),
        }
    }

    /// Completes when every subscription started so far read its whole window and settled
    /// every delivery.
    pub async fn finished(&self) {
        let runs: Vec<Arc<MemberState>> =
            self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for run in runs {
            run.closed().await;
        }
    }

    /// What the replay's consumers did so far: `pauses` counts partitions paused because
    /// their handlers fell behind (a replay buffers at most
    /// `consumer.max_buffered_per_partition` records per partition, like a live consumer).
    pub fn stats(&self) -> super::KafkaStats {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = super::KafkaStats {
            consumers: runs.len() as u64,
            ..super::KafkaStats::default()
        };
        for run in runs.iter() {
            let k = &run.counters;
            stats.skipped += k.skipped.load(std::sync::atomic::Ordering::Relaxed);
            stats.pauses += k.pauses.load(std::sync::atomic::Ordering::Relaxed);
        }
        stats
    }

    /// The window being replayed.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }
}

/// The partitions to read and where to stop on each.
struct Plan {
    start: TopicPartitionList,
    ends: BTreeMap<Tp, i64>,
}

fn plan(
    consumer: &BaseConsumer,
    topics: &[String],
    window: &ReplayWindow,
    timeout: Duration,
) -> Result<Plan, Error> {
    let fetch = |e| Error::backend("kafka", "replay: find offsets", e);
    let mut start = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(fetch)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let (mut from_tpl, mut to_tpl) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut bounds = BTreeMap::new();
        for &partition in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(fetch)?;
            bounds.insert(partition, (low, high));
            from_tpl
                .add_partition_offset(
                    topic,
                    partition,
                    Offset::Offset(window.from.timestamp_millis()),
                )
                .map_err(fetch)?;
            to_tpl
                .add_partition_offset(
                    topic,
                    partition,
                    Offset::Offset(window.to.timestamp_millis()),
                )
                .map_err(fetch)?;
        }
        let (from_offsets, to_offsets) = match window.seek {
            ReplaySeek::Scan => (None, None),
            ReplaySeek::ByTimestamp if partitions.is_empty() => (None, None),
            ReplaySeek::ByTimestamp => (
                Some(
                    consumer
                        .offsets_for_times(from_tpl, timeout)
                        .map_err(fetch)?,
                ),
                Some(consumer.offsets_for_times(to_tpl, timeout).map_err(fetch)?),
            ),
        };
        let lookup = |tpl: &Option<TopicPartitionList>, partition: i32| {
            tpl.as_ref()
                .and_then(|t| t.find_partition(topic, partition))
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
        };
        for (partition, (low, high)) in bounds {
            let first = match window.seek {
                ReplaySeek::Scan => Some(low),
                // No offset at or after `from`: nothing of this partition is in the window.
                ReplaySeek::ByTimestamp => lookup(&from_offsets, partition),
            };
            let Some(first) = first else { continue };
            // The first offset at or after `to` ends the read. An answer at or before `first`
            // would make the window empty; some brokers (tansu 0.6) give offset 0 for a time
            // after the last record, so such an answer is not trusted: the read then goes to
            // the high watermark, and records outside the window are skipped by timestamp.
            let end = lookup(&to_offsets, partition)
                .filter(|&end| end > first)
                .unwrap_or(high)
                .min(high);
            if first >= end {
                continue;
            }
            start
                .add_partition_offset(topic, partition, Offset::Offset(first))
                .map_err(fetch)?;
            ends.insert((Arc::from(topic.as_str()), partition), end);
        }
    }
    Ok(Plan { start, ends })
}

fn run(
    consumer: BaseConsumer,
    shared: Arc<MemberState>,
    ends: BTreeMap<Tp, i64>,
    window: Arc<ReplayWindow>,
    types: Vec<Pattern>,
) {
    let (from, to) = (window.from.timestamp_millis(), window.to.timestamp_millis());
    let mut reached: BTreeSet<Tp> = BTreeSet::new();
    let mut paused: BTreeSet<Tp> = BTreeSet::new();
    let mut names = SharedNames::default();
    while !shared.is_stopping() {
        let mut batch = Vec::new();
        let mut first = true;
        while batch.len() < 1000 {
            let polled = consumer.poll(if first {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            });
            first = false;
            match polled {
                Some(Ok(m)) => {
                    let (message, meta) = record::from_record(&m, names.get(m.topic()), &mut names);
                    batch.push((
                        m.topic().to_owned(),
                        m.partition(),
                        m.offset(),
                        message,
                        meta,
                    ));
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "replay consumer error");
                    break;
                }
                None => break,
            }
        }
        let mut tracker = shared.lock();
        let mut ready = false;
        for (topic, partition, offset, mut message, meta) in batch {
            let Some((tp, &end)) = ends
                .iter()
                .find(|((t, p), _)| **t == *topic && *p == partition)
            else {
                continue;
            };
            let tp = tp.clone();
            if offset + 1 >= end {
                reached.insert(tp.clone());
            }
            if offset >= end {
                continue;
            }
            let ts = meta.timestamp_ms.unwrap_or(from);
            let wanted = meta.retry_group.is_none()
                && ts >= from
                && ts < to
                && (message.event_type.is_empty()
                    || shared_matches(&shared, &types, &message.event_type));
            message
                .headers
                .insert(REPLAY_HEADER.to_owned(), "true".to_owned());
            ready |= tracker.push(
                &tp,
                Pending {
                    offset,
                    message,
                    redeliveries: 0,
                },
                !wanted,
                None,
                0,
            );
        }
        let newly: Vec<Tp> = reached
            .iter()
            .filter(|tp| !paused.contains(*tp))
            .cloned()
            .collect();
        // Stop fetching past the window.
        fetch_flow::pause(&consumer, &newly);
        paused.extend(newly);
        // Bounded buffers: a partition far ahead of its handlers pauses until they catch up.
        let flow = tracker.flow_changes();
        let resume = tracker.with_fetch_positions(flow.resume);
        let done = reached.len() == ends.len() && tracker.is_idle();
        drop(tracker);
        if !flow.pause.is_empty() {
            shared.counters.pauses.fetch_add(
                flow.pause.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        fetch_flow::pause(&consumer, &flow.pause);
        let resume: Vec<(Tp, Option<i64>)> = resume
            .into_iter()
            .filter(|(tp, _)| !paused.contains(tp))
            .collect();
        fetch_flow::resume(&consumer, &resume);
        if ready {
            shared.notify_ready();
        }
        if done {
            break;
        }
    }
    drop(consumer);
    shared.mark_closed();
    tracing::info!(group = %shared.group, "replay finished");
}

fn shared_matches(shared: &MemberState, types: &[Pattern], event_type: &str) -> bool {
    shared.matches(event_type) && (types.is_empty() || types.iter().any(|p| p.matches(event_type)))
}

impl Backend for ReplayBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        self.kafka.publish(messages)
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        Box::pin(async move {
            let window = self.window.clone();
            if window.from >= window.to {
                return Err(Error::config(
                    "replay.from",
                    format!("{} is not before replay.to {}", window.from, window.to),
                ));
            }
            let mut types = Vec::new();
            for (i, p) in window.event_types.iter().enumerate() {
                types.push(Pattern::parse(p).map_err(|e| {
                    Error::config(format!("replay.event_types[{i}]"), e.to_string())
                })?);
            }
            let inner = self.kafka.inner.clone();
            let mut topics = window.topics.clone();
            if topics.is_empty() {
                topics.extend(request.topics.iter().cloned());
                let all = describe(&inner, None).await?;
                topics.extend(all.into_keys().filter(|t| request.pattern.matches(t)));
                topics.retain(|t| !is_dlq_topic(t) && !is_tier_topic(t));
                topics.sort();
                topics.dedup();
            }
            let limits = Limits {
                max_buffered: self.kafka.inner.config.consumer.max_buffered_per_partition,
                commit_every: usize::MAX,
                commit_interval: Duration::MAX,
                prefetch: request.prefetch.max(1),
            };
            let group = format!("{}.replay.{}", request.group, uuid::Uuid::now_v7().simple());
            let shared = MemberState::new(
                &request.group,
                &request.pattern,
                limits,
                Duration::ZERO,
                true,
            );
            let planner = inner.clone();
            let group_id = group.clone();
            let window_for_plan = window.clone();
            let (consumer, plan) = crate::runtime::unblock(move || -> Result<_, Error> {
                let consumer = throwaway_consumer(&planner, &group_id)?;
                let plan = plan(
                    &consumer,
                    &topics,
                    &window_for_plan,
                    planner.config.operation_timeout,
                )?;
                Ok((consumer, plan))
            })
            .await?;
            let tps: Vec<Tp> = plan.ends.keys().cloned().collect();
            shared.lock().assign(&tps);
            if !tps.is_empty() {
                consumer
                    .assign(&plan.start)
                    .map_err(|e| Error::backend("kafka", "replay: assign", e))?;
            }
            tracing::info!(%group, partitions = tps.len(), "replay started");
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(shared.clone());
            let thread_shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("eventbus-replay-{}", request.group))
                .spawn(move || run(consumer, thread_shared, plan.ends, window, types))
                .map_err(|e| Error::backend("kafka", "start replay thread", e))?;
            Ok(delivery_stream(shared, inner))
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.kafka.health()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.kafka.flush()
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        Some(self)
    }
}

impl BackendAdmin for ReplayBackend {
    fn deliver_to_group(
        &self,
        group: &str,
        messages: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.kafka.deliver_to_group(group, messages)
    }

    fn group_lag(&self) -> BoxFuture<'_, Result<Vec<crate::backend::GroupLag>, Error>> {
        self.kafka.group_lag()
    }

    fn read_page(
        &self,
        topic: &str,
        cursor: Option<crate::backend::Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::backend::Page, Error>> {
        self.kafka.read_page(topic, cursor, limit)
    }

    fn read_ids(
        &self,
        topic: &str,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        self.kafka.read_ids(topic, ids)
    }

    fn delete(&self, topic: &str, ids: Vec<String>) -> BoxFuture<'_, Result<usize, Error>> {
        self.kafka.delete(topic, ids)
    }
}
