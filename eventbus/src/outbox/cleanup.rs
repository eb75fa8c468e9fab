//! Retention: `SENT` outbox rows and old inbox rows are removed in bounded batches, so neither
//! table grows forever and no cleanup statement locks or scans more than one batch.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event as Signal;
use futures::future::{self, Either};

use crate::clock::Clock;
use crate::error::Error;
use crate::runtime::Runtime;

/// What cleanup does with `SENT` rows past their retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupMode {
    /// Delete them.
    #[default]
    Delete,
    /// Move them to `outbox_archive` (which you then export or prune).
    Archive,
}

/// Retention of `SENT` outbox rows.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Retention {
    /// How long `SENT` rows are kept; `None` keeps them forever. Default 24 h.
    #[serde(with = "humantime_serde")]
    pub sent: Option<Duration>,
    /// Delete or archive. Default delete.
    pub mode: CleanupMode,
    /// Rows removed per statement. Default 1 000.
    pub batch_size: u32,
    /// How often the dispatcher runs the cleanup. Default 1 min.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long completed saga instances are kept (then deleted, or archived to
    /// `saga_archive` in archive mode); `None` keeps them forever. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub completed_sagas: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            sent: Some(Duration::from_secs(24 * 3600)),
            mode: CleanupMode::Delete,
            batch_size: 1_000,
            interval: Duration::from_secs(60),
            completed_sagas: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl Retention {
    /// Keeps `SENT` rows for `age`, then deletes them.
    pub fn delete_after(age: Duration) -> Self {
        Retention {
            sent: Some(age),
            ..Retention::default()
        }
    }

    /// Keeps `SENT` rows for `age`, then moves them to `outbox_archive`.
    pub fn archive_after(age: Duration) -> Self {
        Retention {
            sent: Some(age),
            mode: CleanupMode::Archive,
            ..Retention::default()
        }
    }

    /// Keeps `SENT` rows forever.
    pub fn keep() -> Self {
        Retention {
            sent: None,
            ..Retention::default()
        }
    }

    /// Sets the rows removed per statement.
    pub fn batch_size(mut self, rows: u32) -> Self {
        self.batch_size = rows;
        self
    }

    /// Sets how long completed saga instances are kept (`None`: forever).
    pub fn completed_sagas(mut self, age: Option<Duration>) -> Self {
        self.completed_sagas = age;
        self
    }

    /// Sets how often the dispatcher cleans up.
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        validate_batch("outbox.retention.batch_size", self.batch_size)?;
        if self.interval.is_zero() {
            return Err(Error::config(
                "outbox.retention.interval",
                "must be positive",
            ));
        }
        Ok(())
    }
}

pub(crate) fn validate_batch(setting: &str, rows: u32) -> Result<(), Error> {
    if rows == 0 || rows > 100_000 {
        return Err(Error::config(
            setting,
            format!("{rows} is not between 1 and 100000"),
        ));
    }
    Ok(())
}

/// Runs `batch` (removing at most `limit` rows) until a batch removes fewer; returns the total.
pub(crate) async fn drain<F, Fut>(limit: u32, mut batch: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let removed = batch().await?;
        total += removed;
        if removed < u64::from(limit) {
            return Ok(total);
        }
    }
}

/// A periodic cleanup task; stops when [`CleanupHandle::stop`] is called or the handle is
/// dropped.
#[derive(Debug)]
pub struct CleanupHandle {
    stop: Arc<Stop>,
}

#[derive(Debug, Default)]
struct Stop {
    stopping: AtomicBool,
    signal: Signal,
}

impl Stop {
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.signal.notify(usize::MAX);
    }
}

impl CleanupHandle {
    /// Stops the task after its current batch.
    pub fn stop(&self) {
        self.stop.stop();
    }
}

impl Drop for CleanupHandle {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// Spawns `job` every `every` on `runtime`, logging failures, until the handle stops it.
pub(crate) fn spawn_periodic<F, Fut>(
    runtime: &Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    every: Duration,
    what: &'static str,
    mut job: F,
) -> CleanupHandle
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, Error>> + Send + 'static,
{
    let stop = Arc::new(Stop::default());
    let handle = CleanupHandle { stop: stop.clone() };
    runtime.spawn(Box::pin(async move {
        loop {
            let stopped = stop.signal.listen();
            if stop.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Either::Right(_) = future::select(clock.sleep(every), stopped).await {
                return;
            }
            match job().await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "{what} cleanup"),
                Err(error) => tracing::warn!(%error, "{what} cleanup failed"),
            }
        }
    }));
    handle
}
