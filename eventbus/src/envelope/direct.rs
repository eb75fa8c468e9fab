//! The direct reading of an envelope as eventbus writes it: a CloudEvent whose members are
//! plain strings (no escapes), an unsigned `version`, string extensions and a `data` value,
//! each member once. It reads the members in one pass over the text, tells the known member
//! names by their first letter, finds the end of a string eight bytes at a time, and hands only
//! `data` to `serde_json` (which checks it and keeps it as raw JSON). The general reader
//! ([`super::cloudevents`]) goes through `serde`'s visitor for every member: on the Kafka
//! bench's envelope (ten members, a trace context, 90 bytes of data) it takes 8.1 k
//! instructions, this one 5.9 k, of which 1.5 k are `data`'s check.
//!
//! It accepts a subset of what the general reader accepts and reads it to the same envelope;
//! anything else (an escape, a repeated member, another producer's member names, a `version`
//! written as a string, a document that is not a CloudEvent, invalid JSON) gets `None`, and
//! the general reader decides, with its error messages. The tests hold the two readers to
//! this on generated and mutated documents.

use serde_json::value::RawValue;
use uuid::Uuid;

use super::cloudevents::{is_known_member, DEFAULT_VERSION, UNKNOWN_SOURCE};
use super::{Headers, RawEnvelope};

