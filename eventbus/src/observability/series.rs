//! Rates over time for the dashboard: a ring buffer of readings of the bus's counters per topic
//! (published, handled, failed handler calls, dead-lettered) and of its consumer lag per
//! group, taken every few seconds while an admin router exists. No external store: the last
//! `window` of readings is kept in the process, and [`SeriesRecorder::snapshot`] turns
//! successive readings into per-second rates.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{self, Either};
use serde::Serialize;

use super::exposition::{parse_samples, topic_counts, Sample};
use super::Metrics;
use crate::backend::Backend;
use crate::clock::Clock;
use crate::runtime::task_group::TaskGroup;

/// Counters of one topic at one reading.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    published: u64,
    handled: u64,
    failed: u64,
    dead_lettered: u64,
}

/// One reading of the counters.
#[derive(Debug, Clone)]
struct Reading {
    at_ms: i64,
    topics: BTreeMap<String, Counts>,
    /// Messages not yet delivered, per group (summed over its streams).
    lag: BTreeMap<String, u64>,
}

impl Reading {
    fn of(at_ms: i64, samples: &[Sample]) -> Reading {
        let topics = topic_counts(samples)
            .into_iter()
            .map(|(topic, c)| {
                let counts = Counts {
                    published: c.published,
                    handled: c.handled,
                    failed: c.failed,
                    dead_lettered: c.dead_lettered,
                };
                (topic, counts)
            })
            .collect();
        let mut lag: BTreeMap<String, u64> = BTreeMap::new();
        for sample in samples
            .iter()
            .filter(|s| s.name == "event_consumer_lag_messages")
        {
            if let Some(group) = sample.labels.get("group") {
                *lag.entry(group.clone()).or_default() += sample.value.max(0.0) as u64;
            }
        }
        Reading { at_ms, topics, lag }
    }
}

/// Rates of one topic, one value per point of [`Snapshot::times`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TopicRates {
    pub(crate) topic: String,
    pub(crate) published: Vec<f64>,
    pub(crate) handled: Vec<f64>,
    pub(crate) failed: Vec<f64>,
    pub(crate) dead_lettered: Vec<f64>,
}

/// Lag of one group, one value per point (`None` where the group was not reported).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct GroupLagSeries {
    pub(crate) group: String,
    pub(crate) lag: Vec<Option<u64>>,
}

/// The series as the dashboard draws them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Snapshot {
    pub(crate) interval_seconds: f64,
    pub(crate) window_seconds: f64,
    /// Unix milliseconds of the reading before the first point (`None` without points).
    pub(crate) since: Option<i64>,
    /// Unix milliseconds of each point: a rate at `times[i]` is over the interval since the
    /// point before (`since` for the first).
    pub(crate) times: Vec<i64>,
    pub(crate) topics: Vec<TopicRates>,
    pub(crate) lag: Vec<GroupLagSeries>,
}

/// The ring buffer of readings.
#[derive(Debug)]
pub(crate) struct SeriesRecorder {
    interval: Duration,
    window: Duration,
    capacity: usize,
    readings: Mutex<VecDeque<Reading>>,
}

impl SeriesRecorder {
    /// Keeps `window` of readings taken every `interval` (one more reading than points, the
    /// first rate needing a reading before it).
    pub(crate) fn new(interval: Duration, window: Duration) -> SeriesRecorder {
        let points = (window.as_secs_f64() / interval.as_secs_f64().max(1e-3)).ceil() as usize;
        SeriesRecorder {
            interval,
            window,
            capacity: points.max(1) + 1,
            readings: Mutex::new(VecDeque::new()),
        }
    }

    /// The time between readings.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes a reading of `samples` at `at_ms`, dropping the oldest beyond the window.
    pub(crate) fn record(&self, at_ms: i64, samples: &[Sample]) {
        let reading = Reading::of(at_ms, samples);
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        if readings.back().is_some_and(|last| last.at_ms >= at_ms) {
            return;
        }
        readings.push_back(reading);
        while readings.len() > self.capacity {
            readings.pop_front();
        }
    }

