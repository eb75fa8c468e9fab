//! The dispatcher (relay): claims committed `PENDING` rows in batches, publishes them to the
//! backend, and writes back `SENT`, a retry time, or `FAILED` plus a dead letter.
//!
//! One pass: claim up to `batch_size` rows (the database cuts each key's rows before any row of
//! that key held elsewhere or waiting for a retry) → decrypt → one `Backend::publish` call for
//! the batch, in `id` order → mark the accepted rows `SENT` (in the claim's transaction on
//! PostgreSQL). If the batch call fails, its rows are published one by one until the first
//! failure, so one bad message cannot hold back the rest: that row gets `attempts + 1` and
//! `available_at = now + backoff(attempts)`, the rows after it stay untouched for the next pass.
//! A row reaching `retry_max` attempts is published to `{topic}.dlq` (group `outbox`, with the
//! last error) and marked `FAILED`; if that publish fails too, the row stays `PENDING` and the
//! next pass tries the dead letter again.
//!
//! A dispatcher that dies mid-pass leaves its rows `PENDING` (the claim is rolled back, or was
//! never written on SQLite): the next pass publishes them again, at least once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::{self, Either};
use futures::FutureExt;

use super::driver::{ClaimedRow, FailedRow, RetryRow, Settlement, Shard};
use super::{db_error, KeyRing, Outbox, SqlDatabase, DEAD_LETTER_GROUP};
use crate::backend::{Backend, Message};
use crate::clock::{Clock, SystemClock};
use crate::dead_letter::{dead_letter_message, Failure};
use crate::error::Error;
use crate::handler::ErrorKind;
use crate::observability::Metrics;
use crate::publisher::Publisher;
use crate::retry::Backoff;
use crate::runtime::task_group::TaskGroup;
use crate::runtime::{default_runtime, Runtime};

/// Configures and starts a dispatcher relaying an [`Outbox`] to a backend. Made by
/// [`Outbox::dispatcher`].
#[must_use]
pub struct Dispatcher<DB: SqlDatabase> {
    outbox: Outbox<DB>,
    backend: Arc<dyn Backend>,
    publisher: Option<Publisher>,
    metrics: Option<Arc<Metrics>>,
    runtime: Option<Arc<dyn Runtime>>,
    clock: Option<Arc<dyn Clock>>,
}

impl<DB: SqlDatabase> Dispatcher<DB> {
    /// A dispatcher relaying `outbox` to `backend`.
    pub fn new(outbox: Outbox<DB>, backend: Arc<dyn Backend>) -> Self {
        Dispatcher {
            outbox,
            backend,
            publisher: None,
            metrics: None,
            runtime: None,
            clock: None,
        }
    }

    /// Publishes through `publisher` (its circuit breakers and `event_published_total`)
    /// instead of straight to the backend: what a bus that owns the outbox does.
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Keeps `event_outbox_backlog` and `event_publish_lag_seconds` of `metrics` current: read
    /// at start and every [`OutboxConfig::metrics_interval`](super::OutboxConfig::metrics_interval).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The executor its tasks run on; defaults to [`crate::runtime::default_runtime`] (tokio
    /// inside a tokio runtime, else smol).
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The clock its waits use; defaults to real time on the runtime's timers.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Spawns `concurrency` pass loops, the LISTEN task (PostgreSQL) and the retention
    /// cleanup, and returns their handle. Uses `concurrency + 1` pool connections at most.
    pub fn start(self) -> Result<DispatcherHandle, Error> {
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => default_runtime()?,
        };
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(SystemClock::new(runtime.clone())));
        let outbox = self.outbox;
        let config = outbox.config().clone();
        let shared = Arc::new(DispatcherState {
            clock: clock.clone(),
            tasks: TaskGroup::new(),
            counters: Counters::default(),
        });
        let publisher = self.publisher.unwrap_or_else(|| {
            Publisher::new(
                self.backend.clone(),
                clock.clone(),
                outbox.source().to_owned(),
            )
        });
        let relay = Arc::new(Relay {
            publisher,
            keyring: outbox.keyring().cloned(),
            retry_max: config.retry_max,
            backoff: config.backoff.clone(),
        });
        let count = config.concurrency as u32;
        for index in 0..count {
            let shard = Shard { index, count };
            let task = worker(outbox.clone(), relay.clone(), shared.clone(), shard);
            shared.tasks.spawn(&runtime, task);
        }
        if let Some(listen) = DB::outbox_listen(
            outbox.pool().clone(),
            outbox.wake_signal().clone(),
            clock.clone(),
        ) {
            let stopped = shared.clone();
            shared.tasks.spawn(&runtime, async move {
                let _ = future::select(listen, Box::pin(stopped.tasks.stopped())).await;
            });
        }
        if config.retention.sent.is_some() {
            let task = cleanup_loop(outbox.clone(), shared.clone());
            shared.tasks.spawn(&runtime, task);
        }
        if let Some(metrics) = self.metrics {
            let task = metrics_loop(outbox.clone(), metrics, shared.clone());
            shared.tasks.spawn(&runtime, task);
        }
        tracing::info!(
            database = DB::LABEL,
            backend = relay.publisher.backend().name(),
            batch_size = config.batch_size,
            concurrency = config.concurrency,
            "outbox dispatcher started"
        );
        Ok(DispatcherHandle { shared })
    }
}

