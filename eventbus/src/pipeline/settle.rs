//! What happens to a delivery once its pipeline returned: the [`Settlement`] an [`Outcome`]
//! calls for, and the metrics it is recorded in. The consumer loop only carries the
//! settlement out with the backend.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{DeliveryCx, Outcome};
use crate::backend::RetryState;
use crate::observability::Metrics;
use crate::retry::Backoff;

/// What the consumer does with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Acknowledge it: handled, a duplicate, skipped, dead-lettered or discarded.
    Ack,
    /// Another round after `delay`, without holding back the stream: parked by the backend
    /// when it can, else held beside the consumer and handed back when due.
    Defer {
        /// Until the next round.
        delay: Duration,
        /// The retry state the next round starts from.
        state: RetryState,
    },
    /// Hand it back to the backend after `wait` (left unsettled: the inbox or the dead-letter
    /// queue was unreachable, or a stage panicked): its key waits behind it.
    Redeliver {
        /// The backoff before handing it back.
        wait: Duration,
        /// The retry state the redelivery starts from.
        state: RetryState,
    },
}

impl Settlement {
    /// The settlement `outcome` calls for; `backoff` spaces the redeliveries of unsettled
    /// deliveries by attempt.
    pub(crate) fn of(outcome: &Outcome, cx: &DeliveryCx, backoff: &Backoff) -> Settlement {
        match outcome {
            outcome if outcome.is_settled() => Settlement::Ack,
            Outcome::Deferred { delay, .. } => Settlement::Defer {
                delay: *delay,
                state: cx.retry_state(true),
            },
            _ => Settlement::Redeliver {
                wait: backoff.delay(cx.attempt),
                state: cx.retry_state(false),
            },
        }
    }
}

/// Records `outcome` in `metrics`: a handled event with its age (from its envelope time to
/// `now`), any other outcome by label.
pub(crate) fn record(
    outcome: &Outcome,
    cx: &mut DeliveryCx,
    metrics: &Metrics,
    now: DateTime<Utc>,
) {
    match (outcome, &cx.envelope) {
        (Outcome::Handled, Some(envelope)) => {
            let age = (now - envelope.time).to_std().unwrap_or_default();
            cx.series(metrics).handled(age);
        }
        _ => metrics.outcome(&cx.message.topic, &cx.group, outcome.label()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Message;
    use crate::dead_letter::Failure;
    use crate::handler::ErrorKind;

    fn cx() -> DeliveryCx {
        let message = Message {
            topic: "t".into(),
            key: None,
            event_type: "t".into(),
            headers: Default::default(),
            payload: Vec::new().into(),
        };
        DeliveryCx::new(message, "g", 2)
    }

    fn failure(cx: &mut DeliveryCx) -> Failure {
        cx.failure(ErrorKind::Transient, "boom".into(), Utc::now())
    }

    #[test]
    fn each_outcome_has_its_settlement() {
        let backoff = Backoff::schedule([Duration::from_millis(7)]);
        let mut cx = cx();
        assert_eq!(
            Settlement::of(&Outcome::Handled, &cx, &backoff),
            Settlement::Ack
        );
        assert_eq!(
            Settlement::of(&Outcome::Skipped, &cx, &backoff),
            Settlement::Ack
        );
        let dead = Outcome::DeadLettered(failure(&mut cx));
        assert_eq!(Settlement::of(&dead, &cx, &backoff), Settlement::Ack);
        let deferred = Outcome::Deferred {
            delay: Duration::from_secs(60),
            failure: failure(&mut cx),
        };
        let Settlement::Defer { delay, state } = Settlement::of(&deferred, &cx, &backoff) else {
            panic!("a deferred outcome defers");
        };
        assert_eq!(delay, Duration::from_secs(60));
        assert_eq!((state.attempts, state.round), (3, 1), "the next round");
        let unsettled = Outcome::Unsettled(crate::Error::config("x", "y"));
        let Settlement::Redeliver { wait, state } = Settlement::of(&unsettled, &cx, &backoff)
        else {
            panic!("an unsettled outcome is handed back");
        };
        assert_eq!(wait, Duration::from_millis(7));
        assert_eq!((state.attempts, state.round), (3, 0), "the same round");
    }
}
