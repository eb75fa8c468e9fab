//! The in-memory backend: consumer groups, per-key ordering, acknowledgements and
//! redelivery inside one process. For the quickstart and for users' unit tests (see
//! [`crate::testing`]); it keeps nothing across process restarts.
//!
//! Semantics:
//! - A group, identified by its name and pattern, receives every message published after it
//!   was first joined whose event type matches the pattern (dead-letter topics excepted).
//! - Members of a group share its messages. While a member holds unacknowledged messages of a
//!   key, the key's later messages go to that member only, so per-key order holds across members.
//! - A delivery dropped without ack or nack (its consumer died) is redelivered, before later
//!   messages of its key, with its redelivery count increased.
//! - Each topic keeps its last [`MemoryBackend::DEFAULT_RETENTION`] messages for reading back
//!   (dead-letter tools, replay), or as many as [`MemoryBackend::with_retention`] says; a
//!   dead-letter topic keeps at least [`MemoryBackend::DEAD_LETTER_RETENTION`]. Retention never
//!   drops a message a group has not settled: the groups' queues hold their own references.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event as Signal;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use super::{
    Acknowledger, Backend, BackendAdmin, Cursor, Delivery, DeliveryStream, GroupLag, KeyPage,
    Message, Page, RetryState, StoredMessage, SubscribeRequest, MAX_PAGE,
};
use crate::error::Error;
use crate::hash_tables::{FoldMap, PerType};
use crate::pattern::PatternSet;
use crate::wire::{is_dlq_topic, DLQ_SUFFIX};

/// An in-process message broker. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<MemoryState>,
}

struct MemoryState {
    state: Mutex<State>,
    changed: Signal,
    activity: AtomicU64,
    /// Messages kept per event topic for reading back.
    retention: usize,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            state: Mutex::default(),
            changed: Signal::new(),
            activity: AtomicU64::new(0),
            retention: MemoryBackend::DEFAULT_RETENTION,
        }
    }
}

#[derive(Default)]
struct State {
    topics: FoldMap<String, TopicLog>,
    groups: Vec<Group>,
    group_ids: FoldMap<(String, String), usize>,
    routes: PatternSet<usize>,
    /// The groups each event type published so far routes to: a pattern walk per type, not per
    /// message. Emptied when a group subscribes.
    routed: PerType<Vec<usize>>,
    next_seq: u64,
    next_tag: u64,
    next_member: u64,
    faults: Faults,
}

#[derive(Default)]
struct TopicLog {
    next_offset: u64,
    /// Retained messages with their offsets, oldest first; shared with the groups' queues, so
    /// a publish copies no message.
    entries: VecDeque<(u64, Arc<Message>)>,
}

impl TopicLog {
    fn stored((offset, message): &(u64, Arc<Message>)) -> StoredMessage {
        StoredMessage {
            id: offset.to_string(),
            message: Message::clone(message),
        }
    }
}

#[derive(Default)]
struct Group {
    /// Only topics starting with this ([`SubscribeRequest::topic_prefix`]).
    topic_prefix: String,
    queue: VecDeque<Queued>,
    unacked: FoldMap<u64, (u64, Queued)>,
    /// The member holding each key in flight and its count there, by the key's hash
    /// ([`key_slot`]): no copy of the key per delivery. Two keys whose hashes collide share
    /// an owner, so they are handed out as one key would be, in order, never out of it.
    key_owner: FoldMap<u64, (u64, usize)>,
    member_unacked: FoldMap<u64, usize>,
}

/// The slot of a message key in a group's key-ownership table: the key's hash, by the
/// table's own randomly seeded hasher.
fn key_slot(owners: &FoldMap<u64, (u64, usize)>, key: &str) -> u64 {
    use std::hash::BuildHasher;
    owners.hasher().hash_one(key)
}

#[derive(Clone)]
struct Queued {
    seq: u64,
    message: Arc<Message>,
    redeliveries: u32,
}

