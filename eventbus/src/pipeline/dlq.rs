//! The outermost layer: turns a final failure into a dead letter (or a discard).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{DeliveryCx, Layer, Next, Outcome};
use crate::backend::Backend;
use crate::dead_letter::dead_letter_message;
use crate::retry::Terminal;

/// Publishes failed deliveries to `{topic}.dlq` with their failure metadata, or discards them
/// when the subscription's terminal state is [`Terminal::Discard`]. If the dead-letter publish
/// fails the delivery stays unsettled, so it is redelivered rather than lost.
pub struct DeadLetterLayer {
    backend: Arc<dyn Backend>,
    terminal: Terminal,
}

impl DeadLetterLayer {
    /// A layer publishing dead letters through `backend`.
    pub fn new(backend: Arc<dyn Backend>, terminal: Terminal) -> Self {
        DeadLetterLayer { backend, terminal }
    }
}

impl Layer for DeadLetterLayer {
    fn handle<'a>(&'a self, cx: &'a mut DeliveryCx, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
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
                    let letter = dead_letter_message(&cx.message, &cx.group, &failure);
                    match self.backend.publish(vec![letter]).await {
                        Ok(()) => {
                            tracing::warn!(
                                topic = %cx.message.topic, group = %cx.group,
                                error = %failure.message, attempts = failure.attempts,
                                "event dead-lettered"
                            );
                            Outcome::DeadLettered(failure)
                        }
                        Err(error) => {
                            tracing::error!(%error, "dead-letter publish failed; leaving the delivery for redelivery");
                            Outcome::Unsettled(error)
                        }
                    }
                }
            }
        })
    }
}
