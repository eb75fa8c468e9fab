//! Prometheus metrics of a bus, in the text exposition format.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `event_published_total` | counter | `service`, `topic` |
//! | `event_publish_failures_total` | counter | `service`, `topic` |
//! | `event_handled_total` | counter | `service`, `topic`, `group`, `outcome` (`handled`, `duplicate`, `skipped`, `filtered`, `dead_lettered`, `discarded`, `deferred`, `unsettled`) |
//! | `event_failed_total` | counter | `service`, `topic`, `group` (failed handler calls) |
//! | `event_retried_total` | counter | `service`, `topic`, `group` |
//! | `event_dead_lettered_total` | counter | `service`, `topic`, `group` |
//! | `event_handler_duration_seconds` | histogram | `service`, `topic`, `group` |
//! | `event_consumer_lag_seconds` | gauge | `service`, `topic` (age of the last handled event) |
//! | `event_consumer_lag_messages` | gauge | `service`, `group`, `stream` |
//! | `event_outbox_backlog` | gauge | `service` |
//! | `event_publish_lag_seconds` | gauge | `service` (age of the oldest unpublished outbox row) |
//! | `event_dlq_size` | gauge | `service`, `topic` |
//! | `event_circuit_state` | gauge | `service`, `channel` (0 closed, 1 half-open, 2 open) |
//! | `eventbus_groups_recreated_total` | counter | `service` |
//! | `event_dead_letter_payload_omitted_total` | counter | `service`, `topic`, `group` (dead letters stored without their payload) |
//! | `event_parked_keys` | gauge | `service`, `topic`, `group` (keys parked by `park_keys`) |
//! | `event_park_overflow_total` | counter | `service`, `topic`, `group` (keys not parked: the cap was reached) |

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::hash_tables::FoldMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    service: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    service: String,
    topic: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    service: String,
    saga: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    topic: String,
    group: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    service: String,
    group: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    service: String,
    channel: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// The metrics of one service's bus. Cheap to share (`Arc`); every bus has one, readable with
/// [`Bus::metrics`](crate::Bus::metrics).
pub struct Metrics {
    service: String,
    registry: Mutex<Registry>,
    published: Family<TopicLabels, Counter>,
    publish_failures: Family<TopicLabels, Counter>,
    handled: Family<OutcomeLabels, Counter>,
    failed: Family<GroupLabels, Counter>,
    retried: Family<GroupLabels, Counter>,
    dead_lettered: Family<GroupLabels, Counter>,
    handler_duration: Family<GroupLabels, Histogram, fn() -> Histogram>,
    consumer_lag_seconds: Family<TopicLabels, FloatGauge>,
    consumer_lag_messages: Family<LagLabels, Gauge>,
    outbox_backlog: Family<ServiceLabel, Gauge>,
    publish_lag_seconds: Family<ServiceLabel, FloatGauge>,
    dlq_size: Family<TopicLabels, Gauge>,
    circuit_state: Family<ChannelLabels, Gauge>,
    groups_recreated: Family<ServiceLabel, Counter>,
    parked_keys: Family<GroupLabels, Gauge>,
    payload_omitted: Family<GroupLabels, Counter>,
    park_overflow: Family<GroupLabels, Counter>,
    saga_steps: Family<SagaLabels, Counter>,
    /// Backends whose own counters are exported at every scrape.
    backends: Arc<Mutex<Vec<Arc<dyn crate::backend::Backend>>>>,
    /// The series every delivery touches, by topic then group: looked up without building a
    /// label set (four `String`s) per event.
    per_delivery: RwLock<FoldMap<String, FoldMap<String, Arc<DeliverySeries>>>>,
    /// The `published` counter of each topic, so a publish finds it without building its
    /// labels.
    published_by_topic: RwLock<FoldMap<String, Counter>>,
}

/// Handles on the series one (topic, group) pair updates for every delivery. The handles share
/// their values with the families they came from. A delivery looks them up once
/// ([`Metrics::series`]) for all it records.
pub(crate) struct DeliverySeries {
    handled: Counter,
    failed: Counter,
    handler_duration: Histogram,
    consumer_lag_seconds: FloatGauge,
}

impl std::fmt::Debug for DeliverySeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliverySeries").finish_non_exhaustive()
    }
}

impl DeliverySeries {
    /// A handled delivery, `age` old when handled.
    pub(crate) fn handled(&self, age: Duration) {
        self.handled.inc();
        self.consumer_lag_seconds.set(age.as_secs_f64());
    }

