//! What a saga step can do besides changing its state: send events, schedule a timeout, mark
//! the instance complete. Everything it asks for is written in the step's transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::Message;
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;

/// An event a step emitted, encoded, and when to publish it (`None`: at once).
pub(crate) struct Emitted {
    pub(crate) message: Message,
    pub(crate) due: Option<DateTime<Utc>>,
}

/// The step's view of its saga instance and the delivery that woke it.
pub struct SagaContext<'a> {
    ctx: &'a Context,
    id: &'a str,
    emitted: Vec<Emitted>,
    error: Option<Error>,
    completed: bool,
}

impl<'a> SagaContext<'a> {
    pub(crate) fn new(ctx: &'a Context, id: &'a str) -> Self {
        SagaContext {
            ctx,
            id,
            emitted: Vec::new(),
            error: None,
            completed: false,
        }
    }

    /// The instance's correlation id (the value of the saga's correlation field).
    pub fn id(&self) -> &str {
        self.id
    }

    /// The delivery: event id and type, attempt, correlation, headers, extensions.
    pub fn context(&self) -> &Context {
        self.ctx
    }

    /// Sends `event` when the step commits (through the outbox, in the step's transaction),
    /// with the causal metadata of the event that woke the step.
    pub fn send<E: Event>(&mut self, event: E) {
        self.emit(event, None);
    }

    /// Publishes `event` `after` the step commits, through the outbox (a timeout such as "no
    /// payment within 15 minutes"). It survives restarts: the row waits in the outbox. Handle
    /// it in the saga like any other event; when the instance completed first, it is
    /// acknowledged and logged. Published without a partition key, so it never holds back
    /// other events of its key.
    pub fn schedule<E: Event>(&mut self, after: Duration, event: E) {
        let due = chrono::Duration::from_std(after)
            .ok()
            .and_then(|after| Utc::now().checked_add_signed(after))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.emit(event, Some(due));
    }

    /// Ends the instance when the step commits: later events for it are acknowledged without
    /// running a step, and the row is removed (or archived) after the outbox's
    /// `retention.completed_sagas`.
    pub fn complete(&mut self) {
        self.completed = true;
    }

    /// Whether [`SagaContext::complete`] was called.
    pub fn is_completed(&self) -> bool {
        self.completed
    }

    fn emit<E: Event>(&mut self, event: E, due: Option<DateTime<Utc>>) {
        let envelope = self.ctx.follow_on(Envelope::new(event));
        match self.ctx.publisher().prepare(envelope) {
            Ok(message) => self.emitted.push(Emitted { message, due }),
            Err(error) => {
                self.error.get_or_insert(error);
            }
        }
    }

    /// What the step emitted, or the first error encoding it.
    pub(crate) fn finish(self) -> Result<(Vec<Emitted>, bool), Error> {
        match self.error {
            Some(error) => Err(error),
            None => Ok((self.emitted, self.completed)),
        }
    }
}

impl std::fmt::Debug for SagaContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaContext")
            .field("id", &self.id)
            .field("emitted", &self.emitted.len())
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}
