//! Appending a batch of messages: one `XADD` per message, in order, and per stream of the
//! batch (not per message) the work around it: the stream's key, its retention trims (every
//! [`TRIM_EVERY`] appends, the first included) and its stream registry members (`SADD` of each
//! event type not registered yet), with one lock of each shared table per batch.

use super::connection::SlotPipelines;
use super::keys::Keys;
use super::{entry, partition_of, Inner, Message, TENANT_HEADER};
use crate::hash_tables::FoldMap;

/// Appends to a stream between two retention trims (the first append trims too).
const TRIM_EVERY: u32 = 256;

/// A stream the batch appends to.
struct Target<'m> {
    key: String,
    topic: &'m str,
    dlq: bool,
    appends: u32,
    /// Event types appended, for the registry (not kept for dead-letter streams).
    event_types: Vec<&'m str>,
}

/// The commands of one batch, and the registry members they add.
pub(super) struct Batch {
    pub(super) pipes: SlotPipelines,
    /// Registry members the batch adds: registered once the batch is sent.
    pub(super) new_members: Vec<String>,
}

impl Inner {
    /// The commands appending `messages` in their order, trimming their streams when due and
    /// registering their (stream, event type) pairs not registered yet.
    pub(super) fn append_batch(&self, messages: &[Message], cluster: bool, now: u64) -> Batch {
        // The appends, and room for a trim or a registration or two.
        let mut pipes = SlotPipelines::with_capacity(cluster, messages.len() + 4);
        let mut targets: Vec<Target<'_>> = Vec::new();
        // (topic, tenant, partition) → index in `targets`.
        let mut index: FoldMap<(&str, Option<&str>, u32), usize> = FoldMap::default();
        for message in messages {
            let tenant = message.headers.get(TENANT_HEADER).map(String::as_str);
            let dlq_topic = crate::wire::is_dlq_topic(&message.topic);
            let partitions = if dlq_topic {
                1
            } else {
                self.config.partitions_of(&message.topic)
            };
            let partition = match &message.key {
                _ if dlq_topic => 0,
                Some(key) => partition_of(key, partitions),
                None => self.round_robin.next(partitions),
            };
            let at = *index
                .entry((&*message.topic, tenant, partition))
                .or_insert_with(|| {
                    let key = if dlq_topic {
                        self.keys.stream(&message.topic, tenant)
                    } else {
                        self.keys
                            .partition_stream(&message.topic, tenant, partition, partitions)
                    };
                    targets.push(Target {
                        dlq: self.keys.is_dlq_stream(&key),
                        key,
                        topic: &message.topic,
                        appends: 0,
                        event_types: Vec::new(),
                    });
                    targets.len() - 1
                });
            let target = &mut targets[at];
            pipes.add(&target.key, entry::xadd(&target.key, message));
            target.appends += 1;
            if !target.dlq && !target.event_types.contains(&&*message.event_type) {
                target.event_types.push(&message.event_type);
            }
        }
        self.add_trims(&mut pipes, &targets, now);
        let new_members = self.add_registrations(&mut pipes, &targets);
        Batch { pipes, new_members }
    }

    /// An `XTRIM` by age (`MINID ~`) and by length (`MAXLEN ~`) for each stream whose appends
    /// since its last trim reach [`TRIM_EVERY`] with this batch: retention is applied on
    /// publish, amortized, never by scanning.
    fn add_trims(&self, pipes: &mut SlotPipelines, targets: &[Target<'_>], now: u64) {
        let mut due = Vec::new();
        {
            let mut appends = self.appends.lock().unwrap_or_else(|p| p.into_inner());
            for target in targets {
                let n = match appends.get_mut(&target.key) {
                    Some(n) => n,
                    None => appends.entry(target.key.clone()).or_insert(TRIM_EVERY - 1),
                };
                let total = *n + target.appends;
                *n = total % TRIM_EVERY;
                if total >= TRIM_EVERY {
                    due.push(target);
                }
            }
        }
        for target in due {
            let retention = if target.dlq {
                self.config.dlq_retention
            } else {
                self.config.retention_of(target.topic)
            };
            if let Some(age) = retention.max_age {
                let cutoff = now.saturating_sub(age.as_millis() as u64);
                let mut trim = redis::cmd("XTRIM");
                trim.arg(&target.key)
                    .arg("MINID")
                    .arg("~")
                    .arg(format!("{cutoff}-0"));
                pipes.add(&target.key, trim);
            }
            if let Some(len) = retention.max_len {
                let mut trim = redis::cmd("XTRIM");
                trim.arg(&target.key).arg("MAXLEN").arg("~").arg(len);
                pipes.add(&target.key, trim);
            }
        }
    }

    /// An `SADD` to the stream registry of each (stream, event type) of the batch this backend
    /// has not registered yet; returns those members.
    fn add_registrations(&self, pipes: &mut SlotPipelines, targets: &[Target<'_>]) -> Vec<String> {
        let registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let mut new_members = Vec::new();
        for target in targets {
            for event_type in &target.event_types {
                let member = Keys::registry_member(&target.key, event_type);
                if !registered.contains(&member) {
                    let registry = self.keys.registry();
                    let mut sadd = redis::cmd("SADD");
                    sadd.arg(&registry).arg(&member);
                    pipes.add(&registry, sadd);
                    new_members.push(member);
                }
            }
        }
        new_members
    }
}
