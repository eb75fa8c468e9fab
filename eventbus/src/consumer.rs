//! The consumer loop of one subscription: pulls deliveries, runs up to `concurrency` of them at
//! once while keeping each partition key strictly sequential, and settles each with the
//! backend once the pipeline is done with it.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::backend::{Acknowledger, Delivery, DeliveryStream};
use crate::clock::Clock;
use crate::hash_tables::{FoldMap, FoldSet};
use crate::observability::{DeliverySeries, Metrics};
use crate::pipeline::{record, DeliveryCx, Outcome, Pipeline, Prefetched, Settlement};
use crate::runtime::task_group::TaskGroup;
use crate::runtime::Runtime;

/// Counters of what the bus's consumers did.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) unsettled: AtomicU64,
    pub(crate) deferred: AtomicU64,
}

/// State shared by the bus and its consumer loops: the task group running the loops and
/// deferred redeliveries, and the outcome counters.
pub(crate) struct BusState {
    pub(crate) tasks: Arc<TaskGroup>,
    pub(crate) counters: Counters,
}

impl Default for BusState {
    fn default() -> Self {
        BusState {
            tasks: TaskGroup::new(),
            counters: Counters::default(),
        }
    }
}

impl BusState {
    pub(crate) fn is_stopping(&self) -> bool {
        self.tasks.is_stopping()
    }

