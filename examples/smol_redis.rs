//! A service on smol, with no tokio runtime anywhere: the Redis Streams backend, a handler
//! that fails its first attempt and succeeds after a backoff, per-key order, and the admin
//! server on a thread of its own.
//!
//! Needs a Redis server; run it with:
//!
//! ```sh
//! EVENTBUS_REDIS_URL=redis://127.0.0.1:6379 cargo run --example smol_redis
//! ```
//!
//! The features that matter in a service's `Cargo.toml`:
//!
//! ```toml
//! eventbus = { package = "eventbus-framework", version = "0.1", default-features = false, features = ["runtime-smol", "inventory", "redis"] }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::admin::{AdminConfig, AdminServer};
use eventbus::backend::redis::{RedisBackend, RedisConfig};
use eventbus::{Backoff, Bus, Context, Envelope, HandlerError, Subscription};
use serde::{Deserialize, Serialize};

/// Money moved into an account.
#[eventbus::event(name = "ledger.credited", version = 1, key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Credited {
    /// The account.
    pub account: String,
    /// The position of this credit among the account's credits.
    pub n: u32,
}

const ACCOUNTS: u32 = 4;
const PER_ACCOUNT: u32 = 25;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("EVENTBUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut config = RedisConfig::new(url);
    // Streams of this run only, so a rerun starts from nothing.
    config.prefix = format!("smol-example-{}", eventbus::Uuid::now_v7().simple());
    let redis = RedisBackend::connect(config).await?;

    // Credits handled, in the order they were handled, per account.
    let handled: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let seen = handled.clone();
    let retried = Arc::new(AtomicBool::new(false));
    let failed = retried.clone();
    let bus = Bus::builder()
        .backend(redis)
        .subscribe(
            Subscription::new(
                "ledger.credited",
                move |ctx: Context, env: Envelope<Credited>| {
                    let seen = seen.clone();
                    let failed = failed.clone();
                    async move {
                        // The first credit fails once and is retried after the backoff;
                        // the account's later credits wait behind it.
                        if env.data.n == 0 && ctx.attempt() == 1 && env.data.account == "acc-0" {
                            failed.store(true, Ordering::SeqCst);
                            return Err(HandlerError::transient("the ledger is busy"));
                        }
                        seen.lock()
                            .map_err(|_| HandlerError::permanent("lock poisoned"))?
                            .entry(env.data.account.clone())
                            .or_default()
                            .push(env.data.n);
                        Ok(())
                    }
                },
            )
            .group("ledger")
            .retries(2)
            .backoff(Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_secs(1),
            )),
        )
        .start()
        .await?;
    let bus = Arc::new(bus);
    let admin =
        AdminServer::start_on_thread(bus.clone(), AdminConfig::new(([127, 0, 0, 1], 0).into()))?;
    println!("admin API on http://{}", admin.local_addr());

    for n in 0..PER_ACCOUNT {
        for a in 0..ACCOUNTS {
            bus.publish(Credited {
                account: format!("acc-{a}"),
                n,
            })
            .await?;
        }
    }

    let total = (ACCOUNTS * PER_ACCOUNT) as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let snapshot = handled.lock().map(|h| h.clone()).unwrap_or_default();
        let count: usize = snapshot.values().map(Vec::len).sum();
        if count >= total {
            break Ok(snapshot);
        }
        if Instant::now() > deadline {
            break Err(format!(
                "handled {count} of {total} credits in 30 s: {snapshot:?}"
            ));
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    };

    admin.shutdown().await;
    bus.shutdown(Duration::from_secs(10)).await;

    let handled = outcome?;
    if !retried.load(Ordering::SeqCst) {
        return Err("the first credit never failed".into());
    }
    let in_order = (0..PER_ACCOUNT).collect::<Vec<_>>();
    for (account, credits) in &handled {
        if credits != &in_order {
            return Err(format!("{account}: credits handled as {credits:?}").into());
        }
    }
    println!("handled {total} credits on smol, each account in order, one after a retry");
    Ok(())
}
