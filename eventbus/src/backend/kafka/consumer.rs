//! One member of a consumer group: a `BaseConsumer` driven by a dedicated poll thread, the
//! rebalance callbacks, and the stream of deliveries with their acknowledgers.
//!
//! - **Subscription**: the catalog's topics for the pattern, plus a librdkafka regex (`^...$`)
//!   derived from the pattern for topics created later (topic name = event name), plus the
//!   regexes of their retry tiers; cooperative-sticky assignment.
//! - **Polling** runs on its own thread: records go into the [tracker](super::tracker), which
//!   hands them out with concurrency across partitions and keys; partitions over their buffer
//!   limit, or holding a retry record not due yet, are paused and resumed later.
//! - **Commits** happen on the poll thread only for the contiguous prefix of done offsets of
//!   each partition, every `commit_every` messages or `commit_interval`.
//! - **Rebalance**: a revoked partition stops handing out messages, waits (bounded by
//!   `rebalance_drain_timeout`) for its in-flight ones, commits what is done, and drops the
//!   rest for the new owner; late settlements of it are ignored. A partition revoked while
//!   paused is resumed before it is given up: librdkafka keeps the pause flag through
//!   revocation, and the partition would come back paused if assigned again.
//! - **Shutdown**: dropping the stream stops the thread, which commits what is done and closes
//!   the consumer (leaving the group).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use event_listener::Event as Signal;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use super::fetch_flow;
use super::record::{self, RecordMeta};
use super::retry_tiers::{self, is_tier_topic};
use super::tracker::{Holding, Limits, Pending, Settle, Taken, Tp, Tracker};
use super::Inner;
use crate::backend::{
    Acknowledger, Delivery, DeliveryStream, Message, RetryState, SubscribeRequest,
};
use crate::error::Error;
use crate::hash_tables::{PerType, SharedNames};
use crate::pattern::{Pattern, Segment};
use crate::wire::is_dlq_topic;

const POLL: Duration = Duration::from_millis(20);
/// Records taken from librdkafka in one round of the poll thread, at most.
const MAX_BATCH: usize = 2_000;

/// Escapes a topic name for a POSIX extended regular expression.
pub(crate) fn escape_regex(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 4);
    for c in topic.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The regex of topics named like events `pattern` matches, or `None` for an exact pattern.
pub(crate) fn pattern_regex(pattern: &Pattern) -> Option<String> {
    if pattern.is_exact() {
        return None;
    }
    let segments: Vec<String> = pattern
        .segments()
        .map(|segment| match segment {
            Segment::Single => "[^.]+".to_owned(),
            Segment::Multi => ".+".to_owned(),
            Segment::Literal(literal) => escape_regex(literal),
        })
        .collect();
    Some(format!("^{}$", segments.join("\\.")))
}

/// What the poll thread, the stream and the acknowledgers share.
pub(crate) struct MemberState {
    pub(crate) group: String,
    /// A replay: nothing is committed and deferrals wait in-process.
    replay: bool,
    pattern: Pattern,
    tracker: Mutex<Tracker>,
    settled: Condvar,
    /// Revocations waiting on `settled` (set and cleared under the tracker's lock).
    draining: AtomicUsize,
    ready: Signal,
    closed_signal: Signal,
    stop: AtomicBool,
    crashed: AtomicBool,
    closed: AtomicBool,
    drain_timeout: Duration,
    pub(crate) counters: Counters,
}

/// What one consumer did.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rebalances: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) pauses: AtomicU64,
}

impl MemberState {
    pub(crate) fn new(
        group: &str,
        pattern: &Pattern,
        limits: Limits,
        drain_timeout: Duration,
        replay: bool,
    ) -> Arc<Self> {
        Arc::new(MemberState {
            group: group.to_owned(),
            replay,
            pattern: pattern.clone(),
            tracker: Mutex::new(Tracker::new(limits)),
            settled: Condvar::new(),
            draining: AtomicUsize::new(0),
            ready: Signal::new(),
            closed_signal: Signal::new(),
            stop: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            drain_timeout,
            counters: Counters::default(),
        })
    }

