//! Decodes the envelope and filters out event types the subscription does not cover.

use std::sync::{Arc, Mutex};

use super::{DeliveryCx, Outcome, Stage};
use crate::clock::Clock;
use crate::envelope::RawEnvelope;
use crate::handler::ErrorKind;
use crate::hash_tables::PerType;
use crate::pattern::Pattern;

/// Parses the envelope (a malformed one is a permanent failure, so it is dead-lettered with the
/// reason) and skips events the subscription does not take: a type its pattern does not match,
/// or, for a typed handler, a type the handler's payload does not accept (a handler of
/// `Envelope<ApprovalGranted>` on `approval.*` skips `approval.denied`).
pub(crate) struct DecodeLayer {
    pattern: Pattern,
    filter: Option<crate::subscription::EnvelopeFilter>,
    accepted: &'static [&'static str],
    clock: Arc<dyn Clock>,
    max_payload: usize,
    verdicts: TypeVerdicts,
}

/// Whether the subscription takes each event type seen, so a type's name is checked and
/// matched against the pattern once, not per delivery.
#[derive(Default)]
struct TypeVerdicts(Mutex<PerType<bool>>);

impl TypeVerdicts {
    /// The verdict on `event_type`, computed by `decide` when not known yet.
    fn get(&self, event_type: &str, decide: impl FnOnce() -> bool) -> bool {
        // Deliveries of one subscription run in its consumer's task, so the lock is
        // uncontended; if it ever is taken, deciding again is cheaper than waiting.
        match self.0.try_lock() {
            Ok(mut known) => *known.get_or_insert_with(event_type, decide),
            Err(_) => decide(),
        }
    }
}

impl DecodeLayer {
    /// Default payload size limit: 1 MiB.
    pub(crate) const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

    /// A layer for subscriptions to `pattern`.
    pub(crate) fn new(pattern: Pattern, clock: Arc<dyn Clock>) -> Self {
        DecodeLayer {
            pattern,
            filter: None,
            accepted: &[],
            clock,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            verdicts: TypeVerdicts::default(),
        }
    }

    /// Drops the events `filter` rejects ([`Outcome::Filtered`]).
    pub(crate) fn filtering(mut self, filter: Option<crate::subscription::EnvelopeFilter>) -> Self {
        self.filter = filter;
        self
    }

    /// Skips event types outside `types` (the handler's payload types; empty takes any type
    /// the pattern matches).
    pub(crate) fn accepting(mut self, types: &'static [&'static str]) -> Self {
        self.accepted = types;
        self
    }
}

impl DecodeLayer {
    /// Sets the largest payload accepted, in bytes; larger ones are dead-lettered.
    pub(crate) fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}

impl DecodeLayer {
    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let size = cx.message.payload.len();
        if size > self.max_payload {
            let error = crate::DecodeError::TooLarge {
                size,
                limit: self.max_payload,
            };
            return Outcome::Failed(cx.failure(
                ErrorKind::Permanent,
                error.to_string(),
                self.clock.now(),
            ));
        }
        match RawEnvelope::decode(&cx.message.payload) {
            Ok(envelope) => {
                let taken = self.verdicts.get(&envelope.event_type, || {
                    self.pattern.matches(&envelope.event_type)
                        && (self.accepted.is_empty()
                            || self.accepted.contains(&envelope.event_type.as_str()))
                });
                if !taken {
                    tracing::trace!(
                        event_type = %envelope.event_type,
                        group = %cx.group,
                        "skipped: the subscription does not take this event type"
                    );
                    return Outcome::Skipped;
                }
                if self.filter.as_ref().is_some_and(|keep| !keep(&envelope)) {
                    tracing::trace!(
                        event_type = %envelope.event_type,
                        group = %cx.group,
                        "filtered: the subscription's filter rejected this event"
                    );
                    return Outcome::Filtered;
                }
                cx.envelope = Some(envelope);
                next.run(cx).await
            }
            Err(error) => Outcome::Failed(cx.failure(
                ErrorKind::Permanent,
                error.to_string(),
                self.clock.now(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TypeVerdicts;
    use crate::hash_tables::PerType;

    /// A producer inventing type names never grows the verdicts past their capacity, and every
    /// verdict stays the one its type was decided with.
    #[test]
    fn verdicts_stay_bounded_and_right() {
        let verdicts = TypeVerdicts::default();
        for round in 0..3 {
            for n in 0..PerType::<bool>::CAPACITY * 2 {
                let name = format!("t.{n}");
                let decided = verdicts.get(&name, || n % 3 == 0);
                assert_eq!(decided, n % 3 == 0, "{name} in round {round}");
                let held = verdicts.0.lock().map(|k| k.len()).unwrap_or(usize::MAX);
                assert!(held <= PerType::<bool>::CAPACITY, "{held} verdicts held");
            }
        }
        // A known type is answered without deciding again.
        verdicts.get("kept", || true);
        assert!(verdicts.get("kept", || false), "the first verdict is kept");
    }
}
