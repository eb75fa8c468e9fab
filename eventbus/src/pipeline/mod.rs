//! The handler pipeline every delivery goes through, whatever the backend:
//!
//! ```text
//! dead-letter ─▶ decode ─▶ park-key ─▶ inbox ─▶ retry ─▶ [user layers] ─▶ guard ─▶ handler
//! ```
//!
//! Each stage gets the delivery's [`DeliveryCx`] and the rest of the chain, and returns an
//! [`Outcome`]. The consumer acknowledges the delivery when the outcome is settled
//! ([`Outcome::is_settled`]) and asks for redelivery otherwise.
//!
//! The built-in stages are composed at compile time: a delivery runs through them as one
//! future, with no allocation or dynamic call per stage. Users' stages are [`Layer`]s, called
//! through [`Next`] between the retry stage and the guard.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::backend::{Message, RetryState};
use crate::clock::Clock;
use crate::dead_letter::Failure;
use crate::envelope::RawEnvelope;
use crate::error::Error;
use crate::handler::{ErasedHandler, ErrorKind};
use crate::inbox::InboxStore;
use crate::publisher::Publisher;
use crate::subscription::Subscription;

mod decode;
mod dlq;
mod guard;
mod inbox;
pub(crate) mod park;
mod retry;
mod settle;

pub(crate) use decode::DecodeLayer;
pub(crate) use dlq::DeadLetterLayer;
pub(crate) use guard::panic_message;
pub(crate) use guard::GuardLayer;
pub(crate) use inbox::{InboxLayer, PendingRecord, Prefetched};
pub(crate) use park::ParkKeyLayer;
pub use park::REDRIVE_HEADER;
pub(crate) use retry::RetryLayer;
pub(crate) use settle::{record, Settlement};

/// One delivery travelling through the pipeline.
#[derive(Debug)]
pub struct DeliveryCx {
    /// The message as received.
    pub message: Message,
    /// Consumer group handling it (shared by every delivery of the consumer).
    pub group: Arc<str>,
    /// Attempt number of the next (or current) handler call, starting at 1.
    pub attempt: u32,
    /// Delayed-retry rounds already done.
    pub round: u32,
    /// The decoded envelope, once the decode layer ran.
    pub envelope: Option<RawEnvelope>,
    /// First failed attempt, if any.
    pub first_failure: Option<DateTime<Utc>>,
    /// Whether the delivery is a replay.
    pub replay: bool,
    /// The inbox record of the handled event, still being written to a remote inbox: the
    /// consumer acknowledges the delivery only once it is written.
    pub(crate) pending_record: Option<PendingRecord>,
    /// The inbox lookup asked while the delivery was held, if any.
    pub(crate) prefetched: Option<Prefetched>,
    /// The metrics series of its topic and group, once looked up.
    series: Option<Arc<crate::observability::DeliverySeries>>,
    /// Whether the envelope's metadata moved into the handler's envelope (leaving its id,
    /// time, version and data).
    envelope_lent: bool,
}

impl DeliveryCx {
    /// A context for `message` delivered to `group`, redelivered `redeliveries` times by the
    /// backend. The attempt number continues from the larger of the redelivery count and the
    /// attempts recorded in the message's headers.
    pub fn new(message: Message, group: impl Into<Arc<str>>, redeliveries: u32) -> Self {
        let replay = message.headers.contains_key(crate::wire::REPLAY_HEADER);
        let state = message.retry_state();
        DeliveryCx {
            group: group.into(),
            attempt: state.attempts.max(redeliveries).saturating_add(1),
            round: state.round,
            envelope: None,
            first_failure: state.first_failure,
            replay,
            pending_record: None,
            prefetched: None,
            series: None,
            envelope_lent: false,
            message,
        }
    }

    /// Decodes the envelope again if its metadata moved into a handler's envelope: after a
    /// failed, panicked or timed-out call, for the retry, the dead letter and the logs.
    pub(crate) fn restore_lent_envelope(&mut self) {
        if std::mem::take(&mut self.envelope_lent) {
            self.envelope = RawEnvelope::decode(&self.message.payload).ok();
        }
    }

    /// Uses `series` as the metrics series of this delivery's topic and group (the consumer
    /// loop keeps the last one it looked up).
    pub(crate) fn use_series(&mut self, series: Arc<crate::observability::DeliverySeries>) {
        self.series = Some(series);
    }

    /// The metrics series of this delivery's topic and group: looked up in `metrics` once,
    /// then kept for every record of the delivery.
    pub(crate) fn series(
        &mut self,
        metrics: &crate::observability::Metrics,
    ) -> &crate::observability::DeliverySeries {
        let DeliveryCx {
            series,
            message,
            group,
            ..
        } = self;
        series.get_or_insert_with(|| metrics.series(&message.topic, group))
    }

