//! The Kafka backend's conformance suite, run against two real Kafka-protocol brokers:
//!
//! - `mock::*`: librdkafka's mock cluster (`rdkafka::mocking::MockCluster`: in-process, real
//!   protocol over TCP on 127.0.0.1), a fresh cluster per test. Always runs (marker
//!   `kafka_mock`).
//! - `tansu::*`: tansu (`EVENTBUS_TANSU_BIN`, marker `kafka_tansu`), a fresh broker process
//!   and sqlite database per case (`EVENTBUS_TANSU_MODE=shared` uses the one broker
//!   `scripts/test` started instead; see `docs/testing.md` for why a broker per case).
//!
//! A failing case re-panics with what the broker was doing (CPU, log tail) and names a fault
//! of the broker's own (a panic in its log, a saturated process) when it sees one.
//!
//! Every case is one `async fn case(broker: &Broker)`, called by both modules. Where a broker
//! lacks a feature the case needs, the case says so and runs on the other one only:
//! - the mock cluster has no CreateTopics/DescribeConfigs (provisioning runs on tansu only) and
//!   answers ListOffsets by timestamp with "no offset" (replay scans instead of seeking there);
//! - tansu has no transactions (EndTxn); this backend uses none, so no case depends on them.
//!
//! Topics on tansu outlive a test run (sqlite storage), so events carry a per-run id and
//! handlers ignore other runs' events.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::backend::kafka::rdkafka::producer::DefaultProducerContext;
use eventbus::backend::kafka::{
    KafkaBackend, KafkaConfig, OnDifference, ReplayWindow, StartFrom, TopicPlan, TopicSettings,
};
use eventbus::backend::{Backend, BackendAdmin, Message};
use eventbus::inbox::MemoryInbox;
use eventbus::{
    event, Backoff, Bus, CatalogEntry, Context, Envelope, ErrorKind, HandlerError, Subscription,
    Uuid,
};
use eventbus_integration::{
    eventually, require_server, scaled, wait_for_progress, with_diagnosis, Tansu,
};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

/// A broker to run a case against.
pub struct Broker {
    brokers: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    tansu: Option<Tansu>,
}

impl Broker {
    fn mock() -> Broker {
        eventbus_integration::mark_ran("kafka_mock");
        let mock = MockCluster::new(1).expect("mock cluster");
        Broker {
            brokers: mock.bootstrap_servers(),
            mock: Some(mock),
            tansu: None,
        }
    }

    /// A tansu broker of the case's own, or the shared one with `EVENTBUS_TANSU_MODE=shared`.
    async fn tansu() -> Option<Broker> {
        require_server("EVENTBUS_TANSU_BIN", "kafka_tansu")?;
        let tansu = match std::env::var("EVENTBUS_TANSU_MODE").as_deref() {
            Ok("shared") => Tansu::shared(),
            Ok("private") | Err(_) => eventbus_integration::unblock(Tansu::private).await,
            Ok(other) => panic!("EVENTBUS_TANSU_MODE must be `private` or `shared`, got `{other}`"),
        };
        Some(Broker {
            brokers: tansu.brokers(),
            mock: None,
            tansu: Some(tansu),
        })
    }

    /// What the broker was doing, for a failure message.
    fn diagnose(&self) -> String {
        match &self.tansu {
            // Samples the broker's CPU for a second: off the runtime's worker.
            Some(tansu) => eventbus_integration::block_in_place(|| tansu.diagnose()),
            None => format!("librdkafka mock cluster on {} (in-process)", self.brokers),
        }
    }

    /// Runs `case`; when it panics, panics again with the broker's state added.
    async fn run<F: std::future::Future<Output = ()>>(&self, case: F) {
        with_diagnosis(case, || self.diagnose()).await;
    }

    fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    fn config(&self) -> KafkaConfig {
        let mut c = KafkaConfig::new(&self.brokers);
        c.consumer.start_from = StartFrom::Earliest;
        c.consumer.session_timeout = Duration::from_secs(6);
        c.consumer.heartbeat_interval = Duration::from_millis(500);
        c.consumer.topic_refresh_interval = Duration::from_millis(500);
        c.consumer.rebalance_drain_timeout = Duration::from_secs(5);
        c.consumer.commit_interval = Duration::from_millis(500);
        c.operation_timeout = Duration::from_secs(10);
        // The mock cluster has no CreateTopics (a request waits for the timeout); like a broker
        // with `auto.create.topics.enable`, it creates topics when the producer asks for them.
        c.auto_create_topics = !self.is_mock();
        c
    }

    async fn connect(&self, config: KafkaConfig) -> KafkaBackend {
        KafkaBackend::connect(config).await.expect("connect")
    }

    async fn backend(&self) -> KafkaBackend {
        self.connect(self.config()).await
    }

    /// Creates `topic`, its retry tiers for `tiers` and its dead-letter topic, as provisioning
    /// does in production (the mock cluster lacks CreateTopics: created through its own API).
    async fn topic_with_tiers(
        &self,
        backend: &KafkaBackend,
        topic: &str,
        partitions: i32,
        tiers: &[Duration],
    ) {
        match &self.mock {
            Some(mock) => {
                let mut names = vec![topic.to_owned(), format!("{topic}.dlq")];
                names.extend(
                    tiers
                        .iter()
                        .map(|d| eventbus::backend::kafka::tier_topic(topic, *d)),
                );
                for name in names {
                    mock.create_topic(&name, partitions, 1)
                        .expect("mock create topic");
                }
            }
            None => {
                let plan = TopicPlan::new()
                    .retry_tiers(tiers.iter().copied())
                    .on_difference(OnDifference::Warn)
                    .topic(topic, TopicSettings::new(partitions));
                backend.provision(&plan).await.expect("provision");
            }
        }
    }

    /// Creates `topic` with `partitions` partitions (kept as is when it exists).
    async fn topic(&self, backend: &KafkaBackend, topic: &str, partitions: i32) {
        match &self.mock {
            Some(mock) => mock
                .create_topic(topic, partitions, 1)
                .expect("mock create topic"),
            None => {
                let plan = TopicPlan::new()
                    .retry_tiers([])
                    .dead_letters(false)
                    .on_difference(OnDifference::Warn)
                    .topic(topic, TopicSettings::new(partitions));
                backend.provision(&plan).await.expect("create topic");
            }
        }
    }
}

fn run_id() -> String {
    Uuid::now_v7().simple().to_string()
}

fn group(name: &str) -> String {
    format!("{name}-{}", run_id())
}

async fn wait_assigned(backends: &[&KafkaBackend], group: &str, partitions: usize) {
    let ok = eventually(WAIT, || {
        let total: usize = backends.iter().map(|b| b.assignment(group).len()).sum();
        total == partitions
    })
    .await;
    let got: Vec<Vec<(String, i32)>> = backends.iter().map(|b| b.assignment(group)).collect();
    assert!(
        ok,
        "group {group} never held {partitions} partitions: {got:?}"
    );
}

// --- round trip ----------------------------------------------------------------------------

#[event(name = "rt.order.placed", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RtOrderPlaced {
    order_id: String,
    run: String,
}

#[event(name = "rt.order.cancelled", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RtOrderCancelled {
    order_id: String,
    run: String,
}

#[event(name = "rt.user.joined", version = 1)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RtUserJoined {
    email: String,
    run: String,
}

