//! Key names: every key the backend touches is built here.
//!
//! | key | type | what |
//! |---|---|---|
//! | `{prefix}:events:{topic}` | stream | events of a topic |
//! | `{prefix}:events:{tenant}:{topic}` | stream | events of a topic for one tenant (option) |
//! | `{prefix}:events:{topic}#{p}` | stream | partition `p` of a topic with more than one partition |
//! | `{{stream}}:lease:{group}` | string with TTL | the member holding a partition for a group, and its generation |
//! | `{{stream}}:generation:{group}` | counter | the last generation handed out for a partition and group |
//! | `{prefix}:members:{group}` | sorted set | the live members of a group, scored by when they expire |
//! | `{prefix}:dlq:{topic}` | stream | dead letters of a topic |
//! | `{prefix}:retry:{group}` | stream | delayed retries due for a group (`{{prefix}}:retry:{group}` on a cluster) |
//! | `{prefix}:delayed` | sorted set | delayed retries waiting, scored by due time (ms) (`{{prefix}}:delayed` on a cluster) |
//! | `{prefix}:streams` | set | registry of event streams and their event types |
//! | `{prefix}:trimmed:{group}` | hash | per stream, how many entries retention removed before the group read them (counted once) |
//! | `{prefix}:inbox:{group}:@{unix seconds}` | set with TTL | inbox entries: the ids (16 bytes) of events made in those 10 seconds |
//! | `{prefix}:inbox:{group}:{event id}` | string with TTL | inbox entries for ids without a time (not UUID v7) or far from now |
//! | `{prefix}:live:{type}` | pub/sub channel | ephemeral notifications |

use crate::wire::DLQ_SUFFIX;

/// Key builder for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    per_tenant: bool,
    /// On a Redis Cluster, the delayed set and the retry streams share the prefix as hash tag
    /// (`{prefix}:delayed`, `{prefix}:retry:{group}`), so the script moving due retries keeps to
    /// one slot.
    cluster: bool,
}

/// Separates a stream key from an event type in registry members.
const REGISTRY_SEPARATOR: char = '\u{1f}';

impl Keys {
    pub(crate) fn new(prefix: &str, per_tenant: bool, cluster: bool) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            per_tenant,
            cluster,
        }
    }

    /// The prefix of keys that must share a slot on a cluster.
    fn tagged(&self) -> String {
        if self.cluster {
            format!("{{{}}}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }

    /// The stream a message of `topic` (with `tenant`) is appended to.
    pub(crate) fn stream(&self, topic: &str, tenant: Option<&str>) -> String {
        if let Some(original) = topic.strip_suffix(DLQ_SUFFIX) {
            return format!("{}:dlq:{original}", self.prefix);
        }
        match tenant {
            Some(tenant) if self.per_tenant => format!("{}:events:{tenant}:{topic}", self.prefix),
            _ => format!("{}:events:{topic}", self.prefix),
        }
    }

    /// Partition `partition` of the stream of `topic` (with `tenant`), which has `partitions`
    /// partitions: the topic's stream itself when there is one partition.
    pub(crate) fn partition_stream(
        &self,
        topic: &str,
        tenant: Option<&str>,
        partition: u32,
        partitions: u32,
    ) -> String {
        let stream = self.stream(topic, tenant);
        if partitions <= 1 {
            stream
        } else {
            format!("{stream}#{partition}")
        }
    }

    /// The topic a partition stream holds (the key's last segment without its partition).
    pub(crate) fn topic_of(stream: &str) -> &str {
        let last = stream.rsplit(':').next().unwrap_or(stream);
        match last.rsplit_once('#') {
            Some((topic, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => topic,
            _ => last,
        }
    }

    /// The lease of `stream` for `group`: in the stream's Redis Cluster slot (the stream key
    /// is its hash tag).
    pub(crate) fn lease(stream: &str, group: &str) -> String {
        format!("{{{stream}}}:lease:{group}")
    }

    /// The generation counter of `stream`'s leases for `group`, in the stream's slot.
    pub(crate) fn generation(stream: &str, group: &str) -> String {
        format!("{{{stream}}}:generation:{group}")
    }

    /// The live members of `group`.
    pub(crate) fn members(&self, group: &str) -> String {
        format!("{}:members:{group}", self.prefix)
    }

    pub(crate) fn is_dlq_stream(&self, key: &str) -> bool {
        key.starts_with(&format!("{}:dlq:", self.prefix))
    }

    pub(crate) fn trimmed(&self, group: &str) -> String {
        format!("{}:trimmed:{group}", self.prefix)
    }

    pub(crate) fn retry_stream(&self, group: &str) -> String {
        format!("{}:retry:{group}", self.tagged())
    }

    pub(crate) fn delayed(&self) -> String {
        format!("{}:delayed", self.tagged())
    }

    pub(crate) fn registry(&self) -> String {
        format!("{}:streams", self.prefix)
    }

    pub(crate) fn registry_member(stream: &str, event_type: &str) -> String {
        format!("{stream}{REGISTRY_SEPARATOR}{event_type}")
    }

    pub(crate) fn parse_registry_member(member: &str) -> Option<(&str, &str)> {
        member.split_once(REGISTRY_SEPARATOR)
    }

    pub(crate) fn inbox(&self, group: &str, id: &uuid::Uuid) -> String {
        format!("{}:inbox:{group}:{id}", self.prefix)
    }

    /// The inbox set of `group` for the 10 seconds starting at `start_ms` (unix ms).
    pub(crate) fn inbox_bucket(&self, group: &str, start_ms: u64) -> String {
        format!("{}:inbox:{group}:@{}", self.prefix, start_ms / 1000)
    }

    pub(crate) fn live_channel(&self, event_type: &str) -> String {
        format!("{}:live:{event_type}", self.prefix)
    }

    pub(crate) fn live_prefix(&self) -> String {
        format!("{}:live:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let k = Keys::new("hyvve", true, false);
        assert_eq!(
            k.stream("approval.granted", None),
            "hyvve:events:approval.granted"
        );
        assert_eq!(
            k.stream("approval.granted", Some("t1")),
            "hyvve:events:t1:approval.granted"
        );
        assert_eq!(
            k.stream("approval.granted.dlq", Some("t1")),
            "hyvve:dlq:approval.granted"
        );
        assert!(k.is_dlq_stream("hyvve:dlq:x"));
        let m = Keys::registry_member("hyvve:events:x", "a.b");
        assert_eq!(
            Keys::parse_registry_member(&m),
            Some(("hyvve:events:x", "a.b"))
        );
        assert_eq!(
            Keys::new("p", false, false).stream("x", Some("t")),
            "p:events:x"
        );
        assert_eq!(k.partition_stream("a.b", None, 3, 1), "hyvve:events:a.b");
        assert_eq!(k.partition_stream("a.b", None, 3, 16), "hyvve:events:a.b#3");
        assert_eq!(
            k.partition_stream("a.b", Some("t1"), 0, 2),
            "hyvve:events:t1:a.b#0"
        );
        assert_eq!(Keys::topic_of("hyvve:events:t1:a.b#0"), "a.b");
        assert_eq!(Keys::topic_of("hyvve:events:a.b"), "a.b");
        assert_eq!(Keys::topic_of("hyvve:events:a#b"), "a#b");
        assert_eq!(
            Keys::lease("hyvve:events:a.b#3", "g"),
            "{hyvve:events:a.b#3}:lease:g"
        );
    }
}
