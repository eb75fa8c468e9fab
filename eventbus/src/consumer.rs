//! The consumer loop of one subscription: pulls deliveries, runs up to `concurrency` of them at
//! once while keeping each partition key strictly sequential, and settles each with the
//! backend once the pipeline is done with it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use event_listener::Event as Signal;
use std::panic::AssertUnwindSafe;

use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::backend::{Delivery, DeliveryStream};
use crate::clock::Clock;
use crate::pipeline::{DeliveryCx, Outcome, Pipeline};
use crate::runtime::Runtime;

/// Counters of what the bus's consumers did.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) unsettled: AtomicU64,
    pub(crate) deferred: AtomicU64,
}

/// State shared by the bus and its consumer loops.
#[derive(Default)]
pub(crate) struct Shared {
    stopping: AtomicBool,
    stop_signal: Signal,
    loops: AtomicUsize,
    loops_signal: Signal,
    tasks: Mutex<HashMap<u64, AbortHandle>>,
    next_task: AtomicU64,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_signal.notify(usize::MAX);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn running_loops(&self) -> usize {
        self.loops.load(Ordering::SeqCst)
    }

    /// Completes when every consumer loop has exited.
    pub(crate) async fn loops_finished(&self) {
        loop {
            let listener = self.loops_signal.listen();
            if self.running_loops() == 0 {
                return;
            }
            listener.await;
        }
    }

    /// Aborts every running delivery task; their deliveries stay unacknowledged.
    pub(crate) fn abort_tasks(&self) -> usize {
        let tasks: Vec<AbortHandle> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for task in &tasks {
            task.abort();
        }
        tasks.len()
    }

    /// Wraps `task` so that [`Shared::abort_tasks`] can abort it; the future completes when
    /// the task finished or was aborted.
    fn tracked(
        self: &Arc<Self>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (abort, registration) = AbortHandle::new_pair();
        let id = self.next_task.fetch_add(1, Ordering::Relaxed);
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, abort);
        let owner = self.clone();
        async move {
            let _ = Abortable::new(task, registration).await;
            owner
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }

