//! One member of a consumer group: reads new entries with `XREADGROUP BLOCK`, claims idle
//! pending entries with `XAUTOCLAIM`, discovers new streams, and re-creates vanished groups.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::Stream;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use super::config::StartFrom;
use super::keys::Keys;
use super::lease::InFlight;
use super::{entry, now_ms, redis_error, Inner};
use crate::backend::{Acknowledger, Delivery, RetryState, SubscribeRequest};
use crate::error::Error;
use crate::pattern::Pattern;

pub(crate) struct StreamReader {
    inner: Arc<Inner>,
    group: String,
    consumer: String,
    pattern: Pattern,
    streams: Vec<String>,
    /// The group's retry stream: the one stream whose internal headers are trusted.
    retry_stream: String,
    /// Entries handed out and not settled yet, kept from other members' claims.
    in_flight: Arc<InFlight>,
    conn: Option<MultiplexedConnection>,
    buffer: VecDeque<Delivery>,
    last_discovery: Instant,
    last_claim: Option<Instant>,
    claim_cursors: HashMap<String, String>,
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
            streams: Vec::new(),
            retry_stream: String::new(),
            conn: None,
            buffer: VecDeque::new(),
            last_discovery: Instant::now(),
            last_claim: None,
            claim_cursors: HashMap::new(),
            inner,
        };
        let start = match reader.inner.config.start_from {
            StartFrom::Latest => "$",
            StartFrom::Earliest => "0",
        };
        let mut initial: Vec<String> = request
            .topics
            .iter()
            .map(|t| reader.inner.keys.stream(t, None))
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
            .filter(|(_, event_type)| self.pattern.matches(event_type))
            .map(|(stream, _)| stream.to_owned())
            .collect())
    }

    async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(delivery);
            }
            if self.last_discovery.elapsed() >= self.inner.config.discovery_interval {
                self.discover().await?;
            }
            let claim_due = self
                .last_claim
                .is_none_or(|t| t.elapsed() >= self.inner.config.claim_interval);
            if claim_due {
                self.last_claim = Some(Instant::now());
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
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("XINFO GROUPS"))?;
        let Some(read) = groups
            .iter()
            .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n.as_slice() == self.group.as_bytes()))
            .and_then(|g| number(g, "entries-read"))
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
        let reply: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(conn).await;
        match reply {
            Ok(Some(reply)) => {
                for key in reply.keys {
                    for entry in key.ids {
                        self.buffer
                            .push_back(self.delivery(&key.key, &entry.id, &entry.map, 0));
                    }
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) if e.code() == Some("NOGROUP") => self.recreate_groups().await,
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.conn = None;
                }
                Err(Error::backend("redis", "XREADGROUP", e))
            }
        }
    }

    /// Claims entries idle for longer than `claim_idle` from any member of the group.
    async fn claim(&mut self) -> Result<(), Error> {
        let idle = self.inner.config.claim_idle.as_millis() as u64;
        let mut conn = self.inner.conn();
        for stream in self.streams.clone() {
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
            let mut pipe = redis::pipe();
            for entry in &reply.claimed {
                pipe.cmd("XPENDING")
                    .arg(&stream)
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
                .fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
            for (entry, count) in reply.claimed.iter().zip(counts) {
                let delivered = count.first().map(|c| c.3).unwrap_or(1);
                let redeliveries = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
                tracing::info!(%stream, id = %entry.id, redeliveries, "claimed idle pending entry");
                self.buffer
                    .push_back(self.delivery(&stream, &entry.id, &entry.map, redeliveries));
            }
        }
        Ok(())
    }

    fn delivery(
        &self,
        stream: &str,
        id: &str,
        map: &HashMap<String, redis::Value>,
        redeliveries: u32,
    ) -> Delivery {
        let fallback_topic = stream.rsplit(':').next().unwrap_or(stream);
        let mut message = entry::from_fields(fallback_topic, map);
        if stream != self.retry_stream {
            // A live stream: internal headers and a `topic` field there were forged (or copied
            // by a foreign producer); only the group's retry stream carries trusted ones.
            message.strip_internal_headers();
            message.topic = fallback_topic.to_owned();
        }
        Delivery {
            message,
            redeliveries,
            acker: {
                self.in_flight.insert(stream, id);
                Box::new(RedisAcker {
                    inner: self.inner.clone(),
                    stream: stream.to_owned(),
                    group: self.group.clone(),
                    id: id.to_owned(),
                    in_flight: self.in_flight.clone(),
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
}

impl Drop for RedisAcker {
    /// Settled or abandoned: either way the entry is no longer being handled here, and after
    /// `claim_idle` it may be claimed (redelivered) if it was not acknowledged.
    fn drop(&mut self) {
        self.in_flight.remove(&self.stream, &self.id);
    }
}

impl Acknowledger for RedisAcker {
    /// Queues the `XACK` for the next batch (see the `acks` module).
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        let result = self.inner.acks.push(super::acks::Ack {
            stream: self.stream.clone(),
            group: self.group.clone(),
            id: self.id.clone(),
        });
        Box::pin(async move { result })
    }

    /// Leaves the entry pending: it is claimed again after `claim_idle`, with its delivery
    /// count as the attempt count.
    fn nack(self: Box<Self>, _state: RetryState) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn can_defer(&self) -> bool {
        true
    }

    fn defer(
        self: Box<Self>,
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
            let fallback_topic = self
                .stream
                .rsplit(':')
                .next()
                .unwrap_or(&self.stream)
                .to_owned();
            let mut message = entry::from_fields(&fallback_topic, &entry.map);
            message.set_retry_state(&state);
            let due = now_ms().saturating_add(delay.as_millis() as u64);
            let member = super::delayed::member(
                &self.inner.keys.retry_stream(&self.group),
                &self.id,
                &self.group,
                &message,
            );
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
            self.inner.counters.deferred.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}
