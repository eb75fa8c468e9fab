//! The delivery contract (`docs/contract.md`), proved by one suite on every backend: the
//! in-memory backend, Redis (`EVENTBUS_REDIS_URL`), librdkafka's mock cluster and tansu (a
//! broker per case, `EVENTBUS_TANSU_BIN`). Each case is one `async fn case(b: &Under)`; the
//! `conformance!` macro runs it on each backend. A backend that cannot hold a guarantee says
//! so in its [`Features`], and the case asserts the declared weaker behaviour instead.
//!
//! Events are written by the framework's publisher or, for hostile cases, by a foreign
//! producer: the raw client of each backend (`XADD`, an rdkafka producer), as another service
//! or a tool would.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::aggregate::Aggregate;
use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::backend::kafka::rdkafka::producer::DefaultProducerContext;
use eventbus::backend::kafka::{KafkaBackend, KafkaConfig, StartFrom as KafkaStart};
use eventbus::backend::memory::MemoryBackend;
use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom as RedisStart};
use eventbus::backend::{Backend, Message};
use eventbus::inbox::MemoryInbox;
use eventbus::outbox::sqlx::SqlitePool;
use eventbus::{event, Backoff, Bus, Context, Envelope, HandlerError, Subscription, Uuid};
use eventbus_integration::{
    block_in_place, eventually, mark_ran, require_server, sleep, unblock, unique_prefix,
    with_diagnosis, Tansu,
};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

/// Partition streams per topic on Redis.
const REDIS_PARTITIONS: u32 = 4;

/// What a backend declares it cannot hold; the suite asserts the weaker behaviour instead.
#[derive(Debug, Clone, Copy)]
struct Features {
    /// Events of one key are handled in order across the members of a group. Without it, each
    /// event is still handled, but two members may handle events of one key out of order.
    order_across_members: bool,
}

enum Kind {
    Memory(MemoryBackend),
    Redis {
        url: String,
        prefix: String,
        /// `url` is a node of a Redis Cluster.
        cluster: bool,
    },
    Kafka {
        brokers: String,
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
        tansu: Option<Tansu>,
        /// Every member connected, to read their partition assignments.
        members: Mutex<Vec<KafkaBackend>>,
    },
}

/// A backend under test: a way to connect members, create topics and write as a foreign
/// producer.
struct Under {
    kind: Kind,
    features: Features,
}

impl Under {
    fn memory() -> Under {
        Under {
            kind: Kind::Memory(MemoryBackend::new()),
            features: Features {
                order_across_members: true,
            },
        }
    }

    fn redis() -> Option<Under> {
        Under::redis_at("EVENTBUS_REDIS_URL", "conformance_redis", false)
    }

    fn redis_cluster() -> Option<Under> {
        Under::redis_at(
            "EVENTBUS_REDIS_CLUSTER_URL",
            "conformance_redis_cluster",
            true,
        )
    }

    /// Redis at the URL in `var` (a cluster node when `cluster`), under a fresh prefix.
    fn redis_at(var: &str, marker: &str, cluster: bool) -> Option<Under> {
        let url = require_server(var, marker)?;
        Some(Under {
            kind: Kind::Redis {
                url,
                prefix: unique_prefix("conf"),
                cluster,
            },
            features: Features {
                order_across_members: true,
            },
        })
    }

    fn kafka_mock() -> Under {
        mark_ran("conformance_kafka_mock");
        let mock = MockCluster::new(1).expect("mock cluster");
        Under {
            kind: Kind::Kafka {
                brokers: mock.bootstrap_servers(),
                mock: Some(mock),
                tansu: None,
                members: Mutex::default(),
            },
            features: Features {
                order_across_members: true,
            },
        }
    }

    async fn tansu() -> Option<Under> {
        require_server("EVENTBUS_TANSU_BIN", "conformance_tansu")?;
        let tansu = unblock(Tansu::private).await;
        Some(Under {
            kind: Kind::Kafka {
                brokers: tansu.brokers(),
                mock: None,
                tansu: Some(tansu),
                members: Mutex::default(),
            },
            features: Features {
                order_across_members: true,
            },
        })
    }

    /// The longest a delivery may stay unacknowledged before the backend would hand it to
    /// another member, as this suite configures it (Redis `claim_idle`, Kafka
    /// `max.poll.interval.ms`); the in-memory backend has none.
    fn claim_time(&self) -> Duration {
        match &self.kind {
            Kind::Memory(_) => Duration::from_secs(1),
            Kind::Redis { .. } => Duration::from_secs(1),
            Kind::Kafka { .. } => Duration::from_secs(6),
        }
    }

    /// A new member: a backend connection of its own (the in-memory backend shares its state).
    async fn member(&self) -> Arc<dyn Backend> {
        match &self.kind {
            Kind::Memory(backend) => Arc::new(backend.clone()),
            Kind::Redis {
                url,
                prefix,
                cluster,
            } => {
                let mut c = RedisConfig::new(url);
                c.cluster = *cluster;
                c.prefix = prefix.clone();
                c.block = Duration::from_millis(200);
                c.claim_idle = self.claim_time();
                c.claim_interval = Duration::from_millis(200);
                c.discovery_interval = Duration::from_millis(200);
                c.batch_size = 4;
                c.start_from = RedisStart::Earliest;
                c.partitions = REDIS_PARTITIONS;
                c.lease_ttl = Duration::from_secs(2);
                Arc::new(RedisBackend::connect(c).await.expect("connect to redis"))
            }
            Kind::Kafka {
                brokers,
                mock,
                members,
                ..
            } => {
                let mut c = KafkaConfig::new(brokers);
                c.consumer.start_from = KafkaStart::Earliest;
                c.consumer.session_timeout = Duration::from_secs(6);
                c.consumer.heartbeat_interval = Duration::from_millis(500);
                c.consumer.topic_refresh_interval = Duration::from_millis(500);
                c.consumer.commit_interval = Duration::from_millis(200);
                c.consumer_options.insert(
                    "max.poll.interval.ms".into(),
                    self.claim_time().as_millis().to_string(),
                );
                c.operation_timeout = Duration::from_secs(10);
                c.auto_create_topics = mock.is_none();
                let member = KafkaBackend::connect(c).await.expect("connect to kafka");
                members.lock().unwrap().push(member.clone());
                Arc::new(member)
            }
        }
    }

    /// Waits until each of the `members` of `group` holds partitions of `topic` (Kafka; the
    /// other backends hand out work without a group join): a case about what happens once a
    /// group runs starts after the joins' rebalances.
    async fn group_settled(&self, group: &str, topic: &str, members: usize) {
        let Kind::Kafka {
            members: connected, ..
        } = &self.kind
        else {
            return;
        };
        let held = || -> Vec<Vec<(String, i32)>> {
            connected
                .lock()
                .unwrap()
                .iter()
                .map(|m| {
                    let mut held = m.assignment(group);
                    held.retain(|(t, _)| t == topic);
                    held
                })
                .filter(|held| !held.is_empty())
                .collect()
        };
        assert!(
            eventually(WAIT, || held().len() == members).await,
            "group {group} did not settle on {members} members holding partitions of {topic}: {:?}",
            held()
        );
    }

    /// Creates `topic` (and its dead-letter and zero-delay retry topics) where the broker needs
    /// topics created first.
    async fn topic(&self, topic: &str, partitions: i32) {
        if let Kind::Kafka {
            mock: Some(mock), ..
        } = &self.kind
        {
            for name in [
                topic.to_owned(),
                format!("{topic}.dlq"),
                eventbus::backend::kafka::tier_topic(topic, Duration::ZERO),
            ] {
                mock.create_topic(&name, partitions, 1)
                    .expect("mock create topic");
            }
        }
    }

    /// Writes one record as another producer would: the raw client, our field and header
    /// names, whatever headers and bytes it likes.
    async fn publish_foreign(
        &self,
        topic: &str,
        key: &str,
        event_type: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) {
        match &self.kind {
            Kind::Memory(backend) => {
                let message = Message {
                    topic: topic.into(),
                    key: Some(key.into()),
                    event_type: event_type.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    payload: payload.into(),
                };
                backend.publish(vec![message]).await.expect("publish");
            }
            Kind::Redis {
                url,
                prefix,
                cluster,
            } => {
                // The documented layout: the key's partition (Kafka's murmur2) of the topic's
                // partition streams.
                let partition = eventbus::backend::redis::partition_of(key, REDIS_PARTITIONS);
                let mut xadd = ::redis::cmd("XADD");
                xadd.arg(format!("{prefix}:events:{topic}#{partition}"))
                    .arg("*");
                xadd.arg("topic")
                    .arg(topic)
                    .arg("type")
                    .arg(event_type)
                    .arg("key")
                    .arg(key);
                for (name, value) in headers {
                    xadd.arg(format!("h:{name}")).arg(*value);
                }
                xadd.arg("payload").arg(payload);
                let _: String = if *cluster {
                    let mut conn = ::redis::cluster::ClusterClient::new(vec![url.as_str()])
                        .expect("cluster url")
                        .get_async_connection()
                        .await
                        .expect("connect to the cluster");
                    xadd.query_async(&mut conn).await.expect("XADD")
                } else {
                    let mut conn = ::redis::Client::open(url.as_str())
                        .expect("redis url")
                        .get_multiplexed_async_connection()
                        .await
                        .expect("connect");
                    xadd.query_async(&mut conn).await.expect("XADD")
                };
                // The stream registry is how consumers discover streams; a foreign producer
                // writing to a stream the group already reads needs no registration.
            }
            Kind::Kafka { brokers, .. } => {
                use eventbus::backend::kafka::rdkafka::message::{Header, OwnedHeaders};
                use eventbus::backend::kafka::rdkafka::producer::FutureRecord;
                use eventbus::backend::kafka::rdkafka::ClientConfig;
                use eventbus::backend::kafka::KafkaProducer;
                let producer: KafkaProducer = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("message.timeout.ms", "10000")
                    .create()
                    .expect("producer");
                let mut record_headers = OwnedHeaders::new().insert(Header {
                    key: "type",
                    value: Some(event_type),
                });
                for (name, value) in headers {
                    record_headers = record_headers.insert(Header {
                        key: name,
                        value: Some(*value),
                    });
                }
                let record = FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(record_headers);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produce");
            }
        }
    }

    /// What the broker was doing, for a failure message.
    fn diagnose(&self) -> String {
        match &self.kind {
            Kind::Kafka {
                tansu: Some(tansu), ..
            } => block_in_place(|| tansu.diagnose()),
            Kind::Kafka { brokers, .. } => format!("librdkafka mock cluster on {brokers}"),
            Kind::Redis {
                url,
                prefix,
                cluster,
            } => format!(
                "redis{} at {url}, prefix {prefix}",
                if *cluster { " cluster" } else { "" }
            ),
            Kind::Memory(_) => "in-memory backend".into(),
        }
    }

    /// Runs `case`; when it panics, panics again with the backend's state added.
    async fn run<F: std::future::Future<Output = ()>>(&self, case: F) {
        eventbus_integration::trace();
        with_diagnosis(case, || self.diagnose()).await;
    }
}

fn group(name: &str) -> String {
    format!("{name}-{}", Uuid::now_v7().simple())
}

// --- 1. typed handler, wider pattern --------------------------------------------------------

#[event(name = "approval.granted", version = 1, topic = "approvals", key = approval_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ApprovalGranted {
    approval_id: String,
}

#[event(name = "approval.denied", version = 1, topic = "approvals", key = approval_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ApprovalDenied {
    approval_id: String,
}

/// A handler of `Envelope<ApprovalGranted>` on `approval.*` receives only `approval.granted`;
/// the other `approval.*` events are skipped, not dead-lettered.
async fn typed_handler_on_a_wider_pattern_gets_only_its_type(b: &Under) {
    b.topic("approvals", 2).await;
    let backend = b.member().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let run = Uuid::now_v7().simple().to_string();
    let bus = Bus::builder()
        .backend_arc(backend.clone())
        .catalog(&[
            eventbus::CatalogEntry::of::<ApprovalGranted>(),
            eventbus::CatalogEntry::of::<ApprovalDenied>(),
        ])
        .subscribe(
            Subscription::new("approval.*", move |env: Envelope<ApprovalGranted>| {
                s.lock().unwrap().push(env.data.approval_id.clone());
                async { Ok(()) }
            })
            .group(group("granted")),
        )
        .start()
        .await
        .expect("start");
    bus.publish(ApprovalGranted {
        approval_id: format!("{run}-1"),
    })
    .await
    .unwrap();
    bus.publish(ApprovalDenied {
        approval_id: format!("{run}-2"),
    })
    .await
    .unwrap();
    bus.publish(ApprovalGranted {
        approval_id: format!("{run}-3"),
    })
    .await
    .unwrap();
    let mine = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|id| id.starts_with(&run))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(WAIT, || mine().len() == 2 && bus.stats().skipped >= 1).await,
        "{:?} {:?}",
        mine(),
        bus.stats()
    );
    // Different keys, so possibly different partitions: any order.
    let mut got = mine();
    got.sort();
    assert_eq!(got, vec![format!("{run}-1"), format!("{run}-3")]);
    assert_eq!(bus.stats().dead_lettered, 0, "{:?}", bus.stats());
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 2. topics come from what is subscribed -------------------------------------------------

