//! The envelope: the metadata every event travels with, and its JSON wire format, a
//! [CloudEvents 1.0](https://github.com/cloudevents/spec) event in structured mode (see
//! [`cloudevents`] for the mapping and the earlier format still read):
//!
//! ```json
//! {
//!   "specversion": "1.0",
//!   "id": "0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e",
//!   "source": "approvals-service",
//!   "type": "approval.granted",
//!   "time": "2026-11-23T10:15:01.123Z",
//!   "datacontenttype": "application/json",
//!   "version": 1,
//!   "correlationid": "0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e",
//!   "tenantid": "acme",
//!   "userid": "u-42",
//!   "traceparent": "00-...",
//!   "data": {"approvalId": "a-1"}
//! }
//! ```
//!
//! `id`, `type`, `source`, `time`, `version` and `data` are required; the others may be absent
//! or `null`. Unknown members of a document in the earlier format are ignored; in a
//! CloudEvent they are extensions and become headers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::DecodeError;
use crate::event::Event;

pub mod cloudevents;
mod direct;
pub(crate) use direct::leading_id;
#[cfg(feature = "kafka")]
pub(crate) use direct::leading_strings;
mod direct_write;
#[cfg(test)]
mod generated;

/// Free-form string headers carried inside the envelope (trace context, user metadata).
pub type Headers = BTreeMap<String, String>;

/// An event with its metadata. `T` is the payload: an [`Event`] type, an event group, or
/// [`serde_json::Value`] for dynamic handlers.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// Unique id of this event (UUID v7, time-ordered). The inbox deduplicates on it.
    pub id: Uuid,
    /// The event's name, such as `approval.granted`.
    pub event_type: String,
    /// The service that produced it.
    pub source: String,
    /// When it was produced, RFC 3339 UTC.
    pub time: DateTime<Utc>,
    /// Schema version of `data`.
    pub version: u32,
    /// Id shared by every event of one business flow.
    pub correlation_id: Option<String>,
    /// Id of the event whose handler produced this one.
    pub causation_id: Option<String>,
    /// Tenant the event belongs to.
    pub tenant_id: Option<String>,
    /// User who caused it.
    pub user_id: Option<String>,
    /// Extra string headers.
    pub headers: Headers,
    /// The payload.
    pub data: T,
}

/// An envelope whose `data` is kept as unparsed JSON; what the pipeline decodes first.
pub type RawEnvelope = Envelope<Box<RawValue>>;

impl<E: Event> Envelope<E> {
    /// Wraps an event with a fresh id and the current time; the publisher fills `source` and
    /// `correlation_id` when they are left empty.
    ///
    /// ```
    /// # use eventbus::{event, Envelope};
    /// #[event(name = "user.invited", version = 1)]
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct UserInvited { email: String }
    ///
    /// let env = Envelope::new(UserInvited { email: "a@example.com".into() }).with_tenant("acme");
    /// assert_eq!(env.event_type, "user.invited");
    /// assert_eq!(env.tenant_id.as_deref(), Some("acme"));
    /// ```
    pub fn new(data: E) -> Self {
        Envelope {
            id: Uuid::now_v7(),
            event_type: E::NAME.to_owned(),
            source: String::new(),
            time: Utc::now(),
            version: E::VERSION,
            correlation_id: None,
            causation_id: None,
            tenant_id: None,
            user_id: None,
            headers: Headers::new(),
            data,
        }
    }
}

