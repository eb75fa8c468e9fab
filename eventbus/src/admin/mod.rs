//! The admin HTTP server (feature `admin`): health, metrics, catalog, dead letters, replay,
//! consumer-group lag, topic provisioning and a dashboard, for operators and the `eventbus`
//! command-line tool.
//!
//! ```no_run
//! use std::sync::Arc;
//! use eventbus::admin::{self, AdminConfig};
//! use eventbus::backend::memory::MemoryBackend;
//! use eventbus::Bus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventbus::Error> {
//! let bus = Arc::new(Bus::builder().backend(MemoryBackend::new()).start().await?);
//! let config = AdminConfig::new("127.0.0.1:9090".parse().expect("address"))
//!     .token(std::env::var("EVENTBUS_ADMIN_TOKEN").ok())
//!     .version(env!("CARGO_PKG_VERSION"));
//! let server = admin::serve(bus.clone(), config).await?;
//! println!("admin on http://{}", server.local_addr());
//! # server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! | method and path | what | auth |
//! |---|---|---|
//! | `GET /live` | the process answers | never |
//! | `GET /ready` | backend and every readiness check reachable (503 if not), circuit breakers | never |
//! | `GET /version` | configured version, crate version, service, backend | never |
//! | `GET /metrics` | Prometheus / OpenMetrics text | reads |
//! | `GET /catalog` | the catalog as JSON, each event with its JSON schema | reads |
//! | `GET /catalog/asyncapi` | an AsyncAPI 3.0.0 document of the catalog | reads |
//! | `GET /api/stats` | counters per topic and bus totals, for the dashboard | reads |
//! | `GET /api/series` | published, handled, failed and dead-lettered per second per topic, and lag per group, over the last 15 minutes | reads |
//! | `GET /dlq?topic=&type=&error=&group=&offset=&limit=` | dead letters, filtered and paged, with sizes per topic | reads |
//! | `GET /dlq/{topic}` | the same for one topic | reads |
//! | `GET /dlq/{topic}/{id}` | one dead letter: metadata and its envelope | reads |
//! | `POST /dlq/{topic}/{id}/redrive` | redrive one | mutating |
//! | `POST /dlq/{topic}/redrive` | redrive `{"ids": [...]}` or `{"all": true}` (optionally filtered) | mutating |
//! | `DELETE /dlq/{topic}/{id}` | purge one | mutating |
//! | `DELETE /dlq/{topic}` | purge `{"ids": [...]}` or `{"all": true}` (optionally filtered) | mutating |
//! | `POST /replay` | start a replay: `{"topic", "from", "to", "type"?, "group"?}`; 202 with its id | mutating |
//! | `GET /replay`, `GET /replay/{id}` | replays and their live progress | reads |
//! | `GET /lag` | consumer-group lag | reads |
//! | `POST /topics/provision` | create topics / groups from the catalog (`dry_run` shows the plan) | mutating |
//! | `GET /`, `GET /dashboard` | the dashboard page | never (its data calls are) |
//!
//! **Auth**: mutating endpoints need `Authorization: Bearer <token>` with the configured
//! [`AdminConfig::token`]; without a configured token they are off (403). Reads are open
//! unless [`AdminConfig::protect_reads`] is set. A missing or wrong token is a 401.
//!
//! **Errors** are JSON: `{"error": "...", "field": "..."}`, `field` naming the parameter at
//! fault: 400 for bad input, 401/403 for auth, 404 for unknown ids, 501 for an operation the
//! backend does not offer, 502 when the backend failed.

mod auth;
mod catalog;
mod dashboard;
mod dlq;
mod error;
mod health;
mod host;
mod lag;
mod provision;
mod replay;
mod run;
mod series;
mod stats;
mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::bus::Bus;
use crate::error::Error;

pub use error::ApiError;
#[cfg(feature = "kafka")]
pub use provision::KafkaProvisioner;
pub use provision::{ProvisionRequest, Provisioner, COMPRESSIONS};
pub use run::{run_until, run_until_signal, shutdown_signal};

