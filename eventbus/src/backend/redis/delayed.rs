//! Delayed retries: parked in a sorted set scored by due time, moved back to the group's retry
//! stream by a Lua script when due. The script is atomic, so any number of processes can run
//! the mover; a retry survives any process restart.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::{entry, now_ms, Inner};
use crate::backend::Message;

/// Moves up to `ARGV[2]` due members from the delayed set `KEYS[1]` to their streams.
const MOVE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local item = cjson.decode(member)
  redis.call('XADD', item.s, 'MAXLEN', '~', ARGV[3], '*', unpack(item.f))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"#;

const BATCH: usize = 200;

/// The sorted-set member for a retry of entry `id` of `group`, to be appended to `stream`.
pub(super) fn member(stream: &str, id: &str, group: &str, message: &Message) -> String {
    let fields: Vec<String> = entry::to_fields(message)
        .into_iter()
        .flat_map(|(k, v)| [k, String::from_utf8_lossy(&v).into_owned()])
        .collect();
    serde_json::json!({ "s": stream, "g": group, "id": id, "f": fields }).to_string()
}

/// Runs until the backend is dropped.
pub(super) async fn move_due(inner: Weak<Inner>) {
    let script = redis::Script::new(MOVE_DUE);
    loop {
        let Some(backend) = inner.upgrade() else {
            return;
        };
        let max_len = backend.config.dlq_retention.max_len.unwrap_or(1_000_000);
        let result: redis::RedisResult<usize> = script
            .key(backend.keys.delayed())
            .arg(now_ms())
            .arg(BATCH)
            .arg(max_len)
            .invoke_async(&mut backend.conn())
            .await;
        let wait = match result {
            Ok(moved) => {
                backend
                    .counters
                    .delayed_moved
                    .fetch_add(moved as u64, Ordering::Relaxed);
                if moved == BATCH {
                    Duration::ZERO
                } else {
                    backend.config.delayed_poll
                }
            }
            Err(error) => {
                tracing::warn!(%error, "moving due delayed retries failed");
                backend.config.delayed_poll.max(Duration::from_secs(1))
            }
        };
        let sleep = backend.runtime.sleep(wait);
        drop(backend);
        sleep.await;
    }
}