#[event(name = "shipment.dispatched", version = 1, topic = "shipping", key = shipment)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ShipmentDispatched {
    shipment: String,
}

/// A handler of an event whose topic differs from its name reads that topic with no catalog
/// given to the bus.
async fn a_typed_handler_reads_its_event_topic_without_a_catalog(b: &Under) {
    b.topic("shipping", 1).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .subscribe(
            Subscription::new(
                "shipment.dispatched",
                move |_: Envelope<ShipmentDispatched>| {
                    s.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
            )
            .group(group("shipping")),
        )
        .start()
        .await
        .expect("start");
    bus.publish(ShipmentDispatched {
        shipment: "s-1".into(),
    })
    .await
    .expect("publish");
    assert!(
        eventually(WAIT, || seen.load(Ordering::SeqCst) == 1).await,
        "{:?}",
        bus.stats()
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 3. slow handler -------------------------------------------------------------------------

#[event(name = "report.requested", version = 1, key = report)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ReportRequested {
    report: String,
}

/// A handler that runs three times longer than the claim/visibility time is never started a
/// second time while it runs, with two members in the group.
async fn a_slow_handler_is_never_run_twice_at_once(b: &Under) {
    let t = "report.requested";
    b.topic(t, 2).await;
    let g = group("reports");
    let starts: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let slow = b.claim_time() * 3;
    let make = |starts: Arc<Mutex<HashMap<Uuid, usize>>>,
                running: Arc<AtomicUsize>,
                overlap: Arc<AtomicUsize>| {
        Subscription::new("report.requested", move |env: Envelope<ReportRequested>| {
            let (starts, running, overlap) = (starts.clone(), running.clone(), overlap.clone());
            async move {
                *starts.lock().unwrap().entry(env.id).or_default() += 1;
                if running.fetch_add(1, Ordering::SeqCst) > 0 {
                    overlap.fetch_add(1, Ordering::SeqCst);
                }
                sleep(slow).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .group(g.clone())
    };
    let inbox = Arc::new(MemoryInbox::new());
    let catalog = [eventbus::CatalogEntry::of::<ReportRequested>()];
    let a = Bus::builder()
        .backend_arc(b.member().await)
        .inbox(inbox.clone())
        .catalog(&catalog)
        .subscribe(make(starts.clone(), running.clone(), overlap.clone()))
        .start()
        .await
        .expect("start a");
    let c = Bus::builder()
        .backend_arc(b.member().await)
        .inbox(inbox.clone())
        .catalog(&catalog)
        .subscribe(make(starts.clone(), running.clone(), overlap.clone()))
        .start()
        .await
        .expect("start b");
    // Both members joined: what follows is about the claim time, not a join's rebalance.
    b.group_settled(&g, t, 2).await;
    // One event: whichever member takes it, nobody else may start it while it runs.
    let id = a
        .publish(ReportRequested {
            report: "r-1".into(),
        })
        .await
        .expect("publish");
    assert!(
        eventually(WAIT + slow * 2, || a.stats().handled + c.stats().handled
            == 1)
        .await,
        "{:?} {:?}",
        a.stats(),
        c.stats()
    );
    // Two more claim periods after it finished: a stolen copy would have started by now.
    sleep(b.claim_time() * 2).await;
    assert_eq!(
        starts.lock().unwrap().get(&id).copied(),
        Some(1),
        "handler starts for the event"
    );
    assert_eq!(overlap.load(Ordering::SeqCst), 0, "two runs at once");
    a.shutdown(Duration::from_secs(10)).await;
    c.shutdown(Duration::from_secs(10)).await;
}

// --- 4. per-key order across members --------------------------------------------------------

#[event(name = "ledger.posted", version = 1, key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Posted {
    account: String,
    n: u32,
}

/// Two members, concurrency 4 each, a transient failure on every 7th event: every event is
/// handled once, and (where the backend declares it) no event of a key overtakes an earlier one.
async fn per_key_order_across_two_members(b: &Under) {
    b.topic("ledger.posted", 4).await;
    let g = group("ledger");
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let failed: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let make = |seen: Arc<Mutex<HashMap<String, Vec<u32>>>>, failed: Arc<Mutex<HashSet<u32>>>| {
        Subscription::new("ledger.posted", move |env: Envelope<Posted>| {
            let (seen, failed) = (seen.clone(), failed.clone());
            async move {
                if env.data.n % 7 == 0 && failed.lock().unwrap().insert(env.data.n) {
                    return Err(HandlerError::transient("first try fails"));
                }
                // Long enough that both members hold events of a key at once.
                sleep(Duration::from_millis(2)).await;
                seen.lock()
                    .unwrap()
                    .entry(env.data.account.clone())
                    .or_default()
                    .push(env.data.n);
                Ok(())
            }
        })
        .group(g.clone())
        .concurrency(4)
        .backoff(Backoff::schedule([Duration::from_millis(20)]))
    };
    let inbox = Arc::new(MemoryInbox::new());
    let catalog = [eventbus::CatalogEntry::of::<Posted>()];
    let a = Bus::builder()
        .backend_arc(b.member().await)
        .inbox(inbox.clone())
        .catalog(&catalog)
        .subscribe(make(seen.clone(), failed.clone()))
        .start()
        .await
        .expect("start a");
    let c = Bus::builder()
        .backend_arc(b.member().await)
        .inbox(inbox.clone())
        .catalog(&catalog)
        .subscribe(make(seen.clone(), failed.clone()))
        .start()
        .await
        .expect("start b");
    // Small batches over time, so that both members are handed events of every key: at least
    // 400 events, and on until both members have handled some (a Kafka group needs a
    // rebalance before the second member gets partitions).
    let mut total = 0u32;
    let started = std::time::Instant::now();
    for chunk in 0.. {
        if total >= 400 && a.stats().handled > 0 && c.stats().handled > 0 {
            break;
        }
        assert!(
            started.elapsed() < eventbus_integration::scaled(WAIT),
            "one member never got events: {:?} {:?}",
            a.stats(),
            c.stats()
        );
        total += 10;
        let batch: Vec<Envelope<Posted>> = (chunk * 10..chunk * 10 + 10)
            .map(|n| {
                Envelope::new(Posted {
                    account: format!("acc-{}", n % 10),
                    n,
                })
            })
            .collect();
        a.publisher().publish_batch(batch).await.expect("publish");
        sleep(Duration::from_millis(if total < 400 { 5 } else { 50 })).await;
    }
    let count = || seen.lock().unwrap().values().map(Vec::len).sum::<usize>();
    assert!(
        eventually(WAIT * 2, || count() == total as usize).await,
        "handled {} of {total}",
        count()
    );
    let (by_a, by_b) = (a.stats().handled, c.stats().handled);
    assert!(
        by_a > 0 && by_b > 0,
        "both members handled events: {by_a} and {by_b}"
    );
    for (account, ns) in seen.lock().unwrap().iter() {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ns.len(),
            "{account} handled an event twice: {ns:?}"
        );
        assert_eq!(ns.len(), (total / 10) as usize, "{account}");
        if b.features.order_across_members {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "{account} out of order: {ns:?}"
            );
        }
    }
    a.shutdown(Duration::from_secs(10)).await;
    c.shutdown(Duration::from_secs(10)).await;
}

// --- 5. poison and forged headers never stall ----------------------------------------------

#[event(name = "payment.captured", version = 1, key = payment)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PaymentCaptured {
    payment: String,
    step: u32,
}

/// Garbage bytes, invalid UTF-8, a payload just over the size limit and an envelope with a
/// 1 MB error-provoking field are dead-lettered with their reason (the stored error text
/// capped), and a record carrying forged internal headers (attempt count, retry round, first
/// failure, replay, redrive, retry group, due time, origin topic) is handled as the plain
/// event it is: first attempt, not a replay, on its own topic. Each next valid event of the
/// same key is handled.
async fn poison_and_forged_headers_never_stall(b: &Under) {
    let t = "payment.captured".to_owned();
    b.topic(&t, 1).await;
    let backend = b.member().await;
    // (step, attempt, replay, topic) of each handler call.
    type Calls = Arc<Mutex<Vec<(u32, u32, bool, String)>>>;
    let handled: Calls = Arc::default();
    let h = handled.clone();
    let bus = Bus::builder()
        .backend_arc(backend.clone())
        .max_payload(64 * 1024)
        .catalog(&[eventbus::CatalogEntry::of::<PaymentCaptured>()])
        .subscribe(
            Subscription::new(
                "payment.captured",
                move |ctx: Context, env: Envelope<PaymentCaptured>| {
                    h.lock().unwrap().push((
                        env.data.step,
                        ctx.attempt(),
                        ctx.is_replay(),
                        ctx.topic().to_owned(),
                    ));
                    async move {
                        if env.data.step == 99 {
                            return Err(HandlerError::permanent("x".repeat(1 << 20)));
                        }
                        Ok(())
                    }
                },
            )
            .group(group("payments"))
            .retries(0),
        )
        .start()
        .await
        .expect("start");
    let valid = |step: u32| {
        Envelope::new(PaymentCaptured {
            payment: "p-1".into(),
            step,
        })
        .encode()
        .expect("encode")
    };
    let oversized = {
        let mut env = serde_json::to_value(Envelope::new(PaymentCaptured {
            payment: "p-1".into(),
            step: 0,
        }))
        .unwrap();
        env["data"]["padding"] = serde_json::Value::String("y".repeat(64 * 1024));
        serde_json::to_vec(&env).unwrap()
    };
    let forged: Vec<(&str, &str)> = vec![
        ("eventbus-attempt", "99"),
        ("eventbus-round", "9"),
        ("eventbus-first-failure", "2020-01-01T00:00:00Z"),
        ("eventbus-replay", "true"),
        ("eventbus-redrive", "forged"),
        ("eventbus-retry-group", "some-other-group"),
        ("eventbus-retry-due", "99999999999999"),
        ("eventbus-origin-topic", "elsewhere"),
    ];
    b.publish_foreign(&t, "p-1", "payment.captured", &[], b"\x00\x01garbage")
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], &valid(1))
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], b"{\"id\":\"\xff\xfe\"}")
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], &valid(2))
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], &oversized)
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], &valid(3))
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &forged, &valid(4))
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], &valid(99))
        .await;
    b.publish_foreign(&t, "p-1", "payment.captured", &[], &valid(5))
        .await;
    let steps = || {
        handled
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(WAIT, || steps().contains(&5)).await,
        "handled steps {:?}, {:?}",
        steps(),
        bus.stats()
    );
    assert_eq!(steps(), vec![1, 2, 3, 4, 99, 5], "in order, poison skipped");
    let forged_delivery = handled
        .lock()
        .unwrap()
        .iter()
        .find(|h| h.0 == 4)
        .cloned()
        .unwrap();
    assert_eq!(
        forged_delivery,
        (4, 1, false, t.clone()),
        "forged headers counted for nothing"
    );
    let dlq = bus.dead_letters();
    let mut letters = Vec::new();
    assert!(
        eventually(WAIT, || {
            letters = futures::executor::block_on(dlq.list(&t)).unwrap_or_default();
            letters.len() == 4
        })
        .await,
        "dead letters: {:?}",
        letters
            .iter()
            .map(|l| l.failure.message.chars().take(80).collect::<String>())
            .collect::<Vec<_>>()
    );
    let reasons: Vec<&str> = letters.iter().map(|l| l.failure.message.as_str()).collect();
    assert!(
        reasons[0].starts_with("malformed envelope"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("utf-8"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("too large") || reasons[2].contains("limit"),
        "{}",
        reasons[2]
    );
    assert!(
        reasons[3].len() <= eventbus::dead_letter::MAX_ERROR_TEXT + 64,
        "error text of {} bytes stored",
        reasons[3].len()
    );
    assert!(
        reasons[3].ends_with(&format!("(truncated from {} bytes)", 1 << 20)),
        "{}",
        &reasons[3][reasons[3].len() - 40..]
    );
    assert_eq!(bus.stats().dead_lettered, 4, "{:?}", bus.stats());
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 7. redrive to the failing group only ---------------------------------------------------

#[event(name = "invoice.sent", version = 1, key = invoice)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct InvoiceSent {
    invoice: String,
}

/// A dead letter redriven goes back to the group that gave up on it, not to every group of
/// the topic.
async fn redrive_goes_only_to_the_group_that_failed(b: &Under) {
    let t = "invoice.sent".to_owned();
    b.topic(&t, 1).await;
    let backend = b.member().await;
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let billing: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let ledger: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let (f, bl, lg) = (fixed.clone(), billing.clone(), ledger.clone());
    let bus = Bus::builder()
        .backend_arc(backend.clone())
        .catalog(&[eventbus::CatalogEntry::of::<InvoiceSent>()])
        .subscribe(
            Subscription::new("invoice.sent", move |env: Envelope<InvoiceSent>| {
                let ok = f.load(Ordering::SeqCst);
                if ok {
                    bl.lock().unwrap().push(env.id);
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::permanent("closed account"))
                    }
                }
            })
            .group(group("billing")),
        )
        .subscribe(
            Subscription::new("invoice.sent", move |env: Envelope<InvoiceSent>| {
                lg.lock().unwrap().push(env.id);
                async { Ok(()) }
            })
            .group(group("ledger")),
        )
        .start()
        .await
        .expect("start");
    let first = bus
        .publish(InvoiceSent {
            invoice: "i-1".into(),
        })
        .await
        .unwrap();
    let dlq = bus.dead_letters();
    let mut letters = Vec::new();
    assert!(
        eventually(WAIT, || {
            letters = futures::executor::block_on(dlq.list(&t)).unwrap_or_default();
            letters.len() == 1 && ledger.lock().unwrap().len() == 1
        })
        .await,
        "dead letters {letters:?}, ledger {:?}, {:?}",
        ledger.lock().unwrap().clone(),
        bus.stats(),
    );
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(
        dlq.redrive(&t, &[letters[0].id.clone()])
            .await
            .expect("redrive"),
        1
    );
    assert!(
        eventually(WAIT, || billing.lock().unwrap().contains(&first)).await,
        "billing never got the redrive"
    );
    // A later event of the same key reaches the ledger after anything written before it.
    let later = bus
        .publish(InvoiceSent {
            invoice: "i-1".into(),
        })
        .await
        .unwrap();
    assert!(eventually(WAIT, || ledger.lock().unwrap().contains(&later)).await);
    assert_eq!(
        *ledger.lock().unwrap(),
        vec![first, later],
        "the ledger group saw the redrive"
    );
    assert_eq!(bus.stats().duplicates, 0, "{:?}", bus.stats());
    bus.shutdown(Duration::from_secs(10)).await;
}