/// Typed and wildcard subscribers get their events with metadata in headers and the key as
/// record key; a graceful shutdown commits everything handled.
async fn round_trip_typed_and_wildcard(b: &Broker) {
    let backend = b.backend().await;
    let run = run_id();
    let typed: Arc<Mutex<Vec<String>>> = Arc::default();
    let wildcard: Arc<Mutex<Vec<String>>> = Arc::default();
    let (t, w, r1, r2) = (typed.clone(), wildcard.clone(), run.clone(), run.clone());
    let typed_group = group("typed");
    let bus = Bus::builder()
        .backend(backend.clone())
        .catalog(&[
            CatalogEntry::of::<RtOrderPlaced>(),
            CatalogEntry::of::<RtOrderCancelled>(),
            CatalogEntry::of::<RtUserJoined>(),
        ])
        .subscribe(
            Subscription::new(
                "rt.order.placed",
                move |ctx: Context, env: Envelope<RtOrderPlaced>| {
                    if env.data.run == r1 {
                        t.lock().unwrap().push(format!(
                            "{} {} {}",
                            env.data.order_id,
                            ctx.topic(),
                            ctx.correlation_id().is_some()
                        ));
                    }
                    async { Ok(()) }
                },
            )
            .group(typed_group.clone()),
        )
        .subscribe(
            Subscription::new("rt.order.*", move |env: Envelope<serde_json::Value>| {
                if env.data["run"] == r2.as_str() {
                    w.lock().unwrap().push(env.event_type.clone());
                }
                async { Ok(()) }
            })
            .group(group("audit")),
        )
        .start()
        .await
        .expect("start");
    bus.publish(RtOrderPlaced {
        order_id: "o-1".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    bus.publish(RtOrderCancelled {
        order_id: "o-1".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    bus.publish(RtUserJoined {
        email: "x@y".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    assert!(
        eventually(WAIT, || typed.lock().unwrap().len() == 1
            && wildcard.lock().unwrap().len() == 2)
        .await,
        "typed {:?} wildcard {:?}",
        typed.lock().unwrap(),
        wildcard.lock().unwrap()
    );
    eventbus_integration::sleep(Duration::from_millis(300)).await;
    assert_eq!(*typed.lock().unwrap(), vec!["o-1 rt.order.placed true"]);
    let mut types = wildcard.lock().unwrap().clone();
    types.sort();
    assert_eq!(types, ["rt.order.cancelled", "rt.order.placed"]);

    // The record: key = the event's key, type and envelope metadata in headers.
    let stored = eventbus_integration::read_all(&backend, "rt.order.placed").await;
    let mine = stored
        .iter()
        .rev()
        .find(|s| String::from_utf8_lossy(&s.message.payload).contains(&run))
        .expect("record");
    assert_eq!(mine.message.key.as_deref(), Some("o-1"));
    assert_eq!(&*mine.message.event_type, "rt.order.placed");
    assert!(backend.health().await.is_ok());

    // Graceful shutdown: in-flight finished, offsets committed, group left.
    let report = bus.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    let committed = backend
        .committed_offsets(&typed_group, "rt.order.placed")
        .await
        .unwrap();
    let end: i64 = committed.iter().filter_map(|(_, o)| *o).sum();
    assert_eq!(
        end as usize,
        stored.len(),
        "everything handled is committed: {committed:?}"
    );
}

// --- key ordering ----------------------------------------------------------------------------

#[event(name = "ord.account.posted", version = 1, key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Posted {
    account: String,
    n: u32,
    run: String,
}

/// 10 000 events of 100 keys on 6 partitions, concurrency 8: each key strictly in order,
/// handlers overlapping, partitions paused when their buffer fills up.
async fn key_order_holds_across_10000_events_on_6_partitions(b: &Broker) {
    let mut config = b.config();
    config.consumer.max_buffered_per_partition = 200;
    let backend = b.connect(config).await;
    b.topic(&backend, "ord.account.posted", 6).await;
    let run = run_id();
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (s, r, p, id) = (seen.clone(), running.clone(), peak.clone(), run.clone());
    let gate = backend.clone();
    let g = group("ledger");
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new("ord.account.posted", move |env: Envelope<Posted>| {
                let (s, r, p, id) = (s.clone(), r.clone(), p.clone(), id.clone());
                let gate = gate.clone();
                async move {
                    if env.data.run != id {
                        return Ok(());
                    }
                    // Held until a partition's buffer filled and the consumer paused it, so
                    // backpressure is exercised whether the broker or the handlers are faster.
                    while gate.stats().pauses == 0 {
                        eventbus_integration::sleep(Duration::from_millis(5)).await;
                    }
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    if env.data.n % 4 == 0 {
                        eventbus_integration::sleep(Duration::from_millis(1)).await;
                    } else {
                        smol::future::yield_now().await;
                    }
                    s.lock()
                        .unwrap()
                        .entry(env.data.account.clone())
                        .or_default()
                        .push(env.data.n);
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .group(g.clone())
            .concurrency(8),
        )
        .start()
        .await
        .unwrap();
    let total = 10_000u32;
    let publisher = bus.publisher();
    for chunk in 0..(total / 500) {
        let batch: Vec<_> = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                Envelope::new(Posted {
                    account: format!("acc-{}", n % 100),
                    n,
                    run: run.clone(),
                })
            })
            .collect();
        publisher.publish_batch(batch).await.unwrap();
    }
    let count = || seen.lock().unwrap().values().map(Vec::len).sum::<usize>();
    // A slow broker that keeps delivering is waited for; one that stops for 30 s is reported.
    if let Err(progress) = wait_for_progress(
        "handled",
        total as usize,
        Duration::from_secs(30),
        Duration::from_secs(300),
        count,
    )
    .await
    {
        panic!("{progress}; backend {:?}", backend.stats());
    }
    for (account, ns) in seen.lock().unwrap().iter() {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{account} out of order: {ns:?}"
        );
        assert_eq!(ns.len(), 100, "{account}");
    }
    assert!(peak.load(Ordering::SeqCst) > 1, "handlers ran concurrently");
    assert!(peak.load(Ordering::SeqCst) <= 8, "at most 8 at once");
    let stats = backend.stats();
    assert!(
        stats.pauses > 0,
        "partitions were paused for backpressure: {stats:?}"
    );
    eprintln!(
        "peak concurrency {}, {stats:?}",
        peak.load(Ordering::SeqCst)
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- groups ------------------------------------------------------------------------------------

#[event(name = "grp.item.added", version = 1, key = cart)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ItemAdded {
    cart: String,
    n: u32,
    run: String,
}

/// Event ids a handler saw.
type Ids = Arc<Mutex<Vec<Uuid>>>;

/// (key, attempt, when, topic) of each handler call.
type Attempts = Arc<Mutex<Vec<(String, u32, Instant, String)>>>;

fn counting(pattern: &str, group: &str, run: &str, seen: &Ids) -> Subscription {
    let (seen, run) = (seen.clone(), run.to_owned());
    Subscription::new(pattern, move |env: Envelope<serde_json::Value>| {
        if env.data["run"] == run.as_str() {
            seen.lock().unwrap().push(env.id);
        }
        async { Ok(()) }
    })
    .group(group)
}

/// Two groups each receive every event once.
async fn two_groups_each_get_everything(b: &Broker) {
    let backend = b.backend().await;
    let run = run_id();
    let a: Ids = Arc::default();
    let c: Ids = Arc::default();
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(counting("grp.item.added", &group("billing"), &run, &a))
        .subscribe(counting("grp.#", &group("audit"), &run, &c))
        .start()
        .await
        .unwrap();
    let envelopes: Vec<_> = (0..300)
        .map(|n| {
            Envelope::new(ItemAdded {
                cart: format!("c{}", n % 30),
                n,
                run: run.clone(),
            })
        })
        .collect();
    let ids: HashSet<Uuid> = envelopes.iter().map(|e| e.id).collect();
    bus.publisher().publish_batch(envelopes).await.unwrap();
    assert!(
        eventually(WAIT, || a.lock().unwrap().len() == 300
            && c.lock().unwrap().len() == 300)
        .await
    );
    eventbus_integration::sleep(Duration::from_millis(300)).await;
    for seen in [&a, &c] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 300, "exactly once per group");
        assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), ids);
    }
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- takeover --------------------------------------------------------------------------------

#[event(name = "tko.job.queued", version = 1, key = queue)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct JobQueued {
    queue: String,
    n: u32,
    run: String,
}

/// Two members split the partitions; one is killed (no commit); the other takes over with
/// nothing lost, and the redelivered duplicates are absorbed by the (shared) inbox.
async fn members_split_partitions_and_a_killed_member_is_taken_over(b: &Broker) {
    let mut config = b.config();
    // No count- or time-based commit before the kill: every event A handled is uncommitted,
    // so B gets it again and the inbox must absorb it.
    config.consumer.commit_every = 1_000_000;
    config.consumer.commit_interval = Duration::from_secs(3600);
    let backend_a = b.connect(config.clone()).await;
    let backend_b = b.connect(config).await;
    b.topic(&backend_a, "tko.job.queued", 6).await;
    let run = run_id();
    let g = group("workers");
    let inbox = Arc::new(MemoryInbox::new());
    let effects: Arc<Mutex<HashMap<Uuid, u32>>> = Arc::default();
    let make = |name: &str| {
        let (effects, run) = (effects.clone(), run.clone());
        Subscription::new("tko.job.queued", move |env: Envelope<JobQueued>| {
            let (effects, run) = (effects.clone(), run.clone());
            async move {
                eventbus_integration::sleep(Duration::from_millis(2)).await;
                if env.data.run == run {
                    *effects.lock().unwrap().entry(env.id).or_default() += 1;
                }
                Ok(())
            }
        })
        .group(g.clone())
        .concurrency(4)
        .with_name(name.to_owned())
    };
    let bus_a = Bus::builder()
        .backend(backend_a.clone())
        .inbox(inbox.clone())
        .subscribe(make("a"))
        .start()
        .await
        .unwrap();
    let bus_b = Bus::builder()
        .backend(backend_b.clone())
        .inbox(inbox.clone())
        .subscribe(make("b"))
        .start()
        .await
        .unwrap();
    wait_assigned(&[&backend_a, &backend_b], &g, 6).await;
    // The cooperative rebalance that gives B its share may finish after the first assignment.
    assert!(
        eventually(Duration::from_secs(60), || {
            let (a, b) = (backend_a.assignment(&g), backend_b.assignment(&g));
            !a.is_empty() && !b.is_empty() && a.len() + b.len() == 6
        })
        .await,
        "the two members never split the partitions: {:?} {:?}",
        backend_a.assignment(&g),
        backend_b.assignment(&g)
    );
    let (held_a, held_b) = (backend_a.assignment(&g), backend_b.assignment(&g));
    assert!(
        !held_a.is_empty() && !held_b.is_empty(),
        "both members hold partitions: {held_a:?} {held_b:?}"
    );
    assert!(
        held_a.iter().all(|tp| !held_b.contains(tp)),
        "disjoint: {held_a:?} {held_b:?}"
    );

    let envelopes: Vec<_> = (0..1200)
        .map(|n| {
            Envelope::new(JobQueued {
                queue: format!("q{}", n % 60),
                n,
                run: run.clone(),
            })
        })
        .collect();
    let ids: HashSet<Uuid> = envelopes.iter().map(|e| e.id).collect();
    bus_a.publisher().publish_batch(envelopes).await.unwrap();
    // A's first fetch can start after B has already handled much of its share: wait until A
    // has handled some events of its own, or the kill would leave nothing for B to take over.
    assert!(
        eventually(WAIT, || effects.lock().unwrap().len() >= 400
            && bus_a.stats().handled >= 20)
        .await,
        "A never handled its share: A {:?}, B {:?}",
        bus_a.stats(),
        bus_b.stats()
    );
    // Kill member A: no commit, in-flight handlers aborted.
    backend_a.crash_consumers();
    bus_a.abort().await;
    backend_a.consumers_closed().await;
    wait_assigned(&[&backend_b], &g, 6).await;
    assert!(
        eventually(Duration::from_secs(60), || effects.lock().unwrap().len()
            == ids.len())
        .await,
        "handled {} of {}",
        effects.lock().unwrap().len(),
        ids.len()
    );
    eventbus_integration::sleep(Duration::from_millis(500)).await;
    let effects = effects.lock().unwrap().clone();
    assert_eq!(
        effects.keys().copied().collect::<HashSet<_>>(),
        ids,
        "nothing lost"
    );
    let doubled: Vec<_> = effects.values().filter(|n| **n > 1).collect();
    assert!(doubled.is_empty(), "{} events handled twice", doubled.len());
    let stats = bus_b.stats();
    assert!(
        stats.duplicates > 0,
        "A's handled-but-uncommitted events came back to B and the inbox dropped them: {stats:?}"
    );
    eprintln!("takeover: B {stats:?}");
    bus_b.shutdown(Duration::from_secs(10)).await;
}

/// Waits for the first of a backlog's records to be handled (the group's join and first
/// fetch, not timed), then for all `total` within `(stall, deadline)` (see
/// [`wait_for_progress`]); returns how long the rest took. A failure's message ends with
/// `context()`.
async fn backlog_handled(
    what: &str,
    total: usize,
    (stall, deadline): (Duration, Duration),
    mut handled: impl FnMut() -> usize,
    context: impl Fn() -> String,
) -> Duration {
    wait_for_progress("first record handled", 1, WAIT, WAIT, &mut handled)
        .await
        .unwrap_or_else(|progress| panic!("{progress} {}", context()));
    let started = Instant::now();
    wait_for_progress(what, total, stall, deadline, handled)
        .await
        .unwrap_or_else(|progress| {
            panic!("{progress} (after {:?}) {}", started.elapsed(), context())
        });
    started.elapsed()
}

// --- resuming a paused partition -------------------------------------------------------------

#[event(name = "rsm.meter.read", version = 1, key = meter)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct MeterRead {
    meter: String,
    n: u32,
    run: String,
}

