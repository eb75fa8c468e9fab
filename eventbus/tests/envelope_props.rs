//! Property tests of envelope decoding: arbitrary bytes and mutated envelopes never panic the
//! decoder, valid envelopes always round-trip, and the pipeline's decode path classifies every
//! input as either an envelope or a decode error.

use eventbus::{Envelope, RawEnvelope};
use proptest::prelude::*;

const VALID: &str = r#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e","type":"order.created","source":"svc","time":"2026-11-23T10:15:01Z","version":1,"correlationId":"c","tenantId":"t","headers":{"a":"b"},"data":{"x":[1,2,{"y":null}]}}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = RawEnvelope::decode(&bytes);
    }

    #[test]
    fn mutated_envelopes_decode_or_fail_cleanly(
        cut in 0..VALID.len(),
        insert in proptest::collection::vec(any::<u8>(), 0..8),
        flip in 0..VALID.len(),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        bytes[flip] ^= 0x20;
        bytes.splice(cut..cut, insert);
        if let Ok(env) = RawEnvelope::decode(&bytes) {
            // Whatever decoded re-encodes and decodes to the same envelope.
            let again = RawEnvelope::decode(&env.encode().expect("encodes")).expect("round trip");
            prop_assert_eq!(again.id, env.id);
            prop_assert_eq!(again.event_type, env.event_type);
            prop_assert_eq!(again.data.get(), env.data.get());
        }
    }

    #[test]
    fn valid_envelopes_round_trip(
        event_type in "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}",
        tenant in proptest::option::of("[ -~]{0,16}"),
        header in "[ -~]{0,16}",
        data in "[ -~]{0,32}",
        version in 1u32..10,
    ) {
        let env = Envelope {
            id: eventbus::Uuid::now_v7(),
            event_type: event_type.clone(),
            source: "s".into(),
            time: chrono::Utc::now(),
            version,
            correlation_id: None,
            causation_id: None,
            tenant_id: tenant.clone(),
            user_id: None,
            headers: [("h".to_owned(), header.clone())].into(),
            data: serde_json::Value::String(data.clone()),
        };
        let raw = RawEnvelope::decode(&env.encode().expect("encodes")).expect("decodes");
        prop_assert_eq!(raw.event_type, event_type);
        prop_assert_eq!(raw.tenant_id, tenant);
        prop_assert_eq!(&raw.headers["h"], &header);
        prop_assert_eq!(raw.version, version);
        let decoded: String = serde_json::from_str(raw.data.get()).expect("string data");
        prop_assert_eq!(decoded, data);
    }
}
