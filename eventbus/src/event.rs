//! What an event is: the [`Event`] trait that `#[event]` implements, the [`Payload`] trait a
//! handler's envelope is decoded into, and the catalog entry describing an event.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::upcast::Upcaster;

/// A domain event type: a name, a schema version, a topic and an optional partition key.
///
/// Implement it with `#[event(name = "...", version = N)]` rather than by hand; the attribute
/// checks the name at compile time.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "not an event",
    note = "add `#[eventbus::event(name = \"domain.action\", version = 1)]` to the type"
)]
pub trait Event: Payload + Serialize + Send + Sync + 'static {
    /// The event's name, such as `approval.granted`.
    const NAME: &'static str;
    /// The schema version of the payload.
    const VERSION: u32;
    /// The topic (stream) the event is published to; the name unless overridden.
    const TOPIC: &'static str;
    /// The field used as partition key, if any.
    const KEY_FIELD: Option<&'static str>;
    /// The payload's fields, for the catalog.
    const FIELDS: &'static [FieldInfo];
    /// The steps from older versions of the payload to this one
    /// (`#[event(upcast(from = N, with = f))]`, see [`crate::upcast`]).
    const UPCASTERS: &'static [Upcaster] = &[];

    /// The partition key of this instance: events with the same key are handled in order.
    fn partition_key(&self) -> Option<String>;
}

/// A type a handler can receive inside an [`Envelope`](crate::Envelope): one event type,
/// an event group enum, or [`serde_json::Value`] for any type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the payload of a handler's envelope",
    note = "use an `#[event]` type, a `#[derive(EventGroup)]` enum, or `serde_json::Value`"
)]
pub trait Payload: Sized + Send + 'static {
    /// The event names this payload accepts; empty means any.
    const TYPES: &'static [&'static str];
    /// The topics those events are published to (one per type, in the same order; empty when
    /// any type is accepted). A subscription reads them even without a catalog.
    const TOPICS: &'static [&'static str];
    /// The schema version this build knows of each type (same order as `TYPES`).
    const VERSIONS: &'static [u32];

    /// Decodes `data` of an envelope whose type is `event_type` and version `version`.
    fn decode(event_type: &str, version: u32, data: &RawValue) -> Result<Self, DecodeError>;
}

/// A set of event types handled by one handler, implemented by `#[derive(EventGroup)]` on an
/// enum whose variants each hold one event type.
pub trait EventGroup: Payload {}

impl Payload for serde_json::Value {
    const TYPES: &'static [&'static str] = &[];
    const TOPICS: &'static [&'static str] = &[];
    const VERSIONS: &'static [u32] = &[];

    fn decode(event_type: &str, _version: u32, data: &RawValue) -> Result<Self, DecodeError> {
        serde_json::from_str(data.get()).map_err(|source| DecodeError::Data {
            event_type: event_type.to_owned(),
            source,
        })
    }
}

/// Decodes the data of one event type, checking the type name. Called by the code `#[event]`
/// generates.
///
/// An envelope of an older `version` goes through the event's upcasters
/// ([`Event::UPCASTERS`]) first, one step per version.
///
/// An envelope of a newer `version` than this build knows is decoded like any other: an
/// additive change (new fields) decodes, since unknown fields are ignored; one that does not
/// fit fails with the version named. Subscribers that must not see newer versions at all say
/// so with [`NewerVersions::DeadLetter`](crate::NewerVersions::DeadLetter).
pub fn decode_event<E: Event + serde::de::DeserializeOwned>(
    event_type: &str,
    version: u32,
    data: &RawValue,
) -> Result<E, DecodeError> {
    if event_type != E::NAME {
        return Err(DecodeError::UnexpectedType {
            expected: E::TYPES,
            found: event_type.to_owned(),
        });
    }
    if version < E::VERSION
        && crate::upcast::steps(E::UPCASTERS, version, E::VERSION)
            .next()
            .is_some()
    {
        return upcast_and_decode::<E>(event_type, version, data);
    }
    serde_json::from_str(data.get()).map_err(|source| {
        if version > E::VERSION {
            DecodeError::NewerVersion {
                event_type: event_type.to_owned(),
                found: version,
                known: E::VERSION,
                reason: crate::error::without_values(&source),
            }
        } else {
            DecodeError::Data {
                event_type: event_type.to_owned(),
                source,
            }
        }
    })
}

/// Brings an older payload to `E::VERSION` through its upcasters, then decodes it.
fn upcast_and_decode<E: Event + serde::de::DeserializeOwned>(
    event_type: &str,
    version: u32,
    data: &RawValue,
) -> Result<E, DecodeError> {
    let data_error = |source| DecodeError::Data {
        event_type: event_type.to_owned(),
        source,
    };
    let mut value: serde_json::Value = serde_json::from_str(data.get()).map_err(data_error)?;
    for upcaster in crate::upcast::steps(E::UPCASTERS, version, E::VERSION) {
        value = (upcaster.step)(value).map_err(|source| DecodeError::Upcast {
            event_type: event_type.to_owned(),
            from: upcaster.from,
            reason: crate::error::without_values(&source),
        })?;
    }
    serde_json::from_value(value).map_err(data_error)
}