/// A partition paused for backpressure is fetched again as soon as it is resumed. librdkafka's
/// resume does not wake the broker thread that fetches the partition; with every partition of
/// that broker paused, the thread slept up to a second before fetching again, once per
/// pause: here (a buffer of 2 records, one record batch per fetch, about 40 pauses) the 150
/// records were not handled in 12 s without the wake-up, and took about 1 s with it (25 ms
/// a pause).
///
/// On the mock cluster only: tansu answers a fetch with every record past the offset whatever
/// `max.partition.fetch.bytes` says, so the buffer is paused once and never again.
async fn a_resumed_partition_is_fetched_at_once(b: &Broker) {
    const EVENTS: usize = 150;
    let mut config = b.config();
    config.consumer.max_buffered_per_partition = 2;
    // One record batch per fetch, so the buffer fills and is paused many times over.
    config
        .consumer_options
        .insert("max.partition.fetch.bytes".into(), "1".into());
    // A fetch the broker holds for new data is answered first (one fetch per broker at a
    // time): short, so that a pause costs the wake-up this case is about, not that wait.
    config
        .consumer_options
        .insert("fetch.wait.max.ms".into(), "10".into());
    let backend = b.connect(config).await;
    b.topic(&backend, "rsm.meter.read", 1).await;
    let run = run_id();
    let publisher = Bus::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    // One by one: a record batch each.
    for n in 0..EVENTS as u32 {
        publisher
            .publish(MeterRead {
                meter: format!("m{}", n % 3),
                n,
                run: run.clone(),
            })
            .await
            .unwrap();
    }
    publisher.shutdown(Duration::from_secs(5)).await;

    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (s, r) = (seen.clone(), run.clone());
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new("rsm.meter.read", move |env: Envelope<MeterRead>| {
                let s = s.clone();
                let mine = env.data.run == r;
                async move {
                    // Slower than the fetches, so the buffer fills.
                    eventbus_integration::sleep(Duration::from_millis(2)).await;
                    if mine {
                        s.lock().unwrap().push(env.data.n);
                    }
                    Ok(())
                }
            })
            .group(group("meters"))
            .concurrency(1),
        )
        .start()
        .await
        .unwrap();
    let pauses_before = std::sync::OnceLock::new();
    let took = backlog_handled(
        "150 records through a buffer of 2",
        EVENTS,
        (Duration::from_secs(10), Duration::from_secs(12)),
        || {
            let handled = seen.lock().unwrap().len();
            if handled > 0 {
                pauses_before.get_or_init(|| backend.stats().pauses);
            }
            handled
        },
        || format!("{:?}", backend.stats()),
    )
    .await;
    let pauses = backend.stats().pauses - pauses_before.get().copied().unwrap_or(0);
    eprintln!("150 records in {took:?} with {pauses} pauses after the first");
    assert!(
        pauses >= 10,
        "the buffer of 2 was paused only {pauses} times: the case no longer exercises resumption"
    );
    // About 25 ms a pause with the wake-up (a fetch, three handler calls of 2 ms and the
    // poll thread's rounds), 600 ms without.
    let per_pause = took / u32::try_from(pauses).unwrap_or(u32::MAX);
    assert!(
        per_pause < scaled(Duration::from_millis(300)),
        "{per_pause:?} a pause: resumed partitions wait for their broker thread's idle round"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        (0..EVENTS as u32).collect::<Vec<_>>(),
        "one partition, concurrency 1: in order"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- pause across a rebalance ----------------------------------------------------------------

#[event(name = "par.job.queued", version = 1, key = queue)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ParkedJob {
    queue: String,
    n: u32,
    run: String,
}

/// A partition paused for backpressure when it is revoked, and later assigned back, is fetched
/// again: librdkafka keeps a partition's pause flag across revoke and re-assignment, so a
/// member that forgot to resume it would never read that partition again.
async fn a_partition_paused_when_revoked_flows_again_when_reassigned(b: &Broker) {
    let mut config = b.config();
    config.consumer.max_buffered_per_partition = 4;
    config.consumer.rebalance_drain_timeout = Duration::from_secs(1);
    let backend_a = b.connect(config.clone()).await;
    let backend_b = b.connect(config).await;
    b.topic(&backend_a, "par.job.queued", 2).await;
    let run = run_id();
    let g = group("parked");
    let seen: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let gate_a = Arc::new(AtomicBool::new(false));
    let make = |name: &str, gate: Option<Arc<AtomicBool>>| {
        let (seen, run) = (seen.clone(), run.clone());
        Subscription::new("par.job.queued", move |env: Envelope<ParkedJob>| {
            let (seen, run, gate) = (seen.clone(), run.clone(), gate.clone());
            async move {
                while gate.as_ref().is_some_and(|g| !g.load(Ordering::SeqCst)) {
                    eventbus_integration::sleep(Duration::from_millis(5)).await;
                }
                if env.data.run == run {
                    seen.lock().unwrap().insert(env.id);
                }
                Ok(())
            }
        })
        .group(g.clone())
        .concurrency(1)
        .with_name(name.to_owned())
    };
    let batch = |from: u32| -> Vec<Envelope<ParkedJob>> {
        (from..from + 200)
            .map(|n| {
                Envelope::new(ParkedJob {
                    queue: format!("q{}", n % 20),
                    n,
                    run: run.clone(),
                })
            })
            .collect()
    };
    let bus_a = Bus::builder()
        .backend(backend_a.clone())
        .subscribe(make("a", Some(gate_a.clone())))
        .start()
        .await
        .unwrap();
    wait_assigned(&[&backend_a], &g, 2).await;
    let first = batch(0);
    let mut ids: HashSet<Uuid> = first.iter().map(|e| e.id).collect();
    bus_a.publisher().publish_batch(first).await.unwrap();
    // A's handler is held: both partitions fill their buffers and are paused.
    assert!(
        eventually(WAIT, || backend_a.stats().pauses >= 2).await,
        "A never paused both partitions: {:?}",
        backend_a.stats()
    );
    // B joins: one of A's paused partitions is revoked and goes to B.
    let bus_b = Bus::builder()
        .backend(backend_b.clone())
        .subscribe(make("b", None))
        .start()
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            backend_a.assignment(&g).len() == 1 && backend_b.assignment(&g).len() == 1
        })
        .await,
        "the members never split the partitions: A {:?}, B {:?}",
        backend_a.assignment(&g),
        backend_b.assignment(&g)
    );
    gate_a.store(true, Ordering::SeqCst);
    let handled = || seen.lock().unwrap().len();
    if let Err(progress) = wait_for_progress(
        "first batch handled",
        ids.len(),
        Duration::from_secs(30),
        Duration::from_secs(120),
        handled,
    )
    .await
    {
        panic!(
            "{progress}; A {:?}, B {:?}",
            backend_a.stats(),
            backend_b.stats()
        );
    }
    // B leaves: its partition, paused on A when A gave it up, comes back to A.
    bus_b.shutdown(Duration::from_secs(10)).await;
    wait_assigned(&[&backend_a], &g, 2).await;
    let second = batch(200);
    ids.extend(second.iter().map(|e| e.id));
    bus_a.publisher().publish_batch(second).await.unwrap();
    if let Err(progress) = wait_for_progress(
        "both batches handled by A after B left",
        ids.len(),
        Duration::from_secs(30),
        Duration::from_secs(120),
        handled,
    )
    .await
    {
        panic!(
            "{progress}; A holds {:?}; A {:?}",
            backend_a.assignment(&g),
            backend_a.stats()
        );
    }
    assert_eq!(*seen.lock().unwrap(), ids, "nothing lost");
    bus_a.shutdown(Duration::from_secs(10)).await;
}

#[event(name = "drn.job.queued", version = 1, key = queue)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct DrainedJob {
    queue: String,
    run: String,
}

