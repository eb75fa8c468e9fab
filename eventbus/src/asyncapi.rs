//! An [AsyncAPI 3.0.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0) document
//! generated from a catalog: one channel per topic, one message per event, and a `send` and a
//! `receive` operation per channel.
//!
//! A message's payload describes what travels on the wire: the JSON envelope (see the crate's
//! wire format), whose `data` is the event's [`CatalogEntry::json_schema`]. Payloads are JSON
//! Schema draft 2020-12, declared with a `schemaFormat` (AsyncAPI's own schema dialect is
//! draft-07 based).
//!
//! ```
//! use eventbus::{CatalogEntry, FieldInfo};
//!
//! const FIELDS: &[FieldInfo] = &[FieldInfo { name: "order_id", ty: "String" }];
//! let entries = [CatalogEntry {
//!     name: "order.created", version: 1, topic: "orders", key: Some("order_id"), fields: FIELDS,
//!     upcasters: &[], schema: None,
//! }];
//! let doc = eventbus::asyncapi::document("orders-service", &entries);
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["channels"]["orders"]["address"], "orders");
//! assert_eq!(doc["operations"]["orders.receive"]["action"], "receive");
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::event::CatalogEntry;

/// The AsyncAPI version the documents follow.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The `schemaFormat` of message payloads: JSON Schema draft 2020-12.
pub const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-2020-12";

/// The document of `service` describing `entries`, with API version `1.0.0`.
pub fn document(service: &str, entries: &[CatalogEntry]) -> Value {
    document_with_version(service, "1.0.0", entries)
}

/// The document of `service` describing `entries`, with `info.version` set to `version`.
///
/// Entries with the same event name keep the first one per name and version; a name seen with
/// several versions gets one message per version (`name.v2`).
pub fn document_with_version(service: &str, version: &str, entries: &[CatalogEntry]) -> Value {
    // topic -> message ids, in catalog order, deduplicated.
    let mut topics: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut messages = Map::new();
    let mut seen: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for entry in entries {
        let versions = seen.entry(entry.name).or_default();
        if versions.contains(&entry.version) {
            continue;
        }
        let id = if versions.is_empty() {
            entry.name.to_owned()
        } else {
            format!("{}.v{}", entry.name, entry.version)
        };
        versions.push(entry.version);
        messages.insert(id.clone(), message(entry));
        topics.entry(entry.topic).or_default().push(id);
    }

    let mut channels = Map::new();
    let mut operations = Map::new();
    for (topic, ids) in &topics {
        let channel_messages: Map<String, Value> = ids
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    json!({ "$ref": format!("#/components/messages/{}", pointer(id)) }),
                )
            })
            .collect();
        channels.insert(
            (*topic).to_owned(),
            json!({
                "address": topic,
                "title": topic,
                "messages": channel_messages,
            }),
        );
        let refs: Vec<Value> = ids
            .iter()
            .map(|id| json!({ "$ref": format!("#/channels/{}/messages/{}", pointer(topic), pointer(id)) }))
            .collect();
        for (action, summary) in [
            ("send", format!("{service} publishes to `{topic}`")),
            (
                "receive",
                format!("Consumers of `{topic}` receive these events"),
            ),
        ] {
            operations.insert(
                format!("{topic}.{action}"),
                json!({
                    "action": action,
                    "channel": { "$ref": format!("#/channels/{}", pointer(topic)) },
                    "summary": summary,
                    "messages": refs,
                }),
            );
        }
    }

    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": service,
            "version": version,
            "description": format!("Events of {service}, generated from its eventbus catalog."),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    })
}

