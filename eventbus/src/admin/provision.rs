//! `POST /topics/provision`: creates the catalog's topics (Kafka) or consumer groups (Redis)
//! through a backend hook, or shows the plan (`dry_run`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{json, Value};

use super::{ApiError, BodyFields, State as AdminState};
use crate::error::Error;
use crate::event::CatalogEntry;
use crate::wire::dlq_topic;

/// Compressions a request may ask for (Kafka's `compression.type` values).
pub const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd", "producer"];

const FIELDS: &[&str] = &[
    "topics",
    "partitions",
    "replication",
    "retention",
    "compression",
    "dry_run",
];

/// What `POST /topics/provision` asks for; unset settings are left to the backend's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisionRequest {
    /// The event topics to provision (all catalog topics unless the request names some);
    /// their dead-letter topics come with them.
    pub topics: Vec<String>,
    /// Partitions per topic.
    pub partitions: Option<u32>,
    /// Replication factor.
    pub replication: Option<u16>,
    /// Retention.
    #[serde(serialize_with = "millis")]
    pub retention: Option<Duration>,
    /// Compression: one of [`COMPRESSIONS`].
    pub compression: Option<String>,
    /// Only report what would be done.
    pub dry_run: bool,
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

/// The backend-specific part of provisioning: creates or checks the topics (or groups) of a
/// request and reports what it did as JSON. Set it with
/// [`AdminConfig::provisioner`](super::AdminConfig::provisioner); without one,
/// `POST /topics/provision` answers 501 (a dry run still shows the plan).
///
/// Implemented for closures `Fn(Vec<CatalogEntry>, ProvisionRequest) -> BoxFuture<Result<Value>>`.
pub trait Provisioner: Send + Sync + 'static {
    /// Provisions `request` (never a dry run) for the events of `catalog`.
    fn provision(
        &self,
        catalog: Vec<CatalogEntry>,
        request: ProvisionRequest,
    ) -> BoxFuture<'static, Result<Value, Error>>;
}

impl<F> Provisioner for F
where
    F: Fn(Vec<CatalogEntry>, ProvisionRequest) -> BoxFuture<'static, Result<Value, Error>>
        + Send
        + Sync
        + 'static,
{
    fn provision(
        &self,
        catalog: Vec<CatalogEntry>,
        request: ProvisionRequest,
    ) -> BoxFuture<'static, Result<Value, Error>> {
        self(catalog, request)
    }
}

fn parse(state: &AdminState, body: &[u8]) -> Result<ProvisionRequest, ApiError> {
    let fields = BodyFields::parse(body, FIELDS)?;
    let catalog_topics = super::catalog::topics(state);
    let topics = match fields.get::<Vec<String>>("topics", "a list of topic names")? {
        None => catalog_topics.clone(),
        Some(list) => {
            if let Some(unknown) = list.iter().find(|t| !catalog_topics.contains(t)) {
                return Err(ApiError::bad_request(
                    "topics",
                    format!(
                        "`{unknown}` is not a catalog topic; known: {}",
                        catalog_topics.join(", ")
                    ),
                ));
            }
            list
        }
    };
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "topics",
            "nothing to provision: the catalog has no topics",
        ));
    }
    let partitions: Option<u32> = fields.get("partitions", "a number of partitions")?;
    if partitions.is_some_and(|p| p == 0 || p > 100_000) {
        return Err(ApiError::bad_request(
            "partitions",
            "`partitions` must be between 1 and 100000",
        ));
    }
    let replication: Option<u16> = fields.get("replication", "a replication factor")?;
    if replication == Some(0) {
        return Err(ApiError::bad_request(
            "replication",
            "`replication` must be at least 1",
        ));
    }
    let retention = fields
        .get::<String>("retention", "a duration such as `7d`")?
        .map(|text| {
            super::parse_duration(&text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "retention",
                        format!(
                            "`retention` must be a duration such as 12h, 7d or 2w, got `{text}`"
                        ),
                    )
                })
        })
        .transpose()?;
    let compression: Option<String> = fields.get("compression", "a compression name")?;
    if let Some(c) = &compression {
        if !COMPRESSIONS.contains(&c.as_str()) {
            return Err(ApiError::bad_request(
                "compression",
                format!(
                    "`compression` must be one of {}, got `{c}`",
                    COMPRESSIONS.join(", ")
                ),
            ));
        }
    }
    Ok(ProvisionRequest {
        topics,
        partitions,
        replication,
        retention,
        compression,
        dry_run: fields.get("dry_run", "true or false")?.unwrap_or(false),
    })
}

