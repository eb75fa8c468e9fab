//! The Redis Streams backend against a real `redis-server` (started by `scripts/test`, URL in
//! `EVENTBUS_REDIS_URL`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::redis::{RedisBackend, RedisConfig, Retention, StartFrom};
use eventbus::backend::{Backend, BackendAdmin};
use eventbus::{event, Bus, Context, Envelope, ErrorKind, HandlerError, Subscription};
use eventbus_integration::{eventually, eventually_reads, require_server, unique_prefix};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[event(name = "approval.granted", version = 1, key = approval_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ApprovalGranted {
    approval_id: String,
    n: u32,
}

#[event(name = "approval.rejected", version = 1, key = approval_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ApprovalRejected {
    approval_id: String,
}

#[event(name = "user.invited", version = 1)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct UserInvited {
    email: String,
}

const WAIT: Duration = Duration::from_secs(20);

fn config(url: &str, name: &str) -> RedisConfig {
    let mut c = RedisConfig::new(url);
    c.prefix = unique_prefix(name);
    c.block = Duration::from_millis(200);
    c.claim_idle = Duration::from_millis(600);
    c.claim_interval = Duration::from_millis(200);
    c.discovery_interval = Duration::from_millis(200);
    c.delayed_poll = Duration::from_millis(50);
    c.start_from = StartFrom::Earliest;
    c.lease_ttl = Duration::from_secs(1);
    c
}

/// [`config`] for the local Redis Cluster (`EVENTBUS_REDIS_CLUSTER_URL`), or `None` when the
/// run has none (and does not require it).
fn cluster_config(name: &str) -> Option<RedisConfig> {
    let url = require_server("EVENTBUS_REDIS_CLUSTER_URL", "redis_cluster")?;
    let mut c = config(&url, name);
    c.cluster = true;
    Some(c)
}

async fn backend(url: &str, name: &str) -> RedisBackend {
    RedisBackend::connect(config(url, name))
        .await
        .expect("connect")
}

/// A second connection to the keys of `prefix`.
async fn backend_with_prefix(url: &str, prefix: &str) -> RedisBackend {
    let mut c = config(url, "unused");
    c.prefix = prefix.to_owned();
    RedisBackend::connect(c).await.expect("connect")
}

fn granted(id: &str, n: u32) -> ApprovalGranted {
    ApprovalGranted {
        approval_id: id.to_owned(),
        n,
    }
}

/// Collects what a handler saw.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn logging(log: &Log, group: &str, pattern: &str) -> Subscription {
    let log = log.clone();
    Subscription::new(pattern, move |env: Envelope<serde_json::Value>| {
        let log = log.clone();
        async move {
            log.push(format!("{} {}", env.event_type, env.id));
            Ok(())
        }
    })
    .group(group)
    .with_name(format!("{group}-{pattern}"))
}

