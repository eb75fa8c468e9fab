//! Reading a topic back a page at a time (dead-letter tools, replay to a group) and resolving
//! dead letters.
//!
//! A page is read by a consumer with manual assignment and a throwaway group id that never
//! commits, from the cursor's offset of each partition up to the partition's high watermark at
//! the time of the call. Records carry the id `{partition}-{offset}`; a page is sorted by
//! timestamp, then partition and offset. A cursor holds the next offset of every partition
//! (`{partition}:{offset},...`).
//!
//! Kafka cannot delete single records, so [`BackendAdmin::delete`](crate::backend::BackendAdmin::delete)
//! appends a small *resolution marker* (empty value, header `eventbus-dlq-resolves: {id}`) to
//! the topic; reading hides markers and the records they resolve. Redriving a dead letter thus
//! removes it from the list for every process, and retention eventually drops both.
//!
//! Which records are resolved is learnt from the markers: each backend keeps, per topic, the
//! set of resolved ids and how far it has scanned for markers. Every read first scans only the
//! records appended since the last read, so the work of a read is its page plus what is new,
//! and the memory held is one id per resolved record (ids below a partition's low watermark
//! are forgotten).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;

use super::{record, Inner};
use crate::backend::{Cursor, KeyPage, Message, MessageHeaders, Page, StoredMessage, MAX_PAGE};
use crate::error::Error;
use crate::hash_tables::SharedNames;

/// Header of a resolution marker: the id of the record it resolves.
pub const RESOLVES_HEADER: &str = "eventbus-dlq-resolves";

/// Most records a page read scans (hidden records included) before it returns what it has.
const SCAN_PER_PAGE: usize = 10 * MAX_PAGE;

/// What a backend knows about the resolution markers of its topics.
#[derive(Default)]
pub(crate) struct ResolvedIndex {
    topics: Mutex<HashMap<String, Resolved>>,
}

/// The markers of one topic: the ids they resolve and the next offset to scan per partition.
#[derive(Default, Clone)]
struct Resolved {
    ids: HashSet<String>,
    scanned: BTreeMap<i32, i64>,
}

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

/// The partition and offset of a record id.
fn parse_id(id: &str) -> Option<(i32, i64)> {
    let (partition, offset) = id.split_once('-')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// The next offset per partition a cursor holds.
fn parse_cursor(cursor: &Cursor) -> Result<BTreeMap<i32, i64>, Error> {
    let bad = || Error::config("cursor", format!("`{}` is not a Kafka cursor", cursor.0));
    cursor
        .0
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (partition, offset) = part.split_once(':').ok_or_else(bad)?;
            Ok((
                partition.parse().map_err(|_| bad())?,
                offset.parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

fn format_cursor(next: &BTreeMap<i32, i64>) -> Cursor {
    Cursor(
        next.iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The partitions of `topic` with their low and high watermarks.
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::backend("kafka", "fetch metadata", e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions
        .into_iter()
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, timeout)
                .map(|marks| (partition, marks))
                .map_err(|e| Error::backend("kafka", "fetch watermarks", e))
        })
        .collect()
}

/// Whether a scan goes on after a record.
enum Scan {
    Continue,
    Stop,
}

/// Reads `topic` from `from` (next offset per partition) up to `ends` (exclusive), calling
/// `visit` for every record; returns the next offset of every partition reached.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> Scan,
) -> Result<BTreeMap<i32, i64>, Error> {
    let mut positions = from.clone();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (&partition, &end) in ends {
        let start = from.get(&partition).copied().unwrap_or(0);
        if start < end {
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|e| Error::backend("kafka", "assign", e))?;
            open.insert(partition, end);
        }
    }
    if open.is_empty() {
        return Ok(positions);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::backend("kafka", "assign", e))?;
    let deadline = Instant::now() + timeout * 3;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("reading topic `{topic}`"),
                after: timeout * 3,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let partition = m.partition();
                let Some(&end) = open.get(&partition) else {
                    continue;
                };
                if m.offset() < positions.get(&partition).copied().unwrap_or(0) {
                    continue;
                }
                if m.offset() >= end {
                    open.remove(&partition);
                    continue;
                }
                positions.insert(partition, m.offset() + 1);
                if m.offset() + 1 >= end {
                    open.remove(&partition);
                }
                if let Scan::Stop = visit(&m) {
                    break;
                }
            }
            Some(Err(error)) => tracing::debug!(%error, topic, "error while reading topic"),
            None => {}
        }
    }
    Ok(positions)
}

