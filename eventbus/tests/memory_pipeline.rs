//! The handler pipeline on the in-memory backend: retries, dead letters, dedupe, panics,
//! ordering, concurrency, groups, shutdown and fault injection. Runs on tokio by default and on
//! smol with `--no-default-features --features smol,inventory`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::memory::Faults;
use eventbus::runtime::Runtime;
use eventbus::testing::TestHarness;
use eventbus::{
    event, Backoff, Context, Envelope, ErrorKind, EventGroup, HandlerError, HandlerResult,
    Subscription,
};
use serde::{Deserialize, Serialize};

#[event(name = "order.created", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCreated {
    order_id: String,
    seq: u32,
}

#[event(name = "order.cancelled", version = 1, key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCancelled {
    order_id: String,
}

#[event(name = "user.invited", version = 1)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct UserInvited {
    email: String,
}

#[derive(EventGroup)]
enum OrderEvents {
    Created(OrderCreated),
    Cancelled(OrderCancelled),
}

#[cfg(feature = "runtime-tokio")]
fn run<F: Future<Output = ()>>(test: impl FnOnce(Arc<dyn Runtime>) -> F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime: Arc<dyn Runtime> = Arc::new(eventbus::runtime::TokioRuntime::from_handle(
        rt.handle().clone(),
    ));
    rt.block_on(test(runtime));
}

#[cfg(not(feature = "runtime-tokio"))]
fn run<F: Future<Output = ()>>(test: impl FnOnce(Arc<dyn Runtime>) -> F) {
    smol::block_on(test(Arc::new(eventbus::runtime::SmolRuntime)));
}

/// Waits for `done`, checking every 5 ms, for at most 10 s; past that, fails naming `what`
/// and showing what `seen` reports.
async fn wait_until(
    rt: &Arc<dyn Runtime>,
    what: &str,
    done: impl Fn() -> bool,
    seen: impl Fn() -> String,
) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still waiting after 10 s for {what}: {}",
            seen()
        );
        rt.sleep(Duration::from_millis(5)).await;
    }
}

fn order(id: &str, seq: u32) -> OrderCreated {
    OrderCreated {
        order_id: id.to_owned(),
        seq,
    }
}

/// A log of (key, seq) a handler saw, shared with the test.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, u32)>>>);

impl Seen {
    fn push(&self, key: &str, seq: u32) {
        self.0.lock().unwrap().push((key.to_owned(), seq));
    }
    fn all(&self) -> Vec<(String, u32)> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn runs_under_the_selected_executor() {
    // Leaves a marker so `scripts/test` can prove this suite ran under smol.
    if let (Ok(dir), false) = (
        std::env::var("EVENTBUS_TEST_MARKERS"),
        cfg!(feature = "runtime-tokio"),
    ) {
        std::fs::write(format!("{dir}/memory_pipeline-smol"), b"ran").expect("marker");
    }
    run(|rt| async move {
        let seen = Seen::default();
        let s = seen.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let s = s.clone();
            bus.subscribe(Subscription::new(
                "order.created",
                move |env: Envelope<OrderCreated>| {
                    let s = s.clone();
                    async move {
                        s.push(&env.data.order_id, env.data.seq);
                        Ok(())
                    }
                },
            ))
        })
        .await
        .unwrap();
        h.publish(order("a", 1)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(seen.all(), vec![("a".to_owned(), 1)]);
        assert_eq!(h.bus().stats().handled, 1);
    });
}

#[test]
fn transient_failures_retry_on_schedule_then_dead_letter_with_metadata() {
    run(|rt| async move {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let schedule = [60, 300, 1800].map(Duration::from_secs);
        let h = TestHarness::start_on(rt, move |bus| {
            let c = c.clone();
            bus.subscribe(
                Subscription::new("order.*", move |ctx: Context, _: Envelope<OrderCreated>| {
                    let c = c.clone();
                    async move {
                        c.lock().unwrap().push(ctx.attempt());
                        Err::<(), _>(HandlerError::transient("warehouse unavailable"))
                    }
                })
                .group("billing")
                .retries(3)
                .backoff(Backoff::schedule(schedule)),
            )
        })
        .await
        .unwrap();
        let id = h.publish(order("o-1", 1)).await.unwrap();
        h.settle().await.unwrap();

        assert_eq!(*calls.lock().unwrap(), vec![1, 2, 3, 4]);
        let elapsed = h.clock().elapsed();
        assert!(
            elapsed >= Duration::from_secs(60 + 300 + 1800),
            "{elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(60 + 300 + 1800 + 60),
            "{elapsed:?}"
        );

        let dead = h.dead_letters("order.created").await.unwrap();
        assert_eq!(dead.len(), 1);
        let letter = &dead[0];
        assert_eq!(letter.original_topic, "order.created");
        assert_eq!(letter.group, "billing");
        assert_eq!(letter.key.as_deref(), Some("o-1"));
        assert_eq!(letter.event_type, "order.created");
        assert_eq!(letter.failure.kind, ErrorKind::Transient);
        assert_eq!(letter.failure.message, "warehouse unavailable");
        assert_eq!(letter.failure.attempts, 4);
        let span = letter.failure.last_failure - letter.failure.first_failure;
        assert_eq!(span.num_seconds(), 60 + 300 + 1800);
        assert_eq!(letter.envelope().unwrap().id, id);
        assert_eq!(h.bus().stats().dead_lettered, 1);
    });
}

#[test]
fn exponential_backoff_waits_stay_within_bounds() {
    run(|rt| async move {
        let times = Arc::new(Mutex::new(Vec::new()));
        let t = times.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let t = t.clone();
            bus.subscribe(
                Subscription::new(
                    "order.created",
                    move |ctx: Context, _: Envelope<OrderCreated>| {
                        let t = t.clone();
                        async move {
                            t.lock()
                                .unwrap()
                                .push((ctx.attempt(), std::time::Instant::now()));
                            Err::<(), _>(HandlerError::transient("nope"))
                        }
                    },
                )
                .retries(5)
                .backoff(Backoff::exponential(
                    Duration::from_secs(1),
                    Duration::from_secs(8),
                )),
            )
        })
        .await
        .unwrap();
        h.publish(order("x", 1)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(times.lock().unwrap().len(), 6);
        // Waits: ceilings 1, 2, 4, 8, 8 s; each jittered into [ceiling/2, ceiling].
        let elapsed = h.clock().elapsed();
        assert!(elapsed >= Duration::from_millis(11_500), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(23), "{elapsed:?}");
    });
}

