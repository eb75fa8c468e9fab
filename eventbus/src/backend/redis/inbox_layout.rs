//! Where the Redis inbox keeps an event id: in a set per group and 10 seconds of event time,
//! or in a key of its own.
//!
//! An id made by a publisher is a UUID v7, whose first 48 bits are the milliseconds at which
//! it was made. Such an id is kept as a member of `{prefix}:inbox:{group}:@{seconds}`, the set
//! of the 10 seconds it was made in, which expires `ttl` after those 10 seconds end. A lookup
//! finds the set from the id alone, so a batch of deliveries costs one `SMISMEMBER` and one
//! `SADD` per set it touches (one, mostly) instead of a command per event.
//!
//! Every other id gets a key of its own, `{prefix}:inbox:{group}:{id}`, kept `ttl` from when
//! it was recorded:
//!
//! - an id that is not a UUID v7 (a foreign producer's v4, say): it carries no time;
//! - an id made more than `ttl - margin` before it is recorded: its set would expire within
//!   `margin` of the record, too soon for a redelivery to find it;
//! - an id made more than `ttl` after it is recorded (a producer's clock far ahead, or a
//!   forged id): its set would outlive the record by more than `ttl`, so forged ids could keep
//!   sets for ever.
//!
//! A lookup checks the id's own key whenever a record could have put it there, judged from the
//! lookup's clock: the id is not a v7, or older than `ttl - 2 × margin`, or made after now.
//! An entry in a set therefore lives `ttl` after its event was made, and at least `margin`
//! (half the `ttl`, at most an hour) after it was recorded: a redelivery comes from the stream,
//! which keeps an entry no longer than its retention by age, never more than `ttl` (checked at
//! start), or from a lost acknowledgement, claimed again within minutes. An entry in a key of
//! its own lives `ttl` after its record.

use std::time::Duration;

use uuid::Uuid;

/// The event time one set covers.
pub(super) const BUCKET_MS: u64 = 10_000;

/// The longest `margin`: how close to its set's expiry an id may be recorded in the set.
const MAX_MARGIN_MS: u64 = 3_600_000;

/// Where a record keeps an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordPlace {
    /// In the set of the 10 seconds starting at this unix time (ms).
    Bucket(u64),
    /// In a key of its own.
    OwnKey,
}

/// Where a lookup looks for an id: its set (if the set may still exist), its own key, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LookupPlaces {
    /// The set's start (unix ms), when the id has one that may not have expired.
    pub(super) bucket: Option<u64>,
    /// Whether a record may have given the id a key of its own.
    pub(super) own_key: bool,
}

/// The rules above for one `ttl`.
#[derive(Debug, Clone, Copy)]
pub(super) struct InboxLayout {
    ttl_ms: u64,
    margin_ms: u64,
}

impl InboxLayout {
    /// The layout for entries kept `ttl`.
    pub(super) fn new(ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX / 4)
            .max(1);
        InboxLayout {
            ttl_ms,
            margin_ms: (ttl_ms / 2).min(MAX_MARGIN_MS),
        }
    }

    /// Where a record made at `now_ms` (unix ms) keeps `id`.
    pub(super) fn record_place(&self, id: &Uuid, now_ms: u64) -> RecordPlace {
        match made_at_ms(id) {
            Some(made)
                if made.saturating_add(self.ttl_ms) >= now_ms.saturating_add(self.margin_ms)
                    && made <= now_ms.saturating_add(self.ttl_ms) =>
            {
                RecordPlace::Bucket(bucket_start(made))
            }
            _ => RecordPlace::OwnKey,
        }
    }

    /// Where a lookup made at `now_ms` (unix ms) looks for `id`.
    pub(super) fn lookup_places(&self, id: &Uuid, now_ms: u64) -> LookupPlaces {
        let Some(made) = made_at_ms(id) else {
            return LookupPlaces {
                bucket: None,
                own_key: true,
            };
        };
        let start = bucket_start(made);
        let bucket = (self.bucket_expiry_ms(start) > now_ms).then_some(start);
        let own_key = made.saturating_add(self.ttl_ms) < now_ms.saturating_add(2 * self.margin_ms)
            || made > now_ms;
        LookupPlaces { bucket, own_key }
    }

    /// When the set starting at `start_ms` expires (unix ms): `ttl` after its 10 seconds.
    pub(super) fn bucket_expiry_ms(&self, start_ms: u64) -> u64 {
        start_ms
            .saturating_add(BUCKET_MS)
            .saturating_add(self.ttl_ms)
    }

    /// `ttl` in whole seconds (at least one), for a key of its own.
    pub(super) fn ttl_secs(&self) -> u64 {
        (self.ttl_ms / 1000).max(1)
    }
}

