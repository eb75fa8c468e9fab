//! The Redis inbox: one key per (group, event id) with a TTL, so dedupe holds across
//! processes and the keys expire on their own.
//!
//! Lookups and records from concurrent deliveries are coalesced: whatever is queued when the
//! inbox task wakes goes out as one pipelined round trip (one `MGET` for all lookups, one
//! `SET NX EX` per record).

use std::sync::Arc;
use std::time::Duration;

use super::connection::{Conn, SlotPipelines};
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::StreamExt;
use uuid::Uuid;

use super::keys::Keys;
use crate::error::Error;
use crate::inbox::InboxStore;
use crate::runtime::Runtime;

enum Request {
    Contains(
        String,
        oneshot::Sender<Result<bool, Arc<redis::RedisError>>>,
    ),
    Record(String, oneshot::Sender<Result<(), Arc<redis::RedisError>>>),
}

const MAX_BATCH: usize = 512;

/// Inbox entries as `{prefix}:inbox:{group}:{event id}` keys, kept for a TTL (7 days by
/// default): a redelivery later than that is handled again.
#[derive(Clone)]
pub struct RedisInbox {
    tx: mpsc::UnboundedSender<Request>,
    keys: Keys,
    ttl: Duration,
}

impl RedisInbox {
    pub(super) fn new(conn: Conn, keys: Keys, ttl: Duration, runtime: &Arc<dyn Runtime>) -> Self {
        let (tx, rx) = mpsc::unbounded();
        runtime.spawn(Box::pin(serve(rx, conn, ttl.as_secs().max(1))));
        RedisInbox { tx, keys, ttl }
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

async fn serve(mut rx: mpsc::UnboundedReceiver<Request>, mut conn: Conn, ttl: u64) {
    while let Some(first) = rx.next().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let lookups: Vec<&String> = batch
            .iter()
            .filter_map(|r| match r {
                Request::Contains(key, _) => Some(key),
                Request::Record(..) => None,
            })
            .collect();
        let reply = exchange(&mut conn, &lookups, &batch, ttl).await;
        match reply {
            Ok(found) => {
                let mut found = found.into_iter();
                for request in batch {
                    match request {
                        Request::Contains(_, reply) => {
                            let _ = reply.send(Ok(found.next().flatten().is_some()));
                        }
                        Request::Record(_, reply) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for request in batch {
                    match request {
                        Request::Contains(_, reply) => drop(reply.send(Err(error.clone()))),
                        Request::Record(_, reply) => drop(reply.send(Err(error.clone()))),
                    }
                }
            }
        }
    }
}

/// Looks up `lookups` and records the batch's `Record`s: one pipelined round trip on a single
/// server; on a cluster, one `MGET` (split by slot by the client) and the `SET`s grouped by
/// slot.
async fn exchange(
    conn: &mut Conn,
    lookups: &[&String],
    batch: &[Request],
    ttl: u64,
) -> redis::RedisResult<Vec<Option<String>>> {
    let set = |key: &String| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("NX").arg("EX").arg(ttl);
        cmd
    };
    if conn.is_cluster() {
        let found: Vec<Option<String>> = if lookups.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET").arg(lookups).query_async(conn).await?
        };
        let mut pipes = SlotPipelines::new(true);
        for request in batch {
            if let Request::Record(key, _) = request {
                pipes.add(key, set(key));
            }
        }
        pipes.send(conn).await?;
        return Ok(found);
    }
    let mut pipe = redis::pipe();
    if !lookups.is_empty() {
        pipe.cmd("MGET").arg(lookups);
    }
    for request in batch {
        if let Request::Record(key, _) = request {
            pipe.add_command(set(key)).ignore();
        }
    }
    let replies: Vec<Vec<Option<String>>> = pipe.query_async(conn).await?;
    Ok(replies.into_iter().next().unwrap_or_default())
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

impl InboxStore for RedisInbox {
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .unbounded_send(Request::Contains(self.keys.inbox(group, &id), reply));
        Box::pin(async move {
            sent.map_err(|e| Self::failure("MGET", e.into_send_error()))?;
            match answer.await {
                Ok(result) => result.map_err(|e| Self::failure("MGET", SharedRedisError(e))),
                Err(canceled) => Err(Self::failure("MGET", canceled)),
            }
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .unbounded_send(Request::Record(self.keys.inbox(group, &id), reply));
        Box::pin(async move {
            sent.map_err(|e| Self::failure("SET NX", e.into_send_error()))?;
            match answer.await {
                Ok(result) => result.map_err(|e| Self::failure("SET NX", SharedRedisError(e))),
                Err(canceled) => Err(Self::failure("SET NX", canceled)),
            }
        })
    }

    /// A record is a round trip: the consumer overlaps it with the next deliveries' lookups.
    fn records_remotely(&self) -> bool {
        true
    }
}
