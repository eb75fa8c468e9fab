//! The Redis inbox: one key per (group, event id) with a TTL, so dedupe holds across
//! processes and the keys expire on their own.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use super::keys::Keys;
use crate::error::Error;
use crate::inbox::InboxStore;

/// Inbox entries as `{prefix}:inbox:{group}:{event id}` keys, kept for a TTL (7 days by
/// default): a redelivery later than that is handled again.
#[derive(Clone)]
pub struct RedisInbox {
    conn: ConnectionManager,
    keys: Keys,
    ttl: Duration,
}

impl RedisInbox {
    pub(super) fn new(conn: ConnectionManager, keys: Keys, ttl: Duration) -> Self {
        RedisInbox { conn, keys, ttl }
    }
}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox").field("ttl", &self.ttl).finish()
    }
}

impl InboxStore for RedisInbox {
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            redis::cmd("EXISTS")
                .arg(self.keys.inbox(group, &id))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| Error::Inbox {
                    operation: "EXISTS",
                    source: Box::new(e),
                })
        })
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            redis::cmd("SET")
                .arg(self.keys.inbox(group, &id))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(self.ttl.as_secs().max(1))
                .query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(|e| Error::Inbox {
                    operation: "SET NX",
                    source: Box::new(e),
                })
        })
    }
}