/// One field of an event payload, as the catalog lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FieldInfo {
    /// Field name in Rust (the JSON name may differ under `serde(rename)`).
    pub name: &'static str,
    /// The field's Rust type as written.
    #[serde(rename = "type")]
    pub ty: &'static str,
}

/// One event of a catalog: name, version, topic, key and fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    /// The event name.
    pub name: &'static str,
    /// The schema version.
    pub version: u32,
    /// The topic it is published to.
    pub topic: &'static str,
    /// The partition key field, if any.
    pub key: Option<&'static str>,
    /// The payload's fields.
    pub fields: &'static [FieldInfo],
    /// The older versions it reads through upcasters (listed as `upcasts_from`, the versions
    /// each step reads).
    #[serde(
        rename = "upcasts_from",
        serialize_with = "crate::upcast::serialize_froms"
    )]
    pub upcasters: &'static [Upcaster],
    /// The payload's JSON Schema from its type (feature `schemars`,
    /// [`CatalogEntry::with_schema`]); `None` maps [`fields`](Self::fields) instead.
    #[serde(skip)]
    pub schema: Option<SchemaSource>,
}

/// Where a payload's JSON Schema comes from: a function computing it (from the type's
/// `schemars::JsonSchema`, with serde renames, nested types and enums as serde writes them).
#[derive(Clone, Copy)]
pub struct SchemaSource(pub fn() -> serde_json::Value);

impl SchemaSource {
    /// The schema.
    pub fn schema(&self) -> serde_json::Value {
        (self.0)()
    }
}

impl PartialEq for SchemaSource {
    /// Two sources are equal when they give the same schema.
    fn eq(&self, other: &Self) -> bool {
        self.schema() == other.schema()
    }
}

impl Eq for SchemaSource {}

impl std::fmt::Debug for SchemaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaSource(..)")
    }
}

/// `E`'s schema from `schemars`, as JSON.
#[cfg(feature = "schemars")]
fn schemars_schema<E: schemars::JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(E)).unwrap_or_default()
}

impl CatalogEntry {
    /// The entry describing `E`.
    pub const fn of<E: Event>() -> Self {
        CatalogEntry {
            name: E::NAME,
            version: E::VERSION,
            topic: E::TOPIC,
            key: E::KEY_FIELD,
            fields: E::FIELDS,
            upcasters: E::UPCASTERS,
            schema: None,
        }
    }

    /// The entry describing `E`, its payload schema generated by `schemars` (feature
    /// `schemars`): field names as serde writes them, nested types under `$defs`, enums as
    /// their variants.
    ///
    /// ```
    /// # #[cfg(feature = "schemars")] {
    /// use eventbus::{event, CatalogEntry};
    ///
    /// #[event(name = "order.created", version = 1)]
    /// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// #[serde(rename_all = "camelCase")]
    /// struct OrderCreated { order_id: String }
    ///
    /// const CATALOG: &[CatalogEntry] = &[CatalogEntry::with_schema::<OrderCreated>()];
    /// let schema = CATALOG[0].json_schema();
    /// assert!(schema["properties"]["orderId"].is_object());
    /// # }
    /// ```
    #[cfg(feature = "schemars")]
    pub const fn with_schema<E: Event + schemars::JsonSchema>() -> Self {
        let mut entry = Self::of::<E>();
        entry.schema = Some(SchemaSource(schemars_schema::<E>));
        entry
    }

    /// A JSON schema (draft 2020-12) of the payload: the [`schema`](Self::schema) when the
    /// entry has one, else field types mapped from their Rust names where the mapping is
    /// obvious and left open otherwise.
    pub fn json_schema(&self) -> serde_json::Value {
        if let Some(source) = &self.schema {
            let mut schema = source.schema();
            if let Some(object) = schema.as_object_mut() {
                object.insert(
                    "$schema".to_owned(),
                    "https://json-schema.org/draft/2020-12/schema".into(),
                );
                object.insert("title".to_owned(), self.name.into());
            }
            return schema;
        }
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for field in self.fields {
            let ty = field.ty.replace(' ', "");
            let (schema, optional) = rust_type_schema(&ty);
            properties.insert(field.name.to_owned(), schema);
            if !optional {
                required.push(serde_json::Value::from(field.name));
            }
        }
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.name,
            "type": "object",
            "properties": properties,
            "required": required,
        })
    }
}

fn rust_type_schema(ty: &str) -> (serde_json::Value, bool) {
    use serde_json::json;
    if let Some(inner) = ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        return (rust_type_schema(inner).0, true);
    }
    let schema = match ty {
        "String" | "&str" | "str" | "Uuid" | "uuid::Uuid" | "char" => json!({"type": "string"}),
        "bool" => json!({"type": "boolean"}),
        "f32" | "f64" => json!({"type": "number"}),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128"
        | "isize" => json!({"type": "integer"}),
        t if t.starts_with("Vec<") => json!({"type": "array"}),
        t if t.contains("DateTime") => json!({"type": "string", "format": "date-time"}),
        _ => json!({}),
    };
    (schema, false)
}
