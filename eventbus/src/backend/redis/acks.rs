//! Batched acknowledgements: `XACK`s from concurrent deliveries are queued and sent together,
//! one `XACK` per stream and group with many ids, in one pipelined round trip. A batch of
//! fewer than 64 waits up to 1 ms for more: nothing waits on an acknowledgement, and deliveries
//! finishing one by one would otherwise each pay a command (on a partition held under a lease,
//! a script call) of their own.
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
    /// The lease (key, token) the entry was read under, for a partition held by one member:
    /// the acknowledgement counts only while the lease is still this token.
    pub(super) fence: Option<(String, String)>,
}

/// `XACK` of ids ARGV[2..] in group ARGV[1] of stream KEYS[1], if lease KEYS[2] still holds
/// token ARGV[#ARGV]; -1 when the lease moved on.
pub(super) const FENCED_ACK: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[#ARGV] then return -1 end
local ids = {}
for i = 2, #ARGV - 1 do ids[#ids + 1] = ARGV[i] end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
";

const MAX_BATCH: usize = 2048;

/// How long a small batch of acknowledgements waits for more before it is sent.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// Batches this large are sent without waiting.
const LINGER_BELOW: usize = 64;

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

    /// Queues an acknowledgement. `counted` runs once it counts as queued ([`flush`](Self::flush)
    /// waits for it from then on) and before it leaves: an acker stops counting its entry as in
    /// flight there, so that nothing sees the entry neither in flight nor queued.
    pub(super) fn push(&self, ack: Ack, counted: impl FnOnce(&Ack)) -> Result<(), crate::Error> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        counted(&ack);
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
        let mut lingered = false;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(ack) => batch.push(ack),
                // Nobody waits on an acknowledgement: a short linger lets the deliveries
                // finishing meanwhile share its round trip (and, fenced, its script call).
                _ if !lingered && batch.len() < LINGER_BELOW => {
                    lingered = true;
                    crate::runtime::sleep(LINGER).await;
                }
                _ => break,
            }
        }
        let count = batch.len();
        if let Some(inner) = backend.upgrade() {
            type Target = (String, String, Option<(String, String)>);
            let mut by_group: HashMap<Target, Vec<String>> = HashMap::new();
            for ack in batch {
                by_group
                    .entry((ack.stream, ack.group, ack.fence))
                    .or_default()
                    .push(ack.id);
            }
            let script = redis::Script::new(FENCED_ACK);
            let mut conn = inner.conn();
            let mut pipes = super::connection::SlotPipelines::new(conn.is_cluster());
            let mut fenced = Vec::new();
            for ((stream, group, fence), ids) in &by_group {
                match fence {
                    None => {
                        let mut xack = redis::cmd("XACK");
                        xack.arg(stream).arg(group).arg(ids);
                        pipes.add(stream, xack);
                    }
                    Some(fence) => fenced.push((stream, group, fence, ids)),
                }
            }
            if let Err(error) = pipes.send(&mut conn).await {
                tracing::warn!(%error, count, "XACK batch failed; the entries stay pending and will be claimed again");
            }
            for (stream, group, (lease, token), ids) in fenced {
                let mut call = script.key(stream);
                call.key(lease).arg(group).arg(ids).arg(token);
                match call.invoke_async::<i64>(&mut conn).await {
                    Ok(-1) => tracing::warn!(
                        %stream, %group, count = ids.len(),
                        "acknowledgements refused: the partition's lease moved to another member, which redelivers these entries"
                    ),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%stream, %error, "XACK failed; the entries stay pending")
                    }
                }
            }
        }
        queued.fetch_sub(count, Ordering::SeqCst);
        sent.notify(usize::MAX);
    }
}