#[test]
fn permanent_failure_goes_to_the_dlq_at_once() {
    run(|rt| async move {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let c = c.clone();
            bus.subscribe(Subscription::new(
                "order.created",
                move |_: Envelope<OrderCreated>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>(HandlerError::permanent("order total is negative")) }
                },
            ))
        })
        .await
        .unwrap();
        h.publish(order("o", 1)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let dead = h.dead_letters("order.created").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].failure.kind, ErrorKind::Permanent);
        assert_eq!(dead[0].failure.attempts, 1);
        assert_eq!(h.clock().elapsed(), Duration::ZERO);
    });
}

#[test]
fn malformed_and_mistyped_messages_are_dead_lettered_with_the_reason() {
    run(|rt| async move {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let c = c.clone();
            bus.subscribe(
                Subscription::new("order.created", move |_: Envelope<OrderCreated>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                })
                .group("g"),
            )
        })
        .await
        .unwrap();
        let raw = |payload: &[u8]| eventbus::backend::Message {
            topic: "order.created".into(),
            key: None,
            event_type: "order.created".into(),
            headers: Default::default(),
            payload: payload.into(),
        };
        let valid_but_wrong_data = br#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e","type":"order.created","source":"s","time":"2026-01-01T00:00:00Z","version":1,"data":{"order_id":5}}"#;
        // A newer version whose change is not additive (a field changed type).
        let newer_version = br#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5f","type":"order.created","source":"s","time":"2026-01-01T00:00:00Z","version":9,"data":{"order_id":"a","seq":"one"}}"#;
        h.bus()
            .publisher()
            .publish_messages(vec![
                raw(b"{not json"),
                raw(b"\xff\xfe"),
                raw(br#"{"type":"order.created","data":{}}"#),
                raw(valid_but_wrong_data),
                raw(newer_version),
            ])
            .await
            .unwrap();
        h.publish(order("ok", 1)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "only the valid event reaches the handler"
        );
        let reasons: Vec<String> = h
            .dead_letters("order.created")
            .await
            .unwrap()
            .into_iter()
            .map(|d| {
                assert_eq!(d.failure.kind, ErrorKind::Permanent);
                d.failure.message
            })
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(
            reasons[0].starts_with("malformed envelope"),
            "{}",
            reasons[0]
        );
        assert!(reasons[1].contains("not valid utf-8"), "{}", reasons[1]);
        assert!(reasons[2].contains("missing field"), "{}", reasons[2]);
        assert!(
            reasons[3].starts_with("invalid data for `order.created`"),
            "{}",
            reasons[3]
        );
        assert!(
            reasons[4].starts_with("version 9 of `order.created` does not decode as version 1: invalid type: string, expected u32"),
            "{}",
            reasons[4]
        );
    });
}

/// Rolling deploys: producers upgraded first send `version` 2 with a field added. By default a
/// subscriber decodes it (unknown fields ignored); one with `NewerVersions::DeadLetter`
/// dead-letters it unread.
#[test]
fn a_newer_additive_version_decodes_unless_the_subscriber_refuses_it() {
    run(|rt| async move {
        let tolerant = Seen::default();
        let strict = Seen::default();
        let (t, s) = (tolerant.clone(), strict.clone());
        let h = TestHarness::start_on(rt, move |bus| {
            let (t, s) = (t.clone(), s.clone());
            bus.subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    t.push(&env.data.order_id, env.data.seq);
                    async { Ok(()) }
                })
                .group("tolerant"),
            )
            .subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    s.push(&env.data.order_id, env.data.seq);
                    async { Ok(()) }
                })
                .group("strict")
                .newer_versions(eventbus::NewerVersions::DeadLetter),
            )
        })
        .await
        .unwrap();
        let v2 = br#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d60","type":"order.created","source":"s","time":"2026-01-01T00:00:00Z","version":2,"data":{"order_id":"a","seq":7,"coupon":"SPRING"}}"#;
        h.bus()
            .publisher()
            .publish_messages(vec![eventbus::backend::Message {
                topic: "order.created".into(),
                key: Some("a".into()),
                event_type: "order.created".into(),
                headers: Default::default(),
                payload: v2.as_slice().into(),
            }])
            .await
            .unwrap();
        h.settle().await.unwrap();
        assert_eq!(tolerant.all(), vec![("a".to_owned(), 7)]);
        assert!(strict.all().is_empty());
        let letters = h.dead_letters("order.created").await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].group, "strict");
        assert!(
            letters[0].failure.message.contains("unsupported version 2"),
            "{}",
            letters[0].failure.message
        );
    });
}

#[test]
fn a_panicking_handler_is_retried_and_the_consumer_keeps_running() {
    run(|rt| async move {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let c = c.clone();
            bus.subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if env.data.order_id == "boom" && n < 2 {
                            panic!("kaboom {n}");
                        }
                        Ok(())
                    }
                })
                .retries(1),
            )
        })
        .await
        .unwrap();
        h.publish(order("boom", 1)).await.unwrap();
        h.settle().await.unwrap();
        h.publish(order("fine", 2)).await.unwrap();
        h.settle().await.unwrap();
        let dead = h.dead_letters("order.created").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].failure.message, "handler panicked: kaboom 1");
        assert_eq!(dead[0].failure.kind, ErrorKind::Transient);
        assert_eq!(dead[0].failure.attempts, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(h.bus().stats().handled, 1);
    });
}

#[test]
fn a_hanging_handler_times_out_and_is_dead_lettered() {
    run(|rt| async move {
        let h = TestHarness::start_on(rt, move |bus| {
            bus.subscribe(
                Subscription::new("order.created", |_: Envelope<OrderCreated>| async {
                    futures::future::pending::<()>().await;
                    Ok(())
                })
                .retries(2)
                .timeout(Duration::from_secs(30)),
            )
        })
        .await
        .unwrap();
        h.publish(order("slow", 1)).await.unwrap();
        h.settle().await.unwrap();
        let dead = h.dead_letters("order.created").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].failure.message, "handler timed out after 30s");
        assert_eq!(dead[0].failure.attempts, 3);
    });
}

