//! The envelope's JSON form: a [CloudEvents 1.0](https://github.com/cloudevents/spec) event in
//! structured mode. Reading also accepts the envelope format of earlier releases (camelCase
//! fields, a `headers` object), so messages already in topics and streams keep decoding.
//!
//! | envelope | CloudEvents | earlier format |
//! |---|---|---|
//! | `id` | `id` | `id` |
//! | `event_type` | `type` | `type` |
//! | `source` | `source` | `source` |
//! | `time` | `time` | `time` |
//! | `version` | extension `version` | `version` |
//! | `correlation_id` | extension `correlationid` | `correlationId` |
//! | `causation_id` | extension `causationid` | `causationId` |
//! | `tenant_id` | extension `tenantid` | `tenantId` |
//! | `user_id` | extension `userid` | `userId` |
//! | `headers` | one extension per header whose name is a valid extension name (`traceparent`); the others as a JSON object in the string extension `eventbusheaders` | `headers` |
//! | `data` | `data` (`datacontenttype` `application/json`) | `data` |
//!
//! Reading a CloudEvent, every extension besides the ones above becomes a header (numbers and
//! booleans as their text), so events from other CloudEvents producers keep their extensions.
//!
//! Reading also accepts the member names other producers use: `eventId` for `id`,
//! `eventType` for `type`, `occurredAt` and `timestamp` for `time`, `payload` for `data`; when a
//! document has both, ours win. Without `source` an envelope reads as from
//! [`UNKNOWN_SOURCE`]; without `version`, as [`DEFAULT_VERSION`]; a `version` may be a number or a
//! string (`"2"`, or `"1.0"`, whose major number is the version).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Envelope, Headers};

/// The source of an envelope read without one.
pub const UNKNOWN_SOURCE: &str = "unknown";

/// The schema version of an envelope read without one.
pub const DEFAULT_VERSION: u32 = 1;

/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";
/// The `datacontenttype` written: `data` is JSON.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The extension holding the headers whose names are not valid extension names, as a JSON
/// object in a string.
pub const HEADERS_EXTENSION: &str = "eventbusheaders";

/// Attribute names the envelope itself uses: a header of one of these names cannot be an
/// extension of its own.
const TAKEN: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
    "version",
    "correlationid",
    "causationid",
    "tenantid",
    "userid",
    HEADERS_EXTENSION,
    "headers",
];

/// Whether `name` can be a CloudEvents extension attribute carrying a header: lower-case ASCII
/// letters and digits, at most 20 characters, not an attribute the envelope uses.
pub fn is_extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !TAKEN.contains(&name)
}

struct Time<'a>(&'a chrono::DateTime<chrono::Utc>);

impl Serialize for Time<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::rfc3339::serialize(self.0, serializer)
    }
}

/// The envelope's optional members with the names they are written under, in the order both
/// writers (this `Serialize` and the direct writer) write them, after `version`.
pub(super) fn optional_members<T>(envelope: &Envelope<T>) -> [(&'static str, &Option<String>); 4] {
    [
        ("correlationid", &envelope.correlation_id),
        ("causationid", &envelope.causation_id),
        ("tenantid", &envelope.tenant_id),
        ("userid", &envelope.user_id),
    ]
}

impl<T: Serialize> Serialize for Envelope<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("source", &self.source)?;
        map.serialize_entry("type", &self.event_type)?;
        map.serialize_entry("time", &Time(&self.time))?;
        map.serialize_entry("datacontenttype", DATA_CONTENT_TYPE)?;
        map.serialize_entry("version", &self.version)?;
        for (name, value) in optional_members(self) {
            if let Some(value) = value {
                map.serialize_entry(name, value)?;
            }
        }
        let mut others: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, value) in &self.headers {
            if is_extension_name(name) {
                map.serialize_entry(name, value)?;
            } else {
                others.insert(name, value);
            }
        }
        if !others.is_empty() {
            let text = serde_json::to_string(&others).map_err(serde::ser::Error::custom)?;
            map.serialize_entry(HEADERS_EXTENSION, &text)?;
        }
        map.serialize_entry("data", &self.data)?;
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Envelope<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor(PhantomData))
    }
}

