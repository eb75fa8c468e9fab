//! Event-sourced state: an aggregate's state is the fold of its events, read back from the
//! broker by key. [`Fold`] rebuilds it (from the start, or from a snapshot), and stops at a
//! time for "the state as of T"; [`snapshot`] keeps folds in SQL (features `postgres`,
//! `sqlite`).
//!
//! ```no_run
//! use eventbus::aggregate::{Aggregate, Fold};
//! use eventbus::{event, Envelope, EventGroup};
//! use serde::{Deserialize, Serialize};
//!
//! #[event(name = "account.deposited", version = 1, topic = "accounts", key = account)]
//! #[derive(Serialize, Deserialize, Clone)]
//! struct Deposited { account: String, cents: i64 }
//!
//! #[event(name = "account.withdrawn", version = 1, topic = "accounts", key = account)]
//! #[derive(Serialize, Deserialize, Clone)]
//! struct Withdrawn { account: String, cents: i64 }
//!
//! #[derive(EventGroup)]
//! enum AccountEvent { Deposited(Deposited), Withdrawn(Withdrawn) }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Account { balance: i64 }
//!
//! impl Aggregate for Account {
//!     const NAME: &'static str = "account";
//!     type Event = AccountEvent;
//!     fn apply(&mut self, event: &Envelope<AccountEvent>) {
//!         match &event.data {
//!             AccountEvent::Deposited(d) => self.balance += d.cents,
//!             AccountEvent::Withdrawn(w) => self.balance -= w.cents,
//!         }
//!     }
//! }
//!
//! # async fn run(bus: eventbus::Bus) -> Result<(), eventbus::Error> {
//! let admin = bus.backend().admin().expect("a backend that reads back");
//! let now = Fold::<Account>::new("acc-1").run(admin).await?;
//! let yesterday = Fold::<Account>::new("acc-1")
//!     .as_of(chrono::Utc::now() - chrono::Duration::days(1))
//!     .run(admin)
//!     .await?;
//! println!("{} now, {} yesterday", now.state.balance, yesterday.state.balance);
//! # Ok(()) }
//! ```
//!
//! - The events are those of [`Aggregate::Event`] (an `#[event]` type or an
//!   `#[derive(EventGroup)]` enum) whose partition key is the aggregate's key, read from their
//!   topics with [`BackendAdmin::read_key_page`]: on Redis the key's partition stream, on Kafka
//!   the key's partition, in log order. Other types on those topics are passed over. Events of
//!   several topics are merged by envelope time.
//! - Older versions go through their upcasters ([`crate::upcast`]) like in a handler; an event
//!   of the aggregate's types that does not decode fails the fold, naming it (a state built
//!   without it would be wrong).
//! - History the broker no longer retains is gone from the fold too: keep the topics'
//!   retention at "forever" (or compact and snapshot) for aggregates.
//! - A read-model projection is a subscriber that writes its table in the SQL inbox
//!   transaction ([`crate::outbox::ContextExt::transaction`]); rebuilding it is emptying the
//!   table and replaying the topic from its start to the projection's group
//!   ([`Bus::replay`](crate::Bus::replay)).

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod snapshot;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::backend::{BackendAdmin, Cursor, MAX_PAGE};
use crate::envelope::{Envelope, RawEnvelope};
use crate::error::Error;
use crate::event::Payload;

/// State built from events: the events it is made of and how each one changes it.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate's name: the namespace of its snapshots.
    const NAME: &'static str;
    /// Its events: an `#[event]` type or an `#[derive(EventGroup)]` enum.
    type Event: Payload;

    /// Applies one event, in log order.
    fn apply(&mut self, event: &Envelope<Self::Event>);
}

