//! Sagas on each database: concurrent steps of one instance, steps before the start, events
//! after the end, retention of completed instances, and the outbox's scheduled rows that
//! carry saga timeouts.

use std::time::{Duration, Instant};

use eventbus::backend::memory::MemoryBackend;
use eventbus::outbox::{Outbox, Retention};
use eventbus::saga::{self, SagaContext};
use eventbus::{event, Backoff, Bus, Envelope, HandlerResult, Subscription};
use eventbus_integration::sleep;
use serde::{Deserialize, Serialize};

use super::{eventually, fast, memory, Fresh, TestDb};

/// Opens a counter: starts its saga.
#[event(name = "counter.opened", version = 1, key = counter)]
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CounterOpened {
    pub counter: String,
}

/// One tick; keyed by its number, so ticks of one counter are handled concurrently.
#[event(name = "counter.ticked", version = 1, key = n)]
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CounterTicked {
    pub counter: String,
    pub n: u32,
}

/// Closes a counter: completes its saga.
#[event(name = "counter.closed", version = 1, key = counter)]
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CounterClosed {
    pub counter: String,
}

/// Every tick a counter saw.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct Counter {
    pub ticks: Vec<u32>,
}

#[eventbus::saga(name = "counter", correlate = counter)]
impl Counter {
    #[start]
    fn opened(&mut self, _: &Envelope<CounterOpened>, _: &mut SagaContext) -> HandlerResult {
        Ok(())
    }

    #[handle]
    fn ticked(&mut self, e: &Envelope<CounterTicked>, _: &mut SagaContext) -> HandlerResult {
        self.ticks.push(e.data.n);
        Ok(())
    }

    #[handle]
    fn closed(&mut self, _: &Envelope<CounterClosed>, saga: &mut SagaContext) -> HandlerResult {
        saga.complete();
        Ok(())
    }
}

/// The counter saga's subscriptions, handling 8 deliveries at once and retrying quickly.
fn counter_steps<DB: TestDb>() -> Vec<Subscription> {
    saga::subscriptions::<Counter, DB>()
        .into_iter()
        .map(|s| {
            s.concurrency(8).retries(20).backoff(Backoff::exponential(
                Duration::from_millis(5),
                Duration::from_millis(100),
            ))
        })
        .collect()
}

async fn started<DB: TestDb>(backend: &MemoryBackend, outbox: &Outbox<DB>) -> Bus {
    Bus::builder()
        .backend(backend.clone())
        .outbox(outbox.clone())
        .subscribe_all(counter_steps::<DB>())
        .start()
        .await
        .expect("bus")
}

