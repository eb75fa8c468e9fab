//! Which partition an event goes to: the hash of its partition key
//! ([`partition_of`](crate::backend::redis::partition_of), Kafka's murmur2, the same on every
//! platform so that producers in other languages can publish to the right partition). Events
//! without a key go to the partitions in turn.

use std::sync::atomic::{AtomicU32, Ordering};

/// Spreads unkeyed events over the partitions in turn.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin(AtomicU32);

impl RoundRobin {
    /// The partition of the next unkeyed event.
    pub(crate) fn next(&self, partitions: u32) -> u32 {
        if partitions <= 1 {
            return 0;
        }
        self.0.fetch_add(1, Ordering::Relaxed) % partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unkeyed_events_go_round() {
        let rr = RoundRobin::default();
        let got: Vec<u32> = (0..6).map(|_| rr.next(3)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
    }
}