    /// The retry state to carry into a redelivery after the current attempt.
    pub fn retry_state(&self, next_round: bool) -> RetryState {
        RetryState {
            attempts: self.attempt,
            round: self.round + u32::from(next_round),
            first_failure: self.first_failure,
        }
    }

    /// Builds a failure of this delivery at time `now`.
    pub fn failure(&mut self, kind: ErrorKind, message: String, now: DateTime<Utc>) -> Failure {
        let first = *self.first_failure.get_or_insert(now);
        Failure {
            kind,
            message,
            attempts: self.attempt,
            first_failure: first,
            last_failure: now,
        }
    }
}

/// How a delivery ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded.
    Handled,
    /// The inbox had already seen the event in this group: not handled again.
    Duplicate,
    /// The event's type does not match the subscription (shared topic): nothing to do.
    Skipped,
    /// The subscription's [filter](crate::Subscription::filter) rejected the event.
    Filtered,
    /// The handler (or decoding) failed; outer layers decide between retry and dead letter.
    Failed(Failure),
    /// Failed a round; to come back after `delay` for another round, without blocking.
    Deferred {
        /// How long until the next round.
        delay: std::time::Duration,
        /// The failure that ended the round.
        failure: Failure,
    },
    /// Published to the dead-letter topic.
    DeadLettered(Failure),
    /// Dropped after exhausting attempts, by policy (`dlq = false`).
    Discarded(Failure),
    /// Infrastructure trouble (inbox or DLQ unreachable): the delivery must be redelivered.
    Unsettled(Error),
}

impl Outcome {
    /// Whether the delivery can be acknowledged.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            Outcome::Handled
                | Outcome::Duplicate
                | Outcome::Skipped
                | Outcome::Filtered
                | Outcome::DeadLettered(_)
                | Outcome::Discarded(_)
        )
    }

    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::Filtered => "filtered",
            Outcome::Failed(_) => "failed",
            Outcome::Deferred { .. } => "deferred",
            Outcome::DeadLettered(_) => "dead_lettered",
            Outcome::Discarded(_) => "discarded",
            Outcome::Unsettled(_) => "unsettled",
        }
    }
}

/// A pipeline stage, added with [`BusBuilder::layer`](crate::BusBuilder::layer) between the
/// retry stage and the handler guard (the built-in stages are the crate's own).
///
/// Not tower's `Layer`, which wraps one `Service` in another: this is the middleware itself,
/// called once per delivery attempt with the delivery and the rest of the chain ([`Next`]), in
/// the style of axum's `from_fn` middleware. It may run `next` zero times (short-circuit),
/// once, or several times (retry), and returns the attempt's [`Outcome`].
pub trait Layer: Send + Sync + 'static {
    /// Handles the delivery, calling `next` zero or more times.
    fn handle<'a>(&'a self, cx: &'a mut DeliveryCx, next: Next<'a>) -> BoxFuture<'a, Outcome>;

    /// Whether this layer reads the metadata of [`DeliveryCx::envelope`] (anything but its id,
    /// time, version and data) after `next` returned [`Outcome::Handled`]. When no layer does,
    /// the handler's envelope takes the decoded envelope's strings and headers instead of a
    /// copy of them, and what stays in the context keeps only its id, time, version and data.
    /// After any other outcome the context holds the whole envelope either way.
    ///
    /// `true` unless a layer says otherwise, which is always safe.
    fn reads_handled_envelope(&self) -> bool {
        true
    }
}

/// The rest of the pipeline after a layer.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    layers: &'a [Arc<dyn Layer>],
    tail: &'a (dyn Tail + 'a),
}

impl<'a> Next<'a> {
    /// Runs the remaining layers and the handler.
    pub fn run<'b>(self, cx: &'b mut DeliveryCx) -> BoxFuture<'b, Outcome>
    where
        'a: 'b,
    {
        match self.layers.split_first() {
            Some((layer, rest)) => layer.handle(
                cx,
                Next {
                    layers: rest,
                    tail: self.tail,
                },
            ),
            None => self.tail.call(cx),
        }
    }
}

/// A built-in stage, or the rest of the chain a built-in stage runs: composed at compile time.
pub(crate) trait Stage: Send + Sync {
    /// Runs the delivery through this stage and the ones after it.
    fn run<'a>(&'a self, cx: &'a mut DeliveryCx) -> impl Future<Output = Outcome> + Send + 'a;
}