/// The README's limit of a rebalance: a revoked partition waits for its in-flight handlers up
/// to `rebalance_drain_timeout`, then goes to its new owner, which starts the events of those
/// handlers again while they still run on the old one.
async fn a_handler_past_the_drain_wait_is_started_again_by_the_new_owner(b: &Broker) {
    let mut config = b.config();
    config.consumer.rebalance_drain_timeout = Duration::from_secs(1);
    let backend_a = b.connect(config.clone()).await;
    let backend_b = b.connect(config).await;
    b.topic(&backend_a, "drn.job.queued", 2).await;
    let run = run_id();
    let g = group("drained");
    // Which members started each event of this run.
    let starts: Arc<Mutex<HashMap<Uuid, Vec<&'static str>>>> = Arc::default();
    let release = Arc::new(AtomicBool::new(false));
    let make = |member: &'static str, held: bool| {
        let (starts, run, release) = (starts.clone(), run.clone(), release.clone());
        Subscription::new("drn.job.queued", move |env: Envelope<DrainedJob>| {
            let (starts, run, release) = (starts.clone(), run.clone(), release.clone());
            async move {
                if env.data.run != run {
                    return Ok(());
                }
                starts
                    .lock()
                    .unwrap()
                    .entry(env.id)
                    .or_default()
                    .push(member);
                while held && !release.load(Ordering::SeqCst) {
                    eventbus_integration::sleep(Duration::from_millis(5)).await;
                }
                Ok(())
            }
        })
        .group(g.clone())
        .concurrency(32)
        .with_name(member.to_owned())
    };
    let bus_a = Bus::builder()
        .backend(backend_a.clone())
        .subscribe(make("a", true))
        .start()
        .await
        .unwrap();
    wait_assigned(&[&backend_a], &g, 2).await;
    // Twenty keys: both partitions get some, and A starts them all and holds them.
    let jobs: Vec<Envelope<DrainedJob>> = (0..20)
        .map(|n| {
            Envelope::new(DrainedJob {
                queue: format!("q{n}"),
                run: run.clone(),
            })
        })
        .collect();
    bus_a.publisher().publish_batch(jobs).await.unwrap();
    let started_on_a = || starts.lock().unwrap().len();
    assert!(
        eventually(WAIT, || started_on_a() == 20).await,
        "A started {} of 20 events: {:?}",
        started_on_a(),
        backend_a.stats()
    );
    // B joins: one partition leaves A after the drain wait, its handlers still running.
    let bus_b = Bus::builder()
        .backend(backend_b.clone())
        .subscribe(make("b", false))
        .start()
        .await
        .unwrap();
    let started_twice = || {
        starts
            .lock()
            .unwrap()
            .values()
            .filter(|members| members.contains(&"a") && members.contains(&"b"))
            .count()
    };
    let twice = eventually(Duration::from_secs(60), || started_twice() > 0).await;
    release.store(true, Ordering::SeqCst);
    assert!(
        twice,
        "no event started again by B: starts {:?}; A holds {:?}, B holds {:?}; A {:?}, B {:?}",
        starts.lock().unwrap(),
        backend_a.assignment(&g),
        backend_b.assignment(&g),
        backend_a.stats(),
        backend_b.stats()
    );
    // Only the events of the partition B took: A kept the other partition's.
    let held_by_a_only = starts
        .lock()
        .unwrap()
        .values()
        .filter(|members| **members == ["a"])
        .count();
    assert!(
        held_by_a_only > 0 && started_twice() + held_by_a_only == 20,
        "A kept none, or an event was started elsewhere: {:?}",
        starts.lock().unwrap()
    );
    bus_b.shutdown(Duration::from_secs(10)).await;
    bus_a.shutdown(Duration::from_secs(10)).await;
}

// --- commit after handle -----------------------------------------------------------------------

#[event(name = "cah.step.done", version = 1, key = flow)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct StepDone {
    flow: String,
    n: u32,
    run: String,
}

/// A crash between the handler and the commit leaves the offsets uncommitted: the restarted
/// consumer gets every handled event again, and the inbox drops them.
async fn offsets_are_committed_only_after_handling(b: &Broker) {
    let mut never = b.config();
    never.consumer.commit_every = 1_000_000;
    never.consumer.commit_interval = Duration::from_secs(3600);
    let first = b.connect(never).await;
    let run = run_id();
    let g = group("steps");
    let inbox = Arc::new(MemoryInbox::new());
    let effects = Arc::new(AtomicUsize::new(0));
    let make = || {
        let (effects, run) = (effects.clone(), run.clone());
        Subscription::new("cah.step.done", move |env: Envelope<StepDone>| {
            if env.data.run == run {
                effects.fetch_add(1, Ordering::SeqCst);
            }
            async { Ok(()) }
        })
        .group(g.clone())
    };
    let bus = Bus::builder()
        .backend(first.clone())
        .inbox(inbox.clone())
        .subscribe(make())
        .start()
        .await
        .unwrap();
    let envelopes: Vec<_> = (0..20)
        .map(|n| {
            Envelope::new(StepDone {
                flow: format!("f{}", n % 3),
                n,
                run: run.clone(),
            })
        })
        .collect();
    bus.publisher().publish_batch(envelopes).await.unwrap();
    // The handler's effect comes before the delivery is counted handled: wait for both.
    assert!(
        eventually(WAIT, || effects.load(Ordering::SeqCst) == 20
            && bus.stats().handled == 20)
        .await,
        "{} effects; {:?}",
        effects.load(Ordering::SeqCst),
        bus.stats()
    );
    // Crash after the handlers, before any commit.
    first.crash_consumers();
    bus.abort().await;
    first.consumers_closed().await;
    let committed = first.committed_offsets(&g, "cah.step.done").await.unwrap();
    assert!(
        committed.iter().all(|(_, o)| o.is_none()),
        "nothing committed: {committed:?}"
    );

    let second = b.backend().await;
    let again = Bus::builder()
        .backend(second.clone())
        .inbox(inbox.clone())
        .subscribe(make())
        .start()
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || again.stats().duplicates == 20).await,
        "{:?}",
        again.stats()
    );
    assert_eq!(
        effects.load(Ordering::SeqCst),
        20,
        "the inbox absorbed the redeliveries"
    );
    again.shutdown(Duration::from_secs(10)).await;
    let committed = second.committed_offsets(&g, "cah.step.done").await.unwrap();
    let total: i64 = committed.iter().filter_map(|(_, o)| *o).sum();
    assert!(total >= 20, "committed after handling: {committed:?}");
}

// --- retry tiers ---------------------------------------------------------------------------------

#[event(name = "tier.payment.failed", version = 1, key = payment)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PaymentFailed {
    payment: String,
    run: String,
}

