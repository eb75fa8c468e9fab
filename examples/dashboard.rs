//! A service with traffic to look at: a steady stream of order events with some failures, and
//! the admin server with its dashboard. On the in-memory backend by default (no server
//! needed); on Redis when `EVENTBUS_REDIS_URL` is set.
//!
//! ```sh
//! cargo run --example dashboard
//! # dashboard: http://127.0.0.1:9090/dashboard
//! # admin token: … (enter it in the page to retry or delete dead letters)
//! ```
//!
//! What happens: every 25th order's card is declined (a permanent failure: straight to the
//! dead-letter queue); retried from the page, the order goes through, as after the customer
//! fixed their card. Every `DASHBOARD_OUTAGE_EVERY` (60 s; `0` for never) the payment gateway
//! times out for 10 s: those failures are retried, and the ones still failing are
//! dead-lettered, so the dead-letter chart rises and falls.
//!
//! Settings (environment): `EVENTBUS_ADMIN_BIND` (default `127.0.0.1:9090`),
//! `EVENTBUS_ADMIN_TOKEN` (default: a fresh one, printed), `DASHBOARD_RATE` (orders per second,
//! default 20), `DASHBOARD_SERIES_INTERVAL` (how often the charts get a point, default `2s`),
//! `DASHBOARD_SERIES_WINDOW` (how much the charts show, default `15m`),
//! `DASHBOARD_OUTAGE_EVERY`, `EVENTBUS_REDIS_URL`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::admin::{self, AdminConfig};
use eventbus::backend::memory::MemoryBackend;
use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom};
use eventbus::backend::Backend;
use eventbus::{event, Backoff, Bus, Context, Envelope, HandlerError, Subscription, Uuid};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderCreated {
    /// The order.
    pub order_id: String,
    /// Amount in cents.
    pub amount_cents: u64,
}

/// An order left the warehouse.
#[event(name = "order.shipped", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OrderShipped {
    /// The order.
    pub order_id: String,
}

/// A payment went through.
#[event(name = "payment.captured", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PaymentCaptured {
    /// The order paid.
    pub order_id: String,
    /// Amount in cents.
    pub amount_cents: u64,
}

/// The simulated payment gateway: declined cards and outage windows.
struct Gateway {
    started: Instant,
    outage_every: Option<Duration>,
    /// Orders whose card was declined once: retried, they go through.
    declined: Mutex<HashSet<String>>,
}

impl Gateway {
    fn in_outage(&self) -> bool {
        self.outage_every.is_some_and(|every| {
            let phase = self.started.elapsed().as_secs() % every.as_secs().max(1);
            phase + 10 >= every.as_secs() && every.as_secs() > 10
        })
    }

    /// Charges an order: `Err` with the reason when the gateway says no.
    fn charge(&self, order: &OrderCreated, n: u64) -> Result<(), HandlerError> {
        if self.in_outage() {
            return Err(HandlerError::transient("payment gateway timed out"));
        }
        if n % 25 == 7 {
            let mut declined = self.declined.lock().unwrap_or_else(|p| p.into_inner());
            if declined.insert(order.order_id.clone()) {
                return Err(HandlerError::permanent(format!(
                    "card declined for order {}",
                    order.order_id
                )));
            }
            println!("billing: order {} paid after a retry", order.order_id);
        }
        Ok(())
    }
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => text.parse().map_err(|e| format!("{name}: {e}")),
        _ => Ok(default),
    }
}

fn duration_setting(name: &str, default: &str) -> Result<Duration, String> {
    let text = setting(name, default.to_owned())?;
    humantime::parse_duration(&text).map_err(|e| format!("{name}: `{text}`: {e}"))
}