/// Reads `text` directly, or `None` when it is not in the form this reader takes.
pub(crate) fn decode(text: &str) -> Option<RawEnvelope> {
    let mut at = Cursor { text, at: 0 };
    at.expect(b'{')?;
    let mut seen = Members::default();
    let mut cloudevent = false;
    let (mut id, mut event_type, mut source, mut time) = (None, None, None, None);
    let (mut version, mut data) = (None, None);
    let (mut correlation_id, mut causation_id) = (None, None);
    let (mut tenant_id, mut user_id) = (None, None);
    let mut headers = Headers::new();
    loop {
        let name = at.member_name()?;
        at.expect(b':')?;
        let member = match name {
            Name::Known(Members::SPEC_VERSION) => {
                cloudevent = at.plain_string()?.starts_with("1.");
                if !cloudevent {
                    return None;
                }
                Members::SPEC_VERSION
            }
            Name::Known(Members::ID) => {
                id = Some(Uuid::try_parse(at.plain_string()?).ok()?);
                Members::ID
            }
            Name::Known(Members::TYPE) => {
                event_type = Some(at.plain_string()?.to_owned());
                Members::TYPE
            }
            Name::Known(Members::SOURCE) => {
                source = Some(at.plain_string()?.to_owned());
                Members::SOURCE
            }
            Name::Known(Members::TIME) => {
                time = Some(crate::rfc3339::parse(at.plain_string()?).ok()?);
                Members::TIME
            }
            Name::Known(Members::DATA_CONTENT_TYPE) => {
                let content_type = at.plain_string()?;
                if !(content_type.starts_with("application/json") || content_type.contains("+json"))
                {
                    return None;
                }
                Members::DATA_CONTENT_TYPE
            }
            Name::Known(Members::VERSION) => {
                version = Some(at.unsigned()?);
                Members::VERSION
            }
            Name::Known(Members::CORRELATION_ID) => {
                correlation_id = at.string_or_null()?;
                Members::CORRELATION_ID
            }
            Name::Known(Members::CAUSATION_ID) => {
                causation_id = at.string_or_null()?;
                Members::CAUSATION_ID
            }
            Name::Known(Members::TENANT_ID) => {
                tenant_id = at.string_or_null()?;
                Members::TENANT_ID
            }
            Name::Known(Members::USER_ID) => {
                user_id = at.string_or_null()?;
                Members::USER_ID
            }
            Name::Known(Members::DATA) => {
                data = Some(at.raw_value()?);
                Members::DATA
            }
            // Dropped by the general reader, as are the earlier format's members and the packed
            // headers (which it unpacks): all left to it.
            Name::Other("dataschema" | "subject") => return None,
            Name::Other(extension) if !is_known_member(extension) => {
                let value = at.plain_string()?;
                if headers
                    .insert(extension.to_owned(), value.to_owned())
                    .is_some()
                {
                    return None;
                }
                Members::NONE
            }
            _ => return None,
        };
        if !seen.add(member) {
            return None;
        }
        match at.next_byte()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    if !at.at_end() || !cloudevent {
        return None;
    }
    Some(RawEnvelope {
        id: id?,
        event_type: event_type?,
        source: source.unwrap_or_else(|| UNKNOWN_SOURCE.to_owned()),
        time: time?,
        version: version.unwrap_or(DEFAULT_VERSION),
        correlation_id,
        causation_id,
        tenant_id,
        user_id,
        headers,
        data: data?,
    })
}

/// The id of an envelope as eventbus's writer begins it (`{"specversion":"1.0","id":"…"`),
/// read from its first 65 bytes without reading the rest; `None` for any other beginning. What
/// the consumer asks the inbox about ahead of the delivery, which the inbox stage checks
/// against the decoded envelope's id.
pub(crate) fn leading_id(bytes: &[u8]) -> Option<Uuid> {
    const START: &[u8] = b"{\"specversion\":\"1.0\",\"id\":\"";
    let rest = bytes.strip_prefix(START)?;
    let (id, after) = rest.split_at_checked(36)?;
    if after.first() != Some(&b'"') {
        return None;
    }
    Uuid::try_parse_ascii(id).ok()
}

/// Calls `visit` with the name and value of each top-level member of the JSON object `text`
/// whose value is a plain string (no escapes), in order, skipping the members whose value is a
/// number, `true`, `false` or `null`, up to the first whose value is an object or an array
/// (the envelope writer puts its string members first, `data` and the packed headers last):
/// what a record's derived headers are copied from, borrowed, without reading the rest.
/// `None` when `text` does not start as such an object (a string with an escape, a missing
/// colon, ...): the caller then parses the document.
#[cfg(any(feature = "kafka", test))]
pub(crate) fn leading_strings<'a>(
    text: &'a str,
    mut visit: impl FnMut(&'a str, &'a str),
) -> Option<()> {
    let mut at = Cursor { text, at: 0 };
    at.expect(b'{')?;
    loop {
        if at.peek() != Some(b'"') {
            return Some(());
        }
        let name = at.plain_string()?;
        at.expect(b':')?;
        match at.peek()? {
            b'"' => visit(name, at.plain_string()?),
            b'{' | b'[' => return Some(()),
            _ => at.skip_scalar(),
        }
        if at.next_byte()? != b',' {
            return Some(());
        }
    }
}

/// A member's name: one of the members read directly (its bit in [`Members`]), or another.
enum Name<'a> {
    Known(u16),
    Other(&'a str),
}

/// The envelope members read so far, one bit each.
#[derive(Default)]
struct Members(u16);

impl Members {
    const NONE: u16 = 0;
    const SPEC_VERSION: u16 = 1;
    const ID: u16 = 1 << 1;
    const TYPE: u16 = 1 << 2;
    const SOURCE: u16 = 1 << 3;
    const TIME: u16 = 1 << 4;
    const DATA_CONTENT_TYPE: u16 = 1 << 5;
    const VERSION: u16 = 1 << 6;
    const CORRELATION_ID: u16 = 1 << 7;
    const CAUSATION_ID: u16 = 1 << 8;
    const TENANT_ID: u16 = 1 << 9;
    const USER_ID: u16 = 1 << 10;
    const DATA: u16 = 1 << 11;

    /// Adds `member`; false when it was read before.
    fn add(&mut self, member: u16) -> bool {
        let first = self.0 & member == 0;
        self.0 |= member;
        first
    }
}