/// A running dispatcher. Dropping the handle stops it after its current passes.
#[derive(Debug)]
pub struct DispatcherHandle {
    shared: Arc<DispatcherState>,
}

/// What a dispatcher did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    /// Passes run.
    pub passes: u64,
    /// Rows accepted by the backend (a row published again after a crash counts again).
    pub published: u64,
    /// Failed publish attempts that will be retried.
    pub retries: u64,
    /// Rows dead-lettered and marked `FAILED`.
    pub dead_lettered: u64,
    /// Rows marked `FAILED` whose payload could not be decrypted (not dead-lettered).
    pub undecryptable: u64,
    /// Passes that failed on the database.
    pub errors: u64,
    /// Passes that left rows they claimed because an earlier row of the same key was held by
    /// another dispatcher (or waits for a retry): contention between dispatchers. The workers
    /// of one dispatcher split the keys, so they never block one another.
    pub blocked: u64,
}

impl DispatcherHandle {
    /// What the dispatcher did so far.
    pub fn stats(&self) -> DispatcherStats {
        let c = &self.shared.counters;
        DispatcherStats {
            passes: c.passes.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            undecryptable: c.undecryptable.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            blocked: c.blocked.load(Ordering::Relaxed),
        }
    }

    /// Whether any of its tasks still runs.
    pub fn is_running(&self) -> bool {
        self.shared.tasks.running() > 0
    }

    /// Stops starting passes, waits for the current ones to finish, then aborts the rest
    /// (their rows stay `PENDING`). Returns within `timeout`; true if everything finished on
    /// its own.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let stopped = self
            .shared
            .tasks
            .shutdown(&*self.shared.clock, timeout)
            .await;
        tracing::info!(
            drained = stopped.drained,
            aborted = stopped.aborted,
            left_behind = stopped.left_behind,
            "outbox dispatcher stopped"
        );
        stopped.drained
    }

    /// Stops at once, as a crash would: passes in flight are dropped mid-way, their claims
    /// rolled back, and rows published but not yet marked `SENT` will be published again.
    pub async fn abort(&self) {
        self.shared.tasks.stop();
        self.shared.tasks.abort_all();
        self.shared.tasks.finished().await;
    }
}

impl Drop for DispatcherHandle {
    fn drop(&mut self) {
        self.shared.tasks.stop();
    }
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    published: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    undecryptable: AtomicU64,
    errors: AtomicU64,
    blocked: AtomicU64,
}

struct DispatcherState {
    clock: Arc<dyn Clock>,
    tasks: Arc<TaskGroup>,
    counters: Counters,
}

impl std::fmt::Debug for DispatcherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("running", &self.tasks.running())
            .field("stopping", &self.tasks.is_stopping())
            .finish_non_exhaustive()
    }
}

impl DispatcherState {
    fn is_stopping(&self) -> bool {
        self.tasks.is_stopping()
    }
}

/// What one pass did, for the loop's pacing.
struct PassReport {
    /// Rows claimed before the per-key cut.
    claimed: usize,
    /// Some row was settled for good (`SENT` or `FAILED`).
    progress: bool,
    /// Some row failed and waits for a retry.
    failed: bool,
    /// Claimed rows were left because their key is held elsewhere (another dispatcher will
    /// release it soon).
    blocked: bool,
}