/// Faults the backend injects on purpose, for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// The next N acknowledgements are lost as if the consumer crashed after its side effect
    /// and before the ack: the messages are redelivered.
    pub lose_acks: u32,
    /// The next N published messages are delivered twice to every group.
    pub duplicate_deliveries: u32,
    /// The next N publish calls fail with a backend error.
    pub fail_publishes: u32,
}

impl MemoryBackend {
    /// Messages kept per event topic for reading back, unless
    /// [`with_retention`](Self::with_retention) says otherwise: enough history for a test's
    /// replay, small enough to stay in the processor's cache (a log of 100 000 messages of
    /// about 500 bytes, 50 MB a topic, cost the in-memory bench about a fifth of its
    /// throughput).
    pub const DEFAULT_RETENTION: usize = 10_000;

    /// Messages a dead-letter topic keeps at least, whatever the retention: no dead letter
    /// leaves before the dead-letter tools can read it.
    pub const DEAD_LETTER_RETENTION: usize = 100_000;

    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty broker keeping the last `messages` messages of each event topic for reading
    /// back (at least one), instead of [`DEFAULT_RETENTION`](Self::DEFAULT_RETENTION).
    /// Dead-letter topics keep at least [`DEAD_LETTER_RETENTION`](Self::DEAD_LETTER_RETENTION),
    /// so that no dead letter leaves before the tools can read it. Replay reads back only what
    /// the log kept; a larger log costs memory and cache per message (in the in-memory bench,
    /// 100 000 against 10 000 costs the bus about a fifth of its throughput).
    ///
    /// ```
    /// use eventbus::backend::memory::MemoryBackend;
    ///
    /// let backend = MemoryBackend::with_retention(1_000);
    /// assert_eq!(backend.retention(), 1_000);
    /// ```
    pub fn with_retention(messages: usize) -> Self {
        MemoryBackend {
            shared: Arc::new(MemoryState {
                retention: messages.max(1),
                ..MemoryState::default()
            }),
        }
    }

    /// Messages kept per event topic for reading back.
    pub fn retention(&self) -> usize {
        self.shared.retention
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        self.shared.activity.fetch_add(1, Ordering::SeqCst);
        self.shared.changed.notify(usize::MAX);
    }

    /// Adds faults to inject (they add up with the ones still pending).
    pub fn inject(&self, faults: Faults) {
        let mut state = self.lock();
        state.faults.lose_acks += faults.lose_acks;
        state.faults.duplicate_deliveries += faults.duplicate_deliveries;
        state.faults.fail_publishes += faults.fail_publishes;
    }

    /// Drops the faults not yet injected: the broker is healthy again.
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    /// Faults not yet injected.
    pub fn pending_faults(&self) -> Faults {
        self.lock().faults
    }

    /// Messages queued or delivered and not yet acknowledged, over all groups.
    pub fn outstanding(&self) -> usize {
        let state = self.lock();
        state
            .groups
            .iter()
            .map(|g| g.queue.len() + g.unacked.len())
            .sum()
    }

    /// A counter that moves on every publish, delivery and settlement.
    pub fn activity(&self) -> u64 {
        self.shared.activity.load(Ordering::SeqCst)
    }

