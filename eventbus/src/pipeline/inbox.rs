//! Drops deliveries of events the group already handled, and records handled ones.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{DeliveryCx, Outcome, Stage};
use crate::backend::Message;
use crate::error::Error;
use crate::inbox::{InboxStore, PREFETCH_FRESH_FOR};

/// Checks the inbox before the handler and records the event after success, before the
/// delivery is acknowledged. Failing to read or write the inbox leaves the delivery unsettled.
/// Replayed deliveries (header `eventbus-replay`) skip the check: they are meant to run again.
///
/// A remote inbox's record ([`InboxStore::records_remotely`]) is handed to the consumer as the
/// delivery's [`PendingRecord`] instead of awaited here: the consumer starts the next
/// deliveries while it is written (their lookups share its round trip) and acknowledges this
/// one, and lets its key's next delivery start, only once it is. Such an inbox's lookup can
/// also be asked before the delivery starts ([`InboxLayer::prefetch`]); the stage then takes
/// that answer if it is for the delivery's id and fresh.
pub(crate) struct InboxLayer {
    store: Arc<dyn InboxStore>,
}

/// An inbox round trip in flight, carried in a delivery's context to be awaited later. (In a
/// mutex only so that the context stays `Sync`: it is never locked, only taken apart.)
pub(crate) struct InboxReply<T>(Mutex<BoxFuture<'static, Result<T, Error>>>);

impl<T> InboxReply<T> {
    /// The round trip `reply` answers.
    pub(crate) fn new(reply: BoxFuture<'static, Result<T, Error>>) -> Self {
        InboxReply(Mutex::new(reply))
    }

    /// The future to wait for.
    pub(crate) fn into_future(self) -> BoxFuture<'static, Result<T, Error>> {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> std::fmt::Debug for InboxReply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboxReply")
    }
}

/// An inbox record being written ([`InboxStore::records_remotely`]): the consumer waits for
/// it before the delivery is acknowledged, without holding one of the subscription's
/// concurrency slots meanwhile; a failure leaves the delivery unsettled.
pub(crate) type PendingRecord = InboxReply<()>;

/// An inbox lookup asked while its delivery was held ([`InboxStore::prefetch`]), boxed: the
/// deliveries of a consumer without one (an in-process inbox) carry a null pointer, not the
/// lookup's size, through every move.
pub(crate) struct Prefetched(Box<Asked>);

/// The id asked about (read from the payload's beginning, checked against the decoded
/// envelope's), when, and the answer.
struct Asked {
    id: Uuid,
    at: Instant,
    answer: InboxReply<bool>,
}

impl std::fmt::Debug for Prefetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetched")
            .field("id", &self.0.id)
            .field("at", &self.0.at)
            .finish_non_exhaustive()
    }
}

impl InboxLayer {
    /// A layer over `store`.
    pub(crate) fn new(store: Arc<dyn InboxStore>) -> Self {
        InboxLayer { store }
    }
}

impl InboxLayer {
    /// Whether the store is asked ahead: only one that records remotely (a lookup in process
    /// is cheaper than the asking).
    pub(crate) fn prefetches(&self) -> bool {
        self.store.records_remotely()
    }

    /// Asks the inbox now whether `group` handled `message`'s event, for a delivery held and
    /// not started (by a consumer that checked [`prefetches`](Self::prefetches) once): `None`
    /// when the store does not prefetch, the message is a replay (never looked up), or its
    /// payload does not begin as eventbus writes an envelope.
    pub(crate) fn prefetch(&self, group: &str, message: &Message) -> Option<Prefetched> {
        if message.headers.contains_key(crate::wire::REPLAY_HEADER) {
            return None;
        }
        let id = crate::envelope::leading_id(&message.payload)?;
        let answer = self.store.prefetch(group, id)?;
        Some(Prefetched(Box::new(Asked {
            id,
            at: Instant::now(),
            answer: InboxReply::new(answer),
        })))
    }

    /// Whether `group` handled `id`, given the lookup `asked` ahead: its answer when it is for
    /// `id` and "handled", or "not handled" and asked within [`PREFETCH_FRESH_FOR`]; else the
    /// store's answer now.
    async fn contains_after(
        &self,
        Prefetched(asked): Prefetched,
        group: &str,
        id: Uuid,
    ) -> Result<bool, Error> {
        if asked.id == id {
            let fresh = asked.at.elapsed() <= PREFETCH_FRESH_FOR;
            match asked.answer.into_future().await {
                Ok(true) => return Ok(true),
                Ok(false) if fresh => return Ok(false),
                // Stale, or failed: ask again (a failure then is the delivery's).
                Ok(false) | Err(_) => {}
            }
        }
        self.store.contains(group, id).await
    }

    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let Some(id) = cx.envelope.as_ref().map(|e| e.id) else {
            return next.run(cx).await;
        };
        if cx.replay {
            // A replay exists to handle events again: the inbox does not stop it.
            return next.run(cx).await;
        }
        let found = match cx.prefetched.take() {
            None => self.store.contains(&cx.group, id).await,
            Some(asked) => self.contains_after(asked, &cx.group, id).await,
        };
        match found {
            Ok(true) => return Outcome::Duplicate,
            Ok(false) => {}
            Err(error) => return Outcome::Unsettled(error),
        }
        let outcome = next.run(cx).await;
        if let Outcome::Handled = outcome {
            if self.store.records_remotely() {
                let store = self.store.clone();
                let group = cx.group.clone();
                let record = async move { store.record(&group, id).await };
                cx.pending_record = Some(PendingRecord::new(Box::pin(record)));
            } else if let Err(error) = self.store.record(&cx.group, id).await {
                return Outcome::Unsettled(error);
            }
        }
        outcome
    }
}
