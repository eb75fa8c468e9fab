//! CloudEvents binary mode on Kafka: the record's value is the event's `data`, its attributes
//! and extensions are `ce_<name>` headers, `content-type` is the data's. Producing turns the
//! structured envelope a message carries into that; consuming turns any record with a
//! `ce_specversion` header (ours or another CloudEvents producer's) back into the structured
//! envelope the pipeline reads, so nothing past the record layer knows the mode.

use serde_json::{Map, Value};

/// The prefix of attribute headers.
pub(crate) const PREFIX: &str = "ce_";
/// The header naming the data's media type.
pub(crate) const CONTENT_TYPE: &str = "content-type";

/// A binary-mode record's value and headers.
pub(crate) type BinaryRecord = (Vec<u8>, Vec<(String, String)>);

/// The value and `ce_*` headers of `payload` (a structured envelope) in binary mode; `None`
/// when the payload is not a JSON object with `data` (it then goes as it is).
pub(crate) fn encode(payload: &[u8]) -> Option<BinaryRecord> {
    let Value::Object(mut event) = serde_json::from_slice::<Value>(payload).ok()? else {
        return None;
    };
    let data = event.remove("data")?;
    let content_type = event
        .remove("datacontenttype")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| crate::envelope::cloudevents::DATA_CONTENT_TYPE.to_owned());
    let mut headers = vec![(CONTENT_TYPE.to_owned(), content_type)];
    if !event.contains_key("specversion") {
        headers.push((
            format!("{PREFIX}specversion"),
            crate::envelope::cloudevents::SPEC_VERSION.to_owned(),
        ));
    }
    for (name, value) in event {
        let text = match value {
            Value::String(text) => text,
            Value::Null => continue,
            other => other.to_string(),
        };
        headers.push((format!("{PREFIX}{name}"), text));
    }
    let value = serde_json::to_vec(&data).ok()?;
    Some((value, headers))
}

/// The structured envelope of a binary-mode record: its `ce_*` headers (`attributes`, names
/// without the prefix) and its value. `version` is read back as a number. `None` when the
/// value is not JSON (the record is then passed on as it is, and decoding reports it).
pub(crate) fn decode(
    attributes: &[(String, String)],
    content_type: Option<&str>,
    value: &[u8],
) -> Option<Vec<u8>> {
    let data: Value = serde_json::from_slice(value).ok()?;
    let mut event = Map::new();
    for (name, text) in attributes {
        let value = match name.as_str() {
            "version" => text
                .parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(text.as_str())),
            _ => Value::from(text.as_str()),
        };
        event.insert(name.clone(), value);
    }
    if let Some(content_type) = content_type {
        event.insert("datacontenttype".to_owned(), Value::from(content_type));
    }
    event.insert("data".to_owned(), data);
    serde_json::to_vec(&Value::Object(event)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::RawEnvelope;

    #[test]
    fn an_envelope_goes_binary_and_comes_back_the_same() {
        let structured = br#"{"specversion":"1.0","id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e","source":"shop","type":"order.created","time":"2026-11-23T10:15:01.123Z","datacontenttype":"application/json","version":2,"correlationid":"c-1","traceparent":"00-x","data":{"order":"o-1","n":3}}"#;
        let (value, headers) = encode(structured).expect("an envelope");
        assert_eq!(value, br#"{"n":3,"order":"o-1"}"#.to_vec());
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("ce_type"), Some("order.created"));
        assert_eq!(header("ce_version"), Some("2"));
        assert_eq!(header("ce_correlationid"), Some("c-1"));
        assert_eq!(header("ce_traceparent"), Some("00-x"));
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(header("ce_data"), None);
        let attributes: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(n, v)| n.strip_prefix(PREFIX).map(|n| (n.to_owned(), v.clone())))
            .collect();
        let back = decode(&attributes, header("content-type"), &value).expect("JSON data");
        let original = RawEnvelope::decode(structured).expect("valid");
        let decoded = RawEnvelope::decode(&back).expect("a valid envelope again");
        assert_eq!(decoded.id, original.id);
        assert_eq!(decoded.version, 2);
        assert_eq!(decoded.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(decoded.headers, original.headers);
        assert_eq!(decoded.time, original.time);
        let data: Value = serde_json::from_str(decoded.data.get()).expect("json");
        assert_eq!(data, serde_json::json!({"order": "o-1", "n": 3}));
    }

    #[test]
    fn what_is_not_an_envelope_stays_as_it_is() {
        assert!(encode(b"not json").is_none());
        assert!(encode(br#"{"no":"data"}"#).is_none());
        assert!(decode(&[], None, b"not json").is_none());
    }
}