/// Three members of a group, one of them crashing (`Bus::abort`: handlers aborted, deliveries
/// left unacknowledged) while events flow: every event is handled, and no event of a key is
/// handled after a later one of its key, including the crashed member's unfinished ones that
/// another member takes over.
async fn per_key_order_across_three_members_through_a_crash(b: &Under) {
    b.topic("ledger.posted", 4).await;
    let g = group("ledger");
    // Every handler run of each account, in the order they finished.
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let make = |seen: Arc<Mutex<HashMap<String, Vec<u32>>>>| {
        Subscription::new("ledger.posted", move |env: Envelope<Posted>| {
            let seen = seen.clone();
            async move {
                // Uneven handler times: a member holding a later event of a key would finish
                // it before another member finishes an earlier one.
                sleep(Duration::from_millis(u64::from(env.data.n * 7 % 11))).await;
                seen.lock()
                    .unwrap()
                    .entry(env.data.account.clone())
                    .or_default()
                    .push(env.data.n);
                Ok(())
            }
        })
        .group(g.clone())
        .concurrency(4)
    };
    let inbox = Arc::new(MemoryInbox::new());
    let catalog = [eventbus::CatalogEntry::of::<Posted>()];
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            Bus::builder()
                .backend_arc(b.member().await)
                .inbox(inbox.clone())
                .catalog(&catalog)
                .subscribe(make(seen.clone()))
                .start()
                .await
                .expect("start"),
        );
    }
    let publisher = members[0].publisher();
    let mut total = 0u32;
    let mut crashed = false;
    let started = std::time::Instant::now();
    loop {
        let busy = members.iter().filter(|m| m.stats().handled > 0).count();
        if !crashed && total >= 200 && busy >= 2 {
            // The busiest member other than the publisher's crashes.
            members[1].abort().await;
            crashed = true;
        }
        if crashed && total >= 600 {
            break;
        }
        assert!(
            started.elapsed() < eventbus_integration::scaled(WAIT * 2),
            "members never shared the work: {:?}",
            members.iter().map(|m| m.stats()).collect::<Vec<_>>()
        );
        let batch: Vec<Envelope<Posted>> = (total..total + 10)
            .map(|n| {
                Envelope::new(Posted {
                    account: format!("acc-{}", n % 10),
                    n,
                })
            })
            .collect();
        total += 10;
        publisher.publish_batch(batch).await.expect("publish");
        sleep(Duration::from_millis(5)).await;
    }
    let distinct = || {
        seen.lock()
            .unwrap()
            .values()
            .map(|ns| ns.iter().collect::<HashSet<_>>().len())
            .sum::<usize>()
    };
    assert!(
        eventually(WAIT * 2, || distinct() == total as usize).await,
        "handled {} of {total}: {:?}",
        distinct(),
        members.iter().map(|m| m.stats()).collect::<Vec<_>>()
    );
    for (account, ns) in seen.lock().unwrap().iter() {
        let first = eventbus_integration::first_runs(ns);
        if b.features.order_across_members {
            assert!(
                first.windows(2).all(|w| w[0] < w[1]),
                "{account} out of order: {first:?}"
            );
        }
    }
    for (i, member) in members.iter().enumerate() {
        if i != 1 {
            member.shutdown(Duration::from_secs(10)).await;
        }
    }
}

/// An inbox that fails once for one event, at its lookup or (as a remote inbox) at its record:
/// an infrastructure failure, so the delivery is handed back to the backend (nacked) instead of
/// settled.
struct FailingOnce {
    inner: MemoryInbox,
    event: Mutex<Option<Uuid>>,
    /// Fails the record instead of the lookup, and says it records remotely (the consumer then
    /// waits for the record after the handler, outside its concurrency slots).
    at_record: bool,
}

impl FailingOnce {
    fn fails(&self, id: Uuid) -> bool {
        let mut event = self.event.lock().unwrap();
        let fail = *event == Some(id);
        if fail {
            *event = None;
        }
        fail
    }
}

fn injected() -> eventbus::Error {
    eventbus::Error::backend("inbox", "lookup or record", "injected failure")
}

impl eventbus::inbox::InboxStore for FailingOnce {
    fn contains<'a>(
        &'a self,
        group: &'a str,
        id: Uuid,
    ) -> futures::future::BoxFuture<'a, Result<bool, eventbus::Error>> {
        if !self.at_record && self.fails(id) {
            return Box::pin(async { Err(injected()) });
        }
        self.inner.contains(group, id)
    }

    fn record<'a>(
        &'a self,
        group: &'a str,
        id: Uuid,
    ) -> futures::future::BoxFuture<'a, Result<(), eventbus::Error>> {
        if self.at_record && self.fails(id) {
            return Box::pin(async { Err(injected()) });
        }
        self.inner.record(group, id)
    }

    fn records_remotely(&self) -> bool {
        self.at_record
    }
}

/// A delivery handed back to the backend (an inbox failure leaves it unsettled) holds back the
/// later events of its key: they are not handled before it comes back, with `concurrency > 1`
/// and the later events already read.
async fn a_nacked_event_holds_back_its_key(b: &Under) {
    nacked_event_holds_back_its_key(b, false).await;
}

/// A remote inbox's record is written after the handler, while the next deliveries start: the
/// delivery is acknowledged only once it is written. When it fails, the delivery is handed back
/// (its handler runs again: at least once) and its key's later events wait for it.
async fn a_failed_remote_inbox_record_holds_back_its_key(b: &Under) {
    nacked_event_holds_back_its_key(b, true).await;
}

/// The `ledger.posted` topic (one partition), a member's backend on it, and a bus publishing
/// through that backend.
async fn ledger_topic_member(b: &Under) -> (Arc<dyn Backend>, Bus) {
    b.topic("ledger.posted", 1).await;
    let backend = b.member().await;
    let publisher = Bus::builder()
        .backend_arc(backend.clone())
        .start()
        .await
        .expect("publisher");
    (backend, publisher)
}

/// Waits until `bus` has handled or dropped as duplicates `count` deliveries; when it gives up,
/// fails with what the handler saw (`seen`) and the bus's counts.
async fn wait_handled_or_duplicate<T: std::fmt::Debug>(bus: &Bus, count: u64, seen: &Mutex<T>) {
    let settled = || {
        let stats = bus.stats();
        stats.handled + stats.duplicates
    };
    assert!(
        eventually(WAIT, || settled() == count).await,
        "settled {} of {count}: handled {:?}, {:?}",
        settled(),
        seen.lock().unwrap(),
        bus.stats()
    );
}

async fn nacked_event_holds_back_its_key(b: &Under, at_record: bool) {
    let (backend, publisher) = ledger_topic_member(b).await;
    let events: Vec<Envelope<Posted>> = (0..12)
        .map(|n| {
            Envelope::new(Posted {
                account: if n % 3 == 2 {
                    "other".into()
                } else {
                    "acc-1".into()
                },
                n,
            })
        })
        .collect();
    let failing = events[3].id;
    // (account, n, attempt) of each handling.
    let seen: Arc<Mutex<Vec<(String, u32, u32)>>> = Arc::default();
    let s = seen.clone();
    let bus = Bus::builder()
        .backend_arc(backend)
        .inbox(Arc::new(FailingOnce {
            inner: MemoryInbox::new(),
            event: Mutex::new(Some(failing)),
            at_record,
        }))
        .catalog(&[eventbus::CatalogEntry::of::<Posted>()])
        .subscribe(
            Subscription::new(
                "ledger.posted",
                move |ctx: Context, env: Envelope<Posted>| {
                    let s = s.clone();
                    async move {
                        sleep(Duration::from_millis(5)).await;
                        s.lock().unwrap().push((
                            env.data.account.clone(),
                            env.data.n,
                            ctx.attempt(),
                        ));
                        Ok(())
                    }
                },
            )
            .group(group("ledger"))
            .concurrency(4)
            .backoff(Backoff::schedule([Duration::from_millis(100)])),
        )
        .start()
        .await
        .expect("start");
    // All at once: the later events of the key are read while the failing one is handled.
    publisher
        .publisher()
        .publish_batch(events)
        .await
        .expect("publish");
    // A failed record comes after the handler ran: event 3 is handled again when it comes back.
    let handlings = if at_record { 13 } else { 12 };
    assert!(
        eventually(WAIT, || seen.lock().unwrap().len() == handlings).await,
        "handled {:?}, {:?}",
        seen.lock().unwrap(),
        bus.stats()
    );
    let of_key: Vec<u32> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(account, _, _)| account == "acc-1")
        .map(|(_, n, _)| *n)
        .collect();
    let expected = if at_record {
        vec![0, 1, 3, 3, 4, 6, 7, 9, 10]
    } else {
        vec![0, 1, 3, 4, 6, 7, 9, 10]
    };
    assert_eq!(of_key, expected, "acc-1 in order");
    // The held-back events were handed back unstarted: their first handling is attempt 1.
    let retried: Vec<(u32, u32)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n, attempt)| *n != 3 && *attempt != 1)
        .map(|(_, n, attempt)| (*n, *attempt))
        .collect();
    assert!(
        retried.is_empty(),
        "attempts counted for events never started: {retried:?}"
    );
    assert!(bus.stats().unsettled >= 1, "{:?}", bus.stats());
    bus.shutdown(Duration::from_secs(10)).await;
    publisher.shutdown(Duration::from_secs(10)).await;
}

/// A remote inbox asked ahead, as the Redis inbox is ([`InboxStore::prefetch`]): an answer
/// asked ahead is the inbox's state when it was asked (its round trip made then). Counts the
/// lookups asked ahead and those asked when a delivery started.
#[derive(Default)]
struct AskedAhead {
    inner: MemoryInbox,
    ahead: AtomicUsize,
    at_start: AtomicUsize,
}

impl eventbus::inbox::InboxStore for AskedAhead {
    fn contains<'a>(
        &'a self,
        group: &'a str,
        id: Uuid,
    ) -> futures::future::BoxFuture<'a, Result<bool, eventbus::Error>> {
        self.at_start.fetch_add(1, Ordering::SeqCst);
        self.inner.contains(group, id)
    }

    fn record<'a>(
        &'a self,
        group: &'a str,
        id: Uuid,
    ) -> futures::future::BoxFuture<'a, Result<(), eventbus::Error>> {
        self.inner.record(group, id)
    }

    fn records_remotely(&self) -> bool {
        true
    }

    fn prefetch(
        &self,
        group: &str,
        id: Uuid,
    ) -> Option<futures::future::BoxFuture<'static, Result<bool, eventbus::Error>>> {
        use futures::FutureExt;
        self.ahead.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .inner
            .contains(group, id)
            .now_or_never()
            .expect("the in-process inbox answers at once");
        Some(Box::pin(async move { answer }))
    }
}

