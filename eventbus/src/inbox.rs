//! The inbox: which events each consumer group has already handled, so a redelivered event is
//! acknowledged without running the handler again.
//!
//! The pipeline checks the inbox before the handler and records the event after it succeeded
//! and before the delivery is acknowledged: a crash between the two leaves the delivery
//! unacknowledged, so the event is redelivered, never lost.

use std::sync::Mutex;

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::error::Error;
use crate::hash_tables::{FoldMap, FoldSet};

/// Where processed event ids are remembered.
pub trait InboxStore: Send + Sync + 'static {
    /// Whether `group` already handled event `id`.
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>>;
    /// Remembers that `group` handled event `id`.
    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>>;

    /// Whether [`record`](Self::record) waits on a server. The consumer then starts the next
    /// deliveries while a handled event's record is written (their lookups can share its round
    /// trip), and acknowledges the event, and starts the next event of its key, only once the
    /// record is written: a failed record leaves the delivery unsettled, as when recorded in
    /// place. `false` (the default): the record is awaited before the delivery leaves the
    /// pipeline.
    fn records_remotely(&self) -> bool {
        false
    }
}

/// An in-process inbox, bounded: it remembers at most `capacity` ids and at least the last
/// half of them. Ids are kept in two generations of `capacity / 2`: when the newer one is
/// full, the older one is forgotten at once, so recording an id never pays for evicting one.
///
/// Dedupe holds within one process only; use the Redis or SQL inbox across processes.
#[derive(Debug)]
pub struct MemoryInbox {
    capacity: usize,
    state: Mutex<InboxState>,
}

/// Ids are remembered per group number (groups are few; their names are looked up once per
/// call, never copied), hashed with foldhash (the ids come from the broker, a keyed hash keeps
/// collisions from being forced).
///
/// Each generation also keeps the largest id it holds (as a 128-bit number): an id above it is
/// not in that generation, so looking it up costs no probe of a table far larger than the CPU's
/// caches. Time-ordered ids (UUID v7, which publishers make) are above it as they come, so a
/// new event is found new without touching either table; other ids are looked up as before.
#[derive(Debug, Default)]
struct InboxState {
    groups: FoldMap<String, u32>,
    /// The generation being filled.
    current: FoldSet<(u32, Uuid)>,
    /// The largest id in `current` (0 when empty).
    current_largest: u128,
    /// The generation before it, forgotten when `current` is full.
    previous: FoldSet<(u32, Uuid)>,
    /// The largest id in `previous` (0 when empty).
    previous_largest: u128,
}

impl InboxState {
    fn contains(&self, entry: &(u32, Uuid)) -> bool {
        let id = entry.1.as_u128();
        (id <= self.current_largest && self.current.contains(entry))
            || (id <= self.previous_largest && self.previous.contains(entry))
    }
}

impl MemoryInbox {
    /// Default number of remembered ids.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// An inbox remembering up to [`Self::DEFAULT_CAPACITY`] ids.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// An inbox remembering up to `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryInbox {
            capacity: capacity.max(1),
            state: Mutex::new(InboxState::default()),
        }
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.current.len() + state.previous.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryInbox {
    fn default() -> Self {
        Self::new()
    }
}

impl InboxStore for MemoryInbox {
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>> {
        let found = {
            let state = self.lock();
            state
                .groups
                .get(group)
                .is_some_and(|&g| state.contains(&(g, id)))
        };
        crate::ready::answer(found)
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>> {
        let mut state = self.lock();
        let g = match state.groups.get(group) {
            Some(&g) => g,
            None => {
                let g = u32::try_from(state.groups.len()).unwrap_or(u32::MAX);
                state.groups.insert(group.to_owned(), g);
                g
            }
        };
        // One probe: an id still in the older generation is recorded again in the newer one,
        // which only keeps it longer.
        if state.current.len() >= self.capacity.div_ceil(2) {
            // The forgotten generation's table becomes the new one: no regrowth from empty.
            let filled = std::mem::take(&mut state.current);
            let mut forgotten = std::mem::replace(&mut state.previous, filled);
            forgotten.clear();
            state.current = forgotten;
            state.previous_largest = std::mem::take(&mut state.current_largest);
        }
        state.current.insert((g, id));
        state.current_largest = state.current_largest.max(id.as_u128());
        crate::ready::done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_recorded_in_any_order_in_both_generations() {
        futures::executor::block_on(async {
            let inbox = MemoryInbox::with_capacity(8);
            // Descending, random and extreme ids: the largest-id shortcut must never hide one.
            let mut ids: Vec<Uuid> = (0..4u128).rev().map(|n| Uuid::from_u128(n << 64)).collect();
            ids.extend([
                Uuid::from_u128(0x9f3c_51d2_0e8a_4b77_a1c4_3d9e_77f0_12ab),
                Uuid::max(),
                Uuid::nil(),
                Uuid::now_v7(),
            ]);
            for (n, &id) in ids.iter().enumerate() {
                inbox.record("g", id).await.unwrap();
                for &seen in &ids[..=n] {
                    assert!(inbox.contains("g", seen).await.unwrap(), "{seen} after {n}");
                }
            }
            // Two more: the first four are forgotten, the next four make the older generation.
            let newer = [Uuid::from_u128(1), Uuid::from_u128(2)];
            for id in newer {
                inbox.record("g", id).await.unwrap();
            }
            for id in ids[4..].iter().chain(&newer) {
                assert!(inbox.contains("g", *id).await.unwrap(), "{id}");
            }
            // Never recorded, below both generations' largest ids: looked up, not found.
            assert!(!inbox.contains("g", Uuid::from_u128(3)).await.unwrap());
            assert!(!inbox.contains("other", ids[7]).await.unwrap());
        });
    }

    #[test]
    fn remembers_per_group_and_forgets_beyond_capacity() {
        futures::executor::block_on(async {
            let inbox = MemoryInbox::with_capacity(2);
            let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            inbox.record("g1", a).await.unwrap();
            assert!(inbox.contains("g1", a).await.unwrap());
            assert!(!inbox.contains("g2", a).await.unwrap());
            inbox.record("g1", b).await.unwrap();
            inbox.record("g1", c).await.unwrap();
            assert!(inbox.contains("g1", b).await.unwrap());
            assert_eq!(inbox.len(), 2);
            assert!(!inbox.contains("g1", a).await.unwrap());
            assert!(inbox.contains("g1", c).await.unwrap());
        });
    }
}
