//! The executor seam: the only place the bus spawns tasks or sleeps. Everything else is
//! written against `futures`.
//!
//! Feature `runtime-tokio` (default) provides [`TokioRuntime`], feature `runtime-smol`
//! provides [`SmolRuntime`]; any other executor plugs in by implementing [`Runtime`]. With
//! both features on, code running inside a tokio runtime uses tokio and any other code uses
//! smol ([`default_runtime`]); the Redis client and sqlx choose the same way.
//!
//! Backends have no [`Runtime`] handed to them: they reach the executor they are called on
//! through [`unblock`], [`sleep`] and [`timeout`], which locate it the same way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use futures::FutureExt;

#[cfg(feature = "runtime-smol")]
mod smol;
pub(crate) mod task_group;
#[cfg(feature = "runtime-tokio")]
mod tokio;

#[cfg(feature = "runtime-smol")]
pub use self::smol::SmolRuntime;
#[cfg(feature = "runtime-tokio")]
pub use self::tokio::TokioRuntime;

/// Spawns tasks, sleeps and runs blocking calls off the executor's threads.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `future` in the background until it completes.
    fn spawn(&self, future: BoxFuture<'static, ()>);
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// Runs `work`, which may block (a synchronous client call), where it cannot stall the
    /// executor. The default runs it on a new thread.
    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send>) {
        std::thread::spawn(work);
    }
}

/// The runtime picked by the enabled features: tokio when inside a tokio runtime, else smol.
pub fn default_runtime() -> Result<Arc<dyn Runtime>, crate::Error> {
    #[cfg(feature = "runtime-tokio")]
    if let Some(rt) = TokioRuntime::current() {
        return Ok(Arc::new(rt));
    }
    #[cfg(feature = "runtime-smol")]
    {
        return Ok(Arc::new(SmolRuntime));
    }
    #[allow(unreachable_code)]
    Err(crate::Error::config(
        "runtime",
        "no executor: call from inside a tokio runtime, enable the `runtime-smol` feature, or \
         pass one with `BusBuilder::runtime`",
    ))
}

/// A runtime for code that has none handed to it: [`default_runtime`], or threads and
/// `async-io` timers when no executor is enabled and none is current.
pub(crate) fn ambient() -> Arc<dyn Runtime> {
    default_runtime().unwrap_or_else(|_| Arc::new(Threads))
}

/// The fallback of [`ambient`]: blocking work on a new thread, sleeps on a thread too.
struct Threads;

impl Runtime for Threads {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        std::thread::spawn(move || futures::executor::block_on(future));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let (done, slept) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            done.send(()).ok();
        });
        slept.map(drop).boxed()
    }
}

/// Runs the blocking `work` off the current executor's threads and waits for its result. A
/// panic in `work` resumes in the caller.
pub async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = futures::channel::oneshot::channel();
    ambient().spawn_blocking(Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        drop(done.send(outcome));
    }));
    match result.await {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The executor dropped the work without running it: it is shutting down.
        Err(futures::channel::oneshot::Canceled) => {
            std::panic::resume_unwind(Box::new("the executor dropped a blocking task"))
        }
    }
}

/// Completes after `duration`, on the current executor's timer.
pub fn sleep(duration: Duration) -> BoxFuture<'static, ()> {
    ambient().sleep(duration)
}

/// `future`'s output, or `None` when `duration` passed first.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    match futures::future::select(future, sleep(duration)).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(((), _)) => None,
    }
}
