//! The bookkeeping of one consumer: per-partition queues that hand out messages with
//! concurrency across partitions and across keys (one message of a key at a time, in offset
//! order), and the commit tracker that commits only the contiguous prefix of done offsets.
//!
//! Pure data structure, no I/O: the poll thread pushes fetched records in, deliveries are
//! taken out and settled, and the poll thread asks what to commit, pause and resume.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Message, RetryState};
use crate::hash_tables::FoldMap;

/// A topic partition.
pub(crate) type Tp = (Arc<str>, i32);

/// A fetched message waiting for (re)delivery.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) offset: i64,
    pub(crate) message: Message,
    pub(crate) redeliveries: u32,
}

/// Tuning of the tracker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Not-done messages per partition above which the partition is paused.
    pub(crate) max_buffered: usize,
    /// Commit after this many done messages ...
    pub(crate) commit_every: usize,
    /// ... or after this long.
    pub(crate) commit_interval: Duration,
    /// Deliveries handed out and not settled, at most.
    pub(crate) prefetch: usize,
}

/// Where a fetched offset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not handed out: ready, behind its key, or held until due.
    Waiting,
    InFlight,
    Done,
}

/// A fetched offset: its state, and its record until it is done. The record stays here while
/// it waits and while it is in flight; the queues hold offsets only, so handing it out or
/// back changes its state and moves nothing.
#[derive(Debug)]
struct Slot {
    state: State,
    pending: Option<Pending>,
    /// The offset of its key's next record queued behind it, if any: a key's queued records
    /// are a chain through their slots, so queueing one allocates nothing.
    next_of_key: Option<i64>,
}

impl Slot {
    fn waiting(pending: Option<Pending>) -> Self {
        Slot {
            state: State::Waiting,
            pending,
            next_of_key: None,
        }
    }

    /// The record's key, while the record is held.
    fn key(&self) -> Option<Arc<str>> {
        self.pending.as_ref().and_then(|p| p.message.key.clone())
    }
}

/// The slots of a partition's fetched offsets, oldest first. Offsets only grow (a refetch of an
/// older one is ignored) but may skip (compaction, transaction markers): each slot keeps its
/// offset, and a lookup goes straight to `offset - first` when nothing was skipped in between,
/// else binary-searches.
#[derive(Debug, Default)]
struct Slots(VecDeque<(i64, Slot)>);

impl Slots {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the slot of `offset`, newer than every slot held.
    fn push(&mut self, offset: i64, slot: Slot) {
        debug_assert!(self.0.back().is_none_or(|(last, _)| *last < offset));
        self.0.push_back((offset, slot));
    }

    fn index_of(&self, offset: i64) -> Option<usize> {
        let (first, _) = self.0.front()?;
        let guess = usize::try_from(offset.checked_sub(*first)?).ok()?;
        match self.0.get(guess) {
            Some((at, _)) if *at == offset => Some(guess),
            _ => self.0.binary_search_by_key(&offset, |(o, _)| *o).ok(),
        }
    }

    fn get(&self, offset: i64) -> Option<&Slot> {
        self.index_of(offset).map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, offset: i64) -> Option<&mut Slot> {
        self.index_of(offset).map(|i| &mut self.0[i].1)
    }

    /// The oldest slot, removed if `remove` says so.
    fn pop_first_if(&mut self, remove: impl FnOnce(&Slot) -> bool) -> Option<i64> {
        match self.0.front() {
            Some((_, slot)) if remove(slot) => self.0.pop_front().map(|(offset, _)| offset),
            _ => None,
        }
    }
}

/// A partition's deliverable offsets, lowest first: a min-heap, so an offset fetched after the
/// others (the usual case) goes in with one comparison, where an ordered set walks its tree.
/// Each offset is in it at most once (its slot's state says where it is).
#[derive(Debug, Default)]
struct ReadyOffsets(BinaryHeap<Reverse<i64>>);

impl ReadyOffsets {
    fn insert(&mut self, offset: i64) {
        self.0.push(Reverse(offset));
    }

