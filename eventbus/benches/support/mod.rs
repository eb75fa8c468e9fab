//! What the benches' raw baselines share: the envelope the bus publishes, built by hand.

use eventbus::Envelope;

/// Fills `envelope` as the publisher does before encoding it: the bus's source, the event's
/// own id as correlation id, and a new `traceparent`.
pub(crate) fn as_published<E>(envelope: &mut Envelope<E>) {
    envelope.source = "eventbus".into();
    envelope.correlation_id = Some(envelope.id.to_string());
    let trace = format!(
        "00-{:032x}-{:016x}-01",
        fastrand::u128(..),
        fastrand::u64(..)
    );
    envelope.headers.insert("traceparent".into(), trace);
}