    /// The messages of a topic still retained, oldest first.
    pub fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        self.lock()
            .topics
            .get(topic)
            .map(|log| log.entries.iter().map(TopicLog::stored).collect())
            .unwrap_or_default()
    }

    fn take(&self, group: usize, member: u64, prefetch: usize) -> Option<Delivery> {
        let mut state = self.lock();
        let tag = state.next_tag;
        let g = state.groups.get_mut(group)?;
        if g.member_unacked.get(&member).copied().unwrap_or(0) >= prefetch.max(1) {
            return None;
        }
        // The first message whose key is free or already this member's, with its key's slot.
        let mut slot = None;
        let index = g.queue.iter().position(|q| match &q.message.key {
            None => true,
            Some(key) => {
                let candidate = key_slot(&g.key_owner, key);
                let free = g
                    .key_owner
                    .get(&candidate)
                    .is_none_or(|(owner, _)| *owner == member);
                slot = free.then_some(candidate);
                free
            }
        })?;
        let queued = g.queue.remove(index)?;
        if let Some(slot) = slot {
            g.key_owner.entry(slot).or_insert((member, 0)).1 += 1;
        }
        *g.member_unacked.entry(member).or_insert(0) += 1;
        let redeliveries = queued.redeliveries;
        let message = Message::clone(&queued.message);
        g.unacked.insert(tag, (member, queued));
        state.next_tag += 1;
        drop(state);
        self.shared.activity.fetch_add(1, Ordering::SeqCst);
        Some(Delivery {
            redeliveries,
            message,
            acker: Box::new(MemoryAcker {
                backend: self.clone(),
                group,
                tag,
                settled: false,
            }),
        })
    }

    /// Settles a delivery: `None` acknowledges it, `Some(state)` puts it back (`state` from a
    /// nack), counting an attempt when `counted` (a nack, or a delivery dropped unsettled; not
    /// a delivery released unstarted).
    fn settle(&self, group: usize, tag: u64, requeue: Option<Option<RetryState>>, counted: bool) {
        let mut state = self.lock();
        let mut counted = counted;
        let requeue = match requeue {
            None if state.faults.lose_acks > 0 => {
                state.faults.lose_acks -= 1;
                counted = true;
                Some(None)
            }
            other => other,
        };
        let Some(g) = state.groups.get_mut(group) else {
            return;
        };
        let Some((member, mut queued)) = g.unacked.remove(&tag) else {
            return;
        };
        if let Some(key) = &queued.message.key {
            let slot = key_slot(&g.key_owner, key);
            if let Some(owner) = g.key_owner.get_mut(&slot) {
                owner.1 -= 1;
                if owner.1 == 0 {
                    g.key_owner.remove(&slot);
                }
            }
        }
        if let Some(count) = g.member_unacked.get_mut(&member) {
            *count -= 1;
        }
        if let Some(retry) = requeue {
            if counted {
                queued.redeliveries += 1;
            }
            if let Some(retry) = retry {
                Arc::make_mut(&mut queued.message).set_retry_state(&retry);
            }
            let at = g.queue.partition_point(|q| q.seq < queued.seq);
            g.queue.insert(at, queued);
        }
        drop(state);
        self.touch();
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

struct MemoryAcker {
    backend: MemoryBackend,
    group: usize,
    tag: u64,
    settled: bool,
}

impl Acknowledger for MemoryAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.settled = true;
        self.backend.settle(self.group, self.tag, None, false);
        crate::ready::done()
    }

    fn nack(mut self: Box<Self>, state: RetryState) -> BoxFuture<'static, Result<(), Error>> {
        self.settled = true;
        self.backend
            .settle(self.group, self.tag, Some(Some(state)), true);
        crate::ready::done()
    }

    fn release(mut self: Box<Self>) {
        self.settled = true;
        self.backend.settle(self.group, self.tag, Some(None), false);
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.backend.settle(self.group, self.tag, Some(None), true);
        }
    }
}

