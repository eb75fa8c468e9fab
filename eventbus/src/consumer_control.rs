//! Stopping one subscription's consumer loop while the bus runs
//! ([`Bus::unsubscribe`](crate::Bus::unsubscribe)): a stop signal the loop watches beside the
//! bus's own, and a signal of its end.

use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::{Event as Signal, EventListener};

/// The stop and end signals of one consumer loop.
#[derive(Default)]
pub(crate) struct ConsumerControl {
    stopping: AtomicBool,
    stop_signal: Signal,
    finished: AtomicBool,
    finished_signal: Signal,
}

impl ConsumerControl {
    /// Asks the loop to stop taking deliveries and end once those in flight are settled.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_signal.notify(usize::MAX);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A listener firing at the next [`stop`](Self::stop); check
    /// [`is_stopping`](Self::is_stopping) after taking it.
    pub(crate) fn stop_listener(&self) -> EventListener {
        self.stop_signal.listen()
    }

    /// The loop ended (however: finished, aborted or panicked).
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.finished_signal.notify(usize::MAX);
    }

    /// Completes when the loop has ended.
    pub(crate) async fn finished(&self) {
        loop {
            let listener = self.finished_signal.listen();
            if self.finished.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// Calls [`ConsumerControl::finish`] when dropped: the end of a loop, whichever way it ends.
pub(crate) struct FinishOnDrop(pub(crate) std::sync::Arc<ConsumerControl>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}
