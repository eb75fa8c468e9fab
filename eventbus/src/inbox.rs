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

    /// Starts the lookup of `id` in `group` now, for a delivery the consumer holds and has not
    /// started yet, and returns its answer to wait for when the delivery starts: the round trip
    /// is made while earlier deliveries run, not inside the delivery's concurrency slot. The
    /// request must be under way when this returns, and the answer must not borrow the store.
    ///
    /// The consumer asks only for a delivery that no earlier delivery of its key precedes, and
    /// uses an answer "not handled" only within
    /// [`PREFETCH_FRESH_FOR`](crate::inbox::PREFETCH_FRESH_FOR) of asking; otherwise it asks
    /// [`contains`](Self::contains) again. `None` (the default): the delivery is looked up when
    /// it starts. Called only on stores that [record remotely](Self::records_remotely).
    fn prefetch(&self, group: &str, id: Uuid) -> Option<BoxFuture<'static, Result<bool, Error>>> {
        let _ = (group, id);
        None
    }
}

/// How long an inbox answer "not handled" from [`InboxStore::prefetch`] stays good for the
/// delivery it was asked for: a delivery that starts later is looked up again, so a record
/// written meanwhile (by another member of its group) is seen.
pub const PREFETCH_FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(100);

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
/// call, never copied).
#[derive(Debug, Default)]
struct InboxState {
    groups: FoldMap<String, u32>,
    /// The group names by number.
    names: Vec<Box<str>>,
    /// The number of the last call's group: a consumer's calls name one group, whose name is
    /// then compared, not hashed.
    last_group: Option<u32>,
    /// The generation being filled.
    current: Generation,
    /// The generation before it, forgotten when `current` is full.
    previous: Generation,
}

/// One generation of remembered ids: each group's ids, by group number.
#[derive(Debug, Default)]
struct Generation {
    groups: Vec<GroupIds>,
    len: usize,
}

impl Generation {
    fn contains(&self, group: u32, id: u128) -> bool {
        self.groups
            .get(group as usize)
            .is_some_and(|ids| ids.contains(id))
    }

    fn insert(&mut self, group: u32, id: u128) {
        let group = group as usize;
        if self.groups.len() <= group {
            self.groups.resize_with(group + 1, GroupIds::default);
        }
        if self.groups[group].insert(id) {
            self.len += 1;
        }
    }

    /// Forgets every id and keeps the memory, so the next generation does not grow from empty.
    fn clear(&mut self) {
        for ids in &mut self.groups {
            ids.ordered.clear();
            ids.scattered.clear();
        }
        self.len = 0;
    }
}

/// How far from the end of [`GroupIds::ordered`] an id that arrives out of order is still
/// inserted in place (moving at most this many ids); further back, it goes to the table.
const IN_PLACE: usize = 64;

/// A group's ids, kept for time-ordered ids (UUID v7, which publishers make), which are
/// recorded nearly in the order they were made: they are appended to a sorted array, so
/// recording one writes where the last one was written instead of at a random place in a
/// table far larger than the CPU's caches. An id recorded out of order is inserted in place
/// when it belongs near the end, and goes to a hash table otherwise (foldhash, keyed at
/// random: the ids come from the broker, so collisions cannot be forced).
#[derive(Debug, Default)]
struct GroupIds {
    /// Ascending; its last id is the largest of the group in this generation.
    ordered: Vec<u128>,
    /// Ids recorded far out of order, each below the last of `ordered` when recorded.
    scattered: FoldSet<u128>,
}

impl GroupIds {
    fn contains(&self, id: u128) -> bool {
        // An id above the largest is new: the common case for a time-ordered id costs no
        // search.
        match self.ordered.last() {
            Some(&largest) if id <= largest => {
                self.ordered.binary_search(&id).is_ok()
                    || (!self.scattered.is_empty() && self.scattered.contains(&id))
            }
            _ => false,
        }
    }

    /// Records `id`; whether it was not there yet.
    fn insert(&mut self, id: u128) -> bool {
        match self.ordered.last() {
            Some(&largest) if id <= largest => {
                let at = self.ordered.partition_point(|&kept| kept < id);
                if self.ordered[at] == id {
                    false
                } else if self.ordered.len() - at <= IN_PLACE {
                    self.ordered.insert(at, id);
                    true
                } else {
                    self.scattered.insert(id)
                }
            }
            _ => {
                self.ordered.push(id);
                true
            }
        }
    }
}