#[test]
fn a_lost_ack_redelivers_and_the_inbox_absorbs_the_duplicate() {
    run(|rt| async move {
        let effects = Arc::new(AtomicUsize::new(0));
        let e = effects.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let e = e.clone();
            bus.subscribe(Subscription::new(
                "order.created",
                move |_: Envelope<OrderCreated>| {
                    e.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
            ))
        })
        .await
        .unwrap();
        // Crash between the side effect (+ inbox record) and the ack, twice.
        h.inject(Faults {
            lose_acks: 2,
            ..Faults::default()
        });
        h.publish(order("o", 1)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(effects.load(Ordering::SeqCst), 1);
        let stats = h.bus().stats();
        assert_eq!((stats.handled, stats.duplicates), (1, 2));
        assert_eq!(h.backend().pending_faults(), Faults::default());
    });
}

#[test]
fn duplicate_deliveries_are_handled_once() {
    run(|rt| async move {
        let effects = Arc::new(AtomicUsize::new(0));
        let e = effects.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let e = e.clone();
            bus.subscribe(Subscription::new(
                "order.created",
                move |_: Envelope<OrderCreated>| {
                    e.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
            ))
        })
        .await
        .unwrap();
        h.inject(Faults {
            duplicate_deliveries: 10,
            ..Faults::default()
        });
        for i in 0..10 {
            h.publish(order(&format!("o{i}"), i)).await.unwrap();
        }
        h.settle().await.unwrap();
        assert_eq!(effects.load(Ordering::SeqCst), 10);
        assert_eq!(h.bus().stats().duplicates, 10);
    });
}

#[test]
fn a_restart_mid_handler_redelivers_unacked_events() {
    run(|rt| async move {
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let (s, f) = (started.clone(), finished.clone());
        let mut h = TestHarness::start_on(rt.clone(), move |bus| {
            let (s, f) = (s.clone(), f.clone());
            bus.subscribe(
                Subscription::new(
                    "order.created",
                    move |ctx: Context, _: Envelope<OrderCreated>| {
                        let (s, f) = (s.clone(), f.clone());
                        async move {
                            s.fetch_add(1, Ordering::SeqCst);
                            // The first delivery hangs until the process "crashes".
                            if ctx.attempt() == 1 {
                                futures::future::pending::<()>().await;
                            }
                            f.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    },
                )
                .concurrency(4),
            )
        })
        .await
        .unwrap();
        for i in 0..3 {
            h.publish(order(&format!("k{i}"), i)).await.unwrap();
        }
        wait_until(
            &rt,
            "3 handlers started",
            || started.load(Ordering::SeqCst) >= 3,
            || format!("{} started", started.load(Ordering::SeqCst)),
        )
        .await;
        assert_eq!(h.backend().outstanding(), 3);
        h.restart().await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        assert_eq!(started.load(Ordering::SeqCst), 6);
        assert!(h.dead_letters("order.created").await.unwrap().is_empty());
    });
}

/// The handlers a subscription runs at once share its consumer's task: they overlap their
/// waits (the case above), not their CPU work. Handlers that compute without awaiting run one
/// after another, even with concurrency 4 on a runtime of two threads.
#[test]
fn concurrent_handlers_overlap_waits_not_cpu_work() {
    run(|rt| async move {
        let computing = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (c, p, d) = (computing.clone(), peak.clone(), done.clone());
        let h = TestHarness::start_on(rt, move |bus| {
            let (c, p, d) = (c.clone(), p.clone(), d.clone());
            bus.subscribe(
                Subscription::new("order.created", move |_: Envelope<OrderCreated>| {
                    let (c, p, d) = (c.clone(), p.clone(), d.clone());
                    async move {
                        let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        // CPU work: the thread is busy and nothing is awaited.
                        std::thread::sleep(Duration::from_millis(20));
                        c.fetch_sub(1, Ordering::SeqCst);
                        d.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })
                .group("cpu")
                .concurrency(4),
            )
        })
        .await
        .unwrap();
        for n in 0..8 {
            h.publish(order(&format!("k{n}"), n)).await.unwrap();
        }
        h.settle().await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 8);
        assert_eq!(
            peak.load(Ordering::SeqCst),
            1,
            "handlers computed at the same time"
        );
    });
}

#[test]
fn same_key_stays_in_order_while_keys_run_concurrently_within_the_limit() {
    run(|rt| async move {
        let seen = Seen::default();
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let per_key_active: Arc<Mutex<HashMap<String, usize>>> = Default::default();
        let (s, a, p, k) = (
            seen.clone(),
            active.clone(),
            peak.clone(),
            per_key_active.clone(),
        );
        let h = TestHarness::start_on(rt, move |bus| {
            let (s, a, p, k) = (s.clone(), a.clone(), p.clone(), k.clone());
            bus.subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    let (s, a, p, k) = (s.clone(), a.clone(), p.clone(), k.clone());
                    async move {
                        let key = env.data.order_id.clone();
                        {
                            let mut map = k.lock().unwrap();
                            let n = map.entry(key.clone()).or_default();
                            *n += 1;
                            assert_eq!(*n, 1, "two handlers of key {key} at once");
                        }
                        let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        // Yield with real time so handlers overlap.
                        futures::future::ready(()).await;
                        std::thread::sleep(Duration::from_micros(200));
                        s.push(&key, env.data.seq);
                        a.fetch_sub(1, Ordering::SeqCst);
                        *k.lock().unwrap().get_mut(&key).unwrap() -= 1;
                        Ok(())
                    }
                })
                .concurrency(4),
            )
        })
        .await
        .unwrap();
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let envelopes: Vec<_> = (0..400u32)
            .map(|i| Envelope::new(order(keys[(i % 8) as usize], i)))
            .collect();
        h.bus().publisher().publish_batch(envelopes).await.unwrap();
        h.settle().await.unwrap();
        let all = seen.all();
        assert_eq!(all.len(), 400);
        for key in keys {
            let seqs: Vec<u32> = all
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, s)| *s)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "key {key} out of order: {seqs:?}"
            );
            assert_eq!(seqs.len(), 50);
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 4, "concurrency limit exceeded: {peak}");
    });
}

