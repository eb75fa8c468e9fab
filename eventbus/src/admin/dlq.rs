//! Dead-letter endpoints: list (filtered, paged), inspect, redrive and purge.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, BodyFields, Params, State as AdminState};
use crate::dead_letter::DeadLetter;
use crate::pattern::Pattern;
use crate::wire::DLQ_SUFFIX;

/// Largest page.
pub(crate) const MAX_LIMIT: usize = 500;
/// Page size when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// Most dead letters one list request reads; past it, a filtered `total` counts the matches
/// among them and `total_complete` is false.
pub(crate) const MAX_SCAN: usize = 100_000;
/// Most ids in one redrive or purge request.
pub(crate) const MAX_IDS: usize = 1000;

const LIST_PARAMS: &[&str] = &["topic", "type", "error", "group", "offset", "limit"];
const TOPIC_PARAMS: &[&str] = &["type", "error", "group", "offset", "limit"];
const SELECT_FIELDS: &[&str] = &["ids", "all", "type", "error", "group"];

/// Which dead letters a list, redrive or purge is about.
#[derive(Default)]
struct Filter {
    event_type: Option<Pattern>,
    error: Option<String>,
    group: Option<String>,
}

impl Filter {
    fn new(
        event_type: Option<&str>,
        error: Option<&str>,
        group: Option<&str>,
    ) -> Result<Self, ApiError> {
        let event_type = event_type
            .map(|p| {
                Pattern::parse(p).map_err(|e| {
                    ApiError::bad_request("type", format!("`type` pattern `{p}`: {e}"))
                })
            })
            .transpose()?;
        Ok(Filter {
            event_type,
            error: error.map(str::to_lowercase),
            group: group.map(str::to_owned),
        })
    }

    fn is_empty(&self) -> bool {
        self.event_type.is_none() && self.error.is_none() && self.group.is_none()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        self.event_type
            .as_ref()
            .is_none_or(|p| p.matches(&letter.event_type))
            && self
                .error
                .as_ref()
                .is_none_or(|needle| letter.failure.message.to_lowercase().contains(needle))
            && self.group.as_ref().is_none_or(|g| &letter.group == g)
    }
}

/// The original topic named by a path or parameter (a `.dlq` suffix is accepted and dropped).
/// It must be a topic the bus knows ([`super::topics::known`]): a request never makes the
/// server read, or create metrics for, a topic name it made up.
async fn topic_name(state: &AdminState, raw: &str, field: &str) -> Result<String, ApiError> {
    let topic = raw.strip_suffix(DLQ_SUFFIX).unwrap_or(raw).trim();
    if topic.is_empty() {
        return Err(ApiError::bad_request(field, format!("`{field}` is empty")));
    }
    if topic.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            field,
            format!("`{field}` holds control characters"),
        ));
    }
    if !super::topics::known_now(state)
        .await
        .iter()
        .any(|t| t == topic)
    {
        return Err(ApiError::bad_request(
            field,
            format!(
                "`{topic}` is not a topic this service knows (its catalog, subscriptions, \
                 published or handled topics, or a dead-letter topic in the backend)"
            ),
        ));
    }
    Ok(topic.to_owned())
}

/// How many dead letters `topic` holds, recorded in the metrics.
async fn size(state: &AdminState, topic: &str) -> Result<u64, ApiError> {
    let size = state.bus.dead_letters().count(topic).await?;
    state.bus.metrics().dlq_size(topic, size);
    Ok(size)
}

/// Counts the dead letters of every topic the bus knows for `event_dlq_size` when the last
/// refresh is older than the configured interval.
pub(crate) async fn refresh_sizes_if_due(state: &AdminState) {
    {
        let mut last = state
            .dlq_refreshed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < state.config.dlq_gauge_interval) {
            return;
        }
        *last = Some(Instant::now());
    }
    for topic in super::topics::known_now(state).await {
        if let Err(error) = size(state, &topic).await {
            tracing::debug!(%topic, error = %error, "dead-letter size not refreshed");
            return;
        }
    }
}

fn summary(letter: &DeadLetter) -> Value {
    let mut value = serde_json::to_value(letter).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        let envelope = letter.envelope().ok();
        object.insert(
            "event_id".into(),
            json!(envelope.as_ref().map(|e| e.id.to_string())),
        );
        object.insert(
            "event_time".into(),
            json!(envelope.as_ref().map(|e| e.time)),
        );
    }
    value
}