/// Environment variable read by [`AdminConfig::from_env`] for the listen address.
pub const BIND_ENV: &str = "EVENTBUS_ADMIN_BIND";
/// Environment variable read by [`AdminConfig::from_env`] for the bearer token.
pub const TOKEN_ENV: &str = "EVENTBUS_ADMIN_TOKEN";
/// Environment variable read by [`AdminConfig::from_env`]: `true` protects reads too.
pub const PROTECT_READS_ENV: &str = "EVENTBUS_ADMIN_PROTECT_READS";
/// Environment variable read by [`AdminConfig::from_env`] for the path prefix (`/ops`).
pub const PREFIX_ENV: &str = "EVENTBUS_ADMIN_PREFIX";

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;
/// Shortest accepted [`AdminConfig::series_interval`].
pub const MIN_SERIES_INTERVAL: Duration = Duration::from_millis(100);
/// Most readings an [`AdminConfig::series_window`] may hold.
pub const MAX_SERIES_POINTS: usize = 10_000;

/// A readiness check: `Ok` when the dependency is reachable, else why not.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// How the admin server listens and whom it lets in. Deserializable (`bind`, `token`,
/// `version`, `protect_reads`, `ready_timeout`, `dlq_gauge_interval`, `series_interval`,
/// `series_window`, `allowed_hosts`, `prefix`; durations such as `"2s"`); readiness checks
/// and the provisioner are code.
#[derive(Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    bind: SocketAddr,
    token: Option<String>,
    version: String,
    protect_reads: bool,
    #[serde(with = "humantime_serde")]
    ready_timeout: Duration,
    #[serde(with = "humantime_serde")]
    dlq_gauge_interval: Duration,
    #[serde(with = "humantime_serde")]
    series_interval: Duration,
    #[serde(with = "humantime_serde")]
    series_window: Duration,
    #[serde(skip)]
    checks: Vec<(String, ReadinessCheck)>,
    #[serde(skip)]
    provisioner: Option<Arc<dyn Provisioner>>,
    allowed_hosts: Vec<String>,
    prefix: Option<String>,
}

