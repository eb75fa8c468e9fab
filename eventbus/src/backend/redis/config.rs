//! Redis backend settings, from code or from environment variables, validated at startup.

use std::collections::HashMap;
use std::time::Duration;

use crate::backend::env_vars::EnvVars;
use crate::error::Error;

/// How long entries stay in a stream. Applied on every `XADD` with approximate trimming
/// (`MINID ~` for age, `MAXLEN ~` for length), never by scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Drop entries older than this.

    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Keep at most about this many entries.
    pub max_len: Option<usize>,
}

impl Retention {
    /// Entries younger than `age`.
    pub fn max_age(age: Duration) -> Self {
        Retention {
            max_age: Some(age),
            max_len: None,
        }
    }

    /// At most about `len` entries.
    pub fn max_len(len: usize) -> Self {
        Retention {
            max_age: None,
            max_len: Some(len),
        }
    }
}

impl Default for Retention {
    /// 30 days and at most 10 million entries.
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            max_len: Some(10_000_000),
        }
    }
}

pub use crate::backend::StartFrom;

/// Settings of the Redis backend.
///
/// Defaults: prefix `eventbus`, 4 pooled connections, `BLOCK` 1 s, batches of 128, pending
/// entries claimed after 30 s idle (checked every 5 s), new streams discovered every 2 s,
/// retention 30 days / 10 M entries per stream, inbox keys kept 30 days, delayed retries moved
/// every 250 ms, new groups start from the latest entry.
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (feature `redis-tls`).
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// One stream per tenant and topic (`{prefix}:events:{tenant}:{topic}`) for events that
    /// carry a tenant.
    pub per_tenant_streams: bool,
    /// Multiplexed connections used for publishing and acknowledging.
    pub pool_size: usize,
    /// How long an `XREADGROUP` blocks waiting for entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Entries read per `XREADGROUP` / `XAUTOCLAIM`. A member holding partitions starts its
    /// next read while it still hands out the last one, so up to twice this many entries are
    /// read and pending for it beyond what its handlers hold.
    pub batch_size: usize,
    /// Pending entries idle this long are claimed from their (presumably dead) consumer.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How often a consumer looks for claimable entries.
    #[serde(with = "humantime_serde")]
    pub claim_interval: Duration,
    /// How often a consumer looks for new streams matching its pattern.
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Default retention of event streams.
    pub retention: Retention,
    /// Retention per topic, overriding the default.
    pub topic_retention: HashMap<String, Retention>,
    /// Retention of dead-letter and retry streams.
    pub dlq_retention: Retention,
    /// How long inbox entries live after their event was made (and at least an hour, or half
    /// of this if shorter, after the event was handled): at least the longest retention by age
    /// of an event stream (checked by [`RedisConfig::validate`]), so that no event still in a
    /// stream can be redelivered after the inbox forgot it. 30 days by default, like the
    /// default retention. Every member of a group must use the same value.
    #[serde(with = "humantime_serde")]
    pub inbox_ttl: Duration,
    /// How often due delayed retries are moved back to their group.
    #[serde(with = "humantime_serde")]
    pub delayed_poll: Duration,
    /// Where new groups start.
    pub start_from: StartFrom,
    /// Timeout of connecting and of each command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Partition streams per topic (1 by default: one stream per topic, the layout of
    /// unpartitioned topics). An event goes to the partition its key hashes to
    /// ([`partition_of`](super::partition_of)); unkeyed events are spread in turn. More
    /// partitions let more members of a group handle a topic at once.
    pub partitions: u32,
    /// Partition count per topic, overriding [`partitions`](Self::partitions).
    pub topic_partitions: HashMap<String, u32>,
    /// One active member per partition and group (true by default): members split the
    /// partitions between them, each holding a lease per partition, so events of one key are
    /// handled by one member, in order. `false` lets every member of a group read every stream
    /// (more parallelism on one stream, no order per key across members).
    pub exclusive_partitions: bool,
    /// How long a member's lease on a partition lasts without renewal (renewed every third of
    /// it): how long a dead member's partitions wait before another member takes them.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// `url` is a node of a Redis Cluster: the backend discovers the others and routes each
    /// command to the node owning its key. Needs `exclusive_partitions`.
    pub cluster: bool,
}

