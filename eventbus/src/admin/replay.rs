//! `POST /replay` starts a replay; `GET /replay/{id}` reads its progress while it runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ApiError, BodyFields, State as AdminState};
use crate::replay::{ReplayProgress, ReplayRequest};

/// Replays remembered; the oldest finished ones are forgotten first.
const KEEP: usize = 100;

const FIELDS: &[&str] = &["topic", "from", "to", "type", "group"];
const TIME: &str = "an RFC 3339 time such as 2026-11-23T10:00:00Z";

struct Entry {
    id: String,
    request: ReplayRequest,
    started_at: DateTime<Utc>,
    progress: Arc<ReplayProgress>,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "request": self.request,
            "started_at": self.started_at,
            "status": self.progress.status(),
        })
    }
}

/// The replays started through this server.
#[derive(Default)]
pub(crate) struct Replays {
    entries: Mutex<VecDeque<Entry>>,
}

impl Replays {
    fn insert(&self, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        while entries.len() >= KEEP {
            match entries.iter().position(|e| e.progress.status().done) {
                Some(finished) => {
                    entries.remove(finished);
                }
                None => break,
            }
        }
        entries.push_back(entry);
    }
}

/// `POST /replay` with `{"topic", "from", "to", "type"?, "group"?}`: 202 and the replay's id.
pub(crate) async fn start(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = BodyFields::parse(&body, FIELDS)?;
    let request = ReplayRequest {
        topic: fields.require("topic", "a topic name")?,
        from: fields.require("from", TIME)?,
        to: fields.require("to", TIME)?,
        event_type: fields.get("type", "an event-type pattern such as `order.*`")?,
        group: fields.get("group", "a consumer group name")?,
    };
    request.validate()?;
    if !super::topics::known_now(&state)
        .await
        .contains(&request.topic)
    {
        return Err(ApiError::bad_request(
            "topic",
            format!("`{}` is not a topic this service knows", request.topic),
        ));
    }
    if let Some(group) = &request.group {
        // Catch a typo before the replay runs, when the backend can list its groups.
        if let Ok(lags) = async {
            crate::backend::admin_of(state.bus.backend().as_ref(), "consumer lag")?
                .group_lag()
                .await
        }
        .await
        {
            if !lags.is_empty() && lags.iter().all(|l| &l.group != group) {
                let mut known: Vec<&str> = lags.iter().map(|l| l.group.as_str()).collect();
                known.sort_unstable();
                known.dedup();
                return Err(ApiError::bad_request(
                    "group",
                    format!(
                        "no consumer group `{group}`; known groups: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    let progress = state.bus.replay(request.clone())?;
    let entry = Entry {
        id: Uuid::now_v7().to_string(),
        request,
        started_at: Utc::now(),
        progress,
    };
    tracing::info!(id = %entry.id, request = ?entry.request, "replay started through the admin API");
    let body = entry.to_json();
    let location = format!("/replay/{}", entry.id);
    state.replays.insert(entry);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// `GET /replay/{id}`: the request and its live status.
pub(crate) async fn get(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entries = state
        .replays
        .entries
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    entries
        .iter()
        .find(|e| e.id == id)
        .map(|e| Json(e.to_json()))
        .ok_or_else(|| ApiError::not_found(format!("no replay `{id}`")).with_field("id"))
}

/// `GET /replay`: the replays remembered, newest first.
pub(crate) async fn list(State(state): State<AdminState>) -> Json<Value> {
    let entries = state
        .replays
        .entries
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let replays: Vec<Value> = entries.iter().rev().map(Entry::to_json).collect();
    Json(json!({ "replays": replays }))
}
