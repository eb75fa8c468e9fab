//! Observability: Prometheus metrics and W3C trace context. Every publish and every handler
//! call also runs in a `tracing` span (`eventbus.publish`, `eventbus.handle`) carrying the
//! event id, type, topic, group, attempt, correlation id, tenant and trace id. With feature
//! `opentelemetry`, the `otel` module joins the `traceparent` to OpenTelemetry traces.

#[cfg(feature = "admin")]
pub(crate) mod exposition;
pub(crate) mod lag;
mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod otel;
#[cfg(feature = "admin")]
pub(crate) mod series;
mod trace_context;

pub(crate) use metrics::DeliverySeries;
pub use metrics::Metrics;
/// The Prometheus client the metrics are kept in, for [`Metrics::register`] into a registry
/// of the same version.
pub use prometheus_client;
pub use trace_context::{TraceParent, TRACEPARENT};
