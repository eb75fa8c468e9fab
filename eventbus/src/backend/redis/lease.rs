//! Keeps a consumer's in-flight entries its own while their handlers run.
//!
//! `XAUTOCLAIM` hands an entry idle for longer than `claim_idle` to another member: that is how
//! a dead member's entries are recovered. A live member whose handler runs longer than
//! `claim_idle` must not lose its entry that way, or the event is handled twice at once. So
//! every consumer resets the idle time of the entries it is handling every `claim_idle / 3`
//! (`XCLAIM ... JUSTID` to itself, which leaves the delivery count alone), in one Lua call per
//! stream that first checks the entry is still its own: an entry another member already
//! claimed is never taken back. When the process dies the refreshes stop, and its entries are
//! claimed after `claim_idle`, as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::Inner;

/// Resets the idle time of the ids (ARGV[3..]) still pending for consumer ARGV[2] in group
/// ARGV[1] of stream KEYS[1]; returns how many were still its own.
const REFRESH: &str = r"
local kept = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
";

/// The entries one consumer is handling, by stream.
#[derive(Default)]
pub(super) struct InFlight {
    entries: Mutex<HashMap<String, HashSet<String>>>,
}

impl InFlight {
    /// An empty set whose entries are refreshed every `claim_idle / 3` by a task on the
    /// backend's runtime, until the set is dropped.
    pub(super) fn start(inner: &Arc<Inner>, group: String, consumer: String) -> Arc<InFlight> {
        let in_flight = Arc::new(InFlight::default());
        let every = (inner.config.claim_idle / 3).max(Duration::from_millis(10));
        inner.runtime.spawn(Box::pin(refresh(
            Arc::downgrade(&in_flight),
            Arc::downgrade(inner),
            group,
            consumer,
            every,
        )));
        in_flight
    }

    /// Marks `id` of `stream` as being handled.
    pub(super) fn insert(&self, stream: &str, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get_mut(stream) {
            Some(ids) => {
                ids.insert(id.to_owned());
            }
            None => {
                entries.insert(stream.to_owned(), [id.to_owned()].into());
            }
        }
    }

    /// `id` of `stream` is settled (or given up): stop refreshing it.
    pub(super) fn remove(&self, stream: &str, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ids) = entries.get_mut(stream) {
            ids.remove(id);
            if ids.is_empty() {
                entries.remove(stream);
            }
        }
    }

    /// Whether an entry of `stream` is being handled.
    pub(super) fn holds(&self, stream: &str) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(stream)
    }

    fn snapshot(&self) -> Vec<(String, Vec<String>)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|(stream, ids)| (stream.clone(), ids.iter().cloned().collect()))
            .collect()
    }
}

async fn refresh(
    in_flight: Weak<InFlight>,
    inner: Weak<Inner>,
    group: String,
    consumer: String,
    every: Duration,
) {
    let script = redis::Script::new(REFRESH);
    loop {
        let Some(sleep) = inner.upgrade().map(|i| i.runtime.sleep(every)) else {
            return;
        };
        sleep.await;
        let (Some(set), Some(inner)) = (in_flight.upgrade(), inner.upgrade()) else {
            return;
        };
        let snapshot = set.snapshot();
        drop(set);
        let mut conn = inner.conn();
        for (stream, ids) in snapshot {
            let mut call = script.key(&stream);
            call.arg(&group).arg(&consumer).arg(&ids);
            match call.invoke_async::<usize>(&mut conn).await {
                Ok(kept) if kept < ids.len() => tracing::warn!(
                    %stream, %group, %consumer, lost = ids.len() - kept,
                    "in-flight entries were claimed by another member (this one was idle too long)"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%stream, %group, %error, "refreshing in-flight entries failed")
                }
            }
        }
    }
}
