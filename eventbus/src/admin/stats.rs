//! `GET /api/stats`: the bus's counters per topic, read from its metrics, for the dashboard
//! (which turns successive readings into rates).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::State as AdminState;
use crate::wire::is_dlq_topic;

/// One sample line of the text exposition format.
#[derive(Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Parses the sample lines of Prometheus / OpenMetrics text (comments and malformed lines are
/// skipped).
pub(crate) fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        while let Some(&(i, c)) = chars.peek() {
            if c == '}' {
                end = Some(i);
                break;
            }
            if c == ',' {
                chars.next();
                continue;
            }
            // key="value"
            let key_start = i;
            let mut key_end = None;
            for (j, c) in chars.by_ref() {
                if c == '=' {
                    key_end = Some(j);
                    break;
                }
            }
            let key = inner[key_start..key_end?].trim().to_owned();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[derive(Default, Serialize)]
struct TopicStats {
    topic: String,
    published: u64,
    publish_failures: u64,
    handled: u64,
    failed: u64,
    retried: u64,
    dead_lettered: u64,
    outcomes: BTreeMap<String, u64>,
}

/// Counters per topic and bus totals.
pub(crate) async fn stats(State(state): State<AdminState>) -> Json<Value> {
    let samples = parse_samples(&state.bus.metrics().encode());
    let mut topics: BTreeMap<String, TopicStats> = super::topics::known(&state, &samples)
        .await
        .into_iter()
        .map(|t| {
            (
                t.clone(),
                TopicStats {
                    topic: t,
                    ..TopicStats::default()
                },
            )
        })
        .collect();
    for sample in samples {
        let Some(topic) = sample.labels.get("topic") else {
            continue;
        };
        if is_dlq_topic(topic) {
            continue;
        }
        let n = sample.value.max(0.0) as u64;
        let entry = topics.entry(topic.clone()).or_insert_with(|| TopicStats {
            topic: topic.clone(),
            ..TopicStats::default()
        });
        match sample.name.as_str() {
            "event_published_total" => entry.published += n,
            "event_publish_failures_total" => entry.publish_failures += n,
            "event_failed_total" => entry.failed += n,
            "event_retried_total" => entry.retried += n,
            "event_dead_lettered_total" => entry.dead_lettered += n,
            "event_handled_total" => {
                let outcome = sample.labels.get("outcome").cloned().unwrap_or_default();
                if outcome == "handled" {
                    entry.handled += n;
                }
                *entry.outcomes.entry(outcome).or_insert(0) += n;
            }
            _ => {}
        }
    }
    let bus = state.bus.stats();
    let uptime = (chrono::Utc::now() - state.started)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    Json(json!({
        "service": state.bus.metrics().service(),
        "backend": state.bus.backend().name(),
        "time": chrono::Utc::now(),
        "uptime_seconds": uptime,
        "bus": {
            "handled": bus.handled,
            "duplicates": bus.duplicates,
            "skipped": bus.skipped,
            "dead_lettered": bus.dead_lettered,
            "discarded": bus.discarded,
            "unsettled": bus.unsettled,
            "deferred": bus.deferred,
        },
        "topics": topics.into_values().collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let text = "# HELP x y\n# TYPE event_published counter\n\
            event_published_total{service=\"s\",topic=\"orders\"} 3\n\
            event_handled_total{service=\"s\",topic=\"a\\\"b\",group=\"g,1\",outcome=\"handled\"} 2.0\n\
            event_outbox_backlog 7\n# EOF\n";
        let samples = parse_samples(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "event_published_total");
        assert_eq!(samples[0].labels["topic"], "orders");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].labels["topic"], "a\"b");
        assert_eq!(samples[1].labels["group"], "g,1");
        assert_eq!(samples[1].value, 2.0);
        assert!(samples[2].labels.is_empty());
        assert_eq!(samples[2].value, 7.0);
    }
}
