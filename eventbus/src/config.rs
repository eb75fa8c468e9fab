//! A service's whole configuration, read from a file and the environment with
//! [figment](https://docs.rs/figment) (feature `config`).
//!
//! Every setting of the bus, Redis, Kafka, the outbox and the admin server is a field of
//! [`ServiceConfig`]; durations are written as `"500ms"`, `"30s"`, `"15m"`, `"7d"`
//! ([humantime](https://docs.rs/humantime)). The service's name is set once, in `service`,
//! and used (through [`ServiceConfig::bus_builder`] and the outbox's
//! [`source`](crate::outbox::OutboxBuilder::source)) as the envelopes' `source`, the metrics'
//! `service` label, the outbox's source and the admin server's `/version` service, and as
//! Kafka's `client.id` unless that is set.
//!
//! Sources, later ones winning: the defaults, the file (TOML, or JSON when its name ends in
//! `.json`), then variables `EVENTBUS_<SECTION>__<SETTING>` (`__` between levels:
//! `EVENTBUS_SERVICE=orders`, `EVENTBUS_KAFKA__BROKERS=b1:9092`,
//! `EVENTBUS_KAFKA__CONSUMER__START_FROM=earliest`, `EVENTBUS_OUTBOX__POLL_INTERVAL=100ms`).
//! Unknown settings inside a section fail naming them; a bad value fails naming its path
//! (`kafka.consumer.session_timeout`).
//!
//! ```
//! # #[cfg(all(feature = "kafka", feature = "admin"))] {
//! use eventbus::config::ServiceConfig;
//!
//! let toml = r#"
//!     service = "orders"
//!
//!     [kafka]
//!     brokers = "127.0.0.1:9092"
//!     consumer = { start_from = "earliest", session_timeout = "10s" }
//!
//!     [admin]
//!     bind = "0.0.0.0:9090"
//! "#;
//! let config = ServiceConfig::from_toml(toml).unwrap();
//! assert_eq!(config.service, "orders");
//! let kafka = config.kafka.as_ref().unwrap();
//! assert_eq!(kafka.consumer.session_timeout, std::time::Duration::from_secs(10));
//! assert_eq!(kafka.client_id, "orders");
//! # }
//! ```

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Json, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::error::Error;

/// The environment variables' prefix: `EVENTBUS_<SECTION>__<SETTING>`.
pub const ENV_PREFIX: &str = "EVENTBUS_";

/// Settings of the bus itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// The largest envelope accepted, in bytes (default 1 MiB).
    pub max_payload: usize,
    /// How often consumer lag is read into the metrics (default 15 s).
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
    /// How long a graceful stop may take (default 30 s).
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Every topic and consumer group under this prefix in the backend
    /// ([`BusBuilder::topic_prefix`](crate::BusBuilder::topic_prefix); none by default).
    pub topic_prefix: Option<String>,
    /// One dead-letter topic for the whole service, ending in `.dlq`
    /// ([`BusBuilder::dead_letter_topic`](crate::BusBuilder::dead_letter_topic); by default
    /// each topic's `{topic}.dlq`).
    pub dead_letter_topic: Option<String>,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            max_payload: crate::pipeline::DecodeLayer::DEFAULT_MAX_PAYLOAD,
            lag_interval: crate::Bus::DEFAULT_LAG_INTERVAL,
            drain: Duration::from_secs(30),
            topic_prefix: None,
            dead_letter_topic: None,
        }
    }
}

/// A service's configuration: its name, the bus, the backends it uses, the outbox and the
/// admin server. Sections left out keep their defaults (a backend left out is not used).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServiceConfig {
    /// The service's name, set once (see the module documentation).
    pub service: String,
    /// The bus.
    pub bus: BusSettings,
    /// Redis Streams, when the service uses them.
    #[cfg(feature = "redis")]
    pub redis: Option<crate::backend::redis::RedisConfig>,
    /// Kafka, when the service uses it.
    #[cfg(feature = "kafka")]
    pub kafka: Option<crate::backend::kafka::KafkaConfig>,
    /// The outbox's dispatcher and cleanup.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub outbox: crate::outbox::OutboxConfig,
    /// The admin server.
    #[cfg(feature = "admin")]
    pub admin: crate::admin::AdminConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            service: "eventbus".to_owned(),
            bus: BusSettings::default(),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "kafka")]
            kafka: None,
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            outbox: crate::outbox::OutboxConfig::default(),
            #[cfg(feature = "admin")]
            admin: crate::admin::AdminConfig::default(),
        }
    }
}

impl ServiceConfig {
    /// Reads `file` (when given) and the `EVENTBUS_*__*` environment variables, then
    /// validates every section, failing with the name of the first bad setting.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(Error::config(
                    "config.file",
                    format!("{} does not exist", path.display()),
                ));
            }
            figment = if path.extension().is_some_and(|e| e == "json") {
                figment.merge(Json::file(path))
            } else {
                figment.merge(Toml::file(path))
            };
        }
        Self::from_figment(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Reads a TOML document (no environment), then validates.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    /// Extracts the configuration from any figment (your own providers), then validates.
    pub fn from_figment(figment: Figment) -> Result<Self, Error> {
        let mut config: ServiceConfig = figment.extract().map_err(|error| {
            let path = error.path.join(".");
            let setting = if path.is_empty() {
                "config".to_owned()
            } else {
                path
            };
            Error::config(setting, error.kind.to_string())
        })?;
        config.apply_service_name();
        config.validate()?;
        Ok(config)
    }

    /// Uses the service's name where a section leaves its own at the default.
    fn apply_service_name(&mut self) {
        #[cfg(feature = "kafka")]
        if let Some(kafka) = &mut self.kafka {
            if kafka.client_id == "eventbus" {
                kafka.client_id = self.service.clone();
            }
        }
    }

    /// Checks every section, naming the first bad setting.
    pub fn validate(&self) -> Result<(), Error> {
        if self.service.trim().is_empty() {
            return Err(Error::config("service", "is empty"));
        }
        if self.bus.max_payload == 0 {
            return Err(Error::config("bus.max_payload", "must be at least 1 byte"));
        }
        if self.bus.lag_interval.is_zero() {
            return Err(Error::config("bus.lag_interval", "must be positive"));
        }
        if let Some(prefix) = &self.bus.topic_prefix {
            crate::backend::prefixed::check_prefix(prefix, "bus.topic_prefix")?;
        }
        if let Some(name) = &self.bus.dead_letter_topic {
            crate::dead_letter::DeadLetterTopics::single(name.clone())
                .map_err(|e| Error::config("bus.dead_letter_topic", crate::error::chain(&e)))?;
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        #[cfg(feature = "kafka")]
        if let Some(kafka) = &self.kafka {
            kafka.validate()?;
        }
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        self.outbox.validate()?;
        #[cfg(feature = "admin")]
        self.admin.validate()?;
        Ok(())
    }

    /// A bus builder with the service's name and the bus settings applied.
    pub fn bus_builder(&self) -> crate::BusBuilder {
        let mut builder = crate::Bus::builder()
            .source(self.service.clone())
            .max_payload(self.bus.max_payload)
            .lag_interval(self.bus.lag_interval);
        if let Some(prefix) = &self.bus.topic_prefix {
            builder = builder.topic_prefix(prefix.clone());
        }
        if let Some(name) = &self.bus.dead_letter_topic {
            builder = builder.dead_letter_topic(name.clone());
        }
        builder
    }
}
