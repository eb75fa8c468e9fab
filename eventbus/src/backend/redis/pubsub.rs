//! Ephemeral notifications over Redis `PUBLISH` / `PSUBSCRIBE`.
//!
//! **At most once**: a notification reaches the subscribers connected at that moment and is
//! gone; nothing is stored, acknowledged, retried or dead-lettered. Use it for live updates
//! (dashboards, cache invalidation), never for work that must happen. Use streams for that.

use super::connection::Conn;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::keys::Keys;
use super::redis_error;
use crate::envelope::{Envelope, RawEnvelope};
use crate::error::Error;
use crate::event::Event;
use crate::pattern::Pattern;

/// Publishes and subscribes to ephemeral notifications on channels `{prefix}:live:{type}`.
#[derive(Clone)]
pub struct RedisPubSub {
    client: redis::Client,
    conn: Conn,
    keys: Keys,
}

impl std::fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSub").finish_non_exhaustive()
    }
}

impl RedisPubSub {
    pub(super) fn new(client: redis::Client, conn: Conn, keys: Keys) -> Self {
        RedisPubSub { client, conn, keys }
    }

    /// Sends a notification; returns how many subscribers received it.
    pub async fn notify<E: Event>(&self, envelope: &Envelope<E>) -> Result<usize, Error> {
        let payload = envelope.encode()?;
        redis::cmd("PUBLISH")
            .arg(self.keys.live_channel(&envelope.event_type))
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_error("PUBLISH"))
    }

    /// Receives notifications whose type matches `pattern`, from now on. Undecodable
    /// notifications are skipped with a warning.
    pub async fn subscribe(&self, pattern: &str) -> Result<BoxStream<'static, RawEnvelope>, Error> {
        let pattern = Pattern::parse(pattern).map_err(|source| Error::Pattern {
            pattern: pattern.to_owned(),
            subscriber: "pubsub".to_owned(),
            source,
        })?;
        let glob: String = pattern
            .as_str()
            .split('.')
            .map(|segment| match segment {
                "*" | "#" | "**" => "*",
                literal => literal,
            })
            .collect::<Vec<_>>()
            .join(".");
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(redis_error("connect"))?;
        pubsub
            .psubscribe(format!("{}{glob}", self.keys.live_prefix()))
            .await
            .map_err(redis_error("PSUBSCRIBE"))?;
        let prefix = self.keys.live_prefix();
        Ok(pubsub
            .into_on_message()
            .filter_map(move |msg| {
                let event_type = msg
                    .get_channel_name()
                    .strip_prefix(prefix.as_str())
                    .unwrap_or("");
                let keep = pattern.matches(event_type);
                let decoded = keep.then(|| RawEnvelope::decode(msg.get_payload_bytes()));
                futures::future::ready(match decoded {
                    Some(Ok(envelope)) => Some(envelope),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "undecodable pub/sub notification skipped");
                        None
                    }
                    None => None,
                })
            })
            .boxed())
    }
}