/// Copies of an event read together with it (a producer's retry, a redelivery) are dropped by
/// an inbox asked ahead: a copy is asked about only once its key's earlier deliveries are
/// settled, so never before the first copy's record. Each event runs once, in key order.
async fn copies_read_together_are_dropped_by_an_inbox_asked_ahead(b: &Under) {
    let (backend, publisher) = ledger_topic_member(b).await;
    let event = |account: &str, n: u32| {
        Envelope::new(Posted {
            account: account.into(),
            n,
        })
    };
    let (e0, e1, e2, other) = (
        event("acc-1", 0),
        event("acc-1", 1),
        event("acc-1", 2),
        event("other", 9),
    );
    let batch = vec![
        e0.clone(),
        e1.clone(),
        e0.clone(),
        other,
        e2.clone(),
        e1.clone(),
        e2.clone(),
        e0,
    ];
    let inbox = Arc::new(AskedAhead::default());
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let s = seen.clone();
    let bus = Bus::builder()
        .backend_arc(backend)
        .inbox(inbox.clone())
        .catalog(&[eventbus::CatalogEntry::of::<Posted>()])
        .subscribe(
            Subscription::new("ledger.posted", move |env: Envelope<Posted>| {
                let s = s.clone();
                async move {
                    sleep(Duration::from_millis(5)).await;
                    s.lock()
                        .unwrap()
                        .push((env.data.account.clone(), env.data.n));
                    Ok(())
                }
            })
            .group(group("ledger"))
            .concurrency(8),
        )
        .start()
        .await
        .expect("start");
    publisher
        .publisher()
        .publish_batch(batch)
        .await
        .expect("publish");
    wait_handled_or_duplicate(&bus, 8, &seen).await;
    let mut handled = seen.lock().unwrap().clone();
    let of_key: Vec<u32> = handled
        .iter()
        .filter(|(account, _)| account == "acc-1")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(of_key, vec![0, 1, 2], "acc-1: each event once, in order");
    handled.sort();
    assert_eq!(handled.len(), 4, "handled {handled:?}, {:?}", bus.stats());
    assert_eq!(bus.stats().duplicates, 4, "{:?}", bus.stats());
    assert!(
        inbox.ahead.load(Ordering::SeqCst) >= 2,
        "asked ahead {} times",
        inbox.ahead.load(Ordering::SeqCst)
    );
    bus.shutdown(Duration::from_secs(10)).await;
    publisher.shutdown(Duration::from_secs(10)).await;
}

/// An answer "not handled" asked ahead is used only while fresh: a delivery that waited longer
/// for a slot is asked about again when it starts, and an event recorded meanwhile (by another
/// member of the group) is not run again.
async fn a_stale_answer_asked_ahead_is_asked_again(b: &Under) {
    let (backend, publisher) = ledger_topic_member(b).await;
    let events: Vec<Envelope<Posted>> = ["acc-1", "acc-2"]
        .iter()
        .zip(0..)
        .map(|(account, n)| {
            Envelope::new(Posted {
                account: (*account).into(),
                n,
            })
        })
        .collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let group = group("ledger");
    let inbox = Arc::new(AskedAhead::default());
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (s, i, g) = (seen.clone(), inbox.clone(), group.clone());
    let bus = Bus::builder()
        .backend_arc(backend)
        .inbox(inbox.clone())
        .catalog(&[eventbus::CatalogEntry::of::<Posted>()])
        .subscribe(
            Subscription::new("ledger.posted", move |env: Envelope<Posted>| {
                let (s, i, g, ids) = (s.clone(), i.clone(), g.clone(), ids.clone());
                async move {
                    // The first event handled (either: their keys differ) waits until the
                    // other, held, was asked about ahead; then another member handles the
                    // other, while this handler outlasts the answer's freshness.
                    eventually(WAIT, || i.ahead.load(Ordering::SeqCst) >= 2).await;
                    let other = ids[1 - env.data.n as usize];
                    eventbus::inbox::InboxStore::record(&i.inner, &g, other)
                        .await
                        .expect("record");
                    sleep(eventbus::inbox::PREFETCH_FRESH_FOR * 2).await;
                    s.lock().unwrap().push(env.data.n);
                    Ok(())
                }
            })
            .group(group)
            .concurrency(1),
        )
        .start()
        .await
        .expect("start");
    publisher
        .publisher()
        .publish_batch(events)
        .await
        .expect("publish");
    wait_handled_or_duplicate(&bus, 2, &seen).await;
    let handled = seen.lock().unwrap().clone();
    assert_eq!(handled.len(), 1, "handled {handled:?}, {:?}", bus.stats());
    assert_eq!(bus.stats().duplicates, 1, "{:?}", bus.stats());
    assert!(
        inbox.ahead.load(Ordering::SeqCst) >= 2,
        "the held event was never asked about ahead"
    );
    assert!(
        inbox.at_start.load(Ordering::SeqCst) >= 1,
        "the stale answer was used without asking again"
    );
    bus.shutdown(Duration::from_secs(10)).await;
    publisher.shutdown(Duration::from_secs(10)).await;
}

// --- 10. a parked key stays parked across a restart -----------------------------------------

#[event(name = "stock.reserved", version = 1, key = sku)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct StockReserved {
    sku: String,
    seq: u32,
}

/// A member of the `stock` group with `park_keys`: the handler fails `seq == 1` for good while
/// `fixed` is false, and records what it handled.
async fn stock_member(
    backend: Arc<dyn Backend>,
    group: &str,
    fixed: Arc<std::sync::atomic::AtomicBool>,
    handled: Arc<Mutex<Vec<(String, u32)>>>,
) -> Bus {
    Bus::builder()
        .backend_arc(backend)
        .catalog(&[eventbus::CatalogEntry::of::<StockReserved>()])
        .subscribe(
            Subscription::new("stock.reserved", move |env: Envelope<StockReserved>| {
                let ok = env.data.seq != 1 || fixed.load(Ordering::SeqCst);
                if ok {
                    handled
                        .lock()
                        .unwrap()
                        .push((env.data.sku.clone(), env.data.seq));
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::permanent("out of stock"))
                    }
                }
            })
            .group(group)
            .retries(0)
            .park_keys(true),
        )
        .start()
        .await
        .expect("start")
}

/// A key parked after a dead letter stays parked when its consumer restarts (the lot is read
/// back from the dead-letter queue): its next event waits beside the others instead of being
/// handled before them; other keys flow; redriving the key's dead letters in order handles them
/// in order.
async fn a_parked_key_stays_parked_across_a_restart(b: &Under) {
    let t = "stock.reserved".to_owned();
    b.topic(&t, 1).await;
    let g = group("stock");
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let first = stock_member(b.member().await, &g, fixed.clone(), handled.clone()).await;
    for seq in 0..3 {
        first
            .publish(StockReserved {
                sku: "sku-1".into(),
                seq,
            })
            .await
            .expect("publish");
    }
    let dlq = first.dead_letters();
    let mut letters = Vec::new();
    assert!(
        eventually(WAIT, || {
            letters = futures::executor::block_on(dlq.list(&t)).unwrap_or_default();
            letters.len() == 2
        })
        .await,
        "dead letters {:?}, handled {:?}",
        letters
            .iter()
            .map(|l| &l.failure.message)
            .collect::<Vec<_>>(),
        handled.lock().unwrap()
    );
    first.shutdown(Duration::from_secs(10)).await;

    let second = stock_member(b.member().await, &g, fixed.clone(), handled.clone()).await;
    for (sku, seq) in [("sku-1", 3), ("sku-2", 0)] {
        second
            .publish(StockReserved {
                sku: sku.into(),
                seq,
            })
            .await
            .expect("publish");
    }
    let dlq = second.dead_letters();
    assert!(
        eventually(WAIT, || {
            letters = futures::executor::block_on(dlq.list(&t)).unwrap_or_default();
            letters.len() == 3 && handled.lock().unwrap().contains(&("sku-2".into(), 0))
        })
        .await,
        "after the restart: dead letters {:?}, handled {:?}",
        letters
            .iter()
            .map(|l| &l.failure.message)
            .collect::<Vec<_>>(),
        handled.lock().unwrap()
    );
    assert!(
        letters[2]
            .failure
            .message
            .starts_with("parked: key `sku-1`"),
        "{}",
        letters[2].failure.message
    );
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(dlq.redrive_all(&t).await.expect("redrive"), 3);
    assert!(
        eventually(WAIT, || handled.lock().unwrap().len() == 5).await,
        "handled {:?}",
        handled.lock().unwrap()
    );
    let sku1: Vec<u32> = handled
        .lock()
        .unwrap()
        .iter()
        .filter(|(sku, _)| sku == "sku-1")
        .map(|(_, seq)| *seq)
        .collect();
    assert_eq!(sku1, vec![0, 1, 2, 3], "sku-1 in order");
    second.shutdown(Duration::from_secs(10)).await;
}

// --- 11. dead-letter tools page through the queue -------------------------------------------

#[event(name = "audit.rejected", version = 1, key = batch)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct AuditRejected {
    batch: String,
    n: u32,
}

/// The dead-letter tools read a queue a page at a time: pages hold at most their limit, walk
/// the queue once in order, and stay right after purges (Kafka hides resolved records across
/// pages); a purge and a redrive by filter walk the queue page by page too.
async fn dead_letter_tools_page_through_the_queue(b: &Under) {
    const N: u32 = 25;
    let t = "audit.rejected".to_owned();
    b.topic(&t, 1).await;
    let backend = b.member().await;
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (f, h) = (fixed.clone(), handled.clone());
    let bus = Bus::builder()
        .backend_arc(backend.clone())
        .catalog(&[eventbus::CatalogEntry::of::<AuditRejected>()])
        .subscribe(
            Subscription::new("audit.rejected", move |env: Envelope<AuditRejected>| {
                let ok = f.load(Ordering::SeqCst);
                if ok {
                    h.lock().unwrap().push(env.data.n);
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::permanent("rejected"))
                    }
                }
            })
            .group(group("audit")),
        )
        .start()
        .await
        .expect("start");
    for n in 0..N {
        bus.publish(AuditRejected {
            batch: "b-1".into(),
            n,
        })
        .await
        .expect("publish");
    }
    let dlq = bus.dead_letters();
    let mut count = 0;
    assert!(
        eventually(WAIT, || {
            count = futures::executor::block_on(dlq.count(&t)).unwrap_or(0);
            count == u64::from(N)
        })
        .await,
        "{count} dead letters of {N}, {:?}",
        bus.stats()
    );
    let n_of = |d: &eventbus::dead_letter::DeadLetter| -> u32 {
        let env: Envelope<AuditRejected> = serde_json::from_slice(&d.payload).expect("envelope");
        env.data.n
    };
    // Walks the queue with pages of `limit`: the sizes of the pages and the events seen.
    let walk = |limit: usize| {
        let dlq = dlq.clone();
        let t = t.clone();
        async move {
            let (mut sizes, mut seen, mut cursor) = (Vec::new(), Vec::new(), None);
            loop {
                let page = dlq.page(&t, cursor, limit).await.expect("page");
                sizes.push(page.letters.len());
                seen.extend(page.letters.iter().map(n_of));
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return (sizes, seen, dlq.list(&t).await.expect("list")),
                }
            }
        }
    };
    let (sizes, seen, all) = walk(10).await;
    assert!(
        sizes.iter().all(|&s| s <= 10),
        "a page over its limit: {sizes:?}"
    );
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "pages of 10: {sizes:?}");
    let ids: Vec<String> = all.iter().map(|d| d.id.clone()).collect();
    let picked = dlq
        .get_many(&t, &[ids[3].clone(), ids[7].clone()])
        .await
        .expect("get two");
    assert_eq!(picked.iter().map(n_of).collect::<Vec<_>>(), vec![3, 7]);
    let missing = dlq.get_many(&t, &[ids[3].clone(), "0-999999".into()]).await;
    assert!(
        matches!(missing, Err(eventbus::Error::DeadLetterNotFound { .. })),
        "{missing:?}"
    );

    let purged = dlq
        .purge_where(&t, |d| n_of(d) % 2 == 0)
        .await
        .expect("purge evens");
    assert_eq!(purged, 13);
    let odd: Vec<u32> = (0..N).filter(|n| n % 2 == 1).collect();
    let (sizes, seen, _) = walk(5).await;
    assert!(sizes.iter().all(|&s| s <= 5), "{sizes:?}");
    assert_eq!(seen, odd, "after the purge, pages of 5: {sizes:?}");
    assert_eq!(
        dlq.get_many(&t, &[ids[4].clone()])
            .await
            .ok()
            .map(|v| v.len()),
        None,
        "a purged letter is gone"
    );

    fixed.store(true, Ordering::SeqCst);
    let redriven = dlq.redrive_where(&t, |_| true).await.expect("redrive all");
    assert_eq!(redriven, odd.len());
    assert!(
        eventually(WAIT, || handled.lock().unwrap().len() == odd.len()).await,
        "handled after the redrive: {:?}",
        handled.lock().unwrap()
    );
    assert_eq!(*handled.lock().unwrap(), odd, "redriven in order");
    let (_, seen, _) = walk(10).await;
    assert!(seen.is_empty(), "left on the queue: {seen:?}");
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 12. exactly-once effect under faults, with the SQL inbox -------------------------------

#[event(name = "ledger.posted", version = 1, key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct LedgerPosted {
    account: String,
    seq: u32,
}

