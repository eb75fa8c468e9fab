//! Topic provisioning from the catalog: every event topic with its partitions, replication
//! factor, retention and compression, plus its retry-tier topics and its dead-letter topic.
//!
//! Idempotent: missing topics are created; existing ones are checked against the plan, and
//! every difference (partitions, replication factor, a config value) is reported, never
//! silently ignored: by default provisioning fails naming the topic and setting
//! ([`OnDifference::Fail`]); it can log them ([`OnDifference::Warn`]) or fix what Kafka can
//! change in place ([`OnDifference::Alter`]: configs, and more partitions, never fewer).
//!
//! ```no_run
//! # async fn run(backend: eventbus::backend::kafka::KafkaBackend, catalog: &[eventbus::CatalogEntry]) -> Result<(), eventbus::Error> {
//! use std::time::Duration;
//! use eventbus::backend::kafka::{TopicPlan, TopicSettings};
//!
//! const DAY: Duration = Duration::from_secs(24 * 3600);
//! let plan = TopicPlan::from_catalog(catalog, TopicSettings::new(6).retention(7 * DAY))
//!     .topic("order-events", TopicSettings::new(12).retention(7 * DAY))
//!     .topic("inventory-events", TopicSettings::new(6).retention(3 * DAY))
//!     .topic("customer-events", TopicSettings::new(8).retention(30 * DAY));
//! let report = backend.provision(&plan).await?;
//! println!("created {:?}", report.created);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{
    AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::error::RDKafkaErrorCode;

use super::config::Compression;
use super::retry_tiers::tier_topic;
use super::topics::describe;
use super::Inner;
use crate::error::Error;
use crate::event::CatalogEntry;
use crate::wire::dlq_topic;

/// The settings of one event topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSettings {
    /// Partitions: the ceiling of consumer parallelism in a group.
    pub partitions: i32,
    /// Replication factor; `None` leaves it to the broker's default.
    pub replication_factor: Option<i32>,
    /// `retention.ms`; `None` leaves it to the broker's default.
    pub retention: Option<Duration>,
    /// `compression.type` stored by the broker; `None` keeps what the producer sent.
    pub compression: Option<Compression>,
    /// Any other topic config (`cleanup.policy`, `min.insync.replicas`, ...).
    pub configs: BTreeMap<String, String>,
}

impl TopicSettings {
    /// `partitions` partitions, other settings from the broker.
    pub fn new(partitions: i32) -> Self {
        TopicSettings {
            partitions,
            replication_factor: None,
            retention: None,
            compression: None,
            configs: BTreeMap::new(),
        }
    }

    /// Sets `retention.ms`.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, factor: i32) -> Self {
        self.replication_factor = Some(factor);
        self
    }

    /// Sets `compression.type`.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// Sets another topic config.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }

    fn all_configs(&self) -> BTreeMap<String, String> {
        let mut configs = self.configs.clone();
        if let Some(retention) = self.retention {
            configs.insert("retention.ms".into(), retention.as_millis().to_string());
        }
        if let Some(compression) = self.compression {
            configs.insert("compression.type".into(), compression.as_str().into());
        }
        configs
    }
}

/// What to do when an existing topic differs from the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDifference {
    /// Fail, naming every difference (the default).
    #[default]
    Fail,
    /// Log each difference as a warning and list it in the report.
    Warn,
    /// Change configs and add partitions to match; what cannot change (fewer partitions,
    /// replication factor) is reported as a difference, and fails.
    Alter,
}

/// The topics to provision.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPlan {
    topics: BTreeMap<String, TopicSettings>,
    retry_tiers: Vec<Duration>,
    dead_letters: bool,
    dlq_retention: Option<Duration>,
    on_difference: OnDifference,
}

impl Default for TopicPlan {
    fn default() -> Self {
        TopicPlan {
            topics: BTreeMap::new(),
            retry_tiers: [60, 300, 1800].map(Duration::from_secs).to_vec(),
            dead_letters: true,
            dlq_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            on_difference: OnDifference::Fail,
        }
    }
}

