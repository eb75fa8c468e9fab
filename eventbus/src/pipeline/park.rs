//! Parks later events of a key whose earlier event was dead-lettered, so per-key order holds
//! across failures.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{DeliveryCx, Outcome, Stage};
use crate::clock::Clock;
use crate::dead_letter::DeadLetters;
use crate::error::Error;
use crate::handler::ErrorKind;

pub use crate::wire::REDRIVE_HEADER;

/// When a keyed event fails for good, later events with the same key are dead-lettered beside
/// it ("parked") instead of being handled out of order. A redriven event of that key unparks
/// it, so redriving the key's dead letters in order replays them in order.
///
/// The parked set is kept in the consumer process and stored beside the dead letters: a key is
/// parked exactly while the dead-letter queue holds an event of it from this group. With
/// [`ParkKeyLayer::durable`], the first delivery of a topic after a start rebuilds the set from
/// that topic's dead-letter queue (page by page), so a restart keeps keys parked; redriving
/// a key's dead letters unparks it at once, purging them unparks it at the next start. When the
/// queue cannot be read, the delivery is left for redelivery rather than handled out of order.
///
/// It holds at most [`ParkKeyLayer::DEFAULT_CAPACITY`] keys: a key failing while the lot is full is not parked (its
/// later events are handled, possibly before the dead-lettered one is redriven), logged as an
/// error and counted in `event_park_overflow_total`; `event_parked_keys` shows the lot's size.
pub(crate) struct ParkKeyLayer {
    parked: Mutex<HashMap<Arc<str>, String>>,
    clock: Arc<dyn Clock>,
    capacity: usize,
    metrics: Option<Arc<crate::observability::Metrics>>,
    dead_letters: Option<DeadLetters>,
    /// Topics whose dead letters were read into the lot; the lock is held while one is read.
    loaded: futures::lock::Mutex<HashSet<Arc<str>>>,
}

impl ParkKeyLayer {
    /// Keys a parking lot holds by default.
    pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

    /// An empty parking lot.
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        ParkKeyLayer {
            parked: Mutex::new(HashMap::new()),
            clock,
            capacity: Self::DEFAULT_CAPACITY,
            metrics: None,
            dead_letters: None,
            loaded: futures::lock::Mutex::new(HashSet::new()),
        }
    }

    /// Rebuilds the lot of each topic from its dead-letter queue before the topic's first
    /// delivery, so parked keys survive a restart.
    pub(crate) fn durable(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// Parks the keys of this group's dead letters of `cx`'s topic, once per topic.
    async fn load(&self, cx: &DeliveryCx) -> Result<(), Error> {
        let Some(dead_letters) = &self.dead_letters else {
            return Ok(());
        };
        let topic = &cx.message.topic;
        let mut loaded = self.loaded.lock().await;
        if loaded.contains(topic) {
            return Ok(());
        }
        let mut found = Vec::new();
        let mut cursor = None;
        loop {
            let page = match dead_letters
                .page(topic, cursor, crate::backend::MAX_PAGE)
                .await
            {
                Ok(page) => page,
                Err(Error::Unsupported { backend, .. }) => {
                    tracing::warn!(
                        %topic,
                        backend,
                        "the backend cannot read dead letters back: parked keys live in this process only"
                    );
                    loaded.insert(topic.clone());
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            for letter in page.letters {
                if *letter.group != *cx.group {
                    continue;
                }
                if let Some(key) = letter.key.as_deref().map(Arc::from) {
                    let blocker = letter
                        .envelope()
                        .map(|e| e.id.to_string())
                        .unwrap_or(letter.id);
                    found.push((key, blocker));
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let (keys, overflow) = {
            let mut lot = self.lot();
            let mut overflow = 0;
            for (key, blocker) in found {
                if lot.contains_key(&key) {
                    continue;
                }
                if lot.len() < self.capacity {
                    lot.insert(key, blocker);
                } else {
                    overflow += 1;
                }
            }
            (lot.len(), overflow)
        };
        if overflow > 0 {
            tracing::error!(
                %topic,
                group = %cx.group,
                overflow,
                capacity = self.capacity,
                "parking lot full while reading dead letters: keys not parked"
            );
        }
        tracing::info!(%topic, group = %cx.group, keys, "parked keys read from the dead-letter queue");
        self.report(cx, keys);
        loaded.insert(topic.clone());
        Ok(())
    }

    /// Reports the lot's size and overflows in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::observability::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn report(&self, cx: &DeliveryCx, keys: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.parked_keys(&cx.message.topic, &cx.group, keys);
        }
    }

    fn lot(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, String>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ParkKeyLayer {
    /// Runs this stage around `next`, the rest of the chain.
    pub(crate) async fn around<N: Stage>(&self, cx: &mut DeliveryCx, next: &N) -> Outcome {
        let Some(key) = cx.message.key.clone() else {
            return next.run(cx).await;
        };
        if let Err(error) = self.load(cx).await {
            tracing::warn!(
                topic = %cx.message.topic,
                group = %cx.group,
                %error,
                "parked keys not read from the dead-letter queue: delivery left for later"
            );
            return Outcome::Unsettled(error);
        }
        if cx.message.headers.contains_key(REDRIVE_HEADER) {
            let mut lot = self.lot();
            if lot.remove(&key).is_some() {
                let keys = lot.len();
                drop(lot);
                self.report(cx, keys);
            }
        }
        let blocker = self.lot().get(&key).cloned();
        if let Some(blocker) = blocker {
            let message =
                format!("parked: key `{key}` is blocked by dead-lettered event {blocker}");
            return Outcome::Failed(cx.failure(ErrorKind::Permanent, message, self.clock.now()));
        }
        let outcome = next.run(cx).await;
        if let Outcome::Failed(_) = outcome {
            let id = cx
                .envelope
                .as_ref()
                .map(|e| e.id.to_string())
                .unwrap_or_default();
            let mut lot = self.lot();
            if lot.len() < self.capacity || lot.contains_key(&key) {
                lot.insert(key, id);
                let keys = lot.len();
                drop(lot);
                self.report(cx, keys);
            } else {
                drop(lot);
                tracing::error!(
                    %key,
                    topic = %cx.message.topic,
                    group = %cx.group,
                    capacity = self.capacity,
                    "parking lot full: key not parked, its later events will be handled"
                );
                if let Some(metrics) = &self.metrics {
                    metrics.park_overflow(&cx.message.topic, &cx.group);
                }
            }
        }
        outcome
    }
}
