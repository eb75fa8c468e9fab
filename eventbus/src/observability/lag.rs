//! Consumer lag in the metrics: read from the backend by the bus on an interval (and by the
//! admin server at every `/metrics` scrape), so `event_consumer_lag_messages` moves while
//! nobody scrapes.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, Either};

use super::Metrics;
use crate::backend::{Backend, GroupLag};
use crate::clock::Clock;
use crate::runtime::task_group::TaskGroup;

/// Sets `event_consumer_lag_messages` for every group the backend reported a lag for.
pub(crate) fn record(metrics: &Metrics, lags: &[GroupLag]) {
    for lag in lags {
        if let Some(n) = lag.lag {
            metrics.consumer_lag_messages(&lag.group, &lag.stream, n);
        }
    }
}

/// Reads the lag every `every` until `tasks` stops; a backend that cannot say is logged at
/// debug level, not retried sooner.
pub(crate) async fn refresh_every(
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    tasks: Arc<TaskGroup>,
    every: Duration,
) {
    while tasks.sleep_unless_stopped(&*clock, every).await {
        let Some(admin) = backend.admin() else {
            return;
        };
        match future::select(admin.group_lag(), Box::pin(tasks.stopped())).await {
            Either::Left((Ok(lags), _)) => record(&metrics, &lags),
            Either::Left((Err(error), _)) => {
                tracing::debug!(%error, "consumer lag not refreshed")
            }
            Either::Right(_) => return,
        }
    }
}