#[test]
fn each_group_gets_every_event_and_members_split_the_work() {
    run(|rt| async move {
        let a = Seen::default();
        let b = Seen::default();
        let (a2, b2) = (a.clone(), b.clone());
        let handler = |seen: Seen, member: u32| {
            move |env: Envelope<OrderCreated>| {
                let seen = seen.clone();
                async move {
                    seen.push(&format!("{member}:{}", env.data.order_id), env.data.seq);
                    Ok::<(), HandlerError>(())
                }
            }
        };
        let h = TestHarness::start_on(rt, move |bus| {
            bus.subscribe(
                Subscription::new("order.created", handler(a2.clone(), 1))
                    .group("shipping")
                    .with_name("ship-1"),
            )
            .subscribe(
                Subscription::new("order.created", handler(a2.clone(), 2))
                    .group("shipping")
                    .with_name("ship-2"),
            )
            .subscribe(Subscription::new("order.*", handler(b2.clone(), 0)).group("audit"))
        })
        .await
        .unwrap();
        for i in 0..200u32 {
            h.publish(order(&format!("o{}", i % 20), i)).await.unwrap();
        }
        h.settle().await.unwrap();
        let shipping = a.all();
        let audit = b.all();
        assert_eq!(audit.len(), 200, "audit group gets everything");
        assert_eq!(shipping.len(), 200, "shipping group gets everything once");
        let mut seqs: Vec<u32> = shipping.iter().map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 200, "no event handled twice in a group");
    });
}

/// A handler of one type on a pattern wider than that type (the README's first example) gets
/// its type; the pattern's other types are skipped and counted, never dead-lettered.
#[test]
fn a_typed_handler_on_a_wider_pattern_skips_the_other_types() {
    run(|rt| async move {
        let seen = Seen::default();
        let s = seen.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let s = s.clone();
            bus.subscribe(
                Subscription::new("order.*", move |env: Envelope<OrderCreated>| {
                    s.push(&env.data.order_id, env.data.seq);
                    async { Ok(()) }
                })
                .group("created-only"),
            )
        })
        .await
        .unwrap();
        h.publish(order("1", 1)).await.unwrap();
        h.publish(OrderCancelled {
            order_id: "1".into(),
        })
        .await
        .unwrap();
        h.publish(order("2", 2)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(seen.all(), vec![("1".to_owned(), 1), ("2".to_owned(), 2)]);
        let stats = h.bus().stats();
        assert_eq!(
            (stats.handled, stats.skipped, stats.dead_lettered),
            (2, 1, 0),
            "{stats:?}"
        );
        let letters = h.dead_letters("order.cancelled").await.unwrap();
        assert!(
            letters.is_empty(),
            "order.cancelled was dead-lettered: {letters:?}"
        );
    });
}

/// A dead letter that cannot be published (the broker refuses it, as it refuses a record over
/// its own size limit) is tried a bounded number of times, then stored without its payload,
/// saying why, and counted; the consumer moves on.
#[test]
fn a_dead_letter_that_cannot_be_published_is_kept_as_metadata_only() {
    run(|rt| async move {
        // The harness's backend, known once it started.
        let backend: Arc<Mutex<Option<eventbus::backend::memory::MemoryBackend>>> = Arc::default();
        let b = backend.clone();
        let seen = Seen::default();
        let s = seen.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let (b, s) = (b.clone(), s.clone());
            bus.subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    s.push(&env.data.order_id, env.data.seq);
                    if env.data.seq == 1 {
                        // Every full dead-letter publish of this event fails.
                        let faults = Faults {
                            fail_publishes: 3,
                            ..Faults::default()
                        };
                        b.lock().unwrap().as_ref().expect("backend").inject(faults);
                    }
                    async move {
                        if env.data.seq == 1 {
                            Err(HandlerError::permanent("rejected"))
                        } else {
                            Ok(())
                        }
                    }
                })
                .group("g"),
            )
        })
        .await
        .unwrap();
        *backend.lock().unwrap() = Some(h.backend().clone());
        // One publish call: the faults the handler injects cannot hit the second event's.
        h.bus()
            .publisher()
            .publish_batch(vec![
                Envelope::new(order("a", 1)),
                Envelope::new(order("a", 2)),
            ])
            .await
            .unwrap();
        h.settle().await.unwrap();
        assert_eq!(
            seen.all(),
            vec![("a".to_owned(), 1), ("a".to_owned(), 2)],
            "the key moved on"
        );
        let letters = h.bus().dead_letters().list("order.created").await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert!(letters[0].payload.is_empty());
        let omitted = letters[0]
            .payload_omitted
            .clone()
            .expect("says the payload is missing");
        assert!(
            omitted.contains("bytes: dead-letter publish failed"),
            "{omitted}"
        );
        assert_eq!(letters[0].failure.message, "rejected");
        assert!(
            h.bus().metrics().encode().lines().any(|l| l
                .starts_with("event_dead_letter_payload_omitted_total{")
                && l.ends_with(" 1")),
            "{}",
            h.bus().metrics().encode()
        );
    });
}

/// A user layer that panics on one event, outside the handler guard.
struct PanicsOnSeq(u32);

impl eventbus::pipeline::Layer for PanicsOnSeq {
    fn handle<'a>(
        &'a self,
        cx: &'a mut eventbus::pipeline::DeliveryCx,
        next: eventbus::pipeline::Next<'a>,
    ) -> futures::future::BoxFuture<'a, eventbus::pipeline::Outcome> {
        Box::pin(async move {
            let seq = cx.envelope.as_ref().and_then(|e| {
                e.data
                    .get()
                    .contains(&format!("\"seq\":{}", self.0))
                    .then_some(())
            });
            assert!(seq.is_none(), "layer bug on seq {}", self.0);
            next.run(cx).await
        })
    }
}

/// A panic outside the handler guard (here a user layer) is contained to its delivery: the
/// consumer keeps handling other events, the delivery is counted as unsettled and left for
/// redelivery, and `shutdown` returns within its timeout.
#[test]
fn a_panic_outside_the_handler_is_contained_and_shutdown_returns_in_time() {
    run(|rt| async move {
        let seen = Seen::default();
        let s = seen.clone();
        let bus = eventbus::Bus::builder()
            .runtime(rt.clone())
            .backend(eventbus::backend::memory::MemoryBackend::new())
            .layer(PanicsOnSeq(1))
            .subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    s.push(&env.data.order_id, env.data.seq);
                    async { Ok(()) }
                })
                .group("g")
                .backoff(Backoff::schedule([Duration::from_millis(50)])),
            )
            .start()
            .await
            .unwrap();
        for (key, seq) in [("a", 1), ("b", 2), ("c", 3)] {
            bus.publish(order(key, seq)).await.unwrap();
        }
        wait_until(
            &rt,
            "two handled and the panicked one unsettled",
            || seen.all().len() >= 2 && bus.stats().unsettled > 0,
            || format!("handled {:?}, {:?}", seen.all(), bus.stats()),
        )
        .await;
        assert_eq!(seen.all(), vec![("b".to_owned(), 2), ("c".to_owned(), 3)]);
        let started = std::time::Instant::now();
        let shutdown = bus.shutdown(Duration::from_millis(500));
        let limit = rt.sleep(Duration::from_secs(5));
        let report = match futures::future::select(Box::pin(shutdown), limit).await {
            futures::future::Either::Left((report, _)) => report,
            futures::future::Either::Right(_) => panic!("shutdown(500ms) still running after 5 s"),
        };
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        eprintln!("{report:?}");
    });
}

