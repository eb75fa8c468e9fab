//! Validation of the strings the macros accept: event names, subscription patterns, topics and
//! durations. The rules mirror `eventbus::pattern` (the runtime checks the same things again when
//! a bus starts); here they run at expansion time so a typo fails the build, with a message
//! saying what is wrong. Segments are numbered from 1 in messages.

use eventbus_names::{check_str, NameError};

/// The longest accepted event name, pattern or topic, in bytes (Kafka's topic limit).
pub(crate) use eventbus_names::MAX_LEN;

const CHARSET: &str = "ASCII letters, digits, `_` and `-`";

fn allowed(c: char) -> bool {
    c.is_ascii() && eventbus_names::allowed(c as u8)
}

/// The error of `s` (a pattern when `pattern`), said for the person who wrote it: segments
/// counted from 1, the segment quoted. The checks are `eventbus_names`', the runtime's own.
fn describe(s: &str, pattern: bool, error: NameError) -> String {
    let what = if pattern { "pattern" } else { "event name" };
    let segment = |index: usize| s.split('.').nth(index).unwrap_or_default();
    match error {
        NameError::Empty => {
            format!("{what} is empty; expected `.`-separated segments such as `approval.granted`")
        }
        NameError::TooLong { len } => {
            format!("{what} is {len} bytes long, the limit is {MAX_LEN}")
        }
        NameError::EmptySegment { index } => format!(
            "segment {} of {what} `{s}` is empty; segments are separated by single dots, with \
             none at the start or end",
            index + 1
        ),
        NameError::InvalidChar { ch, index } => {
            let at = s
                .get(..index)
                .map_or(0, |before| before.matches('.').count());
            match (ch, pattern) {
                ('*' | '#', false) => wildcard_in_name(s, ch, at),
                ('*' | '#', true) => format!(
                    "segment {} of pattern `{s}` is `{}`, which mixes a wildcard with other \
                     characters; `*`, `#` and `**` must each be a whole segment",
                    at + 1,
                    segment(at)
                ),
                _ => format!(
                    "character {ch:?} in segment {} of {what} `{s}` is not allowed; segments may \
                     contain {CHARSET}",
                    at + 1
                ),
            }
        }
        NameError::WildcardInName { index } => {
            let ch = segment(index).chars().next().unwrap_or('*');
            wildcard_in_name(s, ch, index)
        }
        NameError::MisplacedMultiWildcard { index } => format!(
            "`{}` is segment {} of {} in pattern `{s}`, but `#`/`**` (one or more segments) is \
             only allowed as the last segment; use `*` to match exactly one segment",
            segment(index),
            index + 1,
            s.split('.').count()
        ),
        other => format!("{what} `{s}` {other}"),
    }
}

fn wildcard_in_name(s: &str, ch: char, index: usize) -> String {
    format!(
        "event name `{s}` contains the wildcard {ch:?} (segment {}); an event name is concrete, \
         wildcards only belong in `#[subscriber]` patterns",
        index + 1
    )
}

/// Checks an event name: one or more `.`-separated segments of letters, digits, `_` and `-`,
/// no wildcards, at most [`MAX_LEN`] bytes.
pub(crate) fn check_name(s: &str) -> Result<(), String> {
    check_str(s, false).map_err(|e| describe(s, false, e))
}

/// Checks a subscription pattern: like a name, but a segment may be `*` (exactly one segment),
/// and the last segment may be `#` or `**` (one or more segments).
pub(crate) fn check_pattern(s: &str) -> Result<(), String> {
    check_str(s, true).map_err(|e| describe(s, true, e))
}

/// Checks a topic: 1 to [`MAX_LEN`] characters of ASCII letters, digits, `.`, `_` and `-`, and
/// not `.` or `..` (the names Kafka and Redis accept alike).
pub(crate) fn check_topic(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("topic is empty".to_owned());
    }
    if s.len() > MAX_LEN {
        return Err(format!(
            "topic is {} bytes long, the limit is {MAX_LEN}",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("`{s}` cannot be a topic name"));
    }
    match s.chars().find(|&c| !(allowed(c) || c == '.')) {
        None => Ok(()),
        Some(c) => Err(format!(
            "character {c:?} in topic `{s}` is not allowed; topics may contain ASCII letters, \
             digits, `.`, `_` and `-`"
        )),
    }
}

