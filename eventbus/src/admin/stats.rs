//! `GET /api/stats`: the bus's counters per topic, read from its metrics, for the dashboard
//! (which turns successive readings into rates).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::State as AdminState;
use crate::observability::exposition::{parse_samples, topic_counts, TopicCounts};

/// One topic's line of `/api/stats`.
#[derive(Serialize)]
struct TopicStats {
    topic: String,
    #[serde(flatten)]
    counts: TopicCounts,
}

/// Counters per topic and bus totals.
pub(crate) async fn stats(State(state): State<AdminState>) -> Json<Value> {
    let samples = parse_samples(&state.bus.metrics().encode());
    let mut counts = topic_counts(&samples);
    // Every topic the bus knows, with or without counts yet.
    let topics: Vec<TopicStats> = super::topics::known(&state, &samples)
        .await
        .into_iter()
        .map(|topic| TopicStats {
            counts: counts.remove(&topic).unwrap_or_default(),
            topic,
        })
        .collect();
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
        "topics": topics,
    }))
}