async fn list_topics(
    state: &AdminState,
    topics: Vec<String>,
    params: &Params,
) -> Result<Json<Value>, ApiError> {
    let filter = Filter::new(
        params.text("type"),
        params.text("error"),
        params.text("group"),
    )?;
    let offset = params.number("offset", 0, usize::MAX)?;
    let limit = params.number("limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let mut sizes = Vec::new();
    for topic in &topics {
        let size = size(state, topic).await?;
        sizes.push(
            json!({ "topic": topic, "dlq_topic": format!("{topic}{DLQ_SUFFIX}"), "size": size }),
        );
    }
    // Walk the queues a page at a time, keeping only the requested window: without a filter
    // the queue sizes give the total and the walk stops at the window's end; with one, every
    // letter up to `MAX_SCAN` is read to count the matches.
    let dead_letters = state.bus.dead_letters();
    let mut items = Vec::new();
    let mut matched = 0usize;
    let mut scanned = 0usize;
    let mut complete = true;
    'topics: for topic in &topics {
        let mut cursor = None;
        loop {
            if filter.is_empty() && matched >= offset.saturating_add(limit) {
                break 'topics;
            }
            if scanned >= MAX_SCAN {
                complete = false;
                break 'topics;
            }
            let page = dead_letters
                .page(topic, cursor, crate::backend::MAX_PAGE)
                .await?;
            scanned += page.letters.len();
            for letter in page.letters.iter().filter(|d| filter.matches(d)) {
                if matched >= offset && items.len() < limit {
                    items.push(summary(letter));
                }
                matched += 1;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    let total = if filter.is_empty() {
        sizes
            .iter()
            .map(|s| s["size"].as_u64().unwrap_or(0))
            .sum::<u64>() as usize
    } else {
        matched
    };
    *state
        .dlq_refreshed
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    Ok(Json(json!({
        "total": total,
        "total_complete": complete,
        "offset": offset,
        "limit": limit,
        "items": items,
        "topics": sizes,
    })))
}

/// `GET /dlq?topic=&type=&error=&group=&offset=&limit=`: dead letters of one topic, or of every
/// topic the bus knows, oldest first per topic, with the size of each queue.
pub(crate) async fn list(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), LIST_PARAMS)?;
    let topics = match params.text("topic") {
        Some(topic) => vec![topic_name(&state, topic, "topic").await?],
        None => super::topics::known_now(&state).await,
    };
    list_topics(&state, topics, &params).await
}

/// `GET /dlq/{topic}`: like `GET /dlq?topic=`.
pub(crate) async fn list_topic(
    State(state): State<AdminState>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), TOPIC_PARAMS)?;
    list_topics(
        &state,
        vec![topic_name(&state, &topic, "topic").await?],
        &params,
    )
    .await
}

