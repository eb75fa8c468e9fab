//! The direct writing of an envelope: byte for byte what the general writer
//! ([`super::cloudevents`]'s `Serialize`) writes, the envelope's own members copied in
//! without going through `serde`, and only `data` serialized by `serde_json`. A string is
//! copied as it is when [it needs no escape](super::direct::plain_run), the common case; one
//! that does is escaped by `serde_json`. An envelope with a header whose name cannot be an
//! extension (they travel packed in one member), or a time the fast formatter does not write,
//! is left to the general writer, as is one whose data fails to serialize (so the error is the
//! general writer's). On the Kafka bench's envelope the general writer took 6.9 k
//! instructions, 3.6 k of them in `serde_json`'s escaping of strings that need none.

use serde::Serialize;

use super::cloudevents::{is_extension_name, optional_members, DATA_CONTENT_TYPE, SPEC_VERSION};
use super::direct::plain_run;
use super::Envelope;

/// Appends `envelope` to `out` as the general writer would; false (and `out` as it was) when
/// it is left to the general writer.
pub(crate) fn encode<T: Serialize>(envelope: &Envelope<T>, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let written = write(envelope, out).is_some();
    if !written {
        out.truncate(start);
    }
    written
}

fn write<T: Serialize>(envelope: &Envelope<T>, out: &mut Vec<u8>) -> Option<()> {
    if !envelope.headers.keys().all(|name| is_extension_name(name)) {
        return None;
    }
    let mut time = [0u8; 40];
    let time = crate::rfc3339::format(&envelope.time, &mut time)?;
    out.extend_from_slice(b"{\"specversion\":\"");
    out.extend_from_slice(SPEC_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"id\":\"");
    out.extend_from_slice(
        envelope
            .id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"source\":");
    string(out, &envelope.source)?;
    out.extend_from_slice(b",\"type\":");
    string(out, &envelope.event_type)?;
    out.extend_from_slice(b",\"time\":\"");
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"\",\"datacontenttype\":\"");
    out.extend_from_slice(DATA_CONTENT_TYPE.as_bytes());
    out.extend_from_slice(b"\",\"version\":");
    decimal(out, envelope.version);
    for (name, value) in optional_members(envelope) {
        if let Some(value) = value {
            member_name(out, name);
            string(out, value)?;
        }
    }
    for (name, value) in &envelope.headers {
        member_name(out, name);
        string(out, value)?;
    }
    out.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut *out, &envelope.data).ok()?;
    out.push(b'}');
    Some(())
}

/// `,"name":` for a name that needs no escape (the envelope's own, or an extension's).
fn member_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `text` as a JSON string: copied when it needs no escape, else escaped by `serde_json`.
fn string(out: &mut Vec<u8>, text: &str) -> Option<()> {
    if plain_run(text.as_bytes()) == text.len() {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        Some(())
    } else {
        serde_json::to_writer(&mut *out, text).ok()
    }
}

/// `value` in decimal, as `serde_json` writes an integer.
fn decimal(out: &mut Vec<u8>, mut value: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::envelope::generated::generated;

    /// The general writer's bytes.
    fn general<T: Serialize>(envelope: &Envelope<T>) -> Vec<u8> {
        serde_json::to_vec(envelope).expect("serializes")
    }

    #[test]
    fn writes_what_the_general_writer_writes() {
        let mut envelope = Envelope {
            id: uuid::Uuid::now_v7(),
            event_type: "order.created".into(),
            source: "shop".into(),
            time: chrono::Utc::now(),
            version: 4_294_967_295,
            correlation_id: Some("c-1".into()),
            causation_id: Some("a \"quoted\"\n cause".into()),
            tenant_id: None,
            user_id: Some("u-é€😀".into()),
            headers: [("traceparent".to_owned(), "00-ab-cd-01".to_owned())].into(),
            data: serde_json::json!({"n": 0, "s": "x\u{1}y"}),
        };
        let mut out = Vec::new();
        assert!(encode(&envelope, &mut out));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&general(&envelope))
        );
        envelope.version = 0;
        envelope.headers.clear();
        out.clear();
        assert!(encode(&envelope, &mut out));
        assert_eq!(out, general(&envelope));
    }

    #[test]
    fn leaves_to_the_general_writer_what_it_does_not_write() {
        let mut envelope = Envelope {
            id: uuid::Uuid::now_v7(),
            event_type: "t".into(),
            source: "s".into(),
            time: chrono::Utc::now(),
            version: 1,
            correlation_id: None,
            causation_id: None,
            tenant_id: None,
            user_id: None,
            headers: [("X-Custom".to_owned(), "v".to_owned())].into(),
            data: 1,
        };
        let mut out = b"kept".to_vec();
        assert!(!encode(&envelope, &mut out), "a packed header");
        assert_eq!(out, b"kept");
        envelope.headers.clear();
        envelope.time = chrono::DateTime::from_timestamp(300_000_000_000, 0).expect("time");
        assert!(!encode(&envelope, &mut out), "a year past 9999");
        assert_eq!(out, b"kept");
        // Data that fails to serialize (a map with non-string keys).
        let failing = envelope.map(|_| std::collections::BTreeMap::from([(vec![1u8], 1)]));
        let failing = Envelope {
            time: chrono::Utc::now(),
            ..failing
        };
        assert!(!encode(&failing, &mut out), "data that fails");
        assert_eq!(out, b"kept");
        assert!(serde_json::to_vec(&failing).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn writes_every_envelope_as_the_general_writer_does(e in generated()) {
            let mut out = Vec::new();
            let direct = encode(&e, &mut out);
            let expected = general(&e);
            if direct {
                prop_assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&expected)
                );
            }
            let extensions = e.headers.keys().all(|name| is_extension_name(name));
            let year = chrono::Datelike::year(&e.time);
            prop_assert!(direct || !extensions || year > 9999, "not written directly: {:?}", e);
            prop_assert_eq!(e.encode().expect("encodes"), expected);
        }
    }
}
