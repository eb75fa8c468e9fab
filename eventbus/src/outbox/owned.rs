//! An outbox the bus runs: [`BusBuilder::outbox`](crate::BusBuilder::outbox) hands it over, the
//! bus starts its dispatcher after the consumers, publishing through the bus's publisher
//! (circuit breakers, `event_published_total`) with the bus's metrics, and stops it after the
//! consumers drained.

use std::sync::Arc;

use super::{DispatcherHandle, Outbox, SqlDatabase};
use crate::clock::Clock;
use crate::error::Error;
use crate::observability::Metrics;
use crate::publisher::Publisher;
use crate::runtime::Runtime;

/// What the bus needs of an outbox, whatever its database.
pub(crate) trait BusOutbox: Send + Sync + 'static {
    /// Starts the dispatcher (and its cleanup and metrics tasks) on the bus's executor.
    fn start(
        &self,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        runtime: Arc<dyn Runtime>,
        clock: Arc<dyn Clock>,
    ) -> Result<DispatcherHandle, Error>;
}

impl<DB: SqlDatabase> BusOutbox for Outbox<DB> {
    fn start(
        &self,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        runtime: Arc<dyn Runtime>,
        clock: Arc<dyn Clock>,
    ) -> Result<DispatcherHandle, Error> {
        self.dispatcher(publisher.backend().clone())
            .publisher(publisher)
            .metrics(metrics)
            .runtime(runtime)
            .clock(clock)
            .start()
    }
}