#[test]
fn typed_and_wildcard_handlers_round_trip() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "roundtrip").await;
        let typed = Log::default();
        let t = typed.clone();
        let wildcard = Log::default();
        let bus = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(
                Subscription::new(
                    "approval.granted",
                    move |ctx: Context, env: Envelope<ApprovalGranted>| {
                        let t = t.clone();
                        async move {
                            t.push(format!(
                                "{} {} {}",
                                env.data.approval_id,
                                env.data.n,
                                ctx.group()
                            ));
                            Ok(())
                        }
                    },
                )
                .group("typed"),
            )
            .subscribe(logging(&wildcard, "audit", "approval.*"))
            .start()
            .await
            .unwrap();
        bus.publish(granted("a-1", 1)).await.unwrap();
        bus.publish(ApprovalRejected {
            approval_id: "a-2".into(),
        })
        .await
        .unwrap();
        bus.publish(UserInvited {
            email: "x@y".into(),
        })
        .await
        .unwrap();
        assert!(
            eventually(WAIT, || typed.len() == 1 && wildcard.len() == 2).await,
            "{:?} {:?}",
            typed.all(),
            wildcard.all()
        );
        // Nothing else arrives.
        eventbus_integration::sleep(Duration::from_millis(500)).await;
        assert_eq!(typed.all(), vec!["a-1 1 typed"]);
        // Two topics are two streams: no order between them.
        let mut types: Vec<String> = wildcard
            .all()
            .iter()
            .map(|s| s.split(' ').next().unwrap().to_owned())
            .collect();
        types.sort();
        assert_eq!(types, vec!["approval.granted", "approval.rejected"]);
        let pending = eventually_reads(
            WAIT,
            || b.pending("approval.granted", "typed"),
            |pending| matches!(pending, Ok(0)),
        )
        .await;
        assert!(pending.is_ok(), "handled entries left pending: {pending:?}");
        assert!(b.health().await.is_ok());
        bus.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn two_groups_each_get_everything_and_members_split_without_duplicates() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut c = config(&url, "groups");
        c.partitions = 4;
        // Nobody dies here: claims and lease expiry, timed for the cases about dead members,
        // would move entries of a member the loaded machine merely paused for a second.
        c.claim_idle = Duration::from_secs(10);
        c.lease_ttl = Duration::from_secs(10);
        let b = RedisBackend::connect(c).await.expect("connect");
        let audit = Log::default();
        let member_a = Log::default();
        let member_b = Log::default();
        // Two bus instances model two processes of the "billing" service.
        let catalog = [eventbus::CatalogEntry::of::<ApprovalGranted>()];
        let bus_a = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .catalog(&catalog)
            .subscribe(logging(&member_a, "billing", "approval.*"))
            .subscribe(logging(&audit, "audit", "#"))
            .start()
            .await
            .unwrap();
        let bus_b = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .catalog(&catalog)
            .subscribe(logging(&member_b, "billing", "approval.*"))
            .start()
            .await
            .unwrap();
        // Members split the 4 partitions of the topic once both are in the group.
        let mut owners = Vec::new();
        assert!(
            eventually(WAIT, || {
                owners =
                    futures::executor::block_on(b.partition_owners("approval.granted", "billing"))
                        .unwrap_or_default();
                owners.iter().flatten().collect::<HashSet<_>>().len() == 2
                    && owners.iter().all(Option::is_some)
            })
            .await,
            "owners {owners:?}"
        );
        let envelopes: Vec<_> = (0..400)
            .map(|i| Envelope::new(granted(&format!("k{}", i % 40), i)))
            .collect();
        bus_a.publisher().publish_batch(envelopes).await.unwrap();
        assert!(
            eventually(WAIT, || member_a.len() + member_b.len() == 400
                && audit.len() == 400)
            .await,
            "a={} b={} audit={}",
            member_a.len(),
            member_b.len(),
            audit.len()
        );
        eventbus_integration::sleep(Duration::from_millis(300)).await;
        let mut billing: Vec<String> = member_a.all();
        billing.extend(member_b.all());
        let unique: HashSet<&String> = billing.iter().collect();
        assert_eq!(billing.len(), 400, "no duplicates in the group");
        assert_eq!(unique.len(), 400);
        assert!(
            member_a.len() > 0 && member_b.len() > 0,
            "both members got work: {} / {}",
            member_a.len(),
            member_b.len()
        );
        bus_a.shutdown(Duration::from_secs(5)).await;
        bus_b.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn a_killed_consumer_s_entries_are_claimed_and_finished_by_another_member() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "claim").await;
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        // The first process hangs in its handler and is then killed.
        let doomed = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(
                Subscription::new("approval.granted", move |_: Envelope<ApprovalGranted>| {
                    s.fetch_add(1, Ordering::SeqCst);
                    async {
                        futures::future::pending::<()>().await;
                        Ok(())
                    }
                })
                .group("workers"),
            )
            .start()
            .await
            .unwrap();
        doomed.publish(granted("x", 1)).await.unwrap();
        assert!(eventually(WAIT, || started.load(Ordering::SeqCst) == 1).await);
        doomed.abort().await;
        assert_eq!(
            b.pending("approval.granted", "workers").await.unwrap(),
            1,
            "left pending"
        );

        let attempts = Arc::new(Mutex::new(Vec::new()));
        let a = attempts.clone();
        let survivor = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(
                Subscription::new(
                    "approval.granted",
                    move |ctx: Context, _: Envelope<ApprovalGranted>| {
                        a.lock().unwrap().push(ctx.attempt());
                        async { Ok(()) }
                    },
                )
                .group("workers"),
            )
            .start()
            .await
            .unwrap();
        assert!(eventually(WAIT, || attempts.lock().unwrap().len() == 1).await);
        assert_eq!(
            *attempts.lock().unwrap(),
            vec![2],
            "the pending list's delivery count drives the attempt"
        );
        assert!(eventually(WAIT, || b.stats().claimed >= 1).await);
        let mut pending = 1;
        assert!(
            eventually(WAIT, || {
                pending =
                    futures::executor::block_on(b.pending("approval.granted", "workers")).unwrap();
                pending == 0
            })
            .await
        );
        survivor.shutdown(Duration::from_secs(5)).await;
    });
}

/// The README's limit of a stalled process: a member stalled as a whole for longer than its
/// partition's `lease_ttl` (and `claim_idle`) renews nothing, so another member takes the
/// partition, claims the entry still in flight on the stalled one and runs it again. The
/// stalled member here has a tokio runtime of its own, on one thread, which its handler
/// blocks: its bus, its lease renewal, its claim heartbeat and its Redis connection all stop,
/// as in a stopped process.
#[test]
fn a_member_stalled_past_its_lease_loses_its_in_flight_entry_to_another() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        const STALL: Duration = Duration::from_secs(8);
        let settings = config(&url, "stalled");
        let prefix = settings.prefix.clone();
        let b = RedisBackend::connect(settings).await.expect("connect");
        let starts: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = std::thread::spawn({
            let (url, prefix, starts, stop) =
                (url.clone(), prefix.clone(), starts.clone(), stop.clone());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let a = backend_with_prefix(&url, &prefix).await;
                    let bus = Bus::builder()
                        .backend(a)
                        .subscribe(
                            Subscription::new(
                                "approval.granted",
                                move |_: Envelope<ApprovalGranted>| {
                                    let first = {
                                        let mut starts = starts.lock().unwrap();
                                        starts.push("a");
                                        starts.len() == 1
                                    };
                                    if first {
                                        // Blocks the runtime's only thread: the whole member stops.
                                        std::thread::sleep(STALL);
                                    }
                                    async { Ok(()) }
                                },
                            )
                            .group("workers"),
                        )
                        .start()
                        .await
                        .expect("start");
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    bus.shutdown(Duration::from_secs(5)).await;
                })
            }
        });
        let publisher = Bus::builder().backend(b.clone()).start().await.unwrap();
        publisher.publish(granted("x", 1)).await.expect("publish");
        let started = |who: &str| starts.lock().unwrap().contains(&who);
        assert!(
            eventually(WAIT, || started("a")).await,
            "the member to stall never started the event: {:?}",
            starts.lock().unwrap()
        );
        let s = starts.clone();
        let other = Bus::builder()
            .backend(b.clone())
            .subscribe(
                Subscription::new("approval.granted", move |_: Envelope<ApprovalGranted>| {
                    s.lock().unwrap().push("b");
                    async { Ok(()) }
                })
                .group("workers"),
            )
            .start()
            .await
            .unwrap();
        let taken_over = eventually(WAIT, || started("b")).await;
        stop.store(true, Ordering::SeqCst);
        let seen = starts.lock().unwrap().clone();
        assert!(
            taken_over,
            "the other member never ran the stalled member's event: starts {seen:?}, {:?}",
            b.stats()
        );
        assert_eq!(
            seen,
            ["a", "b"],
            "started by the stalled member, then by the other"
        );
        eventbus_integration::unblock(move || stalled.join())
            .await
            .expect("the stalled member's thread");
        other.shutdown(Duration::from_secs(5)).await;
    });
}