/// The id a resolution marker resolves.
fn resolves(m: &BorrowedMessage<'_>) -> Option<String> {
    use rdkafka::message::Headers as _;
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == RESOLVES_HEADER)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl ResolvedIndex {
    /// Brings the index of `topic` up to `marks` (scanning what was appended since the last
    /// call) and returns the resolved ids.
    fn refresh(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        marks: &BTreeMap<i32, (i64, i64)>,
        timeout: Duration,
    ) -> Result<HashSet<String>, Error> {
        let scanned = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .map(|known| known.scanned.clone())
            .unwrap_or_default();
        let from: BTreeMap<i32, i64> = marks
            .iter()
            .map(|(&p, &(low, _))| (p, scanned.get(&p).copied().unwrap_or(low).max(low)))
            .collect();
        let ends: BTreeMap<i32, i64> = marks.iter().map(|(&p, &(_, high))| (p, high)).collect();
        let mut found = Vec::new();
        let reached = scan(consumer, topic, &from, &ends, timeout, |m| {
            found.extend(resolves(m));
            Scan::Continue
        })?;
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let known = topics.entry(topic.to_owned()).or_default();
        known.ids.extend(found);
        known.ids.retain(|id| {
            parse_id(id).is_some_and(|(p, o)| marks.get(&p).is_none_or(|&(low, _)| o >= low))
        });
        for (p, o) in reached {
            let at = known.scanned.entry(p).or_insert(o);
            *at = (*at).max(o);
        }
        Ok(known.ids.clone())
    }

    /// Records ids this backend just resolved.
    fn add(&self, topic: &str, ids: impl IntoIterator<Item = String>) {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .ids
            .extend(ids);
    }
}

/// A record as a page holds it, with its timestamp for sorting.
fn stored(m: &BorrowedMessage<'_>) -> (i64, StoredMessage) {
    let (message, meta) = record::from_record(m, m.topic().into(), &mut SharedNames::default());
    (
        meta.timestamp_ms.unwrap_or(0),
        StoredMessage {
            id: record_id(m.partition(), m.offset()),
            message,
        },
    )
}

fn sort_page(records: &mut [(i64, StoredMessage)]) {
    records.sort_by_key(|(ts, m)| (*ts, parse_id(&m.id).unwrap_or((0, 0))));
}

/// Runs `read` on a blocking thread with a fresh throwaway consumer.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    read: impl FnOnce(&Inner, &BaseConsumer) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let inner = inner.clone();
    crate::runtime::unblock(move || {
        let consumer = throwaway_consumer(
            &inner,
            &format!("eventbus-reader-{}", uuid::Uuid::now_v7().simple()),
        )?;
        read(&inner, &consumer)
    })
    .await
}

/// Reads a page of `topic` after `cursor`: up to `limit` records, resolution markers and
/// resolved records left out.
pub(crate) async fn read_page(
    inner: &Arc<Inner>,
    topic: &str,
    cursor: Option<Cursor>,
    limit: usize,
) -> Result<Page, Error> {
    let from = cursor.as_ref().map(parse_cursor).transpose()?;
    let topic = topic.to_owned();
    blocking(inner, move |inner, consumer| {
        let timeout = inner.config.operation_timeout;
        let marks = watermarks(consumer, &topic, timeout)?;
        let resolved = inner.resolved.refresh(consumer, &topic, &marks, timeout)?;
        let limit = limit.clamp(1, MAX_PAGE);
        let from: BTreeMap<i32, i64> = marks
            .iter()
            .map(|(&p, &(low, _))| {
                let at = from
                    .as_ref()
                    .and_then(|f| f.get(&p).copied())
                    .unwrap_or(low);
                (p, at.max(low))
            })
            .collect();
        let ends: BTreeMap<i32, i64> = marks.iter().map(|(&p, &(_, high))| (p, high)).collect();
        let mut records = Vec::new();
        let mut scanned = 0;
        let next = scan(consumer, &topic, &from, &ends, timeout, |m| {
            scanned += 1;
            let id = record_id(m.partition(), m.offset());
            if resolves(m).is_none() && !resolved.contains(&id) {
                records.push(stored(m));
            }
            if records.len() >= limit || scanned >= SCAN_PER_PAGE {
                Scan::Stop
            } else {
                Scan::Continue
            }
        })?;
        sort_page(&mut records);
        let more = ends
            .iter()
            .any(|(p, &end)| next.get(p).copied().unwrap_or(0) < end);
        Ok(Page {
            messages: records.into_iter().map(|(_, m)| m).collect(),
            next: more.then(|| format_cursor(&next)),
        })
    })
    .await
}