    fn count(&self, outcome: &Outcome) {
        let c = &self.counters;
        let counter = match outcome {
            Outcome::Handled => &c.handled,
            Outcome::Duplicate => &c.duplicates,
            Outcome::Skipped => &c.skipped,
            Outcome::Filtered => &c.filtered,
            Outcome::DeadLettered(_) => &c.dead_lettered,
            Outcome::Discarded(_) => &c.discarded,
            Outcome::Deferred { .. } => &c.deferred,
            _ => &c.unsettled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything one consumer loop needs.
pub(crate) struct ConsumerLoop {
    pub(crate) group: Arc<str>,
    pub(crate) concurrency: usize,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) shared: Arc<BusState>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) retry_backoff: crate::retry::Backoff,
    pub(crate) metrics: Arc<crate::observability::Metrics>,
    /// This subscription's own stop ([`crate::Bus::unsubscribe`]).
    pub(crate) control: Arc<crate::consumer_control::ConsumerControl>,
}

enum Step {
    /// Deliveries read and held (at least one), up to the loop's buffer: every one the stream
    /// had ready, so the checks around a read are paid once per batch, not per delivery.
    Held,
    /// The stream failed before any delivery was read.
    Failed(crate::Error),
    /// The stream ended before any delivery was read.
    Ended,
    Ran(Ran),
    Finished(Finished),
    Stop,
}

/// A delivery out of its pipeline: settled, or settling once its inbox record is written
/// ([`PendingRecord`](crate::pipeline::PendingRecord)), which it does without holding a
/// concurrency slot (its key stays busy until then).
enum Ran {
    Finished(Finished),
    Settling(BoxFuture<'static, Finished>),
}

/// How a delivery ended, for the loop: its key's [`KeyHashes`] value, and whether it was handed
/// back to the backend for redelivery (nacked).
struct Finished {
    key: Option<u64>,
    handed_back: bool,
}

impl ConsumerLoop {
    /// Runs the loop in the bus's task group: counted out however it ends (a panic included),
    /// stopped by the group's stop signal, aborted at the end of a shutdown's drain time.
    pub(crate) async fn run(self, stream: DeliveryStream) {
        let _finished = crate::consumer_control::FinishOnDrop(self.control.clone());
        let mut stream = stream.fuse();
        let concurrency = self.concurrency.max(1);
        let buffer = (concurrency * 4).max(16);
        let mut order = KeyOrder::new(&self.pipeline, &self.group);
        let mut running: FuturesUnordered<BoxFuture<'static, Ran>> = FuturesUnordered::new();
        // Deliveries out of the pipeline waiting for their inbox record: at most `buffer`, as
        // many as are held, so that records in flight do not bound the handlers started (at
        // `concurrency` alone, a remote inbox's round trip would).
        let mut settling: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
        let mut stop_listener = self.shared.tasks.stop_listener();
        let mut control_listener = self.control.stop_listener();
        let mut stopping = false;
        let mut errors = 0u32;
        // A stream error met after deliveries of the same read: handled once they started.
        let mut read_error: Option<crate::Error> = None;
        // The box of the last delivery that finished at its first poll, for the next one.
        let mut spare = None;
        let mut last_series = LastSeries::default();
        // What settling needs, shared by every delivery of the loop (one handle per delivery).
        let settler = Arc::new(Settler {
            shared: self.shared.clone(),
            runtime: self.runtime.clone(),
            clock: self.clock.clone(),
            backoff: self.retry_backoff.clone(),
            metrics: self.metrics.clone(),
        });
        loop {
            while running.len() < concurrency && settling.len() < buffer {
                let Some(Held {
                    delivery,
                    key,
                    prefetched,
                }) = order.next_startable()
                else {
                    break;
                };
                if self.is_stopping() {
                    // Stopping: hand it back for redelivery rather than start new work.
                    delivery.acker.release();
                    order.finished(Finished {
                        key,
                        handed_back: true,
                    });
                    continue;
                }
                let series = last_series.get(&self.metrics, &delivery.message.topic, &self.group);
                let mut run = boxed(
                    &mut spare,
                    self.start(delivery, key, prefetched, series, &settler),
                );
                // A pipeline that finishes without waiting (an in-process inbox, a handler that
                // returns at once) is done with here, without a round through `running`, and
                // its box serves the next delivery.
                match futures::poll!(&mut run) {
                    Poll::Ready(Ran::Finished(finished)) => {
                        order.finished(finished);
                        spare = Some(run);
                    }
                    Poll::Ready(Ran::Settling(settle)) => {
                        settling.push(settle);
                        spare = Some(run);
                    }
                    Poll::Pending => running.push(run),
                }
            }
            if let Some(error) = read_error.take() {
                // Read after deliveries that have now started, as they were read.
                self.back_off(&mut errors, error).await;
            }
            let idle = running.is_empty() && settling.is_empty();
            if idle && (stopping || (stream.is_done() && order.pending.is_empty())) {
                break;
            }
            let can_read = !stopping && order.pending.len() < buffer && !stream.is_done();
            let step = futures::future::poll_fn(|cx| {
                if !stopping {
                    if self.is_stopping() {
                        return Poll::Ready(Step::Stop);
                    }
                    while stop_listener.poll_unpin(cx).is_ready() {
                        stop_listener = self.shared.tasks.stop_listener();
                        if self.is_stopping() {
                            return Poll::Ready(Step::Stop);
                        }
                    }
                    while control_listener.poll_unpin(cx).is_ready() {
                        control_listener = self.control.stop_listener();
                        if self.is_stopping() {
                            return Poll::Ready(Step::Stop);
                        }
                    }
                }
                if let Poll::Ready(Some(finished)) = settling.poll_next_unpin(cx) {
                    return Poll::Ready(Step::Finished(finished));
                }
                if let Poll::Ready(Some(ran)) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Step::Ran(ran));
                }
                if !can_read {
                    return Poll::Pending;
                }
                let mut held = false;
                while order.pending.len() < buffer {
                    match stream.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(delivery))) => {
                            order.hold(delivery);
                            held = true;
                        }
                        Poll::Ready(Some(Err(error))) if held => {
                            read_error = Some(error);
                            break;
                        }
                        Poll::Ready(Some(Err(error))) => return Poll::Ready(Step::Failed(error)),
                        // Ended after deliveries: the loop sees the stream done next round.
                        Poll::Ready(None) if held => break,
                        Poll::Ready(None) => return Poll::Ready(Step::Ended),
                        Poll::Pending => break,
                    }
                }
                if held {
                    Poll::Ready(Step::Held)
                } else {
                    Poll::Pending
                }
            })
            .await;
            match step {
                Step::Stop => {
                    stopping = true;
                    // Deliveries not started go back to the backend, which redelivers them.
                    order.release_all();
                }
                Step::Ran(Ran::Settling(settle)) => settling.push(settle),
                Step::Ran(Ran::Finished(finished)) | Step::Finished(finished) => {
                    order.finished(finished);
                }
                Step::Held => errors = 0,
                Step::Failed(error) => self.back_off(&mut errors, error).await,
                Step::Ended => {
                    if running.is_empty() && settling.is_empty() && order.pending.is_empty() {
                        break;
                    }
                }
            }
        }
        drop(stream);
    }

    /// Waits out a stream error, longer with each one in a row (`errors`, counted here).
    async fn back_off(&self, errors: &mut u32, error: crate::Error) {
        *errors = errors.saturating_add(1);
        let wait = self.retry_backoff.delay(*errors);
        tracing::warn!(group = %self.group, %error, ?wait, "consumer stream error, backing off");
        self.clock.sleep(wait).await;
    }

    /// Whether the bus or this subscription is stopping.
    fn is_stopping(&self) -> bool {
        self.shared.is_stopping() || self.control.is_stopping()
    }

    /// Runs the pipeline for one delivery; the returned future completes when the delivery is
    /// settled with the backend (or aborted), or, when its inbox record is still being
    /// written, with the rest of its settlement to wait for outside the concurrency slots.
    ///
    /// `key` is the delivery's key as the loop saw it: whatever a layer does to the message,
    /// that is the key the delivery frees.
    fn start(
        &self,
        delivery: Delivery,
        key: Option<u64>,
        prefetched: Option<Prefetched>,
        series: Arc<DeliverySeries>,
        settler: &Arc<Settler>,
    ) -> impl Future<Output = Ran> + Send + 'static {
        let pipeline = self.pipeline.clone();
        let group = self.group.clone();
        let settler = settler.clone();
        // Runs inside the consumer loop's task (no hand-off to another thread per delivery):
        // aborting the loop drops it unsettled, and the backend redelivers.
        async move {
            let Delivery {
                message,
                redeliveries,
                acker,
            } = delivery;
            let mut cx = DeliveryCx::new(message, group, redeliveries);
            cx.use_series(series);
            cx.prefetched = prefetched;
            // The handler's own panics are failures the guard layer retries; a panic in any
            // other layer (a user layer, an inbox store) ends only this delivery, unsettled.
            let outcome = match AssertUnwindSafe(pipeline.run(&mut cx)).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(payload) => unsettled_by_panic(&cx, &*payload),
            };
            match cx.pending_record.take() {
                Some(record) if matches!(outcome, Outcome::Handled) => {
                    let record = record.into_future();
                    Ran::Settling(Box::pin(async move {
                        let outcome = match AssertUnwindSafe(record).catch_unwind().await {
                            Ok(Ok(())) => outcome,
                            Ok(Err(error)) => Outcome::Unsettled(error),
                            Err(payload) => unsettled_by_panic(&cx, &*payload),
                        };
                        let handed_back = settler.settle(outcome, &mut cx, acker).await;
                        Finished { key, handed_back }
                    }))
                }
                _ => {
                    let handed_back = settler.settle(outcome, &mut cx, acker).await;
                    Ran::Finished(Finished { key, handed_back })
                }
            }
        }
    }
}

