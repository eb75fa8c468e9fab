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

pub use eventbus_names::NameError as PatternError;
use eventbus_names::{check, check_str, wildcard};
pub use eventbus_names::{const_matches, const_matches_all, Segment, MAX_LEN};

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
            eventbus_names::matches(&self.raw, name)
        }
    }

    /// The pattern's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        eventbus_names::segments(&self.raw)
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
