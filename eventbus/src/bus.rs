//! The bus: assembles backend, inbox, clock, executor and subscriptions, runs the consumers,
//! and shuts them down gracefully.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{self, Either};
use uuid::Uuid;

use std::collections::HashMap;

use crate::backend::{Backend, SubscribeRequest};
use crate::circuit::{CircuitConfig, Circuits};
use crate::clock::{Clock, SystemClock};
use crate::consumer::{BusState, ConsumerLoop};
use crate::dead_letter::DeadLetters;
use crate::error::Error;
use crate::event::{CatalogEntry, Event};
use crate::inbox::{InboxStore, MemoryInbox};
use crate::observability::Metrics;
use crate::pattern::{validate_name, Pattern};
use crate::pipeline::{DecodeLayer, Layer, Pipeline};
use crate::publisher::Publisher;
use crate::replay::{replay, ReplayProgress, ReplayRequest};
use crate::runtime::{default_runtime, Runtime};
use crate::subscription::{registered, IntoSubscription, Subscription};

/// Configures and starts a [`Bus`].
#[must_use]
#[derive(Default)]
pub struct BusBuilder {
    backend: Option<Arc<dyn Backend>>,
    runtime: Option<Arc<dyn Runtime>>,
    clock: Option<Arc<dyn Clock>>,
    inbox: Option<Arc<dyn InboxStore>>,
    source: Option<String>,
    catalog: Vec<CatalogEntry>,
    subscriptions: Vec<Subscription>,
    discover: bool,
    layers: Vec<Arc<dyn Layer>>,
    extensions: crate::Extensions,
    metrics: Option<Arc<Metrics>>,
    circuit_default: Option<CircuitConfig>,
    circuit_channels: HashMap<String, CircuitConfig>,
    max_payload: Option<usize>,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    outboxes: Vec<Arc<dyn crate::outbox::BusOutbox>>,
    lag_interval: Option<Duration>,
    dead_letter_topic: Option<String>,
    topic_prefix: Option<String>,
}