/// In-process retries, then the 200 ms and 500 ms tiers in order, each after its delay, then the
/// dead-letter topic of the original topic; other keys and other groups are not held up.
async fn retry_tiers_fire_in_order_with_their_delays_then_dead_letter(b: &Broker) {
    let backend = b.backend().await;
    let tiers = [Duration::from_millis(200), Duration::from_millis(500)];
    // Provisioned up front as in production: a tier topic created on first use is picked up by
    // the group's regex subscription only after a metadata refresh and a rebalance.
    b.topic_with_tiers(&backend, "tier.payment.failed", 3, &tiers)
        .await;
    let run = run_id();
    let attempts: Attempts = Arc::default();
    let (a, r) = (attempts.clone(), run.clone());
    let other: Ids = Arc::default();
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new(
                "tier.payment.failed",
                move |ctx: Context, env: Envelope<PaymentFailed>| {
                    let fail = env.data.payment == "bad";
                    if env.data.run == r {
                        a.lock().unwrap().push((
                            env.data.payment.clone(),
                            ctx.attempt(),
                            Instant::now(),
                            ctx.topic().to_owned(),
                        ));
                    }
                    async move {
                        if fail {
                            Err(HandlerError::transient("card network down"))
                        } else {
                            Ok(())
                        }
                    }
                },
            )
            .group(group("payments"))
            .retries(1)
            .backoff(Backoff::schedule([Duration::from_millis(10)]))
            .delayed_retries(tiers),
        )
        .subscribe(counting(
            "tier.payment.failed",
            &group("reporting"),
            &run,
            &other,
        ))
        .start()
        .await
        .unwrap();
    bus.publish(PaymentFailed {
        payment: "bad".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    bus.publish(PaymentFailed {
        payment: "good".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    let dlq = bus.dead_letters();
    let mut letters = Vec::new();
    assert!(
        eventually(WAIT, || {
            letters =
                futures::executor::block_on(dlq.list("tier.payment.failed")).unwrap_or_default();
            letters
                .iter()
                .any(|l| String::from_utf8_lossy(&l.payload).contains(&run))
        })
        .await,
        "dead-lettered; attempts {:?}",
        attempts.lock().unwrap()
    );
    let letter = letters
        .iter()
        .find(|l| String::from_utf8_lossy(&l.payload).contains(&run))
        .unwrap();
    assert_eq!(
        letter.original_topic, "tier.payment.failed",
        "never the tier topic"
    );
    assert_eq!(letter.dlq_topic, "tier.payment.failed.dlq");
    assert_eq!(letter.failure.attempts, 6);
    assert_eq!(letter.key.as_deref(), Some("bad"));
    let attempts = attempts.lock().unwrap().clone();
    let bad: Vec<&(String, u32, Instant, String)> =
        attempts.iter().filter(|a| a.0 == "bad").collect();
    assert_eq!(
        bad.iter().map(|a| a.1).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(
        bad.iter().all(|a| a.3 == "tier.payment.failed"),
        "the original topic is restored: {bad:?}"
    );
    let gap = |i: usize| bad[i].2 - bad[i - 1].2;
    assert!(
        gap(2) >= Duration::from_millis(190),
        "200 ms tier waited {:?}",
        gap(2)
    );
    assert!(
        gap(4) >= Duration::from_millis(490),
        "500 ms tier waited {:?}",
        gap(4)
    );
    assert!(
        gap(2) < Duration::from_secs(5) && gap(4) < Duration::from_secs(5),
        "{:?} {:?}",
        gap(2),
        gap(4)
    );
    let good = attempts
        .iter()
        .find(|a| a.0 == "good")
        .expect("good handled");
    assert!(
        good.2 < bad[2].2,
        "the next key was not held up by the retrying one"
    );
    assert_eq!(backend.stats().deferred, 2);
    assert!(backend
        .partitions("tier.payment.failed.retry.200ms")
        .await
        .unwrap()
        .is_some());
    assert!(backend
        .partitions("tier.payment.failed.retry.500ms")
        .await
        .unwrap()
        .is_some());
    // The other group joins and reads on its own schedule: wait for its two events, then
    // give a retry time to show up.
    assert!(
        eventually(WAIT, || other.lock().unwrap().len() >= 2).await,
        "the other group saw {:?}",
        other.lock().unwrap()
    );
    eventbus_integration::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        other.lock().unwrap().len(),
        2,
        "another group sees each event once, no retries"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- dead letters ------------------------------------------------------------------------------

#[event(name = "rdv.invoice.sent", version = 1, key = invoice)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct InvoiceSent {
    invoice: String,
    run: String,
}

/// Dead letters are listed with their reason, redriven to the original topic with their key,
/// and purged; a dead letter is never published to a live topic by mistake.
async fn dead_letters_are_listed_redriven_with_their_key_and_purged(b: &Broker) {
    let backend = b.backend().await;
    let run = run_id();
    let fixed = Arc::new(AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let (f, h, r) = (fixed.clone(), handled.clone(), run.clone());
    let ledger: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let (l, r2) = (ledger.clone(), run.clone());
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new("rdv.invoice.sent", move |env: Envelope<InvoiceSent>| {
                let ok = f.load(Ordering::SeqCst);
                if ok && env.data.run == r {
                    h.lock().unwrap().push(env.data.invoice.clone());
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::permanent("customer account closed"))
                    }
                }
            })
            .group(group("invoicing")),
        )
        .subscribe(
            Subscription::new("rdv.invoice.sent", move |env: Envelope<InvoiceSent>| {
                if env.data.run == r2 {
                    l.lock().unwrap().push(env.id);
                }
                async { Ok(()) }
            })
            .group(group("ledger")),
        )
        .start()
        .await
        .unwrap();
    bus.publish(InvoiceSent {
        invoice: "i-1".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    bus.publish(InvoiceSent {
        invoice: "i-2".into(),
        run: run.clone(),
    })
    .await
    .unwrap();
    let dlq = bus.dead_letters();
    let mine =
        |all: Vec<eventbus::dead_letter::DeadLetter>| -> Vec<eventbus::dead_letter::DeadLetter> {
            all.into_iter()
                .filter(|l| String::from_utf8_lossy(&l.payload).contains(&run))
                .collect()
        };
    let mut letters = Vec::new();
    assert!(
        eventually(WAIT, || {
            letters =
                mine(futures::executor::block_on(dlq.list("rdv.invoice.sent")).unwrap_or_default());
            letters.len() == 2
        })
        .await
    );
    assert_eq!(letters[0].failure.message, "customer account closed");
    assert_eq!(letters[0].failure.kind, ErrorKind::Permanent);
    assert_eq!(letters[0].failure.attempts, 1, "permanent: no retries");
    let i1 = letters
        .iter()
        .find(|l| l.key.as_deref() == Some("i-1"))
        .expect("i-1 keeps its key")
        .clone();
    let i2 = letters
        .iter()
        .find(|l| l.key.as_deref() == Some("i-2"))
        .expect("i-2")
        .clone();

    // A dead letter published to a live topic is refused.
    let mut stray = dlq
        .get("rdv.invoice.sent", &i1.id)
        .await
        .unwrap()
        .redrive_message();
    stray
        .headers
        .insert("dlq-original-topic".into(), "rdv.invoice.sent".into());
    assert!(backend.publish(vec![stray]).await.is_err());

    assert!(eventually(WAIT, || ledger.lock().unwrap().len() == 2).await);
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(
        dlq.redrive("rdv.invoice.sent", std::slice::from_ref(&i1.id))
            .await
            .unwrap(),
        1
    );
    assert!(
        eventually(WAIT, || handled.lock().unwrap().clone()
            == vec!["i-1".to_owned()])
        .await
    );
    // A later event of the same key (same partition) reaches the ledger group after anything
    // published before it: once the ledger has it, a redrive to the topic would show too.
    let later = bus
        .publish(InvoiceSent {
            invoice: "i-1".into(),
            run: run.clone(),
        })
        .await
        .unwrap();
    assert!(eventually(WAIT, || ledger.lock().unwrap().contains(&later)).await);
    assert_eq!(
        ledger.lock().unwrap().len(),
        3,
        "the ledger group saw no redrive"
    );
    // Its inbox would have absorbed one: it must not have had to.
    assert_eq!(bus.stats().duplicates, 0, "{:?}", bus.stats());
    // The redrive went to the failing group only, through its zero-delay retry tier, with its
    // key; the ledger group, which handled both events, did not see i-1 again.
    let tier = eventbus::backend::kafka::tier_topic("rdv.invoice.sent", Duration::ZERO);
    let redriven = eventbus_integration::read_all(&backend, &tier).await;
    let redriven = redriven
        .iter()
        .rev()
        .find(|m| String::from_utf8_lossy(&m.message.payload).contains(&run))
        .expect("redriven record on the retry tier");
    assert_eq!(
        redriven.message.key.as_deref(),
        Some("i-1"),
        "redrive keeps the key (same partition)"
    );
    let left = mine(dlq.list("rdv.invoice.sent").await.unwrap());
    assert_eq!(
        left.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        vec![i2.id.clone()]
    );
    assert_eq!(
        dlq.purge("rdv.invoice.sent", vec![i2.id.clone()])
            .await
            .unwrap(),
        1
    );
    assert!(mine(dlq.list("rdv.invoice.sent").await.unwrap()).is_empty());
    assert_eq!(
        dlq.purge("rdv.invoice.sent", vec![i2.id.clone()])
            .await
            .unwrap(),
        0,
        "purging twice is a no-op"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

#[event(name = "psn.order.placed", version = 1)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PsnOrderPlaced {
    run: String,
}

/// An undecodable record goes straight to the dead-letter topic with the reason, without
/// retries, and the events after it are handled.
async fn poison_messages_go_straight_to_the_dlq(b: &Broker) {
    let backend = b.backend().await;
    let run = run_id();
    let handled = Arc::new(AtomicUsize::new(0));
    let (h, r) = (handled.clone(), run.clone());
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new("psn.order.placed", move |env: Envelope<PsnOrderPlaced>| {
                if env.data.run == r {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                async { Ok(()) }
            })
            .group(group("poison"))
            .retries(5),
        )
        .start()
        .await
        .unwrap();
    let garbage = format!("\u{1}not an envelope {run}").into_bytes();
    let mut bytes = garbage.clone();
    bytes.push(0xff);
    backend
        .publish(vec![Message {
            topic: "psn.order.placed".into(),
            key: None,
            event_type: Default::default(),
            headers: Default::default(),
            payload: bytes.into(),
        }])
        .await
        .unwrap();
    bus.publish(PsnOrderPlaced { run: run.clone() })
        .await
        .unwrap();
    let dlq = bus.dead_letters();
    let mut letter = None;
    assert!(
        eventually(WAIT, || {
            let all = futures::executor::block_on(dlq.list("psn.order.placed")).unwrap_or_default();
            letter = all.into_iter().find(|l| l.payload.starts_with(&garbage));
            letter.is_some()
        })
        .await
    );
    let letter = letter.unwrap();
    assert!(
        letter.failure.message.contains("not valid utf-8"),
        "{}",
        letter.failure.message
    );
    assert_eq!(
        letter.failure.attempts, 1,
        "no retries for a poison message"
    );
    assert_eq!(letter.failure.kind, ErrorKind::Permanent);
    assert!(eventually(WAIT, || handled.load(Ordering::SeqCst) == 1).await);
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- a dead letter over the size limit ----------------------------------------------------------

#[event(name = "big.document.stored", version = 1, key = doc)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct DocumentStored {
    doc: String,
    body: String,
}

/// A record just under the producer's maximum message size (`message.max.bytes`, here 20 000
/// bytes, standing for the topic's own limit) fails for good: its dead letter, the same payload
/// plus the failure headers, is over the limit. After 3 refused publishes the dead letter is
/// stored without its payload, saying so (`dlq-payload-omitted`), and the next event of the key
/// is handled.
async fn a_dead_letter_over_the_size_limit_is_kept_as_metadata(b: &Broker) {
    let mut config = b.config();
    config
        .producer_options
        .insert("message.max.bytes".into(), "20000".into());
    let backend = b.connect(config).await;
    b.topic_with_tiers(&backend, "big.document.stored", 1, &[])
        .await;
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = handled.clone();
    let bus = Bus::builder()
        .backend(backend.clone())
        .catalog(&[CatalogEntry::of::<DocumentStored>()])
        .subscribe(
            Subscription::new(
                "big.document.stored",
                move |env: Envelope<DocumentStored>| {
                    let big = env.data.body.len() > 1000;
                    if !big {
                        h.lock().unwrap().push(env.data.body.clone());
                    }
                    async move {
                        if big {
                            Err(HandlerError::permanent("document too long to index"))
                        } else {
                            Ok(())
                        }
                    }
                },
            )
            .group(group("indexer"))
            .retries(0),
        )
        .start()
        .await
        .unwrap();
    let encoded = |body: String| {
        Envelope::new(DocumentStored {
            doc: "d-1".into(),
            body,
        })
        .encode()
        .unwrap()
    };
    let mut big = encoded(String::new());
    big = encoded("x".repeat(19_700 - big.len()));
    let producer: eventbus::backend::kafka::KafkaProducer =
        eventbus::backend::kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &b.brokers)
            .set("message.timeout.ms", "10000")
            .create()
            .expect("producer");
    for payload in [big.clone(), encoded("next".into())] {
        let headers = eventbus::backend::kafka::rdkafka::message::OwnedHeaders::new().insert(
            eventbus::backend::kafka::rdkafka::message::Header {
                key: "type",
                value: Some("big.document.stored"),
            },
        );
        producer
            .send(
                eventbus::backend::kafka::rdkafka::producer::FutureRecord::to(
                    "big.document.stored",
                )
                .key("d-1")
                .payload(&payload)
                .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let dlq = bus.dead_letters();
    let mut letters = Vec::new();
    assert!(
        eventually(scaled(WAIT), || {
            letters =
                futures::executor::block_on(dlq.list("big.document.stored")).unwrap_or_default();
            letters.len() == 1 && handled.lock().unwrap().len() == 1
        })
        .await,
        "dead letters {letters:?}, handled {:?}, {:?}",
        handled.lock().unwrap(),
        bus.stats()
    );
    assert_eq!(*handled.lock().unwrap(), vec!["next".to_owned()]);
    let letter = &letters[0];
    assert!(
        letter.payload.is_empty(),
        "{} payload bytes",
        letter.payload.len()
    );
    let omitted = letter.payload_omitted.clone().unwrap_or_default();
    assert!(
        omitted.contains(&format!("{} bytes", big.len())),
        "{omitted}"
    );
    assert_eq!(letter.failure.message, "document too long to index");
    assert_eq!(letter.key.as_deref(), Some("d-1"));
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- replay ------------------------------------------------------------------------------------

#[event(name = "rpl.price.changed", version = 1, topic = "rpl-prices", key = sku)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PriceChanged {
    sku: String,
    batch: u32,
    run: String,
}

#[event(name = "rpl.price.viewed", version = 1, topic = "rpl-prices", key = sku)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PriceViewed {
    sku: String,
    batch: u32,
    run: String,
}

/// Replays a time range filtered by event type through the pipeline, with the replay flag, on
/// a throwaway group. On the mock cluster the window start is found by scanning: it answers
/// timestamp lookups (ListOffsets by time) with "no offset".
async fn replay_by_time_range_and_event_type(b: &Broker) {
    let backend = b.backend().await;
    let run = run_id();
    let publisher = eventbus::Publisher::new(
        Arc::new(backend.clone()),
        Arc::new(eventbus::clock::SystemClock::new(
            eventbus::runtime::default_runtime().unwrap(),
        )),
        "test",
    );
    let mut bounds = Vec::new();
    for batch in 0..3 {
        bounds.push(chrono::Utc::now());
        eventbus_integration::sleep(Duration::from_millis(30)).await;
        for i in 0..5 {
            let sku = format!("sku-{i}");
            publisher
                .publish(PriceChanged {
                    sku: sku.clone(),
                    batch,
                    run: run.clone(),
                })
                .await
                .unwrap();
            publisher
                .publish(PriceViewed {
                    sku,
                    batch,
                    run: run.clone(),
                })
                .await
                .unwrap();
        }
        eventbus_integration::sleep(Duration::from_millis(30)).await;
    }
    let mut window = ReplayWindow::new(bounds[1], bounds[2]).event_types(["rpl.price.changed"]);
    if b.is_mock() {
        window = window.scan();
    }
    let replay = backend.replay(window);
    let got: Arc<Mutex<Vec<(u32, String, bool)>>> = Arc::default();
    let (g, r) = (got.clone(), run.clone());
    let bus = Bus::builder()
        .backend(replay.clone())
        .catalog(&[
            CatalogEntry::of::<PriceChanged>(),
            CatalogEntry::of::<PriceViewed>(),
        ])
        .subscribe(
            Subscription::new(
                "rpl.price.*",
                move |ctx: Context, env: Envelope<serde_json::Value>| {
                    if env.data["run"] == r.as_str() {
                        g.lock().unwrap().push((
                            env.data["batch"].as_u64().unwrap_or(99) as u32,
                            env.event_type.clone(),
                            ctx.is_replay(),
                        ));
                    }
                    async { Ok(()) }
                },
            )
            .group(group("rebuild"))
            .concurrency(4),
        )
        .start()
        .await
        .unwrap();
    eventbus_integration::timeout(scaled(WAIT), replay.finished())
        .await
        .expect("replay finished");
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(
        got.iter()
            .all(|(batch, t, replay)| *batch == 1 && t == "rpl.price.changed" && *replay),
        "{got:?}"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

/// A replay whose handlers are slower than the broker buffers a bounded number of records per
/// partition (`consumer.max_buffered_per_partition`): it pauses fetching and still replays
/// every event, in order per key.
async fn replay_buffers_are_bounded(b: &Broker) {
    const N: u32 = 60;
    let mut config = b.config();
    config.consumer.max_buffered_per_partition = 4;
    let backend = b.connect(config).await;
    b.topic(&backend, "rpb.stock.counted", 1).await;
    let run = run_id();
    let publisher = eventbus::Publisher::new(
        Arc::new(backend.clone()),
        Arc::new(eventbus::clock::SystemClock::new(
            eventbus::runtime::default_runtime().unwrap(),
        )),
        "test",
    );
    let from = chrono::Utc::now();
    for n in 0..N {
        publisher
            .publish(Counted {
                sku: "sku-1".into(),
                n,
                run: run.clone(),
            })
            .await
            .unwrap();
    }
    eventbus_integration::sleep(Duration::from_millis(30)).await;
    let to = chrono::Utc::now();
    let mut window = ReplayWindow::new(from, to);
    if b.is_mock() {
        window = window.scan();
    }
    let replay = backend.replay(window);
    let got: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (g, r) = (got.clone(), run.clone());
    let bus = Bus::builder()
        .backend(replay.clone())
        .catalog(&[CatalogEntry::of::<Counted>()])
        .subscribe(
            Subscription::new("rpb.stock.counted", move |env: Envelope<Counted>| {
                let g = g.clone();
                let mine = env.data.run == r;
                async move {
                    eventbus_integration::sleep(Duration::from_millis(5)).await;
                    if mine {
                        g.lock().unwrap().push(env.data.n);
                    }
                    Ok(())
                }
            })
            .group(group("recount")),
        )
        .start()
        .await
        .unwrap();
    eventbus_integration::timeout(scaled(WAIT), replay.finished())
        .await
        .unwrap_or_else(|| panic!("replay unfinished: {:?}", got.lock().unwrap()));
    assert_eq!(*got.lock().unwrap(), (0..N).collect::<Vec<_>>());
    assert!(
        replay.stats().pauses > 0,
        "a slow replay never paused fetching: {:?}",
        replay.stats()
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

#[event(name = "rpb.stock.counted", version = 1, key = sku)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Counted {
    sku: String,
    n: u32,
    run: String,
}

#[event(name = "rtg.stock.counted", version = 1, key = sku)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct StockCounted {
    sku: String,
    run: String,
}

/// The bus's generic replay (read a time range, deliver to one group) over Kafka: only the
/// chosen group gets the replayed events, flagged as replays; group lag drops to zero.
async fn replay_to_one_group_and_group_lag(b: &Broker) {
    let backend = b.backend().await;
    let run = run_id();
    let (chosen, other): (Ids, Ids) = (Arc::default(), Arc::default());
    let replays = Arc::new(AtomicUsize::new(0));
    let (c, r, id) = (chosen.clone(), replays.clone(), run.clone());
    let chosen_group = group("stock");
    let bus = Bus::builder()
        .backend(backend.clone())
        .subscribe(
            Subscription::new(
                "rtg.stock.counted",
                move |ctx: Context, env: Envelope<StockCounted>| {
                    if env.data.run == id {
                        c.lock().unwrap().push(env.id);
                        if ctx.is_replay() {
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    async { Ok(()) }
                },
            )
            .group(chosen_group.clone()),
        )
        .subscribe(counting("rtg.stock.counted", &group("audit"), &run, &other))
        .start()
        .await
        .unwrap();
    let from = chrono::Utc::now() - chrono::Duration::seconds(1);
    for i in 0..3 {
        bus.publish(StockCounted {
            sku: format!("s{i}"),
            run: run.clone(),
        })
        .await
        .unwrap();
    }
    assert!(
        eventually(WAIT, || chosen.lock().unwrap().len() == 3
            && other.lock().unwrap().len() == 3)
        .await
    );
    let request = eventbus::replay::ReplayRequest {
        topic: "rtg.stock.counted".into(),
        from,
        to: chrono::Utc::now() + chrono::Duration::seconds(1),
        event_type: Some("rtg.stock.*".into()),
        group: Some(chosen_group.clone()),
    };
    let dyn_backend: Arc<dyn Backend> = Arc::new(backend.clone());
    let status = eventbus::replay::replay(&dyn_backend, &request, Arc::default())
        .await
        .expect("replay");
    assert!(status.replayed >= 3, "{status:?}");
    assert!(
        eventually(WAIT, || replays.load(Ordering::SeqCst) >= 3).await,
        "replayed to the chosen group: {} replays",
        replays.load(Ordering::SeqCst)
    );
    eventbus_integration::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        other.lock().unwrap().len(),
        3,
        "the other group saw no replay"
    );
    let mut lags = Vec::new();
    assert!(
        eventually(WAIT, || {
            lags = futures::executor::block_on(backend.group_lag()).unwrap_or_default();
            // Lag is committed offsets against the high watermark; commits are batched (100
            // messages / 5 s), so an idle group may still show its last record as lag.
            lags.iter().any(|l| {
                l.group == chosen_group
                    && l.stream == "rtg.stock.counted"
                    && l.pending == 0
                    && l.lag.is_some_and(|n| n <= 1)
            })
        })
        .await,
        "{lags:?}"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- provisioning ------------------------------------------------------------------------------

#[event(name = "prov.order.created", version = 1, topic = "order-events")]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ProvOrderCreated {
    id: u32,
}

#[event(name = "prov.stock.reserved", version = 1, topic = "inventory-events")]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ProvStockReserved {
    id: u32,
}

#[event(
    name = "prov.customer.registered",
    version = 1,
    topic = "customer-events"
)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ProvCustomerRegistered {
    id: u32,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

fn seed_plan() -> TopicPlan {
    let catalog = [
        CatalogEntry::of::<ProvOrderCreated>(),
        CatalogEntry::of::<ProvStockReserved>(),
        CatalogEntry::of::<ProvCustomerRegistered>(),
    ];
    TopicPlan::from_catalog(&catalog, TopicSettings::new(3))
        .topic("order-events", TopicSettings::new(12).retention(7 * DAY))
        .topic("inventory-events", TopicSettings::new(6).retention(3 * DAY))
        .topic("customer-events", TopicSettings::new(8).retention(30 * DAY))
}

/// The catalog's topics, their retry tiers and dead-letter topics are created with the
/// configured partitions and retention; provisioning again changes nothing; a differing
/// existing topic is reported, naming topic and setting.
async fn provisioning_creates_the_catalog_topics(b: &Broker) {
    let backend = b.backend().await;
    let report = backend.provision(&seed_plan()).await.expect("provision");
    assert_eq!(
        report.created.len() + report.unchanged.len(),
        15,
        "{report:?}"
    );
    for (topic, partitions) in [
        ("order-events", 12),
        ("inventory-events", 6),
        ("customer-events", 8),
    ] {
        for name in [
            topic.to_owned(),
            format!("{topic}.retry.1m"),
            format!("{topic}.retry.5m"),
            format!("{topic}.retry.30m"),
            format!("{topic}.dlq"),
        ] {
            assert_eq!(
                backend.partitions(&name).await.unwrap(),
                Some(partitions),
                "{name}"
            );
        }
    }
    let again = backend.provision(&seed_plan()).await.expect("idempotent");
    assert!(
        again.created.is_empty() && again.differences.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.unchanged.len(), 15);

    let drifted = seed_plan().topic("order-events", TopicSettings::new(16).retention(7 * DAY));
    let err = backend
        .provision(&drifted)
        .await
        .expect_err("partition difference");
    assert!(
        err.to_string()
            .contains("kafka.topics[order-events].partitions"),
        "{err}"
    );
    let warned = backend
        .provision(&drifted.on_difference(OnDifference::Warn))
        .await
        .expect("warn only");
    assert!(
        warned
            .differences
            .iter()
            .any(|d| d.topic == "order-events" && d.setting == "partitions" && d.actual == "12"),
        "{warned:?}"
    );
    let retention = seed_plan().topic("customer-events", TopicSettings::new(8).retention(DAY));
    let err = backend
        .provision(&retention)
        .await
        .expect_err("retention difference");
    assert!(
        err.to_string()
            .contains("kafka.topics[customer-events].retention.ms"),
        "{err}"
    );
}

// --- CloudEvents binary mode ------------------------------------------------------------------

#[event(name = "ce.order.shipped", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct CeShipped {
    order_id: String,
    run: String,
}

/// With `cloudevents = binary` a record's value is the event's `data` and its attributes are
/// `ce_*` headers (checked with a raw consumer); a consumer in structured mode handles it all
/// the same, and reading the topic back gives the structured envelope.
async fn binary_mode_records_carry_data_and_ce_headers(b: &Broker) {
    use eventbus::backend::kafka::rdkafka::config::ClientConfig;
    use eventbus::backend::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use eventbus::backend::kafka::rdkafka::message::{Headers, Message as _};
    use eventbus::backend::kafka::rdkafka::{Offset, TopicPartitionList};
    use eventbus::backend::kafka::CloudEventsMode;

    let t = "ce.order.shipped";
    let run = run_id();
    let mut config = b.config();
    config.cloudevents = CloudEventsMode::Binary;
    let binary = b.connect(config).await;
    let structured = b.backend().await;
    b.topic_with_tiers(&binary, t, 1, &[]).await;
    let seen: Arc<Mutex<Vec<Envelope<CeShipped>>>> = Arc::default();
    let log = seen.clone();
    let reader = Bus::builder()
        .backend(structured.clone())
        .subscribe(
            Subscription::new(t, move |env: Envelope<CeShipped>| {
                log.lock().unwrap().push(env);
                async { Ok(()) }
            })
            .group(group("ce-structured")),
        )
        .start()
        .await
        .expect("start");
    let writer = Bus::builder()
        .backend(binary.clone())
        .source("shipping")
        .start()
        .await
        .expect("start");
    let envelope = Envelope::new(CeShipped {
        order_id: "o-1".into(),
        run: run.clone(),
    })
    .with_correlation_id("flow-ce");
    writer
        .publisher()
        .publish_envelope(envelope.clone())
        .await
        .expect("publish");
    assert!(
        eventually(WAIT, || seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.data.run == run))
        .await,
        "{:?}",
        reader.stats()
    );
    let handled = seen
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.data.run == run)
        .cloned()
        .expect("handled");
    assert_eq!(handled.id, envelope.id);
    assert_eq!(handled.source, "shipping");
    assert_eq!(handled.correlation_id.as_deref(), Some("flow-ce"));
    assert!(
        handled.headers.contains_key("traceparent"),
        "{:?}",
        handled.headers
    );

    // The record as any Kafka client sees it.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b.brokers)
        .set("group.id", group("ce-raw"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer");
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(t, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&partitions).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (value, headers) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no record of this run read raw"
        );
        let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let value = record.payload().unwrap_or_default().to_vec();
        if !String::from_utf8_lossy(&value).contains(&run) {
            continue;
        }
        let headers: HashMap<String, String> = record
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        h.value
                            .map(|v| (h.key.to_owned(), String::from_utf8_lossy(v).into_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        break (value, headers);
    };
    let data: serde_json::Value = serde_json::from_slice(&value).expect("the value is the data");
    assert_eq!(data, serde_json::json!({ "order_id": "o-1", "run": run }));
    for (header, expected) in [
        ("ce_specversion", "1.0"),
        ("ce_type", t),
        ("ce_source", "shipping"),
        ("ce_version", "1"),
        ("ce_correlationid", "flow-ce"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(
            headers.get(header).map(String::as_str),
            Some(expected),
            "{headers:?}"
        );
    }
    assert_eq!(headers.get("ce_id"), Some(&envelope.id.to_string()));

    // Read back through the backend: the structured envelope.
    let stored = eventbus_integration::read_all(&structured, t).await;
    let mine = stored
        .iter()
        .find(|s| String::from_utf8_lossy(&s.message.payload).contains(&run))
        .expect("read back");
    let back = eventbus::RawEnvelope::decode(&mine.message.payload).expect("an envelope");
    assert_eq!(back.id, envelope.id);
    assert_eq!(back.correlation_id.as_deref(), Some("flow-ce"));
    assert_eq!(&*mine.message.event_type, t);
    reader.shutdown(Duration::from_secs(10)).await;
    writer.shutdown(Duration::from_secs(10)).await;
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        /// The suite on librdkafka's mock cluster (in-process, real protocol over TCP).
        mod mock {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let broker = super::Broker::mock();
                        broker.run(super::$case(&broker)).await;
                    });
                }
            )*
        }

        /// The suite on tansu: a broker per case (`EVENTBUS_TANSU_BIN`).
        mod tansu {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let Some(broker) = super::Broker::tansu().await else { return };
                        broker.run(super::$case(&broker)).await;
                    });
                }
            )*
        }
    };
}