impl Backend for MemoryBackend {
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        crate::ready::done()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        crate::ready::done()
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        // Messages past retention, dropped once the lock is released: freeing them touches
        // memory long out of the caches, which deliveries and acks must not wait behind.
        let mut evicted = Vec::new();
        let retention = self.shared.retention;
        let result = {
            let mut state = self.lock();
            if state.faults.fail_publishes > 0 {
                state.faults.fail_publishes -= 1;
                Err(Error::backend(
                    "memory",
                    "publish",
                    "injected publish failure",
                ))
            } else {
                let State {
                    topics,
                    groups,
                    routes,
                    routed,
                    next_seq,
                    faults,
                    ..
                } = &mut *state;
                for mut message in messages {
                    if !is_dlq_topic(&message.topic) {
                        // Publishing is the live path: internal headers come only through
                        // nack, defer and `deliver_to_group`, never with a published message.
                        message.strip_internal_headers();
                    }
                    let message = Arc::new(message);
                    let log = match topics.get_mut(&*message.topic) {
                        Some(log) => log,
                        None => topics.entry(message.topic.to_string()).or_default(),
                    };
                    log.entries.push_back((log.next_offset, message.clone()));
                    log.next_offset += 1;
                    let kept = if is_dlq_topic(&message.topic) {
                        retention.max(Self::DEAD_LETTER_RETENTION)
                    } else {
                        retention
                    };
                    if log.entries.len() > kept {
                        evicted.extend(log.entries.pop_front());
                    }
                    if is_dlq_topic(&message.topic) {
                        continue;
                    }
                    let copies = if faults.duplicate_deliveries > 0 {
                        faults.duplicate_deliveries -= 1;
                        2
                    } else {
                        1
                    };
                    let to = routed.get_or_insert_with(&message.event_type, || {
                        let mut to = Vec::new();
                        routes.for_each_match(&message.event_type, |&group| to.push(group));
                        to
                    });
                    for &group in to {
                        if !message
                            .topic
                            .starts_with(groups[group].topic_prefix.as_str())
                        {
                            continue;
                        }
                        for _ in 0..copies {
                            *next_seq += 1;
                            groups[group].queue.push_back(Queued {
                                seq: *next_seq,
                                message: message.clone(),
                                redeliveries: 0,
                            });
                        }
                    }
                }
                Ok(())
            }
        };
        self.touch();
        drop(evicted);
        match result {
            Ok(()) => crate::ready::done(),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        let (group, member) = {
            let mut state = self.lock();
            let id = (request.group.clone(), request.pattern.as_str().to_owned());
            let group = match state.group_ids.get(&id) {
                Some(&group) => group,
                None => {
                    let group = state.groups.len();
                    state.groups.push(Group {
                        topic_prefix: request.topic_prefix.clone(),
                        ..Group::default()
                    });
                    state.group_ids.insert(id, group);
                    state.routes.insert(&request.pattern, group);
                    state.routed.clear();
                    group
                }
            };
            state.next_member += 1;
            (group, state.next_member)
        };
        let backend = self.clone();
        let prefetch = request.prefetch;
        let deliveries = stream::unfold(backend, move |backend| async move {
            loop {
                if let Some(delivery) = backend.take(group, member, prefetch) {
                    return Some((Ok(delivery), backend));
                }
                let listener = backend.shared.changed.listen();
                if let Some(delivery) = backend.take(group, member, prefetch) {
                    return Some((Ok(delivery), backend));
                }
                listener.await;
            }
        });
        Box::pin(async move { Ok(deliveries.boxed()) })
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        Some(self)
    }
}

