//! Generated envelopes for the property tests of the envelope's readers and writers: plain
//! strings among ones that need escapes, headers with and without extension names, times
//! with every precision the formatter writes and some it does not.

use proptest::prelude::*;
use uuid::Uuid;

use super::Envelope;

/// Strings that need escapes or are unusual in JSON, among plain ones.
pub(super) fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9.-]{0,12}", r#"[a-z"\\/\x00-\x1f\x7fé€😀 ]{0,8}"#,]
}

/// A time: whole seconds, milli-, micro- or nanoseconds, up to beyond the year 9999.
fn time() -> impl Strategy<Value = chrono::DateTime<chrono::Utc>> {
    (
        prop_oneof![0i64..253_402_300_800, 253_402_300_800i64..300_000_000_000],
        prop_oneof![
            Just(0u32),
            (1u32..1000).prop_map(|ms| ms * 1_000_000),
            (1u32..1_000_000).prop_map(|us| us * 1000),
            0u32..1_000_000_000,
        ],
    )
        .prop_map(|(seconds, nanos)| {
            chrono::DateTime::from_timestamp(seconds, nanos).unwrap_or_default()
        })
}

/// Envelopes with JSON data.
pub(super) fn generated() -> impl Strategy<Value = Envelope<serde_json::Value>> {
    let optional = || proptest::option::of(text());
    let header_name = prop_oneof![
        Just("traceparent".to_owned()),
        "[a-z0-9]{1,22}",
        "[A-Za-z_-]{1,8}",
        Just("id".to_owned()),
        Just("subject".to_owned()),
    ];
    (
        (text(), text(), 0u32..=u32::MAX, optional(), optional()),
        (optional(), optional(), time()),
        proptest::collection::btree_map(header_name, text(), 0..4),
        prop_oneof![
            text().prop_map(serde_json::Value::from),
            (text(), -1e6f64..1e6).prop_map(|(k, n)| {
                serde_json::Value::Object(serde_json::Map::from_iter([(
                    k,
                    serde_json::json!([n, null]),
                )]))
            }),
        ],
    )
        .prop_map(
            |(
                (event_type, source, version, correlation, causation),
                (tenant, user, time),
                headers,
                data,
            )| Envelope {
                id: Uuid::now_v7(),
                event_type,
                source,
                time,
                version,
                correlation_id: correlation,
                causation_id: causation,
                tenant_id: tenant,
                user_id: user,
                headers,
                data,
            },
        )
}
