//! One active member per partition and group ([`RedisConfig::exclusive_partitions`]).
//!
//! - **Membership**: every member of a group writes itself into `{prefix}:members:{group}`, a
//!   sorted set scored by when its entry expires, every third of
//!   [`RedisConfig::lease_ttl`]; expired members are removed by whoever beats next.
//! - **Assignment**: the group's partition streams, sorted, are dealt to the live members,
//!   sorted by name, in turn. Every member computes the same assignment from the same set.
//! - **Leases**: a member reads a partition only while it holds the partition's lease,
//!   `{stream}:lease:{group}` = `member|generation` with a TTL, taken only when absent (so a
//!   partition moves only after its old owner released it or the lease expired) and renewed on
//!   every beat. The generation (`{stream}:generation:{group}`, incremented on every take) makes
//!   the lease a fencing token: reads and acknowledgements run in Lua scripts that first check
//!   the lease still holds the token they were issued under.
//! - **Handover**: a partition assigned elsewhere stops being read at once and is released when
//!   none of its entries is in flight here any more and their acknowledgements are sent. The new
//!   owner first claims every entry still pending for the group on that partition, in id order,
//!   then reads new entries.
//!
//! [`RedisConfig::exclusive_partitions`]: super::RedisConfig::exclusive_partitions
//! [`RedisConfig::lease_ttl`]: super::RedisConfig::lease_ttl

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys::Keys;
use super::lease::InFlight;
use super::{now_ms, redis_error, Inner};
use crate::error::Error;

/// Takes lease KEYS[1] for member ARGV[1] for ARGV[2] ms when it is free (or renews it when the
/// member holds it), with a new generation from KEYS[2]; returns the token, or nil when another
/// member holds it.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  if string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return held
  end
  return false
end
local generation = redis.call('INCR', KEYS[2])
local token = ARGV[1] .. '|' .. generation
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
";

/// Renews lease KEYS[1] for ARGV[2] ms if it still holds token ARGV[1]; 1 if renewed.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes lease KEYS[1] if it still holds token ARGV[1].
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `XREADGROUP` of new entries of stream KEYS[2] (group ARGV[2], consumer ARGV[3], COUNT
/// ARGV[4]) if lease KEYS[1] holds token ARGV[1]; the error `LEASELOST` otherwise.
pub(super) const FENCED_READ: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASELOST') end
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], '>')
";

/// `XAUTOCLAIM` of stream KEYS[2] (group ARGV[2], consumer ARGV[3], from cursor ARGV[4],
/// COUNT ARGV[5], min idle ARGV[6] ms) if lease KEYS[1] holds token ARGV[1]; `LEASELOST`
/// otherwise.
pub(super) const FENCED_RECLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASELOST') end
return redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[3], ARGV[6], ARGV[4], 'COUNT', ARGV[5])
";

/// `XCLAIM` of ids ARGV[4..] of stream KEYS[2] (group ARGV[2], consumer ARGV[3], min idle 0)
/// if lease KEYS[1] holds token ARGV[1]; `LEASELOST` otherwise.
pub(super) const FENCED_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASELOST') end
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
return redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, unpack(ids))
";

/// The partitions one reader holds for its group.
pub(super) struct Ownership {
    inner: Arc<Inner>,
    group: String,
    member: String,
    /// Every partition stream of the subscription, sorted.
    partitions: BTreeSet<String>,
    /// Held partitions and their tokens.
    owned: BTreeMap<String, String>,
    /// Held partitions being handed over, with when the handover began.
    draining: BTreeMap<String, Instant>,
    /// Partitions just taken whose pending entries are to be claimed before new ones are read.
    taken: Vec<String>,
    last_beat: Option<Instant>,
}

impl Ownership {
    pub(super) fn new(inner: Arc<Inner>, group: String, member: String) -> Self {
        Ownership {
            inner,
            group,
            member,
            partitions: BTreeSet::new(),
            owned: BTreeMap::new(),
            draining: BTreeMap::new(),
            taken: Vec::new(),
            last_beat: None,
        }
    }

    /// Adds partition streams of the subscription; they are dealt at the next beat.
    pub(super) fn add_partitions(&mut self, streams: impl IntoIterator<Item = String>) {
        let before = self.partitions.len();
        self.partitions.extend(streams);
        if self.partitions.len() != before {
            self.last_beat = None;
        }
    }

    /// The token to read `stream` under, when it is held and not being handed over.
    pub(super) fn token(&self, stream: &str) -> Option<&str> {
        if self.draining.contains_key(stream) {
            return None;
        }
        self.owned.get(stream).map(String::as_str)
    }

    /// The partitions to read, with their tokens.
    pub(super) fn readable(&self) -> Vec<(String, String)> {
        self.owned
            .iter()
            .filter(|(s, _)| !self.draining.contains_key(*s))
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect()
    }

    /// Whether partitions just taken over wait to be reclaimed.
    pub(super) fn has_taken(&self) -> bool {
        !self.taken.is_empty()
    }