/// Ticks that arrive before the counter is opened are retried until it is; 40 ticks handled
/// 8 at a time all land in the one instance (each save names the version it loaded, a save
/// that lost the race runs again); the close completes the instance, and a late tick is
/// acknowledged without a step.
pub async fn concurrent_steps_of_one_saga_lose_no_update<DB: TestDb>(db: &Fresh<DB>) {
    const TICKS: u32 = 40;
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let outbox = fast(pool).build().expect("outbox");
    let bus = started::<DB>(&backend, &outbox).await;
    let publisher = bus.publisher();
    let tick = |n| CounterTicked {
        counter: "c-1".into(),
        n,
    };
    for n in 0..3 {
        publisher.publish(tick(n)).await.expect("publish");
    }
    // The early ticks find no instance and are retried; the counter opens after that.
    eventually(
        "an early tick without its instance",
        Duration::from_secs(10),
        || async { bus.metrics().encode().contains("outcome=\"missing\"") },
    )
    .await;
    publisher
        .publish(CounterOpened {
            counter: "c-1".into(),
        })
        .await
        .expect("publish");
    for n in 3..TICKS {
        publisher.publish(tick(n)).await.expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let instance = loop {
        let instance = saga::load::<Counter, DB>(pool, "c-1").await.expect("load");
        if let Some(instance) = instance
            .as_ref()
            .filter(|i| i.state.ticks.len() >= TICKS as usize)
        {
            break instance.clone();
        }
        assert!(
            Instant::now() < deadline,
            "not every tick in the instance after 30 s: {instance:?}; {:?}",
            bus.stats()
        );
        sleep(Duration::from_millis(10)).await;
    };
    let mut ticks = instance.state.ticks.clone();
    ticks.sort_unstable();
    assert_eq!(ticks, (0..TICKS).collect::<Vec<_>>(), "{instance:?}");
    assert_eq!(instance.version, i64::from(TICKS) + 1, "one save per step");

    publisher
        .publish(CounterClosed {
            counter: "c-1".into(),
        })
        .await
        .expect("publish");
    eventually(
        "the instance to complete",
        Duration::from_secs(10),
        || async {
            saga::load::<Counter, DB>(pool, "c-1")
                .await
                .expect("load")
                .is_some_and(|i| i.completed)
        },
    )
    .await;
    publisher.publish(tick(TICKS)).await.expect("publish");
    eventually("the late tick acknowledged", Duration::from_secs(10), || async {
        bus.metrics()
            .encode()
            .contains("event_saga_steps_total{service=\"eventbus\",saga=\"counter\",outcome=\"completed\"} 1")
    })
    .await;
    let after = saga::load::<Counter, DB>(pool, "c-1")
        .await
        .expect("load")
        .expect("instance");
    assert_eq!(after.version, i64::from(TICKS) + 2, "no step after the end");
    assert_eq!(after.state.ticks.len(), TICKS as usize);
    bus.shutdown(Duration::from_secs(5)).await;
}

/// Completed instances stay for `retention.completed_sagas`, then the cleanup deletes them;
/// running ones stay.
pub async fn completed_sagas_are_deleted_after_their_retention<DB: TestDb>(db: &Fresh<DB>) {
    completed_sagas_are_removed_after_their_retention(db, false).await;
}

/// The same in archive mode: the completed instance moves to `saga_archive`.
pub async fn completed_sagas_are_archived_after_their_retention<DB: TestDb>(db: &Fresh<DB>) {
    completed_sagas_are_removed_after_their_retention(db, true).await;
}

async fn completed_sagas_are_removed_after_their_retention<DB: TestDb>(
    db: &Fresh<DB>,
    archive: bool,
) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let retention = if archive {
        Retention::archive_after(Duration::from_secs(3600))
    } else {
        Retention::delete_after(Duration::from_secs(3600))
    };
    let outbox = fast(pool)
        .retention(retention.completed_sagas(Some(Duration::from_millis(200))))
        .build()
        .expect("outbox");
    let bus = started::<DB>(&backend, &outbox).await;
    let publisher = bus.publisher();
    for counter in ["done", "running"] {
        publisher
            .publish(CounterOpened {
                counter: counter.into(),
            })
            .await
            .expect("publish");
    }
    publisher
        .publish(CounterClosed {
            counter: "done".into(),
        })
        .await
        .expect("publish");
    eventually(
        "one completed, one running",
        Duration::from_secs(10),
        || async {
            let done = saga::load::<Counter, DB>(pool, "done").await.expect("load");
            let running = saga::load::<Counter, DB>(pool, "running")
                .await
                .expect("load");
            done.is_some_and(|i| i.completed) && running.is_some_and(|i| !i.completed)
        },
    )
    .await;
    assert_eq!(outbox.cleanup().await.expect("cleanup"), 0, "too young");
    sleep(Duration::from_millis(300)).await;
    assert_eq!(outbox.cleanup().await.expect("cleanup"), 1);
    assert!(saga::load::<Counter, DB>(pool, "done")
        .await
        .expect("load")
        .is_none());
    assert!(saga::load::<Counter, DB>(pool, "running")
        .await
        .expect("load")
        .is_some());
    let archived = DB::scalar(
        pool,
        "SELECT count(*) FROM saga_archive WHERE saga_id = 'done'",
    )
    .await;
    assert_eq!(archived, i64::from(archive), "archive mode: {archive}");
    bus.shutdown(Duration::from_secs(5)).await;
}

/// A scheduled event waits in the outbox until it is due, survives a dispatcher restart,
/// goes out without its partition key, and holds back nothing of its key meanwhile.
pub async fn a_scheduled_event_waits_in_the_outbox_until_due<DB: TestDb>(db: &Fresh<DB>) {
    let pool = &db.pool;
    let backend = MemoryBackend::new();
    let outbox = fast(pool).build().expect("outbox");
    let mut dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(800);
    let mut tx = DB::begin(pool).await;
    outbox
        .schedule_envelope(
            &mut *tx,
            Envelope::new(CounterClosed {
                counter: "later".into(),
            }),
            due,
        )
        .await
        .expect("schedule");
    outbox
        .enqueue(
            &mut *tx,
            &CounterOpened {
                counter: "later".into(),
            },
        )
        .await
        .expect("enqueue");
    DB::commit(tx).await.expect("commit");
    outbox.wake();
    let started = Instant::now();
    eventually(
        "the unscheduled event of the key",
        Duration::from_secs(5),
        || async { !backend.messages("counter.opened").is_empty() },
    )
    .await;
    assert!(
        backend.messages("counter.closed").is_empty(),
        "published {:?} before its due time",
        started.elapsed()
    );
    dispatcher.abort().await;
    dispatcher = outbox
        .dispatcher(memory(&backend))
        .start()
        .expect("dispatcher");
    eventually("the scheduled event", Duration::from_secs(10), || async {
        !backend.messages("counter.closed").is_empty()
    })
    .await;
    assert!(
        chrono::Utc::now() >= due,
        "published before its due time {due}"
    );
    let closed = backend.messages("counter.closed");
    assert_eq!(closed.len(), 1);
    assert_eq!(
        closed[0].message.key, None,
        "a scheduled event carries no partition key"
    );
    dispatcher.shutdown(Duration::from_secs(5)).await;
}