async fn worker<DB: SqlDatabase>(
    outbox: Outbox<DB>,
    relay: Arc<Relay>,
    shared: Arc<DispatcherState>,
    shard: Shard,
) {
    let config = outbox.config().clone();
    let mut failures = 0u32;
    let mut blocked = 0u32;
    let mut floor = Floor::default();
    // Rows the next pass claims: the batch size, a quarter of the last one's after a pass
    // that could keep none of its rows (their keys held by another dispatcher), back to the
    // batch size after a pass that made progress.
    let mut limit = config.batch_size;
    loop {
        let stopped = shared.tasks.stop_listener();
        if shared.is_stopping() {
            return;
        }
        let woken = outbox.wake_signal().listen();
        let pause = match pass(&outbox, &relay, &shared, &mut floor, shard, limit).await {
            Ok(report) if report.failed => {
                failures = failures.saturating_add(1);
                limit = config.batch_size;
                Some(config.backoff.delay(failures))
            }
            Ok(report) => {
                failures = 0;
                if report.progress {
                    let full = report.claimed >= limit as usize;
                    limit = config.batch_size;
                    blocked = 0;
                    if full {
                        continue;
                    }
                    None
                } else if report.blocked {
                    // Another dispatcher holds the keys and commits soon: retry shortly,
                    // backing off while it stays so. A claim locks its rows until it lets
                    // them go, and another dispatcher's claim skips locked rows and then
                    // leaves the later rows of their keys: smaller claims while blocked keep
                    // this dispatcher out of the way of the one making progress.
                    blocked = blocked.saturating_add(1);
                    limit = (limit / 4).max(1);
                    let pause = Duration::from_millis(2 << blocked.min(8));
                    Some(pause.min(config.poll_interval))
                } else {
                    blocked = 0;
                    limit = config.batch_size;
                    None
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %crate::error::chain(&error), "outbox dispatcher pass failed");
                Some(config.backoff.delay(failures))
            }
        };
        let wait = match pause {
            // After a failure (or while blocked), new rows do not cut the pause short.
            Some(delay) => Either::Left(shared.clock.sleep(delay)),
            None => Either::Right(
                future::select(shared.clock.sleep(config.poll_interval), woken).map(drop),
            ),
        };
        let _ = future::select(wait, stopped).await;
    }
}

/// A worker's lower bound for its claims (see `OutboxDriver::outbox_floor`), refreshed at
/// most every [`Floor::REFRESH`] while busy and after every idle pass.
#[derive(Default)]
struct Floor {
    id: i64,
    refreshed: Option<DateTime<Utc>>,
    stale: bool,
}

impl Floor {
    const REFRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

    async fn get<DB: SqlDatabase>(
        &mut self,
        outbox: &Outbox<DB>,
        now: DateTime<Utc>,
    ) -> Result<i64, Error> {
        let due = self.refreshed.is_none_or(|at| now - at >= Self::REFRESH);
        if self.stale || due {
            self.id = DB::outbox_floor(outbox.pool())
                .await
                .map_err(|e| db_error::<DB>("outbox floor", e))?;
            self.refreshed = Some(now);
            self.stale = false;
        }
        Ok(self.id)
    }
}