conformance!(
    round_trip_typed_and_wildcard,
    key_order_holds_across_10000_events_on_6_partitions,
    two_groups_each_get_everything,
    offsets_are_committed_only_after_handling,
    retry_tiers_fire_in_order_with_their_delays_then_dead_letter,
    dead_letters_are_listed_redriven_with_their_key_and_purged,
    poison_messages_go_straight_to_the_dlq,
    replay_by_time_range_and_event_type,
    replay_buffers_are_bounded,
    a_dead_letter_over_the_size_limit_is_kept_as_metadata,
    replay_to_one_group_and_group_lag,
    binary_mode_records_carry_data_and_ce_headers,
    members_split_partitions_and_a_killed_member_is_taken_over,
);

/// The metric value of the sample line `name{...labels...}` holding every `label="value"`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[event(name = "met.job.queued", version = 1, key = job)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct MetJob {
    job: String,
}

/// Metric names common in Kafka monitoring, beside ours: `consumer_lag{consumer_group,topic,partition}` adds up
/// to the group's lag and falls to 0 once consumed; `broker_availability{broker_id}` is 1, 0
/// while the broker is down, 1 again when it is back. Mock cluster only (it can stop a broker).
#[test]
fn mock_common_metrics_lag_per_partition_and_broker_availability() {
    eventbus_integration::run(4, async {
        let broker = Broker::mock();
        let mut config = broker.config();
        config.consumer.max_buffered_per_partition = 4;
        config.operation_timeout = Duration::from_secs(3);
        let backend = broker.connect(config).await;
        broker.topic(&backend, "met.job.queued", 2).await;
        let g = group("met");
        let gate = Arc::new(AtomicBool::new(false));
        let handled = Arc::new(AtomicUsize::new(0));
        let (open, count) = (gate.clone(), handled.clone());
        let bus = Bus::builder()
            .backend(backend.clone())
            .subscribe(
                Subscription::new("met.job.queued", move |_: Envelope<MetJob>| {
                    let (open, count) = (open.clone(), count.clone());
                    async move {
                        while !open.load(Ordering::SeqCst) {
                            eventbus_integration::sleep(Duration::from_millis(5)).await;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })
                .group(g.clone()),
            )
            .start()
            .await
            .unwrap();
        wait_assigned(&[&backend], &g, 2).await;
        let jobs: Vec<_> = (0..40)
            .map(|n| {
                Envelope::new(MetJob {
                    job: format!("j-{n}"),
                })
            })
            .collect();
        bus.publisher().publish_batch(jobs).await.unwrap();
        let admin = backend.admin().expect("admin");
        let lag_of = |text: &str| -> f64 {
            (0..2)
                .filter_map(|p| {
                    let partition = p.to_string();
                    sample(
                        text,
                        "consumer_lag",
                        &[
                            ("consumer_group", &g),
                            ("topic", "met.job.queued"),
                            ("partition", &partition),
                        ],
                    )
                })
                .sum()
        };
        let mut seen = (0.0, 0u64);
        assert!(
            eventually(WAIT, || {
                let lags = futures::executor::block_on(admin.group_lag()).unwrap_or_default();
                let total: u64 = lags
                    .iter()
                    .filter(|l| l.group == g)
                    .filter_map(|l| l.lag)
                    .sum();
                seen = (lag_of(&bus.metrics().encode()), total);
                total > 0 && seen.0 == total as f64
            })
            .await,
            "consumer_lag per partition {} against the group's lag {}: {}",
            seen.0,
            seen.1,
            bus.metrics().encode()
        );
        gate.store(true, Ordering::SeqCst);
        assert!(
            eventually(WAIT, || {
                let _ = futures::executor::block_on(admin.group_lag());
                handled.load(Ordering::SeqCst) == 40 && lag_of(&bus.metrics().encode()) == 0.0
            })
            .await,
            "handled {}, consumer_lag {}",
            handled.load(Ordering::SeqCst),
            lag_of(&bus.metrics().encode())
        );
        let availability = || {
            sample(
                &bus.metrics().encode(),
                "broker_availability",
                &[("broker_id", "1")],
            )
        };
        assert_eq!(availability(), Some(1.0), "{}", bus.metrics().encode());
        let mock = broker.mock.as_ref().expect("mock");
        mock.broker_down(1).expect("broker down");
        let down = backend.health().await;
        assert!(down.is_err(), "health with the broker down: {down:?}");
        assert_eq!(availability(), Some(0.0), "{}", bus.metrics().encode());
        mock.broker_up(1).expect("broker up");
        assert!(
            eventually(WAIT, || futures::executor::block_on(backend.health())
                .is_ok())
            .await,
            "the broker came back"
        );
        assert_eq!(availability(), Some(1.0));
        bus.shutdown(Duration::from_secs(10)).await;
    });
}

/// A paused partition revoked and assigned back runs on the mock cluster only, like the
/// takeover case: a member joining and leaving is the churn under which tansu 0.6's group
/// coordinator can panic (see above). It passed on tansu when tried (`cargo test --test kafka
/// tansu::` with the case added to `conformance!`).
#[test]
fn mock_a_partition_paused_when_revoked_flows_again_when_reassigned() {
    eventbus_integration::run(4, async {
        let broker = Broker::mock();
        broker
            .run(a_partition_paused_when_revoked_flows_again_when_reassigned(
                &broker,
            ))
            .await;
    });
}

/// The drain limit, on the mock cluster only for the same reason as the case above: it makes
/// a member join the group.
#[test]
fn mock_a_handler_past_the_drain_wait_is_started_again_by_the_new_owner() {
    eventbus_integration::run(4, async {
        let broker = Broker::mock();
        broker
            .run(a_handler_past_the_drain_wait_is_started_again_by_the_new_owner(&broker))
            .await;
    });
}

#[event(name = "fq.page.viewed", version = 1, key = page)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PageViewed {
    page: String,
    n: u32,
    padding: String,
}

/// A consumer whose prefetch queue fills (here 64 KiB against 20 MB waiting; a fetch returns
/// whole producer batches, up to 1 MB) keeps reading as fast as it drains it: librdkafka's
/// default pause before fetching a full queue's partition again (1 s) stalled it a second per
/// fetch: 6759 of the 20000 in 10 s, where it now takes about 1 s.
async fn a_full_fetch_queue_does_not_stall_the_consumer(b: &Broker) {
    const EVENTS: usize = 20_000;
    let mut config = b.config();
    config.consumer.fetch_queue_kbytes = 64;
    let backend = b.connect(config).await;
    b.topic(&backend, "fq.page.viewed", 1).await;
    let run = run_id();
    let publisher = Bus::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let envelopes: Vec<_> = (0..EVENTS as u32)
        .map(|n| {
            Envelope::new(PageViewed {
                page: format!("p{}", n % 10),
                n,
                padding: format!("{run}{}", "x".repeat(1000)),
            })
        })
        .collect();
    publisher
        .publisher()
        .publish_batch(envelopes)
        .await
        .unwrap();
    publisher.shutdown(Duration::from_secs(5)).await;

    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    let bus = Bus::builder()
        .backend(backend)
        .subscribe(
            Subscription::new("fq.page.viewed", move |_: Envelope<PageViewed>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .group(group("fq")),
        )
        .start()
        .await
        .unwrap();
    // Each pause of the fetcher would cost a second, once per fetch of about 1 MB.
    backlog_handled(
        "20000 records of 1 KB through a 64 KiB fetch queue",
        EVENTS,
        (Duration::from_secs(30), Duration::from_secs(10)),
        || seen.load(Ordering::SeqCst),
        String::new,
    )
    .await;
    bus.shutdown(Duration::from_secs(10)).await;
}

#[event(name = "quiet.absent", version = 1)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct QuietAbsent {
    run: String,
}

/// A topic a member subscribes by name that does not exist is one warning naming the topic.
/// (That a member starting on existing topics logs no warning is
/// `conformance::a_normal_start_handle_and_stop_logs_no_warning`, on both brokers.)
async fn a_missing_topic_subscribed_by_name_is_one_warning_naming_it(b: &Broker) {
    eventbus_integration::logs::install();
    let mut config = b.config();
    // Topics are made here, or not at all: `quiet.absent` must stay missing.
    config.auto_create_topics = false;
    let backend = b.connect(config).await;
    let absent_group = group("absent");
    let start = eventbus_integration::logs::mark();
    let absent = Bus::builder()
        .backend(backend)
        .subscribe(
            Subscription::new("quiet.absent", |_: Envelope<QuietAbsent>| async { Ok(()) })
                .group(absent_group.clone()),
        )
        .start()
        .await
        .unwrap();
    let named = || {
        eventbus_integration::logs::since(start, &[&absent_group])
            .into_iter()
            .filter(|line| line.text.contains("quiet.absent"))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(WAIT, || !named().is_empty()).await,
        "no warning named the missing topic within {WAIT:?}; the member's lines: {:#?}",
        eventbus_integration::logs::since(start, &[&absent_group, "quiet.absent"])
    );
    let lines = named();
    assert!(
        lines.iter().all(|line| line.level == tracing::Level::WARN)
            && lines
                .iter()
                .all(|line| line.text.contains("does not exist")),
        "the missing topic should be one kind of warning: {lines:#?}"
    );
    absent.shutdown(Duration::from_secs(10)).await;
}

#[test]
fn mock_a_missing_topic_subscribed_by_name_is_one_warning_naming_it() {
    eventbus_integration::run(2, async {
        let broker = Broker::mock();
        broker
            .run(a_missing_topic_subscribed_by_name_is_one_warning_naming_it(
                &broker,
            ))
            .await;
    });
}

#[test]
fn tansu_a_missing_topic_subscribed_by_name_is_one_warning_naming_it() {
    eventbus_integration::run(2, async {
        let Some(broker) = Broker::tansu().await else {
            return;
        };
        broker
            .run(a_missing_topic_subscribed_by_name_is_one_warning_naming_it(
                &broker,
            ))
            .await;
    });
}

#[test]
fn mock_a_resumed_partition_is_fetched_at_once() {
    eventbus_integration::run(2, async {
        let broker = Broker::mock();
        broker
            .run(a_resumed_partition_is_fetched_at_once(&broker))
            .await;
    });
}

#[test]
fn mock_a_full_fetch_queue_does_not_stall_the_consumer() {
    eventbus_integration::run(2, async {
        let broker = Broker::mock();
        broker
            .run(a_full_fetch_queue_does_not_stall_the_consumer(&broker))
            .await;
    });
}

/// Provisioning needs CreateTopics and DescribeConfigs, which librdkafka's mock cluster does
/// not implement: this case runs on tansu only.
#[test]
fn tansu_provisioning_creates_the_catalog_topics() {
    eventbus_integration::run(2, async {
        let Some(broker) = Broker::tansu().await else {
            return;
        };
        broker
            .run(provisioning_creates_the_catalog_topics(&broker))
            .await;
    });
}

/// On the mock cluster provisioning fails with a clear error instead of pretending.
#[test]
fn mock_provisioning_reports_the_missing_admin_api() {
    eventbus_integration::run(2, async {
        let broker = Broker::mock();
        let backend = broker.backend().await;
        let err = backend
            .provision(&seed_plan())
            .await
            .expect_err("the mock has no CreateTopics");
        assert!(err.to_string().contains("kafka backend"), "{err}");
    });
}

#[test]
fn bad_settings_fail_at_startup_naming_the_setting() {
    eventbus_integration::run(2, async {
        for (brokers, setting) in [("", "kafka.brokers"), ("localhost", "kafka.brokers")] {
            let err = KafkaBackend::connect(KafkaConfig::new(brokers))
                .await
                .expect_err(brokers);
            assert!(err.to_string().contains(setting), "{err}");
        }
        let mut config = KafkaConfig::new("127.0.0.1:9");
        config
            .options
            .insert("socket.timeout.ms".into(), "soon".into());
        let err = KafkaBackend::connect(config).await.expect_err("bad option");
        assert!(
            err.to_string().contains("kafka.options[socket.timeout.ms]"),
            "{err}"
        );
        // Nothing listens on port 9: the health check at connect fails within the timeout.
        let mut config = KafkaConfig::new("127.0.0.1:9");
        config.operation_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = KafkaBackend::connect(config)
            .await
            .expect_err("unreachable");
        assert!(err.to_string().contains("connect"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn a_second_pattern_in_one_group_is_refused() {
    eventbus_integration::run(2, async {
        let broker = Broker::mock();
        let backend = broker.backend().await;
        let g = group("shared");
        let err = Bus::builder()
            .backend(backend)
            .subscribe(
                Subscription::new("rt.order.*", |_: Envelope<serde_json::Value>| async {
                    Ok(())
                })
                .group(g.clone())
                .with_name("one"),
            )
            .subscribe(
                Subscription::new("rt.user.*", |_: Envelope<serde_json::Value>| async {
                    Ok(())
                })
                .group(g.clone())
                .with_name("two"),
            )
            .start()
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains(&format!("subscriptions[{g}].group")),
            "{err}"
        );
    });
}