/// Reads the records of `topic` keyed `key` after `position`: only the key's partition when
/// the producer's partitioner places keys by hash, else every partition.
pub(crate) async fn read_key_page(
    inner: &Arc<Inner>,
    topic: &str,
    key: &str,
    position: Option<Cursor>,
    limit: usize,
) -> Result<KeyPage, Error> {
    let from = position.as_ref().map(parse_cursor).transpose()?;
    let topic = topic.to_owned();
    let key = key.to_owned();
    blocking(inner, move |inner, consumer| {
        let timeout = inner.config.operation_timeout;
        let marks = watermarks(consumer, &topic, timeout)?;
        let partitions = i32::try_from(marks.len()).unwrap_or(i32::MAX);
        let targets: Vec<i32> = match inner.config.key_partition(&key, partitions) {
            Some(p) => vec![p],
            None => marks.keys().copied().collect(),
        };
        let mut start = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for p in targets {
            let Some(&(low, high)) = marks.get(&p) else {
                continue;
            };
            let at = from
                .as_ref()
                .and_then(|f| f.get(&p).copied())
                .unwrap_or(low);
            start.insert(p, at.max(low));
            ends.insert(p, high);
        }
        let limit = limit.clamp(1, MAX_PAGE);
        let mut records = Vec::new();
        let mut scanned = 0;
        let next = scan(consumer, &topic, &start, &ends, timeout, |m| {
            scanned += 1;
            if m.key() == Some(key.as_bytes()) {
                records.push(stored(m));
            }
            if records.len() >= limit || scanned >= SCAN_PER_PAGE {
                Scan::Stop
            } else {
                Scan::Continue
            }
        })?;
        sort_page(&mut records);
        let at_end = ends
            .iter()
            .all(|(p, &end)| next.get(p).copied().unwrap_or(0) >= end);
        Ok(KeyPage {
            messages: records.into_iter().map(|(_, m)| m).collect(),
            position: (!next.is_empty()).then(|| format_cursor(&next)),
            at_end,
        })
    })
    .await
}

/// The records `ids` of `topic` that exist and are not resolved, oldest first.
pub(crate) async fn read_ids(
    inner: &Arc<Inner>,
    topic: &str,
    ids: Vec<String>,
) -> Result<Vec<StoredMessage>, Error> {
    let mut wanted: Vec<(i32, i64)> = ids.iter().filter_map(|id| parse_id(id)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    wanted.truncate(MAX_PAGE);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let topic = topic.to_owned();
    blocking(inner, move |inner, consumer| {
        let timeout = inner.config.operation_timeout;
        let marks = watermarks(consumer, &topic, timeout)?;
        let resolved = inner.resolved.refresh(consumer, &topic, &marks, timeout)?;
        let mut records = Vec::new();
        for (partition, offset) in wanted {
            let Some(&(low, high)) = marks.get(&partition) else {
                continue;
            };
            if offset < low || offset >= high || resolved.contains(&record_id(partition, offset)) {
                continue;
            }
            let from = BTreeMap::from([(partition, offset)]);
            let ends = BTreeMap::from([(partition, offset + 1)]);
            scan(consumer, &topic, &from, &ends, timeout, |m| {
                if m.offset() == offset && resolves(m).is_none() {
                    records.push(stored(m));
                }
                Scan::Stop
            })?;
        }
        sort_page(&mut records);
        Ok(records.into_iter().map(|(_, m)| m).collect())
    })
    .await
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
    let mut present = Vec::new();
    for chunk in ids.chunks(MAX_PAGE) {
        present.extend(
            read_ids(inner, topic, chunk.to_vec())
                .await?
                .into_iter()
                .map(|m| m.id),
        );
    }
    let markers: Vec<Message> = present
        .iter()
        .map(|id| Message {
            topic: topic.into(),
            key: None,
            event_type: Arc::default(),
            headers: MessageHeaders::from([(RESOLVES_HEADER.to_owned(), id.clone())]),
            payload: Arc::from(&[][..]),
        })
        .collect();
    inner.producer.send_all(&markers).await?;
    inner.resolved.add(topic, present);
    Ok(markers.len())
}
