//! Circuit breakers per publish channel (topic): after repeated failures a channel opens and
//! publishing to it fails fast, until a reset delay lets a few probe publishes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::Clock;
use crate::observability::Metrics;

/// When a channel opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before probing.
    pub reset: Duration,
    /// Successful probes (half-open) that close it again; also the most probes at once.
    pub half_open_probes: u32,
}

impl Default for CircuitConfig {
    /// Threshold 5, reset 30 s, 3 probes.
    fn default() -> Self {
        CircuitConfig {
            failure_threshold: 5,
            reset: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

impl CircuitConfig {
    /// For critical channels: opens after 3 failures, probes after 15 s.
    pub fn critical() -> Self {
        CircuitConfig {
            failure_threshold: 3,
            reset: Duration::from_secs(15),
            half_open_probes: 3,
        }
    }

    pub(crate) fn validate(&self, channel: &str) -> Result<(), crate::Error> {
        if self.failure_threshold == 0 {
            return Err(crate::Error::config(
                format!("circuit[{channel}].failure_threshold"),
                "must be at least 1",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(crate::Error::config(
                format!("circuit[{channel}].half_open_probes"),
                "must be at least 1",
            ));
        }
        if self.reset.is_zero() {
            return Err(crate::Error::config(
                format!("circuit[{channel}].reset"),
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// A channel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CircuitState {
    /// Publishing normally; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Failing fast until `until`.
    Open {
        /// When probing starts.
        until: DateTime<Utc>,
    },
    /// Letting probes through.
    HalfOpen {
        /// Probes in flight.
        in_flight: u32,
        /// Successful probes so far.
        successes: u32,
    },
}

impl CircuitState {
    fn gauge(&self) -> i64 {
        match self {
            CircuitState::Closed { .. } => 0,
            CircuitState::HalfOpen { .. } => 1,
            CircuitState::Open { .. } => 2,
        }
    }
}

/// The breakers of one publisher.
pub struct Circuits {
    default: CircuitConfig,
    channels: HashMap<String, CircuitConfig>,
    states: Mutex<HashMap<String, CircuitState>>,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Circuits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuits")
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl Circuits {
    /// Breakers with `default` for every channel and overrides in `channels`.
    pub fn new(
        default: CircuitConfig,
        channels: HashMap<String, CircuitConfig>,
        clock: Arc<dyn Clock>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, crate::Error> {
        default.validate("*")?;
        for (channel, config) in &channels {
            config.validate(channel)?;
        }
        Ok(Circuits {
            default,
            channels,
            states: Mutex::new(HashMap::new()),
            clock,
            metrics,
        })
    }

    fn config(&self, channel: &str) -> CircuitConfig {
        self.channels.get(channel).copied().unwrap_or(self.default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CircuitState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, states: &mut HashMap<String, CircuitState>, channel: &str, state: CircuitState) {
        if let Some(metrics) = &self.metrics {
            metrics.circuit(channel, state.gauge());
        }
        states.insert(channel.to_owned(), state);
    }

    /// Asks to publish to `channel`: fails fast while the circuit is open, or when all probe
    /// slots of a half-open circuit are taken.
    pub fn acquire(&self, channel: &str) -> Result<(), crate::Error> {
        let config = self.config(channel);
        let now = self.clock.now();
        let mut states = self.lock();
        let state = states
            .get(channel)
            .copied()
            .unwrap_or(CircuitState::Closed { failures: 0 });
        match state {
            CircuitState::Closed { .. } => Ok(()),
            CircuitState::Open { until } if now < until => Err(crate::Error::CircuitOpen {
                channel: channel.to_owned(),
                until,
            }),
            CircuitState::Open { .. } => {
                self.set(
                    &mut states,
                    channel,
                    CircuitState::HalfOpen {
                        in_flight: 1,
                        successes: 0,
                    },
                );
                Ok(())
            }
            CircuitState::HalfOpen {
                in_flight,
                successes,
            } if in_flight < config.half_open_probes => {
                self.set(
                    &mut states,
                    channel,
                    CircuitState::HalfOpen {
                        in_flight: in_flight + 1,
                        successes,
                    },
                );
                Ok(())
            }
            CircuitState::HalfOpen { .. } => Err(crate::Error::CircuitOpen {
                channel: channel.to_owned(),
                until: now,
            }),
        }
    }

    /// Gives back a probe slot taken by [`Circuits::acquire`] without a result.
    pub fn release(&self, channel: &str) {
        let mut states = self.lock();
        if let Some(CircuitState::HalfOpen {
            in_flight,
            successes,
        }) = states.get(channel).copied()
        {
            self.set(
                &mut states,
                channel,
                CircuitState::HalfOpen {
                    in_flight: in_flight.saturating_sub(1),
                    successes,
                },
            );
        }
    }

    /// Reports the result of a publish to `channel` acquired with [`Circuits::acquire`].
    pub fn record(&self, channel: &str, ok: bool) {
        let config = self.config(channel);
        let now = self.clock.now();
        let open = CircuitState::Open {
            until: now + chrono::Duration::from_std(config.reset).unwrap_or(chrono::Duration::MAX),
        };
        let mut states = self.lock();
        let state = states
            .get(channel)
            .copied()
            .unwrap_or(CircuitState::Closed { failures: 0 });
        let next = match (state, ok) {
            (CircuitState::Closed { .. }, true) => CircuitState::Closed { failures: 0 },
            (CircuitState::Closed { failures }, false)
                if failures + 1 >= config.failure_threshold =>
            {
                tracing::warn!(%channel, "publish circuit opened");
                open
            }
            (CircuitState::Closed { failures }, false) => CircuitState::Closed {
                failures: failures + 1,
            },
            (CircuitState::HalfOpen { successes, .. }, true)
                if successes + 1 >= config.half_open_probes =>
            {
                tracing::info!(%channel, "publish circuit closed");
                CircuitState::Closed { failures: 0 }
            }
            (
                CircuitState::HalfOpen {
                    in_flight,
                    successes,
                },
                true,
            ) => CircuitState::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                successes: successes + 1,
            },
            (CircuitState::HalfOpen { .. }, false) => open,
            (open @ CircuitState::Open { .. }, _) => open,
        };
        self.set(&mut states, channel, next);
    }

    /// Every channel's state.
    pub fn states(&self) -> Vec<(String, CircuitState)> {
        let mut all: Vec<_> = self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::VirtualClock;

    #[test]
    fn opens_fails_fast_half_opens_and_closes() {
        let clock = Arc::new(VirtualClock::new());
        let c = Circuits::new(
            CircuitConfig::default(),
            HashMap::new(),
            clock.clone(),
            None,
        )
        .unwrap();
        for _ in 0..4 {
            c.acquire("orders").unwrap();
            c.record("orders", false);
        }
        assert!(matches!(
            c.states()[0].1,
            CircuitState::Closed { failures: 4 }
        ));
        c.acquire("orders").unwrap();
        c.record("orders", false);
        let err = c.acquire("orders").expect_err("open");
        assert!(matches!(err, crate::Error::CircuitOpen { .. }), "{err}");
        clock.advance(Duration::from_secs(29));
        assert!(c.acquire("orders").is_err(), "still open before the reset");
        clock.advance(Duration::from_secs(1));
        for _ in 0..3 {
            c.acquire("orders").expect("probe allowed");
        }
        assert!(c.acquire("orders").is_err(), "only 3 probes at once");
        for _ in 0..3 {
            c.record("orders", true);
        }
        assert_eq!(c.states()[0].1, CircuitState::Closed { failures: 0 });
    }

    #[test]
    fn a_failed_probe_reopens_and_critical_channels_trip_sooner() {
        let clock = Arc::new(VirtualClock::new());
        let channels = HashMap::from([("payments".to_owned(), CircuitConfig::critical())]);
        let c = Circuits::new(CircuitConfig::default(), channels, clock.clone(), None).unwrap();
        for _ in 0..3 {
            c.acquire("payments").unwrap();
            c.record("payments", false);
        }
        assert!(c.acquire("payments").is_err(), "critical opens after 3");
        clock.advance(Duration::from_secs(15));
        c.acquire("payments").unwrap();
        c.record("payments", false);
        assert!(c.acquire("payments").is_err(), "failed probe reopens");
        let bad = CircuitConfig {
            failure_threshold: 0,
            ..CircuitConfig::default()
        };
        let err = Circuits::new(bad, HashMap::new(), clock, None).expect_err("invalid");
        assert!(
            err.to_string().contains("circuit[*].failure_threshold"),
            "{err}"
        );
    }
}
