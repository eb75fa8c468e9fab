//! Event names, subscription patterns and a precompiled pattern trie.
//!
//! # Syntax
//!
//! An **event name** is one or more segments separated by `.`, such as
//! `approval.granted` or `orion.rfq.created`. Every segment is non-empty and
//! made of ASCII letters, digits, `_` and `-`. A name is at most
//! [`MAX_LEN`] (249) bytes long. Matching is case-sensitive.
//!
//! A **pattern** has the same shape, but each segment may also be a wildcard:
//!
//! | segment        | matches                                                   |
//! |----------------|-----------------------------------------------------------|
//! | literal        | exactly that segment                                      |
//! | `*`            | exactly one segment                                       |
//! | `#` or `**`    | one or more trailing segments; only allowed as the last   |
//!
//! A pattern without wildcards is *exact* and matches only the identical name.
//!
//! | pattern       | matches                                  | does not match                 |
//! |---------------|------------------------------------------|--------------------------------|
//! | `approval.*`  | `approval.granted`                       | `approval`, `approval.a.b`     |
//! | `approval.#`  | `approval.granted`, `approval.a.b`       | `approval`                     |
//! | `*.created`   | `order.created`                          | `created`, `a.order.created`   |
//! | `#`           | every name                               |                                |
//!
//! A string that is not a valid event name never matches any pattern.
//!
//! [`Pattern`] matches one pattern; [`PatternSet`] matches many at once by
//! walking a trie; [`const_matches`] and [`const_matches_all`] do the same
//! check at compile time.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasherDefault, Hasher},
    ops::ControlFlow,
    str::FromStr,
};

/// The longest accepted event name or pattern, in bytes.
pub const MAX_LEN: usize = 249;

/// Why a name or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The string is empty.
    #[error("is empty")]
    Empty,
    /// The string is longer than [`MAX_LEN`] bytes.
    #[error("is {len} bytes long, the limit is {}", MAX_LEN)]
    TooLong {
        /// The string's length in bytes.
        len: usize,
    },
    /// A segment is empty (leading, trailing or doubled `.`).
    #[error("segment {index} is empty")]
    EmptySegment {
        /// Zero-based index of the segment.
        index: usize,
    },
    /// A character outside letters, digits, `_` and `-`.
    #[error("character {ch:?} at byte {index} is not allowed (use letters, digits, `_`, `-`)")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the string.
        index: usize,
    },
    /// An event name contains a wildcard segment.
    #[error("segment {index} is a wildcard, which event names cannot contain")]
    WildcardInName {
        /// Zero-based index of the segment.
        index: usize,
    },
    /// `#` or `**` appears before the last segment of a pattern.
    #[error("segment {index} is `#`/`**`, which is only allowed as the last segment")]
    MisplacedMultiWildcard {
        /// Zero-based index of the segment.
        index: usize,
    },
}

/// Checks that `name` is a valid event name (no wildcards).
///
/// # Errors
///
/// The first problem found, in the order the variants of [`PatternError`]
/// are listed.
pub fn validate_name(name: &str) -> Result<(), PatternError> {
    check_str(name, false)
}

/// A parsed subscription pattern; see the [module docs](self) for the syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: Box<str>,
    exact: bool,
}