/// A position in the document.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    #[cfg(any(feature = "kafka", test))]
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips a number or a literal (`true`, `false`, `null`): up to the next comma, closing
    /// brace or whitespace.
    #[cfg(any(feature = "kafka", test))]
    fn skip_scalar(&mut self) {
        let rest = &self.text.as_bytes()[self.at..];
        self.at += rest
            .iter()
            .take_while(|b| !matches!(b, b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t'))
            .count();
    }

    /// The next byte after whitespace, consumed.
    fn next_byte(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }

    /// Whether only whitespace is left.
    fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.at == self.text.len()
    }

    /// A string without escapes or control characters (which JSON does not allow raw).
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let rest = &self.text.as_bytes()[self.at..];
        let len = plain_run(rest);
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        let text = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(text)
    }

    /// A member's name: the ones read directly are told by their first byte and compared
    /// whole, without scanning for the end of the string first.
    fn member_name(&mut self) -> Option<Name<'a>> {
        self.skip_whitespace();
        let rest = self.text.as_bytes().get(self.at..)?;
        let is = |name: &str| {
            rest.get(1..=name.len()) == Some(name.as_bytes())
                && rest.get(name.len() + 1) == Some(&b'"')
        };
        let known = match rest.get(1) {
            Some(b'i') => [("id", Members::ID)].into_iter().find(|(n, _)| is(n)),
            Some(b's') => [
                ("specversion", Members::SPEC_VERSION),
                ("source", Members::SOURCE),
            ]
            .into_iter()
            .find(|(n, _)| is(n)),
            Some(b't') => [
                ("type", Members::TYPE),
                ("time", Members::TIME),
                ("tenantid", Members::TENANT_ID),
            ]
            .into_iter()
            .find(|(n, _)| is(n)),
            Some(b'd') => [
                ("data", Members::DATA),
                ("datacontenttype", Members::DATA_CONTENT_TYPE),
            ]
            .into_iter()
            .find(|(n, _)| is(n)),
            Some(b'v') => [("version", Members::VERSION)]
                .into_iter()
                .find(|(n, _)| is(n)),
            Some(b'c') => [
                ("correlationid", Members::CORRELATION_ID),
                ("causationid", Members::CAUSATION_ID),
            ]
            .into_iter()
            .find(|(n, _)| is(n)),
            Some(b'u') => [("userid", Members::USER_ID)]
                .into_iter()
                .find(|(n, _)| is(n)),
            _ => None,
        };
        match known {
            Some((name, member)) if rest.first() == Some(&b'"') => {
                self.at += name.len() + 2;
                Some(Name::Known(member))
            }
            _ => self.plain_string().map(Name::Other),
        }
    }

    /// A plain string, or `null`.
    fn string_or_null(&mut self) -> Option<Option<String>> {
        self.skip_whitespace();
        if self.text.as_bytes()[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        self.plain_string().map(|text| Some(text.to_owned()))
    }

    /// An unsigned integer as JSON writes it (no sign, no leading zero) that fits a `u32`; a
    /// fraction or exponent after it is not a member's end, so the document is left alone.
    fn unsigned(&mut self) -> Option<u32> {
        self.skip_whitespace();
        let rest = &self.text.as_bytes()[self.at..];
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || (len > 1 && rest[0] == b'0') {
            return None;
        }
        let value = self.text.get(self.at..self.at + len)?.parse().ok()?;
        self.at += len;
        Some(value)
    }

    /// Any JSON value, checked by `serde_json` and kept as its text.
    fn raw_value(&mut self) -> Option<Box<RawValue>> {
        let rest = self.text.get(self.at..)?;
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Box<RawValue>>();
        let value = values.next()?.ok()?;
        self.at += values.byte_offset();
        Some(value)
    }
}

