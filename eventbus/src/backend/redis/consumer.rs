//! One member of a consumer group: reads new entries with `XREADGROUP BLOCK`, claims idle
//! pending entries with `XAUTOCLAIM`, discovers new streams, and re-creates vanished groups.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::Stream;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamClaimReply, StreamId};

use super::config::StartFrom;
use super::keys::Keys;
use super::lease::InFlight;
use super::ownership::{Ownership, FENCED_CLAIM, FENCED_READ, FENCED_RECLAIM};
use super::read_reply::StreamEntries;
use super::{entry, now_ms, redis_error, Inner};
use crate::backend::{Acknowledger, Delivery, RetryState, SubscribeRequest};
use crate::error::Error;
use crate::pattern::Pattern;

pub(crate) struct StreamReader {
    inner: Arc<Inner>,
    group: String,
    consumer: String,
    pattern: Pattern,
    /// Streams found by pattern hold topics starting with this ([`SubscribeRequest::topic_prefix`]).
    topic_prefix: String,
    streams: Vec<String>,
    /// The group's retry stream: the one stream whose internal headers are trusted.
    retry_stream: String,
    /// Entries handed out and not settled yet, kept from other members' claims.
    in_flight: Arc<InFlight>,
    conn: Option<MultiplexedConnection>,
    /// Deliveries read and not handed out yet, with their stream.
    buffer: VecDeque<(String, Delivery)>,
    last_discovery: Instant,
    last_claim: Option<Instant>,
    claim_cursors: HashMap<String, String>,
    /// The partitions this reader holds, when members hold partitions exclusively.
    ownership: Option<Ownership>,
    /// Entries of held partitions given back unfinished (nacked or dropped), to deliver again
    /// before anything newer.
    redeliver: Arc<Redeliver>,
    /// The last entry id the group was given on each held partition, to wait for newer ones.
    last_ids: HashMap<String, String>,
    /// The next read of the held partitions, started while the buffer was still being handed
    /// out ([`Self::read_ahead`]).
    ahead: Option<futures::channel::oneshot::Receiver<ReadAhead>>,
}

/// A read of the held partitions and the retry stream made ahead of need, on the reader's own
/// connection, which it gives back.
struct ReadAhead {
    conn: MultiplexedConnection,
    held: Vec<(String, WatchedRead)>,
    retry: redis::RedisResult<Option<StreamEntries>>,
}

/// What a watched read of a held partition found ([`StreamReader::watched_read`]).
enum WatchedRead {
    /// The transaction ran (`Some`: its reply) or was aborted because the lease was touched
    /// (`None`: nothing read, the next step looks again).
    Ran(Option<Option<StreamEntries>>),
    /// The lease no longer holds the reader's token.
    Lost,
    /// Redis failed the read.
    Failed(redis::RedisError),
}

impl Drop for StreamReader {
    /// The subscription ended: hand the partitions over at once instead of letting the leases
    /// lapse.
    fn drop(&mut self) {
        if let Some(ownership) = &mut self.ownership {
            ownership.leave();
        }
    }
}

/// How long a reader on a cluster pauses when its partitions had nothing new.
const CLUSTER_POLL: Duration = Duration::from_millis(20);

/// An entry to deliver again: its stream, its id's (ms, seq) order, its id, and whether the
/// delivery it comes back from counts as an attempt (a nack does; a delivery dropped unsettled,
/// which may never have been started, does not).
type Queued = (String, (u64, u64), String, bool);

/// Entries to deliver again, by stream, in id order.
#[derive(Default)]
pub(super) struct Redeliver(Mutex<BTreeSet<Queued>>);

impl Redeliver {
    fn push(&self, stream: &str, id: &str, counted: bool) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        let order = (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0));
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert((
            stream.to_owned(),
            order,
            id.to_owned(),
            counted,
        ));
    }

    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The streams with entries queued.
    fn streams(&self) -> BTreeSet<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(stream, _, _, _)| stream.clone())
            .collect()
    }

    /// Takes every entry queued for `stream`, in id order, with whether it counts as an attempt.
    fn take(&self, stream: &str) -> Vec<(String, bool)> {
        let mut queued = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mine: Vec<_> = queued
            .iter()
            .filter(|(s, _, _, _)| s == stream)
            .cloned()
            .collect();
        for entry in &mine {
            queued.remove(entry);
        }
        mine.into_iter()
            .map(|(_, _, id, counted)| (id, counted))
            .collect()
    }
}