/// When a UUID v7 was made (unix ms); `None` for other versions.
pub(super) fn made_at_ms(id: &Uuid) -> Option<u64> {
    if id.get_version_num() != 7 {
        return None;
    }
    let b = id.as_bytes();
    Some(u64::from_be_bytes([
        0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
    ]))
}

fn bucket_start(made_ms: u64) -> u64 {
    made_ms - made_ms % BUCKET_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    const NOW: u64 = 1_800_000_000_000;

    fn v7_at(ms: u64) -> Uuid {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            u32::try_from((ms % 1000) * 1_000_000).expect("nanos"),
        );
        Uuid::new_v7(ts)
    }

    fn layout() -> InboxLayout {
        InboxLayout::new(Duration::from_millis(30 * DAY_MS))
    }

    #[test]
    fn a_fresh_v7_id_is_kept_in_its_ten_seconds_set_and_looked_up_there_alone() {
        let id = v7_at(NOW - 1_234);
        assert_eq!(made_at_ms(&id), Some(NOW - 1_234));
        let start = NOW - 10_000;
        assert_eq!(layout().record_place(&id, NOW), RecordPlace::Bucket(start));
        assert_eq!(
            layout().lookup_places(&id, NOW + 5_000),
            LookupPlaces {
                bucket: Some(start),
                own_key: false
            }
        );
        assert_eq!(layout().bucket_expiry_ms(start), NOW + 30 * DAY_MS);
    }

    #[test]
    fn ids_without_time_or_out_of_range_get_a_key_of_their_own_and_lookups_find_it() {
        let l = layout();
        let v4 = Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef);
        let old = v7_at(NOW - 30 * DAY_MS + 60_000);
        let far = v7_at(NOW + 31 * DAY_MS);
        for id in [v4, old, far] {
            assert_eq!(l.record_place(&id, NOW), RecordPlace::OwnKey, "{id}");
            // Any later lookup within the TTL checks the id's own key.
            for later in [NOW, NOW + DAY_MS, NOW + 29 * DAY_MS] {
                assert!(l.lookup_places(&id, later).own_key, "{id} at {later}");
            }
        }
    }

    /// Every id recorded in a set is found there by lookups for as long as the set lives, which
    /// is `ttl` after the id was made and at least `margin` after the record; every id recorded
    /// in a key of its own is looked up there for `ttl` after the record. The two rules agree
    /// at every distance between the id's time and the record's.
    #[test]
    fn a_record_is_found_by_every_lookup_while_it_lives() {
        for ttl_ms in [2_000, 60_000, 30 * DAY_MS] {
            let l = InboxLayout::new(Duration::from_millis(ttl_ms));
            let margin = (ttl_ms / 2).min(MAX_MARGIN_MS);
            let step = (ttl_ms / 50).max(1);
            let mut offset = -(2 * ttl_ms as i64);
            while offset <= 2 * ttl_ms as i64 {
                let made = (NOW as i64 + offset) as u64;
                let id = v7_at(made);
                let place = l.record_place(&id, NOW);
                for after in (0..ttl_ms).step_by(step as usize) {
                    let found = l.lookup_places(&id, NOW + after);
                    let at =
                        format!("ttl {ttl_ms}, made {offset} from the record, {after} after it");
                    match place {
                        RecordPlace::Bucket(start) => {
                            let expiry = l.bucket_expiry_ms(start);
                            assert!(expiry >= made + ttl_ms && expiry >= NOW + margin, "{at}");
                            if NOW + after < expiry {
                                assert_eq!(found.bucket, Some(start), "{at}");
                            }
                        }
                        RecordPlace::OwnKey => assert!(found.own_key, "{at}"),
                    }
                }
                offset += step as i64;
            }
        }
    }

    #[test]
    fn a_set_outlives_its_records_by_at_most_twice_the_ttl() {
        let l = layout();
        let id = v7_at(NOW + 30 * DAY_MS);
        let RecordPlace::Bucket(start) = l.record_place(&id, NOW) else {
            panic!("an id a TTL ahead is still kept in a set");
        };
        assert!(l.bucket_expiry_ms(start) <= NOW + 60 * DAY_MS + BUCKET_MS);
    }
}