async fn pass<DB: SqlDatabase>(
    outbox: &Outbox<DB>,
    relay: &Relay,
    shared: &DispatcherState,
    floor: &mut Floor,
    shard: Shard,
    limit: u32,
) -> Result<PassReport, Error> {
    let lowest = floor.get(outbox, shared.clock.now()).await?;
    let mut claim = DB::outbox_claim(outbox.pool(), limit, lowest, shard)
        .await
        .map_err(|e| db_error::<DB>("outbox claim", e))?;
    // Nothing to do (or only rows held elsewhere): look below the floor next time.
    floor.stale = claim.claimed() == 0;
    shared.counters.passes.fetch_add(1, Ordering::Relaxed);
    let claimed = claim.claimed();
    let rows = claim.take_rows();
    let blocked = rows.len() < claimed;
    let next_floor = claim.next_floor();
    let ids: Vec<i64> = if next_floor.is_some() {
        rows.iter().map(|r| r.id).collect()
    } else {
        Vec::new()
    };
    let (settlement, dead_lettered, undecryptable) = if rows.is_empty() {
        (Settlement::default(), 0, 0)
    } else {
        relay.relay(rows).await
    };
    let report = PassReport {
        claimed,
        progress: !settlement.sent.is_empty() || !settlement.failed.is_empty(),
        failed: !settlement.retry.is_empty(),
        blocked,
    };
    let c = &shared.counters;
    c.published
        .fetch_add(settlement.sent.len() as u64, Ordering::Relaxed);
    c.retries
        .fetch_add(settlement.retry.len() as u64, Ordering::Relaxed);
    c.dead_lettered.fetch_add(dead_lettered, Ordering::Relaxed);
    c.undecryptable.fetch_add(undecryptable, Ordering::Relaxed);
    c.blocked.fetch_add(u64::from(blocked), Ordering::Relaxed);
    // Rows of the claim still PENDING after the pass (retrying, or left for the next pass)
    // keep the floor down.
    let next_floor = next_floor.map(|next| {
        let closed: HashSet<i64> = settlement
            .sent
            .iter()
            .copied()
            .chain(settlement.failed.iter().map(|f| f.id))
            .collect();
        ids.iter()
            .copied()
            .filter(|id| !closed.contains(id))
            .min()
            .map_or(next, |open| open.min(next))
    });
    claim
        .settle(settlement)
        .await
        .map_err(|e| db_error::<DB>("outbox settle", e))?;
    if let Some(next) = next_floor {
        floor.id = floor.id.max(next);
    }
    Ok(report)
}

async fn cleanup_loop<DB: SqlDatabase>(outbox: Outbox<DB>, shared: Arc<DispatcherState>) {
    let every = outbox.config().retention.interval;
    while shared
        .tasks
        .sleep_unless_stopped(&*shared.clock, every)
        .await
    {
        match outbox.cleanup().await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "outbox cleanup"),
            Err(error) => {
                tracing::warn!(error = %crate::error::chain(&error), "outbox cleanup failed")
            }
        }
    }
}

/// Reads the backlog into the metrics now and every `metrics_interval` until stopped.
async fn metrics_loop<DB: SqlDatabase>(
    outbox: Outbox<DB>,
    metrics: Arc<Metrics>,
    shared: Arc<DispatcherState>,
) {
    let every = outbox.config().metrics_interval;
    loop {
        match outbox.backlog().await {
            Ok(backlog) => metrics.outbox(backlog.pending, backlog.oldest_pending_age),
            Err(error) => {
                tracing::debug!(error = %crate::error::chain(&error), "outbox backlog not read for the metrics")
            }
        }
        if !shared
            .tasks
            .sleep_unless_stopped(&*shared.clock, every)
            .await
        {
            return;
        }
    }
}

/// Publishes claimed rows; database-independent.
struct Relay {
    publisher: Publisher,
    keyring: Option<Arc<KeyRing>>,
    retry_max: u32,
    backoff: Backoff,
}

/// A row ready to publish.
struct Ready {
    id: i64,
    attempts: u32,
    first_failed_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    message: Message,
}