/// The metrics series of the topic of the loop's last delivery: deliveries of one topic in a
/// row look it up once, not once each.
#[derive(Default)]
struct LastSeries(Option<(Arc<str>, Arc<DeliverySeries>)>);

impl LastSeries {
    /// The series of `topic` in `group`.
    fn get(&mut self, metrics: &Metrics, topic: &Arc<str>, group: &str) -> Arc<DeliverySeries> {
        match &self.0 {
            Some((last, series)) if **last == **topic => series.clone(),
            _ => {
                let series = metrics.series(topic, group);
                self.0 = Some((topic.clone(), series.clone()));
                series
            }
        }
    }
}

/// `future` in `spare`'s box when there is one (its finished future dropped in place, no
/// allocation), else in a new box.
fn boxed<F: Future>(spare: &mut Option<Pin<Box<F>>>, future: F) -> Pin<Box<F>> {
    match spare.take() {
        Some(mut boxed) => {
            boxed.set(future);
            boxed
        }
        None => Box::pin(future),
    }
}

/// What keeps each key's deliveries in order in the loop: the deliveries read and not started
/// (each with its key's hash, taken once as it is held), and the keys of the deliveries
/// running or settling.
///
/// With an inbox that is asked ahead ([`Pipeline::prefetch`]), it also asks the inbox about
/// each held delivery that no earlier delivery of its key precedes (held, running or
/// settling): as it is held, or as its key's previous delivery is settled. No delivery of the
/// same event can then record it before the delivery starts, but by another member of the
/// group; the inbox stage asks again when the answer is older than
/// [`PREFETCH_FRESH_FOR`](crate::inbox::PREFETCH_FRESH_FOR).
#[derive(Default)]
struct KeyOrder {
    pending: VecDeque<Held>,
    busy: FoldSet<u64>,
    keys: KeyHashes,
    /// The inbox asked ahead, if it is.
    prefetch: Option<Prefetch>,
    /// How many held deliveries each key has (kept only when asking ahead).
    held_keys: FoldMap<u64, u32>,
}

