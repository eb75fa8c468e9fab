//! A running bus on the in-memory backend with the admin server on a free loopback port, shared
//! by the admin API, dashboard and CLI tests.
//!
//! The bus has two consumer groups on `order.*`: `billing`, which fails permanently while
//! [`Fixture::broken`] is set (so its deliveries are dead-lettered), and `audit`, which
//! records every delivery with its replay flag. Publish circuits are on.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::admin::{AdminConfig, AdminServer};
use eventbus::backend::memory::MemoryBackend;
use eventbus::circuit::CircuitConfig;
use eventbus::{
    event, Bus, CatalogEntry, Context, Envelope, Event, HandlerError, Subscription, Uuid,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The token the fixture configures unless told otherwise.
pub const TOKEN: &str = "test-token-0123456789";

#[event(name = "order.created", version = 1, topic = "orders", key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderCreated {
    pub order_id: String,
}

#[event(name = "order.cancelled", version = 1, topic = "orders", key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderCancelled {
    pub order_id: String,
}

#[event(name = "user.signed_up", version = 2, topic = "users")]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct UserSignedUp {
    pub email: String,
    pub referrer: Option<String>,
}

/// The catalog the bus is built with.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry::of::<OrderCreated>(),
    CatalogEntry::of::<OrderCancelled>(),
    CatalogEntry::of::<UserSignedUp>(),
];

/// What the `audit` group saw: (event id, event type, replay flag).
pub type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

/// A bus and its admin server.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub bus: Arc<Bus>,
    pub backend: MemoryBackend,
    server: Option<AdminServer>,
    pub base: String,
    pub broken: Arc<AtomicBool>,
    pub audit: Seen,
    pub billing: Seen,
    agent: ureq::Agent,
    /// Sent with every [`Fixture::get`] when the server has a token (dead-letter reads need
    /// it whenever one is configured).
    read_token: Option<&'static str>,
}

impl Fixture {
    /// With [`TOKEN`] configured.
    pub fn start() -> Fixture {
        Self::start_with(|c| c.token(Some(TOKEN)))
    }

    /// With the admin configuration `configure` makes from a default one.
    pub fn start_with(configure: impl FnOnce(AdminConfig) -> AdminConfig) -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let backend = MemoryBackend::new();
        let broken = Arc::new(AtomicBool::new(true));
        let audit: Seen = Arc::default();
        let billing: Seen = Arc::default();
        let bus = rt.block_on({
            let (backend, broken, audit, billing) = (
                backend.clone(),
                broken.clone(),
                audit.clone(),
                billing.clone(),
            );
            async move {
                Bus::builder()
                    .backend(backend)
                    .source("admin-test")
                    .catalog(CATALOG)
                    .circuit_breaker(CircuitConfig::default())
                    .subscribe(
                        Subscription::new("order.*", move |ctx: Context, _: Envelope<Value>| {
                            let (broken, billing) = (broken.clone(), billing.clone());
                            async move {
                                billing.lock().expect("lock").push((
                                    ctx.event_id().to_string(),
                                    ctx.event_type().to_owned(),
                                    ctx.is_replay(),
                                ));
                                if broken.load(Ordering::SeqCst) {
                                    Err(HandlerError::permanent(
                                        "card declined by the payment provider",
                                    ))
                                } else {
                                    Ok(())
                                }
                            }
                        })
                        .group("billing")
                        .with_name("billing"),
                    )
                    .subscribe(
                        Subscription::new("order.*", move |ctx: Context, _: Envelope<Value>| {
                            let audit = audit.clone();
                            async move {
                                audit.lock().expect("lock").push((
                                    ctx.event_id().to_string(),
                                    ctx.event_type().to_owned(),
                                    ctx.is_replay(),
                                ));
                                Ok(())
                            }
                        })
                        .group("audit")
                        .with_name("audit"),
                    )
                    .start()
                    .await
                    .expect("bus starts")
            }
        });
        let bus = Arc::new(bus);
        let config = configure(
            AdminConfig::new("127.0.0.1:0".parse().expect("address")).version("9.9.9-test"),
        );
        let read_token = config.has_token().then_some(TOKEN);
        let prefix = config.path_prefix().unwrap_or_default().to_owned();
        let server = rt
            .block_on(eventbus::admin::serve(bus.clone(), config))
            .expect("admin server starts");
        let base = format!("http://{}{prefix}", server.local_addr());
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Fixture {
            rt,
            bus,
            backend,
            server: Some(server),
            base,
            broken,
            audit,
            billing,
            read_token,
            agent,
        }
    }

    /// Publishes on the bus.
    pub fn publish<E: Event>(&self, event: E) -> Uuid {
        self.rt.block_on(self.bus.publish(event)).expect("publish")
    }

    /// Waits until every delivery is settled.
    pub fn settle(&self) {
        let start = Instant::now();
        while self.backend.outstanding() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "deliveries did not settle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
        while self.backend.outstanding() > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Publishes `n` failing orders and waits until they are dead-lettered; returns their ids.
    pub fn dead_orders(&self, n: usize) -> Vec<Uuid> {
        let ids = (0..n)
            .map(|i| {
                self.publish(OrderCreated {
                    order_id: format!("o-{i}"),
                })
            })
            .collect();
        self.settle();
        ids
    }

    /// `GET path` without a token: (status, JSON body or the text as a JSON string).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, self.read_token, None)
    }

    /// A request with an optional bearer token and JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.raw(method, path, token, body);
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Like [`Fixture::request`] with the body as text.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String) {
        let url = format!("{}{}", self.base, path);
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" | "DELETE" if body.is_none() => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(auth) = &auth {
                    req = req.header("Authorization", auth);
                }
                req.call()
            }
            _ => {
                let mut req = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    "DELETE" => self.agent.delete(&url).force_send_body(),
                    other => panic!("unsupported method {other}"),
                };
                if let Some(auth) = &auth {
                    req = req.header("Authorization", auth);
                }
                match body {
                    Some(body) => req.send_json(body),
                    None => req.send_empty(),
                }
            }
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    }

    /// Response headers of `GET path`.
    pub fn header(&self, path: &str, name: &str) -> Option<String> {
        let response = self
            .agent
            .get(&format!("{}{}", self.base, path))
            .call()
            .expect("request");
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
        self.rt.block_on(self.bus.shutdown(Duration::from_secs(2)));
    }
}