    fn pop_first(&mut self) -> Option<i64> {
        self.0.pop().map(|Reverse(offset)| offset)
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[derive(Debug)]
struct Part {
    generation: u64,
    /// Every fetched offset not yet folded into the committed prefix.
    slots: Slots,
    done: usize,
    /// Offsets deliverable now: unkeyed messages and the head of each idle key.
    ready: ReadyOffsets,
    /// Keys with a message ready or in flight, and the offset of the last record queued of
    /// each (the chain's end, see [`Slot::next_of_key`]); foldhash, randomly seeded per map:
    /// the keys come from producers.
    keys: FoldMap<Arc<str>, i64>,
    /// Retry-tier messages not due yet, in offset order: their due time (ms) and offset.
    delayed: VecDeque<(i64, i64)>,
    /// The highest fetched offset + 1: refetched older offsets are ignored.
    next_fetch: i64,
    /// Offset to commit next (last done of the prefix + 1).
    position: Option<i64>,
    committed: Option<i64>,
    done_since_commit: usize,
    last_commit: Instant,
    in_flight: usize,
    draining: bool,
    paused: bool,
}

impl Part {
    fn new(generation: u64) -> Self {
        Part {
            generation,
            slots: Slots::default(),
            done: 0,
            ready: ReadyOffsets::default(),
            keys: FoldMap::default(),
            delayed: VecDeque::new(),
            next_fetch: i64::MIN,
            position: None,
            committed: None,
            done_since_commit: 0,
            last_commit: Instant::now(),
            in_flight: 0,
            draining: false,
            paused: false,
        }
    }

    fn live(&self) -> usize {
        self.slots.len() - self.done
    }

    /// Makes the waiting record at `offset` ready, or queues it behind its key.
    fn enqueue(&mut self, offset: i64, key: Option<Arc<str>>) {
        let Some(key) = key else {
            self.ready.insert(offset);
            return;
        };
        match self.keys.entry(key) {
            Entry::Occupied(mut last) => {
                match self.slots.get_mut(*last.get()) {
                    Some(slot) if slot.state != State::Done => slot.next_of_key = Some(offset),
                    // The key's last record is held until done and the key released with it,
                    // so this is not met; were it, the key is idle and its record ready.
                    _ => self.ready.insert(offset),
                }
                *last.get_mut() = offset;
            }
            Entry::Vacant(idle) => {
                idle.insert(offset);
                self.ready.insert(offset);
            }
        }
    }

    fn mark_done(&mut self, offset: i64) {
        if let Some(slot) = self.slots.get_mut(offset) {
            if slot.state != State::Done {
                slot.state = State::Done;
                slot.pending = None;
                self.done += 1;
            }
        }
        while let Some(offset) = self.slots.pop_first_if(|slot| slot.state == State::Done) {
            self.done -= 1;
            self.position = Some(offset + 1);
            self.done_since_commit += 1;
        }
    }

    /// Releases the key of a settled message: its next record (`next`) becomes ready, or the
    /// key is idle when it has none.
    fn release_key(&mut self, key: Option<&str>, next: Option<i64>) {
        match (key, next) {
            (_, Some(next)) => self.ready.insert(next),
            (Some(key), None) => {
                self.keys.remove(key);
            }
            (None, None) => {}
        }
    }
}

/// How a delivery was settled.
#[derive(Debug)]
pub(crate) enum Settle {
    /// Done with: counts toward the commit.
    Done,
    /// Deliver again (after a nack or a dropped acker), carrying a retry state when known.
    Requeue(Option<RetryState>),
    /// Deliver again, as it was: it was never started (released behind a key handed back, or
    /// taken and not handed out when the stream stopped), so no redelivery is counted.
    Release,
}

/// Which holding of a partition a delivery was taken from: the assignment's generation (a
/// partition assigned again gets a new one, so a settlement of an earlier holding is told
/// apart), and where the tracker kept the partition then, so settling finds it without a
/// look-up by name while the assignment has not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holding {
    pub(crate) generation: u64,
    at: usize,
}

/// A delivery handed out: where it came from and what to deliver.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) tp: Tp,
    pub(crate) holding: Holding,
    pub(crate) offset: i64,
    pub(crate) message: Message,
    pub(crate) redeliveries: u32,
}

/// Partitions to pause and to resume.
#[derive(Debug, Default)]
pub(crate) struct FlowChanges {
    pub(crate) pause: Vec<Tp>,
    pub(crate) resume: Vec<Tp>,
}

/// The state of one consumer.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The assigned partitions, in the order they were assigned (taking goes round them).
    parts: Vec<(Tp, Part)>,
    /// Where each of them is in `parts`.
    index: FoldMap<Tp, usize>,
    cursor: usize,
    outstanding: usize,
    next_generation: u64,
    limits: Limits,
    /// Records settled done, kept until the poll thread takes them to drop: their memory was
    /// allocated by the poll thread, and freed there it goes back to that thread's own
    /// allocator cache. Freed on the settling thread instead, each free contends for the poll
    /// thread's allocator arena while it allocates the next records (glibc's malloc), which
    /// cost the consumer more than any step of its own.
    settled: Vec<Pending>,
}

