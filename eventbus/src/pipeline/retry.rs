//! Retries transient failures with backoff, within the policy's attempt budget.

use std::sync::Arc;

use super::{DeliveryCx, Outcome, Stage};
use crate::clock::Clock;
use crate::handler::ErrorKind;
use crate::observability::Metrics;
use crate::retry::RetryPolicy;

/// Calls the rest of the chain until it succeeds, fails permanently, or the attempts run out.
/// The attempt number starts from what the delivery carries (redeliveries, attempt header), so
/// a message redelivered after a crash does not get a fresh budget.
pub(crate) struct RetryLayer {
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
}

impl RetryLayer {
    /// A layer applying `policy`, sleeping on `clock`.
    pub(crate) fn new(policy: RetryPolicy, clock: Arc<dyn Clock>) -> Self {
        RetryLayer {
            policy,
            clock,
            metrics: None,
        }
    }

    /// Counts retries in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl RetryLayer {
    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let cap = self.policy.attempt_cap();
        if cx.attempt > cap {
            let message = format!(
                "attempts exhausted before this delivery ({} previous attempts, limit {cap})",
                cx.attempt - 1
            );
            cx.attempt -= 1;
            return Outcome::Failed(cx.failure(ErrorKind::Transient, message, self.clock.now()));
        }
        let round_start = cx.attempt;
        let round_end = (round_start - 1)
            .saturating_add(self.policy.max_attempts.max(1))
            .min(cap);
        loop {
            let failure = match next.run(&mut *cx).await {
                Outcome::Failed(failure) if failure.kind == ErrorKind::Transient => failure,
                other => return other,
            };
            if cx.attempt < round_end {
                let delay = self.policy.backoff.delay(cx.attempt - round_start + 1);
                tracing::debug!(
                    attempt = cx.attempt, ?delay, error = %failure.message,
                    "transient failure, retrying"
                );
                self.clock.sleep(delay).await;
                if let Some(metrics) = &self.metrics {
                    metrics.retried(&cx.message.topic, &cx.group);
                }
                cx.attempt += 1;
                continue;
            }
            let round = usize::try_from(cx.round).unwrap_or(usize::MAX);
            return match self.policy.delayed.get(round) {
                Some(&delay) if cx.attempt < cap => Outcome::Deferred { delay, failure },
                _ => Outcome::Failed(failure),
            };
        }
    }
}