    fn count(&self, outcome: &Outcome) {
        let c = &self.counters;
        let counter = match outcome {
            Outcome::Handled => &c.handled,
            Outcome::Duplicate => &c.duplicates,
            Outcome::Skipped => &c.skipped,
            Outcome::DeadLettered(_) => &c.dead_lettered,
            Outcome::Discarded(_) => &c.discarded,
            Outcome::Deferred { .. } => &c.deferred,
            _ => &c.unsettled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a consumer loop finished when dropped: on return, on abort and on panic.
struct LoopGuard(Arc<Shared>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.loops.fetch_sub(1, Ordering::SeqCst);
        self.0.loops_signal.notify(usize::MAX);
    }
}

/// Everything one consumer loop needs.
pub(crate) struct ConsumerLoop {
    pub(crate) group: String,
    pub(crate) concurrency: usize,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) retry_backoff: crate::retry::Backoff,
    pub(crate) metrics: Arc<crate::observability::Metrics>,
}

enum Step {
    Delivery(Option<Result<Delivery, crate::Error>>),
    Finished(Option<String>),
    Stop,
}

impl ConsumerLoop {
    /// Registers the loop as running; call before spawning [`ConsumerLoop::run`].
    pub(crate) fn register(shared: &Shared) {
        shared.loops.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) async fn run(self, stream: DeliveryStream) {
        // Counts the loop as finished however it ends, a panic included, so that shutdown
        // never waits for a loop that is gone.
        let _running = LoopGuard(self.shared.clone());
        let mut stream = stream.fuse();
        let concurrency = self.concurrency.max(1);
        let buffer = (concurrency * 4).max(16);
        let mut pending: VecDeque<Delivery> = VecDeque::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut running: FuturesUnordered<BoxFuture<'static, Option<String>>> =
            FuturesUnordered::new();
        let mut stop_listener = self.shared.stop_signal.listen();
        let mut stopping = false;
        let mut errors = 0u32;
        loop {
            while running.len() < concurrency {
                let Some(index) = pending
                    .iter()
                    .position(|d| d.message.key.as_ref().is_none_or(|k| !busy.contains(k)))
                else {
                    break;
                };
                let Some(delivery) = pending.remove(index) else {
                    break;
                };
                if let Some(key) = &delivery.message.key {
                    busy.insert(key.clone());
                }
                running.push(self.start(delivery));
            }
            if running.is_empty() && (stopping || (stream.is_done() && pending.is_empty())) {
                break;
            }
            let can_read = !stopping && pending.len() < buffer && !stream.is_done();
            let step = futures::future::poll_fn(|cx| {
                if !stopping {
                    if self.shared.is_stopping() {
                        return Poll::Ready(Step::Stop);
                    }
                    while stop_listener.poll_unpin(cx).is_ready() {
                        stop_listener = self.shared.stop_signal.listen();
                        if self.shared.is_stopping() {
                            return Poll::Ready(Step::Stop);
                        }
                    }
                }
                if let Poll::Ready(Some(key)) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Step::Finished(key));
                }
                if can_read {
                    if let Poll::Ready(item) = stream.poll_next_unpin(cx) {
                        return Poll::Ready(Step::Delivery(item));
                    }
                }
                Poll::Pending
            })
            .await;
            match step {
                Step::Stop => {
                    stopping = true;
                    // Deliveries not started are dropped unsettled: the backend redelivers them.
                    pending.clear();
                }
                Step::Finished(key) => {
                    if let Some(key) = key {
                        busy.remove(&key);
                    }
                }
                Step::Delivery(Some(Ok(delivery))) => {
                    errors = 0;
                    pending.push_back(delivery);
                }
                Step::Delivery(Some(Err(error))) => {
                    errors = errors.saturating_add(1);
                    let wait = self.retry_backoff.delay(errors);
                    tracing::warn!(group = %self.group, %error, ?wait, "consumer stream error, backing off");
                    self.clock.sleep(wait).await;
                }
                Step::Delivery(None) => {
                    if running.is_empty() && pending.is_empty() {
                        break;
                    }
                }
            }
        }
        drop(stream);
    }

    /// Spawns the pipeline for one delivery; the returned future completes with the
    /// delivery's key when it is settled (or aborted).
    fn start(&self, delivery: Delivery) -> BoxFuture<'static, Option<String>> {
        let key = delivery.message.key.clone();
        if self.shared.is_stopping() {
            // Stopping: leave it unsettled for redelivery rather than start new work.
            drop(delivery);
            return Box::pin(futures::future::ready(key));
        }
        let pipeline = self.pipeline.clone();
        let shared = self.shared.clone();
        let runtime = self.runtime.clone();
        let clock = self.clock.clone();
        let backoff = self.retry_backoff.clone();
        let group = self.group.clone();
        let metrics = self.metrics.clone();
        let task = async move {
            let Delivery {
                message,
                redeliveries,
                acker,
            } = delivery;
            let mut cx = DeliveryCx::new(message, group, redeliveries);
            // The handler's own panics are failures the guard layer retries; a panic in any
            // other layer (a user layer, an inbox store) ends only this delivery, unsettled.
            let outcome = match AssertUnwindSafe(pipeline.run(&mut cx)).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(payload) => {
                    let message = crate::pipeline::panic_message(&*payload);
                    tracing::error!(
                        topic = %cx.message.topic,
                        group = %cx.group,
                        %message,
                        "delivery pipeline panicked outside the handler; redelivering"
                    );
                    Outcome::Unsettled(crate::Error::Panicked { message })
                }
            };
            shared.count(&outcome);
            metrics.outcome(&cx.message.topic, &cx.group, outcome.label());
            if let (Outcome::Handled, Some(envelope)) = (&outcome, &cx.envelope) {
                let age = (clock.now() - envelope.time).to_std().unwrap_or_default();
                metrics.consumer_lag(&cx.message.topic, age);
            }
            let settled = match outcome {
                outcome if outcome.is_settled() => acker.ack().await,
                Outcome::Deferred { delay, .. } if acker.can_defer() => {
                    acker.defer(delay, cx.retry_state(true)).await
                }
                Outcome::Deferred { delay, .. } => {
                    // The backend cannot park it durably: wait beside the consumer, not in it.
                    let state = cx.retry_state(true);
                    let wait = clock.sleep(delay);
                    let later = async move {
                        wait.await;
                        if let Err(error) = acker.nack(state).await {
                            tracing::error!(%error, "failed to redeliver a deferred delivery");
                        }
                    };
                    runtime.spawn(Box::pin(shared.tracked(later)));
                    Ok(())
                }
                other => {
                    if let Outcome::Unsettled(error) = &other {
                        tracing::warn!(%error, "delivery left unsettled, redelivering after backoff");
                    }
                    clock.sleep(backoff.delay(cx.attempt)).await;
                    acker.nack(cx.retry_state(false)).await
                }
            };
            if let Err(error) = settled {
                tracing::error!(%error, "failed to settle a delivery with the backend");
            }
        };
        // Runs inside the consumer loop's task (no hand-off to another thread per delivery),
        // abortable like a spawned task.
        let tracked = self.shared.tracked(task);
        Box::pin(async move {
            tracked.await;
            key
        })
    }
}
