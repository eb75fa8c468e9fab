//! The executor a test runs on: tokio (the default) or smol, chosen by
//! `EVENTBUS_TEST_RUNTIME=smol`. A suite written against these helpers runs unchanged on
//! both; under smol no tokio runtime exists in the process, so any tokio call left in the
//! framework's path panics ("there is no reactor running") and fails the test.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// The executors a test can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// A multi-threaded tokio runtime per test.
    Tokio,
    /// smol's global executor (threads from `SMOL_THREADS`), the test future on the test's
    /// own thread.
    Smol,
}

/// The executor of this run, from `EVENTBUS_TEST_RUNTIME` (`tokio` when unset).
pub fn executor() -> Executor {
    static CHOSEN: OnceLock<Executor> = OnceLock::new();
    *CHOSEN.get_or_init(|| match std::env::var("EVENTBUS_TEST_RUNTIME").as_deref() {
        Err(_) | Ok("") | Ok("tokio") => Executor::Tokio,
        Ok("smol") => Executor::Smol,
        Ok(other) => panic!("EVENTBUS_TEST_RUNTIME={other}: expected `tokio` or `smol`"),
    })
}

impl Executor {
    /// What a marker file of a gated suite ends with on this executor (`""` or `"-smol"`).
    pub fn marker_suffix(self) -> &'static str {
        match self {
            Executor::Tokio => "",
            Executor::Smol => "-smol",
        }
    }
}

/// Runs `test` to completion on the run's executor, with `workers` threads under tokio.
pub fn run<F: Future>(workers: usize, test: F) -> F::Output {
    match executor() {
        Executor::Tokio => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(test),
        Executor::Smol => smol::block_on(test),
    }
}

/// Completes after `duration`, on the run's executor's timer.
pub async fn sleep(duration: Duration) {
    match executor() {
        Executor::Tokio => tokio::time::sleep(duration).await,
        Executor::Smol => {
            async_io::Timer::after(duration).await;
        }
    }
}

/// `future`'s output, or `None` when `duration` passed first.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let expiry = std::pin::pin!(sleep(duration));
    match futures::future::select(future, expiry).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(((), _)) => None,
    }
}

/// A task spawned by [`spawn`]; awaiting it gives the task's output (a panic in the task
/// resumes in the awaiting test).
pub struct Task<T>(TaskInner<T>);

enum TaskInner<T> {
    Tokio(tokio::task::JoinHandle<T>),
    Smol(smol::Task<T>),
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        match &mut self.0 {
            TaskInner::Tokio(handle) => std::pin::Pin::new(handle).poll(cx).map(|joined| {
                joined.unwrap_or_else(|error| match error.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(error) => panic!("task cancelled: {error}"),
                })
            }),
            TaskInner::Smol(task) => std::pin::Pin::new(task).poll(cx),
        }
    }
}

impl<T> Task<T> {
    /// Whether the task ended.
    pub fn is_finished(&self) -> bool {
        match &self.0 {
            TaskInner::Tokio(handle) => handle.is_finished(),
            TaskInner::Smol(task) => task.is_finished(),
        }
    }

    /// Lets the task run on without anyone waiting for it.
    pub fn detach(self) {
        match self.0 {
            TaskInner::Tokio(handle) => drop(handle),
            TaskInner::Smol(task) => task.detach(),
        }
    }
}

/// Runs `future` in the background on the run's executor.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    Task(match executor() {
        Executor::Tokio => TaskInner::Tokio(tokio::spawn(future)),
        Executor::Smol => TaskInner::Smol(smol::spawn(future)),
    })
}

/// Runs the blocking `work` off the executor's threads.
pub async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match executor() {
        Executor::Tokio => tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic())),
        Executor::Smol => smol::unblock(work).await,
    }
}

/// Runs the blocking `work` on the current thread, telling tokio to move its other tasks away
/// first (smol's test future has the thread to itself).
pub fn block_in_place<T>(work: impl FnOnce() -> T) -> T {
    match executor() {
        Executor::Tokio => tokio::task::block_in_place(work),
        Executor::Smol => work(),
    }
}

/// Starts the admin server for `bus`: a task of the test's tokio runtime, or under smol a
/// thread of its own ([`eventbus::admin::AdminServer::start_on_thread`]).
pub async fn serve_admin(
    bus: std::sync::Arc<eventbus::Bus>,
    config: eventbus::admin::AdminConfig,
) -> eventbus::admin::AdminServer {
    match executor() {
        Executor::Tokio => eventbus::admin::serve(bus, config).await,
        Executor::Smol => eventbus::admin::AdminServer::start_on_thread(bus, config),
    }
    .expect("admin server")
}