/// The result of a [`Fold`].
#[derive(Debug, Clone, PartialEq)]
pub struct Folded<A> {
    /// The state.
    pub state: A,
    /// Events applied, those of the snapshot it resumed included.
    pub applied: u64,
    /// Messages of the key this fold read from the backend (not those of a snapshot).
    pub read: u64,
    /// Envelope time of the last event applied.
    pub last_time: Option<DateTime<Utc>>,
    /// Where the read of each topic ended, to resume from (empty for an `as_of` fold, which
    /// read past what it applied).
    pub positions: BTreeMap<String, Cursor>,
}

impl<A: Aggregate> Default for Folded<A> {
    fn default() -> Self {
        Folded {
            state: A::default(),
            applied: 0,
            read: 0,
            last_time: None,
            positions: BTreeMap::new(),
        }
    }
}

/// Rebuilds aggregate `A` of one key from the broker.
#[derive(Debug)]
#[must_use]
pub struct Fold<A> {
    key: String,
    as_of: Option<DateTime<Utc>>,
    from: Folded<A>,
}

impl<A: Aggregate> Fold<A> {
    /// A fold of the events keyed `key`, from the start.
    pub fn new(key: impl Into<String>) -> Self {
        Fold {
            key: key.into(),
            as_of: None,
            from: Folded::default(),
        }
    }

    /// Stops at `time`: the state as of then (events with a later envelope time are left
    /// out).
    pub fn as_of(mut self, time: DateTime<Utc>) -> Self {
        self.as_of = Some(time);
        self
    }

    /// Continues an earlier fold (a snapshot): its state, then the events after its
    /// positions.
    pub fn resume(mut self, from: Folded<A>) -> Self {
        self.from = from;
        self
    }

    /// Reads the key's events and applies them.
    pub async fn run(self, admin: &dyn BackendAdmin) -> Result<Folded<A>, Error> {
        let mut topics: Vec<&'static str> = <A::Event as Payload>::TOPICS.to_vec();
        topics.sort_unstable();
        topics.dedup();
        if topics.is_empty() {
            return Err(Error::config(
                "aggregate",
                format!(
                    "`{}` folds typed events: its `Event` must name its types (an `#[event]` \
                     type or an `EventGroup`), not accept any",
                    A::NAME
                ),
            ));
        }
        let Fold { key, as_of, from } = self;
        let mut folded = from;
        let mut events = Vec::new();
        for topic in &topics {
            let mut position = folded.positions.get(*topic).cloned();
            loop {
                let page = admin
                    .read_key_page(topic, &key, position.clone(), MAX_PAGE)
                    .await?;
                folded.read += page.messages.len() as u64;
                for stored in page.messages {
                    let raw = RawEnvelope::decode(&stored.message.payload)
                        .map_err(|e| fold_error::<A>(&key, topic, &stored.id, e.to_string()))?;
                    let types = <A::Event as Payload>::TYPES;
                    if !types.contains(&raw.event_type.as_str()) {
                        continue;
                    }
                    let data =
                        <A::Event as Payload>::decode(&raw.event_type, raw.version, &raw.data)
                            .map_err(|e| fold_error::<A>(&key, topic, &stored.id, e.to_string()))?;
                    events.push(raw.with_data(data));
                }
                if page.position.is_some() {
                    position = page.position;
                }
                if page.at_end {
                    break;
                }
            }
            if let Some(position) = position {
                folded.positions.insert((*topic).to_owned(), position);
            }
        }
        if topics.len() > 1 {
            // Log order within a topic; envelope time across topics (a stable sort keeps the
            // first).
            events.sort_by_key(|e| e.time);
        }
        for event in &events {
            if as_of.is_some_and(|t| event.time > t) {
                continue;
            }
            folded.state.apply(event);
            folded.applied += 1;
            folded.last_time = Some(event.time);
        }
        if as_of.is_some() {
            folded.positions.clear();
        }
        Ok(folded)
    }
}

fn fold_error<A: Aggregate>(key: &str, topic: &str, id: &str, reason: String) -> Error {
    Error::Aggregate {
        aggregate: A::NAME,
        key: key.to_owned(),
        reason: format!("message `{id}` of `{topic}` does not decode: {reason}"),
    }
}