/// A SQLite database in a temp file with the inbox schema and an `effects` table.
async fn effects_db() -> (SqlitePool, std::path::PathBuf) {
    use eventbus::outbox::sqlite;
    let path = std::env::temp_dir().join(format!("eventbus-conformance-{}.db", Uuid::now_v7()));
    let options = sqlite::connect_options(&path)
        .synchronous(eventbus::outbox::sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = eventbus::outbox::sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("sqlite");
    sqlite::migrate(&pool).await.expect("migrate");
    eventbus::outbox::sqlx::query(
        "CREATE TABLE effects (n INTEGER PRIMARY KEY, event_id TEXT NOT NULL, account TEXT NOT NULL, seq INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("schema");
    (pool, path)
}

/// Every effect row: (event id, account, seq), in commit order.
async fn effects(pool: &SqlitePool) -> Vec<(String, String, i64)> {
    eventbus::outbox::sqlx::query_as("SELECT event_id, account, seq FROM effects ORDER BY n")
        .fetch_all(pool)
        .await
        .expect("effects")
}

/// A member of the `ledger` group whose handler writes its effect in the inbox transaction.
/// On the first attempt of every 7th event it commits the effect and then fails (a transient
/// error after the commit: the effect happened, the acknowledgement did not).
async fn ledger_member(backend: Arc<dyn Backend>, pool: &SqlitePool, group: &str) -> Bus {
    use eventbus::outbox::sqlx::Sqlite;
    use eventbus::outbox::ContextExt as _;
    let handler = move |ctx: Context, env: Envelope<LedgerPosted>| async move {
        let Some(mut tx) = ctx.transaction::<Sqlite>().await? else {
            return Ok(());
        };
        sleep(Duration::from_millis(2)).await;
        eventbus::outbox::sqlx::query(
            "INSERT INTO effects (event_id, account, seq) VALUES (?, ?, ?)",
        )
        .bind(env.id.to_string())
        .bind(&env.data.account)
        .bind(i64::from(env.data.seq))
        .execute(&mut *tx)
        .await
        .map_err(HandlerError::transient)?;
        tx.commit().await.map_err(HandlerError::transient)?;
        if env.data.seq % 7 == 3 && ctx.attempt() == 1 {
            return Err(HandlerError::transient("lost acknowledgement"));
        }
        Ok(())
    };
    Bus::builder()
        .backend_arc(backend)
        .catalog(&[eventbus::CatalogEntry::of::<LedgerPosted>()])
        .inbox(Arc::new(eventbus::SqlInbox::new(pool.clone())))
        .extension(pool.clone())
        .subscribe(
            Subscription::new("ledger.posted", handler)
                .group(group)
                .concurrency(4)
                .retries(20)
                .backoff(Backoff::exponential(
                    Duration::from_millis(5),
                    Duration::from_millis(50),
                )),
        )
        .start()
        .await
        .expect("start")
}

/// The effect of every event happens exactly once, with the SQL inbox, through: a transient
/// failure after the effect committed, the same event published twice by a producer that
/// retried, a member killed mid-stream (deliveries aborted between effect and
/// acknowledgement), and a new member taking over. Effects of one key happen in order where the
/// backend keeps order across members.
async fn exactly_once_effect_under_faults_with_the_sql_inbox(b: &Under) {
    const ACCOUNTS: u32 = 5;
    const PER_ACCOUNT: u32 = 40;
    let total = (ACCOUNTS * PER_ACCOUNT) as usize;
    let t = "ledger.posted".to_owned();
    b.topic(&t, 2).await;
    let (pool, path) = effects_db().await;
    let g = group("ledger");
    let first = ledger_member(b.member().await, &pool, &g).await;
    let mut ids = HashSet::new();
    for seq in 0..PER_ACCOUNT {
        for account in 0..ACCOUNTS {
            let env = Envelope::new(LedgerPosted {
                account: format!("acc-{account}"),
                seq,
            });
            ids.insert(env.id.to_string());
            let bytes = env.encode().expect("encode");
            let key = format!("acc-{account}");
            b.publish_foreign(&t, &key, "ledger.posted", &[], &bytes)
                .await;
            if seq % 10 == 5 {
                // The producer's retry after a lost publish acknowledgement: the same event again.
                b.publish_foreign(&t, &key, "ledger.posted", &[], &bytes)
                    .await;
            }
        }
    }
    let distinct = |rows: &[(String, String, i64)]| {
        rows.iter()
            .map(|r| r.0.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    while distinct(&rows) < total / 3 {
        assert!(
            started.elapsed() < WAIT,
            "the first member made {} effects of {total}: {:?}",
            distinct(&rows),
            first.stats()
        );
        sleep(Duration::from_millis(20)).await;
        rows = effects(&pool).await;
    }
    // Killed mid-stream: in-flight deliveries are aborted wherever they are.
    first.shutdown(Duration::ZERO).await;
    let second = ledger_member(b.member().await, &pool, &g).await;
    let started = std::time::Instant::now();
    loop {
        rows = effects(&pool).await;
        if distinct(&rows) == total {
            break;
        }
        assert!(
            started.elapsed() < WAIT * 2,
            "{} effects of {total} after the restart; {:?}",
            distinct(&rows),
            second.stats()
        );
        sleep(Duration::from_millis(50)).await;
    }
    // Redeliveries still on their way arrive before counting: the group has nothing pending
    // and nothing left to read.
    let admin_backend = second.backend().clone();
    let admin = admin_backend.admin().expect("admin tools");
    let mut lags = Vec::new();
    let settled = eventually(WAIT, || {
        lags = futures::executor::block_on(admin.group_lag()).unwrap_or_default();
        let mine: Vec<_> = lags.iter().filter(|l| l.group == g).collect();
        !mine.is_empty()
            && mine
                .iter()
                .all(|l| l.pending == 0 && l.lag.unwrap_or(0) == 0)
    })
    .await;
    rows = effects(&pool).await;
    let mut per_event: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *per_event.entry(row.0.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_event.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "effects done twice: {twice:?}");
    assert_eq!(
        per_event
            .keys()
            .map(|k| (*k).to_owned())
            .collect::<HashSet<_>>(),
        ids,
        "every event's effect"
    );
    if b.features.order_across_members {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (_, account, seq) in &rows {
            let previous = last.insert(account.as_str(), *seq);
            assert!(
                previous.is_none_or(|p| p < *seq),
                "{account}: seq {seq} after {previous:?}"
            );
        }
    }
    assert!(settled, "still in flight: {lags:?}, {:?}", second.stats());
    second.shutdown(Duration::from_secs(10)).await;
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

// --- 12. CloudEvents ------------------------------------------------------------------------

#[event(name = "payment.settled", version = 1, key = payment)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct PaymentSettled {
    payment: String,
    cents: i64,
}

/// Our events, read back from the topic, are CloudEvents the `cloudevents-sdk` crate parses
/// with every attribute; what it writes (our event re-serialized with a new id, and an event
/// it built itself) is handled by our consumer, typed, with its correlation id and extensions.
async fn cloudevents_sdk_reads_ours_and_we_handle_its(b: &Under) {
    use cloudevents::{AttributesReader, AttributesWriter, EventBuilder, EventBuilderV10};
    let t = "payment.settled";
    b.topic(t, 1).await;
    let seen: Arc<Mutex<Vec<Envelope<PaymentSettled>>>> = Arc::default();
    let log = seen.clone();
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .source("payments-service")
        .subscribe(
            Subscription::new(t, move |env: Envelope<PaymentSettled>| {
                log.lock().expect("lock").push(env);
                async { Ok(()) }
            })
            .group(group("cloudevents")),
        )
        .start()
        .await
        .expect("start");
    let ours = Envelope::new(PaymentSettled {
        payment: "p-1".into(),
        cents: 1200,
    })
    .with_correlation_id("flow-1")
    .with_tenant("acme");
    bus.publisher()
        .publish_envelope(ours.clone())
        .await
        .expect("publish");
    assert!(eventually(WAIT, || seen.lock().expect("lock").len() == 1).await);

    let admin = bus.backend().admin().expect("admin");
    let page = admin.read_page(t, None, 100).await.expect("read back");
    let stored = page
        .messages
        .iter()
        .find(|m| *m.message.event_type == *t)
        .expect("our event in the topic");
    let mut event: cloudevents::Event =
        serde_json::from_slice(&stored.message.payload).expect("the SDK parses our event");
    assert_eq!(event.id(), ours.id.to_string());
    assert_eq!(event.ty(), t);
    assert_eq!(event.source().to_string(), "payments-service");
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(
        event.extension("correlationid").map(ToString::to_string),
        Some("flow-1".to_owned())
    );
    assert_eq!(
        event.extension("tenantid").map(ToString::to_string),
        Some("acme".to_owned())
    );
    assert!(event.extension("traceparent").is_some(), "{event}");
    let data = match event.data() {
        Some(cloudevents::Data::Json(value)) => value.clone(),
        other => panic!("data is not JSON: {other:?}"),
    };
    assert_eq!(data, serde_json::json!({ "payment": "p-1", "cents": 1200 }));

    // Fed back: our event as the SDK writes it (new id: the inbox would drop the same one).
    let again = Uuid::now_v7();
    event.set_id(again.to_string());
    let bytes = serde_json::to_vec(&event).expect("the SDK writes JSON");
    b.publish_foreign(t, "p-1", t, &[], &bytes).await;
    // And one the SDK built, as another CloudEvents producer.
    let theirs = EventBuilderV10::new()
        .id(Uuid::now_v7().to_string())
        .source("https://billing.example/api")
        .ty(t)
        .time(chrono::Utc::now())
        .extension("version", 1i64)
        .extension("correlationid", "flow-2")
        .extension("region", "eu")
        .data(
            "application/json",
            serde_json::json!({ "payment": "p-2", "cents": 5 }),
        )
        .build()
        .expect("a CloudEvent");
    let bytes = serde_json::to_vec(&theirs).expect("the SDK writes JSON");
    b.publish_foreign(t, "p-2", t, &[], &bytes).await;
    assert!(
        eventually(WAIT, || seen.lock().expect("lock").len() == 3).await,
        "{:?}",
        bus.stats()
    );
    let seen = seen.lock().expect("lock").clone();
    let fed_back = seen.iter().find(|e| e.id == again).expect("fed back");
    assert_eq!(fed_back.data, ours.data);
    assert_eq!(fed_back.correlation_id.as_deref(), Some("flow-1"));
    assert_eq!(fed_back.tenant_id.as_deref(), Some("acme"));
    let built = seen
        .iter()
        .find(|e| e.data.payment == "p-2")
        .expect("the SDK's own event");
    assert_eq!(built.correlation_id.as_deref(), Some("flow-2"));
    assert_eq!(built.source, "https://billing.example/api");
    assert_eq!(built.headers.get("region").map(String::as_str), Some("eu"));
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 13. Schema evolution -------------------------------------------------------------------

/// Version 1 of `profile.updated`: one `name`.
#[derive(Deserialize)]
struct ProfileUpdatedV1 {
    user: String,
    name: String,
}

/// Version 2: the name split in two.
#[derive(Serialize)]
struct ProfileUpdatedV2 {
    user: String,
    first: String,
    last: String,
}

fn profile_v1_to_v2(v1: ProfileUpdatedV1) -> ProfileUpdatedV2 {
    let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
    ProfileUpdatedV2 {
        user: v1.user,
        first: first.to_owned(),
        last: last.to_owned(),
    }
}

/// Version 2 to 3 over JSON: the fields renamed.
fn profile_v2_to_v3(mut v2: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = v2.as_object_mut() {
        for (old, new) in [("first", "given_name"), ("last", "family_name")] {
            if let Some(value) = fields.remove(old) {
                fields.insert(new.to_owned(), value);
            }
        }
    }
    v2
}

#[event(
    name = "profile.updated",
    version = 3,
    key = user,
    upcast(from = 1, with = profile_v1_to_v2),
    upcast(from = 2, with = profile_v2_to_v3)
)]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct ProfileUpdated {
    user: String,
    given_name: String,
    family_name: String,
}

/// Events published as versions 1, 2 and 3 by older producers reach a version-3 handler
/// through the upcasters, step by step; a version-1 payload the first step cannot read goes to
/// the dead-letter queue with the step named, and does not hold back the others.
async fn older_versions_reach_the_handler_through_upcasters(b: &Under) {
    let t = "profile.updated";
    b.topic(t, 1).await;
    let seen: Arc<Mutex<Vec<ProfileUpdated>>> = Arc::default();
    let log = seen.clone();
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .subscribe(
            Subscription::new(t, move |env: Envelope<ProfileUpdated>| {
                log.lock().expect("lock").push(env.data);
                async { Ok(()) }
            })
            .group(group("upcast")),
        )
        .start()
        .await
        .expect("start");
    let written = |version: u32, data: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0",
            "id": Uuid::now_v7().to_string(),
            "type": t,
            "source": "legacy-profiles",
            "time": chrono::Utc::now().to_rfc3339(),
            "datacontenttype": "application/json",
            "version": version,
            "data": data,
        }))
        .expect("json")
    };
    let older = [
        (
            "u-1",
            written(
                1,
                serde_json::json!({ "user": "u-1", "name": "Ada Lovelace" }),
            ),
        ),
        (
            "u-bad",
            written(
                1,
                serde_json::json!({ "user": "u-bad", "nom": "no name field" }),
            ),
        ),
        (
            "u-2",
            written(
                2,
                serde_json::json!({ "user": "u-2", "first": "Grace", "last": "Hopper" }),
            ),
        ),
        (
            "u-3",
            written(
                3,
                serde_json::json!({ "user": "u-3", "given_name": "Alan", "family_name": "Turing" }),
            ),
        ),
    ];
    for (key, bytes) in &older {
        b.publish_foreign(t, key, t, &[], bytes).await;
    }
    assert!(
        eventually(WAIT, || seen.lock().expect("lock").len() == 3).await,
        "handled: {:?}, {:?}",
        seen.lock().expect("lock"),
        bus.stats()
    );
    let mut got = seen.lock().expect("lock").clone();
    got.sort_by(|a, b| a.user.cmp(&b.user));
    let expected = [
        ("u-1", "Ada", "Lovelace"),
        ("u-2", "Grace", "Hopper"),
        ("u-3", "Alan", "Turing"),
    ]
    .map(|(user, given, family)| ProfileUpdated {
        user: user.into(),
        given_name: given.into(),
        family_name: family.into(),
    });
    assert_eq!(got, expected);
    let dlq = bus.dead_letters();
    let mut letters = Vec::new();
    assert!(
        eventually(WAIT, || {
            letters = futures::executor::block_on(dlq.list(t)).unwrap_or_default();
            !letters.is_empty()
        })
        .await,
        "no dead letter; {:?}",
        bus.stats()
    );
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = &letters[0].failure.message;
    assert!(
        reason.contains("upcasting `profile.updated` from version 1 failed")
            && reason.contains("name"),
        "{reason}"
    );
    assert!(
        !reason.contains("no name field"),
        "values stay out: {reason}"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 14. Event-sourced state -----------------------------------------------------------------

#[event(name = "account.opened", version = 1, topic = "accounts", key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct AccountOpened {
    account: String,
    owner: String,
}