/// Parses a duration such as `250ms`, `5s`, `1m 30s` or `2h` (humantime's syntax, the same
/// as configuration files) into milliseconds; the error says what is wrong with it.
pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a duration such as \"250ms\", \"30s\", \"5m\" or \"1h 30m\"";
    let duration = humantime::parse_duration(s).map_err(|e| format!("{e}; {EXPECTED}"))?;
    u64::try_from(duration.as_millis()).map_err(|_| "it is too large".to_owned())
}

/// The publisher method name for an event name: lowercase, `.` and `-` replaced by `_`.
pub(crate) fn method_name(event_name: &str) -> String {
    event_name
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in [
            "approval.granted",
            "a",
            "orion.rfq.created",
            "user-2.sign_up",
            "A.B",
        ] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
        assert_eq!(check_name(&"a".repeat(MAX_LEN)), Ok(()));
    }

    #[test]
    fn invalid_names_say_why() {
        let cases = [
            ("", "event name is empty"),
            (
                "approval..granted",
                "segment 2 of event name `approval..granted` is empty",
            ),
            (".a", "segment 1 of event name `.a` is empty"),
            ("a.", "segment 2 of event name `a.` is empty"),
            (
                "approval.granted!",
                "character '!' in segment 2 of event name `approval.granted!` is not allowed",
            ),
            ("approval.*", "contains the wildcard '*' (segment 2)"),
            ("approval.#", "contains the wildcard '#'"),
            ("a**", "contains the wildcard '*' (segment 1)"),
            ("été", "character 'é' in segment 1"),
            ("a b", "character ' '"),
        ];
        for (name, expected) in cases {
            let err = check_name(name).expect_err(name);
            assert!(err.contains(expected), "{name}: {err}");
        }
        let err = check_name(&"a".repeat(MAX_LEN + 1)).expect_err("too long");
        assert!(err.contains("250 bytes long, the limit is 249"), "{err}");
    }

    #[test]
    fn valid_patterns() {
        for p in [
            "approval.*",
            "approval.#",
            "approval.**",
            "*.created",
            "#",
            "**",
            "*",
            "a.*.c",
            "a.b",
        ] {
            assert_eq!(check_pattern(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn invalid_patterns_say_why() {
        let cases = [
            (
                "approval.#.x",
                "`#` is segment 2 of 3 in pattern `approval.#.x`",
            ),
            ("**.x", "`**` is segment 1 of 2"),
            (
                "approval.a*",
                "segment 2 of pattern `approval.a*` is `a*`, which mixes a wildcard",
            ),
            ("approval.***", "mixes a wildcard"),
            ("approval.gr@nted", "character '@' in segment 2 of pattern"),
            ("a..b", "segment 2 of pattern `a..b` is empty"),
            ("", "pattern is empty"),
        ];
        for (p, expected) in cases {
            let err = check_pattern(p).expect_err(p);
            assert!(err.contains(expected), "{p}: {err}");
        }
    }

    #[test]
    fn topics() {
        for t in ["approvals", "a.b-c_d", "A9"] {
            assert_eq!(check_topic(t), Ok(()), "{t}");
        }
        for (t, expected) in [
            ("", "empty"),
            (".", "cannot be a topic"),
            ("..", "cannot be a topic"),
            ("a/b", "character '/'"),
            ("a*", "character '*'"),
        ] {
            let err = check_topic(t).expect_err(t);
            assert!(err.contains(expected), "{t}: {err}");
        }
        assert!(check_topic(&"t".repeat(MAX_LEN)).is_ok());
        assert!(check_topic(&"t".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("5s"), Ok(5_000));
        assert_eq!(parse_duration("1m"), Ok(60_000));
        assert_eq!(parse_duration("30m"), Ok(1_800_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("0ms"), Ok(0));
        for (s, expected) in [
            ("5", "time unit needed"),
            ("thirty seconds", "expected number"),
            ("5 parsecs", "unknown time unit"),
            ("ms", "expected number"),
            ("", "value was empty"),
            ("-1s", "expected number"),
            ("99999999999999999999h", "number is too large"),
        ] {
            let err = parse_duration(s).expect_err(s);
            assert!(err.starts_with(expected), "{s}: {err}");
            assert!(err.contains("expected a duration such as"), "{s}: {err}");
        }
        assert_eq!(parse_duration("30 seconds"), Ok(30_000));
        assert_eq!(parse_duration("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500));
    }

    #[test]
    fn method_names() {
        assert_eq!(method_name("approval.granted"), "approval_granted");
        assert_eq!(method_name("user-profile.Updated"), "user_profile_updated");
    }
}
