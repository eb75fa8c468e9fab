//! `GET /catalog` and `GET /catalog/asyncapi`.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, Params, State as AdminState};

/// The catalog's topics, sorted and deduplicated.
pub(crate) fn topics(state: &AdminState) -> Vec<String> {
    let mut topics: Vec<String> = state
        .bus
        .catalog()
        .iter()
        .map(|e| e.topic.to_owned())
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

fn as_json(state: &AdminState) -> Value {
    let events: Vec<Value> = state
        .bus
        .catalog()
        .iter()
        .map(|entry| {
            let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
            value["schema"] = entry.json_schema();
            value
        })
        .collect();
    json!({
        "service": state.bus.metrics().service(),
        "version": state.config.version,
        "topics": topics(state),
        "events": events,
    })
}

fn as_asyncapi(state: &AdminState) -> Value {
    crate::asyncapi::document_with_version(
        state.bus.metrics().service(),
        &state.config.version,
        state.bus.catalog(),
    )
}

/// The catalog as JSON (`?format=asyncapi` for the AsyncAPI document).
pub(crate) async fn catalog(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), &["format"])?;
    match params.text("format") {
        None | Some("json") => Ok(Json(as_json(&state))),
        Some("asyncapi") => Ok(Json(as_asyncapi(&state))),
        Some(other) => Err(ApiError::bad_request(
            "format",
            format!("`format` must be json or asyncapi, got `{other}`"),
        )),
    }
}

/// The AsyncAPI 3.0.0 document of the catalog.
pub(crate) async fn asyncapi(State(state): State<AdminState>) -> Json<Value> {
    Json(as_asyncapi(&state))
}
