//! Topic metadata and auto-creation: topics published to (or deferred to, or dead-lettered to)
//! for the first time by this process are created when [`KafkaConfig::auto_create_topics`] is
//! on. Retry-tier and dead-letter topics get the partition count of their source topic.
//!
//! [`KafkaConfig::auto_create_topics`]: super::KafkaConfig::auto_create_topics

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use super::retry_tiers::{is_tier_topic, RETRY_INFIX};
use super::Inner;
use crate::error::Error;
use crate::hash_tables::FoldSet;
use crate::wire::{is_dlq_topic, DLQ_SUFFIX};

/// A topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i32,
}

/// The topics this process knows exist.
#[derive(Default)]
pub(crate) struct TopicCache {
    known: Mutex<FoldSet<String>>,
    /// The cluster did not answer CreateTopics: create through metadata requests from now on.
    no_create_topics: AtomicBool,
}

/// The topic whose retry tier or dead-letter topic `topic` is.
pub(crate) fn source_topic(topic: &str) -> Option<&str> {
    if is_dlq_topic(topic) {
        return topic.strip_suffix(DLQ_SUFFIX);
    }
    if is_tier_topic(topic) {
        return topic.rsplit_once(RETRY_INFIX).map(|(source, _)| source);
    }
    None
}

/// Every topic of the cluster (all of them when `topic` is `None`), by name.
pub(crate) async fn describe(
    inner: &Arc<Inner>,
    topic: Option<&str>,
) -> Result<BTreeMap<String, TopicInfo>, Error> {
    let inner = inner.clone();
    let topic = topic.map(str::to_owned);
    crate::runtime::unblock(move || {
        let metadata = inner
            .admin
            .inner()
            .fetch_metadata(topic.as_deref(), inner.config.operation_timeout)
            .map_err(|e| Error::backend("kafka", "fetch metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| {
                let replication_factor = t
                    .partitions()
                    .first()
                    .map_or(0, |p| p.replicas().len() as i32);
                (
                    t.name().to_owned(),
                    TopicInfo {
                        partitions: t.partitions().len() as i32,
                        replication_factor,
                    },
                )
            })
            .collect())
    })
    .await
}

impl TopicCache {
    /// Marks topics as existing.
    pub(crate) fn remember(&self, topics: impl IntoIterator<Item = String>) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(topics);
    }

    /// Those of `topics` not known to exist, each once (copied only when missing).
    fn missing<'t>(&self, topics: impl IntoIterator<Item = &'t str>) -> Vec<String> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<String> = topics
            .into_iter()
            .filter(|t| !known.contains(*t))
            .map(str::to_owned)
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Creates those of `topics` that do not exist yet.
    pub(crate) async fn ensure<'t>(
        &self,
        inner: &Arc<Inner>,
        topics: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), Error> {
        let missing = self.missing(topics);
        if missing.is_empty() {
            return Ok(());
        }
        let existing = describe(inner, None).await?;
        let to_create: Vec<&String> = missing
            .iter()
            .filter(|t| !existing.contains_key(*t))
            .collect();
        if !to_create.is_empty() {
            let defaults = &inner.config.topics;
            let retention = defaults.retention.map(|d| d.as_millis().to_string());
            let dlq_retention = defaults.dlq_retention.map(|d| d.as_millis().to_string());
            let replication = defaults.replication_factor.unwrap_or(-1);
            let specs: Vec<NewTopic<'_>> = to_create
                .iter()
                .map(|name| {
                    let partitions = source_topic(name)
                        .and_then(|s| existing.get(s))
                        .map_or(defaults.partitions, |i| i.partitions);
                    let mut topic =
                        NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
                    let retention = if is_dlq_topic(name) {
                        &dlq_retention
                    } else {
                        &retention
                    };
                    if let Some(ms) = retention {
                        topic = topic.set("retention.ms", ms);
                    }
                    topic
                })
                .collect();
            let options = AdminOptions::new()
                .operation_timeout(Some(inner.config.operation_timeout))
                .request_timeout(Some(inner.config.operation_timeout));
            let results = if self.no_create_topics.load(Ordering::Relaxed) {
                Err(rdkafka::error::KafkaError::AdminOp(
                    RDKafkaErrorCode::UnsupportedVersion,
                ))
            } else {
                inner.admin.create_topics(&specs, &options).await
            };
            let mut unsupported = Vec::new();
            match results {
                Ok(results) => {
                    for result in results {
                        match result {
                            Ok(name) => tracing::info!(topic = %name, "created topic"),
                            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((name, code)) => unsupported.push((name, code.to_string())),
                        }
                    }
                }
                Err(error) => {
                    if !self.no_create_topics.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, "CreateTopics failed; creating topics through metadata requests (broker auto-creation) from now on");
                    }
                    unsupported.extend(to_create.iter().map(|t| ((*t).clone(), error.to_string())));
                }
            }
            // Brokers without CreateTopics (librdkafka's mock cluster) create topics on a
            // metadata request instead.
            for (name, why) in unsupported {
                let found = describe(inner, Some(&name)).await?;
                if !found.contains_key(&name) {
                    return Err(Error::backend(
                        "kafka",
                        "create topic",
                        format!("topic `{name}`: {why}"),
                    ));
                }
                tracing::debug!(topic = %name, "created topic through a metadata request ({why})");
            }
        }
        self.remember(missing);
        Ok(())
    }
}