    /// One handler call of `duration`, failed or not.
    pub(crate) fn handler_call(&self, duration: Duration, failed: bool) {
        self.handler_duration.observe(duration.as_secs_f64());
        if failed {
            self.failed.inc();
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Empty metrics labelled with `service`.
    pub fn new(service: impl Into<String>) -> Self {
        let m = Metrics {
            service: service.into(),
            registry: Mutex::new(Registry::default()),
            published: Family::default(),
            publish_failures: Family::default(),
            handled: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            handler_duration: Family::new_with_constructor(duration_histogram),
            consumer_lag_seconds: Family::default(),
            consumer_lag_messages: Family::default(),
            outbox_backlog: Family::default(),
            publish_lag_seconds: Family::default(),
            dlq_size: Family::default(),
            circuit_state: Family::default(),
            groups_recreated: Family::default(),
            parked_keys: Family::default(),
            payload_omitted: Family::default(),
            park_overflow: Family::default(),
            saga_steps: Family::default(),
            backends: Arc::default(),
            per_delivery: RwLock::default(),
            published_by_topic: RwLock::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            m.register(&mut r);
        }
        m
    }

    /// Registers every series in `registry` as well, so an application exposes ours beside its
    /// own from one registry (the values are shared: both show the same counts). The
    /// backend's own counters come along as a collector read at each encode.
    ///
    /// ```
    /// use eventbus::observability::prometheus_client::{self, registry::Registry};
    ///
    /// let metrics = eventbus::observability::Metrics::new("orders");
    /// let mut registry = Registry::default();
    /// metrics.register(&mut registry);
    /// metrics.published("order.created", 2);
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains(r#"event_published_total{service="orders",topic="order.created"} 2"#));
    /// ```
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "event_published",
            "Events accepted by the backend",
            self.published.clone(),
        );
        r.register(
            "event_publish_failures",
            "Publish calls that failed",
            self.publish_failures.clone(),
        );
        r.register(
            "event_handled",
            "Deliveries by final outcome",
            self.handled.clone(),
        );
        r.register("event_failed", "Failed handler calls", self.failed.clone());
        r.register(
            "event_retried",
            "Retries after a failed handler call",
            self.retried.clone(),
        );
        r.register(
            "event_dead_lettered",
            "Events sent to the dead-letter queue",
            self.dead_lettered.clone(),
        );
        r.register(
            "event_handler_duration_seconds",
            "Duration of one handler call",
            self.handler_duration.clone(),
        );
        r.register(
            "event_consumer_lag_seconds",
            "Age of the last handled event at handling time",
            self.consumer_lag_seconds.clone(),
        );
        r.register(
            "event_consumer_lag_messages",
            "Messages not yet delivered to a group",
            self.consumer_lag_messages.clone(),
        );
        r.register(
            "event_outbox_backlog",
            "Outbox rows waiting to be published",
            self.outbox_backlog.clone(),
        );
        r.register(
            "event_publish_lag_seconds",
            "Age of the oldest unpublished outbox row",
            self.publish_lag_seconds.clone(),
        );
        r.register(
            "event_dlq_size",
            "Messages in a dead-letter topic",
            self.dlq_size.clone(),
        );
        r.register(
            "event_circuit_state",
            "Publish circuit: 0 closed, 1 half-open, 2 open",
            self.circuit_state.clone(),
        );
        r.register(
            "event_dead_letter_payload_omitted",
            "Dead letters stored without their payload (publishing it failed)",
            self.payload_omitted.clone(),
        );
        r.register(
            "event_parked_keys",
            "Keys parked beside a dead letter (park_keys)",
            self.parked_keys.clone(),
        );
        r.register(
            "event_park_overflow",
            "Keys not parked because the parking lot was full",
            self.park_overflow.clone(),
        );
        r.register(
            "event_saga_steps",
            "Saga steps by outcome: applied, conflict (retried), completed (instance already \
             ended), missing (no instance yet)",
            self.saga_steps.clone(),
        );
        r.register(
            "eventbus_groups_recreated",
            "Consumer groups re-created after they vanished",
            self.groups_recreated.clone(),
        );
        r.register_collector(Box::new(BackendCounters {
            service: self.service.clone(),
            backends: self.backends.clone(),
        }));
    }

    /// The service label.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Exports the [counters](crate::backend::Backend::counters) `backend` keeps itself with
    /// every [`encode`](Self::encode) (the bus does this for its backend).
    pub fn export_backend(&self, backend: Arc<dyn crate::backend::Backend>) {
        let mut backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if !backends.iter().any(|b| Arc::ptr_eq(b, &backend)) {
            backends.push(backend);
        }
    }

    /// Every series in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        drop(registry);
        out
    }

    fn topic(&self, topic: &str) -> TopicLabels {
        TopicLabels {
            service: self.service.clone(),
            topic: topic.to_owned(),
        }
    }