impl BackendAdmin for MemoryBackend {
    fn dead_letter_topics(&self) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        let mut topics: Vec<String> = self
            .lock()
            .topics
            .keys()
            .filter_map(|t| t.strip_suffix(DLQ_SUFFIX))
            .map(str::to_owned)
            .collect();
        topics.sort_unstable();
        Box::pin(async move { Ok(topics) })
    }

    fn group_lag(&self) -> BoxFuture<'_, Result<Vec<GroupLag>, Error>> {
        let lags = {
            let state = self.lock();
            let mut lags: Vec<GroupLag> = state
                .group_ids
                .iter()
                .map(|((group, pattern), &id)| GroupLag {
                    group: group.clone(),
                    stream: pattern.clone(),
                    pending: state.groups[id].unacked.len() as u64,
                    lag: Some(state.groups[id].queue.len() as u64),
                })
                .collect();
            lags.sort_by(|a, b| (&a.group, &a.stream).cmp(&(&b.group, &b.stream)));
            lags
        };
        Box::pin(async move { Ok(lags) })
    }

    fn deliver_to_group(
        &self,
        group: &str,
        messages: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let found = {
            let mut state = self.lock();
            let targets: Vec<usize> = state
                .group_ids
                .iter()
                .filter(|((name, _), _)| name == group)
                .map(|(_, &id)| id)
                .collect();
            for message in messages.into_iter().map(Arc::new) {
                for &target in &targets {
                    state.next_seq += 1;
                    let seq = state.next_seq;
                    state.groups[target].queue.push_back(Queued {
                        seq,
                        message: message.clone(),
                        redeliveries: 0,
                    });
                }
            }
            !targets.is_empty()
        };
        self.touch();
        let group = group.to_owned();
        Box::pin(async move {
            if found {
                Ok(())
            } else {
                Err(Error::config(
                    "group",
                    format!("no consumer group `{group}` on this backend"),
                ))
            }
        })
    }

    /// Positions are the offset of the last message scanned.
    fn read_key_page(
        &self,
        topic: &str,
        key: &str,
        position: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, Error>> {
        let after = position.map(|c| {
            c.0.parse::<u64>()
                .map_err(|_| Error::config("cursor", format!("`{}` is not an offset", c.0)))
        });
        let page = after.transpose().map(|after| {
            let state = self.lock();
            let Some(log) = state.topics.get(topic) else {
                return KeyPage {
                    at_end: true,
                    position: after.map(|a| Cursor(a.to_string())),
                    ..KeyPage::default()
                };
            };
            let start = after.map_or(0, |after| {
                log.entries.partition_point(|(offset, _)| *offset <= after)
            });
            let limit = limit.clamp(1, MAX_PAGE);
            let mut messages = Vec::new();
            let mut last = after;
            for entry in log.entries.iter().skip(start) {
                if messages.len() >= limit {
                    break;
                }
                last = Some(entry.0);
                if entry.1.key.as_deref() == Some(key) {
                    messages.push(TopicLog::stored(entry));
                }
            }
            KeyPage {
                messages,
                position: last.map(|l| Cursor(l.to_string())),
                at_end: log.entries.back().map(|e| e.0) == last || log.entries.is_empty(),
            }
        });
        Box::pin(async move { page })
    }

    /// Cursors are the offset of the last message returned.
    fn read_page(
        &self,
        topic: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        let after = cursor.map(|c| {
            c.0.parse::<u64>()
                .map_err(|_| Error::config("cursor", format!("`{}` is not an offset", c.0)))
        });
        let page = after.transpose().map(|after| {
            let state = self.lock();
            let Some(log) = state.topics.get(topic) else {
                return Page::default();
            };
            let start = after.map_or(0, |after| {
                log.entries.partition_point(|(offset, _)| *offset <= after)
            });
            let limit = limit.clamp(1, MAX_PAGE);
            let messages: Vec<StoredMessage> = log
                .entries
                .iter()
                .skip(start)
                .take(limit)
                .map(TopicLog::stored)
                .collect();
            let next = (start + messages.len() < log.entries.len())
                .then(|| messages.last().map(|m| Cursor(m.id.clone())))
                .flatten();
            Page { messages, next }
        });
        Box::pin(async move { page })
    }

    fn read_ids(
        &self,
        topic: &str,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        let found = {
            let state = self.lock();
            state
                .topics
                .get(topic)
                .map(|log| {
                    log.entries
                        .iter()
                        .filter(|(offset, _)| ids.iter().any(|id| id.parse() == Ok(*offset)))
                        .map(TopicLog::stored)
                        .collect()
                })
                .unwrap_or_default()
        };
        Box::pin(async move { Ok(found) })
    }

    fn count(&self, topic: &str) -> BoxFuture<'_, Result<u64, Error>> {
        let count = self
            .lock()
            .topics
            .get(topic)
            .map_or(0, |log| log.entries.len() as u64);
        Box::pin(async move { Ok(count) })
    }

    fn delete(&self, topic: &str, ids: Vec<String>) -> BoxFuture<'_, Result<usize, Error>> {
        let removed = {
            let mut state = self.lock();
            match state.topics.get_mut(topic) {
                Some(log) => {
                    let before = log.entries.len();
                    log.entries
                        .retain(|(offset, _)| !ids.iter().any(|id| id.parse() == Ok(*offset)));
                    before - log.entries.len()
                }
                None => 0,
            }
        };
        self.touch();
        Box::pin(async move { Ok(removed) })
    }
}
