//! Parks later events of a key whose earlier event was dead-lettered, so per-key order holds
//! across failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::{DeliveryCx, Layer, Next, Outcome};
use crate::clock::Clock;
use crate::handler::ErrorKind;

/// Header marking a message re-published from the dead-letter queue.
pub const REDRIVE_HEADER: &str = "eventbus-redrive";

/// When a keyed event fails for good, later events with the same key are dead-lettered beside
/// it ("parked") instead of being handled out of order. A redriven event of that key unparks
/// it, so redriving the key's dead letters in order replays them in order.
///
/// The parked set lives in the consumer process: after a restart, keys are unparked. It holds
/// at most [`ParkKeyLayer::DEFAULT_CAPACITY`] keys (or [`ParkKeyLayer::with_capacity`]): a key
/// failing while the lot is full is not parked (its later events are handled, possibly before
/// the dead-lettered one is redriven), logged as an error and counted in
/// `event_park_overflow_total`; `event_parked_keys` shows the lot's size.
pub struct ParkKeyLayer {
    parked: Mutex<HashMap<String, String>>,
    clock: Arc<dyn Clock>,
    capacity: usize,
    metrics: Option<Arc<crate::observability::Metrics>>,
}

impl ParkKeyLayer {
    /// Keys a parking lot holds by default.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// An empty parking lot.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        ParkKeyLayer {
            parked: Mutex::new(HashMap::new()),
            clock,
            capacity: Self::DEFAULT_CAPACITY,
            metrics: None,
        }
    }

    /// Holds at most `keys` parked keys.
    pub fn with_capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// Reports the lot's size and overflows in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::observability::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn report(&self, cx: &DeliveryCx, keys: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.parked_keys(&cx.message.topic, &cx.group, keys);
        }
    }

    fn lot(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Layer for ParkKeyLayer {
    fn handle<'a>(&'a self, cx: &'a mut DeliveryCx, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(key) = cx.message.key.clone() else {
                return next.run(cx).await;
            };
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
                return Outcome::Failed(cx.failure(
                    ErrorKind::Permanent,
                    message,
                    self.clock.now(),
                ));
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
        })
    }
}