    /// Partitions just taken over, to reclaim first (emptied by the call).
    pub(super) fn take_taken(&mut self) -> Vec<String> {
        std::mem::take(&mut self.taken)
    }

    /// Partitions whose reclaim failed: reclaimed again at the next step.
    pub(super) fn retake(&mut self, streams: impl IntoIterator<Item = String>) {
        for stream in streams {
            if self.owned.contains_key(&stream) && !self.taken.contains(&stream) {
                self.taken.push(stream);
            }
        }
    }

    /// A lease lost between beats (a fenced call said so): stop reading the partition.
    pub(super) fn lost(&mut self, stream: &str) {
        if self.owned.remove(stream).is_some() {
            tracing::warn!(%stream, group = %self.group, member = %self.member, "lease on the partition lost");
        }
        self.draining.remove(stream);
    }

    /// How long until the next beat is due (zero when it is).
    pub(super) fn until_beat(&self) -> Duration {
        self.last_beat.map_or(Duration::ZERO, |last| {
            (last + self.every()).saturating_duration_since(Instant::now())
        })
    }

    fn every(&self) -> Duration {
        (self.inner.config.lease_ttl / 3).max(Duration::from_millis(10))
    }

    /// Announces this member, recomputes the assignment, renews, releases and takes leases.
    pub(super) async fn beat(&mut self, in_flight: &InFlight) -> Result<(), Error> {
        self.last_beat = Some(Instant::now());
        let ttl = self.inner.config.lease_ttl.as_millis() as u64;
        let now = now_ms();
        let members_key = self.inner.keys.members(&self.group);
        let mut conn = self.inner.conn();
        let (mut live,): (Vec<String>,) = redis::pipe()
            .cmd("ZADD")
            .arg(&members_key)
            .arg(now + ttl)
            .arg(&self.member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&members_key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGE")
            .arg(&members_key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("ZADD members"))?;
        if !live.contains(&self.member) {
            live.push(self.member.clone());
        }
        live.sort();
        let mine: BTreeSet<String> = self
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| live[i % live.len()] == self.member)
            .map(|(_, s)| s.clone())
            .collect();

        let renew = redis::Script::new(RENEW);
        for (stream, token) in self.owned.clone() {
            let kept: i64 = renew
                .key(Keys::lease(&stream, &self.group))
                .arg(&token)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error("renew lease"))?;
            if kept == 0 {
                self.lost(&stream);
            }
        }
        // Hand over what is assigned elsewhere: stop reading now, release once nothing of it
        // is in flight here and its acknowledgements are sent. A handler still running keeps
        // the partition here (its lease renewed), however long it runs.
        let release = redis::Script::new(RELEASE);
        let mut flushed = false;
        for stream in self.owned.keys().cloned().collect::<Vec<_>>() {
            if mine.contains(&stream) {
                self.draining.remove(&stream);
                continue;
            }
            self.draining.insert(stream.clone(), Instant::now());
            if in_flight.holds(&stream) {
                continue;
            }
            if !flushed {
                self.inner.acks.flush().await;
                flushed = true;
            }
            if let Some(token) = self.owned.remove(&stream) {
                let _: i64 = release
                    .key(Keys::lease(&stream, &self.group))
                    .arg(&token)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error("release lease"))?;
                tracing::info!(%stream, group = %self.group, member = %self.member, "partition handed over");
            }
            self.draining.remove(&stream);
        }
        let acquire = redis::Script::new(ACQUIRE);
        for stream in &mine {
            if self.owned.contains_key(stream) {
                continue;
            }
            let token: Option<String> = acquire
                .key(Keys::lease(stream, &self.group))
                .key(Keys::generation(stream, &self.group))
                .arg(&self.member)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error("take lease"))?;
            if let Some(token) = token {
                tracing::info!(%stream, group = %self.group, member = %self.member, %token, "partition taken");
                self.owned.insert(stream.clone(), token);
                self.taken.push(stream.clone());
            }
        }
        Ok(())
    }

    /// Leaves the group: releases every lease and the membership, in the background.
    pub(super) fn leave(&mut self) {
        let owned = std::mem::take(&mut self.owned);
        let inner = self.inner.clone();
        let group = self.group.clone();
        let member = self.member.clone();
        self.inner.runtime.spawn(Box::pin(async move {
            // Acknowledgements first: the next owner must not redeliver what was finished.
            inner.acks.flush().await;
            let mut conn = inner.conn();
            let release = redis::Script::new(RELEASE);
            for (stream, token) in owned {
                let released: redis::RedisResult<i64> = release
                    .key(Keys::lease(&stream, &group))
                    .arg(&token)
                    .invoke_async(&mut conn)
                    .await;
                if let Err(error) = released {
                    tracing::debug!(%stream, %error, "lease not released; it expires");
                }
            }
            let _: redis::RedisResult<()> = redis::cmd("ZREM")
                .arg(inner.keys.members(&group))
                .arg(&member)
                .query_async(&mut conn)
                .await;
        }));
    }
}
