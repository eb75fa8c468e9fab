//! Reading a whole topic back (dead-letter tools) and resolving dead letters.
//!
//! A topic is read from each partition's low to its high watermark by a consumer with manual
//! assignment and a throwaway group id that never commits. Records come back oldest first
//! (by timestamp, then partition and offset) with the id `{partition}-{offset}`.
//!
//! Kafka cannot delete single records, so [`Backend::delete`](crate::backend::Backend::delete)
//! appends a small *resolution marker* (empty value, header `eventbus-dlq-resolves: {id}`) to
//! the topic; reading hides markers and the records they resolve. Redriving a dead letter thus
//! removes it from the list for every process, and retention eventually drops both.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;

use super::{record, Inner};
use crate::backend::{Message, MessageHeaders, StoredMessage};
use crate::error::Error;

/// Header of a resolution marker: the id of the record it resolves.
pub const RESOLVES_HEADER: &str = "eventbus-dlq-resolves";

/// Most records read back from one topic.
pub(crate) const MAX_READ: usize = 100_000;

/// A consumer for manual assignment, in a group (`group_id`) of its own that never commits.
pub(crate) fn throwaway_consumer(inner: &Inner, group_id: &str) -> Result<BaseConsumer, Error> {
    let mut config = inner.config.reader_client_config();
    config.set("group.id", group_id);
    config
        .create()
        .map_err(|e| inner.config.config_error(e, "consumer_options"))
}

/// The id of a record.
pub(crate) fn record_id(partition: i32, offset: i64) -> String {
    format!("{partition}-{offset}")
}

/// Reads every record of `topic`, resolution markers and resolved records left out.
pub(crate) async fn read_topic(
    inner: &Arc<Inner>,
    topic: &str,
) -> Result<Vec<StoredMessage>, Error> {
    let inner = inner.clone();
    let topic = topic.to_owned();
    let records = tokio::task::spawn_blocking(move || read_blocking(&inner, &topic))
        .await
        .map_err(|e| Error::backend("kafka", "read topic", e))??;
    let resolved: HashSet<&str> = records
        .iter()
        .filter_map(|(_, m)| m.message.headers.get(RESOLVES_HEADER).map(String::as_str))
        .collect();
    let mut out: Vec<(i64, StoredMessage)> = records
        .iter()
        .filter(|(_, m)| {
            !m.message.headers.contains_key(RESOLVES_HEADER) && !resolved.contains(m.id.as_str())
        })
        .cloned()
        .collect();
    out.sort_by_key(|(ts, m)| {
        let (p, o) = m.id.split_once('-').unwrap_or(("0", "0"));
        (
            *ts,
            p.parse::<i32>().unwrap_or(0),
            o.parse::<i64>().unwrap_or(0),
        )
    });
    Ok(out.into_iter().map(|(_, m)| m).collect())
}

fn read_blocking(inner: &Inner, topic: &str) -> Result<Vec<(i64, StoredMessage)>, Error> {
    let timeout = inner.config.operation_timeout;
    let consumer = throwaway_consumer(
        inner,
        &format!("eventbus-reader-{}", uuid::Uuid::now_v7().simple()),
    )?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::backend("kafka", "fetch metadata", e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| Error::backend("kafka", "fetch watermarks", e))?;
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(|e| Error::backend("kafka", "assign", e))?;
            ends.insert(partition, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::backend("kafka", "assign", e))?;
    let deadline = Instant::now() + timeout * 3;
    while !ends.is_empty() && out.len() < MAX_READ {
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("reading topic `{topic}` to its end"),
                after: timeout * 3,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let partition = m.partition();
                let Some(&end) = ends.get(&partition) else {
                    continue;
                };
                if m.offset() >= end {
                    ends.remove(&partition);
                    continue;
                }
                let (message, meta) = record::from_record(&m);
                out.push((
                    meta.timestamp_ms.unwrap_or(0),
                    StoredMessage {
                        id: record_id(partition, m.offset()),
                        message,
                    },
                ));
                if m.offset() + 1 >= end {
                    ends.remove(&partition);
                }
            }
            Some(Err(error)) => tracing::debug!(%error, topic, "error while reading topic"),
            None => {}
        }
    }
    Ok(out)
}

/// Resolves the records `ids` of `topic` with markers; returns how many were unresolved.
pub(crate) async fn resolve(
    inner: &Arc<Inner>,
    topic: &str,
    ids: Vec<String>,
) -> Result<usize, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let present: HashSet<String> = read_topic(inner, topic)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect();
    let markers: Vec<Message> = ids
        .into_iter()
        .filter(|id| present.contains(id))
        .collect::<HashSet<String>>()
        .into_iter()
        .map(|id| Message {
            topic: topic.to_owned(),
            key: None,
            event_type: String::new(),
            headers: MessageHeaders::from([(RESOLVES_HEADER.to_owned(), id)]),
            payload: Arc::from(&[][..]),
        })
        .collect();
    inner.producer.send_all(&markers).await?;
    Ok(markers.len())
}