impl StreamReader {
    pub(crate) async fn start(inner: Arc<Inner>, request: SubscribeRequest) -> Result<Self, Error> {
        let consumer = format!("{}-{}", request.group, uuid::Uuid::now_v7().simple());
        let in_flight = InFlight::start(&inner, request.group.clone(), consumer.clone());
        let mut reader = StreamReader {
            in_flight,
            group: request.group.clone(),
            consumer,
            pattern: request.pattern.clone(),
            topic_prefix: request.topic_prefix.clone(),
            streams: Vec::new(),
            retry_stream: String::new(),
            conn: None,
            buffer: VecDeque::new(),
            last_discovery: Instant::now(),
            last_claim: None,
            claim_cursors: HashMap::new(),
            ownership: None,
            redeliver: Arc::default(),
            last_ids: HashMap::new(),
            ahead: None,
            inner,
        };
        let start = match reader.inner.config.start_from {
            StartFrom::Latest => "$",
            StartFrom::Earliest => "0",
        };
        let mut initial: Vec<String> = request
            .topics
            .iter()
            .flat_map(|t| reader.inner.topic_streams(t))
            .collect();
        initial.extend(reader.registered_streams().await?);
        initial.sort();
        initial.dedup();
        let mut conn = reader.inner.conn();
        for stream in &initial {
            reader
                .inner
                .ensure_group(&mut conn, stream, &reader.group, start)
                .await?;
        }
        let retry = reader.inner.keys.retry_stream(&reader.group);
        reader
            .inner
            .ensure_group(&mut conn, &retry, &reader.group, "0")
            .await?;
        if reader.inner.config.exclusive_partitions {
            let mut ownership = Ownership::new(
                reader.inner.clone(),
                reader.group.clone(),
                reader.consumer.clone(),
            );
            ownership.add_partitions(initial.iter().cloned());
            reader.ownership = Some(ownership);
        }
        reader.streams = initial;
        reader.streams.push(retry.clone());
        reader.inner.note_read(&reader.streams);
        reader.count_trimmed_unread().await;
        reader.retry_stream = retry;
        Ok(reader)
    }

    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Delivery, Error>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            let item = reader.next().await;
            Some((item, reader))
        })
    }

    /// Whether a claim pass is due (every `claim_interval`); starts the next interval when so.
    fn claim_due(&mut self) -> bool {
        let due = self.claim_is_due();
        if due {
            self.last_claim = Some(Instant::now());
        }
        due
    }

    /// Whether a claim pass is due, without starting the next interval.
    fn claim_is_due(&self) -> bool {
        self.last_claim
            .is_none_or(|t| t.elapsed() >= self.inner.config.claim_interval)
    }

    /// Streams in the registry whose event types match the pattern.
    async fn registered_streams(&self) -> Result<Vec<String>, Error> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.inner.keys.registry())
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error("SMEMBERS"))?;
        Ok(members
            .iter()
            .filter_map(|m| Keys::parse_registry_member(m))
            .filter(|(stream, event_type)| {
                self.pattern.matches(event_type)
                    && Keys::topic_of(stream).starts_with(self.topic_prefix.as_str())
            })
            .map(|(stream, _)| stream.to_owned())
            .collect())
    }

    async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            self.hold_back_for_redeliveries();
            if let Some((_, delivery)) = self.buffer.pop_front() {
                self.read_ahead();
                return Ok(delivery);
            }
            if self.last_discovery.elapsed() >= self.inner.config.discovery_interval {
                self.discover().await?;
            }
            if self.ownership.is_some() {
                self.next_exclusive().await?;
                continue;
            }
            if self.claim_due() {
                self.claim().await?;
                continue;
            }
            self.read().await?;
        }
    }

    /// Counts entries retention removed before this group read them: on each stream, entries
    /// ever added minus entries left is what retention removed; what of it the group never
    /// read (`entries-read` below that) is lost to it. Each loss is counted once across members
    /// and restarts (`{prefix}:trimmed:{group}` keeps the count reported per stream).
    async fn count_trimmed_unread(&self) {
        for stream in &self.streams {
            match self.trimmed_unread(stream).await {
                Ok(Some(lost)) if lost > 0 => {
                    self.inner
                        .counters
                        .retention_dropped(stream, &self.group, lost);
                    tracing::error!(
                        %stream,
                        group = %self.group,
                        lost,
                        "retention removed entries before this group read them; they are lost to it"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%stream, group = %self.group, %error, "trimmed entries not checked")
                }
            }
        }
    }

    /// How many entries of `stream` retention removed unread by this group since the last
    /// report (`None` when Redis does not know how many the group read).
    async fn trimmed_unread(&self, stream: &str) -> Result<Option<u64>, Error> {
        let mut conn = self.inner.conn();
        let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("XINFO STREAM"))?;
        let number = |map: &HashMap<String, redis::Value>, field: &str| -> Option<u64> {
            match map.get(field)? {
                redis::Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            }
        };
        let (Some(added), Some(length)) = (number(&info, "entries-added"), number(&info, "length"))
        else {
            return Ok(None);
        };
        let Some(read) = self
            .own_group_info(stream)
            .await?
            .and_then(|g| number(&g, "entries-read"))
        else {
            return Ok(None);
        };
        let removed = added.saturating_sub(length);
        let lost = removed.saturating_sub(read);
        if lost == 0 {
            return Ok(Some(0));
        }
        // Report only what no member reported before.
        let newly: u64 = redis::Script::new(
            "local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') \
             local new = tonumber(ARGV[2]) \
             if new > old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return new - old end \
             return 0",
        )
        .key(self.inner.keys.trimmed(&self.group))
        .arg(stream)
        .arg(lost)
        .invoke_async(&mut conn)
        .await
        .map_err(redis_error("EVALSHA"))?;
        Ok(Some(newly))
    }

    async fn discover(&mut self) -> Result<(), Error> {
        self.last_discovery = Instant::now();
        self.count_trimmed_unread().await;
        let found = self.registered_streams().await?;
        let mut conn = self.inner.conn();
        for stream in found {
            if !self.streams.contains(&stream) {
                // Created after we started: read it from the beginning.
                self.inner
                    .ensure_group(&mut conn, &stream, &self.group, "0")
                    .await?;
                tracing::info!(%stream, group = %self.group, "discovered stream");
                self.inner.note_read(std::slice::from_ref(&stream));
                if let Some(ownership) = &mut self.ownership {
                    ownership.add_partitions([stream.clone()]);
                }
                self.streams.push(stream);
            }
        }
        Ok(())
    }

    async fn recreate_groups(&mut self) -> Result<(), Error> {
        self.inner
            .counters
            .groups_recreated
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(group = %self.group, "consumer group or stream vanished (NOGROUP); re-creating");
        let mut conn = self.inner.conn();
        for stream in &self.streams {
            self.inner
                .ensure_group(&mut conn, stream, &self.group, "0")
                .await?;
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<(), Error> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.inner.blocking_connection().await?),
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.inner.config.batch_size)
            .arg("BLOCK")
            .arg(self.inner.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.streams);
        for _ in &self.streams {
            cmd.arg(">");
        }
        let reply: redis::RedisResult<Option<StreamEntries>> = cmd.query_async(conn).await;
        match reply {
            Ok(Some(reply)) => {
                self.buffer_entries(reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if e.code() == Some("NOGROUP") => self.recreate_groups().await,
            Err(e) => Err(self.own_connection_failed("XREADGROUP", e)),
        }
    }

    /// Claims entries idle for longer than `claim_idle` from any member of the group.
    async fn claim(&mut self) -> Result<(), Error> {
        let idle = self.inner.config.claim_idle.as_millis() as u64;
        let mut conn = self.inner.conn();
        let streams = if self.ownership.is_some() {
            // Held partitions are claimed by their owner on takeover; only the retry stream
            // is shared by the group's members.
            vec![self.retry_stream.clone()]
        } else {
            self.streams.clone()
        };
        for stream in streams {
            let cursor = self
                .claim_cursors
                .get(&stream)
                .cloned()
                .unwrap_or_else(|| "0-0".to_owned());
            let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.inner.config.batch_size)
                .query_async(&mut conn)
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) if e.code() == Some("NOGROUP") => return self.recreate_groups().await,
                Err(e) => return Err(Error::backend("redis", "XAUTOCLAIM", e)),
            };
            self.claim_cursors
                .insert(stream.clone(), reply.next_stream_id.clone());
            if !reply.deleted_ids.is_empty() {
                // Trimmed by retention while pending: nothing left to deliver. Never silent.
                self.inner.counters.retention_dropped(
                    &stream,
                    &self.group,
                    reply.deleted_ids.len() as u64,
                );
                tracing::error!(
                    %stream,
                    group = %self.group,
                    ids = ?reply.deleted_ids,
                    "retention trimmed entries this group had not finished handling; they are lost to it"
                );
                redis::cmd("XACK")
                    .arg(&stream)
                    .arg(&self.group)
                    .arg(&reply.deleted_ids)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error("XACK"))?;
            }
            if reply.claimed.is_empty() {
                continue;
            }
            self.push_claimed(&stream, &reply.claimed).await?;
        }
        Ok(())
    }

    /// Buffers claimed entries with their redelivery counts (from the pending list).
    async fn push_claimed(&mut self, stream: &str, claimed: &[StreamId]) -> Result<(), Error> {
        if claimed.is_empty() {
            return Ok(());
        }
        let mut conn = self.inner.conn();
        let mut pipe = redis::pipe();
        for entry in claimed {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let counts: Vec<Vec<(String, String, u64, u64)>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(redis_error("XPENDING"))?;
        self.inner
            .counters
            .claimed
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        for (entry, count) in claimed.iter().zip(counts) {
            let delivered = count.first().map(|c| c.3).unwrap_or(1);
            let redeliveries = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
            tracing::info!(%stream, id = %entry.id, redeliveries, "claimed pending entry");
            let delivery = self.delivery(stream, &entry.id, &entry.map, redeliveries);
            self.buffer.push_back((stream.to_owned(), delivery));
        }
        Ok(())
    }

    /// An entry of a held partition was handed back: nothing of its partition read after it may
    /// be handed out first. Buffered deliveries of that partition are dropped (queued for
    /// redelivery with it, in id order).
    fn hold_back_for_redeliveries(&mut self) {
        if self.ownership.is_none() || self.buffer.is_empty() {
            return;
        }
        let streams = self.redeliver.streams();
        if streams.is_empty() {
            return;
        }
        let buffered = std::mem::take(&mut self.buffer);
        for (stream, delivery) in buffered {
            if streams.contains(&stream) {
                delivery.acker.release();
            } else {
                self.buffer.push_back((stream, delivery));
            }
        }
    }

    /// One step of a reader that holds partitions: beat when due, claim what a takeover or a
    /// nack left pending, read new entries of held partitions and the retry stream, or wait
    /// for new entries until the next beat.
    async fn next_exclusive(&mut self) -> Result<(), Error> {
        let Some(ownership) = self.ownership.as_mut() else {
            return Ok(());
        };
        if ownership.until_beat().is_zero() {
            ownership.beat(&self.in_flight).await?;
        }
        let taken = self
            .ownership
            .as_mut()
            .map(Ownership::take_taken)
            .unwrap_or_default();
        for (i, stream) in taken.iter().enumerate() {
            self.last_ids.remove(stream);
            if let Err(error) = self.reclaim(stream).await {
                // Not reclaimed yet: again on the next step, before anything new is read.
                if let Some(ownership) = &mut self.ownership {
                    ownership.retake(taken[i..].iter().cloned());
                }
                return Err(error);
            }
        }
        if !self.buffer.is_empty() {
            return Ok(());
        }
        let readable = self
            .ownership
            .as_ref()
            .map(Ownership::readable)
            .unwrap_or_default();
        for (stream, token) in &readable {
            let ids = self.redeliver.take(stream);
            if ids.is_empty() {
                continue;
            }
            if let Err(error) = self.claim_again(stream, token, &ids).await {
                // Still owed: queued again, delivered before anything newer once Redis answers.
                for (id, counted) in &ids {
                    self.redeliver.push(stream, id, *counted);
                }
                return Err(error);
            }
        }
        if !self.buffer.is_empty() {
            return Ok(());
        }
        if self.claim_due() {
            self.claim().await?;
            let idle = self.inner.config.claim_idle.as_millis() as u64;
            for (stream, _) in &readable {
                self.reclaim_idle(stream, idle).await?;
            }
            if !self.buffer.is_empty() {
                return Ok(());
            }
        }
        // A read made ahead stands for this step's reads. Otherwise the retry stream is read on
        // the shared connection while the held partitions are read on this reader's own: its
        // round trip overlaps theirs instead of following them. Its entries are buffered after
        // theirs, and even when a held read failed (they are read and pending for this
        // consumer: dropping them would leave them to the next claim).
        if let Some(ahead) = self.ahead.take() {
            self.take_read_ahead(ahead).await?;
        } else {
            let retry = self.read_retry();
            let held = async {
                for (stream, token) in &readable {
                    self.read_held(stream, token).await?;
                }
                Ok::<(), Error>(())
            };
            let (held, retry) = futures::join!(held, retry);
            let retried = self.buffer_retry(retry).await;
            held?;
            retried?;
        }
        if !self.buffer.is_empty() {
            return Ok(());
        }
        self.wait(&readable).await
    }

    /// Runs a fenced script; `Ok(None)` when the lease moved on (the partition is dropped).
    async fn fenced<T: redis::FromRedisValue>(
        &mut self,
        stream: &str,
        call: redis::ScriptInvocation<'_>,
        operation: &'static str,
    ) -> Result<Option<T>, Error> {
        match call.invoke_async::<T>(&mut self.inner.conn()).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.code() == Some("LEASELOST") || e.to_string().contains("LEASELOST") => {
                if let Some(ownership) = &mut self.ownership {
                    ownership.lost(stream);
                }
                Ok(None)
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                self.recreate_groups().await?;
                Ok(None)
            }
            Err(e) => Err(Error::backend("redis", operation, e)),
        }
    }

    /// Claims every entry of a partition just taken that is still pending for the group (the
    /// previous owner's unfinished ones), in id order, before anything new is read.
    async fn reclaim(&mut self, stream: &str) -> Result<(), Error> {
        self.reclaim_idle(stream, 0).await
    }

    /// Claims the entries of a held partition pending longer than `min_idle_ms`: with 0, all of
    /// them (a takeover); with `claim_idle`, those nobody here is handling (entries in flight
    /// here have their idle time reset every `claim_idle / 3`): entries whose read reply or
    /// acknowledgement was lost with a connection. They are delivered again (the inbox drops
    /// what was already handled).
    async fn reclaim_idle(&mut self, stream: &str, min_idle_ms: u64) -> Result<(), Error> {
        let script = redis::Script::new(FENCED_RECLAIM);
        let mut cursor = "0-0".to_owned();
        loop {
            let Some(token) = self
                .ownership
                .as_ref()
                .and_then(|o| o.token(stream))
                .map(str::to_owned)
            else {
                return Ok(());
            };
            let mut call = script.key(Keys::lease(stream, &self.group));
            call.key(stream)
                .arg(&token)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(&cursor)
                .arg(self.inner.config.batch_size)
                .arg(min_idle_ms);
            let Some(reply) = self
                .fenced::<StreamAutoClaimReply>(stream, call, "XAUTOCLAIM")
                .await?
            else {
                return Ok(());
            };
            if !reply.deleted_ids.is_empty() {
                self.inner.counters.retention_dropped(
                    stream,
                    &self.group,
                    reply.deleted_ids.len() as u64,
                );
                tracing::error!(%stream, group = %self.group, ids = ?reply.deleted_ids, "retention trimmed entries this group had not finished handling; they are lost to it");
                redis::cmd("XACK")
                    .arg(stream)
                    .arg(&self.group)
                    .arg(&reply.deleted_ids)
                    .query_async::<()>(&mut self.inner.conn())
                    .await
                    .map_err(redis_error("XACK"))?;
            }
            self.push_claimed(stream, &reply.claimed).await?;
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            cursor = reply.next_stream_id;
        }
    }

    /// Claims entries of a held partition again (they were nacked or dropped here) to deliver
    /// them before anything newer, in id order. A nacked entry's delivery count goes up (an
    /// attempt); a dropped one's does not (`XCLAIM ... JUSTID`, then its fields read back).
    async fn claim_again(
        &mut self,
        stream: &str,
        token: &str,
        ids: &[(String, bool)],
    ) -> Result<(), Error> {
        let script = redis::Script::new(FENCED_CLAIM);
        let counted: Vec<&String> = ids.iter().filter(|(_, c)| *c).map(|(id, _)| id).collect();
        let uncounted: Vec<&String> = ids.iter().filter(|(_, c)| !*c).map(|(id, _)| id).collect();
        let mut claimed: Vec<StreamId> = Vec::new();
        if !counted.is_empty() {
            let mut call = script.key(Keys::lease(stream, &self.group));
            call.key(stream)
                .arg(token)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(&counted);
            match self
                .fenced::<StreamClaimReply>(stream, call, "XCLAIM")
                .await?
            {
                Some(reply) => claimed.extend(reply.ids),
                None => return Ok(()),
            }
        }
        if !uncounted.is_empty() {
            let mut call = script.key(Keys::lease(stream, &self.group));
            call.key(stream)
                .arg(token)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(&uncounted)
                .arg("JUSTID");
            let Some(kept) = self.fenced::<Vec<String>>(stream, call, "XCLAIM").await? else {
                return Ok(());
            };
            for id in kept {
                let read: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(&id)
                    .arg(&id)
                    .query_async(&mut self.inner.conn())
                    .await
                    .map_err(redis_error("XRANGE"))?;
                claimed.extend(read.ids);
            }
        }
        claimed.sort_by_key(|e| super::entry_order(&e.id));
        self.push_claimed(stream, &claimed).await
    }

    /// Reads new entries of a held partition under its lease.
    async fn read_held(&mut self, stream: &str, token: &str) -> Result<(), Error> {
        let reply = if self.inner.config.cluster {
            let script = redis::Script::new(FENCED_READ);
            let mut call = script.key(Keys::lease(stream, &self.group));
            call.key(stream)
                .arg(token)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.inner.config.batch_size);
            self.fenced::<Option<StreamEntries>>(stream, call, "XREADGROUP")
                .await?
        } else {
            self.watched_read(stream, token).await?
        };
        self.buffer_held(reply);
        Ok(())
    }

    /// The fenced read of [`FENCED_READ`] on a single server, on this reader's own connection:
    /// `WATCH` the lease and check it still holds `token`, then `XREADGROUP` in a
    /// `MULTI`/`EXEC` that runs only if the lease was not touched in between. Two round trips,
    /// but the entries do not pass through Lua, which costs the server several times the read
    /// itself. `Ok(None)`: nothing read (the lease is lost, or it changed and the next step
    /// looks again).
    async fn watched_read(
        &mut self,
        stream: &str,
        token: &str,
    ) -> Result<Option<Option<StreamEntries>>, Error> {
        let lease = Keys::lease(stream, &self.group);
        let read_new = self.new_entries(stream);
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.inner.blocking_connection().await?),
        };
        let read = watched_read(conn, &lease, token, read_new).await;
        self.settle_watched(stream, read).await
    }

    /// What a watched read means for the reader: its reply, or nothing read (the partition is
    /// dropped when its lease was lost; vanished groups are re-created).
    async fn settle_watched(
        &mut self,
        stream: &str,
        read: WatchedRead,
    ) -> Result<Option<Option<StreamEntries>>, Error> {
        match read {
            WatchedRead::Ran(read) => Ok(read),
            WatchedRead::Lost => {
                if let Some(ownership) = &mut self.ownership {
                    ownership.lost(stream);
                }
                Ok(None)
            }
            WatchedRead::Failed(e) if e.code() == Some("NOGROUP") => {
                self.recreate_groups().await?;
                Ok(None)
            }
            WatchedRead::Failed(e) => Err(self.own_connection_failed("XREADGROUP", e)),
        }
    }

    /// Buffers the entries a read of a held partition returned.
    fn buffer_held(&mut self, reply: Option<Option<StreamEntries>>) {
        let Some(Some(reply)) = reply else {
            return;
        };
        for read in &reply.streams {
            if let Some(last) = read.entries.last() {
                self.last_ids.insert(read.key.clone(), last.id.clone());
            }
        }
        self.buffer_entries(reply);
    }

    /// Buffers every entry a read returned, as a first delivery.
    fn buffer_entries(&mut self, reply: StreamEntries) {
        for read in reply.streams {
            for entry in read.entries {
                let delivery = self.delivery(&read.key, &entry.id, entry.fields.as_slice(), 0);
                self.buffer.push_back((read.key.clone(), delivery));
            }
        }
    }

    /// Starts the next read of the held partitions and the retry stream while the buffer is
    /// still being handed out, so that the consumer is not left waiting for it once the buffer
    /// is empty. Only when nothing is owed first (a beat, partitions just taken, entries to
    /// deliver again, a claim pass) and on a single server; its entries are buffered at the
    /// step that would otherwise read ([`Self::take_read_ahead`]), so they come in the order a
    /// read at that step would give. Each read is fenced by its partition's lease, as any
    /// other, and what it read counts as in flight at once (kept from claims, its partition
    /// kept until they are settled); entries it read and nobody takes (the subscription
    /// ended) stay pending for this member, to be claimed by the partition's next holder.
    fn read_ahead(&mut self) {
        if self.ahead.is_some()
            || self.inner.config.cluster
            || self.buffer.len() >= self.inner.config.batch_size
            || !self.redeliver.is_empty()
        {
            return;
        }
        let Some(ownership) = &self.ownership else {
            return;
        };
        if ownership.until_beat().is_zero() || ownership.has_taken() {
            return;
        }
        if self.claim_is_due() {
            return;
        }
        let readable = ownership.readable();
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let reads: Vec<(String, String, String, redis::Cmd)> = readable
            .into_iter()
            .map(|(stream, token)| {
                let lease = Keys::lease(&stream, &self.group);
                let read = self.new_entries(&stream);
                (stream, lease, token, read)
            })
            .collect();
        let retry = self.read_retry();
        let in_flight = self.in_flight.clone();
        let (tx, rx) = futures::channel::oneshot::channel();
        self.inner.runtime.spawn(Box::pin(async move {
            // What is read is in flight from then on, though not handed out yet: its idle
            // time is kept fresh so that no claim pass takes it, and its partition is not
            // handed over before it is settled.
            let keep = |reply: &StreamEntries| {
                for read in &reply.streams {
                    for entry in &read.entries {
                        in_flight.insert(&read.key, &entry.id);
                    }
                }
            };
            let held = async {
                let mut held = Vec::with_capacity(reads.len());
                for (stream, lease, token, read) in reads {
                    let read = watched_read(&mut conn, &lease, &token, read).await;
                    if let WatchedRead::Ran(Some(Some(reply))) = &read {
                        keep(reply);
                    }
                    held.push((stream, read));
                }
                held
            };
            let (held, retry) = futures::join!(held, retry);
            if let Ok(Some(reply)) = &retry {
                keep(reply);
            }
            let _ = tx.send(ReadAhead { conn, held, retry });
        }));
        self.ahead = Some(rx);
    }

    /// Buffers what a read made ahead found, as the reads it stands for would have.
    async fn take_read_ahead(
        &mut self,
        ahead: futures::channel::oneshot::Receiver<ReadAhead>,
    ) -> Result<(), Error> {
        // The task ends only by sending, unless the runtime dropped it.
        let Ok(ReadAhead { conn, held, retry }) = ahead.await else {
            return Ok(());
        };
        self.conn = Some(conn);
        let mut failed = None;
        for (stream, read) in held {
            match self.settle_watched(&stream, read).await {
                Ok(reply) => self.buffer_held(reply),
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        let retried = self.buffer_retry(retry).await;
        failed.map_or(Ok(()), Err)?;
        retried
    }

    /// Reads the group's retry stream (on the shared connection, without borrowing the reader,
    /// so it can run beside a read of the held partitions); [`Self::buffer_retry`] takes the
    /// reply.
    fn read_retry(&self) -> impl Future<Output = redis::RedisResult<Option<StreamEntries>>> {
        let read = self.new_entries(&self.retry_stream);
        let mut conn = self.inner.conn();
        async move { read.query_async(&mut conn).await }
    }

    /// Buffers the entries of a retry-stream read ([`Self::read_retry`]).
    async fn buffer_retry(
        &mut self,
        reply: redis::RedisResult<Option<StreamEntries>>,
    ) -> Result<(), Error> {
        match reply {
            Ok(reply) => {
                self.buffer_entries(reply.unwrap_or_default());
                Ok(())
            }
            Err(e) if e.code() == Some("NOGROUP") => self.recreate_groups().await,
            Err(e) => Err(Error::backend("redis", "XREADGROUP", e)),
        }
    }

    /// Waits (`XREAD BLOCK`, which changes nothing) until a held partition or the retry stream
    /// has an entry newer than the group last got, or the next beat is due.
    async fn wait(&mut self, readable: &[(String, String)]) -> Result<(), Error> {
        let until_beat = self
            .ownership
            .as_ref()
            .map(Ownership::until_beat)
            .unwrap_or(self.inner.config.block);
        let block = self
            .inner
            .config
            .block
            .min(until_beat)
            .max(Duration::from_millis(1));
        if self.inner.config.cluster {
            // One `XREAD` cannot span the slots of a cluster: look again after a short pause.
            self.inner.runtime.sleep(block.min(CLUSTER_POLL)).await;
            return Ok(());
        }
        let mut streams = Vec::new();
        let mut ids = Vec::new();
        for (stream, _) in readable {
            let last = match self.last_ids.get(stream) {
                Some(id) => id.clone(),
                None => {
                    let id = self.group_last_id(stream).await?;
                    self.last_ids.insert(stream.clone(), id.clone());
                    id
                }
            };
            streams.push(stream.clone());
            ids.push(last);
        }
        streams.push(self.retry_stream.clone());
        ids.push("$".to_owned());
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.inner.blocking_connection().await?),
        };
        let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&ids)
            .query_async(conn)
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(e) => Err(self.own_connection_failed("XREAD", e)),
        }
    }

    /// A command on this reader's own connection failed: the connection is dropped (and made
    /// again by the next command) when the failure was the connection's.
    fn own_connection_failed(&mut self, operation: &'static str, e: redis::RedisError) -> Error {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            self.conn = None;
        }
        Error::backend("redis", operation, e)
    }

    /// `XREADGROUP` of up to a batch of `stream`'s entries new to the group, without blocking.
    fn new_entries(&self, stream: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.inner.config.batch_size)
            .arg("STREAMS")
            .arg(stream)
            .arg(">");
        cmd
    }

    /// This reader's group as `XINFO GROUPS` describes it on `stream` (`None`: no such group).
    async fn own_group_info(
        &self,
        stream: &str,
    ) -> Result<Option<HashMap<String, redis::Value>>, Error> {
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error("XINFO GROUPS"))?;
        Ok(groups.into_iter().find(|g| {
            matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n.as_slice() == self.group.as_bytes())
        }))
    }

    /// The id of the last entry `stream` handed to the group (`0-0` when none).
    async fn group_last_id(&self, stream: &str) -> Result<String, Error> {
        Ok(self
            .own_group_info(stream)
            .await?
            .and_then(|g| match g.get("last-delivered-id") {
                Some(redis::Value::BulkString(id)) => String::from_utf8(id.clone()).ok(),
                Some(redis::Value::SimpleString(id)) => Some(id.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "0-0".to_owned()))
    }

    fn delivery<F: entry::Fields + ?Sized>(
        &self,
        stream: &str,
        id: &str,
        map: &F,
        redeliveries: u32,
    ) -> Delivery {
        let fallback_topic = Keys::topic_of(stream);
        let retry = stream == self.retry_stream;
        // A live stream: internal headers and a `topic` field there were forged (or copied by a
        // foreign producer); only the group's retry stream carries trusted ones.
        let mut message = entry::from_fields(fallback_topic, map, retry);
        if !retry {
            message.strip_internal_headers();
        }
        Delivery {
            message,
            redeliveries,
            acker: {
                self.in_flight.insert(stream, id);
                let held = self.ownership.as_ref().and_then(|o| o.token(stream));
                Box::new(RedisAcker {
                    inner: self.inner.clone(),
                    stream: stream.to_owned(),
                    group: self.group.clone(),
                    id: id.to_owned(),
                    in_flight: self.in_flight.clone(),
                    fence: held.map(|token| (Keys::lease(stream, &self.group), token.to_owned())),
                    redeliver: held.map(|_| self.redeliver.clone()),
                    settled: false,
                    released: false,
                    acked: false,
                })
            },
        }
    }
}

/// Settles one stream entry.
struct RedisAcker {
    inner: Arc<Inner>,
    stream: String,
    group: String,
    id: String,
    in_flight: Arc<InFlight>,
    /// The lease (key, token) of the held partition the entry was read from.
    fence: Option<(String, String)>,
    /// Where an entry of a held partition goes when it is given back unfinished.
    redeliver: Option<Arc<Redeliver>>,
    settled: bool,
    /// Handed back unstarted ([`Acknowledger::release`]): not an attempt.
    released: bool,
    /// Acknowledged: its names moved into the queued acknowledgement.
    acked: bool,
}

impl Drop for RedisAcker {
    /// Settled or abandoned: either way the entry is no longer being handled here. An entry of a
    /// held partition given back unfinished is delivered again by this reader before anything
    /// newer; otherwise, after `claim_idle`, any member may claim it.
    fn drop(&mut self) {
        if !self.settled {
            if let Some(redeliver) = &self.redeliver {
                redeliver.push(&self.stream, &self.id, !self.released);
            }
        }
        if !self.acked {
            self.in_flight.remove(&self.stream, &self.id);
        }
    }
}

impl Acknowledger for RedisAcker {
    /// Queues the `XACK` for the next batch (see the `acks` module).
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.settled = true;
        // Its names move into the queued acknowledgement; it stops counting as in flight here
        // once the acknowledgement counts as queued.
        self.acked = true;
        let ack = super::acks::Ack {
            stream: std::mem::take(&mut self.stream),
            group: std::mem::take(&mut self.group),
            id: std::mem::take(&mut self.id),
            fence: self.fence.take(),
        };
        let in_flight = &self.in_flight;
        let result = self
            .inner
            .acks
            .push(ack, |ack| in_flight.remove(&ack.stream, &ack.id));
        Box::pin(async move { result })
    }

    /// Leaves the entry pending. On a held partition this reader delivers it again before
    /// anything newer of the partition; otherwise any member claims it after `claim_idle`.
    /// Either way its delivery count becomes the attempt count.
    fn nack(self: Box<Self>, _state: RetryState) -> BoxFuture<'static, Result<(), Error>> {
        drop(self);
        crate::ready::done()
    }

    /// Queued for redelivery by this reader, without counting an attempt (on a held
    /// partition); otherwise left pending like a dropped delivery.
    fn release(mut self: Box<Self>) {
        self.released = true;
    }

    fn can_defer(&self) -> bool {
        true
    }

    fn defer(
        mut self: Box<Self>,
        delay: Duration,
        state: RetryState,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let mut conn = self.inner.conn();
            let read: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(&self.id)
                .arg(&self.id)
                .query_async(&mut conn)
                .await
                .map_err(redis_error("XRANGE"))?;
            let Some(entry) = read.ids.first() else {
                // Trimmed meanwhile: nothing to retry.
                return Acknowledger::ack(self).await;
            };
            let fallback_topic = Keys::topic_of(&self.stream).to_owned();
            let mut message = entry::from_fields(&fallback_topic, &entry.map, true);
            message.set_retry_state(&state);
            let due = now_ms().saturating_add(delay.as_millis() as u64);
            let member = super::delayed::member(
                &self.inner.keys.retry_stream(&self.group),
                &self.id,
                &self.group,
                &message,
            );
            if conn.is_cluster() {
                // The delayed set and the stream live in different slots: scheduled first,
                // then acknowledged. A crash in between delivers the entry again as well; the
                // inbox drops the second copy.
                redis::cmd("ZADD")
                    .arg(self.inner.keys.delayed())
                    .arg(due)
                    .arg(member)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error("defer"))?;
                self.settled = true;
                let ack = match &self.fence {
                    Some((lease, token)) => redis::Script::new(super::acks::FENCED_ACK)
                        .key(&self.stream)
                        .key(lease)
                        .arg(&self.group)
                        .arg(&self.id)
                        .arg(token)
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map(drop),
                    None => {
                        redis::cmd("XACK")
                            .arg(&self.stream)
                            .arg(&self.group)
                            .arg(&self.id)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                };
                ack.map_err(redis_error("defer"))?;
            } else {
                redis::pipe()
                    .atomic()
                    .cmd("ZADD")
                    .arg(self.inner.keys.delayed())
                    .arg(due)
                    .arg(member)
                    .ignore()
                    .cmd("XACK")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(&self.id)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_error("defer"))?;
                self.settled = true;
            }
            self.inner.counters.deferred.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// The fenced read of [`FENCED_READ`] on a single server, on a reader's own connection:
/// `WATCH` the lease and check it still holds `token`, then `read` in a `MULTI`/`EXEC` that
/// runs only if the lease was not touched in between.
async fn watched_read(
    conn: &mut MultiplexedConnection,
    lease: &str,
    token: &str,
    read: redis::Cmd,
) -> WatchedRead {
    let watched: redis::RedisResult<((), Option<String>)> = redis::pipe()
        .cmd("WATCH")
        .arg(lease)
        .cmd("GET")
        .arg(lease)
        .query_async(conn)
        .await;
    match watched {
        Ok((_, held)) if held.as_deref() == Some(token) => {
            let mut transaction = redis::pipe();
            transaction.atomic().add_command(read);
            match transaction
                .query_async::<Option<(Option<StreamEntries>,)>>(conn)
                .await
            {
                Ok(executed) => WatchedRead::Ran(executed.map(|(reply,)| reply)),
                Err(e) => WatchedRead::Failed(e),
            }
        }
        Ok(_) => {
            let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query_async(conn).await;
            WatchedRead::Lost
        }
        Err(e) => WatchedRead::Failed(e),
    }
}
