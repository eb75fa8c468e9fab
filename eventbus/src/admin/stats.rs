//! `GET /api/stats`: the bus's counters per topic, read from its metrics, for the dashboard
//! (which turns successive readings into rates).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::State as AdminState;
use crate::observability::exposition::parse_samples;
use crate::wire::is_dlq_topic;

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