impl BusBuilder {
    /// Puts every topic and consumer group of this bus under `prefix` in the backend
    /// (`staging.`: topic `staging.order.created`, group `staging.billing`, dead letters in
    /// `staging.order.created.dlq`), so several environments share one Kafka cluster (or
    /// Redis server) without seeing each other's events. Handlers, metrics, the dead-letter
    /// tools, replay and the admin API keep using the names without the prefix. Letters,
    /// digits, `.`, `_` and `-` only; anything else fails [`start`](Self::start) naming
    /// `topic_prefix`. See [`PrefixedBackend`](crate::backend::PrefixedBackend).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = Some(prefix.into());
        self
    }

    /// Sends every dead letter of this bus (its consumers' and its outbox's) to the one topic
    /// `name` (such as `orion.dlq`) instead of `{topic}.dlq`, the original topic in the
    /// `dlq-original-topic` header; [`Bus::dead_letters`] lists, counts, redrives and purges a
    /// topic's letters from it. `name` must end with `.dlq`; anything else fails
    /// [`start`](Self::start) naming `dead_letter_topic`.
    pub fn dead_letter_topic(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(name.into());
        self
    }

    /// Runs `outbox`'s dispatcher with the bus: started after the consumers, publishing
    /// through the bus's publisher (circuit breakers, metrics), keeping `event_outbox_backlog`
    /// and `event_publish_lag_seconds` current, and stopped by [`Bus::shutdown`] after the
    /// consumers drained. Handlers reach it through
    /// [`ContextExt::enqueue`](crate::outbox::ContextExt::enqueue) (follow-on events in the
    /// handler's transaction): the outbox and its pool become extensions of the bus.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn outbox<DB: crate::outbox::SqlDatabase>(mut self, outbox: crate::Outbox<DB>) -> Self {
        if self.extensions.get::<sqlx::Pool<DB>>().is_none() {
            self.extensions.insert(outbox.pool().clone());
        }
        self.outboxes.push(Arc::new(outbox.clone()));
        self.extensions.insert(outbox);
        self
    }

    /// How often the consumers' lag (`event_consumer_lag_messages`) is read from the backend
    /// into the metrics, besides every `/metrics` scrape. Default 15 s.
    pub fn lag_interval(mut self, every: Duration) -> Self {
        self.lag_interval = Some(every);
        self
    }

    /// Uses `metrics` (to share one registry between buses); by default each bus has its own,
    /// labelled with its `source`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The largest envelope accepted, in bytes (default 1 MiB); larger deliveries are
    /// dead-lettered with the reason.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Guards publishing with a circuit breaker per channel (topic) with these settings.
    pub fn circuit_breaker(mut self, config: CircuitConfig) -> Self {
        self.circuit_default = Some(config);
        self
    }

    /// Overrides the circuit breaker settings of one channel (e.g. [`CircuitConfig::critical`]).
    pub fn channel_circuit(mut self, channel: impl Into<String>, config: CircuitConfig) -> Self {
        self.circuit_default
            .get_or_insert_with(CircuitConfig::default);
        self.circuit_channels.insert(channel.into(), config);
        self
    }

    /// Shares `value` with every handler, readable with
    /// [`Context::extension`](crate::Context::extension).
    pub fn extension<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The transport (required).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// The transport, already shared.
    pub fn backend_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The executor; defaults to the current tokio runtime, else smol (by features).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The clock; defaults to real time on the runtime's timers.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The inbox store; defaults to an in-process [`MemoryInbox`].
    pub fn inbox(mut self, inbox: Arc<dyn InboxStore>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// The `source` stamped on published envelopes; defaults to `eventbus`.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Events this service knows (a `#[catalog]` module's `CATALOG`): their names are checked
    /// and subscriptions learn the topics their pattern covers.
    pub fn catalog(mut self, entries: &[CatalogEntry]) -> Self {
        self.catalog.extend_from_slice(entries);
        self
    }

    /// Adds a subscription: a `#[subscriber]` function or a [`Subscription`]. A later
    /// subscription with the same name replaces an earlier one.
    pub fn subscribe(mut self, subscription: impl IntoSubscription) -> Self {
        self.subscriptions.push(subscription.into_subscription());
        self
    }

    /// Adds several subscriptions, such as a saga's steps
    /// (`eventbus::saga::subscriptions::<S, DB>()`).
    pub fn subscribe_all(mut self, subscriptions: impl IntoIterator<Item = Subscription>) -> Self {
        self.subscriptions.extend(subscriptions);
        self
    }

    /// Also runs every `#[subscriber]` function linked into the program (feature `inventory`).
    pub fn discover(mut self) -> Self {
        self.discover = true;
        self
    }

    /// Adds a pipeline layer, run inside the retry loop just before the handler.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    fn validate(subscription: &Subscription) -> Result<Pattern, Error> {
        let name = subscription.name();
        let pattern = Pattern::parse(subscription.pattern()).map_err(|source| Error::Pattern {
            pattern: subscription.pattern().to_owned(),
            subscriber: name.to_owned(),
            source,
        })?;
        let options = subscription.options();
        if options.concurrency == 0 {
            return Err(Error::config(
                format!("{name}.concurrency"),
                "must be at least 1",
            ));
        }
        if options.retry.max_attempts == 0 {
            return Err(Error::config(
                format!("{name}.retries"),
                "max attempts must be at least 1",
            ));
        }
        if subscription.group_name().trim().is_empty() {
            return Err(Error::config(format!("{name}.group"), "is empty"));
        }
        if options.park_keys && options.retry.terminal == crate::retry::Terminal::Discard {
            return Err(Error::config(
                format!("{name}.park_keys"),
                "needs dead letters: a parked key waits beside its dead letter, and `dlq(false)` \
                 discards failed events",
            ));
        }
        if options.timeout == Some(Duration::ZERO) {
            return Err(Error::config(format!("{name}.timeout"), "must be positive"));
        }
        options.retry.backoff.validate(name)?;
        if let Some(uncovered) = subscription
            .payload_types()
            .iter()
            .find(|t| !pattern.matches(t))
        {
            return Err(Error::config(
                format!("{name}.pattern"),
                format!("`{pattern}` does not match the handler's event type `{uncovered}`"),
            ));
        }
        Ok(pattern)
    }

    /// Validates the configuration (failing with the name of the bad setting), joins the
    /// consumer groups and starts consuming.
    pub async fn start(self) -> Result<Bus, Error> {
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => default_runtime()?,
        };
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(SystemClock::new(runtime.clone())));
        let backend = self.backend.ok_or_else(|| {
            Error::config(
                "backend",
                "no backend configured; call `BusBuilder::backend`",
            )
        })?;
        let backend: Arc<dyn Backend> = match &self.topic_prefix {
            Some(prefix) => Arc::new(crate::backend::PrefixedBackend::new(
                backend,
                prefix.clone(),
            )?),
            None => backend,
        };
        let inbox = self.inbox.unwrap_or_else(|| Arc::new(MemoryInbox::new()));
        let source = self.source.unwrap_or_else(|| "eventbus".to_owned());
        if source.trim().is_empty() {
            return Err(Error::config("source", "is empty"));
        }
        for entry in &self.catalog {
            validate_name(entry.name).map_err(|e| {
                Error::config("catalog", format!("event name `{}`: {e}", entry.name))
            })?;
        }
        let metrics = self
            .metrics
            .unwrap_or_else(|| Arc::new(Metrics::new(source.clone())));
        metrics.export_backend(backend.clone());
        let mut publisher = Publisher::new(backend.clone(), clock.clone(), source)
            .with_metrics(metrics.clone())
            .with_dead_letter_topics(match self.dead_letter_topic {
                Some(name) => crate::dead_letter::DeadLetterTopics::single(name)?,
                None => crate::dead_letter::DeadLetterTopics::PerTopic,
            });
        if let Some(default) = self.circuit_default {
            publisher = publisher.with_circuits(Arc::new(Circuits::new(
                default,
                self.circuit_channels,
                clock.clone(),
                Some(metrics.clone()),
            )?));
        }

        // Explicit subscriptions replace discovered ones of the same name; two explicit ones
        // may share a name only in different groups.
        let mut subscriptions: Vec<Subscription> = if self.discover {
            registered()
                .into_iter()
                .filter(|d| self.subscriptions.iter().all(|s| s.name() != d.name()))
                .collect()
        } else {
            Vec::new()
        };
        for subscription in self.subscriptions {
            if subscriptions.iter().any(|s| {
                s.name() == subscription.name() && s.group_name() == subscription.group_name()
            }) {
                return Err(Error::config(
                    "subscriptions",
                    format!(
                        "`{}` is subscribed twice in group `{}`; give one a different \
                         `with_name` or `group`",
                        subscription.name(),
                        subscription.group_name()
                    ),
                ));
            }
            subscriptions.push(subscription);
        }
        let mut planned = Vec::new();
        for subscription in subscriptions {
            let pattern = Self::validate(&subscription)?;
            planned.push((subscription, pattern));
        }

        let shared = Arc::new(BusState::default());
        let pipeline_shared = crate::pipeline::PipelineParts {
            inbox,
            publisher: publisher.clone(),
            clock: clock.clone(),
            extra: self.layers,
            extensions: Arc::new({
                // Handlers and sagas reach the bus's metrics as an extension.
                let mut extensions = self.extensions;
                extensions.insert(metrics.clone());
                extensions
            }),
            metrics: metrics.clone(),
            max_payload: self.max_payload.unwrap_or(DecodeLayer::DEFAULT_MAX_PAYLOAD),
        };
        if pipeline_shared.max_payload == 0 {
            return Err(Error::config("max_payload", "must be at least 1 byte"));
        }
        let lag_interval = self.lag_interval.unwrap_or(Bus::DEFAULT_LAG_INTERVAL);
        if lag_interval.is_zero() {
            return Err(Error::config("lag_interval", "must be positive"));
        }
        let mut names = Vec::new();
        let mut subscribed_topics = BTreeSet::new();
        for (subscription, pattern) in planned {
            // The catalog's topics of matching events, and the topics of the handler's own
            // event types, so that a typed handler reads its topic without a catalog.
            let accepted = subscription.payload_types();
            let topics: BTreeSet<String> = self
                .catalog
                .iter()
                .filter(|e| {
                    pattern.matches(e.name) && (accepted.is_empty() || accepted.contains(&e.name))
                })
                .map(|e| e.topic.to_owned())
                .chain(
                    subscription
                        .payload_topics()
                        .iter()
                        .map(|t| (*t).to_owned()),
                )
                .collect();
            if topics.is_empty() {
                tracing::warn!(
                    subscription = subscription.name(),
                    pattern = %pattern,
                    "no known topic for this subscription (no catalog entry matches and its payload \
                     accepts any type): it reads only the topics the backend discovers by pattern"
                );
            }
            let options = subscription.options().clone();
            subscribed_topics.extend(topics.iter().cloned());
            let request = SubscribeRequest {
                group: subscription.group_name().to_owned(),
                pattern: pattern.clone(),
                topics: topics.into_iter().collect(),
                prefetch: (options.concurrency * 4).max(16),
                topic_prefix: String::new(),
            };
            let pipeline = Arc::new(Pipeline::for_subscription(
                &subscription,
                pattern,
                &pipeline_shared,
            ));
            let stream = backend.subscribe(request).await?;
            let control = Arc::new(crate::consumer_control::ConsumerControl::default());
            let consumer = ConsumerLoop {
                group: subscription.group_name().into(),
                concurrency: options.concurrency,
                pipeline,
                shared: shared.clone(),
                runtime: runtime.clone(),
                clock: clock.clone(),
                retry_backoff: options.retry.backoff.clone(),
                metrics: metrics.clone(),
                control: control.clone(),
            };
            shared.tasks.spawn(&runtime, consumer.run(stream));
            names.push((subscription.name().to_owned(), control));
        }
        if !names.is_empty() && backend.admin().is_some() {
            // Real time even under a virtual clock: reading the lag is operations, not part of
            // the timeline a test drives.
            let wall: Arc<dyn Clock> = Arc::new(SystemClock::new(runtime.clone()));
            let task = crate::observability::lag::refresh_every(
                backend.clone(),
                metrics.clone(),
                wall,
                shared.tasks.clone(),
                lag_interval,
            );
            shared.tasks.spawn(&runtime, task);
        }
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        let mut dispatchers = Vec::new();
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        for outbox in &self.outboxes {
            match outbox.start(
                publisher.clone(),
                metrics.clone(),
                runtime.clone(),
                clock.clone(),
            ) {
                Ok(handle) => dispatchers.push(handle),
                Err(error) => {
                    shared.tasks.stop();
                    return Err(error);
                }
            }
        }
        tracing::info!(backend = backend.name(), subscriptions = ?names.iter().map(|(n, _)| n).collect::<Vec<_>>(), "event bus started");
        Ok(Bus {
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            dispatchers,
            publisher,
            backend,
            clock,
            shared,
            subscriptions: Mutex::new(names),
            subscribed_topics: subscribed_topics.into_iter().collect(),
            topic_prefix: self.topic_prefix,
            #[cfg(feature = "admin")]
            series: std::sync::OnceLock::new(),
            metrics,
            catalog: self.catalog,
            runtime,
        })
    }
}