/// Escapes a key for a JSON pointer (`~` and `/`).
fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn message(entry: &CatalogEntry) -> Value {
    let mut data = entry.json_schema();
    // The payload schema is the resource root: the data's definitions move up there, where
    // its `#/$defs/...` references resolve.
    let mut defs = None;
    if let Some(schema) = data.as_object_mut() {
        schema.remove("$schema");
        defs = schema.remove("$defs");
    }
    let optional_string = json!({ "type": ["string", "null"] });
    json!({
        "name": entry.name,
        "title": format!("{} v{}", entry.name, entry.version),
        "contentType": "application/cloudevents+json",
        "correlationId": { "location": "$message.payload#/correlationid" },
        "payload": {
            "schemaFormat": SCHEMA_FORMAT,
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": entry.name,
                "description": "A CloudEvents 1.0 event in structured mode; \
                    extensions other than these carry headers",
                "type": "object",
                "required": ["specversion", "id", "type", "source", "time", "version", "data"],
                "properties": {
                    "specversion": { "const": crate::envelope::cloudevents::SPEC_VERSION },
                    "id": { "type": "string", "format": "uuid" },
                    "type": { "const": entry.name },
                    "source": { "type": "string" },
                    "time": { "type": "string", "format": "date-time" },
                    "datacontenttype": { "const": crate::envelope::cloudevents::DATA_CONTENT_TYPE },
                    "version": { "type": "integer", "minimum": 1, "maximum": entry.version },
                    "correlationid": optional_string,
                    "causationid": optional_string,
                    "tenantid": optional_string,
                    "userid": optional_string,
                    "traceparent": optional_string,
                    crate::envelope::cloudevents::HEADERS_EXTENSION: { "type": "string" },
                    "data": data,
                },
                "$defs": defs.unwrap_or_else(|| json!({})),
            },
        },
        "x-eventbus": {
            "version": entry.version,
            "topic": entry.topic,
            "key": entry.key,
            // Older versions this build still reads, each through its upcaster.
            "upcastsFrom": entry.upcasters.iter().map(|u| u.from).collect::<Vec<_>>(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldInfo;

    const ORDER_FIELDS: &[FieldInfo] = &[
        FieldInfo {
            name: "order_id",
            ty: "String",
        },
        FieldInfo {
            name: "total",
            ty: "u64",
        },
        FieldInfo {
            name: "note",
            ty: "Option<String>",
        },
    ];

    fn entries() -> Vec<CatalogEntry> {
        vec![
            CatalogEntry {
                name: "order.created",
                version: 2,
                topic: "orders",
                key: Some("order_id"),
                fields: ORDER_FIELDS,
                upcasters: &[],
                schema: None,
            },
            CatalogEntry {
                name: "order.cancelled",
                version: 1,
                topic: "orders",
                key: None,
                fields: &[],
                upcasters: &[],
                schema: None,
            },
            CatalogEntry {
                name: "user.signed_up",
                version: 1,
                topic: "user.signed_up",
                key: None,
                fields: &[],
                upcasters: &[],
                schema: None,
            },
            CatalogEntry {
                name: "order.created",
                version: 2,
                topic: "orders",
                key: Some("order_id"),
                fields: ORDER_FIELDS,
                upcasters: &[],
                schema: None,
            },
        ]
    }

    #[test]
    fn one_channel_per_topic_with_its_messages() {
        let doc = document_with_version("shop", "4.2.0", &entries());
        assert_eq!(doc["asyncapi"], "3.0.0");
        assert_eq!(doc["info"]["title"], "shop");
        assert_eq!(doc["info"]["version"], "4.2.0");
        assert_eq!(doc["defaultContentType"], "application/json");
        let channels = doc["channels"].as_object().expect("channels");
        assert_eq!(channels.len(), 2);
        let orders = &channels["orders"];
        assert_eq!(orders["address"], "orders");
        let messages = orders["messages"].as_object().expect("messages");
        assert_eq!(messages.len(), 2, "the duplicate entry is listed once");
        assert_eq!(
            messages["order.created"]["$ref"],
            "#/components/messages/order.created"
        );
        assert_eq!(
            channels["user.signed_up"]["messages"]["user.signed_up"]["$ref"],
            "#/components/messages/user.signed_up"
        );
    }

    #[test]
    fn send_and_receive_operations_reference_their_channel_messages() {
        let doc = document("shop", &entries());
        let operations = doc["operations"].as_object().expect("operations");
        assert_eq!(operations.len(), 4);
        for action in ["send", "receive"] {
            let op = &operations[&format!("orders.{action}")];
            assert_eq!(op["action"], action);
            assert_eq!(op["channel"]["$ref"], "#/channels/orders");
            let refs: Vec<&str> = op["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["$ref"].as_str().expect("ref"))
                .collect();
            assert_eq!(
                refs,
                [
                    "#/channels/orders/messages/order.created",
                    "#/channels/orders/messages/order.cancelled"
                ]
            );
        }
        // Every reference resolves.
        for op in operations.values() {
            let channel = op["channel"]["$ref"]
                .as_str()
                .expect("ref")
                .trim_start_matches("#/channels/");
            assert!(doc["channels"].get(channel).is_some(), "{channel}");
        }
    }

    #[test]
    fn message_payload_is_the_envelope_with_the_event_schema_as_data() {
        let doc = document("shop", &entries());
        let message = &doc["components"]["messages"]["order.created"];
        assert_eq!(message["name"], "order.created");
        assert_eq!(message["contentType"], "application/cloudevents+json");
        assert_eq!(message["payload"]["schemaFormat"], SCHEMA_FORMAT);
        let schema = &message["payload"]["schema"];
        assert_eq!(schema["properties"]["type"]["const"], "order.created");
        assert_eq!(schema["properties"]["version"]["maximum"], 2);
        let data = &schema["properties"]["data"];
        assert_eq!(data["properties"]["order_id"]["type"], "string");
        assert_eq!(data["properties"]["total"]["type"], "integer");
        assert_eq!(data["required"], json!(["order_id", "total"]));
        assert!(
            data.get("$schema").is_none(),
            "only the outer schema declares the dialect"
        );
        assert_eq!(message["x-eventbus"]["key"], "order_id");
        assert_eq!(
            message["correlationId"]["location"],
            "$message.payload#/correlationid"
        );
    }

    #[test]
    fn the_versions_read_through_upcasters_are_listed() {
        fn step(data: Value) -> Result<Value, serde_json::Error> {
            Ok(data)
        }
        const STEPS: &[crate::Upcaster] = &[
            crate::Upcaster { from: 1, step },
            crate::Upcaster { from: 2, step },
        ];
        let entry = CatalogEntry {
            name: "order.created",
            version: 3,
            topic: "orders",
            key: None,
            fields: &[],
            upcasters: STEPS,
            schema: None,
        };
        let doc = document("shop", &[entry]);
        assert_eq!(
            doc["components"]["messages"]["order.created"]["x-eventbus"]["upcastsFrom"],
            json!([1, 2])
        );
        let catalog = serde_json::to_value(entry).expect("serialize");
        assert_eq!(catalog["upcasts_from"], json!([1, 2]));
    }

    #[test]
    fn several_versions_of_a_name_get_one_message_each() {
        let mut list = entries();
        list.push(CatalogEntry {
            name: "order.created",
            version: 3,
            topic: "orders",
            key: None,
            fields: &[],
            upcasters: &[],
            schema: None,
        });
        let doc = document("shop", &list);
        assert!(doc["components"]["messages"]["order.created.v3"].is_object());
        assert_eq!(
            doc["channels"]["orders"]["messages"]
                .as_object()
                .map(Map::len),
            Some(3)
        );
    }

    #[test]
    fn an_empty_catalog_is_still_a_valid_document() {
        let doc = document("empty", &[]);
        assert_eq!(doc["channels"], json!({}));
        assert_eq!(doc["operations"], json!({}));
        assert_eq!(doc["components"]["messages"], json!({}));
    }
}
