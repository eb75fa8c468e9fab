//! `GET /lag`: how far behind each consumer group is.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, State as AdminState};
use crate::backend::GroupLag;

/// Reads the lag from the backend and updates the `event_consumer_lag_messages` gauge.
pub(crate) async fn read(state: &AdminState) -> Result<Vec<GroupLag>, crate::Error> {
    let lags = crate::backend::admin_of(state.bus.backend().as_ref(), "consumer lag")?
        .group_lag()
        .await?;
    crate::observability::lag::record(state.bus.metrics(), &lags);
    Ok(lags)
}

/// Refreshes the lag gauge, logging (not failing) when the backend cannot say.
pub(crate) async fn refresh(state: &AdminState) {
    if let Err(error) = read(state).await {
        tracing::debug!(error = %crate::error::chain(&error), "consumer lag not refreshed");
    }
}

/// `{"groups": [{"group", "stream", "pending", "lag"}], "total_lag", "total_pending"}`.
pub(crate) async fn lag(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let groups = read(&state).await?;
    let total_lag: u64 = groups.iter().filter_map(|g| g.lag).sum();
    let total_pending: u64 = groups.iter().map(|g| g.pending).sum();
    Ok(Json(json!({
        "backend": state.bus.backend().name(),
        "groups": groups,
        "total_lag": total_lag,
        "total_pending": total_pending,
    })))
}
