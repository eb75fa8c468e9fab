//! Property test: the in-process inbox agrees with a plain model of what it promises. Every id
//! among the last `capacity / 2` recorded (per inbox, across groups) is found in its group, and
//! an id never recorded in a group is never found there, whatever the order ids arrive in:
//! time-ordered, slightly shuffled, from the far past, repeated, or random.

use std::collections::HashSet;

use eventbus::inbox::{InboxStore, MemoryInbox};
use eventbus::Uuid;
use proptest::prelude::*;

/// How the next id is chosen relative to the ids made so far.
#[derive(Debug, Clone)]
enum Next {
    /// Above every id so far (a new time-ordered id).
    Newer(u8),
    /// Just below the largest so far (a little out of order).
    Near(u8),
    /// Anywhere below the largest so far (far out of order).
    Past(u16),
    /// An id already recorded, again.
    Again(u16),
    /// Any 128-bit value.
    Random(u128),
}

fn step() -> impl Strategy<Value = (u8, Next)> {
    let next = prop_oneof![
        6 => any::<u8>().prop_map(Next::Newer),
        3 => any::<u8>().prop_map(Next::Near),
        2 => any::<u16>().prop_map(Next::Past),
        2 => any::<u16>().prop_map(Next::Again),
        1 => any::<u128>().prop_map(Next::Random),
    ];
    (
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        next,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn agrees_with_the_model(steps in prop::collection::vec(step(), 1..1500), capacity in 2usize..1500) {
        futures::executor::block_on(async {
            let inbox = MemoryInbox::with_capacity(capacity);
            let mut recorded: Vec<(u8, u128)> = Vec::new();
            let mut ever: HashSet<(u8, u128)> = HashSet::new();
            let mut largest = 1u128 << 64;
            for (group, next) in steps {
                let id = match next {
                    Next::Newer(gap) => {
                        largest += u128::from(gap) + 1;
                        largest
                    }
                    Next::Near(back) => largest.saturating_sub(u128::from(back)),
                    Next::Past(back) => largest.saturating_sub(u128::from(back) * 97),
                    Next::Again(pick) if !recorded.is_empty() => {
                        recorded[usize::from(pick) % recorded.len()].1
                    }
                    Next::Again(_) => largest,
                    Next::Random(id) => id,
                };
                let name = format!("g{group}");
                inbox.record(&name, Uuid::from_u128(id)).await.unwrap();
                recorded.push((group, id));
                ever.insert((group, id));
                // The last capacity / 2 records are all remembered (checked in full now and
                // then; the id just recorded, every time).
                let kept = capacity / 2;
                let checked = if recorded.len() % 64 == 0 { kept } else { 1 };
                for &(g, seen) in recorded.iter().rev().take(checked) {
                    let found = inbox.contains(&format!("g{g}"), Uuid::from_u128(seen)).await.unwrap();
                    prop_assert!(found, "g{} {:#x} among the last {} of {:?}", g, seen, kept, recorded);
                }
                // Never recorded in a group: never found there.
                for probe in [id.wrapping_add(1), id.wrapping_sub(1), largest + 1] {
                    for g in 0u8..3 {
                        if !ever.contains(&(g, probe)) {
                            let found = inbox.contains(&format!("g{g}"), Uuid::from_u128(probe)).await.unwrap();
                            prop_assert!(!found, "g{} {:#x} never recorded", g, probe);
                        }
                    }
                }
                prop_assert!(inbox.len() <= capacity, "{} remembered, capacity {}", inbox.len(), capacity);
            }
            Ok(())
        })?;
    }
}