/// Most settled records the tracker keeps for the poll thread to drop (about a poll round's
/// worth); past it, they are dropped where they are settled.
const SETTLED_KEPT: usize = 4096;

impl Tracker {
    pub(crate) fn new(limits: Limits) -> Self {
        Tracker {
            parts: Vec::new(),
            index: FoldMap::default(),
            cursor: 0,
            outstanding: 0,
            next_generation: 1,
            limits,
            settled: Vec::new(),
        }
    }

    /// Keeps a settled record for the poll thread to drop (see [`Tracker::settled`]); past
    /// [`SETTLED_KEPT`] of them, it is dropped here.
    fn keep_settled(&mut self, pending: Pending) {
        if self.settled.len() < SETTLED_KEPT {
            self.settled.push(pending);
        }
    }

    /// Hands the settled records over in `spare` (which must be empty; its memory becomes the
    /// tracker's), for the caller to drop outside the lock.
    pub(crate) fn swap_settled(&mut self, spare: &mut Vec<Pending>) {
        debug_assert!(spare.is_empty());
        std::mem::swap(&mut self.settled, spare);
    }

    /// Partitions newly assigned to this consumer.
    pub(crate) fn assign(&mut self, tps: &[Tp]) {
        for tp in tps {
            if !self.index.contains_key(tp) {
                self.index.insert(tp.clone(), self.parts.len());
                self.parts
                    .push((tp.clone(), Part::new(self.next_generation)));
                self.next_generation += 1;
            }
        }
    }

    /// The assigned partitions.
    pub(crate) fn assigned(&self) -> Vec<Tp> {
        self.parts.iter().map(|(tp, _)| tp.clone()).collect()
    }

    fn part(&self, tp: &Tp) -> Option<&Part> {
        self.index.get(tp).map(|&at| &self.parts[at].1)
    }

    fn part_mut(&mut self, tp: &Tp) -> Option<&mut Part> {
        self.index.get(tp).map(|&at| &mut self.parts[at].1)
    }

    /// Where the part of `tp` in `holding` is, if it is still held: where it was when the
    /// delivery was taken, else (partitions revoked since moved it) looked up by name.
    fn held_at(&self, tp: &Tp, holding: Holding) -> Option<usize> {
        let at = match self.parts.get(holding.at) {
            Some((_, part)) if part.generation == holding.generation => holding.at,
            _ => *self.index.get(tp)?,
        };
        (self.parts[at].1.generation == holding.generation).then_some(at)
    }

    fn held(&self, tp: &Tp, holding: Holding) -> Option<&Part> {
        self.held_at(tp, holding).map(|at| &self.parts[at].1)
    }

    fn held_mut(&mut self, tp: &Tp, holding: Holding) -> Option<&mut Part> {
        self.held_at(tp, holding).map(|at| &mut self.parts[at].1)
    }

    /// A fetched record. `skip` marks it done at once (not for this consumer); `due_ms` holds a
    /// retry-tier record until then.
    pub(crate) fn push(
        &mut self,
        tp: &Tp,
        pending: Pending,
        skip: bool,
        due_ms: Option<i64>,
        now_ms: i64,
    ) -> bool {
        let Some(part) = self.part_mut(tp) else {
            return false;
        };
        if part.draining || pending.offset < part.next_fetch {
            return false;
        }
        let offset = pending.offset;
        part.next_fetch = offset + 1;
        if skip {
            part.slots.push(offset, Slot::waiting(None));
            part.mark_done(offset);
            return false;
        }
        let key = pending.message.key.clone();
        part.slots.push(offset, Slot::waiting(Some(pending)));
        match due_ms {
            Some(due) if due > now_ms || !part.delayed.is_empty() => {
                part.delayed.push_back((due, offset));
                false
            }
            _ => {
                part.enqueue(offset, key);
                true
            }
        }
    }

    /// Moves due retry-tier records to their queues; returns whether any became ready.
    pub(crate) fn release_due(&mut self, now_ms: i64) -> bool {
        let mut released = false;
        for (_, part) in &mut self.parts {
            while part.delayed.front().is_some_and(|(due, _)| *due <= now_ms) {
                if let Some((_, offset)) = part.delayed.pop_front() {
                    let key = part.slots.get(offset).and_then(Slot::key);
                    part.enqueue(offset, key);
                    released = true;
                }
            }
        }
        released
    }