/// What users' layers run after the last of them: the guard and the handler, behind one
/// allocation per call.
trait Tail: Send + Sync {
    fn call<'b>(&'b self, cx: &'b mut DeliveryCx) -> BoxFuture<'b, Outcome>;
}

/// The end of the chain: builds the handler's [`Context`](crate::Context), decodes the data
/// and calls the handler.
pub(crate) struct Endpoint {
    handler: Arc<dyn ErasedHandler>,
    newer_versions: crate::subscription::NewerVersions,
    publisher: Publisher,
    extensions: Arc<crate::Extensions>,
    clock: Arc<dyn Clock>,
    /// Whether the handler's envelope takes the decoded envelope's metadata instead of a copy
    /// (see [`DeliveryCx::restore_lent_envelope`]): only when no user layer reads it after a
    /// handled call ([`Layer::reads_handled_envelope`]), as none of the built-in stages reads
    /// more than the id and time of a handled event.
    lend_envelope: bool,
}

impl Endpoint {
    async fn call(&self, cx: &mut DeliveryCx) -> Outcome {
        let now = || self.clock.now();
        // A layer that runs the handler again after a handled call gets the whole envelope.
        cx.restore_lent_envelope();
        let DeliveryCx {
            message,
            group,
            attempt,
            replay,
            envelope,
            envelope_lent,
            ..
        } = &mut *cx;
        let Some(raw) = envelope.as_mut() else {
            let failure = cx.failure(
                ErrorKind::Permanent,
                "envelope was not decoded".into(),
                now(),
            );
            return Outcome::Failed(failure);
        };
        if self.newer_versions == crate::subscription::NewerVersions::DeadLetter {
            if let Some(known) = self.handler.known_version(&raw.event_type) {
                if raw.version > known {
                    let error = crate::DecodeError::UnsupportedVersion {
                        event_type: raw.event_type.clone(),
                        found: raw.version,
                        known,
                    };
                    return Outcome::Failed(cx.failure(
                        ErrorKind::Permanent,
                        error.to_string(),
                        now(),
                    ));
                }
            }
        }
        // Built only for a handler that takes a `Context`.
        let ctx = crate::context::ContextParts {
            topic: &message.topic,
            group,
            attempt: *attempt,
            replay: *replay,
            publisher: &self.publisher,
            extensions: &self.extensions,
        };
        let called = self.handler.call(&ctx, raw, self.lend_envelope);
        *envelope_lent |= self.lend_envelope && called.is_ok();
        let result = match called {
            Ok(future) => future.await.map_err(|e| (e.kind(), e.message().to_owned())),
            Err(decode) => Err((ErrorKind::Permanent, decode.to_string())),
        };
        match result {
            Ok(()) => Outcome::Handled,
            // The guard gives the envelope back after any outcome but handled.
            Err((kind, message)) => Outcome::Failed(cx.failure(kind, message, now())),
        }
    }
}

/// A subscription's assembled pipeline: the built-in stages in their order, users' layers
/// between the retry stage and the guard.
pub(crate) struct Pipeline {
    dead_letter: DeadLetterLayer,
    decode: DecodeLayer,
    park: Option<ParkKeyLayer>,
    inbox: InboxLayer,
    retry: RetryLayer,
    user: Vec<Arc<dyn Layer>>,
    guard: GuardLayer,
    endpoint: Endpoint,
}

/// The chain after the dead-letter stage.
struct AfterDeadLetter<'p>(&'p Pipeline);
/// The chain after the decode stage.
struct AfterDecode<'p>(&'p Pipeline);
/// The chain after the parked-key stage (or the decode stage, without one).
struct AfterPark<'p>(&'p Pipeline);
/// The chain after the inbox stage.
struct AfterInbox<'p>(&'p Pipeline);
/// The chain after the retry stage: users' layers, then the guard.
struct AfterRetry<'p>(&'p Pipeline);
/// The guard and the handler.
struct Guarded<'p>(&'p Pipeline);

impl Stage for AfterDeadLetter<'_> {
    async fn run(&self, cx: &mut DeliveryCx) -> Outcome {
        self.0.decode.around(cx, &AfterDecode(self.0)).await
    }
}

impl Stage for AfterDecode<'_> {
    async fn run(&self, cx: &mut DeliveryCx) -> Outcome {
        match &self.0.park {
            Some(park) => park.around(cx, &AfterPark(self.0)).await,
            None => AfterPark(self.0).run(cx).await,
        }
    }
}

impl Stage for AfterPark<'_> {
    async fn run(&self, cx: &mut DeliveryCx) -> Outcome {
        self.0.inbox.around(cx, &AfterInbox(self.0)).await
    }
}