#[event(name = "account.deposited", version = 1, topic = "accounts", key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct AccountDeposited {
    account: String,
    cents: i64,
}

#[event(name = "account.withdrawn", version = 1, topic = "accounts", key = account)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct AccountWithdrawn {
    account: String,
    cents: i64,
}

#[derive(eventbus::EventGroup, Debug, Clone)]
enum AccountEvent {
    Opened(AccountOpened),
    Deposited(AccountDeposited),
    Withdrawn(AccountWithdrawn),
}

impl AccountEvent {
    /// The change to the balance.
    fn delta(&self) -> i64 {
        match self {
            AccountEvent::Opened(_) => 0,
            AccountEvent::Deposited(d) => d.cents,
            AccountEvent::Withdrawn(w) => -w.cents,
        }
    }
}

/// An account, folded from its events.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct Account {
    owner: Option<String>,
    balance: i64,
    events: i64,
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Event = AccountEvent;

    fn apply(&mut self, event: &Envelope<AccountEvent>) {
        if let AccountEvent::Opened(opened) = &event.data {
            self.owner = Some(opened.owner.clone());
        }
        self.balance += event.data.delta();
        self.events += 1;
    }
}

/// Each account's balance and event count in the read model.
async fn balances(pool: &SqlitePool) -> HashMap<String, (i64, i64)> {
    eventbus::outbox::sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT account, cents, events FROM balances",
    )
    .fetch_all(pool)
    .await
    .expect("balances")
    .into_iter()
    .map(|(account, cents, events)| (account, (cents, events)))
    .collect()
}

/// Accounts built from their events on the broker (each key read from its own partition)
/// match a live read-model projection (a subscriber writing in the inbox transaction); the
/// state as of a time between two phases matches the first phase; a snapshot taken after the
/// first phase resumes with only the second phase's events; and the projection, emptied and
/// rebuilt by replaying the topic from its start, matches again.
async fn an_aggregate_rebuilt_from_the_log_matches_its_live_projection(b: &Under) {
    use eventbus::aggregate::snapshot::Snapshots;
    use eventbus::aggregate::Fold;
    const ACCOUNTS: usize = 6;
    const PER_PHASE: usize = 6;
    let t = "accounts";
    b.topic(t, 4).await;
    let (pool, path) = effects_db().await;
    eventbus::outbox::sqlx::query(
        "CREATE TABLE balances (account TEXT PRIMARY KEY, cents INTEGER NOT NULL, events INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("schema");
    let g = group("balances");
    let project = |ctx: Context, env: Envelope<AccountEvent>| async move {
        use eventbus::outbox::ContextExt;
        let Some(mut tx) = ctx.transaction::<eventbus::outbox::sqlx::Sqlite>().await? else {
            return Ok(());
        };
        let account = match &env.data {
            AccountEvent::Opened(e) => e.account.clone(),
            AccountEvent::Deposited(e) => e.account.clone(),
            AccountEvent::Withdrawn(e) => e.account.clone(),
        };
        eventbus::outbox::sqlx::query(
            "INSERT INTO balances (account, cents, events) VALUES (?1, ?2, 1) \
             ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents, \
             events = events + 1",
        )
        .bind(account)
        .bind(env.data.delta())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    };
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .extension(pool.clone())
        .subscribe(
            Subscription::new("account.*", project)
                .group(g.clone())
                .concurrency(4),
        )
        .start()
        .await
        .expect("start");
    let publisher = bus.publisher();
    // What each phase did to each account: (balance change, events).
    let mut phases = vec![HashMap::<String, (i64, i64)>::new(); 2];
    let mut published = 0;
    let mut between = None;
    for (phase, sums) in phases.iter_mut().enumerate() {
        for a in 0..ACCOUNTS {
            let account = format!("acc-{a}");
            if phase == 0 {
                publisher
                    .publish(AccountOpened {
                        account: account.clone(),
                        owner: format!("owner-{a}"),
                    })
                    .await
                    .expect("publish");
                let sum = sums.entry(account.clone()).or_default();
                sum.1 += 1;
                published += 1;
            }
            for i in 0..PER_PHASE {
                let cents = ((a * 7 + i * 13 + phase * 5) % 50 + 1) as i64;
                let sum = sums.entry(account.clone()).or_default();
                if i % 3 == 2 {
                    publisher
                        .publish(AccountWithdrawn {
                            account: account.clone(),
                            cents,
                        })
                        .await
                        .expect("publish");
                    sum.0 -= cents;
                } else {
                    publisher
                        .publish(AccountDeposited {
                            account: account.clone(),
                            cents,
                        })
                        .await
                        .expect("publish");
                    sum.0 += cents;
                }
                sum.1 += 1;
                published += 1;
            }
        }
        let mut seen = HashMap::new();
        let settled = eventually(WAIT, || {
            seen = futures::executor::block_on(balances(&pool));
            seen.values().map(|(_, events)| events).sum::<i64>() == published
        })
        .await;
        assert!(
            settled,
            "projection after phase {phase}: {seen:?}; {:?}",
            bus.stats()
        );
        if phase == 0 {
            // Envelope times of the second phase come after this instant.
            between = Some(chrono::Utc::now());
            sleep(Duration::from_millis(20)).await;
            let snapshots = Snapshots::new(pool.clone());
            let admin = bus.backend().admin().expect("admin");
            let first = snapshots
                .fold::<Account>(admin, "acc-0")
                .await
                .expect("snapshot fold");
            assert_eq!(first.applied, (PER_PHASE + 1) as u64);
        }
    }
    let between = between.expect("the first phase ran");
    let admin = bus.backend().admin().expect("admin");
    let projection = balances(&pool).await;
    for a in 0..ACCOUNTS {
        let account = format!("acc-{a}");
        let full = Fold::<Account>::new(&account)
            .run(admin)
            .await
            .expect("fold");
        let (cents, events) = projection[&account];
        assert_eq!(
            (full.state.balance, full.state.events),
            (cents, events),
            "{account}: folded {:?}, projected ({cents}, {events})",
            full.state
        );
        assert_eq!(
            full.state.owner.as_deref(),
            Some(format!("owner-{a}").as_str())
        );
        assert_eq!(
            full.read, events as u64,
            "{account}: read only its own events"
        );
        let then = Fold::<Account>::new(&account)
            .as_of(between)
            .run(admin)
            .await
            .expect("fold as of");
        assert_eq!(
            (then.state.balance, then.state.events),
            phases[0][&account],
            "{account} as of the end of the first phase"
        );
        if a == 0 {
            let resumed = Snapshots::new(pool.clone())
                .fold::<Account>(admin, &account)
                .await
                .expect("resumed fold");
            assert_eq!(
                resumed.state, full.state,
                "the snapshot plus what came after"
            );
            assert_eq!(
                resumed.read, PER_PHASE as u64,
                "only the second phase was read"
            );
        }
    }

    // The projection rebuilt from the topic's start.
    eventbus::outbox::sqlx::query("DELETE FROM balances")
        .execute(&pool)
        .await
        .expect("empty the read model");
    let replay = bus
        .replay(eventbus::replay::ReplayRequest {
            topic: t.into(),
            from: chrono::DateTime::UNIX_EPOCH,
            to: chrono::Utc::now() + chrono::Duration::minutes(1),
            event_type: None,
            group: Some(g.clone()),
        })
        .expect("replay");
    let mut rebuilt = HashMap::new();
    let done = eventually(WAIT, || {
        rebuilt = futures::executor::block_on(balances(&pool));
        replay.status().done && rebuilt == projection
    })
    .await;
    assert!(
        done,
        "rebuilt {rebuilt:?}, live {projection:?}, replay {:?}",
        replay.status()
    );
    bus.shutdown(Duration::from_secs(10)).await;
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

// --- 17. other producers' member names -----------------------------------------------------

#[event(name = "legacy.order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct LegacyOrderCreated {
    order_id: String,
}

/// Envelopes as other producers commonly write them (`eventId`, `eventType`,
/// `occurredAt`, `timestamp`, `payload`, a string `version`, no `source`), written by a foreign
/// producer into the transport, are handled with their id, type, time and data.
async fn other_producers_envelope_names_are_read_as_aliases(b: &Under) {
    let t = "legacy.order.created";
    b.topic(t, 1).await;
    let seen: Arc<Mutex<Vec<Envelope<LegacyOrderCreated>>>> = Arc::default();
    let log = seen.clone();
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .subscribe(
            Subscription::new(t, move |env: Envelope<LegacyOrderCreated>| {
                log.lock().expect("lock").push(env);
                async { Ok(()) }
            })
            .group(group("legacy")),
        )
        .start()
        .await
        .expect("start");
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let documents = [
        // eventId, eventType, timestamp, a string version.
        format!(
            r#"{{"eventId":"{}","eventType":"{t}","timestamp":"2024-01-01T00:00:00Z","source":"order-service","version":"1.0","data":{{"order_id":"o-1"}}}}"#,
            ids[0]
        ),
        // eventId, type, occurredAt, payload, no source or version.
        format!(
            r#"{{"eventId":"{}","type":"{t}","occurredAt":"2025-08-26T10:15:01Z","transferId":"tr_123","payload":{{"order_id":"o-2"}}}}"#,
            ids[1]
        ),
        // Our names beside theirs: ours count.
        format!(
            r#"{{"id":"{}","eventId":"{}","type":"{t}","eventType":"other.type","source":"s","time":"2026-01-01T00:00:00Z","occurredAt":"2000-01-01T00:00:00Z","version":1,"data":{{"order_id":"o-3"}}}}"#,
            ids[2],
            Uuid::nil()
        ),
    ];
    for (n, document) in documents.iter().enumerate() {
        b.publish_foreign(t, &format!("o-{}", n + 1), t, &[], document.as_bytes())
            .await;
    }
    assert!(
        eventually(WAIT, || seen.lock().expect("lock").len() == 3).await,
        "handled {:?}; {:?}",
        seen.lock()
            .expect("lock")
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        bus.stats()
    );
    let seen = seen.lock().expect("lock").clone();
    let by_id = |id: Uuid| {
        seen.iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("{id} not handled: {seen:?}"))
    };
    let shape_a = by_id(ids[0]);
    assert_eq!(shape_a.data.order_id, "o-1");
    assert_eq!(shape_a.event_type, t);
    assert_eq!(shape_a.time.to_rfc3339(), "2024-01-01T00:00:00+00:00");
    assert_eq!(
        (shape_a.source.as_str(), shape_a.version),
        ("order-service", 1)
    );
    let shape_b = by_id(ids[1]);
    assert_eq!(shape_b.data.order_id, "o-2");
    assert_eq!(shape_b.time.to_rfc3339(), "2025-08-26T10:15:01+00:00");
    assert_eq!(
        (shape_b.source.as_str(), shape_b.version),
        (eventbus::envelope::cloudevents::UNKNOWN_SOURCE, 1)
    );
    let both = by_id(ids[2]);
    assert_eq!(both.data.order_id, "o-3");
    assert_eq!(both.time.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    assert_eq!(bus.stats().dead_lettered, 0, "{:?}", bus.stats());
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 18. one dead-letter topic for the whole service ----------------------------------------

#[event(name = "orion.rfq.rejected", version = 1, key = rfq)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RfqRejected {
    rfq: String,
}

#[event(name = "orion.trade.rejected", version = 1, key = trade)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct TradeRejected {
    trade: String,
}