/// The plan (every topic with its dead-letter topic and events), then the hook's report.
pub(crate) async fn provision(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = parse(&state, &body)?;
    let catalog = state.bus.catalog();
    let plan: Vec<Value> = request
        .topics
        .iter()
        .map(|topic| {
            let events: Vec<&str> = catalog
                .iter()
                .filter(|e| e.topic == topic)
                .map(|e| e.name)
                .collect();
            json!({ "topic": topic, "dlq_topic": dlq_topic(topic), "events": events })
        })
        .collect();
    let backend = state.bus.backend().name();
    let supported = state.config.provisioner.is_some();
    let result = match (&state.config.provisioner, request.dry_run) {
        (_, true) => Value::Null,
        (None, false) => {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("topic provisioning is not supported by the {backend} backend (no provisioner configured)"),
            ))
        }
        (Some(provisioner), false) => {
            // The backend's names: under the bus's topic prefix, if any.
            let mut physical = request.clone();
            if let Some(prefix) = state.bus.topic_prefix() {
                physical.topics = physical
                    .topics
                    .iter()
                    .map(|t| format!("{prefix}{t}"))
                    .collect();
            }
            tracing::info!(request = ?physical, "provisioning topics through the admin API");
            provisioner.provision(catalog.to_vec(), physical).await?
        }
    };
    Ok(Json(json!({
        "backend": backend,
        "supported": supported,
        "dry_run": request.dry_run,
        "settings": request,
        "plan": plan,
        "result": result,
    })))
}

/// [`Provisioner`] for the Kafka backend: turns a request into a
/// [`TopicPlan`](crate::backend::kafka::TopicPlan) over `defaults` (the request's settings
/// override them) and runs [`KafkaBackend::provision`](crate::backend::kafka::KafkaBackend::provision).
#[cfg(feature = "kafka")]
#[derive(Clone)]
pub struct KafkaProvisioner {
    backend: crate::backend::kafka::KafkaBackend,
    defaults: crate::backend::kafka::TopicSettings,
    plan: fn(crate::backend::kafka::TopicPlan) -> crate::backend::kafka::TopicPlan,
}

#[cfg(feature = "kafka")]
impl KafkaProvisioner {
    /// Provisions through `backend` with `defaults` for every topic.
    pub fn new(
        backend: crate::backend::kafka::KafkaBackend,
        defaults: crate::backend::kafka::TopicSettings,
    ) -> Self {
        KafkaProvisioner {
            backend,
            defaults,
            plan: |p| p,
        }
    }

    /// Adjusts every plan before it runs (retry tiers, dead-letter retention, what to do on a
    /// difference).
    pub fn with_plan(
        mut self,
        adjust: fn(crate::backend::kafka::TopicPlan) -> crate::backend::kafka::TopicPlan,
    ) -> Self {
        self.plan = adjust;
        self
    }

    fn settings(
        &self,
        request: &ProvisionRequest,
    ) -> Result<crate::backend::kafka::TopicSettings, Error> {
        use crate::backend::kafka::Compression;
        let mut settings = self.defaults.clone();
        if let Some(partitions) = request.partitions {
            settings.partitions = i32::try_from(partitions)
                .map_err(|_| Error::config("partitions", format!("{partitions} is too many")))?;
        }
        if let Some(replication) = request.replication {
            settings.replication_factor = Some(i32::from(replication));
        }
        if let Some(retention) = request.retention {
            settings.retention = Some(retention);
        }
        match request.compression.as_deref() {
            None => {}
            Some("producer") => {
                settings.compression = None;
                settings
                    .configs
                    .insert("compression.type".to_owned(), "producer".to_owned());
            }
            Some(name) => {
                settings.compression = Some(Compression::parse(name).ok_or_else(|| {
                    Error::config("compression", format!("`{name}` is not a Kafka codec"))
                })?);
            }
        }
        Ok(settings)
    }
}

#[cfg(feature = "kafka")]
impl Provisioner for KafkaProvisioner {
    fn provision(
        &self,
        catalog: Vec<CatalogEntry>,
        request: ProvisionRequest,
    ) -> BoxFuture<'static, Result<Value, Error>> {
        let this = self.clone();
        Box::pin(async move {
            let settings = this.settings(&request)?;
            let entries: Vec<CatalogEntry> = catalog
                .into_iter()
                .filter(|e| request.topics.iter().any(|t| t == e.topic))
                .collect();
            let plan = (this.plan)(crate::backend::kafka::TopicPlan::from_catalog(
                &entries, settings,
            ));
            let report = this.backend.provision(&plan).await?;
            Ok(json!({
                "created": report.created,
                "unchanged": report.unchanged,
                "altered": report.altered,
                "differences": report.differences.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }))
        })
    }
}