/// `GET /dlq/{topic}/{id}`: the metadata and the original envelope.
pub(crate) async fn inspect(
    State(state): State<AdminState>,
    Path((topic, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_name(&state, &topic, "topic").await?;
    let letter = state.bus.dead_letters().get(&topic, &id).await?;
    let mut value = summary(&letter);
    let (envelope, text) = match serde_json::from_slice::<Value>(&letter.payload) {
        Ok(json) => (json, None),
        Err(_) => (
            Value::Null,
            Some(String::from_utf8_lossy(&letter.payload).into_owned()),
        ),
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("payload_size".into(), json!(letter.payload.len()));
        object.insert("envelope".into(), envelope);
        object.insert("payload_text".into(), json!(text));
        object.insert(
            "decode_error".into(),
            json!(letter.envelope().err().map(|e| e.to_string())),
        );
    }
    Ok(Json(value))
}

/// What a redrive or purge body selects.
enum Selection {
    /// These ids, each on the queue.
    Ids(Vec<String>),
    /// Every dead letter the filter keeps.
    All(Filter),
}

/// The dead letters a redrive or purge body selects: `{"ids": [...]}` or `{"all": true}` with
/// optional `type`/`error`/`group` filters. Every id must exist.
async fn select(state: &AdminState, topic: &str, body: &[u8]) -> Result<Selection, ApiError> {
    let fields = BodyFields::parse(body, SELECT_FIELDS)?;
    let ids: Option<Vec<String>> = fields.get("ids", "a list of dead-letter ids")?;
    let all = fields.get::<bool>("all", "true or false")?.unwrap_or(false);
    let filter = Filter::new(
        fields
            .get::<String>("type", "an event-type pattern")?
            .as_deref(),
        fields.get::<String>("error", "text")?.as_deref(),
        fields
            .get::<String>("group", "a consumer group")?
            .as_deref(),
    )?;
    match (ids, all) {
        (Some(_), true) => Err(ApiError::bad_request("all", "give either `ids` or `all: true`, not both")),
        (None, false) => Err(ApiError::bad_request(
            "ids",
            "give `ids` (a list of dead-letter ids) or `all: true` to select every dead letter (filtered by `type`, `error`, `group`)",
        )),
        (Some(ids), false) => {
            if !filter.is_empty() {
                let name = ["type", "error", "group"].into_iter().find(|f| fields.has(f)).unwrap_or("type");
                return Err(ApiError::bad_request(name, "filters apply with `all: true`, not with `ids`"));
            }
            if ids.is_empty() {
                return Err(ApiError::bad_request("ids", "`ids` is empty"));
            }
            if ids.len() > MAX_IDS {
                return Err(ApiError::bad_request("ids", format!("at most {MAX_IDS} ids per request, got {}", ids.len())));
            }
            let mut unique = ids;
            unique.sort();
            unique.dedup();
            match state.bus.dead_letters().get_many(topic, &unique).await {
                Ok(_) => Ok(Selection::Ids(unique)),
                Err(crate::Error::DeadLetterNotFound { id, .. }) => Err(ApiError::not_found(format!(
                    "no dead letter `{id}` on topic `{topic}{DLQ_SUFFIX}`"
                ))
                .with_field("ids")),
                Err(other) => Err(other.into()),
            }
        }
        (None, true) => Ok(Selection::All(filter)),
    }
}

/// `POST /dlq/{topic}/{id}/redrive`.
pub(crate) async fn redrive_one(
    State(state): State<AdminState>,
    Path((topic, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_name(&state, &topic, "topic").await?;
    let redriven = state
        .bus
        .dead_letters()
        .redrive(&topic, std::slice::from_ref(&id))
        .await?;
    tracing::info!(%topic, %id, "dead letter redriven through the admin API");
    Ok(Json(
        json!({ "topic": topic, "requested": 1, "redriven": redriven }),
    ))
}

/// `POST /dlq/{topic}/redrive` with `{"ids": [...]}` or `{"all": true, ...filters}`.
pub(crate) async fn redrive_many(
    State(state): State<AdminState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    bulk(&state, &topic, &body, Bulk::Redrive).await
}

/// `DELETE /dlq/{topic}/{id}`.
pub(crate) async fn purge_one(
    State(state): State<AdminState>,
    Path((topic, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_name(&state, &topic, "topic").await?;
    let dead_letters = state.bus.dead_letters();
    dead_letters.get(&topic, &id).await?;
    let purged = dead_letters.purge(&topic, vec![id.clone()]).await?;
    tracing::info!(%topic, %id, "dead letter purged through the admin API");
    Ok(Json(
        json!({ "topic": topic, "requested": 1, "purged": purged }),
    ))
}

/// `DELETE /dlq/{topic}` with `{"ids": [...]}` or `{"all": true, ...filters}`.
pub(crate) async fn purge_many(
    State(state): State<AdminState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    bulk(&state, &topic, &body, Bulk::Purge).await
}

/// What a bulk endpoint does with the dead letters its body selects.
#[derive(Clone, Copy)]
enum Bulk {
    Redrive,
    Purge,
}

impl Bulk {
    /// The reply field counting the letters acted on.
    fn done(self) -> &'static str {
        match self {
            Bulk::Redrive => "redriven",
            Bulk::Purge => "purged",
        }
    }
}

/// Selects dead letters by the request body and redrives or purges them; replies with
/// `{"topic", "requested", "redriven"|"purged"}`.
async fn bulk(
    state: &AdminState,
    topic: &str,
    body: &[u8],
    action: Bulk,
) -> Result<Json<Value>, ApiError> {
    let topic = topic_name(state, topic, "topic").await?;
    let dead_letters = state.bus.dead_letters();
    let (requested, done) = match select(state, &topic, body).await? {
        Selection::Ids(ids) => {
            let requested = ids.len();
            let done = match action {
                Bulk::Redrive => dead_letters.redrive(&topic, &ids).await?,
                Bulk::Purge => dead_letters.purge(&topic, ids).await?,
            };
            (requested, done)
        }
        Selection::All(filter) => {
            let keep = |d: &DeadLetter| filter.matches(d);
            let done = match action {
                Bulk::Redrive => dead_letters.redrive_where(&topic, keep).await?,
                Bulk::Purge => dead_letters.purge_where(&topic, keep).await?,
            };
            (done, done)
        }
    };
    tracing::info!(%topic, requested, done, action = action.done(), "dead letters changed through the admin API");
    let mut reply = serde_json::Map::new();
    reply.insert("topic".into(), json!(topic));
    reply.insert("requested".into(), json!(requested));
    reply.insert(action.done().into(), json!(done));
    Ok(Json(Value::Object(reply)))
}
