//! Envelope decoding on arbitrary bytes: never panics; what decodes re-encodes and decodes to
//! the same envelope.
#![no_main]

use eventbus::RawEnvelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = RawEnvelope::decode(data) {
        let bytes = envelope.encode().expect("a decoded envelope encodes");
        let again = RawEnvelope::decode(&bytes).expect("re-encoded envelope decodes");
        assert_eq!(again.id, envelope.id);
        assert_eq!(again.event_type, envelope.event_type);
        assert_eq!(again.data.get(), envelope.data.get());
    }
});
