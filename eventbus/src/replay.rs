//! Replay: re-deliver the events of a topic from a time window, filtered by type, to one
//! consumer group, marked with the `eventbus-replay` header (handlers see
//! [`Context::is_replay`](crate::Context::is_replay); the inbox lets replays through).
//! Progress is readable while it runs.
//!
//! A replay always names its group and travels on that group's own channel
//! ([`BackendAdmin::deliver_to_group`](crate::backend::BackendAdmin::deliver_to_group)): the
//! replay marker, like every internal header, counts for nothing on a live topic, where anyone
//! could write it to slip past the inbox.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Message};
use crate::error::Error;
use crate::pattern::Pattern;
use crate::wire::{is_dlq_topic, REPLAY_HEADER};

/// What to replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// The topic to read.
    pub topic: String,
    /// Start of the window (inclusive), by envelope time.
    pub from: DateTime<Utc>,
    /// End of the window (inclusive).
    pub to: DateTime<Utc>,
    /// Event-type pattern (wildcards allowed); all types when absent.
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// The consumer group to deliver to (required: see the module documentation).
    #[serde(default)]
    pub group: Option<String>,
}

impl ReplayRequest {
    /// Checks the request, naming the bad field.
    pub fn validate(&self) -> Result<Option<Pattern>, Error> {
        if self.topic.trim().is_empty() {
            return Err(Error::config("topic", "is empty"));
        }
        if is_dlq_topic(&self.topic) {
            return Err(Error::config(
                "topic",
                "dead-letter topics are redriven, not replayed",
            ));
        }
        if self.from > self.to {
            return Err(Error::config(
                "from",
                format!("{} is after `to` {}", self.from, self.to),
            ));
        }
        let pattern = self
            .event_type
            .as_deref()
            .map(|p| Pattern::parse(p).map_err(|e| Error::config("type", format!("`{p}`: {e}"))))
            .transpose()?;
        if self.group.as_deref().is_none_or(|g| g.trim().is_empty()) {
            return Err(Error::config(
                "group",
                "name the consumer group to replay to (a replay is delivered to one group)",
            ));
        }
        Ok(pattern)
    }
}

/// How far a replay got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayStatus {
    /// Messages read in the window.
    pub scanned: u64,
    /// Messages matching the type filter.
    pub matched: u64,
    /// Messages re-delivered.
    pub replayed: u64,
    /// Whether it finished.
    pub done: bool,
    /// Why it stopped, if it failed.
    pub error: Option<String>,
}

/// Live progress of a replay, shared with whoever watches it.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    scanned: AtomicU64,
    matched: AtomicU64,
    replayed: AtomicU64,
    done: AtomicBool,
    error: Mutex<Option<String>>,
}

impl ReplayProgress {
    /// The current figures.
    pub fn status(&self) -> ReplayStatus {
        ReplayStatus {
            scanned: self.scanned.load(Ordering::SeqCst),
            matched: self.matched.load(Ordering::SeqCst),
            replayed: self.replayed.load(Ordering::SeqCst),
            done: self.done.load(Ordering::SeqCst),
            error: self.error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// Messages read, and re-delivered, per backend call: a replay holds one page at a time.
const CHUNK: usize = 500;

/// Runs `request` against `backend`, updating `progress`; returns the final status.
pub async fn replay(
    backend: &Arc<dyn Backend>,
    request: &ReplayRequest,
    progress: Arc<ReplayProgress>,
) -> Result<ReplayStatus, Error> {
    let result = run(backend, request, &progress).await;
    if let Err(error) = &result {
        *progress.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }
    progress.done.store(true, Ordering::SeqCst);
    tracing::info!(topic = %request.topic, status = ?progress.status(), "replay finished");
    result.map(|()| progress.status())
}

async fn run(
    backend: &Arc<dyn Backend>,
    request: &ReplayRequest,
    progress: &ReplayProgress,
) -> Result<(), Error> {
    let filter = request.validate()?;
    tracing::info!(?request, "replay started");
    let admin = crate::backend::admin_of(backend.as_ref(), "replay")?;
    let group = request.group.as_deref().unwrap_or_default();
    let mut cursor = None;
    loop {
        let page = admin
            .read_range_page(&request.topic, request.from, request.to, cursor, CHUNK)
            .await?;
        progress
            .scanned
            .fetch_add(page.messages.len() as u64, Ordering::SeqCst);
        let selected: Vec<Message> = page
            .messages
            .into_iter()
            .filter(|m| {
                filter
                    .as_ref()
                    .is_none_or(|p| p.matches(&m.message.event_type))
            })
            .map(|m| {
                let mut message = m.message;
                message
                    .headers
                    .insert(REPLAY_HEADER.to_owned(), "true".to_owned());
                message
            })
            .collect();
        progress
            .matched
            .fetch_add(selected.len() as u64, Ordering::SeqCst);
        if !selected.is_empty() {
            let count = selected.len() as u64;
            admin.deliver_to_group(group, selected).await?;
            progress.replayed.fetch_add(count, Ordering::SeqCst);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(())
}