async fn backend() -> Result<Arc<dyn Backend>, Box<dyn std::error::Error>> {
    match std::env::var("EVENTBUS_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => {
            let mut config = RedisConfig::new(&url);
            config.prefix = setting(
                "DASHBOARD_REDIS_PREFIX",
                format!("dashboard-{}", Uuid::now_v7().simple()),
            )?;
            config.start_from = StartFrom::Earliest;
            println!("backend: redis {url}, prefix {}", config.prefix);
            Ok(Arc::new(RedisBackend::connect(config).await?))
        }
        None => Ok(Arc::new(MemoryBackend::new())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rate: f64 = setting("DASHBOARD_RATE", 20.0)?;
    if !(rate > 0.0 && rate <= 100_000.0) {
        return Err("DASHBOARD_RATE: orders per second, above 0 and at most 100000".into());
    }
    let series_interval = duration_setting("DASHBOARD_SERIES_INTERVAL", "2s")?;
    let series_window = duration_setting("DASHBOARD_SERIES_WINDOW", "15m")?;
    let outage_every = duration_setting("DASHBOARD_OUTAGE_EVERY", "60s")?;
    let gateway = Arc::new(Gateway {
        started: Instant::now(),
        outage_every: (!outage_every.is_zero()).then_some(outage_every),
        declined: Mutex::new(HashSet::new()),
    });

    let billing = {
        let gateway = gateway.clone();
        Subscription::new(
            "order.created",
            move |ctx: Context, order: Envelope<OrderCreated>| {
                let gateway = gateway.clone();
                async move {
                    let n: u64 = order
                        .data
                        .order_id
                        .trim_start_matches("o-")
                        .parse()
                        .unwrap_or(0);
                    gateway.charge(&order.data, n)?;
                    ctx.publisher()
                        .publish_envelope(ctx.follow_on(Envelope::new(PaymentCaptured {
                            order_id: order.data.order_id.clone(),
                            amount_cents: order.data.amount_cents,
                        })))
                        .await
                        .map_err(HandlerError::transient)?;
                    Ok(())
                }
            },
        )
        .group("billing")
        .concurrency(8)
        .retries(2)
        .backoff(Backoff::schedule([Duration::from_millis(500)]))
    };
    let shipping = Subscription::new("order.*", |event: Envelope<serde_json::Value>| async move {
        // The warehouse reads every order event; a little work per event.
        let _ = event.data.get("order_id");
        Ok(())
    })
    .group("shipping")
    .concurrency(4);
    let ledger = Subscription::new("payment.captured", |_: Envelope<PaymentCaptured>| async {
        Ok(())
    })
    .group("ledger");

    let bus = Arc::new(
        Bus::builder()
            .backend_arc(backend().await?)
            .source("dashboard-example")
            .subscribe(billing)
            .subscribe(shipping)
            .subscribe(ledger)
            .start()
            .await?,
    );
    let token = std::env::var(admin::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| Uuid::now_v7().simple().to_string());
    let config = AdminConfig::from_env(env!("CARGO_PKG_VERSION"))?
        .token(Some(token.clone()))
        .series_interval(series_interval)
        .series_window(series_window);
    let server = admin::serve(bus.clone(), config).await?;
    println!("dashboard: http://{}/dashboard", server.local_addr());
    println!("admin token: {token} (enter it in the page to retry or delete dead letters)");

    let publisher = bus.publisher();
    let traffic = tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next = tokio::time::Instant::now();
        for n in 0u64.. {
            next += every;
            tokio::time::sleep_until(next).await;
            let order_id = format!("o-{n}");
            let created = publisher
                .publish_envelope(Envelope::new(OrderCreated {
                    order_id: order_id.clone(),
                    amount_cents: 1_000 + (n * 37) % 9_000,
                }))
                .await;
            let shipped = if n % 3 == 0 && n >= 3 {
                publisher
                    .publish_envelope(Envelope::new(OrderShipped {
                        order_id: format!("o-{}", n - 3),
                    }))
                    .await
            } else {
                Ok(Uuid::nil())
            };
            if let Err(error) = created.and(shipped) {
                eprintln!("publish failed: {error}");
            }
        }
    });

    let report = admin::run_until_signal(&bus, Some(server), Duration::from_secs(10)).await?;
    traffic.abort();
    println!(
        "dashboard: stopped (drained: {}, aborted: {})",
        report.drained, report.aborted
    );
    Ok(())
}
