//! Retry policy: how many attempts a delivery gets, how long to wait between them, and what
//! happens after the last one.

use std::time::Duration;

/// How long to wait before each retry.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Backoff {
    /// `initial * multiplier^(retry-1)`, capped at `max`; with jitter the wait is drawn
    /// uniformly from the upper half, `[delay/2, delay]`, so retries of many consumers spread out.
    Exponential {
        /// Wait before the first retry.
        #[serde(with = "humantime_serde")]
        initial: Duration,
        /// Upper bound of any wait.
        #[serde(with = "humantime_serde")]
        max: Duration,
        /// Growth factor per retry (at least 1).
        #[serde(default = "Backoff::default_multiplier")]
        multiplier: f64,
        /// Randomize each wait within `[delay/2, delay]`.
        #[serde(default = "Backoff::default_jitter")]
        jitter: bool,
    },
    /// Fixed waits, one per retry; the last one repeats if there are more retries than entries
    /// (seed schedule: 1 min, 5 min, 30 min).
    Schedule(#[serde(deserialize_with = "crate::retry::durations")] Vec<Duration>),
}

impl Default for Backoff {
    /// Exponential from 100 ms to 10 s, doubling, with jitter.
    fn default() -> Self {
        Backoff::Exponential {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

/// A list of durations such as `["1m", "5m", "30m"]`.
pub(crate) fn durations<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Duration>, D::Error> {
    let texts: Vec<humantime_serde::Serde<Duration>> =
        serde::Deserialize::deserialize(deserializer)?;
    Ok(texts
        .into_iter()
        .map(humantime_serde::Serde::into_inner)
        .collect())
}

impl Backoff {
    fn default_multiplier() -> f64 {
        2.0
    }

    fn default_jitter() -> bool {
        true
    }

    /// Exponential backoff doubling from `initial` up to `max`, with jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff::Exponential {
            initial,
            max,
            multiplier: 2.0,
            jitter: true,
        }
    }

    /// A fixed schedule of waits.
    pub fn schedule(waits: impl IntoIterator<Item = Duration>) -> Self {
        Backoff::Schedule(waits.into_iter().collect())
    }

    /// Turns jitter on or off (exponential only).
    pub fn with_jitter(mut self, on: bool) -> Self {
        if let Backoff::Exponential { jitter, .. } = &mut self {
            *jitter = on;
        }
        self
    }

    /// Sets the growth factor (exponential only).
    pub fn with_multiplier(mut self, factor: f64) -> Self {
        if let Backoff::Exponential { multiplier, .. } = &mut self {
            *multiplier = factor;
        }
        self
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        match self {
            Backoff::Schedule(waits) => {
                let index = (retry.max(1) as usize - 1).min(waits.len().saturating_sub(1));
                waits.get(index).copied().unwrap_or_default()
            }
            Backoff::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let exponent = retry.saturating_sub(1).min(64) as i32;
                let factor = multiplier.max(1.0).powi(exponent);
                let ceiling = initial.as_secs_f64() * factor;
                let delay = if ceiling.is_finite() {
                    Duration::from_secs_f64(ceiling.min(max.as_secs_f64()))
                } else {
                    *max
                };
                if *jitter {
                    let half = delay / 2;
                    half + half.mul_f64(fastrand::f64())
                } else {
                    delay
                }
            }
        }
    }

    /// Checks the values, naming the offending setting.
    pub(crate) fn validate(&self, subscriber: &str) -> Result<(), crate::Error> {
        match self {
            Backoff::Exponential {
                initial,
                max,
                multiplier,
                ..
            } => {
                if initial > max {
                    return Err(crate::Error::config(
                        format!("{subscriber}.backoff.initial"),
                        format!("{initial:?} is larger than backoff.max {max:?}"),
                    ));
                }
                if !multiplier.is_finite() || *multiplier < 1.0 {
                    return Err(crate::Error::config(
                        format!("{subscriber}.backoff.multiplier"),
                        format!("{multiplier} must be a finite number of at least 1"),
                    ));
                }
                Ok(())
            }
            Backoff::Schedule(waits) if waits.is_empty() => Err(crate::Error::config(
                format!("{subscriber}.backoff.schedule"),
                "the schedule is empty",
            )),
            Backoff::Schedule(_) => Ok(()),
        }
    }
}

/// What happens to a delivery whose attempts are exhausted or whose error is permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Terminal {
    /// Publish it to the dead-letter topic with the failure metadata (the default).
    #[default]
    DeadLetter,
    /// Log it, count it and drop it.
    Discard,
}

/// A bounded retry policy: every delivery ends, handled or in its terminal state.
///
/// A round is `max_attempts` attempts in-process, separated by `backoff` (the key waits). When
/// a round fails and `delayed` has an entry left, the delivery is handed back to the backend
/// to come back after that delay without blocking anything, for another round. Total
/// attempts are bounded by `max_attempts * (delayed.len() + 1)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per round including the first (retries + 1), at least 1.
    pub max_attempts: u32,
    /// Waits between in-process attempts.
    pub backoff: Backoff,
    /// Delays before each further round (seed schedule: 1 min, 5 min, 30 min).
    pub delayed: Vec<Duration>,
    /// Where exhausted deliveries go.
    pub terminal: Terminal,
}

impl RetryPolicy {
    /// The most attempts a delivery can get over all rounds.
    pub fn attempt_cap(&self) -> u32 {
        let rounds = u32::try_from(self.delayed.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.max_attempts.max(1).saturating_mul(rounds)
    }
}

impl Default for RetryPolicy {
    /// Three retries (four attempts) with the default backoff, then the dead-letter queue.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            backoff: Backoff::default(),
            delayed: Vec::new(),
            terminal: Terminal::DeadLetter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_without_jitter_doubles_and_caps() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .with_jitter(false);
        let waits: Vec<u128> = (1..=6).map(|r| b.delay(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_upper_half() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        for retry in 1..=8 {
            let ceiling = b.clone().with_jitter(false).delay(retry);
            for _ in 0..200 {
                let d = b.delay(retry);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "retry {retry}: {d:?} vs {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn schedule_repeats_its_last_entry() {
        let b = Backoff::schedule([60, 300, 1800].map(Duration::from_secs));
        let waits: Vec<u64> = (1..=5).map(|r| b.delay(r).as_secs()).collect();
        assert_eq!(waits, [60, 300, 1800, 1800, 1800]);
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30));
        assert!(b.delay(u32::MAX) <= Duration::from_secs(30));
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let b = Backoff::exponential(Duration::from_secs(5), Duration::from_secs(1));
        let err = b.validate("billing").expect_err("initial > max");
        assert!(err.to_string().contains("billing.backoff.initial"), "{err}");
        let err = Backoff::schedule([]).validate("x").expect_err("empty");
        assert!(err.to_string().contains("x.backoff.schedule"), "{err}");
    }
}