    /// Whether the subscription's pattern matches `event_type`.
    pub(crate) fn matches(&self, event_type: &str) -> bool {
        self.pattern.matches(event_type)
    }

    /// Wakes the delivery stream.
    pub(crate) fn notify_ready(&self) {
        self.ready.notify(usize::MAX);
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, tp: &Tp, holding: Holding, offset: i64, how: Settle) {
        self.lock().settle(tp, holding, offset, how);
        self.notify_settled();
    }

    /// Wakes a revocation waiting for in-flight deliveries (only then: a condition variable's
    /// wake is a system call) and the delivery stream.
    fn notify_settled(&self) {
        if self.draining.load(Ordering::SeqCst) > 0 {
            self.settled.notify_all();
        }
        self.ready.notify(usize::MAX);
    }

    /// Stops the consumer as a crash would: nothing more is committed.
    pub(crate) fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Completes when the poll thread has committed and closed the consumer.
    pub(crate) async fn closed(&self) {
        loop {
            let listener = self.closed_signal.listen();
            if self.is_closed() {
                return;
            }
            listener.await;
        }
    }

    /// The partitions this member holds.
    pub(crate) fn assignment(&self) -> Vec<(String, i32)> {
        self.lock()
            .assigned()
            .into_iter()
            .map(|(t, p)| (t.to_string(), p))
            .collect()
    }

    /// Deliveries handed out and not settled.
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().outstanding()
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closed_signal.notify(usize::MAX);
        self.ready.notify(usize::MAX);
    }
}

/// The rebalance, commit and error callbacks.
struct Callbacks {
    shared: Arc<MemberState>,
    /// When a client error was last logged as a warning (the others in the next
    /// [`ERROR_LOG_EVERY`] go to debug).
    last_error_log: Mutex<Option<Instant>>,
}

/// At most one client error a member logs as a warning in this long.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

impl ClientContext for Callbacks {
    /// Every error librdkafka reports to the member, with its reason (the poll returns the
    /// same error again without the reason: it is logged here only).
    fn error(&self, error: KafkaError, reason: &str) {
        let group = &self.shared.group;
        match unavailable_subscription(reason) {
            // A pattern nothing was published under yet, and the retry tiers of a topic no
            // handler deferred from yet: the normal state of a regex subscription.
            Some(regex) if regex.starts_with('^') => {
                tracing::debug!(%group, %regex, "no topic matches the subscribed regex yet");
            }
            Some(topic) => tracing::warn!(
                %group, %topic,
                "subscribed topic does not exist; its events are consumed once it is created"
            ),
            None => {
                let mut last = self
                    .last_error_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() > ERROR_LOG_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(%group, %error, reason, "kafka consumer error");
                } else {
                    tracing::debug!(%group, %error, reason, "kafka consumer error");
                }
            }
        }
    }
}

/// The subscribed topic or regex an error's `reason` says is not available (librdkafka:
/// `Subscribed topic not available: <topic>: <error>`).
fn unavailable_subscription(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("Subscribed topic not available: ")?;
    Some(rest.split_once(": ").map_or(rest, |(topic, _)| topic))
}

fn tps_of(tpl: &TopicPartitionList, names: &mut Topics) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (names.intern(e.topic()), e.partition()))
        .collect()
}