/// A member whose partition lease was taken from it reads nothing more of the partition: its
/// next read finds the lease holding another token, and it drops the partition instead of
/// reading. Once the lease is free again, it takes the partition back and handles what was
/// published meanwhile, in order, none lost.
#[test]
fn a_member_reads_nothing_of_a_partition_whose_lease_it_lost() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut c = config(&url, "fence");
        // Beats every 2 s: the forged lease below is met by the read first.
        c.lease_ttl = Duration::from_secs(6);
        let prefix = c.prefix.clone();
        let b = RedisBackend::connect(c).await.expect("connect");
        let handled = Log::default();
        let h = handled.clone();
        let bus = Bus::builder()
            .backend(b.clone())
            .subscribe(
                Subscription::new("approval.granted", move |env: Envelope<ApprovalGranted>| {
                    h.push(env.data.n.to_string());
                    async { Ok(()) }
                })
                .group("fenced"),
            )
            .start()
            .await
            .unwrap();
        bus.publish(granted("a", 0)).await.unwrap();
        assert!(
            eventually(WAIT, || handled.len() == 1).await,
            "the first event was not handled: {:?}",
            handled.all()
        );
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // The lease of the topic's one partition stream for the group (the stream key is its
        // hash tag).
        let lease = format!("{{{prefix}:events:approval.granted}}:lease:fenced");
        let holder: Option<String> = redis::cmd("GET")
            .arg(&lease)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            holder.as_deref().is_some_and(|h| h.starts_with("fenced-")),
            "the member holds {lease}: {holder:?}"
        );
        // Another member's token, as a takeover would leave it.
        let _: () = redis::cmd("SET")
            .arg(&lease)
            .arg("intruder|999999")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        for n in 1..=5 {
            bus.publish(granted("a", n)).await.unwrap();
        }
        assert!(
            !eventually(Duration::from_secs(2), || handled.len() > 1).await,
            "read under a lease another member holds: {:?}",
            handled.all()
        );
        let _: () = redis::cmd("DEL")
            .arg(&lease)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            eventually(WAIT, || handled.len() == 6).await,
            "not taken back and finished: {:?}",
            handled.all()
        );
        assert_eq!(handled.all(), ["0", "1", "2", "3", "4", "5"]);
        bus.shutdown(Duration::from_secs(5)).await;
    });
}

/// A member of group `group` on a topic of one partition, reading batches of 8 at
/// concurrency 1, whose handler holds event 0 back until `gate` opens: the consumer then takes
/// in 17 deliveries (one running, 16 waiting), which three reads supply. A member that reads
/// only when asked has then read 24 of the first 32 events; one that reads ahead, all 32.
struct HeldBack {
    bus: Bus,
    backend: RedisBackend,
    handled: Log,
    gate: Arc<std::sync::atomic::AtomicBool>,
    stream: String,
    conn: redis::aio::MultiplexedConnection,
}

impl HeldBack {
    async fn start(url: &str, group: &str) -> Self {
        let mut c = config(url, group);
        // Beats every 2 s: a lease forged by a test is met by the reads first.
        c.lease_ttl = Duration::from_secs(6);
        c.batch_size = 8;
        let stream = format!("{}:events:approval.granted", c.prefix);
        let backend = RedisBackend::connect(c).await.expect("connect");
        let handled = Log::default();
        let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, g) = (handled.clone(), gate.clone());
        let bus = Bus::builder()
            .backend(backend.clone())
            .subscribe(
                Subscription::new("approval.granted", move |env: Envelope<ApprovalGranted>| {
                    let (h, g) = (h.clone(), g.clone());
                    async move {
                        while env.data.n == 0 && !g.load(Ordering::SeqCst) {
                            eventbus_integration::sleep(Duration::from_millis(10)).await;
                        }
                        h.push(env.data.n.to_string());
                        Ok(())
                    }
                })
                .group(group),
            )
            .start()
            .await
            .unwrap();
        let client = redis::Client::open(url).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        HeldBack {
            bus,
            backend,
            handled,
            gate,
            stream,
            conn,
        }
    }

    async fn publish(&self, numbers: std::ops::Range<u32>) {
        let batch: Vec<_> = numbers.map(|n| Envelope::new(granted("a", n))).collect();
        self.bus.publisher().publish_batch(batch).await.unwrap();
    }

    /// Publishes events 0 to 31 and waits until group `group` read them all (pending for it),
    /// which only a member reading ahead does while event 0 is held back.
    async fn read_all_ahead(&mut self, group: &str) {
        self.publish(0..32).await;
        let deadline = std::time::Instant::now() + eventbus_integration::scaled(WAIT);
        loop {
            let summary: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(group)
                .query_async(&mut self.conn)
                .await
                .unwrap();
            if summary.0 >= 32 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "entries read: {} of 32; handled: {:?}",
                summary.0,
                self.handled.all()
            );
            eventbus_integration::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until events 0 to `n - 1` are handled, and checks each was handled once, in
    /// order.
    async fn finishes_in_order(&self, n: u32) {
        let handled = self.handled.clone();
        assert!(
            eventually(WAIT, || handled.len() >= n as usize).await,
            "not finished: {:?}",
            handled.all()
        );
        let expected: Vec<String> = (0..n).map(|n| n.to_string()).collect();
        assert_eq!(handled.all(), expected);
    }
}

