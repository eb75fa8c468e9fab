//! A topic prefix for several environments on one cluster
//! ([`BusBuilder::topic_prefix`](crate::BusBuilder::topic_prefix)): every topic and consumer
//! group the bus creates, publishes to, reads or lists is `{prefix}{name}` in the backend, and
//! the bus, its handlers and its tools see the names without the prefix.
//!
//! [`PrefixedBackend`] wraps any backend: publishing and subscribing, the operations tools
//! (dead letters, replay, lag) and the dead-letter topics it lists. Derived topics follow:
//! `{prefix}{topic}.dlq`, Kafka's retry tiers `{prefix}{topic}.retry.5s`. On Kafka a wildcard
//! subscription's regex starts with the prefix, so it never reads another environment's
//! topics; on Redis the streams are `{key prefix}:events:{prefix}{topic}` (the key prefix,
//! `RedisConfig::prefix`, already separates environments there).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;

use super::{
    Backend, BackendAdmin, BackendCounter, BackendGauge, Cursor, DeliveryStream, GroupLag, KeyPage,
    Message, Page, StoredMessage, SubscribeRequest,
};
use crate::error::Error;

/// Longest accepted prefix.
pub const MAX_PREFIX_LEN: usize = 100;

/// Checks a topic prefix, naming `setting` when it is not 1 to [`MAX_PREFIX_LEN`] letters,
/// digits, `.`, `_` or `-`.
pub fn check_prefix(prefix: &str, setting: &str) -> Result<(), Error> {
    let valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        return Ok(());
    }
    Err(Error::config(
        setting,
        format!(
            "`{prefix}` must be 1 to {MAX_PREFIX_LEN} letters, digits, `.`, `_` or `-` (such as `staging.`)"
        ),
    ))
}

/// `backend` with every topic and consumer group under `prefix`.
pub struct PrefixedBackend {
    inner: Arc<dyn Backend>,
    prefix: String,
}

impl std::fmt::Debug for PrefixedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixedBackend")
            .field("backend", &self.inner.name())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl PrefixedBackend {
    /// Wraps `inner`. The prefix holds only letters, digits, `.`, `_` and `-` (what a Kafka
    /// topic name may hold), at most [`MAX_PREFIX_LEN`] characters; anything else fails
    /// naming `topic_prefix`.
    pub fn new(inner: Arc<dyn Backend>, prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        check_prefix(&prefix, "topic_prefix")?;
        Ok(PrefixedBackend { inner, prefix })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// `name` in the backend.
    pub fn physical(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `name` as the bus sees it: without the prefix (unchanged when it lacks it).
    pub fn logical<'a>(&self, name: &'a str) -> &'a str {
        name.strip_prefix(self.prefix.as_str()).unwrap_or(name)
    }

    fn outgoing(&self, mut message: Message) -> Message {
        message.topic = self.physical(&message.topic).into();
        message
    }

    fn incoming(prefix: &str, mut message: Message) -> Message {
        if let Some(topic) = message.topic.strip_prefix(prefix) {
            message.topic = topic.into();
        }
        message
    }

    fn stored(&self, mut stored: StoredMessage) -> StoredMessage {
        stored.message = Self::incoming(&self.prefix, stored.message);
        stored
    }

    fn page(&self, mut page: Page) -> Page {
        page.messages = page.messages.into_iter().map(|m| self.stored(m)).collect();
        page
    }
}

impl Backend for PrefixedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), Error>> {
        let messages = messages.into_iter().map(|m| self.outgoing(m)).collect();
        self.inner.publish(messages)
    }

    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<DeliveryStream, Error>> {
        let request = SubscribeRequest {
            group: self.physical(&request.group),
            topics: request.topics.iter().map(|t| self.physical(t)).collect(),
            topic_prefix: format!("{}{}", self.prefix, request.topic_prefix),
            ..request
        };
        let prefix = self.prefix.clone();
        Box::pin(async move {
            let stream = self.inner.subscribe(request).await?;
            Ok(stream
                .map(move |item| {
                    item.map(|mut delivery| {
                        delivery.message = Self::incoming(&prefix, delivery.message);
                        delivery
                    })
                })
                .boxed())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.flush()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.health()
    }

    fn admin(&self) -> Option<&dyn BackendAdmin> {
        self.inner.admin().map(|_| self as &dyn BackendAdmin)
    }

    fn counters(&self) -> Vec<BackendCounter> {
        self.inner.counters()
    }

    fn gauges(&self) -> Vec<BackendGauge> {
        self.inner.gauges()
    }
}

impl PrefixedBackend {
    fn inner_admin(&self) -> Result<&dyn BackendAdmin, Error> {
        super::admin_of(self.inner.as_ref(), "operations tools")
    }
}

impl BackendAdmin for PrefixedBackend {
    fn read_page(
        &self,
        topic: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        let topic = self.physical(topic);
        Box::pin(async move {
            let page = self.inner_admin()?.read_page(&topic, cursor, limit).await?;
            Ok(self.page(page))
        })
    }

    fn read_range_page(
        &self,
        topic: &str,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, Error>> {
        let topic = self.physical(topic);
        Box::pin(async move {
            let page = self
                .inner_admin()?
                .read_range_page(&topic, from, to, cursor, limit)
                .await?;
            Ok(self.page(page))
        })
    }

    fn read_key_page(
        &self,
        topic: &str,
        key: &str,
        position: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<KeyPage, Error>> {
        let topic = self.physical(topic);
        let key = key.to_owned();
        Box::pin(async move {
            let mut page = self
                .inner_admin()?
                .read_key_page(&topic, &key, position, limit)
                .await?;
            page.messages = page.messages.into_iter().map(|m| self.stored(m)).collect();
            Ok(page)
        })
    }

    fn read_ids(
        &self,
        topic: &str,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, Error>> {
        let topic = self.physical(topic);
        Box::pin(async move {
            let found = self.inner_admin()?.read_ids(&topic, ids).await?;
            Ok(found.into_iter().map(|m| self.stored(m)).collect())
        })
    }

    fn count(&self, topic: &str) -> BoxFuture<'_, Result<u64, Error>> {
        let topic = self.physical(topic);
        Box::pin(async move { self.inner_admin()?.count(&topic).await })
    }

    fn deliver_to_group(
        &self,
        group: &str,
        messages: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let group = self.physical(group);
        let messages = messages.into_iter().map(|m| self.outgoing(m)).collect();
        Box::pin(async move { self.inner_admin()?.deliver_to_group(&group, messages).await })
    }

    fn delete(&self, topic: &str, ids: Vec<String>) -> BoxFuture<'_, Result<usize, Error>> {
        let topic = self.physical(topic);
        Box::pin(async move { self.inner_admin()?.delete(&topic, ids).await })
    }

    /// The groups and streams under the prefix, without it.
    fn group_lag(&self) -> BoxFuture<'_, Result<Vec<GroupLag>, Error>> {
        Box::pin(async move {
            Ok(self
                .inner_admin()?
                .group_lag()
                .await?
                .into_iter()
                .filter(|lag| lag.group.starts_with(self.prefix.as_str()))
                .map(|lag| GroupLag {
                    group: self.logical(&lag.group).to_owned(),
                    stream: self.logical(&lag.stream).to_owned(),
                    ..lag
                })
                .collect())
        })
    }

    /// The dead-letter topics under the prefix, without it.
    fn dead_letter_topics(&self) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move {
            Ok(self
                .inner_admin()?
                .dead_letter_topics()
                .await?
                .into_iter()
                .filter_map(|t| t.strip_prefix(self.prefix.as_str()).map(str::to_owned))
                .collect())
        })
    }
}
