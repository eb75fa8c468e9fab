//! Pausing and resuming the fetching of partitions (the consumers' backpressure and the hold of
//! retry records not due yet), so that a resumed partition is fetched again at once.
//!
//! librdkafka's `rd_kafka_resume_partitions` clears a partition's pause flag on its main
//! thread but does not wake the broker thread that fetches the partition. A broker thread
//! whose partitions are all paused has no fetch in flight and sleeps up to its longest idle
//! wait, one second, before it looks at them again; a consumer catching up on a backlog
//! through a small buffer (`consumer.max_buffered_per_partition`) then spent most of its time
//! asleep: 20 k events/s instead of 80 k on the bench with a buffer of 1 000 records, 2.5 k
//! with 200.
//!
//! A resumed partition is therefore also sought to where its fetching stopped (one past the
//! newest record the consumer received: the position librdkafka resumes from anyway). The
//! seek is queued on the thread that fetches the partition, wakes it, and returns at once.
//! A partition whose position is not known yet gets a watermark query (a ListOffsets request)
//! instead, which wakes the same thread but blocks the caller until it is answered, and a
//! broker answers a connection's requests in order: behind a fetch waiting for new data, up to
//! `fetch.wait.max.ms`. The poll thread makes that call, and polls no partition's records
//! while it waits: on the bench a resumption held it for the whole 200 ms budget (the seek:
//! under half a millisecond).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::TopicPartitionList;

use super::tracker::Tp;

/// How long the watermark queries of one resumption (partitions without a known position) may
/// block the poll thread in all; the partitions left then are looked at on their broker
/// thread's next round (within a second).
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

/// Fetches `tps` again from their fetch positions (`None`: not known), waking the broker
/// threads that fetch them.
pub(crate) fn resume<C: ConsumerContext>(consumer: &BaseConsumer<C>, tps: &[(Tp, Option<i64>)]) {
    let all: Vec<Tp> = tps.iter().map(|(tp, _)| tp.clone()).collect();
    if !unpause(consumer, &all) {
        return;
    }
    let mut seek = TopicPartitionList::with_capacity(tps.len());
    let mut unknown = Vec::new();
    for (tp, at) in tps {
        let added = at.map(|at| {
            seek.add_partition_offset(&tp.0, tp.1, rdkafka::Offset::Offset(at))
                .is_ok()
        });
        if added != Some(true) {
            unknown.push(tp);
        }
    }
    if seek.count() > 0 {
        // A zero timeout: queued, not waited for.
        if let Err(error) = consumer.seek_partitions(seek, Duration::ZERO) {
            tracing::debug!(%error, "seeking resumed partitions failed: they are fetched on their broker thread's next round");
        }
    }
    let started = Instant::now();
    for (topic, partition) in unknown {
        let left = WAKE_BUDGET.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        if let Err(error) = consumer.fetch_watermarks(topic, *partition, left) {
            tracing::debug!(%error, topic = &**topic, partition, "waking the fetcher of a resumed partition failed");
        }
    }
}

/// Clears the pause flag of `tps` without waking their fetchers: for partitions being revoked,
/// whose fetchers stop anyway.
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