/// How many bytes at the start of `bytes` a JSON string holds as they are: up to the first
/// quote, backslash or control character. Eight bytes are looked at a time, the last few
/// padded with spaces (the strings of an envelope are mostly ids, times and trace contexts of
/// 30 to 60 bytes).
pub(super) fn plain_run(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let (word, whole) = match bytes.get(at..at + 8).map(<[u8; 8]>::try_from) {
            Some(Ok(word)) => (word, true),
            _ => {
                let mut padded = [b' '; 8];
                let tail = bytes.get(at..).unwrap_or_default();
                padded[..tail.len()].copy_from_slice(tail);
                (padded, false)
            }
        };
        let stops = stops(u64::from_le_bytes(word));
        if stops != 0 {
            // The lowest flagged byte is a stop (flags above it may be false).
            return at + (stops.trailing_zeros() / 8) as usize;
        }
        if !whole {
            return bytes.len();
        }
        at += 8;
    }
}

/// The high bit of each byte of `word` that is a quote, a backslash or below 0x20 is set (and
/// maybe of bytes above the lowest of them, never of a byte below it).
fn stops(word: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
        | below(word, 0x20)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::envelope::generated::generated;
    use crate::envelope::Envelope;

    /// The general reader's envelope.
    fn general(text: &str) -> Result<RawEnvelope, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// What the tests hold the direct reader to: when it reads a document, the general reader
    /// reads it too, to the same envelope.
    fn agrees(text: &str) -> Result<bool, String> {
        let Some(direct) = decode(text) else {
            return Ok(false);
        };
        let general = general(text)
            .map_err(|e| format!("read directly, refused by the general reader ({e}): {text}"))?;
        let same = direct.id == general.id
            && direct.event_type == general.event_type
            && direct.source == general.source
            && direct.time == general.time
            && direct.version == general.version
            && direct.correlation_id == general.correlation_id
            && direct.causation_id == general.causation_id
            && direct.tenant_id == general.tenant_id
            && direct.user_id == general.user_id
            && direct.headers == general.headers
            && direct.data.get() == general.data.get();
        if same {
            Ok(true)
        } else {
            Err(format!(
                "the readers differ on {text}:\n direct  {direct:?}\n general {general:?}"
            ))
        }
    }

    fn envelope(data: serde_json::Value) -> Envelope<serde_json::Value> {
        Envelope {
            id: Uuid::now_v7(),
            event_type: "order.created".into(),
            source: "shop".into(),
            time: chrono::Utc::now(),
            version: 3,
            correlation_id: Some("c-1".into()),
            causation_id: None,
            tenant_id: Some("acme".into()),
            user_id: None,
            headers: Headers::from([(
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            )]),
            data,
        }
    }

    fn written(envelope: &Envelope<serde_json::Value>) -> String {
        String::from_utf8(envelope.encode().expect("encodes")).expect("UTF-8")
    }

    #[test]
    fn reads_what_the_encoder_writes_as_the_general_reader_does() {
        let mut e = envelope(serde_json::json!({"order": "o-1", "lines": [1, 2.5, null, true]}));
        assert_eq!(agrees(&written(&e)), Ok(true));
        e.correlation_id = None;
        e.tenant_id = None;
        e.headers.clear();
        e.data = serde_json::json!(7);
        assert_eq!(agrees(&written(&e)), Ok(true));
    }

    #[test]
    fn leaves_to_the_general_reader_what_it_does_not_take() {
        let id = Uuid::now_v7();
        let base = format!(
            r#""specversion":"1.0","id":"{id}","source":"s","type":"t","time":"2026-01-01T00:00:00Z""#
        );
        let cases = [
            // Read directly: whitespace, members in any order, `null`s, no source or version.
            (
                format!(r#" {{ {base} , "version" : 2 , "data" : {{"a":1}} }} "#),
                true,
            ),
            (format!(r#"{{"data":[1],"userid":null,{base}}}"#), true),
            (
                format!(
                    r#"{{"id":"{id}","specversion":"1.0","type":"t","time":"2026-01-01T00:00:00Z","data":null}}"#
                ),
                true,
            ),
            (
                format!(r#"{{{base},"data":"x","causationid":"k","ext1":"v"}}"#),
                true,
            ),
            // Left to the general reader, which reads these ...
            (format!(r#"{{{base},"version":"2","data":1}}"#), false),
            (
                format!(r#"{{{base},"version":1,"version":2,"data":1}}"#),
                false,
            ),
            (format!(r#"{{{base},"data":1,"data":2}}"#), false),
            (format!(r#"{{{base},"ext":"a","ext":"b","data":1}}"#), false),
            (format!(r#"{{{base},"ext":7,"data":1}}"#), false),
            (format!(r#"{{{base},"subject":"s","data":1}}"#), false),
            (format!(r#"{{{base},"correlationId":"c","data":1}}"#), false),
            (
                format!(r#"{{{base},"eventbusheaders":"{{}}","data":1}}"#),
                false,
            ),
            (format!(r#"{{{base},"source":"a\"b","data":1}}"#), false),
            (
                format!(r#"{{"id":"{id}","type":"t","time":"2026-01-01T00:00:00Z","data":1}}"#),
                false,
            ),
            // ... and refuses these.
            (format!(r#"{{{base},"version":01,"data":1}}"#), false),
            (format!(r#"{{{base},"version":-1,"data":1}}"#), false),
            (format!(r#"{{{base},"version":1.5,"data":1}}"#), false),
            (
                format!(r#"{{{base},"version":4294967296,"data":1}}"#),
                false,
            ),
            (format!(r#"{{{base},"data":{{"a":}}}}"#), false),
            (format!(r#"{{{base},"data":1}}x"#), false),
            (format!(r#"{{{base},"data":1,}}"#), false),
            (format!("{{{base},\"ext\":\"a\tb\",\"data\":1}}"), false),
            (format!(r#"{{{base}}}"#), false),
            (format!(r#"{{{base},"data":nul}}"#), false),
            (
                format!(r#"{{{base},"correlationid":nullx,"data":1}}"#),
                false,
            ),
            (
                r#"{"specversion":"2.0","id":"x","data":1}"#.to_owned(),
                false,
            ),
            ("{}".to_owned(), false),
            (String::new(), false),
        ];
        for (text, direct) in cases {
            assert_eq!(agrees(&text), Ok(direct), "{text}");
        }
    }

    fn strings_of(text: &str) -> Option<Vec<(&str, &str)>> {
        let mut seen = Vec::new();
        leading_strings(text, |name, value| seen.push((name, value)))?;
        Some(seen)
    }

    #[test]
    fn leading_strings_are_the_string_members_before_the_first_nested_value() {
        assert_eq!(
            strings_of(
                r#" { "id" : "a", "version" : 2, "ok":true,"n":null , "source":"s", "data" : [1], "time":"late"}"#
            ),
            Some(vec![("id", "a"), ("source", "s")]),
            "numbers and literals skipped, nothing read past an array"
        );
        assert_eq!(
            strings_of(r#"{"data":{"id":"x"},"id":"outer"}"#),
            Some(vec![]),
            "nothing read past an object"
        );
        assert_eq!(
            strings_of(r#"{"id":"a","source":"s"}"#),
            Some(vec![("id", "a"), ("source", "s")]),
            "to the end of the object"
        );
        assert_eq!(strings_of("{}"), Some(vec![]));
        // What the parser has to decide: an escape, a missing colon, not an object.
        for text in [
            r#"{"id":"a\"b","source":"s"}"#,
            r#"{"i\u0064":"a"}"#,
            r#"{"id" "a"}"#,
            "not json",
            "",
        ] {
            assert_eq!(strings_of(text), None, "{text:?}");
        }
        // What the encoder writes: its string members, in its order, up to `data`.
        let written = written(&envelope(serde_json::json!({"n": 1})));
        let names: Vec<&str> = strings_of(&written)
            .expect("the encoder's output")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "specversion",
                "id",
                "source",
                "type",
                "time",
                "datacontenttype",
                "correlationid",
                "tenantid",
                "traceparent"
            ],
            "the version (a number) skipped: {written}"
        );
    }

    #[test]
    fn a_plain_run_stops_at_the_first_quote_backslash_or_control_character() {
        let plain = "0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e é€😀 \u{7f}";
        assert_eq!(plain_run(plain.as_bytes()), plain.len());
        for stop in ['"', '\\', '\u{0}', '\u{1f}', '\n'] {
            for at in 0..=plain.len() {
                let Some(head) = plain.get(..at) else {
                    continue;
                };
                let text = format!("{head}{stop}{}", &plain[at..]);
                assert_eq!(plain_run(text.as_bytes()), at, "{text:?}");
            }
        }
    }

    /// An edit of a document: a character inserted, removed or replaced at a position.
    fn edit() -> impl Strategy<Value = (usize, u8, char)> {
        (
            any::<usize>(),
            0u8..3,
            prop::sample::select(vec![
                '{', '}', '[', ']', '"', ':', ',', '\\', ' ', '0', '1', '-', '.', 'e', 'n', 'a',
                '\t', '\u{1}', 'é',
            ]),
        )
    }

    fn apply(text: &str, (at, how, c): (usize, u8, char)) -> String {
        let chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        let mut out: Vec<char> = chars[..at].to_vec();
        // 0 inserts, 1 removes, 2 replaces.
        if how != 1 {
            out.push(c);
        }
        let skip = usize::from(how != 0);
        out.extend(chars.iter().skip(at + skip));
        out.into_iter().collect()
    }

    #[test]
    fn leading_id_reads_only_the_writers_beginning() {
        let id = "0190f1a2-7b3c-7def-8123-456789abcdef";
        let ours = format!(r#"{{"specversion":"1.0","id":"{id}","type":"t"}}"#);
        assert_eq!(leading_id(ours.as_bytes()), Uuid::try_parse(id).ok());
        for other in [
            format!(r#"{{"id":"{id}","specversion":"1.0"}}"#),
            format!(r#"{{ "specversion":"1.0","id":"{id}"}}"#),
            format!(r#"{{"specversion":"1.0","id":"{id}x"}}"#),
            format!(r#"{{"specversion":"1.0","id":"{}"}}"#, &id[..35]),
            r#"{"specversion":"1.0","id":"not-a-uuid-not-a-uuid-not-a-uuid-xx"}"#.to_owned(),
        ] {
            assert_eq!(leading_id(other.as_bytes()), None, "{other}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_the_general_reader_on_what_the_encoder_writes(e in generated()) {
            let text = written(&e);
            let read = agrees(&text).map_err(TestCaseError::fail)?;
            let plain = |s: &str| !s.contains(['"', '\\']) && !s.chars().any(char::is_control);
            // Plain strings and extension-named headers are the common case: read directly.
            // Times past the year 9999 are written in chrono's extended form (`+10000-...`),
            // which the direct reader does not take.
            let common = plain(&e.event_type)
                && plain(&e.source)
                && chrono::Datelike::year(&e.time) <= 9999
                && [&e.correlation_id, &e.causation_id, &e.tenant_id, &e.user_id]
                    .iter()
                    .all(|v| v.as_deref().is_none_or(plain))
                && e.headers.iter().all(|(name, value)| {
                    crate::envelope::cloudevents::is_extension_name(name) && plain(value)
                });
            prop_assert!(read || !common, "not read directly: {}", text);
        }

        #[test]
        fn leading_id_reads_the_id_the_encoder_wrote(e in generated()) {
            let text = written(&e);
            prop_assert_eq!(leading_id(text.as_bytes()), Some(e.id), "{}", text);
        }

        #[test]
        fn agrees_with_the_general_reader_on_edited_documents(
            e in generated(),
            edits in proptest::collection::vec(edit(), 1..4),
        ) {
            let mut text = written(&e);
            for one in edits {
                text = apply(&text, one);
            }
            agrees(&text).map_err(TestCaseError::fail)?;
        }
    }
}