    /// The rates between successive readings and the lag at each.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let readings: Vec<Reading> = self
            .readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let pairs: Vec<(&Reading, &Reading)> =
            readings.iter().zip(readings.iter().skip(1)).collect();
        let topics: BTreeSet<&String> = readings.iter().flat_map(|r| r.topics.keys()).collect();
        let groups: BTreeSet<&String> = readings.iter().flat_map(|r| r.lag.keys()).collect();
        // A counter's rate over one interval; counters only grow within a process, a topic
        // absent from a reading had counted nothing yet.
        let rate = |topic: &str, field: fn(&Counts) -> u64| -> Vec<f64> {
            pairs
                .iter()
                .map(|(before, after)| {
                    let count = |r: &Reading| r.topics.get(topic).map_or(0, field);
                    let seconds = (after.at_ms - before.at_ms) as f64 / 1000.0;
                    let delta = count(after).saturating_sub(count(before)) as f64;
                    if seconds > 0.0 {
                        (delta / seconds * 1000.0).round() / 1000.0
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        Snapshot {
            interval_seconds: self.interval.as_secs_f64(),
            window_seconds: self.window.as_secs_f64(),
            since: pairs.first().map(|(before, _)| before.at_ms),
            times: pairs.iter().map(|(_, after)| after.at_ms).collect(),
            topics: topics
                .into_iter()
                .map(|topic| TopicRates {
                    topic: topic.clone(),
                    published: rate(topic, |c| c.published),
                    handled: rate(topic, |c| c.handled),
                    failed: rate(topic, |c| c.failed),
                    dead_lettered: rate(topic, |c| c.dead_lettered),
                })
                .collect(),
            lag: groups
                .into_iter()
                .map(|group| GroupLagSeries {
                    group: group.clone(),
                    lag: pairs
                        .iter()
                        .map(|(_, after)| after.lag.get(group).copied())
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Reads the consumer lag from `backend` and `metrics` into `recorder`, now and then every
/// interval until `tasks` stops; a backend that cannot report lag leaves the lag series empty.
pub(crate) async fn sample_every(
    recorder: Arc<SeriesRecorder>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    tasks: Arc<TaskGroup>,
) {
    loop {
        if let Some(admin) = backend.admin() {
            match future::select(admin.group_lag(), Box::pin(tasks.stopped())).await {
                Either::Left((Ok(lags), _)) => super::lag::record(&metrics, &lags),
                Either::Left((Err(error), _)) => {
                    tracing::debug!(%error, "consumer lag not read for the time series")
                }
                Either::Right(_) => return,
            }
        }
        recorder.record(crate::clock::unix_ms(), &parse_samples(&metrics.encode()));
        if !tasks
            .sleep_unless_stopped(&*clock, recorder.interval())
            .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(text: &str) -> Vec<Sample> {
        parse_samples(text)
    }

    fn at(published: u64, handled: u64, dead: u64, lag: u64) -> Vec<Sample> {
        samples(&format!(
            "event_published_total{{service=\"s\",topic=\"orders\"}} {published}\n\
             event_handled_total{{service=\"s\",topic=\"orders\",group=\"g\",outcome=\"handled\"}} {handled}\n\
             event_handled_total{{service=\"s\",topic=\"orders\",group=\"g\",outcome=\"duplicate\"}} 99\n\
             event_dead_lettered_total{{service=\"s\",topic=\"orders\",group=\"g\"}} {dead}\n\
             event_published_total{{service=\"s\",topic=\"orders.dlq\"}} 5\n\
             event_consumer_lag_messages{{service=\"s\",group=\"g\",stream=\"a\"}} {lag}\n\
             event_consumer_lag_messages{{service=\"s\",group=\"g\",stream=\"b\"}} 1\n"
        ))
    }

    #[test]
    fn rates_are_per_second_deltas_between_readings() {
        let recorder = SeriesRecorder::new(Duration::from_secs(2), Duration::from_secs(60));
        recorder.record(10_000, &at(0, 0, 0, 7));
        recorder.record(12_000, &at(10, 4, 0, 5));
        recorder.record(14_000, &at(30, 24, 2, 0));
        let s = recorder.snapshot();
        assert_eq!(s.since, Some(10_000));
        assert_eq!(s.times, vec![12_000, 14_000]);
        assert_eq!(s.topics.len(), 1, "dead-letter topics are left out: {s:?}");
        let orders = &s.topics[0];
        assert_eq!(orders.topic, "orders");
        assert_eq!(orders.published, vec![5.0, 10.0]);
        assert_eq!(orders.handled, vec![2.0, 10.0], "only the handled outcome");
        assert_eq!(orders.dead_lettered, vec![0.0, 1.0]);
        assert_eq!(orders.failed, vec![0.0, 0.0]);
        assert_eq!(s.lag[0].group, "g");
        assert_eq!(s.lag[0].lag, vec![Some(6), Some(1)], "summed over streams");
    }

    #[test]
    fn the_window_keeps_only_the_last_readings() {
        let recorder = SeriesRecorder::new(Duration::from_secs(1), Duration::from_secs(3));
        for i in 0..10 {
            recorder.record(i * 1000, &at(i as u64, 0, 0, 0));
        }
        let s = recorder.snapshot();
        assert_eq!(s.times, vec![7_000, 8_000, 9_000]);
        assert_eq!(s.topics[0].published, vec![1.0, 1.0, 1.0]);
        // A reading not after the last one is ignored.
        recorder.record(9_000, &at(100, 0, 0, 0));
        assert_eq!(recorder.snapshot().times, vec![7_000, 8_000, 9_000]);
    }

    #[test]
    fn a_topic_appearing_later_counted_from_zero() {
        let recorder = SeriesRecorder::new(Duration::from_secs(1), Duration::from_secs(60));
        recorder.record(0, &[]);
        recorder.record(1000, &at(3, 0, 0, 0));
        let s = recorder.snapshot();
        assert_eq!(s.topics[0].published, vec![3.0]);
        assert_eq!(s.lag[0].lag, vec![Some(1)]);
    }
}
