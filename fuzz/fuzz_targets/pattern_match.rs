//! Pattern parsing and matching on arbitrary strings: never panics, and the trie, the single
//! pattern matcher and the const matcher agree.
#![no_main]

use eventbus::pattern::{const_matches, Pattern, PatternSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\n');
    let name = parts.next().unwrap_or("");
    let patterns: Vec<Pattern> = parts.filter_map(|p| Pattern::parse(p).ok()).collect();
    let mut set = PatternSet::new();
    for (i, p) in patterns.iter().enumerate() {
        set.insert(p, i);
    }
    let mut from_set: Vec<usize> = set.matches(name).into_iter().copied().collect();
    from_set.sort_unstable();
    let naive: Vec<usize> = patterns
        .iter()
        .enumerate()
        .filter(|(_, p)| p.matches(name))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(from_set, naive, "trie and naive disagree on {name:?}");
    for p in &patterns {
        assert_eq!(const_matches(p.as_str(), name), p.matches(name));
    }
});