    /// The earliest due time of a held record, if any.
    pub(crate) fn next_due(&self) -> Option<i64> {
        self.parts
            .iter()
            .filter_map(|(_, p)| p.delayed.front().map(|(d, _)| *d))
            .min()
    }

    /// Hands out the next deliverable message, round-robin over partitions.
    pub(crate) fn take(&mut self) -> Option<Taken> {
        if self.outstanding >= self.limits.prefetch.max(1) || self.parts.is_empty() {
            return None;
        }
        let n = self.parts.len();
        for i in 0..n {
            let index = (self.cursor + i) % n;
            let (tp, part) = &mut self.parts[index];
            if part.draining {
                continue;
            }
            let Some(offset) = part.ready.pop_first() else {
                continue;
            };
            // Every ready offset has its waiting slot (pushed when fetched, kept until done).
            let slot = part.slots.get_mut(offset);
            debug_assert!(slot
                .as_ref()
                .is_some_and(|s| s.state == State::Waiting && s.pending.is_some()));
            let Some(slot) = slot.filter(|s| s.state == State::Waiting) else {
                continue;
            };
            let Some(pending) = &slot.pending else {
                continue;
            };
            let taken = Taken {
                tp: tp.clone(),
                holding: Holding {
                    generation: part.generation,
                    at: index,
                },
                offset,
                message: pending.message.clone(),
                redeliveries: pending.redeliveries,
            };
            slot.state = State::InFlight;
            part.in_flight += 1;
            self.outstanding += 1;
            self.cursor = index + 1;
            return Some(taken);
        }
        None
    }

