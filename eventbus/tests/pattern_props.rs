//! Property tests: the pattern trie agrees with matching each pattern alone,
//! and the const matcher agrees with [`Pattern::matches`].

use eventbus::pattern::{const_matches, validate_name, Pattern, PatternSet};
use proptest::prelude::*;

/// A segment over a tiny alphabet, so that patterns match often.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
}

/// Mostly valid names of 1–5 segments, sometimes arbitrary (often invalid) strings.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(segment(), 1..=5).prop_map(|s| s.join(".")),
        1 => "[abc.*#_ -]{0,8}",
    ]
}

/// Literal and `*` segments, optionally ending in `#` or `**`.
fn pattern() -> impl Strategy<Value = Pattern> {
    let body = prop::collection::vec(
        prop_oneof![3 => segment(), 1 => Just("*".to_owned())],
        0..=4,
    );
    let tail = prop_oneof![2 => Just(None), 1 => Just(Some("#")), 1 => Just(Some("**"))];
    (body, tail).prop_map(|(mut segs, tail)| {
        segs.extend(tail.map(String::from));
        if segs.is_empty() {
            segs.push("#".to_owned());
        }
        Pattern::parse(&segs.join(".")).expect("generated pattern is valid")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn set_agrees_with_naive(
        patterns in prop::collection::vec(pattern(), 1..=30),
        names in prop::collection::vec(name(), 1..=8),
    ) {
        let set: PatternSet<usize> = patterns.iter().zip(0..).collect();
        prop_assert_eq!(set.len(), patterns.len());
        for name in &names {
            let mut got: Vec<usize> = set.matches(name).into_iter().copied().collect();
            got.sort_unstable();
            let want: Vec<usize> = (0..patterns.len()).filter(|&i| patterns[i].matches(name)).collect();
            prop_assert_eq!(&got, &want, "name {:?}", name);
            prop_assert_eq!(set.is_match(name), !want.is_empty());
            for p in &patterns {
                prop_assert_eq!(const_matches(p.as_str(), name), p.matches(name), "{} vs {:?}", p, name);
            }
        }
    }

    #[test]
    fn names_are_exact_patterns(s in "[abc.*#_ -]{0,8}") {
        let exact = Pattern::parse(&s).map(|p| p.is_exact());
        prop_assert_eq!(validate_name(&s).is_ok(), exact == Ok(true));
        if let Ok(p) = Pattern::parse(&s) {
            prop_assert_eq!(p.to_string(), s.clone());
            if p.is_exact() {
                prop_assert!(p.matches(&s) && const_matches(&s, &s));
                prop_assert!(const_matches("#", &s));
            }
        } else {
            prop_assert!(!const_matches(&s, "a"));
        }
    }
}
