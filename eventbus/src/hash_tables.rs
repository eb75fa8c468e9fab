//! The hash tables of the hot paths, keyed by what publishers and brokers choose (topics,
//! partition keys, event ids): hashed with foldhash, far cheaper per look-up than the
//! standard library's SipHash, and seeded at random per table, so collisions cannot be aimed
//! at from outside.

use std::collections::{HashMap, HashSet};
#[cfg(feature = "kafka")]
use std::sync::Arc;

/// A `HashMap` hashed with foldhash.
pub(crate) type FoldMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` hashed with foldhash.
pub(crate) type FoldSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Something worked out once per event type (or per topic, another name that producers and
/// brokers choose) and kept, for at most [`PerType::CAPACITY`] names: past that (a producer
/// inventing names) it starts over, so it cannot grow without bound. A name seen before is
/// found with one hash (the table holds where its value is).
#[derive(Debug)]
pub(crate) struct PerType<V> {
    at: FoldMap<Box<str>, usize>,
    values: Vec<V>,
}

impl<V> Default for PerType<V> {
    fn default() -> Self {
        PerType {
            at: FoldMap::default(),
            values: Vec::new(),
        }
    }
}

impl<V> PerType<V> {
    /// Event types kept at most.
    pub(crate) const CAPACITY: usize = 256;

    /// The value of `event_type`, worked out by `work_out` when not kept yet.
    pub(crate) fn get_or_insert_with(
        &mut self,
        event_type: &str,
        work_out: impl FnOnce() -> V,
    ) -> &V {
        if let Some(&at) = self.at.get(event_type) {
            return &self.values[at];
        }
        if self.values.len() >= Self::CAPACITY {
            self.clear();
        }
        self.at.insert(event_type.into(), self.values.len());
        self.values.push(work_out());
        &self.values[self.values.len() - 1]
    }

    /// Forgets every type (what they were worked out from changed).
    pub(crate) fn clear(&mut self) {
        self.at.clear();
        self.values.clear();
    }

    /// Event types kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// Names that many messages carry (topics, event types), each allocated once and shared by
/// every message that carries it, for at most [`PerType::CAPACITY`] names (past that, a
/// producer inventing names, it starts over).
#[cfg(feature = "kafka")]
#[derive(Debug, Default)]
pub(crate) struct SharedNames(PerType<Arc<str>>);

#[cfg(feature = "kafka")]
impl SharedNames {
    /// The shared copy of `name`.
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        self.0.get_or_insert_with(name, || Arc::from(name)).clone()
    }
}