/// A delivery read and not started.
struct Held {
    delivery: Delivery,
    /// Its key's hash.
    key: Option<u64>,
    /// Its inbox lookup, asked ahead.
    prefetched: Option<Prefetched>,
}

/// What asks a consumer's inbox ahead: its pipeline and group.
struct Prefetch {
    pipeline: Arc<Pipeline>,
    group: Arc<str>,
}

impl Prefetch {
    /// The inbox lookup of `delivery`, asked now (if its inbox and message allow).
    fn ask(&self, delivery: &Delivery) -> Option<Prefetched> {
        self.pipeline.prefetch(&self.group, &delivery.message)
    }
}

impl KeyOrder {
    /// Key order for a loop whose pipeline's inbox is asked ahead when it can be.
    fn new(pipeline: &Arc<Pipeline>, group: &Arc<str>) -> Self {
        KeyOrder {
            prefetch: pipeline.prefetches().then(|| Prefetch {
                pipeline: pipeline.clone(),
                group: group.clone(),
            }),
            ..KeyOrder::default()
        }
    }

    /// Holds `delivery` until its key is free.
    fn hold(&mut self, delivery: Delivery) {
        let key = self.keys.of(&delivery);
        let mut prefetched = None;
        if let Some(prefetch) = &self.prefetch {
            let first = match key {
                None => true,
                Some(key) => {
                    let held = self.held_keys.entry(key).or_insert(0);
                    *held += 1;
                    *held == 1 && !self.busy.contains(&key)
                }
            };
            if first {
                prefetched = prefetch.ask(&delivery);
            }
        }
        self.pending.push_back(Held {
            delivery,
            key,
            prefetched,
        });
    }

    /// Hands every held delivery back to the backend, unstarted.
    fn release_all(&mut self) {
        for held in self.pending.drain(..) {
            held.delivery.acker.release();
        }
        self.held_keys.clear();
    }

    /// Takes the first held delivery whose key is free (or that has none), now busy.
    fn next_startable(&mut self) -> Option<Held> {
        let KeyOrder { pending, busy, .. } = self;
        let index = pending
            .iter()
            .position(|held| held.key.is_none_or(|k| !busy.contains(&k)))?;
        let held = pending.remove(index)?;
        if let Some(key) = held.key {
            busy.insert(key);
            if self.prefetch.is_some() {
                if let Some(count) = self.held_keys.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        self.held_keys.remove(&key);
                    }
                }
            }
        }
        Some(held)
    }

    /// A delivery is out of the pipeline and settled: its key is free again.
    fn finished(&mut self, Finished { key, handed_back }: Finished) {
        let Some(key) = key else {
            return;
        };
        self.busy.remove(&key);
        if handed_back {
            // The backend delivers it again: its key's later deliveries held here must not
            // overtake it. Released unstarted, they are redelivered after it, in their order,
            // without an attempt counted.
            for held in std::mem::take(&mut self.pending) {
                if held.key == Some(key) {
                    held.delivery.acker.release();
                } else {
                    self.pending.push_back(held);
                }
            }
            self.held_keys.remove(&key);
        } else if let Some(prefetch) = &self.prefetch {
            // The key's next held delivery is now first: ask about it.
            if self.held_keys.contains_key(&key) {
                if let Some(next) = self.pending.iter_mut().find(|held| held.key == Some(key)) {
                    if next.prefetched.is_none() {
                        next.prefetched = prefetch.ask(&next.delivery);
                    }
                }
            }
        }
    }
}