/// Listens on `127.0.0.1:9090`, no token, version `unknown`.
impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig::new(SocketAddr::from(([127, 0, 0, 1], 9090)))
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("version", &self.version)
            .field("protect_reads", &self.protect_reads)
            .field("ready_timeout", &self.ready_timeout)
            .field("dlq_gauge_interval", &self.dlq_gauge_interval)
            .field("series_interval", &self.series_interval)
            .field("series_window", &self.series_window)
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("provisioner", &self.provisioner.is_some())
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl AdminConfig {
    /// Listens on `bind`, no token (mutating endpoints off), version `unknown`.
    pub fn new(bind: SocketAddr) -> Self {
        AdminConfig {
            bind,
            token: None,
            version: "unknown".to_owned(),
            protect_reads: false,
            ready_timeout: Duration::from_secs(2),
            dlq_gauge_interval: Duration::from_secs(15),
            series_interval: Duration::from_secs(5),
            series_window: Duration::from_secs(15 * 60),
            checks: Vec::new(),
            provisioner: None,
            allowed_hosts: Vec::new(),
            prefix: None,
        }
    }

    /// From the environment: [`BIND_ENV`] (default `127.0.0.1:9090`), [`TOKEN_ENV`] and
    /// [`PROTECT_READS_ENV`]; the version is `version`.
    pub fn from_env(version: impl Into<String>) -> Result<Self, Error> {
        let bind = match std::env::var(BIND_ENV) {
            Ok(text) => text
                .parse()
                .map_err(|e| Error::config(BIND_ENV, format!("`{text}` is not an address: {e}")))?,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 9090)),
        };
        let protect_reads = match std::env::var(PROTECT_READS_ENV).as_deref() {
            Ok("1" | "true" | "yes") => true,
            Ok("0" | "false" | "no" | "") | Err(_) => false,
            Ok(other) => {
                return Err(Error::config(
                    PROTECT_READS_ENV,
                    format!("`{other}` is not true or false"),
                ))
            }
        };
        let mut config = AdminConfig::new(bind)
            .token(std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
            .version(version)
            .protect_reads(protect_reads);
        if let Some(prefix) = std::env::var(PREFIX_ENV).ok().filter(|p| !p.is_empty()) {
            config = config.prefix(prefix);
        }
        config.validate()?;
        Ok(config)
    }

    /// The bearer token protecting mutating endpoints; `None` turns them off.
    pub fn token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token.map(Into::into);
        self
    }

    /// The version `/version` reports (your service's).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Also requires the token on read endpoints (dead letters and metrics can hold personal
    /// data); `/live`, `/ready`, `/version` and the dashboard page stay open.
    pub fn protect_reads(mut self, protect: bool) -> Self {
        self.protect_reads = protect;
        self
    }

    /// A host name clients use to reach this server (`events.internal`): while reads are
    /// open, requests addressed by a name are served only for `localhost` and the names given
    /// here (IP addresses always), against DNS rebinding.
    pub fn allow_host(mut self, name: impl Into<String>) -> Self {
        self.allowed_hosts.push(name.into());
        self
    }

    /// How long `/ready` waits for each check (2 s by default).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How often `/metrics` re-reads the dead-letter topics to refresh `event_dlq_size`
    /// (15 s by default; listing them refreshes it too).
    pub fn dlq_gauge_interval(mut self, interval: Duration) -> Self {
        self.dlq_gauge_interval = interval;
        self
    }

    /// How often the dashboard's time series read the bus's counters and lag (5 s by
    /// default; at least 100 ms). The first router built for a bus starts the sampling, on the
    /// bus's executor; it stops with the bus.
    pub fn series_interval(mut self, interval: Duration) -> Self {
        self.series_interval = interval;
        self
    }

    /// How much of the time series is kept (15 minutes by default; at most 10 000 readings).
    pub fn series_window(mut self, window: Duration) -> Self {
        self.series_window = window;
        self
    }

    /// Adds a readiness check `/ready` runs, such as the outbox database:
    /// `config.readiness_check("database", move || { let pool = pool.clone(); Box::pin(async move { ... }) })`.
    pub fn readiness_check<F>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }

    /// Adds the readiness check `database`: acquires a connection from `pool` and pings it
    /// (for the outbox's or the SQL inbox's database: `outbox.pool().clone()`).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn database<DB: sqlx::Database>(self, pool: sqlx::Pool<DB>) -> Self {
        self.readiness_check("database", move || {
            let pool = pool.clone();
            Box::pin(async move {
                let mut connection = pool.acquire().await.map_err(|e| crate::error::chain(&e))?;
                sqlx::Connection::ping(&mut *connection)
                    .await
                    .map_err(|e| crate::error::chain(&e))
            })
        })
    }

    /// The backend hook behind `POST /topics/provision` (Kafka topics, Redis groups).
    pub fn provisioner(mut self, provisioner: impl Provisioner) -> Self {
        self.provisioner = Some(Arc::new(provisioner));
        self
    }

    /// Serves everything under `prefix` (`/ops`: the dashboard at `/ops/dashboard`, probes at
    /// `/ops/live`), for a server reached through a path-routing proxy. [`router`] ignores it:
    /// nest the router yourself there, the dashboard finds its API under any prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The path prefix [`serve`] mounts the API under, if any.
    pub fn path_prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Whether a bearer token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The listen address.
    pub fn bind(&self) -> SocketAddr {
        self.bind
    }

    /// Checks the settings, naming the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(token) = &self.token {
            if token.len() < MIN_TOKEN_LEN {
                return Err(Error::config(
                    "admin.token",
                    format!("is {} characters; use at least {MIN_TOKEN_LEN} (or none to turn mutating endpoints off)", token.len()),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::config(
                    "admin.token",
                    "may hold only visible ASCII characters (no spaces or control characters)",
                ));
            }
        }
        if self.version.trim().is_empty() {
            return Err(Error::config("admin.version", "is empty"));
        }
        if let Some(prefix) = &self.prefix {
            let segments_ok = prefix
                .strip_prefix('/')
                .is_some_and(|rest| !rest.is_empty() && rest.split('/').all(|s| !s.is_empty()));
            let chars_ok = prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
            if !segments_ok || !chars_ok {
                return Err(Error::config(
                    "admin.prefix",
                    format!(
                        "`{prefix}` is not a path like `/ops` (a leading `/`, no trailing `/`, \
                         letters, digits, `-_.~`)"
                    ),
                ));
            }
        }
        if self.ready_timeout.is_zero() {
            return Err(Error::config("admin.ready_timeout", "must be positive"));
        }
        if self.series_interval < MIN_SERIES_INTERVAL {
            return Err(Error::config(
                "admin.series_interval",
                format!(
                    "is {:?}; use at least {MIN_SERIES_INTERVAL:?}",
                    self.series_interval
                ),
            ));
        }
        if self.series_window < self.series_interval {
            return Err(Error::config(
                "admin.series_window",
                "is shorter than admin.series_interval",
            ));
        }
        if self.series_window.as_secs_f64() / self.series_interval.as_secs_f64()
            > MAX_SERIES_POINTS as f64
        {
            return Err(Error::config(
                "admin.series_window",
                format!("holds more than {MAX_SERIES_POINTS} readings of admin.series_interval"),
            ));
        }
        if self.protect_reads && self.token.is_none() {
            return Err(Error::config(
                "admin.protect_reads",
                "needs a token: without one nothing could read the protected endpoints",
            ));
        }
        for (name, _) in &self.checks {
            if name.trim().is_empty() || name == "backend" {
                return Err(Error::config(
                    "admin.readiness_check",
                    format!("name `{name}` is empty or reserved"),
                ));
            }
        }
        Ok(())
    }
}