/// The next read a member makes while it still hands out the current batch is fenced by the
/// partition's lease too: entries published after another member's token replaced the
/// member's are not read by it, though entries it read before are handled.
#[test]
fn a_read_made_ahead_is_fenced_by_the_lease() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut member = HeldBack::start(&url, "ahead").await;
        member.read_all_ahead("ahead").await;
        let lease = format!("{{{}}}:lease:ahead", member.stream);
        let _: () = redis::cmd("SET")
            .arg(&lease)
            .arg("intruder|999999")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut member.conn)
            .await
            .unwrap();
        member.publish(32..40).await;
        member.gate.store(true, Ordering::SeqCst);
        let handled = member.handled.clone();
        let beyond = || {
            handled
                .all()
                .iter()
                .any(|n| n.parse::<u32>().unwrap_or(0) >= 32)
        };
        assert!(
            !eventually(Duration::from_secs(2), beyond).await,
            "read under a lease another member holds: {:?}",
            handled.all()
        );
        let _: () = redis::cmd("DEL")
            .arg(&lease)
            .query_async(&mut member.conn)
            .await
            .unwrap();
        member.finishes_in_order(40).await;
        member.bus.shutdown(Duration::from_secs(5)).await;
    });
}

/// Entries a member read ahead are its own from the moment they are read: while its consumer
/// is busy for longer than `claim_idle`, no claim pass (its own included) takes them, and each
/// is handled once, in order.
#[test]
fn entries_read_ahead_are_not_claimed_while_the_consumer_is_busy() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut member = HeldBack::start(&url, "busy").await;
        member.read_all_ahead("busy").await;
        // Three times `claim_idle` (600 ms) with event 0 held back.
        eventbus_integration::sleep(Duration::from_millis(1800)).await;
        member.gate.store(true, Ordering::SeqCst);
        member.finishes_in_order(32).await;
        assert_eq!(
            member.backend.stats().claimed,
            0,
            "entries claimed while in flight"
        );
        member.bus.shutdown(Duration::from_secs(5)).await;
    });
}

/// An entry that retention trims while it is still pending for a group (its consumer died
/// before acknowledging it) is lost to that group: never silently, it is counted and logged.
#[test]
fn entries_trimmed_while_pending_are_counted() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "trimmed").await;
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let doomed = Bus::builder()
            .backend(b.clone())
            .subscribe(
                Subscription::new("approval.granted", move |_: Envelope<ApprovalGranted>| {
                    s.fetch_add(1, Ordering::SeqCst);
                    async {
                        futures::future::pending::<()>().await;
                        Ok(())
                    }
                })
                .group("workers"),
            )
            .start()
            .await
            .unwrap();
        doomed.publish(granted("x", 1)).await.unwrap();
        assert!(eventually(WAIT, || started.load(Ordering::SeqCst) == 1).await);
        doomed.abort().await;
        // Retention (here by hand) removes the entry while the group still owes it.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let stream = format!("{}:events:approval.granted", b.config().prefix);
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(trimmed, 1);
        assert_eq!(b.stats().retention_dropped, 0);

        let handled = Arc::new(AtomicUsize::new(0));
        let h = handled.clone();
        let survivor = Bus::builder()
            .backend(b.clone())
            .subscribe(
                Subscription::new("approval.granted", move |_: Envelope<ApprovalGranted>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                })
                .group("workers"),
            )
            .start()
            .await
            .unwrap();
        assert!(
            eventually(WAIT, || b.stats().retention_dropped == 1).await,
            "{:?}",
            b.stats()
        );
        assert_eq!(handled.load(Ordering::SeqCst), 0, "nothing left to handle");
        assert_eq!(b.pending("approval.granted", "workers").await.unwrap(), 0);
        survivor.shutdown(Duration::from_secs(5)).await;
    });
}