/// A running event bus. Publish through it (or a [`Publisher`] clone), and call
/// [`Bus::shutdown`] before exiting.
pub struct Bus {
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    dispatchers: Vec<crate::outbox::DispatcherHandle>,
    publisher: Publisher,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    shared: Arc<BusState>,
    /// Running subscriptions by name, with their stop controls.
    subscriptions: Mutex<Vec<(String, Arc<crate::consumer_control::ConsumerControl>)>>,
    subscribed_topics: Vec<String>,
    topic_prefix: Option<String>,
    /// The dashboard's time series, sampled once an admin router exists.
    #[cfg(feature = "admin")]
    series: std::sync::OnceLock<Arc<crate::observability::series::SeriesRecorder>>,
    metrics: Arc<Metrics>,
    catalog: Vec<CatalogEntry>,
    runtime: Arc<dyn Runtime>,
}

/// What [`Bus::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every in-flight handler finished within the timeout.
    pub drained: bool,
    /// Handlers aborted at the timeout; their deliveries stay unacknowledged and are
    /// redelivered.
    pub aborted: usize,
}

/// Counts of what the bus's consumers did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Handled successfully.
    pub handled: u64,
    /// Dropped by the inbox as already handled.
    pub duplicates: u64,
    /// Not matching the subscription (shared topics).
    pub skipped: u64,
    /// Rejected by a subscription's [filter](crate::Subscription::filter).
    pub filtered: u64,
    /// Sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// Dropped by a `dlq = false` policy.
    pub discarded: u64,
    /// Left for redelivery after an infrastructure failure.
    pub unsettled: u64,
    /// Handed back for a delayed retry round.
    pub deferred: u64,
}