fn tpl_of(positions: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for ((topic, partition), offset) in positions {
        // Offsets of partitions we hold are always valid; an error here is a bug, not input.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let shared = &self.shared;
        let mut names = Topics::default();
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl, &mut names);
                tracing::info!(group = %shared.group, partitions = ?tps, "partitions assigned");
                shared.counters.rebalances.fetch_add(1, Ordering::Relaxed);
                shared.lock().assign(&tps);
            }
            Rebalance::Revoke(tpl) => {
                let tps = tps_of(tpl, &mut names);
                shared.counters.rebalances.fetch_add(1, Ordering::Relaxed);
                let crashed = shared.crashed.load(Ordering::SeqCst);
                let mut tracker = shared.lock();
                let in_flight = tracker.begin_revoke(&tps);
                if in_flight > 0 && !crashed {
                    // Let the deliveries already handed out finish, so the next owner does not
                    // handle them a second time.
                    let deadline = Instant::now() + shared.drain_timeout;
                    shared.draining.fetch_add(1, Ordering::SeqCst);
                    while tracker.in_flight_of(&tps) > 0 {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            tracing::warn!(
                                group = %shared.group, in_flight = tracker.in_flight_of(&tps),
                                "revoked partitions still busy after the drain timeout; the next owner redelivers them"
                            );
                            break;
                        }
                        tracker = shared
                            .settled
                            .wait_timeout(tracker, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    shared.draining.fetch_sub(1, Ordering::SeqCst);
                }
                let paused = tracker.paused_among(&tps);
                let commits = tracker.finish_revoke(&tps);
                drop(tracker);
                // librdkafka keeps a partition's pause flag through revocation and assignment:
                // one revoked while paused would come back paused, and the tracker (which
                // starts a partition afresh) would never resume it. The flag is cleared now,
                // while the partition is still assigned and its fetcher stopped by the
                // rebalance. (Clearing it after a new assignment races librdkafka's own start
                // of the fetcher: the two requests are ordered by a version taken before they
                // are queued, so the older one can arrive second and be dropped as outdated,
                // leaving the partition paused, or its fetcher never started.)
                fetch_flow::unpause(consumer, &paused);
                tracing::info!(group = %shared.group, partitions = ?tps, "partitions revoked");
                if !crashed && !commits.is_empty() && !consumer.assignment_lost() {
                    match consumer.commit(&tpl_of(&commits), CommitMode::Sync) {
                        Ok(()) => {
                            shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tracing::warn!(group = %shared.group, %error, "commit of revoked partitions failed; the next owner redelivers their last messages")
                        }
                    }
                }
                shared.ready.notify(usize::MAX);
            }
            Rebalance::Error(error) => {
                tracing::warn!(group = %shared.group, %error, "rebalance error");
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            tracing::warn!(group = %self.shared.group, %error, "offset commit failed; retrying with the next commit");
            let mut names = Topics::default();
            let failed: Vec<(Tp, i64)> = offsets
                .elements()
                .iter()
                .filter_map(|e| {
                    e.offset()
                        .to_raw()
                        .map(|o| ((names.intern(e.topic()), e.partition()), o))
                })
                .collect();
            self.shared.lock().commit_failed(&failed);
        }
    }
}

/// Interned topic names, each with whether it is a retry tier (looked up once per topic, not
/// once per record; bounded like every [`PerType`] table).
#[derive(Default)]
struct Topics(PerType<(Arc<str>, bool)>);

impl Topics {
    fn intern(&mut self, topic: &str) -> Arc<str> {
        self.get(topic).0
    }

    /// The interned name of `topic` and whether it is a retry tier.
    fn get(&mut self, topic: &str) -> (Arc<str>, bool) {
        self.0
            .get_or_insert_with(topic, || (Arc::from(topic), is_tier_topic(topic)))
            .clone()
    }
}

