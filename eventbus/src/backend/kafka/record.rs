//! A [`Message`] as a Kafka record: the envelope JSON is the value, the partition key is the
//! record key (so one key stays in one partition, in order), and the rest travels in headers:
//!
//! | header | what |
//! |---|---|
//! | `type` | the event type, for routing and filtering without parsing the value |
//! | `event-id`, `event-source`, `event-time`, `correlation-id` | copied from the envelope |
//! | every transport header of the message | attempts, tenant, dead-letter metadata, ... |
//! | `eventbus-origin-topic`, `eventbus-retry-group`, `eventbus-retry-due` | on retry-tier records only |
//!
//! Reading back, the envelope copies are dropped (the value is the truth) and the retry-tier
//! headers are turned back into the original topic, so a record round-trips to the message.

use std::borrow::Cow;
use std::sync::Arc;

use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::binary;
use crate::backend::{Message, MessageHeaders};
use crate::hash_tables::SharedNames;

/// Header carrying the event type.
pub const TYPE_HEADER: &str = "type";
/// Header carrying the envelope's id.
pub const EVENT_ID_HEADER: &str = "event-id";
/// Header carrying the envelope's source.
pub const EVENT_SOURCE_HEADER: &str = "event-source";
/// Header carrying the envelope's time.
pub const EVENT_TIME_HEADER: &str = "event-time";
/// Header carrying the envelope's correlation id.
pub const CORRELATION_HEADER: &str = "correlation-id";
/// On a retry-tier record: the topic the message was consumed from.
pub const ORIGIN_TOPIC_HEADER: &str = "eventbus-origin-topic";
/// On a retry-tier record: the consumer group that deferred it (the only one to consume it).
pub const RETRY_GROUP_HEADER: &str = "eventbus-retry-group";
/// On a retry-tier record: when it is due, in milliseconds since the Unix epoch.
pub const RETRY_DUE_HEADER: &str = "eventbus-retry-due";

/// The `content-type` of a structured-mode record.
pub(crate) const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// Headers derived from the envelope, dropped when reading back.
const DERIVED: &[&str] = &[
    TYPE_HEADER,
    EVENT_ID_HEADER,
    EVENT_SOURCE_HEADER,
    EVENT_TIME_HEADER,
    CORRELATION_HEADER,
];

/// The few envelope fields copied into headers, borrowed from the value.
#[derive(serde::Deserialize, Default)]
struct Meta<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "correlationid", alias = "correlationId")]
    correlation_id: Option<Cow<'a, str>>,
}

/// Reads the envelope's leading string members without parsing the rest (the envelope
/// writer puts `specversion`, `id`, `source`, `type`, `time`, `datacontenttype`, `version` and
/// `correlationid` before any nested value; the earlier format's `correlationId` is read too).
/// `None` when the bytes do not look like that (escapes, other layout, no `id`): the caller
/// then parses the document.
fn scan_meta(bytes: &[u8]) -> Option<Meta<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut meta = Meta::default();
    crate::envelope::leading_strings(text, |name, value| {
        let slot = match name {
            "id" => &mut meta.id,
            "source" => &mut meta.source,
            "time" => &mut meta.time,
            "correlationid" | "correlationId" => &mut meta.correlation_id,
            _ => return,
        };
        *slot = Some(Cow::Borrowed(value));
    })?;
    meta.id.is_some().then_some(meta)
}

/// The Kafka headers of `message`; `structured`: its value is the whole CloudEvent
/// (`content-type: application/cloudevents+json` is added when the payload is an envelope).
pub(crate) fn headers(message: &Message, structured: bool) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 5);
    if !message.event_type.is_empty() {
        headers = headers.insert(Header {
            key: TYPE_HEADER,
            value: Some(&*message.event_type),
        });
    }
    // Only the envelope's own top-level string fields; a payload that is not an envelope
    // (raw bytes published by hand) simply gets none.
    let meta = scan_meta(&message.payload)
        .or_else(|| serde_json::from_slice::<Meta<'_>>(&message.payload).ok());
    if let Some(meta) = meta {
        if structured && !message.headers.contains_key(binary::CONTENT_TYPE) {
            headers = headers.insert(Header {
                key: binary::CONTENT_TYPE,
                value: Some(STRUCTURED_CONTENT_TYPE),
            });
        }
        for (key, value) in [
            (EVENT_ID_HEADER, meta.id),
            (EVENT_SOURCE_HEADER, meta.source),
            (EVENT_TIME_HEADER, meta.time),
            (CORRELATION_HEADER, meta.correlation_id),
        ] {
            if let Some(value) = value {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_ref()),
                });
            }
        }
    }
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key: key.as_str(),
            value: Some(value.as_str()),
        });
    }
    headers
}