impl Pattern {
    /// Parses and validates a pattern.
    ///
    /// # Errors
    ///
    /// The first problem found; never [`PatternError::WildcardInName`].
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        check_str(s, true)?;
        let exact = s
            .split('.')
            .all(|seg| wildcard(seg.as_bytes(), 0, seg.len()).is_none());
        Ok(Pattern {
            raw: s.into(),
            exact,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the pattern has no wildcards, so it matches only itself.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// True when `name` is a valid event name that this pattern matches.
    pub fn matches(&self, name: &str) -> bool {
        if self.exact {
            *self.raw == *name
        } else {
            match_bytes(self.raw.as_bytes(), name.as_bytes())
        }
    }

    fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.raw
            .split('.')
            .map(|seg| match wildcard(seg.as_bytes(), 0, seg.len()) {
                None => Segment::Literal(seg),
                Some(false) => Segment::Single,
                Some(true) => Segment::Multi,
            })
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Compile-time matcher usable in const contexts (used by generated code:
/// `const _: () = assert!(...)`). False when `pattern` is not a valid pattern
/// or `name` is not a valid event name.
pub const fn const_matches(pattern: &str, name: &str) -> bool {
    check(pattern.as_bytes(), true).is_ok() && match_bytes(pattern.as_bytes(), name.as_bytes())
}

/// True when every name in `names` matches `pattern` (true for an empty
/// slice). Usable in const contexts like [`const_matches`].
pub const fn const_matches_all(pattern: &str, names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        if !const_matches(pattern, names[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// A precompiled set of patterns, each with a value, matched against a name in
/// one walk of a trie (cost depends on the name's segment count and the trie
/// branching actually taken, not on the number of patterns).
#[derive(Debug, Clone)]
pub struct PatternSet<V> {
    nodes: Vec<Node>,
    values: Vec<V>,
}

/// One trie node; indices point into `PatternSet::nodes` / `values`.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Literal children.
    literals: HashMap<Box<str>, usize, BuildHasherDefault<SegmentHasher>>,
    /// The `*` child.
    single: Option<usize>,
    /// Values of patterns that end at this node.
    ends: Vec<usize>,
    /// Values of patterns that end with `#`/`**` after this node.
    multi: Vec<usize>,
}

impl<V> PatternSet<V> {
    /// Creates an empty set.
    pub fn new() -> Self {
        PatternSet {
            nodes: vec![Node::default()],
            values: Vec::new(),
        }
    }

    /// Adds `pattern` with its `value`; duplicates are kept and each matches.
    pub fn insert(&mut self, pattern: &Pattern, value: V) {
        let id = self.values.len();
        self.values.push(value);
        let mut node = 0;
        for seg in pattern.segments() {
            let next = self.nodes.len();
            let child = match seg {
                Segment::Multi => {
                    self.nodes[node].multi.push(id);
                    return;
                }
                Segment::Single => *self.nodes[node].single.get_or_insert(next),
                Segment::Literal(lit) => {
                    *self.nodes[node].literals.entry(lit.into()).or_insert(next)
                }
            };
            if child == next {
                self.nodes.push(Node::default());
            }
            node = child;
        }
        self.nodes[node].ends.push(id);
    }

    /// Number of patterns inserted.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no pattern has been inserted.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Calls `f` once per (pattern, value) that matches `name`, in no
    /// particular order.
    pub fn for_each_match<'a>(&'a self, name: &str, mut f: impl FnMut(&'a V)) {
        let _ = self.visit(name, &mut |v| {
            f(v);
            ControlFlow::Continue(())
        });
    }

    /// Collects the values of all patterns matching `name`, in no particular
    /// order.
    pub fn matches(&self, name: &str) -> Vec<&V> {
        let mut out = Vec::new();
        self.for_each_match(name, |v| out.push(v));
        out
    }

    /// True when at least one pattern matches `name`; stops at the first.
    pub fn is_match(&self, name: &str) -> bool {
        self.visit(name, &mut |_| ControlFlow::Break(())).is_break()
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        f: &mut impl FnMut(&'a V) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if check(name.as_bytes(), false).is_err() {
            return ControlFlow::Continue(());
        }
        self.walk(0, name, f)
    }

    /// Visits node `node` with `rest` (one or more segments) left to match.
    fn walk<'a>(
        &'a self,
        node: usize,
        rest: &str,
        f: &mut impl FnMut(&'a V) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let node = &self.nodes[node];
        for &id in &node.multi {
            f(&self.values[id])?;
        }
        let (head, tail) = match rest.split_once('.') {
            Some((head, tail)) => (head, Some(tail)),
            None => (rest, None),
        };
        let literal = node.literals.get(head).copied();
        for child in [literal, node.single].into_iter().flatten() {
            match tail {
                Some(tail) => self.walk(child, tail, f)?,
                None => {
                    for &id in &self.nodes[child].ends {
                        f(&self.values[id])?;
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

impl<V> Default for PatternSet<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'p, V> FromIterator<(&'p Pattern, V)> for PatternSet<V> {
    fn from_iter<I: IntoIterator<Item = (&'p Pattern, V)>>(iter: I) -> Self {
        let mut set = PatternSet::new();
        for (pattern, value) in iter {
            set.insert(pattern, value);
        }
        set
    }
}

/// FxHash-style hasher for the trie's literal segments: keys come from
/// subscription patterns, so speed matters more than flooding resistance.
#[derive(Default)]
struct SegmentHasher(u64);

impl Hasher for SegmentHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.write_u64(u64::from(byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Literal(&'a str),
    Single,
    Multi,
}

/// [`check`] with the offending character decoded from UTF-8.
fn check_str(s: &str, pattern: bool) -> Result<(), PatternError> {
    check(s.as_bytes(), pattern).map_err(|err| match err {
        PatternError::InvalidChar { index, ch } => PatternError::InvalidChar {
            ch: s.get(index..).and_then(|r| r.chars().next()).unwrap_or(ch),
            index,
        },
        err => err,
    })
}

/// Validates a name (`pattern == false`) or pattern. For a non-ASCII byte the
/// reported `ch` is a placeholder; [`check_str`] decodes it.
const fn check(s: &[u8], pattern: bool) -> Result<(), PatternError> {
    if s.is_empty() {
        return Err(PatternError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(PatternError::TooLong { len: s.len() });
    }
    let (mut index, mut start) = (0, 0);
    while start <= s.len() {
        let end = segment_end(s, start);
        if end == start {
            return Err(PatternError::EmptySegment { index });
        }
        match wildcard(s, start, end) {
            Some(_) if !pattern => return Err(PatternError::WildcardInName { index }),
            Some(true) if end != s.len() => {
                return Err(PatternError::MisplacedMultiWildcard { index })
            }
            Some(_) => {}
            None => {
                let mut i = start;
                while i < end {
                    if !allowed(s[i]) {
                        let ch = if s[i].is_ascii() {
                            s[i] as char
                        } else {
                            char::REPLACEMENT_CHARACTER
                        };
                        return Err(PatternError::InvalidChar { ch, index: i });
                    }
                    i += 1;
                }
            }
        }
        index += 1;
        start = end + 1;
    }
    Ok(())
}

/// Matches a valid pattern `p` against `n`; false when `n` is not a valid
/// name. Only the name segments consumed by wildcards need a charset check:
/// one equal to a literal segment is valid already.
const fn match_bytes(p: &[u8], n: &[u8]) -> bool {
    if n.len() > MAX_LEN {
        return false;
    }
    let (mut i, mut j) = (0, 0);
    loop {
        let (pe, ne) = (segment_end(p, i), segment_end(n, j));
        let ok = match wildcard(p, i, pe) {
            Some(true) => return valid_segments(n, j),
            Some(false) => valid_segment(n, j, ne),
            None => eq_range(p, i, pe, n, j, ne),
        };
        if !ok {
            return false;
        }
        let (p_done, n_done) = (pe == p.len(), ne == n.len());
        if p_done || n_done {
            return p_done && n_done;
        }
        i = pe + 1;
        j = ne + 1;
    }
}

/// Byte index of the `.` ending the segment that starts at `start`, or `s.len()`.
const fn segment_end(s: &[u8], mut start: usize) -> usize {
    while start < s.len() && s[start] != b'.' {
        start += 1;
    }
    start
}

/// `Some(false)` for `*`, `Some(true)` for `#`/`**`, `None` otherwise.
const fn wildcard(s: &[u8], start: usize, end: usize) -> Option<bool> {
    match end - start {
        1 if s[start] == b'*' => Some(false),
        1 if s[start] == b'#' => Some(true),
        2 if s[start] == b'*' && s[start + 1] == b'*' => Some(true),
        _ => None,
    }
}

const fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// True when `s[start..end]` is a non-empty literal segment.
const fn valid_segment(s: &[u8], mut start: usize, end: usize) -> bool {
    if start == end {
        return false;
    }
    while start < end {
        if !allowed(s[start]) {
            return false;
        }
        start += 1;
    }
    true
}

/// True when `s[start..]` is one or more valid literal segments.
const fn valid_segments(s: &[u8], mut start: usize) -> bool {
    loop {
        let end = segment_end(s, start);
        if !valid_segment(s, start, end) {
            return false;
        }
        if end == s.len() {
            return true;
        }
        start = end + 1;
    }
}

/// `a[a0..a1] == b[b0..b1]`, in const.
const fn eq_range(a: &[u8], a0: usize, a1: usize, b: &[u8], b0: usize, b1: usize) -> bool {
    if a1 - a0 != b1 - b0 {
        return false;
    }
    let mut k = 0;
    while k < a1 - a0 {
        if a[a0 + k] != b[b0 + k] {
            return false;
        }
        k += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern, name, expected)
    const CASES: &[(&str, &str, bool)] = &[
        ("approval.granted", "approval.granted", true),
        ("approval.granted", "approval.denied", false),
        ("approval.granted", "approval", false),
        ("approval.granted", "approval.granted.x", false),
        ("Order.Created", "order.created", false),
        ("approval.*", "approval.granted", true),
        ("approval.*", "approval", false),
        ("approval.*", "approval.a.b", false),
        ("approval.*", "other.granted", false),
        ("approval.#", "approval.granted", true),
        ("approval.#", "approval.a.b", true),
        ("approval.#", "approval", false),
        ("approval.#", "approvals.x", false),
        ("approval.**", "approval.a.b.c", true),
        ("approval.**", "approval", false),
        ("*.created", "order.created", true),
        ("*.created", "order.updated", false),
        ("*.created", "created", false),
        ("*.created", "a.order.created", false),
        ("orion.*.created", "orion.rfq.created", true),
        ("orion.*.created", "orion.rfq.quote.created", false),
        ("orion.*.created", "orion.created", false),
        ("#", "a", true),
        ("#", "orion.rfq.created", true),
        ("**", "x.y", true),
        ("*", "a", true),
        ("*", "a.b", false),
        ("*.*", "a.b", true),
        ("*.#", "a", false),
        ("*.#", "a.b.c", true),
        ("a.*.c.#", "a.b.c.d.e", true),
        ("a.*.c.#", "a.b.c", false),
        ("svc-1.entity_2.created", "svc-1.entity_2.created", true),
        ("svc-1.*", "svc-1.entity_2", true),
        ("svc-1.*", "svc_1.entity_2", false),
        // Invalid names never match.
        ("#", "", false),
        ("#", "a..b", false),
        ("#", "a.", false),
        ("*", "*", false),
        ("a.*", "a.#", false),
        ("a.#", "a.b c", false),
        ("approval.*", "approval.é", false),
    ];

    // Generated code relies on these being usable in const contexts.
    const _: () = assert!(const_matches("approval.*", "approval.granted"));
    const _: () = assert!(!const_matches("approval.*", "approval"));
    const _: () = assert!(const_matches_all(
        "orion.#",
        &["orion.rfq.created", "orion.x"]
    ));
    const _: () = assert!(const_matches_all("x", &[]));

    #[test]
    fn matching_table() {
        for &(pattern, name, expected) in CASES {
            let p = Pattern::parse(pattern).expect(pattern);
            assert_eq!(p.matches(name), expected, "{pattern} vs {name:?}");
            assert_eq!(
                const_matches(pattern, name),
                expected,
                "const {pattern} vs {name:?}"
            );
            let set: PatternSet<()> = [(&p, ())].into_iter().collect();
            assert_eq!(set.is_match(name), expected, "set {pattern} vs {name:?}");
        }
    }

    #[test]
    fn too_long_names_never_match() {
        let name = ["a"; 125].join(".");
        assert_eq!(name.len(), 249);
        assert!(Pattern::parse("#").unwrap().matches(&name));
        let longer = format!("{name}a");
        assert!(!Pattern::parse("#").unwrap().matches(&longer));
        assert!(!const_matches("#", &longer));
        assert_eq!(
            validate_name(&longer),
            Err(PatternError::TooLong { len: 250 })
        );
    }

    #[test]
    fn invalid_inputs() {
        use PatternError::*;
        let names = [
            ("", Empty),
            (".", EmptySegment { index: 0 }),
            ("a..b", EmptySegment { index: 1 }),
            ("a.", EmptySegment { index: 1 }),
            ("a b", InvalidChar { ch: ' ', index: 1 }),
            ("ab.cé", InvalidChar { ch: 'é', index: 4 }),
            ("a.*", WildcardInName { index: 1 }),
            ("#", WildcardInName { index: 0 }),
            ("a.**.b", WildcardInName { index: 1 }),
        ];
        for (name, err) in names {
            assert_eq!(validate_name(name), Err(err), "{name:?}");
        }
        let patterns = [
            ("", Empty),
            ("a.#.b", MisplacedMultiWildcard { index: 1 }),
            ("**.a", MisplacedMultiWildcard { index: 0 }),
            ("a*", InvalidChar { ch: '*', index: 1 }),
            ("a.***", InvalidChar { ch: '*', index: 2 }),
            ("a.#b", InvalidChar { ch: '#', index: 2 }),
            ("*..a", EmptySegment { index: 1 }),
        ];
        for (pattern, err) in patterns {
            assert_eq!(Pattern::parse(pattern), Err(err.clone()), "{pattern:?}");
            assert!(!const_matches(pattern, "a"));
        }
        let long = "a".repeat(250);
        assert_eq!(
            "a".repeat(250).parse::<Pattern>(),
            Err(TooLong { len: 250 })
        );
        assert_eq!(
            TooLong { len: 250 }.to_string(),
            "is 250 bytes long, the limit is 249"
        );
        assert!(validate_name(&long[..249]).is_ok());
    }

    #[test]
    fn pattern_accessors() {
        let p: Pattern = "orion.*.created".parse().unwrap();
        assert_eq!(p.as_str(), "orion.*.created");
        assert_eq!(p.to_string(), "orion.*.created");
        assert!(!p.is_exact());
        assert!(Pattern::parse("orion.rfq.created").unwrap().is_exact());
        assert!(!Pattern::parse("orion.**").unwrap().is_exact());
    }

    #[test]
    fn set_returns_exactly_the_matching_values() {
        let patterns = [
            "order.created",
            "order.*",
            "order.#",
            "*.created",
            "#",
            "order.created",
            "order.item.#",
            "*.item.*",
            "order.item.added",
            "invoice.**",
        ];
        let parsed: Vec<Pattern> = patterns.iter().map(|p| p.parse().unwrap()).collect();
        let set: PatternSet<usize> = parsed.iter().zip(0..).collect();
        assert_eq!(set.len(), patterns.len());
        let expected: &[(&str, &[usize])] = &[
            ("order.created", &[0, 1, 2, 3, 4, 5]),
            ("order.updated", &[1, 2, 4]),
            ("order", &[4]),
            ("order.item.added", &[2, 4, 6, 7, 8]),
            ("order.item.removed.x", &[2, 4, 6]),
            ("invoice.created", &[3, 4, 9]),
            ("cart.item.added", &[4, 7]),
            ("a..b", &[]),
            ("", &[]),
        ];
        for &(name, want) in expected {
            let mut got: Vec<usize> = set.matches(name).into_iter().copied().collect();
            got.sort_unstable();
            assert_eq!(got, want, "{name:?}");
            assert_eq!(set.is_match(name), !want.is_empty(), "{name:?}");
            let naive: Vec<usize> = (0..parsed.len())
                .filter(|&i| parsed[i].matches(name))
                .collect();
            assert_eq!(naive, want, "naive {name:?}");
        }
        let empty = PatternSet::<u8>::default();
        assert!(empty.is_empty() && !empty.is_match("a") && empty.matches("a").is_empty());
    }
}