/// Shows the URL without its password.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("prefix", &self.prefix)
            .field("per_tenant_streams", &self.per_tenant_streams)
            .field("pool_size", &self.pool_size)
            .field("block", &self.block)
            .field("batch_size", &self.batch_size)
            .field("claim_idle", &self.claim_idle)
            .field("claim_interval", &self.claim_interval)
            .field("discovery_interval", &self.discovery_interval)
            .field("retention", &self.retention)
            .field("topic_retention", &self.topic_retention)
            .field("dlq_retention", &self.dlq_retention)
            .field("inbox_ttl", &self.inbox_ttl)
            .field("delayed_poll", &self.delayed_poll)
            .field("start_from", &self.start_from)
            .field("command_timeout", &self.command_timeout)
            .field("partitions", &self.partitions)
            .field("topic_partitions", &self.topic_partitions)
            .field("exclusive_partitions", &self.exclusive_partitions)
            .field("lease_ttl", &self.lease_ttl)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Every default, the URL unset (`redis.url` must then come from the configuration).
impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig::new("")
    }
}

impl RedisConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "eventbus".into(),
            per_tenant_streams: false,
            pool_size: 4,
            block: Duration::from_secs(1),
            batch_size: 128,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(2),
            retention: Retention::default(),
            topic_retention: HashMap::new(),
            dlq_retention: Retention::default(),
            inbox_ttl: Duration::from_secs(30 * 24 * 3600),
            delayed_poll: Duration::from_millis(250),
            start_from: StartFrom::Latest,
            command_timeout: Duration::from_secs(5),
            partitions: 1,
            topic_partitions: HashMap::new(),
            exclusive_partitions: true,
            lease_ttl: Duration::from_secs(10),
            cluster: false,
        }
    }

    /// The partition count of `topic`.
    pub fn partitions_of(&self, topic: &str) -> u32 {
        self.topic_partitions
            .get(topic)
            .copied()
            .unwrap_or(self.partitions)
    }

    /// Reads the settings from `EVENTBUS_REDIS_*` environment variables: `URL` (required),
    /// `PREFIX`, `PER_TENANT_STREAMS` (`true`/`false`), `POOL_SIZE`, `BLOCK_MS`, `BATCH_SIZE`,
    /// `CLAIM_IDLE_MS`, `CLAIM_INTERVAL_MS`, `RETENTION_DAYS`, `MAX_LEN`, `INBOX_TTL_SECS`,
    /// `PARTITIONS`, `LEASE_TTL_MS`, `START_FROM` (`earliest`/`latest`), `CLUSTER`
    /// (`true`/`false`).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`RedisConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let vars = EnvVars::new("EVENTBUS_REDIS_", lookup);
        let mut config = RedisConfig::new(vars.required("URL")?);
        if let Some(prefix) = vars.get("PREFIX") {
            config.prefix = prefix;
        }
        if let Some(on) = vars.flag("PER_TENANT_STREAMS")? {
            config.per_tenant_streams = on;
        }
        if let Some(n) = vars.number("POOL_SIZE")? {
            config.pool_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(d) = vars.millis("BLOCK_MS")? {
            config.block = d;
        }
        if let Some(n) = vars.number("BATCH_SIZE")? {
            config.batch_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(d) = vars.millis("CLAIM_IDLE_MS")? {
            config.claim_idle = d;
        }
        if let Some(d) = vars.millis("CLAIM_INTERVAL_MS")? {
            config.claim_interval = d;
        }
        if let Some(n) = vars.number("RETENTION_DAYS")? {
            config.retention.max_age = Some(Duration::from_secs(n.saturating_mul(24 * 3600)));
        }
        if let Some(n) = vars.number("MAX_LEN")? {
            config.retention.max_len = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(n) = vars.number("INBOX_TTL_SECS")? {
            config.inbox_ttl = Duration::from_secs(n);
        }
        if let Some(n) = vars.number("PARTITIONS")? {
            config.partitions = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(d) = vars.millis("LEASE_TTL_MS")? {
            config.lease_ttl = d;
        }
        if let Some(start) = vars.choice("START_FROM", StartFrom::CHOICES)? {
            config.start_from = start;
        }
        if let Some(on) = vars.flag("CLUSTER")? {
            config.cluster = on;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err(Error::config("redis.url", "is not set"));
        }
        let scheme_ok = url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://");
        if !scheme_ok {
            return Err(Error::config(
                "redis.url",
                format!("`{}` must start with redis:// or rediss://", redact(url)),
            ));
        }
        if url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(Error::config(
                "redis.url",
                "rediss:// needs the `redis-tls` feature of eventbus",
            ));
        }
        redis::Client::open(url).map_err(|e| {
            Error::config(
                "redis.url",
                format!("`{}` is not a valid Redis URL: {e}", redact(url)),
            )
        })?;
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(Error::config(format!("redis.{name}"), "must be positive"))
            } else {
                Ok(())
            }
        };
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(Error::config(
                "redis.prefix",
                "must be non-empty without spaces",
            ));
        }
        if !(1..=64).contains(&self.pool_size) {
            return Err(Error::config(
                "redis.pool_size",
                format!("{} is not in 1..=64", self.pool_size),
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config(
                "redis.batch_size",
                format!("{} is not in 1..=10000", self.batch_size),
            ));
        }
        positive("block", self.block)?;
        positive("claim_idle", self.claim_idle)?;
        positive("claim_interval", self.claim_interval)?;
        positive("discovery_interval", self.discovery_interval)?;
        positive("inbox_ttl", self.inbox_ttl)?;
        positive("delayed_poll", self.delayed_poll)?;
        positive("command_timeout", self.command_timeout)?;
        positive("lease_ttl", self.lease_ttl)?;
        if self.cluster && !self.exclusive_partitions {
            return Err(Error::config(
                "redis.exclusive_partitions",
                "a Redis Cluster needs exclusive partitions (a member reads one partition's stream at a time; a shared group would read streams of many slots in one command)",
            ));
        }
        for (name, n) in std::iter::once(("redis.partitions".to_owned(), self.partitions)).chain(
            self.topic_partitions
                .iter()
                .map(|(t, n)| (format!("redis.topic_partitions[{t}]"), *n)),
        ) {
            if !(1..=1024).contains(&n) {
                return Err(Error::config(name, format!("{n} is not in 1..=1024")));
            }
        }
        for (topic, retention) in std::iter::once(("*", &self.retention))
            .chain(self.topic_retention.iter().map(|(t, r)| (t.as_str(), r)))
        {
            if let Some(age) = retention.max_age.filter(|age| *age > self.inbox_ttl) {
                return Err(Error::config(
                    "redis.inbox_ttl",
                    format!(
                        "{:?} is shorter than the retention of `{topic}` ({age:?}): an event still \
                         in the stream could be redelivered after the inbox forgot it; make \
                         inbox_ttl at least as long",
                        self.inbox_ttl
                    ),
                ));
            }
        }
        if self.block >= self.command_timeout + Duration::from_secs(3600) {
            return Err(Error::config("redis.block", "is over an hour"));
        }
        for (topic, retention) in std::iter::once(("*", &self.retention))
            .chain(self.topic_retention.iter().map(|(t, r)| (t.as_str(), r)))
            .chain(std::iter::once(("dlq", &self.dlq_retention)))
        {
            if retention.max_age.is_none() && retention.max_len.is_none() {
                return Err(Error::config(
                    format!("redis.retention[{topic}]"),
                    "needs max_age or max_len: streams must not grow forever",
                ));
            }
            if retention.max_age == Some(Duration::ZERO) || retention.max_len == Some(0) {
                return Err(Error::config(
                    format!("redis.retention[{topic}]"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }

    /// The retention of `topic`.
    pub fn retention_of(&self, topic: &str) -> Retention {
        self.topic_retention
            .get(topic)
            .copied()
            .unwrap_or(self.retention)
    }
}

/// The URL with its password hidden, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_outlives_the_retention() {
        let mut c = RedisConfig::new("redis://127.0.0.1:6379");
        assert!(c.validate().is_ok(), "the defaults agree");
        c.topic_retention.insert(
            "orders".into(),
            Retention::max_age(Duration::from_secs(90 * 24 * 3600)),
        );
        let err = c
            .validate()
            .expect_err("inbox shorter than the orders retention");
        assert!(
            err.to_string().contains("redis.inbox_ttl") && err.to_string().contains("`orders`"),
            "{err}"
        );
        c.inbox_ttl = Duration::from_secs(90 * 24 * 3600);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn debug_hides_the_password() {
        let text = format!("{:?}", RedisConfig::new("redis://app:hunter2@cache:6379"));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://app:<redacted>@cache:6379"), "{text}");
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn reads_the_environment() {
        let c = RedisConfig::from_lookup(env(&[
            ("EVENTBUS_REDIS_URL", "redis://u:p@127.0.0.1:6379/2"),
            ("EVENTBUS_REDIS_BATCH_SIZE", "64"),
            ("EVENTBUS_REDIS_CLAIM_IDLE_MS", "1500"),
            ("EVENTBUS_REDIS_PER_TENANT_STREAMS", "true"),
        ]))
        .expect("valid");
        assert_eq!(c.batch_size, 64);
        assert_eq!(c.claim_idle, Duration::from_millis(1500));
        assert!(c.per_tenant_streams);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "EVENTBUS_REDIS_URL"),
            (&[("EVENTBUS_REDIS_URL", "http://x")], "redis.url"),
            (
                &[
                    ("EVENTBUS_REDIS_URL", "redis://h"),
                    ("EVENTBUS_REDIS_BATCH_SIZE", "-3"),
                ],
                "EVENTBUS_REDIS_BATCH_SIZE",
            ),
            (
                &[
                    ("EVENTBUS_REDIS_URL", "redis://h"),
                    ("EVENTBUS_REDIS_BATCH_SIZE", "0"),
                ],
                "redis.batch_size",
            ),
            (
                &[
                    ("EVENTBUS_REDIS_URL", "redis://h"),
                    ("EVENTBUS_REDIS_POOL_SIZE", "0"),
                ],
                "redis.pool_size",
            ),
            (
                &[
                    ("EVENTBUS_REDIS_URL", "redis://h"),
                    ("EVENTBUS_REDIS_CLAIM_IDLE_MS", "0"),
                ],
                "redis.claim_idle",
            ),
            (
                &[
                    ("EVENTBUS_REDIS_URL", "redis://h"),
                    ("EVENTBUS_REDIS_PER_TENANT_STREAMS", "yes"),
                ],
                "PER_TENANT_STREAMS",
            ),
        ];
        for (vars, setting) in cases {
            let err = RedisConfig::from_lookup(env(vars)).expect_err(setting);
            assert!(
                err.to_string().contains(setting),
                "{err} does not name {setting}"
            );
        }
    }

    #[test]
    fn passwords_are_not_echoed() {
        let mut c = RedisConfig::new("redis://user:secret@host:1/");
        c.url = "nope://user:secret@host".into();
        let err = c.validate().expect_err("bad scheme").to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn unbounded_retention_is_refused() {
        let mut c = RedisConfig::new("redis://h");
        c.topic_retention.insert(
            "orders".into(),
            Retention {
                max_age: None,
                max_len: None,
            },
        );
        let err = c.validate().expect_err("unbounded").to_string();
        assert!(err.contains("redis.retention[orders]"), "{err}");
    }
}