/// Joins the request's group and starts polling; returns the consumer's shared state and its
/// delivery stream.
pub(crate) async fn start(
    inner: Arc<Inner>,
    request: SubscribeRequest,
) -> Result<(Arc<MemberState>, DeliveryStream), Error> {
    let config = &inner.config;
    let mut literal: Vec<String> = request
        .topics
        .iter()
        .filter(|t| !is_dlq_topic(t) && !is_tier_topic(t))
        .cloned()
        .collect();
    literal.sort();
    literal.dedup();
    if config.auto_create_topics && !literal.is_empty() {
        inner
            .topics
            .ensure(&inner, literal.iter().map(String::as_str))
            .await?;
    }
    let mut subscription: Vec<String> = Vec::new();
    for topic in &literal {
        subscription.push(topic.clone());
        subscription.push(retry_tiers::tier_regex(topic));
    }
    let regex = pattern_regex(&request.pattern)
        .unwrap_or_else(|| format!("^{}$", escape_regex(request.pattern.as_str())));
    // Under a topic prefix, only the prefixed topics: `^staging\.order\.[^.]+$`.
    let regex = match regex.strip_prefix('^') {
        Some(rest) if !request.topic_prefix.is_empty() => {
            format!("^{}{rest}", escape_regex(&request.topic_prefix))
        }
        _ => regex,
    };
    subscription.push(retry_tiers::tier_regex(&regex));
    subscription.push(regex);
    subscription.sort();
    subscription.dedup();

    let limits = Limits {
        max_buffered: config.consumer.max_buffered_per_partition,
        commit_every: config.consumer.commit_every,
        commit_interval: config.consumer.commit_interval,
        prefetch: request.prefetch.max(1),
    };
    let shared = MemberState::new(
        &request.group,
        &request.pattern,
        limits,
        config.consumer.rebalance_drain_timeout,
        false,
    );
    let consumer: BaseConsumer<Callbacks> = config
        .consumer_client_config(&request.group)
        .create_with_context(Callbacks {
            shared: shared.clone(),
            last_error_log: Mutex::new(None),
        })
        .map_err(|e| config.config_error(e, "consumer_options"))?;
    let names: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| Error::backend("kafka", "subscribe", e))?;
    tracing::info!(group = %request.group, topics = ?subscription, "kafka consumer subscribed");
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("eventbus-kafka-{}", request.group))
        .spawn(move || poll_loop(consumer, thread_shared))
        .map_err(|e| Error::backend("kafka", "start consumer thread", e))?;
    inner.register(shared.clone());

    Ok((shared.clone(), delivery_stream(shared, inner)))
}

/// The deliveries of a consumer; dropping the stream stops its poll thread.
pub(crate) fn delivery_stream(shared: Arc<MemberState>, inner: Arc<Inner>) -> DeliveryStream {
    Box::pin(Deliveries {
        state: StreamState {
            _guard: StopGuard(shared.clone()),
            shared,
            inner,
            taken: VecDeque::new(),
        },
        listener: None,
    })
}

/// The delivery stream: takes from the tracker, and waits for the poll thread's signal when
/// nothing can be taken.
struct Deliveries {
    state: StreamState,
    /// Listening for the signal (registered before the last look at the tracker, so a signal
    /// sent in between is not missed).
    listener: Option<event_listener::EventListener>,
}

impl Stream for Deliveries {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(delivery) = this.state.take() {
                this.listener = None;
                return Poll::Ready(Some(Ok(delivery)));
            }
            match &mut this.listener {
                None => this.listener = Some(this.state.shared.ready.listen()),
                Some(listener) => {
                    if this.state.shared.is_closed() {
                        return Poll::Ready(None);
                    }
                    ready!(listener.poll_unpin(cx));
                    this.listener = None;
                }
            }
        }
    }
}

/// Most deliveries the stream takes from the tracker under one lock.
const TAKE_BATCH: usize = 64;

