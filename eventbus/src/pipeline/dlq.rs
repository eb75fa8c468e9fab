//! The outermost layer: turns a final failure into a dead letter (or a discard).

use std::sync::Arc;
use std::time::Duration;

use super::{DeliveryCx, Outcome, Stage};
use crate::backend::{Backend, Message};
use crate::clock::Clock;
use crate::dead_letter::{capped_error_text, dead_letter_message, DeadLetterTopics};
use crate::retry::Terminal;
use crate::wire::PAYLOAD_OMITTED;

/// Publishes failed deliveries to `{topic}.dlq` (or the service's single dead-letter topic)
/// with their failure metadata, or discards them
/// when the subscription's terminal state is [`Terminal::Discard`].
///
/// A dead-letter publish that fails is tried [`DeadLetterLayer::PUBLISH_ATTEMPTS`] times; then
/// a metadata-only dead letter is published instead (no payload, the header
/// `dlq-payload-omitted` saying how large it was and why it is missing: a payload over the
/// broker's own size limit can never be stored), logged as an error and counted in
/// `event_dead_letter_payload_omitted_total`. Only when that fails too (the broker is
/// unreachable) is the delivery left unsettled, to be redelivered rather than lost.
pub(crate) struct DeadLetterLayer {
    backend: Arc<dyn Backend>,
    terminal: Terminal,
    clock: Option<Arc<dyn Clock>>,
    metrics: Option<Arc<crate::observability::Metrics>>,
    topics: DeadLetterTopics,
}

impl DeadLetterLayer {
    /// Attempts to publish a full dead letter before falling back to a metadata-only one.
    pub(crate) const PUBLISH_ATTEMPTS: u32 = 3;

    /// A layer publishing dead letters through `backend`.
    pub(crate) fn new(backend: Arc<dyn Backend>, terminal: Terminal) -> Self {
        DeadLetterLayer {
            backend,
            terminal,
            clock: None,
            metrics: None,
            topics: DeadLetterTopics::PerTopic,
        }
    }

    /// Routes dead letters by `topics` (`{topic}.dlq` by default).
    pub(crate) fn with_topics(mut self, topics: DeadLetterTopics) -> Self {
        self.topics = topics;
        self
    }

    /// Waits between dead-letter publish attempts on `clock` (100 ms, 200 ms, ...); without
    /// one, attempts follow each other at once.
    pub(crate) fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Counts metadata-only dead letters in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::observability::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Publishes `letter`, trying a few times; the last error when every attempt failed.
    async fn publish(&self, letter: Message) -> Result<(), crate::Error> {
        let mut attempt = 1;
        loop {
            match self.backend.publish(vec![letter.clone()]).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= Self::PUBLISH_ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, attempt, "dead-letter publish failed; trying again");
                    if let Some(clock) = &self.clock {
                        clock.sleep(Duration::from_millis(100) * attempt).await;
                    }
                    attempt += 1;
                }
            }
        }
    }
}

impl DeadLetterLayer {
    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let failure = match next.run(cx).await {
            Outcome::Failed(failure) => failure,
            other => return other,
        };
        match self.terminal {
            Terminal::Discard => {
                tracing::warn!(
                    topic = %cx.message.topic, group = %cx.group,
                    error = %failure.message, attempts = failure.attempts,
                    "discarding failed event"
                );
                Outcome::Discarded(failure)
            }
            Terminal::DeadLetter => {
                let mut letter = dead_letter_message(&cx.message, &cx.group, &failure);
                letter.topic = self.topics.topic_for(&cx.message.topic).into();
                let error = match self.publish(letter.clone()).await {
                    Ok(()) => {
                        tracing::warn!(
                            topic = %cx.message.topic, group = %cx.group,
                            error = %failure.message, attempts = failure.attempts,
                            "event dead-lettered"
                        );
                        return Outcome::DeadLettered(failure);
                    }
                    Err(error) => error,
                };
                // The full letter cannot be stored: keep the metadata, say what is missing.
                let mut bare = letter;
                let size = bare.payload.len();
                bare.payload = Arc::from(&[][..]);
                bare.headers.insert(
                    PAYLOAD_OMITTED.to_owned(),
                    capped_error_text(&format!(
                        "{size} bytes: dead-letter publish failed: {error}"
                    )),
                );
                match self.backend.publish(vec![bare]).await {
                    Ok(()) => {
                        tracing::error!(
                            topic = %cx.message.topic, group = %cx.group, %error, size,
                            "dead letter stored without its payload (publishing it failed)"
                        );
                        if let Some(metrics) = &self.metrics {
                            metrics.dead_letter_payload_omitted(&cx.message.topic, &cx.group);
                        }
                        Outcome::DeadLettered(failure)
                    }
                    Err(error) => {
                        tracing::error!(%error, "dead-letter publish failed; leaving the delivery for redelivery");
                        Outcome::Unsettled(error)
                    }
                }
            }
        }
    }
}
