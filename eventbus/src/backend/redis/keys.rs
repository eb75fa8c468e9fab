//! Key names: every key the backend touches is built here.
//!
//! | key | type | what |
//! |---|---|---|
//! | `{prefix}:events:{topic}` | stream | events of a topic |
//! | `{prefix}:events:{tenant}:{topic}` | stream | events of a topic for one tenant (option) |
//! | `{prefix}:dlq:{topic}` | stream | dead letters of a topic |
//! | `{prefix}:retry:{group}` | stream | delayed retries due for a group |
//! | `{prefix}:delayed` | sorted set | delayed retries waiting, scored by due time (ms) |
//! | `{prefix}:streams` | set | registry of event streams and their event types |
//! | `{prefix}:trimmed:{group}` | hash | per stream, how many entries retention removed before the group read them (counted once) |
//! | `{prefix}:inbox:{group}:{event id}` | string with TTL | inbox entries |
//! | `{prefix}:live:{type}` | pub/sub channel | ephemeral notifications |

use crate::dead_letter::DLQ_SUFFIX;

/// Key builder for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    per_tenant: bool,
}

/// Separates a stream key from an event type in registry members.
const REGISTRY_SEPARATOR: char = '\u{1f}';

impl Keys {
    pub(crate) fn new(prefix: &str, per_tenant: bool) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            per_tenant,
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

    pub(crate) fn is_dlq_stream(&self, key: &str) -> bool {
        key.starts_with(&format!("{}:dlq:", self.prefix))
    }

    pub(crate) fn trimmed(&self, group: &str) -> String {
        format!("{}:trimmed:{group}", self.prefix)
    }

    pub(crate) fn retry_stream(&self, group: &str) -> String {
        format!("{}:retry:{group}", self.prefix)
    }

    pub(crate) fn delayed(&self) -> String {
        format!("{}:delayed", self.prefix)
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
        let k = Keys::new("hyvve", true);
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
        assert_eq!(Keys::new("p", false).stream("x", Some("t")), "p:events:x");
    }
}
