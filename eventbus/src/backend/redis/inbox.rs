//! The Redis inbox: which events each group handled, kept for a TTL, so dedupe holds across
//! processes and entries expire on their own.
//!
//! Ids made by publishers (UUID v7) are kept in one set per group and 10 seconds of event
//! time; other ids in a key of their own ([`inbox_layout`](super::inbox_layout) has the rules).
//! Lookups and records from concurrent deliveries are coalesced: whatever is queued when the
//! inbox task wakes goes out as one pipelined round trip, with one `SMISMEMBER` and one `SADD`
//! per set it touches, one `MGET` for the ids with keys of their own, and a `SET NX EX` per
//! such record.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::connection::{Conn, SlotPipelines};
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::StreamExt;
use uuid::Uuid;

use super::inbox_layout::{InboxLayout, RecordPlace};
use super::keys::Keys;
use crate::error::Error;
use crate::inbox::InboxStore;
use crate::runtime::Runtime;

type Reply<T> = oneshot::Sender<Result<T, Arc<redis::RedisError>>>;

enum Request {
    Contains(String, Uuid, Reply<bool>),
    Record(String, Uuid, Reply<()>),
}

const MAX_BATCH: usize = 512;

/// Inbox entries kept for a TTL (30 days by default), in sets of
/// `{prefix}:inbox:{group}:@{unix seconds}` for ids made by publishers and in keys
/// `{prefix}:inbox:{group}:{event id}` for others: a redelivery later than that is handled
/// again.
#[derive(Clone)]
pub struct RedisInbox {
    tx: mpsc::UnboundedSender<Request>,
    ttl: Duration,
}

impl RedisInbox {
    pub(super) fn new(conn: Conn, keys: Keys, ttl: Duration, runtime: &Arc<dyn Runtime>) -> Self {
        let (tx, rx) = mpsc::unbounded();
        let layout = InboxLayout::new(ttl);
        runtime.spawn(Box::pin(serve(rx, conn, keys, layout)));
        RedisInbox { tx, ttl }
    }

    fn failure(
        operation: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Inbox {
            operation,
            source: Box::new(error),
        }
    }
}