#[test]
fn group_enum_and_dynamic_handlers_receive_matching_types_only() {
    run(|rt| async move {
        let typed = Arc::new(Mutex::new(Vec::new()));
        let dynamic = Arc::new(Mutex::new(Vec::new()));
        let (t, d) = (typed.clone(), dynamic.clone());
        let h = TestHarness::start_on(rt, move |bus| {
            let (t, d) = (t.clone(), d.clone());
            bus.subscribe(
                Subscription::new("order.*", move |env: Envelope<OrderEvents>| {
                    let t = t.clone();
                    async move {
                        t.lock().unwrap().push(match env.data {
                            OrderEvents::Created(c) => format!("created {}", c.order_id),
                            OrderEvents::Cancelled(c) => format!("cancelled {}", c.order_id),
                        });
                        Ok(())
                    }
                })
                .group("orders"),
            )
            .subscribe(
                Subscription::new("#", move |env: Envelope<serde_json::Value>| {
                    let d = d.clone();
                    async move {
                        d.lock().unwrap().push(env.event_type.clone());
                        Ok(())
                    }
                })
                .group("audit"),
            )
        })
        .await
        .unwrap();
        h.publish(order("1", 1)).await.unwrap();
        h.publish(OrderCancelled {
            order_id: "1".into(),
        })
        .await
        .unwrap();
        h.publish(UserInvited {
            email: "x@y".into(),
        })
        .await
        .unwrap();
        h.settle().await.unwrap();
        assert_eq!(*typed.lock().unwrap(), vec!["created 1", "cancelled 1"]);
        assert_eq!(
            *dynamic.lock().unwrap(),
            vec!["order.created", "order.cancelled", "user.invited"]
        );
    });
}

/// One batch of several event types (as the outbox relay and a redrive publish them) reaches,
/// for each message, the groups of its own type, in the batch's order.
#[test]
fn a_batch_of_mixed_types_reaches_each_type_s_groups() {
    run(|rt| async move {
        let log = |name: &'static str, seen: &Arc<Mutex<Vec<String>>>| {
            let seen = seen.clone();
            Subscription::new(name, move |env: Envelope<serde_json::Value>| {
                seen.lock().unwrap().push(env.event_type.clone());
                async { Ok(()) }
            })
        };
        let (orders, users, all) = (Arc::default(), Arc::default(), Arc::default());
        let (o, u, a) = (
            log("order.*", &orders).group("orders"),
            log("user.*", &users).group("users"),
            log("#", &all).group("all"),
        );
        let h = TestHarness::start_on(rt, move |bus| {
            bus.subscribe(o.clone())
                .subscribe(u.clone())
                .subscribe(a.clone())
        })
        .await
        .unwrap();
        let publisher = h.bus().publisher();
        let invited = || UserInvited {
            email: "x@y".into(),
        };
        let batch = vec![
            publisher.prepare(Envelope::new(order("1", 1))).unwrap(),
            publisher.prepare(Envelope::new(invited())).unwrap(),
            publisher.prepare(Envelope::new(invited())).unwrap(),
            publisher
                .prepare(Envelope::new(OrderCancelled {
                    order_id: "1".into(),
                }))
                .unwrap(),
            publisher.prepare(Envelope::new(order("2", 2))).unwrap(),
            publisher.prepare(Envelope::new(invited())).unwrap(),
        ];
        publisher.publish_messages(batch).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(
            *orders.lock().unwrap(),
            vec!["order.created", "order.cancelled", "order.created"]
        );
        assert_eq!(*users.lock().unwrap(), vec!["user.invited"; 3]);
        assert_eq!(
            *all.lock().unwrap(),
            vec![
                "order.created",
                "user.invited",
                "user.invited",
                "order.cancelled",
                "order.created",
                "user.invited"
            ]
        );
    });
}

/// A group that subscribes after events of a type were published gets the later ones: the
/// backend's routes of a type are worked out again when a group joins.
#[test]
fn a_group_subscribing_later_gets_the_types_published_before_it_joined() {
    run(|rt| async move {
        let backend = eventbus::backend::memory::MemoryBackend::new();
        let first = Seen::default();
        let f = first.clone();
        let early = eventbus::Bus::builder()
            .runtime(rt.clone())
            .backend(backend.clone())
            .subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    f.push(&env.data.order_id, env.data.seq);
                    async { Ok(()) }
                })
                .group("early"),
            )
            .start()
            .await
            .unwrap();
        early.publish(order("a", 1)).await.unwrap();
        let later = Seen::default();
        let l = later.clone();
        let late = eventbus::Bus::builder()
            .runtime(rt.clone())
            .backend(backend.clone())
            .subscribe(
                Subscription::new("order.*", move |env: Envelope<OrderCreated>| {
                    l.push(&env.data.order_id, env.data.seq);
                    async { Ok(()) }
                })
                .group("late"),
            )
            .start()
            .await
            .unwrap();
        early.publish(order("b", 2)).await.unwrap();
        wait_until(
            &rt,
            "both groups to see the second event",
            || first.all().len() >= 2 && !later.all().is_empty(),
            || format!("early saw {:?}, late saw {:?}", first.all(), later.all()),
        )
        .await;
        assert_eq!(later.all(), vec![("b".to_owned(), 2)]);
        late.shutdown(Duration::from_secs(5)).await;
        early.shutdown(Duration::from_secs(5)).await;
    });
}

