//! The AsyncAPI document the catalog generates is valid AsyncAPI 3.0 (checked against the
//! specification's own JSON Schema, vendored in `schemas/`), and with `schemars` its payload
//! schemas describe the JSON serde actually writes: renamed fields, nested types, enums.

use eventbus::{event, CatalogEntry, Envelope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const ASYNCAPI_SCHEMA: &str = include_str!("schemas/asyncapi-3.0.0.json");

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Address {
    street_line: String,
    postal_code: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Priority {
    Normal,
    NextDay,
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Payment {
    Card { last4: String },
    Invoice { days: u32 },
}

#[event(name = "order.placed", version = 2, topic = "orders", key = order_id)]
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced {
    order_id: String,
    ship_to: Address,
    priority: Priority,
    payment: Payment,
    #[serde(rename = "total")]
    total_cents: i64,
    note: Option<String>,
}

#[event(name = "order.cancelled", version = 1, topic = "orders")]
#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderCancelled {
    order_id: String,
}

fn placed() -> OrderPlaced {
    OrderPlaced {
        order_id: "o-1".into(),
        ship_to: Address {
            street_line: "1 Main St".into(),
            postal_code: "12345".into(),
        },
        priority: Priority::NextDay,
        payment: Payment::Card {
            last4: "4242".into(),
        },
        total_cents: 1200,
        note: None,
    }
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("a valid JSON Schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid_asyncapi(document: &Value) {
    let schema: Value = serde_json::from_str(ASYNCAPI_SCHEMA).expect("vendored schema");
    let found = errors(&schema, document);
    assert!(
        found.is_empty(),
        "not valid AsyncAPI 3.0: {found:#?}\n{document:#}"
    );
}

#[test]
fn the_document_is_valid_asyncapi_3_with_and_without_schemars() {
    let with_schemas = [
        CatalogEntry::with_schema::<OrderPlaced>(),
        CatalogEntry::with_schema::<OrderCancelled>(),
    ];
    assert_valid_asyncapi(&eventbus::asyncapi::document(
        "orders-service",
        &with_schemas,
    ));
    let from_fields = [
        CatalogEntry::of::<OrderPlaced>(),
        CatalogEntry::of::<OrderCancelled>(),
    ];
    assert_valid_asyncapi(&eventbus::asyncapi::document(
        "orders-service",
        &from_fields,
    ));
}

#[test]
fn the_validator_rejects_a_broken_document() {
    let mut document = eventbus::asyncapi::document(
        "orders-service",
        &[CatalogEntry::with_schema::<OrderPlaced>()],
    );
    document["channels"]["orders"]["address"] = json!(42);
    let schema: Value = serde_json::from_str(ASYNCAPI_SCHEMA).expect("vendored schema");
    assert!(
        !errors(&schema, &document).is_empty(),
        "a numeric channel address must be rejected"
    );
}

#[test]
fn payload_schemas_describe_what_serde_writes() {
    let document = eventbus::asyncapi::document(
        "orders-service",
        &[CatalogEntry::with_schema::<OrderPlaced>()],
    );
    let payload = &document["components"]["messages"]["order.placed"]["payload"]["schema"];
    let data = &payload["properties"]["data"];
    assert!(data["properties"]["shipTo"].is_object(), "{data:#}");
    assert!(data["properties"]["total"].is_object(), "{data:#}");
    assert!(data["properties"].get("total_cents").is_none(), "{data:#}");

    // A real envelope, as the publisher encodes it, matches its message's payload schema.
    let envelope: Value =
        serde_json::from_slice(&Envelope::new(placed()).encode().expect("encode")).expect("json");
    let found = errors(payload, &envelope);
    assert!(found.is_empty(), "{found:#?}\n{envelope:#}\n{payload:#}");

    // And what serde would not write does not.
    for (path, wrong) in [
        ("/data/priority", json!("urgent")),
        (
            "/data/shipTo",
            json!({ "street_line": "1 Main St", "postal_code": "12345" }),
        ),
        ("/data/payment", json!({ "kind": "cash" })),
        ("/data/total", json!("12.00")),
    ] {
        let mut broken = envelope.clone();
        *broken.pointer_mut(path).expect("field") = wrong.clone();
        assert!(
            !errors(payload, &broken).is_empty(),
            "{path} = {wrong} was accepted by {payload:#}"
        );
    }
}