/// What the handlers share.
pub(crate) struct AdminState {
    pub(crate) bus: Arc<Bus>,
    pub(crate) config: AdminConfig,
    pub(crate) started: DateTime<Utc>,
    pub(crate) replays: replay::Replays,
    pub(crate) dlq_refreshed: Mutex<Option<Instant>>,
    /// The backend's dead-letter topics and when they were listed ([`topics::known`]).
    pub(crate) dlq_topics: Mutex<Option<(Instant, Vec<String>)>>,
    pub(crate) series: Arc<crate::observability::series::SeriesRecorder>,
}

pub(crate) type State = Arc<AdminState>;

/// The admin API over `bus`, to mount in your own server or run with [`serve`].
///
/// Fails with [`Error::Config`] naming the setting when `config` is invalid.
pub fn router(bus: Arc<Bus>, config: AdminConfig) -> Result<Router, Error> {
    config.validate()?;
    let series = bus.series(config.series_interval, config.series_window);
    let state: State = Arc::new(AdminState {
        bus,
        series,
        config,
        started: Utc::now(),
        replays: replay::Replays::default(),
        dlq_refreshed: Mutex::new(None),
        dlq_topics: Mutex::new(None),
    });

    let mutating = Router::new()
        .route("/dlq/{topic}/{id}/redrive", post(dlq::redrive_one))
        .route("/dlq/{topic}/redrive", post(dlq::redrive_many))
        .route("/dlq/{topic}/{id}", delete(dlq::purge_one))
        .route("/dlq/{topic}", delete(dlq::purge_many))
        .route("/replay", post(replay::start))
        .route("/topics/provision", post(provision::provision))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    let reads = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/catalog", get(catalog::catalog))
        .route("/catalog/asyncapi", get(catalog::asyncapi))
        .route("/api/stats", get(stats::stats))
        .route("/api/series", get(series::series))
        .route("/replay", get(replay::list))
        .route("/replay/{id}", get(replay::get))
        .route("/lag", get(lag::lag))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_read,
        ));

    // Dead letters hold user data: the token is needed whenever one is configured.
    let user_data = Router::new()
        .route("/dlq", get(dlq::list))
        .route("/dlq/{topic}", get(dlq::list_topic))
        .route("/dlq/{topic}/{id}", get(dlq::inspect))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token_if_set,
        ));

    let open = Router::new()
        .route("/live", get(health::live))
        .route("/ready", get(health::ready))
        .route("/version", get(health::version))
        .route("/", get(dashboard::page))
        .route("/dashboard", get(dashboard::page));

    Ok(open
        .merge(reads)
        .merge(user_data)
        .merge(mutating)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            host::check_host,
        ))
        .with_state(state))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's result, sent when it stopped; awaiting it needs no tokio runtime.
    done: futures::channel::oneshot::Receiver<std::io::Result<()>>,
    /// The thread running the server's own tokio runtime ([`AdminServer::start_on_thread`]).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the admin API on a thread of its own with a single-threaded tokio runtime, for
    /// a service that runs on another executor (smol). [`AdminServer::shutdown`] stops the
    /// server and joins the thread, from any executor.
    ///
    /// ```no_run
    /// # fn run(bus: std::sync::Arc<eventbus::Bus>) -> Result<(), eventbus::Error> {
    /// use eventbus::admin::{AdminConfig, AdminServer};
    ///
    /// smol::block_on(async {
    ///     let admin = AdminServer::start_on_thread(bus, AdminConfig::default())?;
    ///     // ... the service runs ...
    ///     admin.shutdown().await;
    ///     Ok::<(), eventbus::Error>(())
    /// })
    /// # }
    /// ```
    pub fn start_on_thread(bus: Arc<Bus>, config: AdminConfig) -> Result<AdminServer, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::config("admin", format!("cannot start a tokio runtime: {e}")))?;
        let (bound, listening) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("eventbus-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match Listening::bind(bus, config).await {
                        Ok(listening) => {
                            let (server, serving) = listening.into_parts();
                            if bound.send(Ok(server)).is_ok() {
                                serving.await;
                            }
                        }
                        Err(error) => {
                            bound.send(Err(error)).ok();
                        }
                    }
                });
            })
            .map_err(|e| Error::config("admin", format!("cannot start its thread: {e}")))?;
        let mut server = listening
            .recv()
            .map_err(|_| Error::config("admin", "its thread ended before it listened"))??;
        server.thread = Some(thread);
        Ok(server)
    }

    /// Stops taking connections, lets requests in flight finish, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.done).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "admin server failed"),
            Err(futures::channel::oneshot::Canceled) => {
                tracing::warn!("admin server task ended without a result")
            }
        }
        if let Some(thread) = self.thread.take() {
            // The runtime thread ends right after it forwarded the result.
            crate::runtime::unblock(move || thread.join().ok()).await;
        }
    }
}

