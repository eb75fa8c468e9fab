//! Drops deliveries of events the group already handled, and records handled ones.

use std::sync::Arc;

use super::{DeliveryCx, Outcome, PendingRecord, Stage};
use crate::inbox::InboxStore;

/// Checks the inbox before the handler and records the event after success, before the
/// delivery is acknowledged. Failing to read or write the inbox leaves the delivery unsettled.
/// Replayed deliveries (header `eventbus-replay`) skip the check: they are meant to run again.
///
/// A remote inbox's record ([`InboxStore::records_remotely`]) is handed to the consumer as the
/// delivery's [`PendingRecord`] instead of awaited here: the consumer starts the next
/// deliveries while it is written (their lookups share its round trip) and acknowledges this
/// one, and lets its key's next delivery start, only once it is.
pub(crate) struct InboxLayer {
    store: Arc<dyn InboxStore>,
}

impl InboxLayer {
    /// A layer over `store`.
    pub(crate) fn new(store: Arc<dyn InboxStore>) -> Self {
        InboxLayer { store }
    }
}

impl InboxLayer {
    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let Some(id) = cx.envelope.as_ref().map(|e| e.id) else {
            return next.run(cx).await;
        };
        if cx.replay {
            // A replay exists to handle events again: the inbox does not stop it.
            return next.run(cx).await;
        }
        match self.store.contains(&cx.group, id).await {
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