/// Sets the stop flag when the delivery stream is dropped.
struct StopGuard(Arc<MemberState>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

struct StreamState {
    shared: Arc<MemberState>,
    inner: Arc<Inner>,
    /// Taken from the tracker (in flight there, within its prefetch bound) and not yet handed
    /// out: one lock per batch instead of one per delivery. Dropped with the stream, their
    /// ackers hand them back.
    taken: VecDeque<Taken>,
    _guard: StopGuard,
}

impl StreamState {
    fn take(&mut self) -> Option<Delivery> {
        if self.shared.is_stopping() {
            return None;
        }
        if self.taken.is_empty() {
            let mut tracker = self.shared.lock();
            while self.taken.len() < TAKE_BATCH {
                match tracker.take() {
                    Some(taken) => self.taken.push_back(taken),
                    None => break,
                }
            }
        }
        let taken = self.taken.pop_front()?;
        Some(self.delivery(taken))
    }

    fn delivery(&self, taken: Taken) -> Delivery {
        Delivery {
            message: taken.message,
            redeliveries: taken.redeliveries,
            acker: Box::new(KafkaAcker {
                inner: self.inner.clone(),
                shared: self.shared.clone(),
                tp: taken.tp,
                holding: taken.holding,
                offset: taken.offset,
                settled: false,
            }),
        }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        // Taken but never handed out: back to the tracker, to be delivered in order, uncounted.
        let mut tracker = self.shared.lock();
        for taken in self.taken.drain(..) {
            tracker.settle(&taken.tp, taken.holding, taken.offset, Settle::Release);
        }
        drop(tracker);
        self.shared.notify_settled();
    }
}

/// Whether a record is for this consumer, and when it is due.
fn classify(
    shared: &MemberState,
    topic: &str,
    message: &Message,
    meta: &RecordMeta,
) -> (bool, Option<i64>) {
    if topic.starts_with("__") || is_dlq_topic(topic) {
        return (true, None);
    }
    let due = match &meta.retry_group {
        Some(group) if group != &shared.group => return (true, None),
        Some(_) => Some(meta.due_ms.unwrap_or(0)),
        None => None,
    };
    if !message.event_type.is_empty() && !shared.pattern.matches(&message.event_type) {
        return (true, None);
    }
    (false, due)
}

fn poll_loop(consumer: BaseConsumer<Callbacks>, shared: Arc<MemberState>) {
    let mut names = Topics::default();
    let mut shared_names = SharedNames::default();
    let mut batch = Vec::with_capacity(256);
    // Records settled since the last round, dropped here (see `Tracker::swap_settled`).
    let mut settled = Vec::new();
    // A round takes no more than a partition's buffer holds (plus the record that goes over):
    // the partition is paused after the round, so a round may not fill it far past its bound.
    let round = MAX_BATCH.min(shared.lock().limits().max_buffered.saturating_add(1));
    while !shared.is_stopping() {
        let mut timeout = POLL;
        if let Some(due) = shared.lock().next_due() {
            let wait = u64::try_from(due - crate::clock::unix_ms()).unwrap_or(0);
            timeout = timeout.min(Duration::from_millis(wait));
        }
        let mut first = true;
        while batch.len() < round {
            let polled = consumer.poll(if first { timeout } else { Duration::ZERO });
            first = false;
            match polled {
                Some(Ok(record)) => {
                    let topic = rdkafka::Message::topic(&record);
                    let (name, tier) = names.get(topic);
                    let (mut message, mut meta) =
                        record::from_record(&record, name.clone(), &mut shared_names);
                    if !tier {
                        // A live topic: retry-tier headers there were forged (or copied by a
                        // foreign producer) and count for nothing.
                        if message.strip_internal_headers() > 0 || meta.retry_group.is_some() {
                            meta.retry_group = None;
                            meta.due_ms = None;
                            message.topic = name.clone();
                        }
                    }
                    let tp = (name, rdkafka::Message::partition(&record));
                    let offset = rdkafka::Message::offset(&record);
                    batch.push((tp, offset, message, meta));
                }
                Some(Err(error)) => {
                    // Logged with its reason by `Callbacks::error`.
                    tracing::trace!(group = %shared.group, %error, "kafka consumer error polled");
                    break;
                }
                None => break,
            }
        }
        let now = crate::clock::unix_ms();
        let mut tracker = shared.lock();
        let mut ready = false;
        for (tp, offset, message, meta) in batch.drain(..) {
            let (skip, due) = classify(&shared, &tp.0, &message, &meta);
            if skip {
                shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
            }
            let pending = Pending {
                offset,
                message,
                redeliveries: 0,
            };
            ready |= tracker.push(&tp, pending, skip, due, now);
        }
        ready |= tracker.release_due(now);
        let flow = tracker.flow_changes();
        let resume = tracker.with_fetch_positions(flow.resume);
        let commits = tracker.due_commits(false);
        tracker.swap_settled(&mut settled);
        drop(tracker);
        settled.clear();
        if ready {
            shared.ready.notify(usize::MAX);
        }
        shared
            .counters
            .pauses
            .fetch_add(flow.pause.len() as u64, Ordering::Relaxed);
        fetch_flow::pause(&consumer, &flow.pause);
        fetch_flow::resume(&consumer, &resume);
        if !commits.is_empty() {
            commit(&consumer, &shared, &commits, CommitMode::Async);
        }
    }
    if !shared.crashed.load(Ordering::SeqCst) {
        let commits = shared.lock().due_commits(true);
        if !commits.is_empty() {
            commit(&consumer, &shared, &commits, CommitMode::Sync);
        }
    }
    // Closing leaves the group (the revoke callback commits anything left).
    drop(consumer);
    shared.mark_closed();
    tracing::info!(group = %shared.group, "kafka consumer closed");
}

fn commit(
    consumer: &BaseConsumer<Callbacks>,
    shared: &MemberState,
    positions: &[(Tp, i64)],
    mode: CommitMode,
) {
    match consumer.commit(&tpl_of(positions), mode) {
        Ok(()) => {
            shared.counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            tracing::warn!(group = %shared.group, %error, "offset commit failed; retrying with the next commit");
            shared.lock().commit_failed(positions);
        }
    }
}

/// Settles one record: done offsets are committed in order by the poll thread.
struct KafkaAcker {
    inner: Arc<Inner>,
    shared: Arc<MemberState>,
    tp: Tp,
    holding: Holding,
    offset: i64,
    settled: bool,
}

impl KafkaAcker {
    fn settle(&mut self, how: Settle) {
        self.settled = true;
        self.shared.settle(&self.tp, self.holding, self.offset, how);
    }
}

impl Acknowledger for KafkaAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(Settle::Done);
        crate::ready::done()
    }

    fn nack(mut self: Box<Self>, state: RetryState) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(Settle::Requeue(Some(state)));
        crate::ready::done()
    }

    fn release(mut self: Box<Self>) {
        self.settle(Settle::Release);
    }

    fn can_defer(&self) -> bool {
        !self.shared.replay
    }

    /// Produces the message to its retry tier, then counts its offset as done.
    fn defer(
        mut self: Box<Self>,
        delay: Duration,
        state: RetryState,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let message = self
                .shared
                .lock()
                .in_flight_message(&self.tp, self.holding, self.offset);
            let Some(message) = message else {
                // Revoked meanwhile: the next owner has it.
                self.settle(Settle::Requeue(None));
                return Ok(());
            };
            let tier = retry_tiers::tier_message(&message, &self.shared.group, delay, &state);
            let sent = async {
                if self.inner.config.auto_create_topics {
                    self.inner
                        .topics
                        .ensure(&self.inner, [&*tier.topic])
                        .await?;
                }
                self.inner
                    .producer
                    .send_all(std::slice::from_ref(&tier))
                    .await
            }
            .await;
            match sent {
                Ok(_) => {
                    self.shared
                        .counters
                        .deferred
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %tier.topic, ?delay, "deferred to retry tier");
                    self.settle(Settle::Done);
                    Ok(())
                }
                Err(error) => {
                    self.settle(Settle::Requeue(Some(state)));
                    Err(error)
                }
            }
        })
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.shared
                .settle(&self.tp, self.holding, self.offset, Settle::Requeue(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_regexes_follow_the_wildcards() {
        let regex = |p: &str| pattern_regex(&Pattern::parse(p).unwrap());
        assert_eq!(regex("approval.*").as_deref(), Some("^approval\\.[^.]+$"));
        assert_eq!(regex("approval.#").as_deref(), Some("^approval\\..+$"));
        assert_eq!(regex("*.created").as_deref(), Some("^[^.]+\\.created$"));
        assert_eq!(regex("approval.granted"), None);
        assert_eq!(escape_regex("a.b-c"), "a\\.b-c");
    }

    #[test]
    fn unavailable_subscriptions_are_read_from_the_reason() {
        let reason = |topic: &str| {
            format!("Subscribed topic not available: {topic}: Broker: Unknown topic or partition")
        };
        let tiers = "^orders\\.retry\\.[0-9]+(ms|s|m|h)$";
        assert_eq!(unavailable_subscription(&reason(tiers)), Some(tiers));
        assert_eq!(unavailable_subscription(&reason("orders")), Some("orders"));
        assert_eq!(
            unavailable_subscription("127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed"),
            None
        );
    }
}