#[test]
fn follow_on_events_carry_causation_and_correlation() {
    run(|rt| async move {
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = received.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let r = r.clone();
            bus.subscribe(
                Subscription::new(
                    "order.created",
                    |ctx: Context, env: Envelope<OrderCreated>| async move {
                        ctx.publish(OrderCancelled {
                            order_id: env.data.order_id,
                        })
                        .await?;
                        Ok(())
                    },
                )
                .group("canceller"),
            )
            .subscribe(
                Subscription::new("order.cancelled", move |env: Envelope<OrderCancelled>| {
                    let r = r.clone();
                    async move {
                        r.lock().unwrap().push(env);
                        Ok(())
                    }
                })
                .group("listener"),
            )
        })
        .await
        .unwrap();
        let root = Envelope::new(order("o-9", 1))
            .with_tenant("acme")
            .with_user("u-1")
            .with_correlation_id("flow-1");
        let root_id = root.id;
        h.bus().publisher().publish_envelope(root).await.unwrap();
        h.settle().await.unwrap();
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 1);
        let follow = &got[0];
        assert_eq!(
            follow.causation_id.as_deref(),
            Some(root_id.to_string().as_str())
        );
        assert_eq!(follow.correlation_id.as_deref(), Some("flow-1"));
        assert_eq!(follow.tenant_id.as_deref(), Some("acme"));
        assert_eq!(follow.user_id.as_deref(), Some("u-1"));
        assert_eq!(follow.source, "test-harness");
        assert_ne!(follow.id, root_id);
    });
}

#[test]
fn publishing_fills_source_and_correlation_id() {
    run(|rt| async move {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let g = g.clone();
            bus.subscribe(Subscription::new(
                "user.invited",
                move |env: Envelope<UserInvited>| {
                    *g.lock().unwrap() = Some(env);
                    async { Ok(()) }
                },
            ))
        })
        .await
        .unwrap();
        let id = h
            .publish(UserInvited {
                email: "a@b".into(),
            })
            .await
            .unwrap();
        h.settle().await.unwrap();
        let env = got.lock().unwrap().take().expect("delivered");
        assert_eq!(env.id, id);
        assert_eq!(env.id.get_version_num(), 7);
        assert_eq!(env.source, "test-harness");
        assert_eq!(env.correlation_id, Some(id.to_string()));
        assert_eq!(env.version, 1);
    });
}

#[test]
fn dlq_off_discards_after_the_last_attempt() {
    run(|rt| async move {
        let h = TestHarness::start_on(rt, move |bus| {
            bus.subscribe(
                Subscription::new("order.created", |_: Envelope<OrderCreated>| async {
                    Err::<(), _>(HandlerError::transient("x"))
                })
                .retries(2)
                .dlq(false),
            )
        })
        .await
        .unwrap();
        h.publish(order("o", 1)).await.unwrap();
        h.settle().await.unwrap();
        assert!(h.dead_letters("order.created").await.unwrap().is_empty());
        assert_eq!(h.bus().stats().discarded, 1);
    });
}

#[test]
fn redrive_republishes_and_the_fixed_handler_succeeds() {
    run(|rt| async move {
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let handled = Seen::default();
        let (b, s) = (broken.clone(), handled.clone());
        let h = TestHarness::start_on(rt, move |bus| {
            let (b, s) = (b.clone(), s.clone());
            bus.subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    let fail = b.load(Ordering::SeqCst);
                    let s = s.clone();
                    async move {
                        if fail {
                            return Err(HandlerError::permanent("bug"));
                        }
                        s.push(&env.data.order_id, env.data.seq);
                        Ok(())
                    }
                })
                .group("g"),
            )
        })
        .await
        .unwrap();
        h.publish(order("a", 1)).await.unwrap();
        h.publish(order("b", 2)).await.unwrap();
        h.settle().await.unwrap();
        let dlq = h.bus().dead_letters();
        let dead = dlq.list("order.created").await.unwrap();
        assert_eq!(dead.len(), 2);
        broken.store(false, Ordering::SeqCst);
        assert_eq!(
            dlq.redrive("order.created", &[dead[1].id.clone()])
                .await
                .unwrap(),
            1
        );
        h.settle().await.unwrap();
        assert_eq!(handled.all(), vec![("b".to_owned(), 2)]);
        assert_eq!(
            dlq.purge("order.created", vec![dead[0].id.clone()])
                .await
                .unwrap(),
            1
        );
        assert!(dlq.list("order.created").await.unwrap().is_empty());
        let missing = dlq
            .redrive("order.created", &["nope".into()])
            .await
            .unwrap_err();
        assert!(
            matches!(missing, eventbus::Error::DeadLetterNotFound { .. }),
            "{missing}"
        );
    });
}

#[test]
fn parked_keys_wait_beside_their_dead_letter_until_redriven() {
    run(|rt| async move {
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let handled = Seen::default();
        let (b, s) = (broken.clone(), handled.clone());
        let h = TestHarness::start_on(rt, move |bus| {
            let (b, s) = (b.clone(), s.clone());
            bus.subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    let fail = b.load(Ordering::SeqCst) && env.data.seq == 1;
                    let s = s.clone();
                    async move {
                        if fail {
                            return Err(HandlerError::permanent("bad first event"));
                        }
                        s.push(&env.data.order_id, env.data.seq);
                        Ok(())
                    }
                })
                .park_keys(true),
            )
        })
        .await
        .unwrap();
        for (key, seq) in [("k", 1), ("other", 10), ("k", 2), ("k", 3), ("other", 11)] {
            h.publish(order(key, seq)).await.unwrap();
        }
        h.settle().await.unwrap();
        assert_eq!(
            handled.all(),
            vec![("other".into(), 10), ("other".into(), 11)]
        );
        let dlq = h.bus().dead_letters();
        let dead = dlq.list("order.created").await.unwrap();
        assert_eq!(dead.len(), 3);
        assert!(
            dead[1].failure.message.starts_with("parked: key `k`"),
            "{}",
            dead[1].failure.message
        );
        let parked_gauge = |metrics: String| {
            metrics
                .lines()
                .find(|l| l.starts_with("event_parked_keys{"))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(
            parked_gauge(h.bus().metrics().encode()).as_deref(),
            Some("1")
        );
        broken.store(false, Ordering::SeqCst);
        assert_eq!(dlq.redrive_all("order.created").await.unwrap(), 3);
        h.settle().await.unwrap();
        assert_eq!(
            parked_gauge(h.bus().metrics().encode()).as_deref(),
            Some("0")
        );
        let after: Vec<u32> = handled
            .all()
            .iter()
            .filter(|(k, _)| k == "k")
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(after, vec![1, 2, 3]);
    });
}

