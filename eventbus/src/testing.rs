//! Testing handlers without a broker: an in-memory bus on a virtual clock, with deterministic
//! fault injection.
//!
//! ```
//! use eventbus::testing::TestHarness;
//! use eventbus::{event, Envelope, HandlerError, HandlerResult, Subscription};
//!
//! #[event(name = "order.created", version = 1)]
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: u32 }
//!
//! async fn always_fails(_: Envelope<OrderCreated>) -> HandlerResult {
//!     Err(HandlerError::transient("warehouse unavailable"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventbus::Error> {
//! let schedule = [60, 300, 1800].map(std::time::Duration::from_secs);
//! let harness = TestHarness::start(move |bus| {
//!     bus.subscribe(
//!         Subscription::new("order.*", always_fails)
//!             .retries(3)
//!             .backoff(eventbus::Backoff::schedule(schedule)),
//!     )
//! })
//! .await?;
//! harness.publish(OrderCreated { order_id: 7 }).await?;
//! harness.settle().await?; // 36 virtual minutes, a few real milliseconds
//! let dead = harness.dead_letters("order.created").await?;
//! assert_eq!(dead.len(), 1);
//! assert_eq!(dead[0].failure.attempts, 4);
//! assert!(harness.clock().elapsed() >= std::time::Duration::from_secs(36 * 60));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::FutureExt;
use uuid::Uuid;

use crate::backend::memory::{Faults, MemoryBackend};
use crate::bus::{Bus, BusBuilder};
use crate::clock::Clock;
use crate::context::Context;
use crate::dead_letter::DeadLetter;
use crate::envelope::{Envelope, RawEnvelope};
use crate::error::Error;
use crate::event::Event;
use crate::inbox::MemoryInbox;
use crate::pipeline::{DeliveryCx, Layer, Next, Outcome};
use crate::runtime::{default_runtime, Runtime};

/// A clock that only moves when told to. Sleeps complete when the clock is advanced past
/// their deadline.
pub struct VirtualClock {
    start: DateTime<Utc>,
    state: Mutex<VirtualState>,
}

#[derive(Default)]
struct VirtualState {
    elapsed: Duration,
    next_id: u64,
    sleepers: BTreeMap<(Duration, u64), oneshot::Sender<()>>,
}

impl VirtualClock {
    /// A clock starting at the current wall-clock time.
    pub fn new() -> Self {
        VirtualClock {
            start: Utc::now(),
            state: Mutex::new(VirtualState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VirtualState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual time elapsed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed
    }

    /// Number of sleeps waiting for the clock.
    pub fn sleepers(&self) -> usize {
        let mut state = self.lock();
        state.sleepers.retain(|_, tx| !tx.is_canceled());
        state.sleepers.len()
    }

    /// Moves the clock forward by `by`, waking every sleep that is due.
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.elapsed += by;
        Self::wake_due(&mut state);
    }

    /// Jumps to the earliest pending deadline and wakes what is due; false if nothing sleeps.
    pub fn advance_to_next(&self) -> bool {
        let mut state = self.lock();
        state.sleepers.retain(|_, tx| !tx.is_canceled());
        let Some(&(deadline, _)) = state.sleepers.keys().next() else {
            return false;
        };
        state.elapsed = state.elapsed.max(deadline);
        Self::wake_due(&mut state);
        true
    }

    fn wake_due(state: &mut VirtualState) {
        let now = state.elapsed;
        let later = state.sleepers.split_off(&(now, u64::MAX));
        for (_, tx) in std::mem::replace(&mut state.sleepers, later) {
            let _ = tx.send(());
        }
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.elapsed();
        self.start + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration.is_zero() {
            return Box::pin(futures::future::ready(()));
        }
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let deadline = state.elapsed + duration;
        state.sleepers.insert((deadline, id), tx);
        Box::pin(rx.map(drop))
    }
}

type Configure = Arc<dyn Fn(BusBuilder) -> BusBuilder + Send + Sync>;

/// One delivery a handler handled successfully, as the harness saw it.
#[derive(Clone)]
struct HandledEvent {
    event_type: String,
    group: String,
    payload: Arc<[u8]>,
}

/// Records the deliveries whose handler succeeded; the harness puts it before each handler.
#[derive(Clone, Default)]
struct Recorder {
    handled: Arc<Mutex<Vec<HandledEvent>>>,
}

impl Layer for Recorder {
    fn handle<'a>(&'a self, cx: &'a mut DeliveryCx, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let outcome = next.run(cx).await;
            if let Outcome::Handled = outcome {
                self.handled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(HandledEvent {
                        event_type: cx.message.event_type.to_string(),
                        group: cx.group.to_string(),
                        payload: cx.message.payload.clone(),
                    });
            }
            outcome
        })
    }

    /// Reads the message, not the envelope.
    fn reads_handled_envelope(&self) -> bool {
        false
    }
}