impl Stage for AfterInbox<'_> {
    async fn run(&self, cx: &mut DeliveryCx) -> Outcome {
        self.0.retry.around(cx, &AfterRetry(self.0)).await
    }
}

impl Stage for AfterRetry<'_> {
    async fn run(&self, cx: &mut DeliveryCx) -> Outcome {
        if self.0.user.is_empty() {
            return Guarded(self.0).run(cx).await;
        }
        let tail = Guarded(self.0);
        Next {
            layers: &self.0.user,
            tail: &tail,
        }
        .run(cx)
        .await
    }
}

impl Stage for Guarded<'_> {
    fn run<'a>(&'a self, cx: &'a mut DeliveryCx) -> impl Future<Output = Outcome> + Send + 'a {
        self.0.guard.around(cx, &self.0.endpoint)
    }
}

impl Tail for Guarded<'_> {
    fn call<'b>(&'b self, cx: &'b mut DeliveryCx) -> BoxFuture<'b, Outcome> {
        Box::pin(self.run(cx))
    }
}

impl Stage for Endpoint {
    fn run<'a>(&'a self, cx: &'a mut DeliveryCx) -> impl Future<Output = Outcome> + Send + 'a {
        self.call(cx)
    }
}

/// What every subscription's pipeline of a bus shares.
pub(crate) struct PipelineParts {
    pub(crate) inbox: Arc<dyn InboxStore>,
    pub(crate) publisher: Publisher,
    pub(crate) clock: Arc<dyn Clock>,
    /// User layers, placed between the retry layer and the handler guard.
    pub(crate) extra: Vec<Arc<dyn Layer>>,
    pub(crate) extensions: Arc<crate::Extensions>,
    pub(crate) metrics: Arc<crate::observability::Metrics>,
    pub(crate) max_payload: usize,
}

impl Pipeline {
    /// Assembles the standard pipeline for `subscription`.
    pub(crate) fn for_subscription(
        subscription: &Subscription,
        pattern: crate::pattern::Pattern,
        shared: &PipelineParts,
    ) -> Self {
        let PipelineParts {
            inbox,
            publisher,
            clock,
            extra,
            extensions,
            metrics,
            max_payload,
        } = shared;
        let (inbox, publisher, clock, extensions, metrics) = (
            inbox.clone(),
            publisher.clone(),
            clock.clone(),
            extensions.clone(),
            metrics.clone(),
        );
        let options = &subscription.options;
        let park = options.park_keys.then(|| {
            ParkKeyLayer::new(clock.clone())
                .with_metrics(metrics.clone())
                .durable(crate::dead_letter::DeadLetters::new(
                    publisher.backend().clone(),
                ))
        });
        Pipeline {
            dead_letter: DeadLetterLayer::new(publisher.backend().clone(), options.retry.terminal)
                .with_topics(publisher.dead_letter_topics().clone())
                .with_clock(clock.clone())
                .with_metrics(metrics.clone()),
            decode: DecodeLayer::new(pattern, clock.clone())
                .filtering(subscription.filter.clone())
                .accepting(subscription.payload_types())
                .with_max_payload(*max_payload),
            park,
            inbox: InboxLayer::new(inbox),
            retry: RetryLayer::new(options.retry.clone(), clock.clone())
                .with_metrics(metrics.clone()),
            user: extra.clone(),
            guard: GuardLayer::new(options.timeout, clock.clone())
                .with_metrics(metrics)
                .with_system(publisher.backend().name()),
            endpoint: Endpoint {
                handler: subscription.handler.clone(),
                newer_versions: options.newer_versions,
                publisher,
                extensions,
                clock,
                lend_envelope: !extra.iter().any(|layer| layer.reads_handled_envelope()),
            },
        }
    }

    /// The inbox lookup of `message` in `group` asked now, for a delivery held and not started
    /// ([`InboxLayer::prefetch`]); `None` when the inbox does not [record
    /// remotely](InboxStore::records_remotely) or cannot ask ahead.
    pub(crate) fn prefetch(&self, group: &str, message: &Message) -> Option<Prefetched> {
        self.inbox.prefetch(group, message)
    }

    /// Whether the inbox can be asked ahead ([`Pipeline::prefetch`]) at all.
    pub(crate) fn prefetches(&self) -> bool {
        self.inbox.prefetches()
    }

    /// Runs a delivery through every stage.
    pub(crate) async fn run(&self, cx: &mut DeliveryCx) -> Outcome {
        self.dead_letter.around(cx, &AfterDeadLetter(self)).await
    }
}