impl MemoryInbox {
    /// Default number of remembered ids.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// An inbox remembering up to [`Self::DEFAULT_CAPACITY`] ids.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// An inbox remembering up to `capacity` ids (at least 2: one per generation).
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryInbox {
            capacity: capacity.max(2),
            state: Mutex::new(InboxState::default()),
        }
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.current.len + state.previous.len
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

impl InboxState {
    /// The number of `group`, if it recorded an id.
    fn group_number(&mut self, group: &str) -> Option<u32> {
        if let Some(last) = self.last_group {
            if self
                .names
                .get(last as usize)
                .is_some_and(|name| **name == *group)
            {
                return Some(last);
            }
        }
        let g = *self.groups.get(group)?;
        self.last_group = Some(g);
        Some(g)
    }

    /// The number of `group`, given one if it has none yet.
    fn group_number_or_new(&mut self, group: &str) -> u32 {
        if let Some(g) = self.group_number(group) {
            return g;
        }
        let g = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
        self.groups.insert(group.to_owned(), g);
        self.names.push(group.into());
        g
    }
}

impl InboxStore for MemoryInbox {
    fn contains<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<bool, Error>> {
        let found = {
            let mut state = self.lock();
            let id = id.as_u128();
            state
                .group_number(group)
                .is_some_and(|g| state.current.contains(g, id) || state.previous.contains(g, id))
        };
        crate::ready::answer(found)
    }

    fn record<'a>(&'a self, group: &'a str, id: Uuid) -> BoxFuture<'a, Result<(), Error>> {
        let mut state = self.lock();
        let g = state.group_number_or_new(group);
        // Two generations of `capacity / 2` (rounded down): never more than `capacity`. An id
        // still in the older generation is recorded again in the newer one, which only keeps
        // it longer.
        if state.current.len >= self.capacity / 2 {
            // The forgotten generation's memory becomes the new one's.
            let filled = std::mem::take(&mut state.current);
            let mut forgotten = std::mem::replace(&mut state.previous, filled);
            forgotten.clear();
            state.current = forgotten;
        }
        state.current.insert(g, id.as_u128());
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
    fn finds_ids_recorded_far_out_of_order_and_counts_each_once() {
        futures::executor::block_on(async {
            let inbox = MemoryInbox::with_capacity(10_000);
            // Even ids in order, then odd ones from the far past, near the end and in between.
            let even: Vec<Uuid> = (0..1_000u128).map(|n| Uuid::from_u128(n * 2)).collect();
            for &id in &even {
                inbox.record("g", id).await.unwrap();
            }
            let late = [1u128, 301, 1_997, 1_951, 3, 1_999].map(Uuid::from_u128);
            for &id in &late {
                assert!(
                    !inbox.contains("g", id).await.unwrap(),
                    "{id} before recording"
                );
                inbox.record("g", id).await.unwrap();
            }
            for id in even.iter().chain(&late) {
                assert!(inbox.contains("g", *id).await.unwrap(), "{id}");
            }
            for never in [5u128, 1_953, 2_001] {
                let id = Uuid::from_u128(never);
                assert!(
                    !inbox.contains("g", id).await.unwrap(),
                    "{id} never recorded"
                );
            }
            // Recorded again, in order, in place and far back: counted once.
            for &id in [even[999], even[990], even[3], late[0]].iter() {
                inbox.record("g", id).await.unwrap();
            }
            assert_eq!(inbox.len(), 1_006);
        });
    }

    #[test]
    fn groups_asked_in_turn_keep_their_own_ids() {
        futures::executor::block_on(async {
            let inbox = MemoryInbox::with_capacity(100);
            let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
            inbox.record("g1", a).await.unwrap();
            inbox.record("g2", b).await.unwrap();
            for _ in 0..2 {
                assert!(inbox.contains("g1", a).await.unwrap());
                assert!(!inbox.contains("g2", a).await.unwrap());
                assert!(!inbox.contains("g1", b).await.unwrap());
                assert!(inbox.contains("g2", b).await.unwrap());
                // A name that starts like the last one asked is another group.
                assert!(inbox.contains("g1", a).await.unwrap());
                assert!(!inbox.contains("g", a).await.unwrap());
                assert!(inbox.contains("g1", a).await.unwrap());
                assert!(!inbox.contains("g1x", a).await.unwrap());
            }
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