/// Decodes the payloads of `E` among `messages`; a payload that does not decode is skipped.
fn typed<'a, E: Event + serde::de::DeserializeOwned>(
    payloads: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Vec<Envelope<E>> {
    payloads
        .filter(|(event_type, _)| *event_type == E::NAME)
        .filter_map(|(_, payload)| serde_json::from_slice(payload).ok())
        .collect()
}

/// A bus on the in-memory backend with a virtual clock and an in-memory inbox, for tests.
///
/// The backend, inbox and clock outlive [`TestHarness::restart`], as a broker and a database
/// outlive a service's process.
pub struct TestHarness {
    backend: MemoryBackend,
    clock: Arc<VirtualClock>,
    inbox: Arc<MemoryInbox>,
    runtime: Arc<dyn Runtime>,
    configure: Configure,
    bus: Bus,
    settle_limit: Duration,
    recorder: Recorder,
}

impl TestHarness {
    /// Starts a bus configured by `configure` (subscriptions, catalog, layers) on the
    /// default runtime. `configure` runs again on every restart.
    pub async fn start(
        configure: impl Fn(BusBuilder) -> BusBuilder + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        Self::start_on(default_runtime()?, configure).await
    }

    /// Like [`TestHarness::start`] on an explicit runtime.
    pub async fn start_on(
        runtime: Arc<dyn Runtime>,
        configure: impl Fn(BusBuilder) -> BusBuilder + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        let backend = MemoryBackend::new();
        let clock = Arc::new(VirtualClock::new());
        let inbox = Arc::new(MemoryInbox::new());
        let configure: Configure = Arc::new(configure);
        let recorder = Recorder::default();
        let bus = Self::build(&backend, &clock, &inbox, &runtime, &configure, &recorder).await?;
        Ok(TestHarness {
            backend,
            clock,
            inbox,
            runtime,
            configure,
            bus,
            settle_limit: Self::DEFAULT_SETTLE_TIMEOUT,
            recorder,
        })
    }

    async fn build(
        backend: &MemoryBackend,
        clock: &Arc<VirtualClock>,
        inbox: &Arc<MemoryInbox>,
        runtime: &Arc<dyn Runtime>,
        configure: &Configure,
        recorder: &Recorder,
    ) -> Result<Bus, Error> {
        let builder = Bus::builder()
            .backend(backend.clone())
            .clock(clock.clone())
            .inbox(inbox.clone())
            .runtime(runtime.clone())
            .source("test-harness")
            .layer(recorder.clone());
        configure(builder).start().await
    }