async fn serve(
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut conn: Conn,
    keys: Keys,
    layout: InboxLayout,
) {
    while let Some(first) = rx.next().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let plan = Plan::new(&batch, &keys, &layout, now_ms());
        match plan.exchange(&mut conn, layout.ttl_secs()).await {
            Ok(found) => {
                for (request, found) in batch.into_iter().zip(found) {
                    match request {
                        Request::Contains(_, _, reply) => drop(reply.send(Ok(found))),
                        Request::Record(_, _, reply) => drop(reply.send(Ok(()))),
                    }
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for request in batch {
                    match request {
                        Request::Contains(_, _, reply) => drop(reply.send(Err(error.clone()))),
                        Request::Record(_, _, reply) => drop(reply.send(Err(error.clone()))),
                    }
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One set a batch touches: its key and the ids asked about or recorded in it.
struct SetBatch<'a> {
    group: &'a str,
    start_ms: u64,
    key: String,
    members: Vec<[u8; 16]>,
    /// For a lookup, the request each member answers (by position in the batch).
    asks: Vec<usize>,
}

/// Finds or adds the set of `group` starting at `start_ms` among `sets`.
fn set_for<'s, 'a>(
    sets: &'s mut Vec<SetBatch<'a>>,
    keys: &Keys,
    group: &'a str,
    start_ms: u64,
) -> &'s mut SetBatch<'a> {
    let at = match sets
        .iter()
        .position(|s| s.start_ms == start_ms && s.group == group)
    {
        Some(at) => at,
        None => {
            sets.push(SetBatch {
                group,
                start_ms,
                key: keys.inbox_bucket(group, start_ms),
                members: Vec::new(),
                asks: Vec::new(),
            });
            sets.len() - 1
        }
    };
    &mut sets[at]
}

/// A batch's commands: lookups first, then records, so a lookup never sees a record of the
/// same batch (as when each is sent alone, in order of arrival).
struct Plan<'a> {
    set_lookups: Vec<SetBatch<'a>>,
    key_lookups: Vec<String>,
    key_asks: Vec<usize>,
    set_records: Vec<(SetBatch<'a>, u64)>,
    key_records: Vec<String>,
    requests: usize,
}

impl<'a> Plan<'a> {
    fn new(batch: &'a [Request], keys: &Keys, layout: &InboxLayout, now_ms: u64) -> Self {
        let mut plan = Plan {
            set_lookups: Vec::new(),
            key_lookups: Vec::new(),
            key_asks: Vec::new(),
            set_records: Vec::new(),
            key_records: Vec::new(),
            requests: batch.len(),
        };
        let mut record_sets = Vec::new();
        for (at, request) in batch.iter().enumerate() {
            match request {
                Request::Contains(group, id, _) => {
                    let places = layout.lookup_places(id, now_ms);
                    if let Some(start_ms) = places.bucket {
                        let set = set_for(&mut plan.set_lookups, keys, group, start_ms);
                        set.members.push(*id.as_bytes());
                        set.asks.push(at);
                    }
                    if places.own_key {
                        plan.key_lookups.push(keys.inbox(group, id));
                        plan.key_asks.push(at);
                    }
                }
                Request::Record(group, id, _) => match layout.record_place(id, now_ms) {
                    RecordPlace::Bucket(start_ms) => {
                        set_for(&mut record_sets, keys, group, start_ms)
                            .members
                            .push(*id.as_bytes());
                    }
                    RecordPlace::OwnKey => plan.key_records.push(keys.inbox(group, id)),
                },
            }
        }
        plan.set_records = record_sets
            .into_iter()
            .map(|set| {
                let expiry = layout.bucket_expiry_ms(set.start_ms);
                (set, expiry)
            })
            .collect();
        plan
    }

    fn smismember(set: &SetBatch<'_>) -> redis::Cmd {
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(&set.key);
        for member in &set.members {
            cmd.arg(&member[..]);
        }
        cmd
    }

    /// The record commands, each with the key it touches.
    fn records(&self, ttl_secs: u64) -> Vec<(&str, redis::Cmd)> {
        let mut commands = Vec::with_capacity(2 * self.set_records.len() + self.key_records.len());
        for (set, expiry) in &self.set_records {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(&set.key);
            for member in &set.members {
                sadd.arg(&member[..]);
            }
            commands.push((set.key.as_str(), sadd));
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(&set.key).arg(*expiry);
            commands.push((set.key.as_str(), expire));
        }
        for key in &self.key_records {
            let mut set = redis::cmd("SET");
            set.arg(key).arg(1).arg("NX").arg("EX").arg(ttl_secs);
            commands.push((key.as_str(), set));
        }
        commands
    }

    /// Sends the batch; for each request, whether it is a lookup that found its id. One
    /// pipelined round trip on a single server; on a cluster, the lookups concurrently (the
    /// `MGET` split by slot by the client) and then the records grouped by slot.
    async fn exchange(&self, conn: &mut Conn, ttl_secs: u64) -> redis::RedisResult<Vec<bool>> {
        let mut replies: Vec<redis::Value> = if conn.is_cluster() {
            let mut lookups: Vec<redis::Cmd> =
                self.set_lookups.iter().map(Self::smismember).collect();
            if !self.key_lookups.is_empty() {
                let mut mget = redis::cmd("MGET");
                mget.arg(&self.key_lookups);
                lookups.push(mget);
            }
            let replies = futures::future::try_join_all(lookups.iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { cmd.query_async::<redis::Value>(&mut conn).await }
            }))
            .await?;
            let mut pipes = SlotPipelines::new(true);
            for (key, cmd) in self.records(ttl_secs) {
                pipes.add(key, cmd);
            }
            pipes.send(conn).await?;
            replies
        } else {
            let mut pipe = redis::pipe();
            for set in &self.set_lookups {
                pipe.add_command(Self::smismember(set));
            }
            if !self.key_lookups.is_empty() {
                pipe.cmd("MGET").arg(&self.key_lookups);
            }
            for (_, cmd) in self.records(ttl_secs) {
                pipe.add_command(cmd).ignore();
            }
            pipe.query_async(conn).await?
        };
        let mut found = vec![false; self.requests];
        let mut replies = replies.drain(..);
        for set in &self.set_lookups {
            let members: Vec<bool> = redis::from_redis_value(next_reply(&mut replies)?)?;
            answers_all(members.len(), set.asks.len())?;
            for (&at, member) in set.asks.iter().zip(members) {
                found[at] |= member;
            }
        }
        if !self.key_lookups.is_empty() {
            let values: Vec<Option<redis::Value>> =
                redis::from_redis_value(next_reply(&mut replies)?)?;
            answers_all(values.len(), self.key_asks.len())?;
            for (&at, value) in self.key_asks.iter().zip(values) {
                found[at] |= value.is_some();
            }
        }
        Ok(found)
    }
}

/// The next lookup's reply; a missing one is an error, never "not found".
fn next_reply(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> redis::RedisResult<redis::Value> {
    replies.next().ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "the inbox lookup's reply is missing",
        ))
    })
}

/// Fails unless a lookup's reply has an answer for each id asked: a missing answer must not
/// read as "not handled", which would run a handled event again.
fn answers_all(answers: usize, asked: usize) -> redis::RedisResult<()> {
    if answers == asked {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "the inbox lookup's reply has a different number of answers than ids asked",
        )))
    }
}

/// A shared Redis error as a source error.
#[derive(Debug)]
struct SharedRedisError(Arc<redis::RedisError>);

impl std::fmt::Display for SharedRedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedRedisError {}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl RedisInbox {
    /// Sends the lookup of `id` in `group` to the inbox task now; the answer follows.
    fn ask(&self, group: &str, id: Uuid) -> BoxFuture<'static, Result<bool, Error>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .unbounded_send(Request::Contains(group.to_owned(), id, reply));
        Box::pin(async move {
            sent.map_err(|e| Self::failure("SMISMEMBER", e.into_send_error()))?;
            match answer.await {
                Ok(result) => result.map_err(|e| Self::failure("SMISMEMBER", SharedRedisError(e))),
                Err(canceled) => Err(Self::failure("SMISMEMBER", canceled)),
            }
        })
    }
}

impl InboxStore for RedisInbox {
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>> {
        self.ask(group, id)
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .unbounded_send(Request::Record(group.to_owned(), id, reply));
        Box::pin(async move {
            sent.map_err(|e| Self::failure("SADD", e.into_send_error()))?;
            match answer.await {
                Ok(result) => result.map_err(|e| Self::failure("SADD", SharedRedisError(e))),
                Err(canceled) => Err(Self::failure("SADD", canceled)),
            }
        })
    }

    /// A record is a round trip: the consumer overlaps it with the next deliveries' lookups.
    fn records_remotely(&self) -> bool {
        true
    }

    /// A lookup is a round trip: the consumer asks it while the delivery waits for a slot.
    fn prefetch(&self, group: &str, id: Uuid) -> Option<BoxFuture<'static, Result<bool, Error>>> {
        Some(self.ask(group, id))
    }
}
