//! The hash tables of the hot paths, keyed by what publishers and brokers choose (topics,
//! partition keys, event ids): hashed with foldhash, far cheaper per look-up than the
//! standard library's SipHash, and seeded at random per table, so collisions cannot be aimed
//! at from outside.

use std::collections::{HashMap, HashSet};

/// A `HashMap` hashed with foldhash.
pub(crate) type FoldMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` hashed with foldhash.
pub(crate) type FoldSet<T> = HashSet<T, foldhash::fast::RandomState>;