/// One topic as it should exist.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor (`None`: the broker's default).
    pub replication_factor: Option<i32>,
    /// Topic configs.
    pub configs: BTreeMap<String, String>,
}

impl TopicPlan {
    /// An empty plan: retry tiers 1 min / 5 min / 30 min, dead-letter topics kept 30 days.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every topic of the catalog, with `defaults`.
    pub fn from_catalog(entries: &[CatalogEntry], defaults: TopicSettings) -> Self {
        let mut plan = Self::new();
        for entry in entries {
            plan.topics
                .entry(entry.topic.to_owned())
                .or_insert_with(|| defaults.clone());
        }
        plan
    }

    /// Adds a topic or replaces its settings.
    pub fn topic(mut self, name: impl Into<String>, settings: TopicSettings) -> Self {
        self.topics.insert(name.into(), settings);
        self
    }

    /// The retry-tier delays each topic gets a `{topic}.retry.{delay}` topic for (match the
    /// subscriptions' `delayed_retries`).
    pub fn retry_tiers(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.retry_tiers = delays.into_iter().collect();
        self
    }

    /// Whether each topic gets a `{topic}.dlq` topic (default on).
    pub fn dead_letters(mut self, on: bool) -> Self {
        self.dead_letters = on;
        self
    }

    /// `retention.ms` of the dead-letter topics.
    pub fn dlq_retention(mut self, retention: Option<Duration>) -> Self {
        self.dlq_retention = retention;
        self
    }

    /// What to do about existing topics that differ.
    pub fn on_difference(mut self, on_difference: OnDifference) -> Self {
        self.on_difference = on_difference;
        self
    }

    /// Every topic of the plan: the event topics, their retry tiers (same partitions,
    /// replication and retention) and their dead-letter topics (same partitions and
    /// replication, the dead-letter retention).
    pub fn specs(&self) -> Vec<TopicSpec> {
        let mut specs = Vec::new();
        for (name, settings) in &self.topics {
            let configs = settings.all_configs();
            specs.push(TopicSpec {
                name: name.clone(),
                partitions: settings.partitions,
                replication_factor: settings.replication_factor,
                configs: configs.clone(),
            });
            let tiers: BTreeSet<String> = self
                .retry_tiers
                .iter()
                .map(|d| tier_topic(name, *d))
                .collect();
            for tier in tiers {
                specs.push(TopicSpec {
                    name: tier,
                    partitions: settings.partitions,
                    replication_factor: settings.replication_factor,
                    configs: configs.clone(),
                });
            }
            if self.dead_letters {
                let mut configs = settings.configs.clone();
                if let Some(retention) = self.dlq_retention {
                    configs.insert("retention.ms".into(), retention.as_millis().to_string());
                }
                specs.push(TopicSpec {
                    name: dlq_topic(name),
                    partitions: settings.partitions,
                    replication_factor: settings.replication_factor,
                    configs,
                });
            }
        }
        specs
    }

    fn validate(&self) -> Result<(), Error> {
        for (name, settings) in &self.topics {
            let valid = !name.is_empty()
                && name.len() <= 200
                && name != "."
                && name != ".."
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(Error::config(
                    format!("kafka.topics[{name}]"),
                    "is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`, at most 200 characters)",
                ));
            }
            if settings.partitions < 1 {
                return Err(Error::config(
                    format!("kafka.topics[{name}].partitions"),
                    "must be at least 1",
                ));
            }
            if settings.replication_factor.is_some_and(|r| r < 1) {
                return Err(Error::config(
                    format!("kafka.topics[{name}].replication_factor"),
                    "must be at least 1",
                ));
            }
            if settings.retention.is_some_and(|r| r.is_zero()) {
                return Err(Error::config(
                    format!("kafka.topics[{name}].retention"),
                    "must be positive",
                ));
            }
        }
        if self.retry_tiers.iter().any(|d| d.is_zero()) {
            return Err(Error::config(
                "kafka.topics.retry_tiers",
                "a tier delay must be positive",
            ));
        }
        Ok(())
    }
}

