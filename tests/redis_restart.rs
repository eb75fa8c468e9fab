//! The Redis backend across a server restart (AOF on) and a `FLUSHALL`. These tests restart
//! the shared test server, so they live in their own test binary and run one at a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom};
use eventbus::{event, Bus, Envelope, Subscription, Uuid};
use eventbus_integration::{eventually, require_server, unique_prefix};
use serde::{Deserialize, Serialize};

#[event(name = "ledger.posted", version = 1, key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct LedgerPosted {
    account: String,
    n: u32,
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(url: &str, name: &str) -> RedisConfig {
    let mut c = RedisConfig::new(url);
    c.prefix = unique_prefix(name);
    c.block = Duration::from_millis(200);
    c.claim_idle = Duration::from_millis(800);
    c.claim_interval = Duration::from_millis(300);
    c.start_from = StartFrom::Earliest;
    c.command_timeout = Duration::from_secs(2);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_in_the_middle_of_10000_events_loses_none() {
    let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis_restart") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    eventbus_integration::trace();
    let b = RedisBackend::connect(config(&url, "restart"))
        .await
        .unwrap();
    let seen: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let effects = Arc::new(AtomicUsize::new(0));
    let (s, e) = (seen.clone(), effects.clone());
    let bus = Bus::builder()
        .backend(b.clone())
        .inbox(Arc::new(b.inbox()))
        .subscribe(
            Subscription::new("ledger.posted", move |env: Envelope<LedgerPosted>| {
                s.lock().unwrap().insert(env.id);
                e.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .group("ledger")
            .concurrency(16),
        )
        .start()
        .await
        .unwrap();
    let publisher = bus.publisher();
    let total = 10_000u32;
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut retries = 0;
        for chunk in 0..(total / 100) {
            let batch: Vec<_> = (0..100)
                .map(|i| {
                    Envelope::new(LedgerPosted {
                        account: format!("acc-{}", i % 32),
                        n: chunk * 100 + i,
                    })
                })
                .collect();
            ids.extend(batch.iter().map(|e| e.id));
            // Publishing during the restart fails: retry the same envelopes (same ids).
            while let Err(error) = publisher.publish_batch(batch.clone()).await {
                retries += 1;
                assert!(retries < 500, "publish kept failing: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ids, retries)
    });
    assert!(
        eventually(Duration::from_secs(60), || seen.lock().unwrap().len()
            >= 3000)
        .await
    );
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || eventbus_integration::restart_redis_at(&url2))
        .await
        .unwrap();
    let (ids, retries) = producer.await.unwrap();
    assert!(
        eventually(Duration::from_secs(90), || seen.lock().unwrap().len()
            == total as usize)
        .await,
        "handled {} of {total}",
        seen.lock().unwrap().len()
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ids.into_iter().collect::<HashSet<_>>(),
        "every published event handled"
    );
    // A handler's side effect outside Redis can repeat only when recording its inbox entry
    // failed while the server was down (the delivery is then left unsettled and redelivered):
    // every extra handling is accounted for by one unsettled delivery. Exactly-once effects
    // need the inbox in the handler's own transaction (SQL inbox).
    let stats = bus.stats();
    let extra = effects.load(Ordering::SeqCst) - total as usize;
    assert!(
        extra as u64 <= stats.unsettled,
        "{extra} extra handlings, stats {stats:?}"
    );
    eprintln!(
        "publish retries during the restart: {retries}, extra handlings {extra}, stats {stats:?}"
    );
    bus.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_recreates_streams_and_groups_and_consumption_continues() {
    let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis_restart") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let b = RedisBackend::connect(config(&url, "flush")).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let bus = Bus::builder()
        .backend(b.clone())
        .subscribe(
            Subscription::new("ledger.posted", move |_: Envelope<LedgerPosted>| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .group("flushing"),
        )
        .start()
        .await
        .unwrap();
    bus.publish(LedgerPosted {
        account: "a".into(),
        n: 1,
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || count.load(Ordering::SeqCst)
            == 1)
        .await
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut sent = 1;
    // Keep publishing: the consumer notices NOGROUP, re-creates the group and carries on.
    assert!(
        eventually(Duration::from_secs(20), || {
            sent += 1;
            futures::executor::block_on(bus.publish(LedgerPosted {
                account: "a".into(),
                n: sent,
            }))
            .unwrap();
            count.load(Ordering::SeqCst) >= 3
        })
        .await,
        "consumption continued after FLUSHALL"
    );
    assert!(b.stats().groups_recreated >= 1, "{:?}", b.stats());
    bus.shutdown(Duration::from_secs(5)).await;
}

/// On a three-master Redis Cluster, two members of a group on 8 partitions: one master is
/// restarted (AOF on, no replicas: its slots are down meanwhile) in the middle of 4000 events.
/// Publishing to its slots fails and is retried; members back off on its partitions and carry
/// on; every event is handled, each key in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_restart_in_the_middle_of_4000_events_loses_none() {
    let Some(url) = require_server("EVENTBUS_REDIS_CLUSTER_URL", "redis_cluster_restart") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let ports: Vec<u16> = std::env::var("EVENTBUS_REDIS_CLUSTER_PORTS")
        .expect("EVENTBUS_REDIS_CLUSTER_PORTS")
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    let prefix = unique_prefix("cluster-restart");
    let connect = || {
        let mut c = config(&url, "unused");
        c.prefix = prefix.clone();
        c.cluster = true;
        c.partitions = 8;
        c.lease_ttl = Duration::from_secs(2);
        RedisBackend::connect(c)
    };
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let inbox_backend = connect().await.unwrap();
    let mut members = Vec::new();
    for _ in 0..2 {
        let s = seen.clone();
        let b = connect().await.unwrap();
        members.push(
            Bus::builder()
                .backend(b)
                .inbox(Arc::new(inbox_backend.inbox()))
                .catalog(&[eventbus::CatalogEntry::of::<LedgerPosted>()])
                .subscribe(
                    Subscription::new("ledger.posted", move |env: Envelope<LedgerPosted>| {
                        s.lock()
                            .unwrap()
                            .entry(env.data.account.clone())
                            .or_default()
                            .push(env.data.n);
                        async { Ok(()) }
                    })
                    .group("ledger")
                    .concurrency(8),
                )
                .start()
                .await
                .unwrap(),
        );
    }
    let publisher = members[0].publisher();
    let total = 4_000u32;
    let producer = tokio::spawn(async move {
        let mut retries = 0;
        for chunk in 0..(total / 50) {
            let batch: Vec<_> = (0..50)
                .map(|i| {
                    Envelope::new(LedgerPosted {
                        account: format!("acc-{}", i % 16),
                        n: chunk * 50 + i,
                    })
                })
                .collect();
            // Publishing to a master that is down fails: retry the same envelopes.
            while let Err(error) = publisher.publish_batch(batch.clone()).await {
                retries += 1;
                assert!(retries < 600, "publish kept failing: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        retries
    });
    let count = || seen.lock().unwrap().values().map(Vec::len).sum::<usize>();
    assert!(
        eventually(Duration::from_secs(60), || count() >= 1000).await,
        "handled {} before the restart",
        count()
    );
    let port = ports[1];
    tokio::task::spawn_blocking(move || eventbus_integration::restart_redis_cluster_node(port))
        .await
        .unwrap();
    let retries = producer.await.unwrap();
    let distinct = || {
        seen.lock()
            .unwrap()
            .values()
            .map(|ns| ns.iter().collect::<HashSet<_>>().len())
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(90), || distinct() == total as usize).await,
        "handled {} of {total}: {:?}",
        distinct(),
        members.iter().map(|m| m.stats()).collect::<Vec<_>>()
    );
    for (account, ns) in seen.lock().unwrap().iter() {
        let first = eventbus_integration::first_runs(ns);
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "{account} out of order: {first:?}"
        );
    }
    eprintln!(
        "publish retries during the restart: {retries}, stats {:?}",
        members.iter().map(|m| m.stats()).collect::<Vec<_>>()
    );
    for member in members {
        member.shutdown(Duration::from_secs(5)).await;
    }
}