/// Binds `config`'s address and serves the admin API in a task of the current tokio runtime
/// (see [`AdminServer::start_on_thread`] for other executors).
pub async fn serve(bus: Arc<Bus>, config: AdminConfig) -> Result<AdminServer, Error> {
    let (server, serving) = Listening::bind(bus, config).await?.into_parts();
    tokio::spawn(serving);
    Ok(server)
}

/// A bound listener and the app it will serve.
struct Listening {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: Router,
}

impl Listening {
    async fn bind(bus: Arc<Bus>, config: AdminConfig) -> Result<Listening, Error> {
        let bind = config.bind;
        let prefix = config.prefix.clone();
        let app = router(bus, config)?;
        let app = match prefix {
            Some(prefix) => Router::new().nest(&prefix, app),
            None => app,
        };
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| Error::config("admin.bind", format!("cannot listen on {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::config("admin.bind", format!("no local address: {e}")))?;
        tracing::info!(%addr, "admin server listening");
        Ok(Listening {
            listener,
            addr,
            app,
        })
    }

    /// The handle, and the future that serves until the handle stops it and then reports.
    fn into_parts(self) -> (AdminServer, impl Future<Output = ()> + Send + 'static) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = futures::channel::oneshot::channel();
        let serving = async move {
            let outcome = axum::serve(self.listener, self.app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            finished.send(outcome).ok();
        };
        let server = AdminServer {
            addr: self.addr,
            stop: Some(stop),
            done,
            thread: None,
        };
        (server, serving)
    }
}

/// Query parameters, checked against the names an endpoint accepts.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string; unknown or repeated names are a 400 naming them.
    pub(crate) fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = match query {
            None | Some("") => Vec::new(),
            Some(q) => {
                axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
                    &format!("/?{q}")
                        .parse()
                        .map_err(|_| ApiError::bad_request("query", "malformed query string"))?,
                )
                .map_err(|e| {
                    ApiError::bad_request("query", format!("malformed query string: {e}"))
                })?
                .0
            }
        };
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(
                    name.clone(),
                    format!(
                        "unknown parameter `{name}`; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad_request(
                    name.clone(),
                    format!("parameter `{name}` is given twice"),
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// A non-empty text parameter.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A number parameter in `0..=max`, `default` when absent.
    pub(crate) fn number(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.text(name) {
            None => Ok(default),
            Some(text) => {
                let n: usize = text.parse().map_err(|_| {
                    ApiError::bad_request(
                        name,
                        format!("`{name}` must be a non-negative integer, got `{text}`"),
                    )
                })?;
                if n > max {
                    return Err(ApiError::bad_request(
                        name,
                        format!("`{name}` must be at most {max}, got {n}"),
                    ));
                }
                Ok(n)
            }
        }
    }
}

/// A JSON object body, read field by field so errors name the field.
pub(crate) struct BodyFields {
    fields: Map<String, Value>,
}

impl BodyFields {
    /// Parses `body` (empty means `{}`), rejecting fields not in `allowed`.
    pub(crate) fn parse(body: &[u8], allowed: &[&str]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(BodyFields { fields: Map::new() });
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("body", format!("the body is not valid JSON: {e}"))
        })?;
        let Value::Object(fields) = value else {
            return Err(ApiError::bad_request(
                "body",
                "the body must be a JSON object",
            ));
        };
        if let Some(name) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(
                name.clone(),
                format!("unknown field `{name}`; allowed: {}", allowed.join(", ")),
            ));
        }
        Ok(BodyFields { fields })
    }

    /// Whether the body has `name` (and it is not null).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.fields.get(name).is_some_and(|v| !v.is_null())
    }

    /// Field `name` as `T`, `None` when absent or null; `what` describes the expected value.
    pub(crate) fn get<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| ApiError::bad_request(name, format!("`{name}` must be {what}: {e}"))),
        }
    }

    /// Like [`BodyFields::get`] for a required field.
    pub(crate) fn require<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<T, ApiError> {
        self.get(name, what)?
            .ok_or_else(|| ApiError::bad_request(name, format!("`{name}` is required ({what})")))
    }
}

