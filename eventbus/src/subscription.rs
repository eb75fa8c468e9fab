//! Subscriptions: a pattern, a handler and the options that drive the pipeline for it, plus
//! the link-time registry `#[subscriber]` fills.

use std::sync::Arc;
use std::time::Duration;

use crate::handler::{erase, ErasedHandler, Handler};
use crate::retry::{Backoff, RetryPolicy, Terminal};

/// A handler bound to a pattern, with its options.
///
/// ```
/// use eventbus::{Envelope, HandlerResult, Subscription};
///
/// async fn audit(env: Envelope<serde_json::Value>) -> HandlerResult {
///     println!("{} {}", env.event_type, env.data);
///     Ok(())
/// }
///
/// let sub = Subscription::new("approval.*", audit).group("audit").retries(5).concurrency(4);
/// assert_eq!(sub.pattern(), "approval.*");
/// assert_eq!(sub.options().retry.max_attempts, 6);
/// ```
#[derive(Clone)]
pub struct Subscription {
    pub(crate) name: String,
    pub(crate) pattern: String,
    pub(crate) options: SubscriberOptions,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) filter: Option<EnvelopeFilter>,
}

/// A predicate over the envelope: [`Subscription::filter`].
pub type EnvelopeFilter = Arc<dyn Fn(&crate::RawEnvelope) -> bool + Send + Sync>;

/// Per-subscription settings. Defaults: group = the subscription's name, 3 retries with
/// exponential backoff (100 ms doubling to 10 s, jittered), dead-letter queue on, concurrency 1,
/// no handler timeout, key parking off.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberOptions {
    /// Consumer group; `None` uses the subscription's name.
    pub group: Option<String>,
    /// Attempts, waits and terminal state.
    pub retry: RetryPolicy,
    /// Handlers running at once for this subscription, across partition keys; events with the
    /// same key are always handled one at a time, in order.
    pub concurrency: usize,
    /// Upper bound of one handler call; a timeout counts as a transient failure.
    pub timeout: Option<Duration>,
    /// When an event with key K is dead-lettered, park later events with key K beside it
    /// instead of handling them out of order.
    pub park_keys: bool,
    /// What to do with an envelope whose `version` is newer than the handler's type.
    pub newer_versions: NewerVersions,
}

/// What a subscriber does with an event whose schema `version` is newer than the one its
/// build knows, as happens during a rolling deploy when producers are upgraded first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewerVersions {
    /// Decode it as the known version (the default): an additive change decodes, unknown
    /// fields ignored; data that does not fit is dead-lettered with both versions named.
    #[default]
    Decode,
    /// Dead-letter every newer version unread (`unsupported version N`), for consumers whose
    /// correctness depends on seeing every field.
    DeadLetter,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            group: None,
            retry: RetryPolicy::default(),
            concurrency: 1,
            timeout: None,
            park_keys: false,
            newer_versions: NewerVersions::Decode,
        }
    }
}

impl Subscription {
    /// Subscribes `handler` to events whose type matches `pattern`. The pattern is checked when
    /// the bus starts.
    pub fn new<H, Args>(pattern: &str, handler: H) -> Self
    where
        H: Handler<Args>,
        Args: 'static,
    {
        Subscription {
            name: std::any::type_name::<H>().to_owned(),
            pattern: pattern.to_owned(),
            options: SubscriberOptions::default(),
            handler: erase(handler),
            filter: None,
        }
    }

    /// The subscription's name (the handler's path by default), used in logs and as default
    /// group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The options.
    pub fn options(&self) -> &SubscriberOptions {
        &self.options
    }

    /// The consumer group in effect.
    pub fn group_name(&self) -> &str {
        self.options.group.as_deref().unwrap_or(&self.name)
    }

    /// The event types the handler's payload accepts (empty = any).
    pub fn payload_types(&self) -> &'static [&'static str] {
        self.handler.types()
    }

    /// The topics of the handler's payload types (empty = any): read even without a catalog.
    pub fn payload_topics(&self) -> &'static [&'static str] {
        self.handler.topics()
    }

    /// Renames the subscription.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Handles only the events `predicate` keeps: the others are acknowledged without a
    /// handler call, counted as `filtered` ([`BusStats::filtered`](crate::bus::BusStats::filtered),
    /// outcome `filtered` in `event_handled_total`). The predicate sees the envelope before its
    /// data is decoded to the handler's type (`envelope.data` is the raw JSON):
    ///
    /// ```
    /// # use eventbus::{Envelope, Subscription};
    /// let aapl = Subscription::new("price.updated", |_: Envelope<serde_json::Value>| async { Ok(()) })
    ///     .filter(|envelope| envelope.data.get().contains(r#""symbol":"AAPL""#));
    /// ```
    pub fn filter(
        mut self,
        predicate: impl Fn(&crate::RawEnvelope) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(predicate));
        self
    }

    /// Sets the consumer group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.options.group = Some(group.into());
        self
    }

    /// Sets the number of retries after the first attempt.
    pub fn retries(mut self, retries: u32) -> Self {
        self.options.retry.max_attempts = retries.saturating_add(1);
        self
    }

    /// Sets the backoff between retries.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.options.retry.backoff = backoff;
        self
    }

    /// Sets delayed retry rounds: after the in-process attempts fail, the delivery comes back
    /// after each of these delays for another round, without blocking other messages.
    pub fn delayed_retries(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.options.retry.delayed = delays.into_iter().collect();
        self
    }

    /// Sets how many handlers run at once (across keys). They share the subscription's
    /// consumer task, so they overlap their waits, not their CPU work.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.options.concurrency = concurrency;
        self
    }

    /// Turns the dead-letter queue on (default) or off (exhausted deliveries are discarded).
    pub fn dlq(mut self, on: bool) -> Self {
        self.options.retry.terminal = if on {
            Terminal::DeadLetter
        } else {
            Terminal::Discard
        };
        self
    }

    /// Bounds each handler call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Parks later events of a dead-lettered key beside it.
    pub fn park_keys(mut self, on: bool) -> Self {
        self.options.park_keys = on;
        self
    }

    /// What to do with events of a newer schema version than the handler's type (default:
    /// decode them when the change is additive).
    pub fn newer_versions(mut self, policy: NewerVersions) -> Self {
        self.options.newer_versions = policy;
        self
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Anything that can become a [`Subscription`]: a subscription, or the unit type
/// `#[subscriber]` generates for a handler function.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be subscribed",
    note = "pass a function annotated with `#[subscriber(\"pattern\")]`, or \
            `Subscription::new(\"pattern\", handler)`"
)]
pub trait IntoSubscription {
    /// Builds the subscription.
    fn into_subscription(self) -> Subscription;
}

impl IntoSubscription for Subscription {
    fn into_subscription(self) -> Subscription {
        self
    }
}

/// A subscriber registered at link time by `#[subscriber]`.
#[derive(Debug)]
pub struct Registration {
    /// Builds the subscription.
    pub make: fn() -> Subscription,
}

#[cfg(feature = "inventory")]
inventory::collect!(Registration);

/// Every subscriber registered with `#[subscriber]` in the program (empty without the
/// `inventory` feature).
pub fn registered() -> Vec<Subscription> {
    #[cfg(feature = "inventory")]
    {
        inventory::iter::<Registration>
            .into_iter()
            .map(|r| (r.make)())
            .collect()
    }
    #[cfg(not(feature = "inventory"))]
    {
        Vec::new()
    }
}