    /// How long [`TestHarness::settle`] waits (real time) unless told otherwise.
    pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Sets how long [`TestHarness::settle`] may take in real time before it fails.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_limit = timeout;
        self
    }

    /// Every event of type `E` published through the backend so far (by the test, by
    /// handlers, by redrives), oldest first, decoded.
    pub fn published<E: Event + serde::de::DeserializeOwned>(&self) -> Vec<Envelope<E>> {
        let stored = self.backend.messages(E::TOPIC);
        typed(
            stored
                .iter()
                .map(|m| (&*m.message.event_type, &m.message.payload[..])),
        )
    }

    /// Every event of type `E` a handler handled successfully so far, in any group, in the
    /// order the handlers finished.
    pub fn handled<E: Event + serde::de::DeserializeOwned>(&self) -> Vec<Envelope<E>> {
        let handled = self.handled_events();
        typed(
            handled
                .iter()
                .map(|h| (h.event_type.as_str(), &h.payload[..])),
        )
    }

    /// Like [`TestHarness::handled`], in one consumer group only.
    pub fn handled_by<E: Event + serde::de::DeserializeOwned>(
        &self,
        group: &str,
    ) -> Vec<Envelope<E>> {
        let handled = self.handled_events();
        typed(
            handled
                .iter()
                .filter(|h| h.group == group)
                .map(|h| (h.event_type.as_str(), &h.payload[..])),
        )
    }

    fn handled_events(&self) -> Vec<HandledEvent> {
        self.recorder
            .handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A [`Context`] for calling a handler directly (`my_subscriber::handle(ctx, env)`), as
    /// if `envelope` were delivered to `group` for the first time: what it publishes goes
    /// through this harness's bus (see [`TestHarness::published`]).
    pub fn context<E: Event>(&self, envelope: &Envelope<E>, group: &str) -> Result<Context, Error> {
        let raw = RawEnvelope::decode(&envelope.encode()?)?;
        let parts = crate::context::ContextParts {
            topic: E::TOPIC,
            group,
            attempt: 1,
            replay: false,
            publisher: &self.bus.publisher(),
            extensions: &Arc::new(crate::Extensions::default()),
        };
        Ok(parts.build(&raw))
    }

    /// The running bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The in-memory backend.
    pub fn backend(&self) -> &MemoryBackend {
        &self.backend
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// The inbox.
    pub fn inbox(&self) -> &MemoryInbox {
        &self.inbox
    }

    /// Publishes an event.
    pub async fn publish<E: Event>(&self, event: E) -> Result<Uuid, Error> {
        self.bus.publish(event).await
    }

    /// Schedules faults in the backend (lost acks, duplicate deliveries, failed publishes).
    pub fn inject(&self, faults: Faults) {
        self.backend.inject(faults);
    }

    /// Waits until every published message is settled, advancing the virtual clock whenever
    /// the only thing left to do is wait for it. Fails after the
    /// [settle timeout](TestHarness::settle_timeout) (10 s of real time by default).
    pub async fn settle(&self) -> Result<(), Error> {
        let started = Instant::now();
        let mut quiet = 0;
        loop {
            if self.backend.outstanding() == 0 {
                return Ok(());
            }
            let before = self.backend.activity();
            self.runtime.sleep(Duration::from_millis(1)).await;
            if self.backend.activity() == before {
                quiet += 1;
            } else {
                quiet = 0;
            }
            if quiet >= 2 && self.clock.advance_to_next() {
                quiet = 0;
            }
            if started.elapsed() > self.settle_limit {
                return Err(Error::Timeout {
                    what: format!(
                        "{} outstanding deliveries to settle",
                        self.backend.outstanding()
                    ),
                    after: self.settle_limit,
                });
            }
        }
    }

    /// Simulates a crash and restart of the service: in-flight handlers are aborted without
    /// settling (so their deliveries are redelivered), then a fresh bus starts with the same
    /// configuration, backend, inbox and clock.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.bus.abort().await;
        self.bus = Self::build(
            &self.backend,
            &self.clock,
            &self.inbox,
            &self.runtime,
            &self.configure,
            &self.recorder,
        )
        .await?;
        Ok(())
    }

    /// Dead letters of `topic`.
    pub async fn dead_letters(&self, topic: &str) -> Result<Vec<DeadLetter>, Error> {
        self.bus.dead_letters().list(topic).await
    }

    /// Shuts the bus down gracefully.
    pub async fn shutdown(self) -> crate::ShutdownReport {
        self.bus.shutdown(Duration::from_secs(5)).await
    }
}