impl<T> Envelope<T> {
    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user_id = Some(user.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Replaces the payload, keeping every metadata field.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            id: self.id,
            event_type: self.event_type,
            source: self.source,
            time: self.time,
            version: self.version,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            tenant_id: self.tenant_id,
            user_id: self.user_id,
            headers: self.headers,
            data: f(self.data),
        }
    }

    /// Copies the metadata onto another payload.
    pub(crate) fn with_data<U>(&self, data: U) -> Envelope<U> {
        Envelope {
            id: self.id,
            event_type: self.event_type.clone(),
            source: self.source.clone(),
            time: self.time,
            version: self.version,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            tenant_id: self.tenant_id.clone(),
            user_id: self.user_id.clone(),
            headers: self.headers.clone(),
            data,
        }
    }

    /// The envelope of `data` with this one's metadata moved into it: what stays behind keeps
    /// its id, time, version and data, with its strings and headers emptied (no allocation).
    pub(crate) fn lend_with_data<U>(&mut self, data: U) -> Envelope<U> {
        Envelope {
            id: self.id,
            event_type: std::mem::take(&mut self.event_type),
            source: std::mem::take(&mut self.source),
            time: self.time,
            version: self.version,
            correlation_id: self.correlation_id.take(),
            causation_id: self.causation_id.take(),
            tenant_id: self.tenant_id.take(),
            user_id: self.user_id.take(),
            headers: std::mem::take(&mut self.headers),
            data,
        }
    }
}

impl RawEnvelope {
    /// Decodes the envelope from wire bytes. Fails on invalid UTF-8, invalid JSON or a missing
    /// required field; tolerates unknown fields.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        match direct::decode(text) {
            Some(envelope) => Ok(envelope),
            None => serde_json::from_str(text).map_err(DecodeError::Envelope),
        }
    }
}