    /// Settles a delivery. Settlements of partitions revoked since (another holding) only
    /// free the prefetch slot.
    pub(crate) fn settle(&mut self, tp: &Tp, holding: Holding, offset: i64, how: Settle) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let Some(part) = self.held_mut(tp, holding) else {
            return;
        };
        let Some(slot) = part.slots.get_mut(offset) else {
            return;
        };
        if slot.state != State::InFlight {
            return;
        }
        part.in_flight -= 1;
        match how {
            Settle::Done => {
                let next = slot.next_of_key;
                let pending = slot.pending.take();
                part.mark_done(offset);
                part.release_key(
                    pending.as_ref().and_then(|p| p.message.key.as_deref()),
                    next,
                );
                if let Some(pending) = pending {
                    self.keep_settled(pending);
                }
            }
            Settle::Requeue(state) => {
                // Waiting again (a draining partition's is dropped with it).
                slot.state = State::Waiting;
                if part.draining {
                    return;
                }
                if let Some(pending) = &mut slot.pending {
                    if let Some(state) = state {
                        pending.message.set_retry_state(&state);
                    }
                    pending.redeliveries = pending.redeliveries.saturating_add(1);
                }
                part.ready.insert(offset);
            }
            Settle::Release => {
                slot.state = State::Waiting;
                if !part.draining {
                    part.ready.insert(offset);
                }
            }
        }
    }

    /// Stops handing out messages of `tps` and drops what was not started; returns how many
    /// of their deliveries are still in flight.
    pub(crate) fn begin_revoke(&mut self, tps: &[Tp]) -> usize {
        let mut in_flight = 0;
        for tp in tps {
            if let Some(part) = self.part_mut(tp) {
                part.draining = true;
                part.ready.clear();
                part.delayed.clear();
                part.keys.clear();
                in_flight += part.in_flight;
            }
        }
        in_flight
    }

    /// Deliveries of `tps` still in flight.
    pub(crate) fn in_flight_of(&self, tps: &[Tp]) -> usize {
        tps.iter()
            .filter_map(|tp| self.part(tp))
            .map(|p| p.in_flight)
            .sum()
    }

    /// Forgets `tps`; returns the positions still to commit for them.
    pub(crate) fn finish_revoke(&mut self, tps: &[Tp]) -> Vec<(Tp, i64)> {
        let mut commits = Vec::new();
        for tp in tps {
            if let Some(part) = self.part(tp) {
                if let Some(position) = part.position {
                    if part.committed.is_none_or(|c| c < position) {
                        commits.push((tp.clone(), position));
                    }
                }
            }
        }
        self.parts.retain(|(tp, _)| !tps.contains(tp));
        self.index.clear();
        for (at, (tp, _)) in self.parts.iter().enumerate() {
            self.index.insert(tp.clone(), at);
        }
        commits
    }

    /// Positions to commit now: partitions with `commit_every` done messages or
    /// `commit_interval` since their last commit (every advanced one when `force`).
    pub(crate) fn due_commits(&mut self, force: bool) -> Vec<(Tp, i64)> {
        let limits = self.limits;
        let mut commits = Vec::new();
        for (tp, part) in &mut self.parts {
            let Some(position) = part.position else {
                continue;
            };
            if part.committed.is_some_and(|c| c >= position) {
                continue;
            }
            if force
                || part.done_since_commit >= limits.commit_every
                || part.last_commit.elapsed() >= limits.commit_interval
            {
                commits.push((tp.clone(), position));
                part.committed = Some(position);
                part.done_since_commit = 0;
                part.last_commit = Instant::now();
            }
        }
        commits
    }

    /// The message of an in-flight delivery, if its partition is still held.
    pub(crate) fn in_flight_message(
        &self,
        tp: &Tp,
        holding: Holding,
        offset: i64,
    ) -> Option<Message> {
        let part = self.held(tp, holding).filter(|p| !p.draining)?;
        part.slots
            .get(offset)
            .filter(|slot| slot.state == State::InFlight)
            .and_then(|slot| slot.pending.as_ref())
            .map(|pending| pending.message.clone())
    }

    /// A commit of these positions failed: try again at the next opportunity.
    pub(crate) fn commit_failed(&mut self, failed: &[(Tp, i64)]) {
        for (tp, position) in failed {
            if let Some(part) = self.part_mut(tp) {
                if part.committed == Some(*position) {
                    part.committed = None;
                }
            }
        }
    }

    /// Pauses partitions over their buffer limit or holding a record not due yet; resumes
    /// those back under half the limit with nothing held.
    pub(crate) fn flow_changes(&mut self) -> FlowChanges {
        let max = self.limits.max_buffered;
        let mut changes = FlowChanges::default();
        for (tp, part) in &mut self.parts {
            if part.draining {
                continue;
            }
            let hold = !part.delayed.is_empty();
            if !part.paused && (hold || part.live() > max) {
                part.paused = true;
                changes.pause.push(tp.clone());
            } else if part.paused && !hold && part.live() <= max / 2 {
                part.paused = false;
                changes.resume.push(tp.clone());
            }
        }
        changes
    }

    /// The tuning the tracker was made with.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Where fetching `tp` goes on from: one past the newest offset it received, `None` before
    /// its first record.
    pub(crate) fn fetch_position(&self, tp: &Tp) -> Option<i64> {
        self.part(tp)
            .map(|p| p.next_fetch)
            .filter(|&next| next != i64::MIN)
    }

    /// `tps` with their [fetch positions](Self::fetch_position), for
    /// [`super::fetch_flow::resume`].
    pub(crate) fn with_fetch_positions(&self, tps: Vec<Tp>) -> Vec<(Tp, Option<i64>)> {
        tps.into_iter()
            .map(|tp| {
                let at = self.fetch_position(&tp);
                (tp, at)
            })
            .collect()
    }

    /// Those of `tps` this tracker holds paused.
    pub(crate) fn paused_among(&self, tps: &[Tp]) -> Vec<Tp> {
        tps.iter()
            .filter(|tp| self.part(tp).is_some_and(|p| p.paused))
            .cloned()
            .collect()
    }

    /// Whether every assigned partition has nothing buffered, held or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.parts
            .iter()
            .all(|(_, p)| p.slots.is_empty() && p.delayed.is_empty())
    }

    /// Deliveries handed out and not settled.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The committable position of `tp`.
    #[cfg(test)]
    pub(crate) fn position(&self, tp: &Tp) -> Option<i64> {
        self.part(tp).and_then(|p| p.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MessageHeaders;

    fn tp(p: i32) -> Tp {
        (Arc::from("t"), p)
    }

    fn msg(offset: i64, key: Option<&str>) -> Pending {
        Pending {
            offset,
            message: Message {
                topic: "t".into(),
                key: key.map(Arc::from),
                event_type: "x.y".into(),
                headers: MessageHeaders::new(),
                payload: Arc::from(&b"{}"[..]),
            },
            redeliveries: 0,
        }
    }

    fn tracker(prefetch: usize) -> Tracker {
        let mut t = Tracker::new(Limits {
            max_buffered: 4,
            commit_every: 2,
            commit_interval: Duration::from_secs(3600),
            prefetch,
        });
        t.assign(&[tp(0), tp(1)]);
        t
    }

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut t = tracker(10);
        for o in 0..4 {
            t.push(&tp(0), msg(o, None), false, None, 0);
        }
        let taken: Vec<Taken> = std::iter::from_fn(|| t.take()).collect();
        assert_eq!(taken.len(), 4);
        // 1 and 2 finish before 0: nothing is committable.
        t.settle(&tp(0), taken[1].holding, 1, Settle::Done);
        t.settle(&tp(0), taken[2].holding, 2, Settle::Done);
        assert_eq!(t.position(&tp(0)), None);
        assert!(t.due_commits(true).is_empty());
        t.settle(&tp(0), taken[0].holding, 0, Settle::Done);
        assert_eq!(t.due_commits(false), vec![(tp(0), 3)]);
        t.settle(&tp(0), taken[3].holding, 3, Settle::Done);
        assert!(
            t.due_commits(false).is_empty(),
            "one done since the commit, batch of two"
        );
        assert_eq!(t.due_commits(true), vec![(tp(0), 4)]);
    }

    /// A record settled done is kept for the poll thread to drop, in settling order; one
    /// handed back is not; and the keeping is bounded.
    #[test]
    fn records_settled_done_are_handed_to_the_poll_thread_to_drop() {
        let mut t = tracker(10);
        for o in 0..3 {
            t.push(&tp(0), msg(o, Some("k")), false, None, 0);
        }
        let first = t.take().expect("the key's first record");
        t.settle(&tp(0), first.holding, 0, Settle::Requeue(None));
        let again = t.take().expect("handed back, delivered again");
        t.settle(&tp(0), again.holding, 0, Settle::Done);
        let next = t.take().expect("the key's next record");
        t.settle(&tp(0), next.holding, 1, Settle::Done);
        let mut settled = Vec::new();
        t.swap_settled(&mut settled);
        let offsets: Vec<i64> = settled.iter().map(|p| p.offset).collect();
        assert_eq!(
            offsets,
            vec![0, 1],
            "settled done, in order; the requeue kept none"
        );
        assert_eq!(
            settled[0].message.key.as_deref(),
            Some("k"),
            "the record whole"
        );
        settled.clear();
        t.swap_settled(&mut settled);
        assert!(settled.is_empty(), "handed over once");

        let mut t = tracker(usize::MAX);
        let many = SETTLED_KEPT as i64 + 10;
        t.limits.max_buffered = usize::MAX;
        for o in 0..many {
            t.push(&tp(1), msg(o, None), false, None, 0);
        }
        while let Some(taken) = t.take() {
            t.settle(&tp(1), taken.holding, taken.offset, Settle::Done);
        }
        let mut settled = Vec::new();
        t.swap_settled(&mut settled);
        assert_eq!(
            settled.len(),
            SETTLED_KEPT,
            "no more than the bound is kept"
        );
        assert_eq!(
            t.position(&tp(1)),
            Some(many),
            "every record settled all the same"
        );
    }

    #[test]
    fn offsets_skipped_by_the_log_are_settled_and_committed_past() {
        let mut t = tracker(10);
        // Compaction or transaction markers leave holes: 2-4 and 6-9 never arrive.
        for o in [0, 1, 5, 10, 11] {
            t.push(&tp(0), msg(o, None), false, None, 0);
        }
        let taken: Vec<Taken> = std::iter::from_fn(|| t.take()).collect();
        assert_eq!(
            taken.iter().map(|d| d.offset).collect::<Vec<_>>(),
            vec![0, 1, 5, 10, 11]
        );
        let g = taken[0].holding;
        for o in [11, 5, 10] {
            t.settle(&tp(0), g, o, Settle::Done);
        }
        assert_eq!(t.position(&tp(0)), None, "0 and 1 still in flight");
        t.settle(&tp(0), g, 1, Settle::Requeue(None));
        t.settle(&tp(0), g, 0, Settle::Done);
        assert_eq!(t.position(&tp(0)), Some(1));
        let again = t.take().expect("1 requeued");
        assert_eq!((again.offset, again.redeliveries), (1, 1));
        t.settle(&tp(0), g, 1, Settle::Done);
        assert_eq!(t.due_commits(true), vec![(tp(0), 12)]);
        assert!(t.is_idle());
    }

    #[test]
    fn one_key_at_a_time_in_order_other_keys_and_partitions_in_parallel() {
        let mut t = tracker(10);
        t.push(&tp(0), msg(0, Some("a")), false, None, 0);
        t.push(&tp(0), msg(1, Some("a")), false, None, 0);
        t.push(&tp(0), msg(2, Some("b")), false, None, 0);
        t.push(&tp(1), msg(0, Some("a")), false, None, 0);
        let taken: Vec<Taken> = std::iter::from_fn(|| t.take()).collect();
        let first: Vec<(i32, i64)> = taken.iter().map(|d| (d.tp.1, d.offset)).collect();
        assert_eq!(first, vec![(0, 0), (1, 0), (0, 2)], "a@1 waits for a@0");
        t.settle(&tp(0), taken[0].holding, 0, Settle::Done);
        let next = t.take().expect("a@1 released");
        assert_eq!((next.tp.1, next.offset), (0, 1));
    }

    #[test]
    fn a_key_s_records_go_one_at_a_time_in_order_through_requeues() {
        let mut t = tracker(10);
        for (o, key) in [(0, "a"), (1, "a"), (2, "b"), (3, "a")] {
            t.push(&tp(0), msg(o, Some(key)), false, None, 0);
        }
        let offsets = |t: &mut Tracker| -> Vec<i64> {
            std::iter::from_fn(|| t.take()).map(|d| d.offset).collect()
        };
        let first: Vec<Taken> = std::iter::from_fn(|| t.take()).collect();
        assert_eq!(first.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 2]);
        let h = first[0].holding;
        t.settle(&tp(0), h, 2, Settle::Done);
        assert!(offsets(&mut t).is_empty(), "a@1 waits for a@0");
        t.settle(&tp(0), h, 0, Settle::Done);
        assert_eq!(offsets(&mut t), [1]);
        t.settle(&tp(0), h, 1, Settle::Requeue(None));
        assert_eq!(offsets(&mut t), [1], "a@1 again, a@3 still behind it");
        t.settle(&tp(0), h, 1, Settle::Done);
        assert_eq!(offsets(&mut t), [3]);
        t.settle(&tp(0), h, 3, Settle::Done);
        // The key is idle: its next record is ready at once.
        t.push(&tp(0), msg(4, Some("a")), false, None, 0);
        assert_eq!(offsets(&mut t), [4]);
        assert_eq!(t.position(&tp(0)), Some(4));
    }

    #[test]
    fn a_requeued_delivery_comes_back_before_later_messages_of_its_key() {
        let mut t = tracker(10);
        t.push(&tp(0), msg(0, Some("a")), false, None, 0);
        t.push(&tp(0), msg(1, Some("a")), false, None, 0);
        let d = t.take().expect("a@0");
        assert!(t.take().is_none());
        t.settle(
            &d.tp,
            d.holding,
            0,
            Settle::Requeue(Some(RetryState {
                attempts: 2,
                round: 0,
                first_failure: None,
            })),
        );
        let again = t.take().expect("redelivered");
        assert_eq!((again.offset, again.redeliveries), (0, 1));
        assert_eq!(again.message.attempts_header(), 2);
    }

    #[test]
    fn a_released_delivery_comes_back_in_order_without_a_redelivery_counted() {
        let mut t = tracker(10);
        t.push(&tp(0), msg(0, Some("a")), false, None, 0);
        t.push(&tp(0), msg(1, Some("a")), false, None, 0);
        let d = t.take().expect("a@0");
        t.settle(&d.tp, d.holding, 0, Settle::Release);
        assert_eq!(t.outstanding(), 0);
        let again = t.take().expect("released, delivered again");
        assert_eq!((again.offset, again.redeliveries), (0, 0));
        assert!(t.take().is_none(), "a@1 still waits behind a@0");
    }

    #[test]
    fn prefetch_bounds_outstanding_deliveries() {
        let mut t = tracker(2);
        for o in 0..5 {
            t.push(&tp(0), msg(o, None), false, None, 0);
        }
        assert!(t.take().is_some() && t.take().is_some());
        assert!(t.take().is_none());
        assert_eq!(t.outstanding(), 2);
    }

    #[test]
    fn revocation_drops_unstarted_work_and_ignores_late_settlements() {
        let mut t = tracker(10);
        for o in 0..3 {
            t.push(&tp(0), msg(o, None), false, None, 0);
        }
        let d0 = t.take().expect("0");
        let _d1 = t.take().expect("1");
        t.settle(&tp(0), d0.holding, 0, Settle::Done);
        assert_eq!(t.begin_revoke(&[tp(0)]), 1);
        assert!(t.take().is_none(), "nothing new from a draining partition");
        assert_eq!(t.finish_revoke(&[tp(0)]), vec![(tp(0), 1)]);
        // Reassigned later: a new generation; the old in-flight settlement is ignored.
        t.assign(&[tp(0)]);
        t.settle(&tp(0), d0.holding, 1, Settle::Done);
        assert_eq!(t.position(&tp(0)), None);
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn a_settlement_counts_after_another_partition_was_revoked() {
        let mut t = tracker(10);
        t.push(&tp(1), msg(0, None), false, None, 0);
        let d = t.take().expect("1@0");
        // tp(0), assigned before tp(1), goes: the tracker keeps tp(1) elsewhere now.
        assert_eq!(t.begin_revoke(&[tp(0)]), 0);
        assert!(t.finish_revoke(&[tp(0)]).is_empty());
        t.settle(&d.tp, d.holding, 0, Settle::Done);
        assert_eq!(t.position(&tp(1)), Some(1));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn skipped_records_count_as_done_and_refetches_are_ignored() {
        let mut t = tracker(10);
        t.push(&tp(0), msg(0, None), true, None, 0);
        t.push(&tp(0), msg(1, None), true, None, 0);
        assert!(
            !t.push(&tp(0), msg(1, None), false, None, 0),
            "refetched offset ignored"
        );
        assert_eq!(t.position(&tp(0)), Some(2));
        assert!(t.take().is_none());
    }

    #[test]
    fn held_retry_records_pause_their_partition_until_due() {
        let mut t = tracker(10);
        t.push(&tp(0), msg(0, None), false, Some(1_000), 0);
        t.push(&tp(0), msg(1, None), false, Some(500), 0);
        assert!(t.take().is_none());
        assert_eq!(t.flow_changes().pause, vec![tp(0)]);
        assert!(
            !t.release_due(999),
            "offset 1 is due earlier but waits behind the head"
        );
        assert!(t.release_due(1_000));
        assert_eq!(t.take().map(|d| d.offset), Some(0));
        assert_eq!(t.take().map(|d| d.offset), Some(1));
        assert_eq!(t.flow_changes().resume, vec![tp(0)]);
    }

    #[test]
    fn partitions_over_the_buffer_limit_are_paused_and_resumed_at_half() {
        let mut t = tracker(10);
        for o in 0..5 {
            t.push(&tp(1), msg(o, None), false, None, 0);
        }
        assert_eq!(t.flow_changes().pause, vec![tp(1)]);
        let taken: Vec<Taken> = std::iter::from_fn(|| t.take()).collect();
        for d in &taken[..2] {
            t.settle(&d.tp, d.holding, d.offset, Settle::Done);
        }
        assert!(t.flow_changes().resume.is_empty(), "3 live > 2");
        t.settle(&taken[2].tp, taken[2].holding, 2, Settle::Done);
        assert_eq!(t.flow_changes().resume, vec![tp(1)]);
    }

    #[test]
    fn the_partitions_held_paused_are_named_for_their_revocation() {
        let mut t = tracker(10);
        t.assign(&[tp(2)]);
        for o in 0..5 {
            t.push(&tp(1), msg(o, None), false, None, 0);
            t.push(&tp(2), msg(o, None), false, None, 0);
        }
        assert_eq!(t.flow_changes().pause, vec![tp(1), tp(2)]);
        let all = [tp(0), tp(1), tp(2)];
        assert_eq!(t.paused_among(&all), vec![tp(1), tp(2)]);
        assert_eq!(t.paused_among(&[tp(0), tp(2)]), vec![tp(2)]);
        t.begin_revoke(&[tp(2)]);
        assert_eq!(
            t.paused_among(&[tp(2)]),
            vec![tp(2)],
            "still held while it drains"
        );
        t.finish_revoke(&[tp(2)]);
        assert!(t.paused_among(&all[2..]).is_empty(), "no longer held");
        for d in std::iter::from_fn(|| t.take()).collect::<Vec<_>>() {
            t.settle(&d.tp, d.holding, d.offset, Settle::Done);
        }
        assert_eq!(t.flow_changes().resume, vec![tp(1)]);
        assert!(t.paused_among(&all).is_empty());
    }
}