struct EnvelopeVisitor<T>(PhantomData<T>);

/// A top-level member that is not an envelope field: an extension when the document is a
/// CloudEvent (strings as they are, numbers and booleans as their text), ignored otherwise.
/// Read in one pass, without buffering the value to try each shape in turn.
struct Extension(Option<String>);

impl<'de> Deserialize<'de> for Extension {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExtensionVisitor;
        impl<'de> Visitor<'de> for ExtensionVisitor {
            type Value = Extension;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an extension attribute value")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Extension, E> {
                Ok(Extension(Some(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Extension, E> {
                Ok(Extension(Some(text)))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Extension, E> {
                Ok(Extension(Some(b.to_string())))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Extension, E> {
                Ok(Extension(Some(n.to_string())))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Extension, E> {
                Ok(Extension(Some(n.to_string())))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Extension, E> {
                Ok(Extension(
                    serde_json::Number::from_f64(n).map(|n| n.to_string()),
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Extension, E> {
                Ok(Extension(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Extension, E> {
                Ok(Extension(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Extension, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Extension, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Extension(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Extension, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Extension(None))
            }
        }
        deserializer.deserialize_any(ExtensionVisitor)
    }
}

/// A string member checked where it is read, without copying it (`specversion`,
/// `datacontenttype`); a failed check is the error.
struct Checked<F>(F);

impl<'de, F: FnOnce(&str) -> Result<(), String>> de::DeserializeSeed<'de> for Checked<F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        struct CheckVisitor<F>(F);
        impl<F: FnOnce(&str) -> Result<(), String>> Visitor<'_> for CheckVisitor<F> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
                (self.0)(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(CheckVisitor(self.0))
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for EnvelopeVisitor<T> {
    type Value = Envelope<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event envelope (a CloudEvents JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut event_type: Option<String> = None;
        let mut source: Option<String> = None;
        let mut time = None;
        let mut version = None;
        let mut correlation_id = None;
        let mut causation_id = None;
        let mut tenant_id = None;
        let mut user_id = None;
        let mut headers = Headers::new();
        let mut extensions: Vec<(String, String)> = Vec::new();
        let mut cloudevent = false;
        let mut data = None;
        // Other producers' names, used where ours are absent.
        let mut alias_id = None;
        let mut alias_type: Option<String> = None;
        let mut alias_time = None;
        let mut alias_data = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key.name() {
                "id" => id = Some(map.next_value()?),
                "type" => event_type = Some(map.next_value()?),
                "source" => source = Some(map.next_value()?),
                "time" => time = Some(map.next_value::<RfcTime>()?.0),
                "version" => version = Some(map.next_value::<Version>()?.0),
                "eventId" => alias_id = Some(map.next_value()?),
                "eventType" => alias_type = Some(map.next_value()?),
                "occurredAt" | "timestamp" => alias_time = Some(map.next_value::<RfcTime>()?.0),
                "payload" => alias_data = Some(map.next_value()?),
                "correlationid" | "correlationId" => correlation_id = map.next_value()?,
                "causationid" | "causationId" => causation_id = map.next_value()?,
                "tenantid" | "tenantId" => tenant_id = map.next_value()?,
                "userid" | "userId" => user_id = map.next_value()?,
                "headers" => {
                    let legacy: Option<Headers> = map.next_value()?;
                    headers.extend(legacy.unwrap_or_default());
                }
                "data" => data = Some(map.next_value()?),
                "specversion" => {
                    cloudevent = true;
                    map.next_value_seed(Checked(|version: &str| {
                        if version.starts_with("1.") {
                            Ok(())
                        } else {
                            Err(format!(
                                "CloudEvents specversion `{version}` is not supported (1.x is)"
                            ))
                        }
                    }))?;
                }
                HEADERS_EXTENSION => {
                    let text: String = map.next_value()?;
                    let packed: Headers = serde_json::from_str(&text).map_err(|e| {
                        de::Error::custom(format!("extension `{HEADERS_EXTENSION}`: {e}"))
                    })?;
                    headers.extend(packed);
                }
                "datacontenttype" => {
                    map.next_value_seed(Checked(|content_type: &str| {
                        if content_type.starts_with("application/json")
                            || content_type.contains("+json")
                        {
                            Ok(())
                        } else {
                            Err(format!("datacontenttype `{content_type}` is not JSON"))
                        }
                    }))?;
                }
                "data_base64" => {
                    return Err(de::Error::custom(
                        "binary data (`data_base64`) is not supported: data must be JSON",
                    ))
                }
                _ => {
                    if let Extension(Some(value)) = map.next_value()? {
                        let name = match key {
                            Key::Known(name) => name.to_owned(),
                            Key::Other(name) => name,
                        };
                        extensions.push((name, value));
                    }
                }
            }
        }
        if cloudevent {
            // The last of a repeated member wins, as it would in a map; `headers` win over both.
            for (name, value) in extensions.into_iter().rev() {
                if !matches!(name.as_str(), "dataschema" | "subject") {
                    headers.entry(name).or_insert(value);
                }
            }
        }
        Ok(Envelope {
            id: id
                .or(alias_id)
                .ok_or_else(|| de::Error::missing_field("id"))?,
            event_type: event_type
                .or(alias_type)
                .ok_or_else(|| de::Error::missing_field("type"))?,
            source: source.unwrap_or_else(|| UNKNOWN_SOURCE.to_owned()),
            time: time
                .or(alias_time)
                .ok_or_else(|| de::Error::missing_field("time"))?,
            version: version.unwrap_or(DEFAULT_VERSION),
            correlation_id,
            causation_id,
            tenant_id,
            user_id,
            headers,
            data: data
                .or(alias_data)
                .ok_or_else(|| de::Error::missing_field("data"))?,
        })
    }
}

/// A member name, read without allocating unless it is an extension's.
enum Key {
    Known(&'static str),
    Other(String),
}

impl Key {
    fn name(&self) -> &str {
        match self {
            Key::Known(name) => name,
            Key::Other(name) => name,
        }
    }
}

/// Whether the general reader reads `name` as one of its own members (not an extension).
pub(super) fn is_known_member(name: &str) -> bool {
    known(name).is_some()
}

/// A member name the visitor matches, as a static string (one `match`, no search).
fn known(name: &str) -> Option<&'static str> {
    Some(match name {
        "id" => "id",
        "type" => "type",
        "source" => "source",
        "time" => "time",
        "version" => "version",
        "data" => "data",
        "specversion" => "specversion",
        "datacontenttype" => "datacontenttype",
        "correlationid" => "correlationid",
        "correlationId" => "correlationId",
        "causationid" => "causationid",
        "causationId" => "causationId",
        "tenantid" => "tenantid",
        "tenantId" => "tenantId",
        "userid" => "userid",
        "userId" => "userId",
        "headers" => "headers",
        "data_base64" => "data_base64",
        "eventId" => "eventId",
        "eventType" => "eventType",
        "occurredAt" => "occurredAt",
        "timestamp" => "timestamp",
        "payload" => "payload",
        HEADERS_EXTENSION => HEADERS_EXTENSION,
        _ => return None,
    })
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(match known(name) {
                    Some(known) => Key::Known(known),
                    None => Key::Other(name.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A schema version: a number, or a string holding one (`"2"`) or a dotted version whose
/// major number counts (`"1.0"`).
struct Version(u32);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;
        impl Visitor<'_> for VersionVisitor {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version number (1, \"1\" or \"1.0\")")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Version, E> {
                u32::try_from(n)
                    .map(Version)
                    .map_err(|_| E::custom(format!("version {n} is too large")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Version, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("version {n} is negative")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Version, E> {
                let major = text.split('.').next().unwrap_or(text);
                major.parse::<u32>().map(Version).map_err(|_| {
                    E::custom(format!("version `{text}` is not a number like 1 or 1.0"))
                })
            }
        }
        deserializer.deserialize_any(VersionVisitor)
    }
}

/// An RFC 3339 time read through the envelope's time codec.
struct RfcTime(chrono::DateTime<chrono::Utc>);

impl<'de> Deserialize<'de> for RfcTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::rfc3339::deserialize(deserializer).map(RfcTime)
    }
}
