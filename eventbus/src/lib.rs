//! # eventbus
//!
//! Typed domain events over Kafka, Redis Streams or memory, with the reliability machinery
//! teams otherwise write by hand: an inbox that drops duplicates, bounded retries with backoff,
//! a dead-letter queue with the failure's reason, per-key ordering under concurrency, and
//! graceful shutdown.
//!
//! ```
//! use eventbus::{event, subscriber, Bus, Context, Envelope, HandlerResult};
//! use eventbus::backend::memory::MemoryBackend;
//!
//! #[event(name = "approval.granted", version = 1, key = approval_id)]
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct ApprovalGranted { approval_id: String }
//!
//! #[subscriber("approval.*", group = "notifier")]
//! async fn notify(ctx: Context, env: Envelope<ApprovalGranted>) -> HandlerResult {
//!     println!("{} granted (attempt {})", env.data.approval_id, ctx.attempt());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventbus::Error> {
//! let bus = Bus::builder()
//!     .backend(MemoryBackend::new())
//!     .subscribe(notify)
//!     .start()
//!     .await?;
//! bus.publish(ApprovalGranted { approval_id: "a-1".into() }).await?;
//! bus.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | default | what it enables |
//! |---|---|---|
//! | `runtime-tokio` | yes | [`runtime::TokioRuntime`]; Redis, Kafka and sqlx on tokio |
//! | `runtime-smol` | no | [`runtime::SmolRuntime`]; Redis, Kafka and sqlx on smol |
//! | `inventory` | yes | automatic collection of `#[subscriber]` functions |
//! | `redis` | no | `backend::redis`: Redis Streams backend, Redis inbox, pub/sub |
//! | `redis-tls`, `redis-tls-smol` | no | `rediss://` for the Redis backend (on tokio, on smol) |
//! | `postgres` | no | `outbox` and SQL inbox on PostgreSQL |
//! | `sqlite` | no | `outbox` and SQL inbox on SQLite |
//! | `kafka` | no | `backend::kafka`: Kafka backend over rdkafka |
//! | `kafka-ssl`, `kafka-ssl-vendored`, `kafka-gssapi`, `kafka-zstd` | no | rdkafka TLS/SASL, Kerberos, zstd |
//! | `admin` | no | `admin`: HTTP server, dashboard (on tokio; from smol on a thread of its own) |
//! | `opentelemetry` | no | `observability::otel`: OpenTelemetry trace bridge |

#[cfg(all(
    any(feature = "redis", feature = "postgres", feature = "sqlite"),
    not(any(feature = "runtime-tokio", feature = "runtime-smol"))
))]
compile_error!(
    "the `redis`, `postgres` and `sqlite` features need an executor: enable `runtime-tokio` \
     (default) or `runtime-smol`"
);

#[cfg(feature = "admin")]
pub mod admin;
pub mod aggregate;
pub mod asyncapi;
pub mod backend;
pub mod bus;
pub mod circuit;
pub mod clock;
#[cfg(feature = "config")]
pub mod config;
pub mod context;
pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod event;
pub mod extensions;
pub mod handler;
pub mod inbox;
pub mod observability;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod outbox;
pub mod pattern;
pub mod pipeline;
#[cfg(feature = "platform-events")]
pub mod platform_events;
pub mod publisher;
pub mod replay;
pub mod retry;
pub mod runtime;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod saga;
pub mod subscription;
pub mod testing;
pub mod upcast;
mod wire;

mod hash_tables;
mod shared_names;

mod consumer;
mod consumer_control;
mod ready;
#[cfg(any(feature = "redis", feature = "kafka"))]
mod redact;
mod rfc3339;

pub use bus::{Bus, BusBuilder, ShutdownReport};
pub use context::Context;
pub use envelope::{Envelope, Headers, RawEnvelope};
pub use error::{DecodeError, Error};
pub use event::{CatalogEntry, Event, EventGroup, FieldInfo, Payload};
pub use eventbus_macros::{catalog, event, saga, subscriber, EventGroup};
pub use extensions::Extensions;
pub use handler::{ErrorKind, Handler, HandlerError, HandlerResult};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use outbox::{Outbox, SqlInbox};
pub use publisher::Publisher;
pub use retry::{Backoff, RetryPolicy, Terminal};
pub use subscription::{IntoSubscription, NewerVersions, SubscriberOptions, Subscription};
pub use upcast::Upcaster;
pub use uuid::Uuid;

/// Items the macros' generated code refers to. Not public API: may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::decode_event;
    pub use crate::pattern::{const_matches, const_matches_all};
    pub use crate::subscription::Registration;
    pub use crate::upcast::upcast_with;
    #[cfg(feature = "inventory")]
    pub use inventory;
    pub use serde_json;
    pub use serde_json::value::RawValue;
    pub use std::time::Duration;
}

/// Registers a subscription builder at link time (no-op without the `inventory` feature).
#[cfg(feature = "inventory")]
#[doc(hidden)]
#[macro_export]
macro_rules! __register_subscriber {
    ($make:expr) => {
        $crate::__private::inventory::submit! {
            $crate::__private::Registration { make: $make }
        }
    };
}

/// Registers a subscription builder at link time (no-op without the `inventory` feature).
#[cfg(not(feature = "inventory"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __register_subscriber {
    ($make:expr) => {};
}
