//! The one owner of background tasks: the bus's consumer loops and deferred redeliveries, the
//! outbox dispatcher's passes, its LISTEN task and its cleanup.
//!
//! A [`TaskGroup`] gives every task a stop signal to watch, counts it until it ends (a drop
//! guard, so a task that panics or is aborted is counted out too), and shuts the group down in
//! bounded time: stop, wait for the tasks to finish, abort the rest, wait a little more, and
//! give up on whatever still runs (a task stuck in blocking code cannot be aborted) with a
//! warning. [`TaskGroup::shutdown`] always returns within its timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event as Signal;
use futures::future::{self, AbortHandle, Abortable, Either};

use super::Runtime;
use crate::clock::Clock;

/// Background tasks with one stop signal, tracked until they end.
#[derive(Default)]
pub(crate) struct TaskGroup {
    stopping: AtomicBool,
    stop_signal: Signal,
    running: AtomicUsize,
    done: Signal,
    aborts: Mutex<HashMap<u64, AbortHandle>>,
    next: AtomicU64,
}

/// How a [`TaskGroup::shutdown`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// Every task finished on its own within the drain time.
    pub(crate) drained: bool,
    /// Tasks aborted after the drain time.
    pub(crate) aborted: usize,
    /// Tasks still running when the timeout was up (stuck in blocking code).
    pub(crate) left_behind: usize,
}

/// Counts a task out when it ends: finished, aborted or panicked.
struct Running {
    group: Arc<TaskGroup>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.group
            .aborts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.group.running.fetch_sub(1, Ordering::SeqCst);
        self.group.done.notify(usize::MAX);
    }
}

impl TaskGroup {
    /// An empty group.
    pub(crate) fn new() -> Arc<TaskGroup> {
        Arc::new(TaskGroup::default())
    }

    /// Spawns `task` on `runtime`, abortable and counted until it ends.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        runtime: &Arc<dyn Runtime>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let (abort, registration) = AbortHandle::new_pair();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.aborts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, abort);
        self.running.fetch_add(1, Ordering::SeqCst);
        let guard = Running {
            group: self.clone(),
            id,
        };
        runtime.spawn(Box::pin(async move {
            let _guard = guard;
            let _ = Abortable::new(task, registration).await;
        }));
    }

    /// Asks every task to stop; they see it through [`TaskGroup::is_stopping`] and
    /// [`TaskGroup::stopped`].
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_signal.notify(usize::MAX);
    }

    /// Whether stop was asked for.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A listener that fires at the next [`TaskGroup::stop`]; check
    /// [`TaskGroup::is_stopping`] after taking it, so no stop is missed.
    pub(crate) fn stop_listener(&self) -> event_listener::EventListener {
        self.stop_signal.listen()
    }

    /// Sleeps `duration` on `clock` unless stop is asked for first; true if the sleep
    /// completed, false if the group is stopping (a periodic task then returns).
    pub(crate) async fn sleep_unless_stopped(&self, clock: &dyn Clock, duration: Duration) -> bool {
        let stopped = self.stop_listener();
        if self.is_stopping() {
            return false;
        }
        matches!(
            future::select(clock.sleep(duration), stopped).await,
            Either::Left(_)
        )
    }

    /// Completes once stop was asked for.
    pub(crate) async fn stopped(&self) {
        loop {
            let listener = self.stop_signal.listen();
            if self.is_stopping() {
                return;
            }
            listener.await;
        }
    }

    /// Tasks running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Aborts every running task (they end at their next await); returns how many.
    pub(crate) fn abort_all(&self) -> usize {
        let aborts = self.aborts.lock().unwrap_or_else(|p| p.into_inner());
        for abort in aborts.values() {
            abort.abort();
        }
        aborts.len()
    }

    /// Completes once every task ended.
    pub(crate) async fn finished(&self) {
        loop {
            let listener = self.done.listen();
            if self.running() == 0 {
                return;
            }
            listener.await;
        }
    }

    /// Completes when every task ended or `limit` passed on `clock`; true if they ended.
    async fn finished_within(&self, clock: &dyn Clock, limit: Duration) -> bool {
        let finished = Box::pin(self.finished());
        matches!(
            future::select(finished, clock.sleep(limit)).await,
            Either::Left(_)
        )
    }

    /// Stops the group and waits for it, within `timeout`: all but a reserve (a tenth, at most
    /// 2 s) for the tasks to finish on their own, then aborts the rest and waits up to half the
    /// reserve for them to end. The other half of the reserve is left to the caller (flushing).
    pub(crate) async fn shutdown(&self, clock: &dyn Clock, timeout: Duration) -> Stopped {
        self.stop();
        let reserve = Self::reserve(timeout);
        let drained = self
            .finished_within(clock, timeout.saturating_sub(reserve))
            .await;
        if drained {
            return Stopped {
                drained,
                aborted: 0,
                left_behind: 0,
            };
        }
        let aborted = self.abort_all();
        let ended = self.finished_within(clock, reserve / 2).await;
        let left_behind = if ended { 0 } else { self.running() };
        if left_behind > 0 {
            tracing::warn!(
                left_behind,
                "tasks still running after abort (blocked outside an await); leaving them behind"
            );
        }
        Stopped {
            drained,
            aborted,
            left_behind,
        }
    }

    /// The part of a shutdown timeout kept for aborting and flushing.
    pub(crate) fn reserve(timeout: Duration) -> Duration {
        (timeout / 10).min(Duration::from_secs(2))
    }
}
