//! `/live`, `/ready`, `/version` and `/metrics`.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::State as AdminState;
use crate::circuit::CircuitState;

/// The content type of `/metrics` (prometheus-client writes OpenMetrics text).
pub(crate) const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process answers.
pub(crate) async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

async fn timed<F>(timeout: Duration, check: F) -> Value
where
    F: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(()) => json!({ "status": "ok", "latency_ms": latency_ms }),
        Err(error) => json!({ "status": "error", "error": error, "latency_ms": latency_ms }),
    }
}

/// 200 when the backend and every readiness check answer, 503 otherwise; with the circuit
/// breakers' states. An open circuit makes the status `degraded` but keeps 200: the breaker
/// already fails fast and recovers by itself, and taking the instance out of rotation for it
/// would only move the load elsewhere.
pub(crate) async fn ready(State(state): State<AdminState>) -> Response {
    let timeout = state.config.ready_timeout;
    let backend = state.bus.backend().clone();
    let mut checks = Map::new();
    let mut backend_check = timed(timeout, async {
        backend.health().await.map_err(|e| crate::error::chain(&e))
    })
    .await;
    backend_check["backend"] = json!(backend.name());
    checks.insert("backend".to_owned(), backend_check);
    let others = futures::future::join_all(
        state
            .config
            .checks
            .iter()
            .map(|(name, check)| async move { (name.clone(), timed(timeout, check()).await) }),
    )
    .await;
    checks.extend(others);
    let healthy = checks.values().all(|c| c["status"] == "ok");

    let circuits: Vec<Value> = state
        .bus
        .publisher()
        .circuits()
        .map(|c| c.states())
        .unwrap_or_default()
        .into_iter()
        .map(|(channel, circuit)| {
            let mut value = serde_json::to_value(circuit).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                object.insert("channel".to_owned(), json!(channel));
            }
            value
        })
        .collect();
    let open = state
        .bus
        .publisher()
        .circuits()
        .map(|c| {
            c.states()
                .iter()
                .any(|(_, s)| !matches!(s, CircuitState::Closed { .. }))
        })
        .unwrap_or(false);

    // Shutting down: out of rotation at once, while the consumers drain (`/live` stays up).
    let draining = state.bus.is_stopping();
    let status = match (draining, healthy, open) {
        (true, _, _) => "draining",
        (false, false, _) => "not_ready",
        (false, true, true) => "degraded",
        (false, true, false) => "ready",
    };
    let code = if healthy && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "checks": checks,
        "circuits": circuits,
        "subscriptions": state.bus.subscriptions(),
    });
    (code, Json(body)).into_response()
}

/// Versions and identity.
pub(crate) async fn version(State(state): State<AdminState>) -> Json<Value> {
    let uptime = (chrono::Utc::now() - state.started)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    Json(json!({
        "version": state.config.version,
        "eventbus": env!("CARGO_PKG_VERSION"),
        "service": state.bus.metrics().service(),
        "backend": state.bus.backend().name(),
        "started_at": state.started,
        "uptime_seconds": uptime,
    }))
}

/// Every metric in the text format, with lag and dead-letter gauges refreshed first.
pub(crate) async fn metrics(State(state): State<AdminState>) -> Response {
    super::lag::refresh(&state).await;
    super::dlq::refresh_sizes_if_due(&state).await;
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.bus.metrics().encode(),
    )
        .into_response()
}
