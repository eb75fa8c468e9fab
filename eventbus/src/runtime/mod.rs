//! The executor seam: the only place the bus spawns tasks or sleeps. Everything else is
//! written against `futures`.
//!
//! Feature `tokio` (default) provides [`TokioRuntime`], feature `smol` provides
//! [`SmolRuntime`]; any other executor plugs in by implementing [`Runtime`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

#[cfg(feature = "smol")]
mod smol;
pub(crate) mod task_group;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "smol")]
pub use self::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use self::tokio::TokioRuntime;

/// Spawns tasks and sleeps.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `future` in the background until it completes.
    fn spawn(&self, future: BoxFuture<'static, ()>);
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The runtime picked by the enabled features: tokio when inside a tokio runtime, else smol.
pub fn default_runtime() -> Result<Arc<dyn Runtime>, crate::Error> {
    #[cfg(feature = "tokio")]
    if let Some(rt) = TokioRuntime::current() {
        return Ok(Arc::new(rt));
    }
    #[cfg(feature = "smol")]
    {
        return Ok(Arc::new(SmolRuntime));
    }
    #[allow(unreachable_code)]
    Err(crate::Error::config(
        "runtime",
        "no executor: call from inside a tokio runtime, enable the `smol` feature, or pass one \
         with `BusBuilder::runtime`",
    ))
}