/// Retention with a stopped consumer: entries trimmed before the group read them are counted
/// once (also across a restart with a new connection), logged, and exported as
/// `event_retention_dropped_total`; the entries left are handled.
#[test]
fn entries_trimmed_before_the_group_read_them_are_counted_once() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "unread").await;
        let handled = Arc::new(AtomicUsize::new(0));
        let member = |b: RedisBackend, handled: Arc<AtomicUsize>| async move {
            Bus::builder()
                .backend(b)
                .source("stock")
                .subscribe(
                    Subscription::new("approval.granted", move |_: Envelope<ApprovalGranted>| {
                        handled.fetch_add(1, Ordering::SeqCst);
                        async { Ok(()) }
                    })
                    .group("workers"),
                )
                .start()
                .await
                .unwrap()
        };
        let first = member(b.clone(), handled.clone()).await;
        first.publish(granted("a", 1)).await.unwrap();
        assert!(eventually(WAIT, || handled.load(Ordering::SeqCst) == 1).await);
        first.shutdown(Duration::from_secs(5)).await;
        // The consumer is stopped: 5 more events, then retention keeps the newest 2.
        let publisher = Bus::builder().backend(b.clone()).start().await.unwrap();
        for n in 2..7 {
            publisher.publish(granted("a", n)).await.unwrap();
        }
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let stream = format!("{}:events:approval.granted", b.config().prefix);
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MAXLEN")
            .arg(2)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(trimmed, 4, "the handled one and 3 unread");

        let second = member(b.clone(), handled.clone()).await;
        assert!(
            eventually(WAIT, || handled.load(Ordering::SeqCst) == 3).await,
            "handled {}",
            handled.load(Ordering::SeqCst)
        );
        assert!(
            eventually(WAIT, || b.stats().retention_dropped == 3).await,
            "{:?}",
            b.stats()
        );
        let line = format!(
            "event_retention_dropped_total{{service=\"stock\",stream=\"{stream}\",group=\"workers\"}} 3"
        );
        let metrics = second.metrics().encode();
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
        assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
        second.shutdown(Duration::from_secs(5)).await;

        // A restart on a new connection reports nothing twice.
        let again = backend_with_prefix(&url, &b.config().prefix).await;
        let third = member(again.clone(), handled.clone()).await;
        third.publish(granted("a", 7)).await.unwrap();
        assert!(eventually(WAIT, || handled.load(Ordering::SeqCst) == 4).await);
        assert_eq!(again.stats().retention_dropped, 0, "{:?}", again.stats());
        third.shutdown(Duration::from_secs(5)).await;
        publisher.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn a_delayed_retry_fires_after_its_delay_and_survives_a_consumer_restart() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        delayed_retry_survives_a_restart(backend(&url, "delayed").await).await;
    });
}

/// The same on a Redis Cluster: the delayed set and the retry stream share a slot.
#[test]
fn on_a_cluster_a_delayed_retry_fires_after_its_delay_and_survives_a_consumer_restart() {
    eventbus_integration::run(2, async {
        let Some(c) = cluster_config("delayed") else {
            return;
        };
        delayed_retry_survives_a_restart(RedisBackend::connect(c).await.expect("connect")).await;
    });
}

