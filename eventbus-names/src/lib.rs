//! The grammar of eventbus names, shared by the runtime (`eventbus::pattern`) and the
//! macros (`#[event]`, `#[subscriber]`), so a name the build accepts is one the bus accepts.
//!
//! An **event name** is one or more segments separated by `.`, each non-empty and made of
//! ASCII letters, digits, `_` and `-`, at most [`MAX_LEN`] bytes. A **pattern** has the same
//! shape, but a segment may be `*` (exactly one segment) and the last one `#` or `**` (one or
//! more segments). Everything here is `const`, so generated code can check at compile time.
//!
//! ```
//! assert!(eventbus_names::check_str("approval.*", true).is_ok());
//! assert!(eventbus_names::const_matches("approval.*", "approval.granted"));
//! assert_eq!(
//!     eventbus_names::check_str("a..b", false),
//!     Err(eventbus_names::NameError::EmptySegment { index: 1 })
//! );
//! ```

#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

/// The longest accepted event name, pattern or topic, in bytes (Kafka's topic limit).
pub const MAX_LEN: usize = 249;

/// Why a name or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The string is empty.
    Empty,
    /// The string is longer than [`MAX_LEN`] bytes.
    TooLong {
        /// The string's length in bytes.
        len: usize,
    },
    /// A segment is empty (leading, trailing or doubled `.`).
    EmptySegment {
        /// Zero-based index of the segment.
        index: usize,
    },
    /// A character outside letters, digits, `_` and `-`.
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the string.
        index: usize,
    },
    /// An event name contains a wildcard segment.
    WildcardInName {
        /// Zero-based index of the segment.
        index: usize,
    },
    /// `#` or `**` appears before the last segment of a pattern.
    MisplacedMultiWildcard {
        /// Zero-based index of the segment.
        index: usize,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("is empty"),
            NameError::TooLong { len } => {
                write!(f, "is {len} bytes long, the limit is {MAX_LEN}")
            }
            NameError::EmptySegment { index } => write!(f, "segment {index} is empty"),
            NameError::InvalidChar { ch, index } => write!(
                f,
                "character {ch:?} at byte {index} is not allowed (use letters, digits, `_`, `-`)"
            ),
            NameError::WildcardInName { index } => write!(
                f,
                "segment {index} is a wildcard, which event names cannot contain"
            ),
            NameError::MisplacedMultiWildcard { index } => write!(
                f,
                "segment {index} is `#`/`**`, which is only allowed as the last segment"
            ),
        }
    }
}

impl core::error::Error for NameError {}

/// One segment of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Exactly this segment.
    Literal(&'a str),
    /// `*`: exactly one segment.
    Single,
    /// `#` or `**`: one or more trailing segments.
    Multi,
}

/// The segments of a pattern (or name), in order.
pub fn segments(pattern: &str) -> impl Iterator<Item = Segment<'_>> {
    pattern
        .split('.')
        .map(|seg| match wildcard(seg.as_bytes(), 0, seg.len()) {
            None => Segment::Literal(seg),
            Some(false) => Segment::Single,
            Some(true) => Segment::Multi,
        })
}

/// Checks a name (`pattern == false`) or a pattern, with the offending character decoded from
/// UTF-8.
pub fn check_str(s: &str, pattern: bool) -> Result<(), NameError> {
    check(s.as_bytes(), pattern).map_err(|err| match err {
        NameError::InvalidChar { index, ch } => NameError::InvalidChar {
            ch: s.get(index..).and_then(|r| r.chars().next()).unwrap_or(ch),
            index,
        },
        err => err,
    })
}

/// Compile-time matcher usable in const contexts (generated code:
/// `const _: () = assert!(...)`). False when `pattern` is not a valid pattern or `name` is not
/// a valid event name.
pub const fn const_matches(pattern: &str, name: &str) -> bool {
    check(pattern.as_bytes(), true).is_ok() && match_bytes(pattern.as_bytes(), name.as_bytes())
}

/// True when every name in `names` matches `pattern` (true for an empty slice). Usable in
/// const contexts like [`const_matches`].
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

/// Whether `pattern` (valid) matches `name`; false when `name` is not a valid name.
pub const fn matches(pattern: &str, name: &str) -> bool {
    match_bytes(pattern.as_bytes(), name.as_bytes())
}

/// Whether the segment `s[start..end]` is `*` (`Some(false)`), `#`/`**` (`Some(true)`) or a
/// literal (`None`).
pub const fn wildcard(s: &[u8], start: usize, end: usize) -> Option<bool> {
    match end - start {
        1 if s[start] == b'*' => Some(false),
        1 if s[start] == b'#' => Some(true),
        2 if s[start] == b'*' && s[start + 1] == b'*' => Some(true),
        _ => None,
    }
}

/// Whether `b` may appear in a literal segment.
pub const fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Validates a name (`pattern == false`) or pattern. For a non-ASCII byte the
/// reported `ch` is a placeholder; [`check_str`] decodes it.
pub const fn check(s: &[u8], pattern: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(NameError::TooLong { len: s.len() });
    }
    let (mut index, mut start) = (0, 0);
    while start <= s.len() {
        let end = segment_end(s, start);
        if end == start {
            return Err(NameError::EmptySegment { index });
        }
        match wildcard(s, start, end) {
            Some(_) if !pattern => return Err(NameError::WildcardInName { index }),
            Some(true) if end != s.len() => {
                return Err(NameError::MisplacedMultiWildcard { index })
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
                        return Err(NameError::InvalidChar { ch, index: i });
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
