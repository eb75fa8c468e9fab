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
/// The parked set lives in the consumer process: after a restart, keys are unparked.
pub struct ParkKeyLayer {
    parked: Mutex<HashMap<String, String>>,
    clock: Arc<dyn Clock>,
}

impl ParkKeyLayer {
    /// An empty parking lot.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        ParkKeyLayer {
            parked: Mutex::new(HashMap::new()),
            clock,
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
                self.lot().remove(&key);
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
                self.lot().insert(key, id);
            }
            outcome
        })
    }
}