async fn delayed_retry_survives_a_restart(b: RedisBackend) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let make = |seen: Arc<Mutex<Vec<(u32, std::time::Instant)>>>| {
        Subscription::new(
            "approval.granted",
            move |ctx: Context, _: Envelope<ApprovalGranted>| {
                seen.lock()
                    .unwrap()
                    .push((ctx.attempt(), std::time::Instant::now()));
                let attempt = ctx.attempt();
                async move {
                    if attempt == 1 {
                        Err(HandlerError::transient("downstream is down"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .group("retrying")
        .retries(0)
        .delayed_retries([Duration::from_millis(1500)])
    };
    let first = Bus::builder()
        .backend(b.clone())
        .inbox(Arc::new(b.inbox()))
        .subscribe(make(seen.clone()))
        .start()
        .await
        .unwrap();
    first.publish(granted("d", 1)).await.unwrap();
    assert!(eventually(WAIT, || b.stats().deferred == 1).await);
    // The consuming process dies while the retry waits.
    first.abort().await;
    drop(first);
    assert_eq!(
        b.pending("approval.granted", "retrying").await.unwrap(),
        0,
        "acked into the delayed set"
    );
    let second = Bus::builder()
        .backend(b.clone())
        .inbox(Arc::new(b.inbox()))
        .subscribe(make(seen.clone()))
        .start()
        .await
        .unwrap();
    assert!(eventually(WAIT, || seen.lock().unwrap().len() == 2).await);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[1].0, 2, "second attempt");
    let gap = seen[1].1 - seen[0].1;
    assert!(
        gap >= Duration::from_millis(1400),
        "fired after its delay: {gap:?}"
    );
    assert!(gap < Duration::from_secs(10), "{gap:?}");
    second.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn poison_messages_end_in_the_dlq_with_a_reason_and_redrive_works() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "dlq").await;
        let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handled = Log::default();
        let (f, h) = (fixed.clone(), handled.clone());
        let bus = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(
                Subscription::new("approval.granted", move |env: Envelope<ApprovalGranted>| {
                    let ok = f.load(Ordering::SeqCst);
                    let h = h.clone();
                    async move {
                        if !ok {
                            return Err(HandlerError::permanent(
                                "approval references a deleted user",
                            ));
                        }
                        h.push(env.data.approval_id);
                        Ok(())
                    }
                })
                .group("strict"),
            )
            .start()
            .await
            .unwrap();
        bus.publish(granted("bad", 1)).await.unwrap();
        // A foreign producer writes garbage into the stream.
        let raw = eventbus::backend::Message {
            topic: "approval.granted".into(),
            key: None,
            event_type: "approval.granted".into(),
            headers: Default::default(),
            payload: b"{\"not\": \"an envelope\"}".to_vec().into(),
        };
        b.publish(vec![raw]).await.unwrap();
        let dlq = bus.dead_letters();
        let mut letters = Vec::new();
        assert!(
            eventually(WAIT, || {
                letters = futures::executor::block_on(dlq.list("approval.granted")).unwrap();
                letters.len() == 2
            })
            .await
        );
        assert_eq!(
            letters[0].failure.message,
            "approval references a deleted user"
        );
        assert_eq!(letters[0].failure.kind, ErrorKind::Permanent);
        assert_eq!(letters[0].group, "strict");
        assert!(
            letters[1].failure.message.starts_with("malformed envelope"),
            "{}",
            letters[1].failure.message
        );
        // An entry is acknowledged after its dead letter is written, in the next batch of
        // acknowledgements: wait for both.
        let pending = eventually_reads(
            WAIT,
            || b.pending("approval.granted", "strict"),
            |pending| matches!(pending, Ok(0)),
        )
        .await;
        assert!(
            pending.is_ok(),
            "dead-lettered entries left pending: {pending:?}"
        );

        fixed.store(true, Ordering::SeqCst);
        assert_eq!(
            dlq.redrive("approval.granted", &[letters[0].id.clone()])
                .await
                .unwrap(),
            1
        );
        assert!(eventually(WAIT, || handled.all() == vec!["bad".to_owned()]).await);
        assert_eq!(
            dlq.purge("approval.granted", vec![letters[1].id.clone()])
                .await
                .unwrap(),
            1
        );
        assert!(dlq.list("approval.granted").await.unwrap().is_empty());
        bus.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn retention_trims_old_entries_on_publish() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut c = config(&url, "retention");
        c.topic_retention.insert(
            "approval.granted".into(),
            Retention::max_age(Duration::from_millis(300)),
        );
        c.topic_retention
            .insert("user.invited".into(), Retention::max_len(100));
        let b = RedisBackend::connect(c).await.unwrap();
        let publisher = eventbus::Publisher::new(
            Arc::new(b.clone()),
            Arc::new(eventbus::clock::SystemClock::new(
                eventbus::runtime::default_runtime().unwrap(),
            )),
            "test",
        );
        for i in 0..500 {
            publisher.publish(granted("r", i)).await.unwrap();
        }
        eventbus_integration::sleep(Duration::from_millis(600)).await;
        // Trimming runs every 256th append to a stream: these 300 include a trim.
        for i in 0..300 {
            publisher.publish(granted("r", 1000 + i)).await.unwrap();
        }
        let by_age = b.stream_len("approval.granted").await.unwrap();
        // MINID ~ trims whole macro nodes (100 entries each by default): the 500 old ones go.
        assert!(by_age <= 400, "age retention kept {by_age} of 800");
        for i in 0..3000 {
            publisher
                .publish(UserInvited {
                    email: format!("{i}@x"),
                })
                .await
                .unwrap();
        }
        let by_len = b.stream_len("user.invited").await.unwrap();
        assert!(by_len < 600, "length retention kept {by_len} of 3000");
    });
}

#[test]
fn the_redis_inbox_dedupes_across_processes() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "inbox").await;
        let effects = Arc::new(AtomicUsize::new(0));
        let make = |e: Arc<AtomicUsize>| {
            Subscription::new("approval.granted", move |_: Envelope<ApprovalGranted>| {
                e.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .group("once")
        };
        let one = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(make(effects.clone()))
            .start()
            .await
            .unwrap();
        let two = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(make(effects.clone()))
            .start()
            .await
            .unwrap();
        // The same event published five times (a producer retrying after timeouts).
        let envelope = Envelope::new(granted("dup", 1));
        for _ in 0..5 {
            one.publisher()
                .publish_envelope(envelope.clone())
                .await
                .unwrap();
        }
        assert!(
            eventually(WAIT, || one.stats().handled
                + two.stats().handled
                + one.stats().duplicates
                + two.stats().duplicates
                == 5)
            .await
        );
        assert_eq!(effects.load(Ordering::SeqCst), 1);
        one.shutdown(Duration::from_secs(5)).await;
        two.shutdown(Duration::from_secs(5)).await;
    });
}