/// One dead-letter topic (`orion.dlq`): every topic's dead letters in it, the original topic in
/// their metadata; listing, counting, redriving and purging one topic's letters leave the
/// other's alone.
async fn one_dead_letter_topic_for_the_whole_service(b: &Under) {
    let (rfq, trade) = ("orion.rfq.rejected", "orion.trade.rejected");
    for topic in [rfq, trade, "orion"] {
        b.topic(topic, 1).await;
    }
    let backend = b.member().await;
    let refused = Bus::builder()
        .backend_arc(backend.clone())
        .dead_letter_topic("orion-dlq")
        .start()
        .await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("dead_letter_topic")),
        "a name without `.dlq` is refused: {:?}",
        refused.err()
    );
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let (f, h) = (fixed.clone(), handled.clone());
    let (f2, h2) = (fixed.clone(), handled.clone());
    let g = group("orion");
    let bus = Bus::builder()
        .backend_arc(backend.clone())
        .dead_letter_topic("orion.dlq")
        .subscribe(
            Subscription::new(rfq, move |env: Envelope<RfqRejected>| {
                let ok = f.load(Ordering::SeqCst);
                if ok {
                    h.lock().unwrap().push(env.data.rfq.clone());
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::permanent("quote expired"))
                    }
                }
            })
            .group(g.clone()),
        )
        .subscribe(
            Subscription::new(trade, move |env: Envelope<TradeRejected>| {
                let ok = f2.load(Ordering::SeqCst);
                if ok {
                    h2.lock().unwrap().push(env.data.trade.clone());
                }
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::permanent("limit breached"))
                    }
                }
            })
            .with_name("trades")
            .group(format!("{g}-trades")),
        )
        .start()
        .await
        .expect("start");
    for n in 0..3 {
        bus.publish(RfqRejected {
            rfq: format!("r-{n}"),
        })
        .await
        .expect("publish");
    }
    for n in 0..2 {
        bus.publish(TradeRejected {
            trade: format!("t-{n}"),
        })
        .await
        .expect("publish");
    }
    let dlq = bus.dead_letters();
    let counts = || {
        futures::executor::block_on(async {
            (
                dlq.count(rfq).await.unwrap_or(0),
                dlq.count(trade).await.unwrap_or(0),
            )
        })
    };
    assert!(
        eventually(WAIT, || counts() == (3, 2)).await,
        "dead letters per topic {:?}, {:?}",
        counts(),
        bus.stats()
    );
    // All five in the one topic, each naming where it came from; none in `{topic}.dlq`.
    let admin = backend.admin().expect("admin");
    let stored = admin.read_page("orion.dlq", None, 100).await.expect("read");
    let mut origins: Vec<String> = stored
        .messages
        .iter()
        .map(|m| eventbus::dead_letter::DeadLetter::from_stored(m).original_topic)
        .collect();
    origins.sort();
    assert_eq!(origins, vec![rfq, rfq, rfq, trade, trade]);
    let per_topic = eventbus::dead_letter::DeadLetters::new(backend.clone());
    assert!(
        !matches!(per_topic.count(rfq).await, Ok(n) if n > 0),
        "nothing in {rfq}.dlq"
    );
    assert_eq!(
        dlq.topics().await.expect("topics"),
        vec![rfq.to_owned(), trade.to_owned()]
    );
    let letters = dlq.list(rfq).await.expect("list");
    assert_eq!(letters.len(), 3);
    assert!(letters
        .iter()
        .all(|d| d.original_topic == rfq && d.failure.message == "quote expired"));
    let one = letters[0].id.clone();
    assert_eq!(dlq.get(rfq, &one).await.expect("get").id, one);
    assert!(
        matches!(
            dlq.get(trade, &one).await,
            Err(eventbus::Error::DeadLetterNotFound { .. })
        ),
        "an rfq letter is not one of the trade topic's"
    );
    assert_eq!(
        dlq.purge(trade, vec![one.clone()]).await.expect("purge"),
        0,
        "purging under another topic deletes nothing"
    );

    fixed.store(true, Ordering::SeqCst);
    assert_eq!(dlq.redrive_all(rfq).await.expect("redrive"), 3);
    assert!(
        eventually(WAIT, || handled.lock().unwrap().len() == 3).await,
        "handled after the redrive: {:?}",
        handled.lock().unwrap()
    );
    assert_eq!(counts(), (0, 2), "the trade letters stay");
    assert_eq!(dlq.purge_where(trade, |_| true).await.expect("purge"), 2);
    assert_eq!(counts(), (0, 0));
    assert!(
        dlq.topics().await.expect("topics").is_empty(),
        "the one topic is empty"
    );
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 19. filters and unsubscribing at run time ----------------------------------------------

#[event(name = "quote.updated", version = 1, key = symbol)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct QuoteUpdated {
    symbol: String,
    n: u32,
}

#[event(name = "job.run", version = 1, key = job)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct JobRun {
    job: String,
    n: u32,
}

/// A subscription's filter: rejected events are acknowledged, counted as filtered, never
/// handled. `Bus::unsubscribe` at run time: the deliveries in flight finish, the rest go back
/// to the backend, and the group, subscribed again, gets every event once (inbox shared).
async fn a_filter_drops_what_it_rejects_and_unsubscribe_drains_in_flight(b: &Under) {
    let (quotes, jobs) = ("quote.updated", "job.run");
    b.topic(quotes, 2).await;
    b.topic(jobs, 2).await;
    let inbox = Arc::new(MemoryInbox::new());
    let aapl: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let started = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<Vec<u32>>> = Arc::default();
    let job_group = group("jobs");
    let slow = |name: &str| {
        let (started, done) = (started.clone(), done.clone());
        Subscription::new(jobs, move |env: Envelope<JobRun>| {
            let (started, done) = (started.clone(), done.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(300)).await;
                done.lock().unwrap().push(env.data.n);
                Ok(())
            }
        })
        .with_name(name.to_owned())
        .group(job_group.clone())
        .concurrency(1)
    };
    let log = aapl.clone();
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .inbox(inbox.clone())
        .subscribe(
            Subscription::new(quotes, move |env: Envelope<QuoteUpdated>| {
                log.lock()
                    .unwrap()
                    .push((env.data.symbol.clone(), env.data.n));
                async { Ok(()) }
            })
            .with_name("aapl-quotes")
            .group(group("quotes"))
            .filter(|envelope| envelope.data.get().contains(r#""symbol":"AAPL""#)),
        )
        .subscribe(slow("slow-jobs"))
        .start()
        .await
        .expect("start");
    for n in 0..10u32 {
        let symbol = if n % 3 == 0 { "AAPL" } else { "MSFT" };
        bus.publish(QuoteUpdated {
            symbol: symbol.into(),
            n,
        })
        .await
        .expect("publish");
    }
    assert!(
        eventually(WAIT, || bus.stats().filtered == 6
            && aapl.lock().unwrap().len() == 4)
        .await,
        "{:?}; handled {:?}",
        bus.stats(),
        aapl.lock().unwrap()
    );
    assert!(
        aapl.lock()
            .unwrap()
            .iter()
            .all(|(s, n)| s == "AAPL" && n % 3 == 0),
        "{:?}",
        aapl.lock().unwrap()
    );

    for n in 0..6u32 {
        bus.publish(JobRun {
            job: format!("j-{n}"),
            n,
        })
        .await
        .expect("publish");
    }
    assert!(
        eventually(WAIT, || started.load(Ordering::SeqCst) >= 1).await,
        "no job started: {:?}",
        bus.stats()
    );
    let drained = bus
        .unsubscribe("slow-jobs", Duration::from_secs(20))
        .await
        .expect("unsubscribe");
    assert!(drained, "the job in flight finished within the timeout");
    let (at_stop, finished) = (started.load(Ordering::SeqCst), done.lock().unwrap().len());
    assert_eq!(
        at_stop, finished,
        "every started job finished before unsubscribe returned"
    );
    assert!(
        finished < 6,
        "the slow subscription was stopped before the end: {finished}"
    );
    assert_eq!(bus.subscriptions(), vec!["aapl-quotes".to_owned()]);
    assert!(
        matches!(bus.unsubscribe("slow-jobs", Duration::from_secs(1)).await,
            Err(e) if e.to_string().contains("subscription")),
        "a second unsubscribe names the setting"
    );
    // The quotes subscription still runs.
    bus.publish(QuoteUpdated {
        symbol: "AAPL".into(),
        n: 99,
    })
    .await
    .expect("publish");
    assert!(
        eventually(WAIT, || aapl.lock().unwrap().len() == 5).await,
        "{:?}",
        aapl.lock().unwrap()
    );

    // The group, subscribed again, gets the rest; the shared inbox drops what was done.
    let again = Bus::builder()
        .backend_arc(b.member().await)
        .inbox(inbox.clone())
        .subscribe(slow("slow-jobs"))
        .start()
        .await
        .expect("start again");
    let all = || {
        let mut seen = done.lock().unwrap().clone();
        seen.sort_unstable();
        seen
    };
    assert!(
        eventually(Duration::from_secs(60), || all()
            == (0..6).collect::<Vec<_>>())
        .await,
        "jobs done {:?}; {:?} {:?}",
        all(),
        bus.stats(),
        again.stats()
    );
    again.shutdown(Duration::from_secs(10)).await;
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- 20. a topic prefix per environment ------------------------------------------------------

#[event(name = "env.order.placed", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct EnvOrderPlaced {
    order_id: String,
    env: String,
}

/// Two environments on one backend, each under a topic prefix: the same topic, group and
/// subscriptions under `staging.` and `prod.`; each bus handles, dead-letters, lists and
/// redrives only its own events, and the backend holds them under the prefixed names.
async fn a_topic_prefix_keeps_two_environments_apart(b: &Under) {
    let t = "env.order.placed";
    for env in ["staging.", "prod."] {
        b.topic(&format!("{env}{t}"), 2).await;
    }
    let backend = b.member().await;
    let refused = Bus::builder()
        .backend_arc(backend.clone())
        .topic_prefix("bad prefix")
        .start()
        .await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("topic_prefix")),
        "{:?}",
        refused.err()
    );
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g = group("env");
    let start = |env: &'static str| {
        let (seen, fixed, g) = (seen.clone(), fixed.clone(), g.clone());
        let backend = backend.clone();
        async move {
            let (typed_seen, wild_seen) = (seen.clone(), seen.clone());
            let fixed = fixed.clone();
            Bus::builder()
                .backend_arc(backend)
                .topic_prefix(format!("{env}."))
                .subscribe(
                    Subscription::new(t, move |ctx: Context, e: Envelope<EnvOrderPlaced>| {
                        typed_seen.lock().unwrap().push((
                            env.to_owned(),
                            ctx.topic().to_owned(),
                            e.data.env.clone(),
                        ));
                        let fail = e.data.order_id == "o-poison" && !fixed.load(Ordering::SeqCst);
                        async move {
                            if fail {
                                Err(HandlerError::permanent("poison"))
                            } else {
                                Ok(())
                            }
                        }
                    })
                    .with_name("typed")
                    .group(g.clone()),
                )
                .subscribe(
                    Subscription::new("env.order.*", move |e: Envelope<serde_json::Value>| {
                        wild_seen.lock().unwrap().push((
                            format!("{env}-wildcard"),
                            String::new(),
                            e.data["env"].as_str().unwrap_or_default().to_owned(),
                        ));
                        async { Ok(()) }
                    })
                    .with_name("wildcard")
                    .group(format!("{g}-wild")),
                )
                .start()
                .await
                .expect("start")
        }
    };
    let staging = start("staging").await;
    let prod = start("prod").await;
    for (bus, env, orders) in [
        (&staging, "staging", vec!["o-1", "o-2", "o-poison"]),
        (&prod, "prod", vec!["o-1", "o-2"]),
    ] {
        for order in orders {
            bus.publish(EnvOrderPlaced {
                order_id: order.into(),
                env: env.into(),
            })
            .await
            .expect("publish");
        }
    }
    let settled = || {
        let s = staging.stats();
        let p = prod.stats();
        (s.handled + s.dead_lettered, p.handled + p.dead_lettered)
    };
    assert!(
        eventually(WAIT, || settled() == (6, 4)).await,
        "settled {:?}; seen {:?}",
        settled(),
        seen.lock().unwrap()
    );
    for (who, topic, env) in seen.lock().unwrap().iter() {
        assert!(
            who.starts_with(env.as_str()),
            "{who} handled an event of {env}"
        );
        if !topic.is_empty() {
            assert_eq!(topic, t, "handlers see the topic without the prefix");
        }
    }
    // Dead letters: staging's own, under its names.
    let letters = staging.dead_letters().list(t).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].original_topic, t);
    assert_eq!(prod.dead_letters().count(t).await.expect("count"), 0);
    assert_eq!(
        staging.dead_letters().topics().await.expect("topics"),
        vec![t.to_owned()]
    );
    let raw = backend.admin().expect("admin");
    let stored = raw
        .read_page(&format!("staging.{t}.dlq"), None, 10)
        .await
        .expect("the prefixed dead-letter topic");
    assert_eq!(stored.messages.len(), 1);
    assert!(
        !matches!(raw.count(&format!("{t}.dlq")).await, Ok(n) if n > 0),
        "nothing under the bare name"
    );
    let lags = staging
        .backend()
        .admin()
        .expect("admin")
        .group_lag()
        .await
        .expect("lag");
    assert!(
        lags.iter()
            .all(|l| l.group == g || l.group == format!("{g}-wild")),
        "staging's groups without the prefix: {lags:?}"
    );
    // Redrive in staging reaches staging's group only.
    fixed.store(true, Ordering::SeqCst);
    assert_eq!(
        staging
            .dead_letters()
            .redrive_all(t)
            .await
            .expect("redrive"),
        1
    );
    assert!(
        eventually(WAIT, || staging.stats().handled == 6).await,
        "{:?}",
        staging.stats()
    );
    assert_eq!(prod.stats().handled, 4, "{:?}", prod.stats());
    staging.shutdown(Duration::from_secs(10)).await;
    prod.shutdown(Duration::from_secs(10)).await;
}

