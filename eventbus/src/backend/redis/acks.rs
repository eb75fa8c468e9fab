//! Batched acknowledgements: `XACK`s from concurrent deliveries are queued and sent together,
//! one `XACK` per stream and group with many ids, in one pipelined round trip.
//!
//! An acknowledgement is queued only after the pipeline finished the delivery (and recorded
//! it in the inbox), so a crash before the batch is sent only means a redelivery that the inbox
//! absorbs. [`AckQueue::flush`] waits until everything queued was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use event_listener::Event as Signal;
use futures::channel::mpsc;
use futures::StreamExt;

use super::Inner;

/// One entry to acknowledge.
pub(super) struct Ack {
    pub(super) stream: String,
    pub(super) group: String,
    pub(super) id: String,
}

const MAX_BATCH: usize = 2048;

/// The sending side, shared by every acker of a backend.
pub(super) struct AckQueue {
    tx: mpsc::UnboundedSender<Ack>,
    queued: Arc<AtomicUsize>,
    sent: Arc<Signal>,
}

impl AckQueue {
    /// A queue whose batches are sent by a task on the backend's runtime.
    pub(super) fn start(runtime: &Arc<dyn crate::runtime::Runtime>, backend: Weak<Inner>) -> Self {
        let (tx, rx) = mpsc::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Signal::new());
        runtime.spawn(Box::pin(send_batches(
            rx,
            backend,
            queued.clone(),
            sent.clone(),
        )));
        AckQueue { tx, queued, sent }
    }

    /// Queues an acknowledgement.
    pub(super) fn push(&self, ack: Ack) -> Result<(), crate::Error> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.unbounded_send(ack).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            crate::Error::backend("redis", "XACK", "the acknowledgement task has stopped")
        })
    }

    /// Completes when every queued acknowledgement was sent (or failed).
    pub(super) async fn flush(&self) {
        loop {
            let listener = self.sent.listen();
            if self.queued.load(Ordering::SeqCst) == 0 {
                return;
            }
            listener.await;
        }
    }
}

async fn send_batches(
    mut rx: mpsc::UnboundedReceiver<Ack>,
    backend: Weak<Inner>,
    queued: Arc<AtomicUsize>,
    sent: Arc<Signal>,
) {
    while let Some(first) = rx.next().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(ack) => batch.push(ack),
                _ => break,
            }
        }
        let count = batch.len();
        if let Some(inner) = backend.upgrade() {
            let mut by_group: HashMap<(String, String), Vec<String>> = HashMap::new();
            for ack in batch {
                by_group
                    .entry((ack.stream, ack.group))
                    .or_default()
                    .push(ack.id);
            }
            let mut pipe = redis::pipe();
            for ((stream, group), ids) in &by_group {
                pipe.cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
            }
            if let Err(error) = pipe.query_async::<()>(&mut inner.conn()).await {
                tracing::warn!(%error, count, "XACK batch failed; the entries stay pending and will be claimed again");
            }
        }
        queued.fetch_sub(count, Ordering::SeqCst);
        sent.notify(usize::MAX);
    }
}