/// What a consumed record carries besides the message.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RecordMeta {
    /// Set on retry-tier records: the group that deferred it.
    pub(crate) retry_group: Option<String>,
    /// Set on retry-tier records: when it is due (ms since the epoch).
    pub(crate) due_ms: Option<i64>,
    /// The record's timestamp (ms since the epoch), if any.
    pub(crate) timestamp_ms: Option<i64>,
}

/// `bytes` as text shared through `names` (a topic or an event type: few, and carried by
/// many records), invalid UTF-8 replaced (U+FFFD).
fn shared_name(names: &mut SharedNames, bytes: &[u8]) -> Arc<str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => names.get(text),
        Err(_) => Arc::from(String::from_utf8_lossy(bytes)),
    }
}

/// Rebuilds a message from a consumed record of `topic` (the record's topic, shared); its
/// event type is shared through `names`.
pub(crate) fn from_record<M: rdkafka::Message>(
    record: &M,
    topic: Arc<str>,
    names: &mut SharedNames,
) -> (Message, RecordMeta) {
    let mut message = Message {
        topic,
        key: record.key().map(crate::wire::shared_text),
        event_type: Arc::default(),
        headers: MessageHeaders::new(),
        payload: Arc::from(record.payload().unwrap_or_default()),
    };
    let mut meta = RecordMeta {
        timestamp_ms: record.timestamp().to_millis(),
        ..RecordMeta::default()
    };
    // CloudEvents binary mode: `ce_*` attributes and the data's content type.
    let mut attributes: Vec<(String, String)> = Vec::new();
    let mut content_type = None;
    if let Some(headers) = record.headers() {
        for header in headers.iter() {
            let Some(value) = header.value else { continue };
            let text = || crate::wire::owned_text(value);
            if let Some(name) = header.key.strip_prefix(binary::PREFIX) {
                attributes.push((name.to_owned(), text()));
                continue;
            }
            match header.key {
                // Read as text only for a binary-mode record, after the loop.
                binary::CONTENT_TYPE => content_type = Some(value),
                TYPE_HEADER => message.event_type = shared_name(names, value),
                ORIGIN_TOPIC_HEADER => message.topic = shared_name(names, value),
                RETRY_GROUP_HEADER => meta.retry_group = Some(text()),
                RETRY_DUE_HEADER => {
                    meta.due_ms = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
                }
                key if DERIVED.contains(&key) => {}
                key => {
                    message.headers.insert(key.to_owned(), text());
                }
            }
        }
    }
    let is_binary = attributes.iter().any(|(name, _)| name == "specversion");
    if is_binary {
        if let Some(structured) = binary::decode(
            &attributes,
            content_type.map(String::from_utf8_lossy).as_deref(),
            &message.payload,
        ) {
            message.payload = Arc::from(structured);
        }
        if message.event_type.is_empty() {
            if let Some((_, event_type)) = attributes.iter().find(|(name, _)| name == "type") {
                message.event_type = event_type.as_str().into();
            }
        }
    } else {
        // Not a binary-mode record: `ce_*` headers are plain headers.
        for (name, value) in attributes {
            message
                .headers
                .insert(format!("{}{name}", binary::PREFIX), value);
        }
    }
    (message, meta)
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};
    use rdkafka::Message as _;

    use super::*;

    fn record(message: &Message) -> OwnedMessage {
        OwnedMessage::new(
            Some(message.payload.to_vec()),
            message.key.as_ref().map(|k| k.as_bytes().to_vec()),
            message.topic.to_string(),
            Timestamp::CreateTime(1_700_000_000_000),
            3,
            42,
            Some(headers(message, true)),
        )
    }

    #[test]
    fn invalid_utf8_in_a_foreign_record_is_replaced_not_dropped() {
        use rdkafka::message::{Header, OwnedHeaders};
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: TYPE_HEADER,
                value: Some(&b"order.\xffcreated"[..]),
            })
            .insert(Header {
                key: "x-note",
                value: Some(&b"ok \xfe"[..]),
            });
        let record = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k\xc3".to_vec()),
            "orders".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            0,
            1,
            Some(headers),
        );
        let (message, _) = from_record(&record, record.topic().into(), &mut SharedNames::default());
        assert_eq!(message.key.as_deref(), Some("k\u{fffd}"));
        assert_eq!(&*message.event_type, "order.\u{fffd}created");
        assert_eq!(
            message.headers.get("x-note").map(String::as_str),
            Some("ok \u{fffd}")
        );
    }

    #[test]
    fn round_trip_with_envelope_metadata_in_headers() {
        let payload = br#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e","type":"order.created","source":"shop","time":"2026-01-01T00:00:00Z","version":1,"correlationId":"c-1","data":{"n":1}}"#;
        let message = Message {
            topic: "orders".into(),
            key: Some("o-1".into()),
            event_type: "order.created".into(),
            headers: MessageHeaders::from([("eventbus-attempt".to_owned(), "2".to_owned())]),
            payload: payload.to_vec().into(),
        };
        let record = record(&message);
        let names: Vec<&str> = record
            .headers()
            .map(|h| h.iter().map(|h| h.key).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "type",
                "content-type",
                "event-id",
                "event-source",
                "event-time",
                "correlation-id",
                "eventbus-attempt"
            ]
        );
        let (back, meta) = from_record(&record, record.topic().into(), &mut SharedNames::default());
        assert_eq!(back, message);
        assert_eq!(meta.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(meta.retry_group, None);
    }

    #[test]
    fn the_fast_scan_agrees_with_the_parser() {
        let cases: &[&[u8]] = &[
            br#"{"id":"a","type":"t","source":"s","time":"2026-01-01T00:00:00Z","version":1,"correlationId":"c","headers":{"x":"y"},"data":{"id":"nested"}}"#,
            br#" { "id" : "a", "version" : 2, "source":"s", "data" : [1] , "time":"late"}"#,
            br#"{"id":"a\"b","source":"s"}"#,
            br#"{"data":{"id":"x"},"id":"outer"}"#,
            b"not json",
            b"{\"id\":\"a\",\"source\":\"caf\xc3\xa9\"}",
        ];
        for bytes in cases {
            let parsed = serde_json::from_slice::<Meta<'_>>(bytes).ok();
            let scanned = scan_meta(bytes);
            if let Some(scanned) = &scanned {
                let parsed = parsed
                    .as_ref()
                    .expect("scan accepted what the parser rejects");
                assert_eq!(scanned.id, parsed.id);
                assert_eq!(scanned.source, parsed.source);
                assert_eq!(scanned.correlation_id, parsed.correlation_id);
                if scanned.time.is_some() {
                    assert_eq!(scanned.time, parsed.time);
                }
            }
        }
        assert!(scan_meta(cases[0]).is_some());
        assert!(
            scan_meta(cases[2]).is_none(),
            "escapes fall back to the parser"
        );
    }

    #[test]
    fn retry_tier_records_restore_their_origin_topic() {
        let mut message = Message {
            topic: "orders.retry.1m".into(),
            key: None,
            event_type: "order.created".into(),
            headers: MessageHeaders::new(),
            payload: b"not json".to_vec().into(),
        };
        message
            .headers
            .insert(ORIGIN_TOPIC_HEADER.into(), "orders".into());
        message
            .headers
            .insert(RETRY_GROUP_HEADER.into(), "billing".into());
        message
            .headers
            .insert(RETRY_DUE_HEADER.into(), "1700000000123".into());
        let tier_record = record(&message);
        let topic = tier_record.topic().into();
        let (back, meta) = from_record(&tier_record, topic, &mut SharedNames::default());
        assert_eq!(&*back.topic, "orders");
        assert!(back.headers.is_empty(), "{:?}", back.headers);
        assert_eq!(meta.retry_group.as_deref(), Some("billing"));
        assert_eq!(meta.due_ms, Some(1_700_000_000_123));
        assert_eq!(&*back.payload, b"not json");
    }
}