// --- 16. the admin API's topics agree -------------------------------------------------------

#[event(name = "dash.order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct DashOrderCreated {
    order_id: String,
    n: u32,
}

/// `GET` of the admin API at `base` as JSON.
async fn admin_get(base: &str, path: &str) -> serde_json::Value {
    let url = format!("{base}{path}");
    unblock(move || {
        let mut response = ureq::get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        response
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    })
    .await
}

/// The dead-lettered count of `topic` in `GET /api/stats` and its queue in `GET /dlq`.
async fn admin_dead_letters(base: &str, topic: &str) -> (u64, Option<u64>, serde_json::Value) {
    let stats = admin_get(base, "/api/stats").await;
    let counted = stats["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["topic"] == topic))
        .and_then(|t| t["dead_lettered"].as_u64())
        .unwrap_or(0);
    let dlq = admin_get(base, "/dlq?limit=500").await;
    let queued = dlq["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["topic"] == topic))
        .and_then(|t| t["size"].as_u64());
    (counted, queued, dlq)
}

/// A service with one wildcard subscriber and no catalog: the admin API's throughput counts
/// and its dead-letter listing agree on the topic the subscriber discovered, and a restarted
/// process (no metrics yet) still lists the dead letters the backend holds.
async fn the_admin_api_lists_dead_letters_of_topics_outside_the_catalog(b: &Under) {
    const N: u32 = 40;
    let t = "dash.order.created";
    b.topic(t, 2).await;
    let g = group("dash");
    let start = |backend: Arc<dyn Backend>| {
        let g = g.clone();
        async move {
            let bus = Bus::builder()
                .backend_arc(backend)
                .subscribe(
                    Subscription::new(
                        "dash.order.*",
                        |env: Envelope<serde_json::Value>| async move {
                            if env.data["n"].as_u64().is_some_and(|n| n % 5 == 0) {
                                Err(HandlerError::permanent("card declined"))
                            } else {
                                Ok(())
                            }
                        },
                    )
                    .group(g),
                )
                .start()
                .await
                .expect("start");
            let bus = Arc::new(bus);
            let admin = eventbus_integration::serve_admin(
                bus.clone(),
                eventbus::admin::AdminConfig::new("127.0.0.1:0".parse().expect("address")),
            )
            .await;
            let base = format!("http://{}", admin.local_addr());
            (bus, admin, base)
        }
    };
    let (bus, admin, base) = start(b.member().await).await;
    for n in 0..N {
        bus.publish(DashOrderCreated {
            order_id: format!("o-{n}"),
            n,
        })
        .await
        .expect("publish");
    }
    let failing = u64::from(N / 5);
    let settled = || {
        let s = bus.stats();
        s.handled + s.dead_lettered
    };
    assert!(
        eventually(WAIT, || settled() == u64::from(N)).await,
        "settled {} of {N}: {:?}",
        settled(),
        bus.stats()
    );
    let (counted, queued, dlq) = admin_dead_letters(&base, t).await;
    assert_eq!(
        (counted, queued),
        (failing, Some(failing)),
        "/api/stats counts {counted} dead-lettered, /dlq holds {queued:?}: {dlq}"
    );
    assert_eq!(dlq["total"], failing, "{dlq}");
    let items = dlq["items"].as_array().expect("items");
    assert_eq!(items.len() as u64, failing, "{dlq}");
    assert!(
        items.iter().all(|d| d["original_topic"] == t
            && d["failure"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("card declined"))),
        "every dead letter names its topic and reason: {dlq}"
    );
    let one = items[0]["id"].as_str().expect("id");
    let inspected = admin_get(&base, &format!("/dlq/{t}/{one}")).await;
    assert_eq!(inspected["original_topic"], t, "{inspected}");
    admin.shutdown().await;
    bus.shutdown(Duration::from_secs(10)).await;

    // A restarted process has no metrics yet: the backend still says where dead letters are.
    let (bus, admin, base) = start(b.member().await).await;
    let (counted, queued, dlq) = admin_dead_letters(&base, t).await;
    assert_eq!(
        (counted, queued),
        (0, Some(failing)),
        "after a restart: {dlq}"
    );
    assert_eq!(dlq["total"], failing, "{dlq}");
    admin.shutdown().await;
    bus.shutdown(Duration::from_secs(10)).await;
}

// --- every attempt sees the whole envelope ---------------------------------------------------

#[event(name = "audit.recorded", version = 1, key = entry)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct AuditRecorded {
    entry: String,
}

/// What one attempt of the handler saw of its envelope and context.
#[derive(Debug, Clone, PartialEq)]
struct AttemptSaw {
    event_type: String,
    correlation_id: Option<String>,
    tenant_id: Option<String>,
    header: Option<String>,
    ctx_correlation_id: Option<String>,
    ctx_header: Option<String>,
}

/// A user layer that reads the envelope's correlation id after every attempt that did not end
/// handled, and says it reads nothing after a handled one (so the handler's envelope may take
/// the decoded envelope's metadata instead of a copy).
#[derive(Clone, Default)]
struct FailureWitness(Arc<Mutex<Vec<Option<String>>>>);

impl eventbus::pipeline::Layer for FailureWitness {
    fn handle<'a>(
        &'a self,
        cx: &'a mut eventbus::pipeline::DeliveryCx,
        next: eventbus::pipeline::Next<'a>,
    ) -> futures::future::BoxFuture<'a, eventbus::pipeline::Outcome> {
        Box::pin(async move {
            let outcome = next.run(cx).await;
            if !matches!(outcome, eventbus::pipeline::Outcome::Handled) {
                let correlation = cx.envelope.as_ref().and_then(|e| e.correlation_id.clone());
                self.0.lock().unwrap().push(correlation);
            }
            outcome
        })
    }

    fn reads_handled_envelope(&self) -> bool {
        false
    }
}

/// An event whose handler fails, panics, times out and then succeeds: each attempt sees the
/// same metadata on its envelope and its context, and a layer reads it after each failed one.
async fn every_attempt_sees_the_whole_envelope(b: &Under) {
    b.topic("audit.recorded", 1).await;
    let seen: Arc<Mutex<Vec<AttemptSaw>>> = Arc::default();
    let s = seen.clone();
    let witness = FailureWitness::default();
    let entry = format!("e-{}", Uuid::now_v7().simple());
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .layer(witness.clone())
        .subscribe(
            Subscription::new(
                "audit.recorded",
                move |ctx: Context, env: Envelope<AuditRecorded>| {
                    let attempt = {
                        let mut seen = s.lock().unwrap();
                        seen.push(AttemptSaw {
                            event_type: env.event_type.clone(),
                            correlation_id: env.correlation_id.clone(),
                            tenant_id: env.tenant_id.clone(),
                            header: env.headers.get("x-origin").cloned(),
                            ctx_correlation_id: ctx.correlation_id().map(str::to_owned),
                            ctx_header: ctx.headers().get("x-origin").cloned(),
                        });
                        seen.len()
                    };
                    async move {
                        match attempt {
                            1 => Err(HandlerError::transient("first attempt fails")),
                            2 => panic!("second attempt panics"),
                            3 => futures::future::pending().await,
                            _ => Ok(()),
                        }
                    }
                },
            )
            .group(group("audit"))
            .retries(3)
            .backoff(Backoff::schedule([Duration::from_millis(20)]))
            .timeout(Duration::from_secs(1)),
        )
        .start()
        .await
        .expect("start");
    let envelope = Envelope::new(AuditRecorded {
        entry: entry.clone(),
    })
    .with_correlation_id("corr-7")
    .with_tenant("acme")
    .with_header("x-origin", "checkout");
    bus.publisher()
        .publish_envelope(envelope)
        .await
        .expect("publish");
    assert!(
        eventually(WAIT, || bus.stats().handled == 1).await,
        "{:?}; attempts: {:?}",
        bus.stats(),
        seen.lock().unwrap()
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "attempts seen: {seen:?}");
    let first = AttemptSaw {
        event_type: "audit.recorded".into(),
        correlation_id: Some("corr-7".into()),
        tenant_id: Some("acme".into()),
        header: Some("checkout".into()),
        ctx_correlation_id: Some("corr-7".into()),
        ctx_header: Some("checkout".into()),
    };
    for (attempt, saw) in seen.iter().enumerate() {
        assert_eq!(saw, &first, "attempt {}", attempt + 1);
    }
    let corr = Some("corr-7".to_owned());
    assert_eq!(
        *witness.0.lock().unwrap(),
        vec![corr.clone(), corr.clone(), corr],
        "what the layer read after each failed attempt"
    );
    assert_eq!(bus.stats().dead_lettered, 0, "{:?}", bus.stats());
    bus.shutdown(Duration::from_secs(10)).await;
}

// --. a quiet start ---------------------------------------------------------------------------

#[event(name = "quiet.noted", version = 1, topic = "quiet", key = note)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct QuietNoted {
    note: String,
}

/// A member that starts on an existing topic, handles an event and stops logs no warning and
/// no error: what a service does on every deploy is not something its operators learn to
/// ignore. (Warnings and errors of this process that name the group or the topic; the rest of
/// the suite runs beside it.)
async fn a_normal_start_handle_and_stop_logs_no_warning(b: &Under) {
    b.topic("quiet", 2).await;
    let start = eventbus_integration::logs::mark();
    let quiet_group = group("quiet");
    let run = Uuid::now_v7().simple().to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let (s, this_run) = (seen.clone(), run.clone());
    let bus = Bus::builder()
        .backend_arc(b.member().await)
        .subscribe(
            Subscription::new("quiet.noted", move |env: Envelope<QuietNoted>| {
                if env.data.note == this_run {
                    s.fetch_add(1, Ordering::SeqCst);
                }
                async { Ok(()) }
            })
            .group(quiet_group.clone()),
        )
        .start()
        .await
        .expect("start");
    bus.publish(QuietNoted { note: run.clone() }).await.unwrap();
    assert!(
        eventually(WAIT, || seen.load(Ordering::SeqCst) == 1).await,
        "the event was not handled within {WAIT:?}"
    );
    let report = bus.shutdown(Duration::from_secs(10)).await;
    let noise = eventbus_integration::logs::since(start, &[&quiet_group, "quiet"]);
    assert!(
        noise.is_empty(),
        "start, handle and stop logged warnings or errors: {noise:#?}; shutdown: {report:?}"
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let under = super::Under::memory();
                        under.run(super::$case(&under)).await;
                    });
                }
            )*
        }
        mod redis {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let Some(under) = super::Under::redis() else { return };
                        under.run(super::$case(&under)).await;
                    });
                }
            )*
        }
        mod redis_cluster {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let Some(under) = super::Under::redis_cluster() else { return };
                        under.run(super::$case(&under)).await;
                    });
                }
            )*
        }
        mod kafka_mock {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let under = super::Under::kafka_mock();
                        under.run(super::$case(&under)).await;
                    });
                }
            )*
        }
        mod tansu {
            $(
                #[test]
                fn $case() {
                    eventbus_integration::run(4, async {
                        let Some(under) = super::Under::tansu().await else { return };
                        under.run(super::$case(&under)).await;
                    });
                }
            )*
        }
    };
}

conformance!(
    typed_handler_on_a_wider_pattern_gets_only_its_type,
    a_typed_handler_reads_its_event_topic_without_a_catalog,
    a_slow_handler_is_never_run_twice_at_once,
    per_key_order_across_two_members,
    per_key_order_across_three_members_through_a_crash,
    a_nacked_event_holds_back_its_key,
    a_failed_remote_inbox_record_holds_back_its_key,
    copies_read_together_are_dropped_by_an_inbox_asked_ahead,
    a_stale_answer_asked_ahead_is_asked_again,
    poison_and_forged_headers_never_stall,
    redrive_goes_only_to_the_group_that_failed,
    dead_letter_tools_page_through_the_queue,
    exactly_once_effect_under_faults_with_the_sql_inbox,
    a_parked_key_stays_parked_across_a_restart,
    cloudevents_sdk_reads_ours_and_we_handle_its,
    older_versions_reach_the_handler_through_upcasters,
    an_aggregate_rebuilt_from_the_log_matches_its_live_projection,
    the_admin_api_lists_dead_letters_of_topics_outside_the_catalog,
    other_producers_envelope_names_are_read_as_aliases,
    one_dead_letter_topic_for_the_whole_service,
    a_filter_drops_what_it_rejects_and_unsubscribe_drains_in_flight,
    a_topic_prefix_keeps_two_environments_apart,
    every_attempt_sees_the_whole_envelope,
    a_normal_start_handle_and_stop_logs_no_warning,
);