/// A UUID v7 made `offset_ms` from now (negative: in the past).
fn v7_from_now(offset_ms: i64) -> uuid::Uuid {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = (now + offset_ms) as u64;
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, at / 1000, ((at % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts)
}

/// The Redis inbox store on its own: ids recorded concurrently are found by every later lookup
/// of their group and of no other, whether kept in a set of their 10 seconds (ids made now),
/// or in a key of their own (a foreign v4 id, an id made nearly a TTL ago, an id made more than
/// a TTL ahead). Returns the ids recorded, by kind.
async fn redis_inbox_finds_what_it_recorded(b: &RedisBackend) -> Vec<(&'static str, uuid::Uuid)> {
    use eventbus::inbox::InboxStore;
    const DAY: i64 = 86_400_000;
    let inbox = b.inbox();
    let mut recorded: Vec<(&'static str, uuid::Uuid)> =
        (0..300).map(|n| ("now", v7_from_now(-n * 50))).collect();
    recorded.push(("v4", uuid::Uuid::new_v4()));
    recorded.push(("old", v7_from_now(-30 * DAY + 60_000)));
    recorded.push(("ahead", v7_from_now(31 * DAY)));
    let unrecorded: Vec<uuid::Uuid> = vec![
        v7_from_now(-1_000),
        uuid::Uuid::new_v4(),
        v7_from_now(-30 * DAY + 60_000),
        v7_from_now(31 * DAY),
    ];
    // Before: nothing is known.
    let before =
        futures::future::join_all(recorded.iter().map(|(_, id)| inbox.contains("g", *id))).await;
    assert!(before.iter().all(|r| matches!(r, Ok(false))), "{before:?}");
    // Recorded concurrently: the inbox task coalesces them into a few round trips.
    let records =
        futures::future::join_all(recorded.iter().map(|(_, id)| inbox.record("g", *id))).await;
    assert!(records.iter().all(|r| r.is_ok()), "{records:?}");
    let mut asked: Vec<(String, &'static str, uuid::Uuid, bool)> = Vec::new();
    for (kind, id) in &recorded {
        asked.push(("g".into(), kind, *id, true));
        asked.push(("other".into(), kind, *id, false));
    }
    for id in &unrecorded {
        asked.push(("g".into(), "unrecorded", *id, false));
    }
    let found =
        futures::future::join_all(asked.iter().map(|(g, _, id, _)| inbox.contains(g, *id))).await;
    let wrong: Vec<String> = asked
        .iter()
        .zip(&found)
        .filter(|((_, _, _, want), got)| !matches!(got, Ok(f) if f == want))
        .map(|((g, kind, id, want), got)| format!("{kind} {id} in {g}: want {want}, got {got:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} lookups wrong: {wrong:?}",
        wrong.len(),
        asked.len()
    );
    recorded
}

#[test]
fn the_redis_inbox_keeps_fresh_ids_in_sets_and_others_in_keys_and_finds_them_all() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut c = config(&url, "inboxsets");
        let prefix = c.prefix.clone();
        c.inbox_ttl = Duration::from_secs(30 * 86_400);
        let b = RedisBackend::connect(c).await.expect("connect");
        let recorded = redis_inbox_finds_what_it_recorded(&b).await;
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:inbox:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let (sets, own): (Vec<&String>, Vec<&String>) =
            keys.iter().partition(|k| k.contains(":inbox:g:@"));
        // 300 ids made over 15 s fall in two or three sets of 10 s; the three others have keys
        // of their own, and nothing else was written.
        assert!((2..=3).contains(&sets.len()), "sets: {sets:?}");
        let mut own: Vec<String> = own.into_iter().cloned().collect();
        own.sort();
        let mut want: Vec<String> = recorded
            .iter()
            .filter(|(kind, _)| *kind != "now")
            .map(|(_, id)| format!("{prefix}:inbox:g:{id}"))
            .collect();
        want.sort();
        assert_eq!(own, want);
        let mut members = 0;
        for key in &sets {
            let kind: String = redis::cmd("TYPE")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(kind, "set", "{key}");
            members += redis::cmd("SCARD")
                .arg(key)
                .query_async::<usize>(&mut conn)
                .await
                .unwrap();
            // A set lives 30 days after its 10 seconds end.
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let days = ttl as f64 / 86_400_000.0;
            assert!(
                (29.9..=30.01).contains(&days),
                "{key} expires in {days} days"
            );
        }
        assert_eq!(members, 300);
    });
}

#[test]
fn on_a_cluster_the_redis_inbox_finds_every_id_it_recorded() {
    eventbus_integration::run(2, async {
        let Some(mut c) = cluster_config("inboxsets") else {
            return;
        };
        c.inbox_ttl = Duration::from_secs(30 * 86_400);
        let b = RedisBackend::connect(c).await.expect("connect");
        redis_inbox_finds_what_it_recorded(&b).await;
    });
}

#[test]
fn new_streams_are_discovered_by_wildcard_subscribers() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "discovery").await;
        let log = Log::default();
        let bus = Bus::builder()
            .backend(b.clone())
            .subscribe(logging(&log, "watch", "user.*"))
            .start()
            .await
            .unwrap();
        // No user.* stream existed when the subscriber started.
        bus.publish(UserInvited {
            email: "first@x".into(),
        })
        .await
        .unwrap();
        assert!(
            eventually(WAIT, || log.len() == 1).await,
            "discovered within the interval"
        );
        bus.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn pubsub_notifications_reach_current_subscribers_only() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "pubsub").await;
        let live = b.pubsub();
        let before = live
            .notify(&Envelope::new(granted("early", 0)))
            .await
            .unwrap();
        assert_eq!(before, 0, "nobody listening: the notification is gone");
        let mut stream = live.subscribe("approval.*").await.unwrap();
        live.notify(&Envelope::new(UserInvited { email: "no".into() }))
            .await
            .unwrap();
        live.notify(&Envelope::new(granted("live", 1)))
            .await
            .unwrap();
        let got = eventbus_integration::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.event_type, "approval.granted");
        assert!(got.data.get().contains("live"));
    });
}

#[test]
fn bad_urls_fail_at_startup_naming_the_setting() {
    eventbus_integration::run(1, async {
        for url in ["http://localhost", "redis://[::1", ""] {
            let err = RedisBackend::connect(RedisConfig::new(url))
                .await
                .expect_err(url);
            assert!(err.to_string().contains("redis.url"), "{err}");
        }
    });
}

