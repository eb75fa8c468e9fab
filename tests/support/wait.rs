//! Waiting on progress: deadlines scaled for slow machines, and waits that give up only when
//! nothing moved for a while, reporting what they saw.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The factor every deadline of the real-server suites is multiplied by:
/// `EVENTBUS_TEST_TIME_FACTOR` (a positive number, default 1). Raise it on a slow or loaded
/// machine instead of editing deadlines.
///
/// Panics when the variable is set but not a positive number, naming it.
pub fn time_factor() -> f64 {
    match std::env::var("EVENTBUS_TEST_TIME_FACTOR") {
        Ok(raw) => match raw.trim().parse::<f64>() {
            Ok(factor) if factor.is_finite() && factor > 0.0 => factor,
            _ => panic!("EVENTBUS_TEST_TIME_FACTOR must be a positive number, got `{raw}`"),
        },
        Err(_) => 1.0,
    }
}

/// `duration` multiplied by [`time_factor`].
pub fn scaled(duration: Duration) -> Duration {
    duration.mul_f64(time_factor())
}

/// What a [`wait_for_progress`] saw: the count over time, for a failure message.
#[derive(Debug, Clone)]
pub struct Progress {
    /// What was being waited for.
    pub what: String,
    /// The count wanted.
    pub target: usize,
    /// The last count seen.
    pub reached: usize,
    /// Why the wait ended early: no progress for the stall window, or the overall deadline.
    pub reason: String,
    /// `(seconds since start, count)` samples, one per second of the wait.
    pub samples: Vec<(u64, usize)>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut trail = String::new();
        // The last 20 samples: enough to see whether it crawled or stopped.
        let skip = self.samples.len().saturating_sub(20);
        for (at, count) in &self.samples[skip..] {
            let _ = write!(trail, " {at}s:{count}");
        }
        write!(
            f,
            "{}: reached {} of {} ({}); progress:{}",
            self.what, self.reached, self.target, self.reason, trail
        )
    }
}

/// Polls `progress` every 10 ms until it reaches `target`.
///
/// Gives up when the count has not moved for `stall`, or when `deadline` passed (both scaled
/// by [`time_factor`]): a slow broker that keeps moving is waited for, a stuck one is reported
/// early, with the count over time.
pub async fn wait_for_progress(
    what: &str,
    target: usize,
    stall: Duration,
    deadline: Duration,
    mut progress: impl FnMut() -> usize,
) -> Result<(), Progress> {
    let (stall, deadline) = (scaled(stall), scaled(deadline));
    let start = Instant::now();
    let mut last = progress();
    let mut moved = start;
    let mut samples = vec![(0, last)];
    loop {
        let now = progress();
        if now >= target {
            return Ok(());
        }
        if now != last {
            last = now;
            moved = Instant::now();
        }
        let elapsed = start.elapsed();
        if elapsed.as_secs() > samples.last().map_or(0, |s| s.0) {
            samples.push((elapsed.as_secs(), now));
        }
        let reason = if moved.elapsed() > stall {
            Some(format!("no progress for {:?}", moved.elapsed()))
        } else if elapsed > deadline {
            Some(format!("deadline of {deadline:?} passed"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Progress {
                what: what.to_owned(),
                target,
                reached: now,
                reason,
                samples,
            });
        }
        super::sleep(Duration::from_millis(10)).await;
    }
}
