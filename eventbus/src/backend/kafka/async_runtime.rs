//! rdkafka's executor hook ([`AsyncRuntime`]) served by the bus's runtime seam, so the
//! producer runs on tokio or smol, whichever the caller runs on.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::util::AsyncRuntime;

/// An [`AsyncRuntime`] that spawns and sleeps on the executor the caller runs on: tokio inside
/// a tokio runtime, else smol (see [`crate::runtime::default_runtime`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeamRuntime;

impl AsyncRuntime for SeamRuntime {
    type Delay = BoxFuture<'static, ()>;

    fn spawn<T>(task: T)
    where
        T: std::future::Future<Output = ()> + Send + 'static,
    {
        crate::runtime::ambient().spawn(task.boxed());
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        crate::runtime::sleep(duration)
    }
}

/// The producer the Kafka backend publishes with ([`super::KafkaBackend::producer`]); a
/// foreign producer in a test or tool can be built the same way to run on either executor.
pub type KafkaProducer = FutureProducer<DefaultClientContext, SeamRuntime>;