impl Bus {
    /// How often consumer lag is read into the metrics unless
    /// [`BusBuilder::lag_interval`] says otherwise.
    pub const DEFAULT_LAG_INTERVAL: Duration = Duration::from_secs(15);

    /// The dispatchers of the outboxes the bus runs ([`BusBuilder::outbox`]), in the order
    /// they were added.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn dispatchers(&self) -> &[crate::outbox::DispatcherHandle] {
        &self.dispatchers
    }

    /// Starts configuring a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// Whether [`Bus::shutdown`] (or [`Bus::abort`]) has begun: the consumers take no new
    /// deliveries and `/ready` answers 503.
    pub fn is_stopping(&self) -> bool {
        self.shared.is_stopping()
    }

    /// Runs until `stop` completes, then shuts down with [`Bus::shutdown`] within `drain`.
    /// With the admin server, [`run_until_signal`](crate::admin::run_until_signal) does this on
    /// SIGTERM/SIGINT and closes the server last.
    pub async fn run_until(
        &self,
        stop: impl std::future::Future<Output = ()>,
        drain: Duration,
    ) -> ShutdownReport {
        stop.await;
        self.shutdown(drain).await
    }

    /// A publisher for this bus.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Publishes one event.
    pub async fn publish<E: Event>(&self, event: E) -> Result<Uuid, Error> {
        if self.shared.is_stopping() {
            return Err(Error::Closed);
        }
        self.publisher.publish(event).await
    }

    /// Dead-letter tools over this bus's backend.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.backend.clone()).routed(self.publisher.dead_letter_topics().clone())
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Starts replaying `request` in the background; the returned progress is live.
    pub fn replay(&self, request: ReplayRequest) -> Result<Arc<ReplayProgress>, Error> {
        request.validate()?;
        let progress = Arc::new(ReplayProgress::default());
        let backend = self.backend.clone();
        let watch = progress.clone();
        self.runtime.spawn(Box::pin(async move {
            let _ = replay(&backend, &request, watch).await;
        }));
        Ok(progress)
    }

    /// The bus's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The events this service declared with [`BusBuilder::catalog`].
    pub fn catalog(&self) -> &[CatalogEntry] {
        &self.catalog
    }

    /// The clock the bus runs on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Names of the running subscriptions.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Removes the subscription `name` from the running bus: it takes no new deliveries (those
    /// it buffered go back to the backend, which hands them to the group's other members, or
    /// to the group again when something subscribes to it later), lets the ones in flight
    /// finish and settle, then closes its consumer (a Kafka member leaves its group). Returns
    /// whether everything in flight finished within `timeout`; what did not goes on in the
    /// background and settles when done. An unknown name fails naming `subscription`.
    pub async fn unsubscribe(&self, name: &str, timeout: Duration) -> Result<bool, Error> {
        let control = {
            let mut subscriptions = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
            let Some(index) = subscriptions.iter().position(|(n, _)| n == name) else {
                return Err(Error::config(
                    "subscription",
                    format!("no running subscription named `{name}`"),
                ));
            };
            subscriptions.remove(index).1
        };
        control.stop();
        let drained = matches!(
            future::select(Box::pin(control.finished()), self.clock.sleep(timeout)).await,
            Either::Left(_)
        );
        tracing::info!(subscription = name, drained, "unsubscribed");
        Ok(drained)
    }

    /// The topics the subscriptions read by name, sorted: those of the catalog entries their
    /// patterns match and those of their handlers' own event types. Topics a wildcard pattern
    /// finds in the backend later are not listed.
    pub fn subscribed_topics(&self) -> &[String] {
        &self.subscribed_topics
    }

    /// The dashboard's time series: started on first call (every `interval`, keeping
    /// `window`), on the bus's executor and stopped with it; later calls get the same series
    /// whatever they ask.
    #[cfg(feature = "admin")]
    pub(crate) fn series(
        &self,
        interval: Duration,
        window: Duration,
    ) -> Arc<crate::observability::series::SeriesRecorder> {
        self.series
            .get_or_init(|| {
                let recorder = Arc::new(crate::observability::series::SeriesRecorder::new(
                    interval, window,
                ));
                // Real time even under a virtual clock, as for the lag: operations, not the
                // timeline a test drives.
                let wall: Arc<dyn Clock> = Arc::new(SystemClock::new(self.runtime.clone()));
                let task = crate::observability::series::sample_every(
                    recorder.clone(),
                    self.backend.clone(),
                    self.metrics.clone(),
                    wall,
                    self.shared.tasks.clone(),
                );
                self.shared.tasks.spawn(&self.runtime, task);
                recorder
            })
            .clone()
    }

    /// The prefix of every topic and group in the backend
    /// ([`BusBuilder::topic_prefix`]), if any.
    pub fn topic_prefix(&self) -> Option<&str> {
        self.topic_prefix.as_deref()
    }

    /// What the consumers did so far.
    pub fn stats(&self) -> BusStats {
        let c = &self.shared.counters;
        BusStats {
            handled: c.handled.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            unsettled: c.unsettled.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
        }
    }

    /// Stops taking new deliveries, waits for in-flight handlers to finish and settle, then
    /// aborts the rest (left unacknowledged, so they are redelivered) and flushes the backend's
    /// batched acknowledgements.
    ///
    /// Always returns within `timeout`: draining gets all of it but a reserve (a tenth, at
    /// most 2 s) kept for aborting and flushing; a consumer or flush that does not finish in
    /// the reserve is left behind with a warning, its deliveries unacknowledged.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let stopped = self.shared.tasks.shutdown(&*self.clock, timeout).await;
        let reserve = crate::runtime::task_group::TaskGroup::reserve(timeout);
        let flush_budget = if stopped.drained {
            reserve
        } else {
            reserve / 2
        };
        // The outbox after the consumers (their handlers may still enqueue follow-ons), before
        // the flush (its last publishes are flushed too).
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        let flush_budget = self.stop_dispatchers(flush_budget).await;
        let flush = self.backend.flush();
        match future::select(flush, self.clock.sleep(flush_budget)).await {
            Either::Left((Ok(()), _)) => {}
            Either::Left((Err(error), _)) => tracing::warn!(
                %error,
                "flushing acknowledgements at shutdown failed; those deliveries will be redelivered"
            ),
            Either::Right(_) => tracing::warn!(
                ?flush_budget,
                "flushing acknowledgements did not finish in time; those deliveries will be redelivered"
            ),
        }
        tracing::info!(
            drained = stopped.drained,
            aborted = stopped.aborted,
            left_behind = stopped.left_behind,
            "event bus stopped"
        );
        ShutdownReport {
            drained: stopped.drained,
            aborted: stopped.aborted,
        }
    }

    /// Stops the outboxes' dispatchers with half of `budget`; returns the other half (all of
    /// it when the bus runs no outbox).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    async fn stop_dispatchers(&self, budget: Duration) -> Duration {
        if self.dispatchers.is_empty() {
            return budget;
        }
        for dispatcher in &self.dispatchers {
            dispatcher.shutdown(budget / 2).await;
        }
        budget / 2
    }

    /// Stops at once, as a crash would: in-flight handlers are aborted and their deliveries
    /// stay unacknowledged.
    pub async fn abort(&self) {
        self.shared.tasks.stop();
        self.shared.tasks.abort_all();
        self.shared.tasks.finished().await;
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        for dispatcher in &self.dispatchers {
            dispatcher.abort().await;
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shared.tasks.stop();
    }
}