#[test]
fn replay_by_time_range_and_type_reaches_only_the_target_group() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let b = backend(&url, "replay").await;
        let target = Log::default();
        let other = Log::default();
        let bus = Bus::builder()
            .backend(b.clone())
            .inbox(Arc::new(b.inbox()))
            .subscribe(logging(&target, "projection", "approval.*"))
            .subscribe(logging(&other, "mailer", "approval.*"))
            .start()
            .await
            .unwrap();
        let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
        let publisher = bus.publisher();
        for n in 0..6u32 {
            let time = t0 + chrono::Duration::minutes(i64::from(n));
            if n % 2 == 0 {
                let mut env = Envelope::new(granted("r", n));
                env.time = time;
                publisher.publish_envelope(env).await.unwrap();
            } else {
                let mut env = Envelope::new(ApprovalRejected {
                    approval_id: format!("r{n}"),
                });
                env.time = time;
                publisher.publish_envelope(env).await.unwrap();
            }
        }
        assert!(eventually(WAIT, || target.len() == 6 && other.len() == 6).await);
        let progress = bus
            .replay(eventbus::replay::ReplayRequest {
                topic: "approval.granted".into(),
                from: t0 + chrono::Duration::minutes(1),
                to: t0 + chrono::Duration::minutes(4),
                event_type: Some("approval.*".into()),
                group: Some("projection".into()),
            })
            .unwrap();
        assert!(eventually(WAIT, || progress.status().done).await);
        assert_eq!(progress.status().replayed, 2, "{:?}", progress.status());
        assert!(
            eventually(WAIT, || target.len() == 8).await,
            "{:?}",
            target.all()
        );
        eventbus_integration::sleep(Duration::from_millis(300)).await;
        assert_eq!(target.len(), 8);
        assert_eq!(other.len(), 6, "the other group saw nothing again");
        let lag = b.group_lag().await.unwrap();
        assert!(
            lag.iter()
                .any(|l| l.group == "projection" && l.pending == 0),
            "{lag:?}"
        );
        bus.shutdown(Duration::from_secs(5)).await;
    });
}

/// On a topic of 4 partitions, reading back walks every partition merged in append order (no
/// entry lost or repeated across pages, each key in publish order), the size sums the
/// partitions, and a replay reaches every event of the window.
#[test]
fn reads_and_replays_merge_the_partitions_of_a_topic() {
    eventbus_integration::run(2, async {
        let Some(url) = require_server("EVENTBUS_REDIS_URL", "redis") else {
            return;
        };
        let mut c = config(&url, "merged");
        c.partitions = 4;
        let b = RedisBackend::connect(c).await.expect("connect");
        let seen = Log::default();
        let bus = Bus::builder()
            .backend(b.clone())
            .catalog(&[eventbus::CatalogEntry::of::<ApprovalGranted>()])
            .subscribe(logging(&seen, "projection", "approval.granted"))
            .start()
            .await
            .unwrap();
        let from = chrono::Utc::now() - chrono::Duration::seconds(1);
        for n in 0..30u32 {
            bus.publish(granted(&format!("k{}", n % 6), n))
                .await
                .unwrap();
        }
        assert!(
            eventually(WAIT, || seen.len() == 30).await,
            "{}",
            seen.len()
        );
        let to = chrono::Utc::now();
        let mut streams = HashSet::new();
        for partition in 0..4 {
            let stream = format!("{}:events:approval.granted#{partition}", b.config().prefix);
            let len: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(
                    &mut redis::Client::open(url.as_str())
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap(),
                )
                .await
                .unwrap();
            if len > 0 {
                streams.insert(stream);
            }
        }
        assert!(streams.len() > 1, "6 keys over 4 partitions: {streams:?}");
        assert_eq!(b.count("approval.granted").await.unwrap(), 30);

        let (mut ns, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = b.read_page("approval.granted", cursor, 7).await.unwrap();
            assert!(page.messages.len() <= 7);
            pages += 1;
            for m in &page.messages {
                let env: Envelope<ApprovalGranted> =
                    serde_json::from_slice(&m.message.payload).unwrap();
                ns.push((env.data.approval_id.clone(), env.data.n));
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(pages < 20, "the walk does not end");
        }
        let mut all: Vec<u32> = ns.iter().map(|(_, n)| *n).collect();
        all.sort_unstable();
        assert_eq!(all, (0..30).collect::<Vec<_>>(), "every entry once: {ns:?}");
        for key in 0..6 {
            let of_key: Vec<u32> = ns
                .iter()
                .filter(|(k, _)| *k == format!("k{key}"))
                .map(|(_, n)| *n)
                .collect();
            assert!(of_key.windows(2).all(|w| w[0] < w[1]), "k{key}: {of_key:?}");
        }

        let progress = bus
            .replay(eventbus::replay::ReplayRequest {
                topic: "approval.granted".into(),
                from,
                to,
                event_type: None,
                group: Some("projection".into()),
            })
            .unwrap();
        assert!(eventually(WAIT, || progress.status().done).await);
        assert_eq!(progress.status().replayed, 30, "{:?}", progress.status());
        assert!(
            eventually(WAIT, || seen.len() == 60).await,
            "{}",
            seen.len()
        );
        bus.shutdown(Duration::from_secs(5)).await;
    });
}
