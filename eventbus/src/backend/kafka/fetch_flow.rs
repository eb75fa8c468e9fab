//! Pausing and resuming the fetching of partitions (the consumers' backpressure and the hold of
//! retry records not due yet), so that a resumed partition is fetched again at once.
//!
//! librdkafka's `rd_kafka_resume_partitions` clears a partition's pause flag on its main
//! thread but does not wake the broker thread that fetches the partition. A broker thread
//! whose partitions are all paused has no fetch in flight and sleeps up to its longest idle
//! wait, one second, before it looks at them again; a consumer catching up on a backlog
//! through a small buffer (`consumer.max_buffered_per_partition`) then spent most of its time
//! asleep: 20 k events/s instead of 80 k on the bench with a buffer of 1 000 records, 2.5 k
//! with 200. A watermark query (a ListOffsets request) on each resumed partition is queued
//! on the thread of that partition's leader, which is the thread that fetches it: it wakes,
//! sees the partition fetchable and sends the fetch.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::TopicPartitionList;

use super::tracker::Tp;

/// How long the wake-up queries of one resumption may block the poll thread in all; the
/// partitions left then are looked at on their broker thread's next round (within a second).
/// A query is answered in one round trip; only its sending matters.
const WAKE_BUDGET: Duration = Duration::from_millis(200);

/// Stops fetching `tps` (librdkafka drops what it prefetched of them).
pub(crate) fn pause<C: ConsumerContext>(consumer: &BaseConsumer<C>, tps: &[Tp]) {
    if tps.is_empty() {
        return;
    }
    if let Err(error) = consumer.pause(&partitions(tps)) {
        tracing::debug!(%error, "pausing partitions failed");
    }
}

/// Fetches `tps` again, waking the broker threads that fetch them.
pub(crate) fn resume<C: ConsumerContext>(consumer: &BaseConsumer<C>, tps: &[Tp]) {
    if !unpause(consumer, tps) {
        return;
    }
    let started = Instant::now();
    for (topic, partition) in tps {
        let left = WAKE_BUDGET.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        if let Err(error) = consumer.fetch_watermarks(topic, *partition, left) {
            tracing::debug!(%error, topic = &**topic, partition, "waking the fetcher of a resumed partition failed");
        }
    }
}

/// Clears the pause flag of `tps` without waking their fetchers: for partitions just
/// assigned, whose fetch start wakes them.
pub(crate) fn unpause<C: ConsumerContext>(consumer: &BaseConsumer<C>, tps: &[Tp]) -> bool {
    if tps.is_empty() {
        return false;
    }
    match consumer.resume(&partitions(tps)) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "resuming partitions failed: they stay paused until the next resumption");
            false
        }
    }
}

fn partitions(tps: &[Tp]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(tps.len());
    for (topic, partition) in tps {
        tpl.add_partition(topic, *partition);
    }
    tpl
}