/// One way an existing topic differs from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDifference {
    /// The topic.
    pub topic: String,
    /// What differs: `partitions`, `replication_factor` or a config name.
    pub setting: String,
    /// What the plan says.
    pub expected: String,
    /// What the cluster has (`unset` for a config the broker does not report).
    pub actual: String,
}

impl fmt::Display for TopicDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic `{}`: {} is {} on the cluster, the plan says {}",
            self.topic, self.setting, self.actual, self.expected
        )
    }
}

/// What provisioning did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Topics created.
    pub created: Vec<String>,
    /// Existing topics matching the plan.
    pub unchanged: Vec<String>,
    /// Existing topics changed to match ([`OnDifference::Alter`]).
    pub altered: Vec<String>,
    /// Differences left in place.
    pub differences: Vec<TopicDifference>,
}

fn admin_error(operation: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> Error {
    move |e| Error::backend("kafka", operation, e)
}

/// Creates, checks and (on request) alters the plan's topics.
pub(crate) async fn provision(
    inner: &Arc<Inner>,
    plan: &TopicPlan,
) -> Result<ProvisionReport, Error> {
    plan.validate()?;
    let specs = plan.specs();
    let existing = describe(inner, None).await?;
    let options = AdminOptions::new()
        .operation_timeout(Some(inner.config.operation_timeout))
        .request_timeout(Some(inner.config.operation_timeout));
    let mut report = ProvisionReport::default();

    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .collect();
    if !missing.is_empty() {
        let configs: Vec<Vec<(&str, &str)>> = missing
            .iter()
            .map(|s| {
                s.configs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .collect();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .zip(&configs)
            .map(|(s, configs)| NewTopic {
                name: &s.name,
                num_partitions: s.partitions,
                replication: TopicReplication::Fixed(s.replication_factor.unwrap_or(-1)),
                config: configs.clone(),
            })
            .collect();
        for result in inner
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(admin_error("create topics"))?
        {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, "created topic");
                    report.created.push(name);
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(name),
                Err((name, code)) => {
                    return Err(Error::backend(
                        "kafka",
                        "create topics",
                        format!("topic `{name}`: {code}"),
                    ))
                }
            }
        }
    }

    let present: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| existing.contains_key(&s.name))
        .collect();
    if !present.is_empty() {
        let resources: Vec<ResourceSpecifier<'_>> = present
            .iter()
            .map(|s| ResourceSpecifier::Topic(&s.name))
            .collect();
        let described = inner
            .admin
            .describe_configs(&resources, &options)
            .await
            .map_err(admin_error("describe topic configs"))?;
        let mut alter_configs: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        let mut add_partitions: Vec<(String, usize)> = Vec::new();
        for (spec, described) in present.iter().zip(described) {
            let resource = described.map_err(|code| {
                Error::backend(
                    "kafka",
                    "describe topic configs",
                    format!("topic `{}`: {code}", spec.name),
                )
            })?;
            let info = &existing[&spec.name];
            let mut differs = Vec::new();
            if info.partitions != spec.partitions {
                differs.push(TopicDifference {
                    topic: spec.name.clone(),
                    setting: "partitions".into(),
                    expected: spec.partitions.to_string(),
                    actual: info.partitions.to_string(),
                });
            }
            if let Some(rf) = spec.replication_factor {
                if rf != info.replication_factor {
                    differs.push(TopicDifference {
                        topic: spec.name.clone(),
                        setting: "replication_factor".into(),
                        expected: rf.to_string(),
                        actual: info.replication_factor.to_string(),
                    });
                }
            }
            let mut config_differs = false;
            for (key, expected) in &spec.configs {
                let actual = resource.get(key).and_then(|e| e.value.clone());
                if actual.as_deref() != Some(expected.as_str()) {
                    config_differs = true;
                    differs.push(TopicDifference {
                        topic: spec.name.clone(),
                        setting: key.clone(),
                        expected: expected.clone(),
                        actual: actual.unwrap_or_else(|| "unset".into()),
                    });
                }
            }
            if differs.is_empty() {
                report.unchanged.push(spec.name.clone());
                continue;
            }
            if plan.on_difference == OnDifference::Alter {
                let mut fixed = false;
                if config_differs {
                    // AlterConfigs replaces the whole topic config: keep the topic's own
                    // settings, with the plan's on top.
                    let mut configs: BTreeMap<String, String> = resource
                        .entries
                        .iter()
                        .filter(|e| e.source == rdkafka::admin::ConfigSource::DynamicTopic)
                        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
                        .collect();
                    configs.extend(spec.configs.clone());
                    alter_configs.push((spec.name.clone(), configs));
                    differs
                        .retain(|d| d.setting == "partitions" || d.setting == "replication_factor");
                    fixed = true;
                }
                if info.partitions < spec.partitions {
                    add_partitions.push((spec.name.clone(), spec.partitions as usize));
                    differs.retain(|d| d.setting != "partitions");
                    fixed = true;
                }
                if fixed {
                    report.altered.push(spec.name.clone());
                }
            }
            report.differences.extend(differs);
        }
        if !alter_configs.is_empty() {
            let alters: Vec<AlterConfig<'_>> = alter_configs
                .iter()
                .map(|(name, configs)| {
                    configs.iter().fold(
                        AlterConfig::new(ResourceSpecifier::Topic(name)),
                        |a, (k, v)| a.set(k, v),
                    )
                })
                .collect();
            for result in inner
                .admin
                .alter_configs(&alters, &options)
                .await
                .map_err(admin_error("alter topic configs"))?
            {
                if let Err((resource, code)) = result {
                    return Err(Error::backend(
                        "kafka",
                        "alter topic configs",
                        format!("{resource:?}: {code}"),
                    ));
                }
            }
        }
        if !add_partitions.is_empty() {
            let new: Vec<NewPartitions<'_>> = add_partitions
                .iter()
                .map(|(n, c)| NewPartitions::new(n, *c))
                .collect();
            for result in inner
                .admin
                .create_partitions(&new, &options)
                .await
                .map_err(admin_error("create partitions"))?
            {
                if let Err((name, code)) = result {
                    return Err(Error::backend(
                        "kafka",
                        "create partitions",
                        format!("topic `{name}`: {code}"),
                    ));
                }
            }
        }
    }
    inner.topics.remember(
        report
            .created
            .iter()
            .chain(&report.unchanged)
            .chain(&report.altered)
            .cloned(),
    );

    if !report.differences.is_empty() {
        if plan.on_difference == OnDifference::Warn {
            for difference in &report.differences {
                tracing::warn!(%difference, "existing topic differs from the plan");
            }
        } else {
            let first = &report.differences[0];
            let all: Vec<String> = report.differences.iter().map(ToString::to_string).collect();
            return Err(Error::config(
                format!("kafka.topics[{}].{}", first.topic, first.setting),
                format!("existing topics differ from the plan: {}", all.join("; ")),
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn a_plan_expands_to_topics_tiers_and_dead_letters() {
        let plan = TopicPlan::new()
            .topic(
                "order-events",
                TopicSettings::new(12)
                    .retention(7 * DAY)
                    .compression(Compression::Lz4),
            )
            .retry_tiers([Duration::from_secs(60), Duration::from_secs(300)]);
        let specs = plan.specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "order-events",
                "order-events.retry.1m",
                "order-events.retry.5m",
                "order-events.dlq"
            ]
        );
        assert!(specs.iter().all(|s| s.partitions == 12));
        assert_eq!(specs[0].configs["retention.ms"], "604800000");
        assert_eq!(specs[0].configs["compression.type"], "lz4");
        assert_eq!(
            specs[3].configs["retention.ms"],
            (30 * DAY).as_millis().to_string()
        );
    }

    #[test]
    fn bad_plans_name_the_topic_and_setting() {
        let err = TopicPlan::new()
            .topic("orders", TopicSettings::new(0))
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("kafka.topics[orders].partitions"),
            "{err}"
        );
        let err = TopicPlan::new()
            .topic("a b", TopicSettings::new(1))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("kafka.topics[a b]"), "{err}");
    }
}