#[test]
fn shutdown_drains_in_flight_handlers_and_refuses_new_work() {
    run(|rt| async move {
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        // Handlers hold until released, so all four are in flight when shutdown begins
        // however slowly the machine starts them; then each takes 20 ms more.
        let released = Arc::new(AtomicBool::new(false));
        let (s, f, r) = (started.clone(), finished.clone(), released.clone());
        let handler_rt = rt.clone();
        let h = TestHarness::start_on(rt.clone(), move |bus| {
            let (s, f, r) = (s.clone(), f.clone(), r.clone());
            let rt = handler_rt.clone();
            bus.subscribe(
                Subscription::new("order.created", move |_: Envelope<OrderCreated>| {
                    let (f, r, rt) = (f.clone(), r.clone(), rt.clone());
                    s.fetch_add(1, Ordering::SeqCst);
                    async move {
                        while !r.load(Ordering::SeqCst) {
                            rt.sleep(Duration::from_millis(5)).await;
                        }
                        rt.sleep(Duration::from_millis(20)).await;
                        f.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })
                .concurrency(4),
            )
        })
        .await
        .unwrap();
        for i in 0..4 {
            h.publish(order(&format!("k{i}"), i)).await.unwrap();
        }
        wait_until(
            &rt,
            "4 handlers started",
            || started.load(Ordering::SeqCst) >= 4,
            || format!("{} started", started.load(Ordering::SeqCst)),
        )
        .await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "handlers still in flight"
        );
        released.store(true, Ordering::SeqCst);
        let report = h.bus().shutdown(Duration::from_secs(5)).await;
        assert!(report.drained, "{report:?}");
        assert_eq!(report.aborted, 0);
        assert_eq!(finished.load(Ordering::SeqCst), 4);
        assert_eq!(h.backend().outstanding(), 0);
        let refused = h.publish(order("late", 9)).await.unwrap_err();
        assert!(matches!(refused, eventbus::Error::Closed), "{refused}");
    });
}

#[test]
fn shutdown_timeout_aborts_and_leaves_deliveries_for_redelivery() {
    run(|rt| async move {
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let h = TestHarness::start_on(rt.clone(), move |bus| {
            let s = s.clone();
            bus.subscribe(Subscription::new(
                "order.created",
                move |_: Envelope<OrderCreated>| {
                    s.fetch_add(1, Ordering::SeqCst);
                    async {
                        futures::future::pending::<()>().await;
                        Ok(())
                    }
                },
            ))
        })
        .await
        .unwrap();
        h.publish(order("stuck", 1)).await.unwrap();
        wait_until(
            &rt,
            "the handler to start",
            || started.load(Ordering::SeqCst) > 0,
            || "not started".to_owned(),
        )
        .await;
        // Shutdown's timeout runs on the virtual clock: advance it from the side.
        let shutdown = h.bus().shutdown(Duration::from_secs(1));
        let advance = async {
            loop {
                rt.sleep(Duration::from_millis(5)).await;
                h.clock().advance(Duration::from_secs(1));
            }
        };
        let report = match futures::future::select(Box::pin(shutdown), Box::pin(advance)).await {
            futures::future::Either::Left((report, _)) => report,
            futures::future::Either::Right(_) => unreachable!(),
        };
        assert!(!report.drained);
        assert_eq!(report.aborted, 1);
        assert_eq!(
            h.backend().outstanding(),
            1,
            "the stuck delivery is back in the queue"
        );
    });
}

#[test]
fn bad_configuration_fails_at_start_naming_the_setting() {
    run(|rt| async move {
        async fn ok(_: Envelope<OrderCreated>) -> HandlerResult {
            Ok(())
        }
        let cases: Vec<(Subscription, &str)> = vec![
            (
                Subscription::new("order..created", ok),
                "invalid pattern `order..created`",
            ),
            (
                Subscription::new("user.*", ok),
                "pattern`: `user.*` does not match the handler's event type `order.created`",
            ),
            (
                Subscription::new("order.*", ok).concurrency(0),
                ".concurrency`",
            ),
            (
                Subscription::new("order.*", ok).backoff(Backoff::exponential(
                    Duration::from_secs(9),
                    Duration::from_secs(1),
                )),
                ".backoff.initial`",
            ),
            (
                Subscription::new("order.*", ok).group(" "),
                ".group`: is empty",
            ),
            (
                Subscription::new("order.*", ok).dlq(false).park_keys(true),
                ".park_keys`: needs dead letters",
            ),
            (
                Subscription::new("order.*", ok).timeout(Duration::ZERO),
                ".timeout`",
            ),
        ];
        for (subscription, expected) in cases {
            let err =
                TestHarness::start_on(rt.clone(), move |bus| bus.subscribe(subscription.clone()))
                    .await
                    .err()
                    .expect("bad config must fail");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let err = eventbus::Bus::builder()
            .runtime(rt.clone())
            .start()
            .await
            .err()
            .expect("no backend");
        assert!(err.to_string().contains("`backend`"), "{err}");
    });
}

#[test]
fn delayed_retry_rounds_do_not_block_later_events_and_end_in_the_dlq() {
    run(|rt| async move {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handled = Seen::default();
        let (a, s) = (attempts.clone(), handled.clone());
        let h = TestHarness::start_on(rt, move |bus| {
            let (a, s) = (a.clone(), s.clone());
            bus.subscribe(
                Subscription::new(
                    "order.created",
                    move |ctx: Context, env: Envelope<OrderCreated>| {
                        let (a, s) = (a.clone(), s.clone());
                        async move {
                            if env.data.order_id == "poison" {
                                a.lock().unwrap().push(ctx.attempt());
                                return Err(HandlerError::transient("downstream down"));
                            }
                            s.push(&env.data.order_id, env.data.seq);
                            Ok(())
                        }
                    },
                )
                .retries(0)
                .delayed_retries([60, 300, 1800].map(Duration::from_secs)),
            )
        })
        .await
        .unwrap();
        h.publish(order("poison", 1)).await.unwrap();
        h.publish(order("fine", 2)).await.unwrap();
        h.settle().await.unwrap();
        assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(handled.all(), vec![("fine".to_owned(), 2)]);
        let dead = h.dead_letters("order.created").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].failure.attempts, 4);
        let span = dead[0].failure.last_failure - dead[0].failure.first_failure;
        assert_eq!(span.num_seconds(), 60 + 300 + 1800);
        assert_eq!(h.bus().stats().deferred, 3);
        // Retry-state headers do not leak into the dead letter.
        let stored = h.backend().messages("order.created.dlq");
        assert!(!stored[0].message.headers.contains_key("eventbus-attempt"));
    });
}