impl<T: Serialize> Envelope<T> {
    /// Encodes the envelope to its JSON wire form.
    pub fn encode(&self) -> Result<Vec<u8>, crate::Error> {
        // Most envelopes fit: one allocation instead of a doubling series of copies.
        let mut out = Vec::with_capacity(512);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the envelope's JSON wire form to `out` (as it was on an error).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), crate::Error> {
        if direct_write::encode(self, out) {
            return Ok(());
        }
        let start = out.len();
        serde_json::to_writer(&mut *out, self).map_err(|source| {
            out.truncate(start);
            crate::Error::Encode {
                event_type: self.event_type.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e","type":"approval.granted",
        "source":"svc","time":"2026-11-23T10:15:01.123Z","version":1,"correlationId":"c-1",
        "tenantId":"acme","headers":{"a":"b"},"data":{"x":1},"somethingNew":true}"#;

    #[test]
    fn decodes_and_ignores_unknown_fields() {
        let env = RawEnvelope::decode(FULL.as_bytes()).expect("valid envelope");
        assert_eq!(env.event_type, "approval.granted");
        assert_eq!(env.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(env.tenant_id.as_deref(), Some("acme"));
        assert_eq!(env.user_id, None);
        assert_eq!(env.headers.get("a").map(String::as_str), Some("b"));
        assert_eq!(env.data.get(), r#"{"x":1}"#);
    }

    #[test]
    fn missing_required_field_is_an_error() {
        for field in ["\"id\"", "\"type\"", "\"time\"", "\"data\""] {
            let broken = FULL.replacen(field, "\"renamed\"", 1);
            let err = RawEnvelope::decode(broken.as_bytes()).expect_err(field);
            assert!(matches!(err, DecodeError::Envelope(_)), "{field}: {err}");
            assert!(err.to_string().contains("missing field"), "{field}: {err}");
        }
    }

    #[test]
    fn source_and_version_have_defaults() {
        let bare =
            FULL.replacen("\"source\"", "\"renamed\"", 1)
                .replacen("\"version\"", "\"other\"", 1);
        let env = RawEnvelope::decode(bare.as_bytes()).expect("no source, no version");
        assert_eq!(env.source, cloudevents::UNKNOWN_SOURCE);
        assert_eq!(env.version, 1);
        for (text, version) in [("\"2\"", 2), ("\"1.0\"", 1), ("\"3.1.4\"", 3), ("4", 4)] {
            let doc = FULL.replacen("\"version\":1", &format!("\"version\":{text}"), 1);
            let env = RawEnvelope::decode(doc.as_bytes()).expect(text);
            assert_eq!(env.version, version, "{text}");
        }
        for bad in ["\"v1\"", "-1", "\"\"", "true"] {
            let doc = FULL.replacen("\"version\":1", &format!("\"version\":{bad}"), 1);
            let err = RawEnvelope::decode(doc.as_bytes()).expect_err(bad);
            assert!(err.to_string().contains("version"), "{bad}: {err}");
        }
    }

    /// Envelopes in the two shapes other producers commonly write.
    #[test]
    fn other_producers_member_names_are_aliases() {
        let shape_a = r#"{"eventId":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e",
            "eventType":"order.created","timestamp":"2024-01-01T00:00:00Z",
            "source":"order-service","version":"1.0","data":{"order_id":"o-1"}}"#;
        let env = RawEnvelope::decode(shape_a.as_bytes()).expect("eventId, eventType, timestamp");
        assert_eq!(env.id.to_string(), "0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e");
        assert_eq!(env.event_type, "order.created");
        assert_eq!(env.time.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(env.source, "order-service");
        assert_eq!(env.version, 1);
        assert_eq!(env.data.get(), r#"{"order_id":"o-1"}"#);

        let shape_b = r#"{"eventId":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5f",
            "type":"transfers.settled","occurredAt":"2025-08-26T10:15:01Z",
            "transferId":"tr_123","payload":{"amount":5}}"#;
        let env = RawEnvelope::decode(shape_b.as_bytes()).expect("eventId, occurredAt, payload");
        assert_eq!(env.event_type, "transfers.settled");
        assert_eq!(env.time.to_rfc3339(), "2025-08-26T10:15:01+00:00");
        assert_eq!(env.source, cloudevents::UNKNOWN_SOURCE);
        assert_eq!(env.data.get(), r#"{"amount":5}"#);

        // Ours win over an alias in the same document.
        let both = FULL.replacen(
            "\"data\":{\"x\":1}",
            "\"data\":{\"x\":1},\"eventType\":\"other\",\"payload\":{\"y\":2},\"timestamp\":\"2000-01-01T00:00:00Z\"",
            1,
        );
        let env = RawEnvelope::decode(both.as_bytes()).expect("both");
        assert_eq!(env.event_type, "approval.granted");
        assert_eq!(env.data.get(), r#"{"x":1}"#);
        assert_eq!(env.time.to_rfc3339(), "2026-11-23T10:15:01.123+00:00");
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let err = RawEnvelope::decode(b"{\"id\":\xff}").expect_err("invalid utf-8");
        assert!(matches!(err, DecodeError::InvalidUtf8 { valid_up_to: 6 }));
    }

    #[test]
    fn encodes_a_cloudevent_and_skips_empty_optionals() {
        let env = RawEnvelope::decode(FULL.as_bytes()).expect("valid envelope");
        let text = String::from_utf8(env.encode().expect("encodes")).expect("utf-8");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["specversion"], "1.0", "{text}");
        assert_eq!(json["type"], "approval.granted", "{text}");
        assert_eq!(json["datacontenttype"], "application/json", "{text}");
        assert_eq!(json["correlationid"], "c-1", "{text}");
        assert_eq!(json["tenantid"], "acme", "{text}");
        assert_eq!(
            json["a"], "b",
            "a header with a valid extension name: {text}"
        );
        assert!(json.get("userid").is_none(), "{text}");
        assert!(json.get("somethingNew").is_none(), "{text}");
        assert!(json.get("correlationId").is_none(), "{text}");
    }

    #[test]
    fn round_trips_every_field_and_any_header_name() {
        let mut env = RawEnvelope::decode(FULL.as_bytes()).expect("valid envelope");
        env.causation_id = Some("cause".into());
        env.user_id = Some("u-1".into());
        env.headers.insert("traceparent".into(), "00-abc".into());
        env.headers.insert("X-Request-Id".into(), "r-1".into());
        env.headers.insert(
            "a-very-long-header-name-beyond-twenty".into(),
            "long".into(),
        );
        let bytes = env.encode().expect("encodes");
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        assert!(text.contains(r#""traceparent":"00-abc""#), "{text}");
        assert!(text.contains(cloudevents::HEADERS_EXTENSION), "{text}");
        let back = RawEnvelope::decode(&bytes).expect("decodes");
        assert_eq!(back.headers, env.headers);
        assert_eq!(
            (
                back.id,
                &back.event_type,
                &back.source,
                back.time,
                back.version
            ),
            (env.id, &env.event_type, &env.source, env.time, env.version)
        );
        assert_eq!(
            (
                &back.correlation_id,
                &back.causation_id,
                &back.tenant_id,
                &back.user_id
            ),
            (
                &env.correlation_id,
                &env.causation_id,
                &env.tenant_id,
                &env.user_id
            )
        );
        assert_eq!(back.data.get(), env.data.get());
    }

    #[test]
    fn a_foreign_cloudevent_keeps_its_extensions_as_headers() {
        let foreign = r#"{"specversion":"1.0","id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e",
            "source":"https://billing.example/api","type":"invoice.paid","subject":"inv-1",
            "time":"2026-11-23T10:15:01+01:00","version":2,"region":"eu","priority":3,
            "sampled":true,"data":{"invoice":"inv-1"}}"#;
        let env = RawEnvelope::decode(foreign.as_bytes()).expect("a CloudEvent decodes");
        assert_eq!(env.event_type, "invoice.paid");
        assert_eq!(env.version, 2);
        assert_eq!(env.time.to_rfc3339(), "2026-11-23T09:15:01+00:00");
        assert_eq!(env.headers.get("region").map(String::as_str), Some("eu"));
        assert_eq!(env.headers.get("priority").map(String::as_str), Some("3"));
        assert_eq!(env.headers.get("sampled").map(String::as_str), Some("true"));
        assert!(!env.headers.contains_key("subject"));
    }

    /// Extension values of every JSON shape: strings, numbers and booleans become headers,
    /// `null`, arrays and objects are skipped whole (the members after them still read), and
    /// a member repeated in the document counts once, its last value winning.
    #[test]
    fn extension_values_of_every_shape() {
        let foreign = r#"{"specversion":"1.0","id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e",
            "source":"s","type":"invoice.paid","time":"2026-11-23T10:15:01Z",
            "ratio":1.5,"negative":-3,"nested":{"a":[1,{"b":null}]},"list":[1,"x"],
            "nothing":null,"region":"eu","region":"us","after":"still read",
            "data":{"invoice":"inv-1"}}"#;
        let env = RawEnvelope::decode(foreign.as_bytes()).expect("a CloudEvent decodes");
        let header = |name: &str| env.headers.get(name).map(String::as_str);
        assert_eq!(header("ratio"), Some("1.5"));
        assert_eq!(header("negative"), Some("-3"));
        assert_eq!(header("region"), Some("us"));
        assert_eq!(header("after"), Some("still read"));
        for skipped in ["nested", "list", "nothing"] {
            assert_eq!(header(skipped), None, "{skipped}: {:?}", env.headers);
        }
        assert_eq!(env.data.get(), r#"{"invoice":"inv-1"}"#);
    }

    #[test]
    fn other_spec_versions_and_binary_data_are_refused() {
        let v2 = FULL.replacen("{", r#"{"specversion":"2.0","#, 1);
        assert!(RawEnvelope::decode(v2.as_bytes()).is_err());
        let xml = FULL.replacen(
            "{",
            r#"{"specversion":"1.0","datacontenttype":"text/xml","#,
            1,
        );
        assert!(RawEnvelope::decode(xml.as_bytes()).is_err());
    }
}