    fn group(&self, topic: &str, group: &str) -> GroupLabels {
        GroupLabels {
            service: self.service.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Counts `n` events published to `topic`.
    pub fn published(&self, topic: &str, n: u64) {
        {
            let cache = self
                .published_by_topic
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(counter) = cache.get(topic) {
                counter.inc_by(n);
                return;
            }
        }
        let counter = self.published.get_or_create(&self.topic(topic)).clone();
        counter.inc_by(n);
        self.published_by_topic
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), counter);
    }

    /// Counts a failed publish call to `topic`.
    pub fn publish_failed(&self, topic: &str) {
        self.publish_failures
            .get_or_create(&self.topic(topic))
            .inc();
    }

    /// The per-delivery series of `topic` and `group`, created on first use; a delivery keeps
    /// them for all it records.
    pub(crate) fn series(&self, topic: &str, group: &str) -> Arc<DeliverySeries> {
        {
            let cache = self.per_delivery.read().unwrap_or_else(|p| p.into_inner());
            if let Some(series) = cache.get(topic).and_then(|groups| groups.get(group)) {
                return series.clone();
            }
        }
        let labels = self.group(topic, group);
        let series = Arc::new(DeliverySeries {
            handled: self
                .handled
                .get_or_create(&OutcomeLabels {
                    service: self.service.clone(),
                    topic: topic.to_owned(),
                    group: group.to_owned(),
                    outcome: "handled".to_owned(),
                })
                .clone(),
            failed: self.failed.get_or_create(&labels).clone(),
            handler_duration: self.handler_duration.get_or_create(&labels).clone(),
            consumer_lag_seconds: self
                .consumer_lag_seconds
                .get_or_create(&self.topic(topic))
                .clone(),
        });
        let mut cache = self.per_delivery.write().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(topic.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_insert(series)
            .clone()
    }

    /// Counts a handled delivery of `topic` in `group` and sets the topic's consumer lag to
    /// `age` (how old the event was when handled): [`outcome`](Self::outcome) and
    /// [`consumer_lag`](Self::consumer_lag) in one look-up.
    pub fn handled(&self, topic: &str, group: &str, age: Duration) {
        self.series(topic, group).handled(age);
    }

    /// Counts a delivery's final outcome.
    pub fn outcome(&self, topic: &str, group: &str, outcome: &str) {
        if outcome == "handled" {
            self.series(topic, group).handled.inc();
            return;
        }
        self.handled
            .get_or_create(&OutcomeLabels {
                service: self.service.clone(),
                topic: topic.to_owned(),
                group: group.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if outcome == "dead_lettered" {
            self.dead_lettered
                .get_or_create(&self.group(topic, group))
                .inc();
        }
    }

    /// Records one handler call.
    pub fn handler_call(&self, topic: &str, group: &str, duration: Duration, failed: bool) {
        self.series(topic, group).handler_call(duration, failed);
    }

    /// Counts a saga step of `saga` that ended in `outcome`.
    pub fn saga_step(&self, saga: &str, outcome: &'static str) {
        self.saga_steps
            .get_or_create(&SagaLabels {
                service: self.service.clone(),
                saga: saga.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a retry.
    pub fn retried(&self, topic: &str, group: &str) {
        self.retried.get_or_create(&self.group(topic, group)).inc();
    }

    /// Sets the age of the last handled event of `topic`.
    pub fn consumer_lag(&self, topic: &str, age: Duration) {
        let cached = {
            let cache = self.per_delivery.read().unwrap_or_else(|p| p.into_inner());
            cache
                .get(topic)
                .and_then(|groups| groups.values().next())
                .map(|series| series.consumer_lag_seconds.clone())
        };
        if let Some(gauge) = cached {
            gauge.set(age.as_secs_f64());
            return;
        }
        self.consumer_lag_seconds
            .get_or_create(&self.topic(topic))
            .set(age.as_secs_f64());
    }

    /// Sets how many messages `group` has not received yet from `stream`.
    pub fn consumer_lag_messages(&self, group: &str, stream: &str, lag: u64) {
        self.consumer_lag_messages
            .get_or_create(&LagLabels {
                service: self.service.clone(),
                group: group.to_owned(),
                stream: stream.to_owned(),
            })
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Sets the outbox backlog and the age of its oldest row.
    pub fn outbox(&self, backlog: u64, oldest: Option<Duration>) {
        let label = ServiceLabel {
            service: self.service.clone(),
        };
        self.outbox_backlog
            .get_or_create(&label)
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        self.publish_lag_seconds
            .get_or_create(&label)
            .set(oldest.map(|d| d.as_secs_f64()).unwrap_or(0.0));
    }

    /// Sets the size of `topic`'s dead-letter queue.
    pub fn dlq_size(&self, topic: &str, size: u64) {
        self.dlq_size
            .get_or_create(&self.topic(topic))
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Sets a publish circuit's state: 0 closed, 1 half-open, 2 open.
    pub fn circuit(&self, channel: &str, state: i64) {
        self.circuit_state
            .get_or_create(&ChannelLabels {
                service: self.service.clone(),
                channel: channel.to_owned(),
            })
            .set(state);
    }

    /// Sets how many keys a subscription has parked.
    pub fn parked_keys(&self, topic: &str, group: &str, keys: usize) {
        self.parked_keys
            .get_or_create(&self.group_labels(topic, group))
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Counts a dead letter stored without its payload.
    pub fn dead_letter_payload_omitted(&self, topic: &str, group: &str) {
        self.payload_omitted
            .get_or_create(&self.group_labels(topic, group))
            .inc();
    }

    /// Counts a key that could not be parked because the parking lot was full.
    pub fn park_overflow(&self, topic: &str, group: &str) {
        self.park_overflow
            .get_or_create(&self.group_labels(topic, group))
            .inc();
    }

    fn group_labels(&self, topic: &str, group: &str) -> GroupLabels {
        GroupLabels {
            service: self.service.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Counts consumer groups re-created after they vanished.
    pub fn groups_recreated(&self, n: u64) {
        self.groups_recreated
            .get_or_create(&ServiceLabel {
                service: self.service.clone(),
            })
            .inc_by(n);
    }
}

/// Writes backend counters in the text format, one family per name.
/// The counters backends keep themselves ([`Backend::counters`](crate::backend::Backend::counters)),
/// read at each encode of a registry they are registered in.
struct BackendCounters {
    service: String,
    backends: Arc<Mutex<Vec<Arc<dyn crate::backend::Backend>>>>,
}

impl std::fmt::Debug for BackendCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendCounters")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Collector for BackendCounters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let (counters, gauges): (Vec<_>, Vec<_>) = {
            let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
            (
                backends.iter().flat_map(|b| b.counters()).collect(),
                backends.iter().flat_map(|b| b.gauges()).collect(),
            )
        };
        let counters: Vec<Series<'_>> = counters
            .iter()
            .map(|c: &crate::backend::BackendCounter| Series {
                family: c.name.strip_suffix("_total").unwrap_or(c.name),
                help: c.help,
                labels: &c.labels,
                value: Value::Counter(c.value),
            })
            .collect();
        let gauges: Vec<Series<'_>> = gauges
            .iter()
            .map(|g: &crate::backend::BackendGauge| Series {
                family: g.name,
                help: g.help,
                labels: &g.labels,
                value: Value::Gauge(g.value),
            })
            .collect();
        self.encode_families(&mut encoder, &counters, MetricType::Counter)?;
        self.encode_families(&mut encoder, &gauges, MetricType::Gauge)
    }
}

/// A backend series' value.
#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(i64),
}

/// One series a backend keeps, for the text format.
struct Series<'a> {
    family: &'static str,
    help: &'static str,
    labels: &'a [(&'static str, String)],
    value: Value,
}

impl BackendCounters {
    /// Writes `series`, one family per name, each with the `service` label first.
    fn encode_families(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        series: &[Series<'_>],
        kind: MetricType,
    ) -> std::fmt::Result {
        let mut families: Vec<(&str, &str)> = series.iter().map(|s| (s.family, s.help)).collect();
        families.sort_unstable();
        families.dedup_by_key(|(family, _)| *family);
        for (family, help) in families {
            let mut metric = encoder.encode_descriptor(family, help, None, kind)?;
            for one in series.iter().filter(|s| s.family == family) {
                let mut labels: Vec<(&str, &str)> = vec![("service", self.service.as_str())];
                labels.extend(one.labels.iter().map(|(k, v)| (*k, v.as_str())));
                let encoder = metric.encode_family(&labels)?;
                match one.value {
                    Value::Counter(n) => ConstCounter::new(n).encode(encoder)?,
                    Value::Gauge(n) => ConstGauge::new(n).encode(encoder)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn publishes_accumulate_per_topic_through_the_cached_counters() {
        let metrics = Metrics::new("s");
        metrics.published("orders", 2);
        metrics.published("orders", 3);
        metrics.published("payments", 1);
        metrics.published("orders", 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"event_published_total{service="s",topic="orders"} 6"#),
            "{text}"
        );
        assert!(
            text.contains(r#"event_published_total{service="s",topic="payments"} 1"#),
            "{text}"
        );
    }
}