/// What a handler saw of its envelope and context on one attempt.
#[derive(Debug, Clone, PartialEq)]
struct SeenMetadata {
    event_type: String,
    source: String,
    correlation_id: Option<String>,
    tenant_id: Option<String>,
    header: Option<String>,
    ctx_correlation_id: Option<String>,
    ctx_header: Option<String>,
}

/// Under the test harness (whose recorder reads nothing of a handled envelope, so the handler's
/// envelope takes the decoded envelope's metadata) a failed, panicked or timed-out attempt
/// leaves the whole envelope for the next attempt and the handler's context. (A user layer
/// reading it after each failed attempt: `tests/conformance.rs`, on every backend.)
#[test]
fn every_attempt_sees_the_whole_envelope_after_a_failure_a_panic_or_a_timeout() {
    run(|rt| async move {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let h = TestHarness::start_on(rt, move |bus| {
            let s = s.clone();
            bus.subscribe(
                Subscription::new(
                    "order.created",
                    move |ctx: Context, env: Envelope<OrderCreated>| {
                        let attempt = {
                            let mut seen = s.lock().unwrap();
                            seen.push(SeenMetadata {
                                event_type: env.event_type.clone(),
                                source: env.source.clone(),
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
                .retries(3)
                .timeout(Duration::from_secs(30)),
            )
        })
        .await
        .unwrap();
        let envelope = Envelope::new(order("o-meta", 1))
            .with_correlation_id("corr-7")
            .with_tenant("acme")
            .with_header("x-origin", "checkout");
        h.bus()
            .publisher()
            .publish_envelope(envelope)
            .await
            .unwrap();
        h.settle().await.unwrap();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "attempts seen: {seen:?}");
        let first = &seen[0];
        assert_eq!(first.event_type, "order.created");
        assert!(!first.source.is_empty(), "{first:?}");
        assert_eq!(first.correlation_id.as_deref(), Some("corr-7"));
        assert_eq!(first.tenant_id.as_deref(), Some("acme"));
        assert_eq!(first.header.as_deref(), Some("checkout"));
        assert_eq!(first.ctx_correlation_id.as_deref(), Some("corr-7"));
        assert_eq!(first.ctx_header.as_deref(), Some("checkout"));
        for (attempt, later) in seen.iter().enumerate().skip(1) {
            assert_eq!(later, first, "attempt {}", attempt + 1);
        }
        assert_eq!(h.bus().stats().handled, 1);
        assert!(h.dead_letters("order.created").await.unwrap().is_empty());
    });
}

/// A backend keeping 3 messages a topic reads back only the last 3, yet a group that has not
/// handled the others yet still gets every one, and dead letters keep at least
/// `MemoryBackend::DEAD_LETTER_RETENTION`.
#[test]
fn a_small_retention_drops_no_unhandled_message_and_no_dead_letter() {
    run(|rt| async move {
        use eventbus::backend::memory::MemoryBackend;
        let backend = MemoryBackend::with_retention(3);
        let open = Arc::new(AtomicBool::new(false));
        let seen = Seen::default();
        let (o, s) = (open.clone(), seen.clone());
        let runtime = rt.clone();
        let bus = eventbus::Bus::builder()
            .runtime(rt.clone())
            .backend(backend.clone())
            .subscribe(
                Subscription::new("order.created", move |env: Envelope<OrderCreated>| {
                    let (o, s, runtime) = (o.clone(), s.clone(), runtime.clone());
                    async move {
                        // Held until the test has published everything.
                        while !o.load(Ordering::SeqCst) {
                            runtime.sleep(Duration::from_millis(2)).await;
                        }
                        if env.data.order_id == "bad" {
                            return Err(HandlerError::permanent("refused"));
                        }
                        s.push(&env.data.order_id, env.data.seq);
                        Ok(())
                    }
                })
                .group("held"),
            )
            .start()
            .await
            .unwrap();
        for seq in 0..10 {
            bus.publisher().publish(order("a", seq)).await.unwrap();
        }
        for seq in 0..5 {
            bus.publisher().publish(order("bad", seq)).await.unwrap();
        }
        let kept: Vec<String> = backend
            .messages("order.created")
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(kept, vec!["12", "13", "14"], "the last 3 of 15");
        open.store(true, Ordering::SeqCst);
        wait_until(
            &rt,
            "10 handled and 5 dead-lettered",
            || seen.all().len() == 10 && backend.messages("order.created.dlq").len() == 5,
            || {
                format!(
                    "handled {:?}, dead letters {}",
                    seen.all(),
                    backend.messages("order.created.dlq").len()
                )
            },
        )
        .await;
        let seqs: Vec<u32> = seen.all().into_iter().map(|(_, seq)| seq).collect();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        bus.shutdown(Duration::from_secs(5)).await;
    });
}

/// By default the in-memory backend reads back each event topic's last
/// `MemoryBackend::DEFAULT_RETENTION` (10 000) messages, and each dead-letter topic's last
/// `MemoryBackend::DEAD_LETTER_RETENTION` (100 000), as the README says.
#[test]
fn the_default_retention_keeps_10_000_messages_a_topic_and_100_000_dead_letters() {
    run(|_rt| async move {
        use eventbus::backend::memory::MemoryBackend;
        use eventbus::backend::{Backend, Message};
        assert_eq!(MemoryBackend::DEFAULT_RETENTION, 10_000);
        assert_eq!(MemoryBackend::DEAD_LETTER_RETENTION, 100_000);
        let backend = MemoryBackend::new();
        let message = |topic: &str| Message {
            topic: topic.into(),
            key: None,
            event_type: "order.created".into(),
            headers: Default::default(),
            payload: b"{}".as_slice().into(),
        };
        for (topic, published) in [("order.created", 10_005), ("order.created.dlq", 100_005)] {
            let batch: Vec<Message> = (0..published).map(|_| message(topic)).collect();
            backend.publish(batch).await.unwrap();
            let kept = backend.messages(topic);
            assert_eq!(
                (kept.len(), kept.first().map(|m| m.id.as_str())),
                (published - 5, Some("5")),
                "{topic}: {published} published, the first 5 dropped"
            );
        }
    });
}
