//! Time as the bus sees it: wall-clock timestamps and sleeps. Production uses the executor's
//! timers; the [test harness](crate::testing) swaps in a virtual clock so a 30-minute retry
//! schedule runs in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::runtime::Runtime;

/// A source of timestamps and sleeps.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Completes after `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Real time, sleeping on the runtime's timers.
pub struct SystemClock {
    runtime: Arc<dyn Runtime>,
}

impl SystemClock {
    /// A clock sleeping on `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        SystemClock { runtime }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.runtime.sleep(duration)
    }
}

/// Wall-clock Unix time in milliseconds (transport timestamps, SQLite columns, retry due
/// times), whatever [`Clock`] the bus runs on.
#[cfg(any(
    feature = "redis",
    feature = "kafka",
    feature = "sqlite",
    feature = "admin"
))]
pub(crate) fn unix_ms() -> i64 {
    Utc::now().timestamp_millis()
}