/// Partition keys as the consumer loop tracks them: by a 64-bit hash with a key chosen at
/// random per loop, so tracking a delivery's key copies nothing. Two keys of one hash (which a
/// publisher cannot aim for without the random key) are only kept in order together, as if
/// they were one key: their events are still handled in order, one key waiting for the other.
#[derive(Default)]
struct KeyHashes(foldhash::fast::RandomState);

impl KeyHashes {
    /// The hash of `delivery`'s key, if it has one.
    fn of(&self, delivery: &Delivery) -> Option<u64> {
        use std::hash::BuildHasher;
        delivery
            .message
            .key
            .as_deref()
            .map(|key| self.0.hash_one(key))
    }
}

/// A panic outside the handler (a user layer, an inbox store), logged: the delivery is left
/// unsettled and redelivered.
fn unsettled_by_panic(cx: &DeliveryCx, payload: &(dyn std::any::Any + Send)) -> Outcome {
    let message = crate::pipeline::panic_message(payload);
    tracing::error!(
        topic = %cx.message.topic,
        group = %cx.group,
        %message,
        "delivery pipeline panicked outside the handler; redelivering"
    );
    Outcome::Unsettled(crate::Error::Panicked { message })
}

/// What settling a delivery needs: counts and records its outcome, then acknowledges, defers
/// or hands it back.
struct Settler {
    shared: Arc<BusState>,
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    backoff: crate::retry::Backoff,
    metrics: Arc<crate::observability::Metrics>,
}

impl Settler {
    /// Settles the delivery with the backend as `outcome` calls for; returns whether it was
    /// handed back for redelivery.
    async fn settle(
        &self,
        outcome: Outcome,
        cx: &mut DeliveryCx,
        acker: Box<dyn Acknowledger>,
    ) -> bool {
        let Settler {
            shared,
            runtime,
            clock,
            backoff,
            metrics,
        } = self;
        shared.count(&outcome);
        record(&outcome, cx, metrics, clock.now());
        if let Outcome::Unsettled(error) = &outcome {
            tracing::warn!(%error, "delivery left unsettled, redelivering after backoff");
        }
        let mut handed_back = false;
        let settled = match Settlement::of(&outcome, cx, backoff) {
            Settlement::Ack => acker.ack().await,
            Settlement::Defer { delay, state } if acker.can_defer() => {
                acker.defer(delay, state).await
            }
            Settlement::Defer { delay, state } => {
                // The backend cannot park it durably: wait beside the consumer, not in it. A
                // stop cuts the wait short: the redelivery is handed back at once.
                let wait = clock.sleep(delay);
                let tasks = shared.tasks.clone();
                let later = async move {
                    let stopped = Box::pin(tasks.stopped());
                    let _ = futures::future::select(wait, stopped).await;
                    if let Err(error) = acker.nack(state).await {
                        tracing::error!(%error, "failed to redeliver a deferred delivery");
                    }
                };
                shared.tasks.spawn(runtime, later);
                Ok(())
            }
            Settlement::Redeliver { wait, state } => {
                clock.sleep(wait).await;
                handed_back = true;
                acker.nack(state).await
            }
        };
        if let Err(error) = settled {
            tracing::error!(%error, "failed to settle a delivery with the backend");
        }
        handed_back
    }
}