/// Parses a duration such as `500ms`, `30s`, `15m`, `12h`, `7d` or `2w` (humantime's syntax,
/// as everywhere durations are written).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_setting() {
        let base = AdminConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        assert!(base.clone().validate().is_ok());
        let err = base
            .clone()
            .token(Some("short"))
            .validate()
            .expect_err("short token");
        assert!(err.to_string().contains("admin.token"), "{err}");
        let err = base
            .clone()
            .token(Some("with a space in the token"))
            .validate()
            .expect_err("space");
        assert!(err.to_string().contains("admin.token"), "{err}");
        let err = base.clone().version(" ").validate().expect_err("version");
        assert!(err.to_string().contains("admin.version"), "{err}");
        let err = base
            .clone()
            .protect_reads(true)
            .validate()
            .expect_err("reads without token");
        assert!(err.to_string().contains("admin.protect_reads"), "{err}");
        let err = base
            .clone()
            .readiness_check("backend", || Box::pin(async { Ok(()) }))
            .validate()
            .expect_err("reserved");
        assert!(err.to_string().contains("admin.readiness_check"), "{err}");
        assert!(!format!("{:?}", base.token(Some("0123456789abcdef"))).contains("0123456789abcdef"));
    }

    #[test]
    fn params_reject_unknown_repeated_and_out_of_range() {
        let p = Params::parse(Some("limit=10&offset=5"), &["limit", "offset"]).expect("valid");
        assert_eq!(p.number("limit", 50, 500).expect("limit"), 10);
        assert_eq!(p.number("offset", 0, usize::MAX).expect("offset"), 5);
        let e = Params::parse(Some("limt=10"), &["limit"])
            .err()
            .expect("unknown");
        assert_eq!(e.field(), Some("limt"));
        let e = Params::parse(Some("limit=1&limit=2"), &["limit"])
            .err()
            .expect("twice");
        assert_eq!(e.field(), Some("limit"));
        let p = Params::parse(Some("limit=501"), &["limit"]).expect("parsed");
        assert_eq!(
            p.number("limit", 50, 500).expect_err("too big").field(),
            Some("limit")
        );
        let p = Params::parse(Some("limit=-1"), &["limit"]).expect("parsed");
        assert_eq!(
            p.number("limit", 50, 500).expect_err("negative").field(),
            Some("limit")
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(parse_duration("3 parsecs"), None);
    }
}