impl Relay {
    /// Publishes `rows` (in `id` order, already cut per key); returns what to write back, and
    /// how many rows were dead-lettered and given up as unreadable.
    async fn relay(&self, rows: Vec<ClaimedRow>) -> (Settlement, u64, u64) {
        let mut settlement = Settlement::default();
        let mut undecryptable = 0;
        // Keys whose later rows must wait for the next pass.
        let mut stopped: HashSet<Arc<str>> = HashSet::new();
        let mut batch = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        for row in rows {
            if row
                .partition_key
                .as_ref()
                .is_some_and(|k| stopped.contains(k))
            {
                continue;
            }
            let (id, attempts, key) = (row.id, row.attempts, row.partition_key.clone());
            match self.ready(row) {
                Ok(ready) if ready.attempts >= self.retry_max => {
                    let error = ready
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "publish attempts exhausted".to_owned());
                    stopped.extend(key);
                    dead.push((ready, error));
                }
                Ok(ready) => batch.push(ready),
                Err(error) => {
                    // Unreadable (unknown key id, tampered): nothing can be published or
                    // dead-lettered. Retry, in case the key ring is fixed, then give up.
                    stopped.extend(key);
                    let attempts = attempts.saturating_add(1);
                    if attempts >= self.retry_max {
                        tracing::error!(id, %error, "outbox row cannot be decrypted; marked FAILED");
                        undecryptable += 1;
                        settlement.failed.push(FailedRow {
                            id,
                            attempts,
                            error,
                        });
                    } else {
                        let delay = self.backoff.delay(attempts);
                        settlement.retry.push(RetryRow {
                            id,
                            attempts,
                            error,
                            delay,
                        });
                    }
                }
            }
        }
        if let Some((ready, error)) = self.publish(batch, &mut settlement).await {
            let attempts = ready.attempts.saturating_add(1);
            if attempts >= self.retry_max {
                dead.push((Ready { attempts, ..ready }, error));
            } else {
                tracing::debug!(id = ready.id, attempts, %error, "outbox publish failed; will retry");
                let delay = self.backoff.delay(attempts);
                settlement.retry.push(RetryRow {
                    id: ready.id,
                    attempts,
                    error,
                    delay,
                });
            }
        }
        let mut dead_lettered = 0;
        for (ready, error) in dead {
            if self.dead_letter(ready, error, &mut settlement).await {
                dead_lettered += 1;
            }
        }
        (settlement, dead_lettered, undecryptable)
    }

    fn ready(&self, row: ClaimedRow) -> Result<Ready, String> {
        let payload = match (&row.key_id, &self.keyring) {
            (None, _) => row.payload,
            (Some(key_id), Some(ring)) => ring.open(key_id, &row.payload, row.event_id)?.into(),
            (Some(key_id), None) => {
                return Err(format!(
                    "cannot decrypt: the row is sealed under key `{key_id}` and the outbox has \
                     no key ring"
                ))
            }
        };
        Ok(Ready {
            id: row.id,
            attempts: row.attempts,
            first_failed_at: row.first_failed_at,
            last_error: row.last_error,
            message: Message {
                topic: row.topic,
                key: row.partition_key,
                event_type: row.event_type,
                headers: row.headers,
                payload,
            },
        })
    }

    /// Publishes the batch in one call; if that fails, one by one until the first failure,
    /// which is returned with its error.
    async fn publish(
        &self,
        batch: Vec<Ready>,
        settlement: &mut Settlement,
    ) -> Option<(Ready, String)> {
        if batch.is_empty() {
            return None;
        }
        let messages: Vec<Message> = batch.iter().map(|r| r.message.clone()).collect();
        let error = match self.publisher.publish_messages(messages).await {
            Ok(()) => {
                settlement.sent.extend(batch.iter().map(|r| r.id));
                return None;
            }
            Err(error) => crate::error::chain(&error),
        };
        if batch.len() == 1 {
            return batch.into_iter().next().map(|ready| (ready, error));
        }
        tracing::debug!(rows = batch.len(), %error, "outbox batch publish failed; publishing one by one");
        for ready in batch {
            match self
                .publisher
                .publish_messages(vec![ready.message.clone()])
                .await
            {
                Ok(()) => settlement.sent.push(ready.id),
                Err(error) => return Some((ready, crate::error::chain(&error))),
            }
        }
        None
    }

    /// Publishes the dead letter of an exhausted row; true if it went out (row `FAILED`),
    /// false if it stays `PENDING` for the next pass.
    async fn dead_letter(&self, ready: Ready, error: String, settlement: &mut Settlement) -> bool {
        let now = Utc::now();
        let failure = Failure {
            kind: ErrorKind::Transient,
            message: error.clone(),
            attempts: ready.attempts,
            first_failure: ready.first_failed_at.unwrap_or(now),
            last_failure: now,
        };
        let mut letter = dead_letter_message(&ready.message, DEAD_LETTER_GROUP, &failure);
        letter.topic = self
            .publisher
            .dead_letter_topics()
            .topic_for(&ready.message.topic)
            .into();
        match self.publisher.publish_messages(vec![letter]).await {
            Ok(()) => {
                tracing::warn!(
                    id = ready.id,
                    topic = %ready.message.topic,
                    attempts = ready.attempts,
                    %error,
                    "outbox row dead-lettered"
                );
                settlement.failed.push(FailedRow {
                    id: ready.id,
                    attempts: ready.attempts,
                    error,
                });
                true
            }
            Err(dlq_error) => {
                tracing::warn!(
                    id = ready.id,
                    error = %crate::error::chain(&dlq_error),
                    "outbox dead-letter publish failed; will retry"
                );
                settlement.retry.push(RetryRow {
                    id: ready.id,
                    attempts: ready.attempts,
                    error,
                    delay: self.backoff.delay(ready.attempts),
                });
                false
            }
        }
    }
}
