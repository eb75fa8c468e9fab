//! The dead-letter queue: where deliveries end when they fail permanently or run out of
//! attempts, with the reason, and the tools to list, inspect, redrive and purge them.
//!
//! A dead letter is the original message, unchanged, published to `{topic}.dlq` (or to one
//! dead-letter topic for the whole service, [`DeadLetterTopics::Single`]) with these
//! transport headers: `dlq-original-topic`, `dlq-group`, `dlq-error-kind`
//! (`transient`/`permanent`), `dlq-error`, `dlq-attempts`, `dlq-first-failure` and
//! `dlq-last-failure` (RFC 3339).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backend::{
    is_internal_header, Backend, Cursor, Message, MessageHeaders, StoredMessage, MAX_PAGE,
    TENANT_HEADER,
};
use crate::envelope::RawEnvelope;
use crate::error::{DecodeError, Error};
use crate::handler::ErrorKind;
use crate::wire::REDRIVE_HEADER;

pub use crate::wire::{dlq_topic, is_dlq_topic, DLQ_SUFFIX, PAYLOAD_OMITTED};
use crate::wire::{
    DLQ_ATTEMPTS as ATTEMPTS, DLQ_ERROR as ERROR, DLQ_ERROR_KIND as ERROR_KIND,
    DLQ_FIRST_FAILURE as FIRST_FAILURE, DLQ_GROUP as GROUP, DLQ_LAST_FAILURE as LAST_FAILURE,
    DLQ_ORIGINAL_TOPIC as ORIGINAL_TOPIC,
};

/// The longest error text a dead letter stores, in bytes (`dlq-error`); a longer one is cut at
/// a character boundary and says how long it was.
pub const MAX_ERROR_TEXT: usize = 4096;

/// `text` cut to [`MAX_ERROR_TEXT`] bytes, with a note of the original length when cut.
pub fn capped_error_text(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (truncated from {} bytes)", &text[..end], text.len())
}

/// Where dead letters go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeadLetterTopics {
    /// Each topic's to its own `{topic}.dlq` (the default).
    #[default]
    PerTopic,
    /// Every topic's to this one topic (`orion.dlq`), the original topic in the
    /// `dlq-original-topic` header. Listing, counting, redriving and purging a topic's dead
    /// letters read the whole queue and keep that topic's.
    Single(String),
}

impl DeadLetterTopics {
    /// One dead-letter topic for every topic: `name` must end with `.dlq` (consumers never
    /// read such a topic by pattern) and hold something before it.
    pub fn single(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let base = name.strip_suffix(DLQ_SUFFIX).unwrap_or_default();
        if base.is_empty() || base.trim() != base || base.chars().any(char::is_control) {
            return Err(Error::config(
                "dead_letter_topic",
                format!("`{name}` is not a topic name ending in `{DLQ_SUFFIX}`, such as `orion{DLQ_SUFFIX}`"),
            ));
        }
        Ok(DeadLetterTopics::Single(name))
    }

    /// The dead-letter topic of `topic`.
    pub fn topic_for(&self, topic: &str) -> String {
        match self {
            DeadLetterTopics::PerTopic => dlq_topic(topic),
            DeadLetterTopics::Single(name) => name.clone(),
        }
    }

    /// Whether `letter`, read from [`topic_for`](Self::topic_for)`(topic)`, is one of
    /// `topic`'s.
    fn holds(&self, topic: &str, letter: &DeadLetter) -> bool {
        match self {
            DeadLetterTopics::PerTopic => true,
            DeadLetterTopics::Single(_) => letter.original_topic == topic,
        }
    }
}

/// Why and when a delivery failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Transient (exhausted) or permanent.
    pub kind: ErrorKind,
    /// The error message.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failed attempt.
    pub first_failure: DateTime<Utc>,
    /// Last failed attempt.
    pub last_failure: DateTime<Utc>,
}

/// Builds the dead-letter message for `original` failed in `group`.
pub fn dead_letter_message(original: &Message, group: &str, failure: &Failure) -> Message {
    let mut headers: MessageHeaders = original
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq-") && !is_internal_header(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.insert(ORIGINAL_TOPIC.into(), original.topic.to_string());
    headers.insert(GROUP.into(), group.into());
    headers.insert(ERROR_KIND.into(), failure.kind.to_string());
    headers.insert(ERROR.into(), capped_error_text(&failure.message));
    headers.insert(ATTEMPTS.into(), failure.attempts.to_string());
    headers.insert(FIRST_FAILURE.into(), failure.first_failure.to_rfc3339());
    headers.insert(LAST_FAILURE.into(), failure.last_failure.to_rfc3339());
    Message {
        topic: dlq_topic(&original.topic).into(),
        key: original.key.clone(),
        event_type: original.event_type.clone(),
        headers,
        payload: original.payload.clone(),
    }
}

/// A message in a dead-letter topic, with its failure metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Backend id of the dead-letter message.
    pub id: String,
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Where the message was consumed from.
    pub original_topic: String,
    /// The consumer group that gave up.
    pub group: String,
    /// Partition key.
    pub key: Option<String>,
    /// Tenant, when the message carried one.
    pub tenant: Option<String>,
    /// Event type.
    pub event_type: String,
    /// Why and when.
    pub failure: Failure,
    /// The original envelope bytes, as received (may be malformed: that can be the reason).
    /// Empty when the payload could not be stored ([`DeadLetter::payload_omitted`]).
    #[serde(skip)]
    pub payload: Arc<[u8]>,
    /// Set on a metadata-only dead letter: the payload's size and why it is missing.
    pub payload_omitted: Option<String>,
}

impl DeadLetter {
    /// Reads the metadata back from a dead-letter message.
    pub fn from_stored(stored: &StoredMessage) -> DeadLetter {
        let h = &stored.message.headers;
        let text = |k: &str| h.get(k).cloned().unwrap_or_default();
        let time = |k: &str| {
            h.get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default()
        };
        DeadLetter {
            id: stored.id.clone(),
            dlq_topic: stored.message.topic.to_string(),
            original_topic: h
                .get(ORIGINAL_TOPIC)
                .cloned()
                .unwrap_or_else(|| stored.message.topic.trim_end_matches(DLQ_SUFFIX).to_owned()),
            group: text(GROUP),
            key: stored.message.key.as_deref().map(str::to_owned),
            tenant: h.get(TENANT_HEADER).cloned(),
            event_type: stored.message.event_type.to_string(),
            failure: Failure {
                kind: if text(ERROR_KIND) == "permanent" {
                    ErrorKind::Permanent
                } else {
                    ErrorKind::Transient
                },
                message: text(ERROR),
                attempts: h.get(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
                first_failure: time(FIRST_FAILURE),
                last_failure: time(LAST_FAILURE),
            },
            payload: stored.message.payload.clone(),
            payload_omitted: h.get(PAYLOAD_OMITTED).cloned(),
        }
    }

    /// Decodes the original envelope.
    pub fn envelope(&self) -> Result<RawEnvelope, DecodeError> {
        RawEnvelope::decode(&self.payload)
    }

    /// The message that puts this event back on its original topic, with fresh attempts and a
    /// redrive marker.
    pub fn redrive_message(&self) -> Message {
        Message {
            topic: self.original_topic.as_str().into(),
            key: self.key.as_deref().map(Arc::from),
            event_type: self.event_type.as_str().into(),
            headers: self
                .tenant
                .iter()
                .map(|t| (TENANT_HEADER.to_owned(), t.clone()))
                .chain([(REDRIVE_HEADER.to_owned(), self.id.clone())])
                .collect(),
            payload: self.payload.clone(),
        }
    }
}

/// A page of dead letters, with where the next one starts.
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    /// The dead letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts; `None` at the queue's end.
    pub next: Option<Cursor>,
}

/// Dead-letter tools over a backend: list, inspect, redrive, purge.
#[derive(Clone)]
pub struct DeadLetters {
    backend: Arc<dyn Backend>,
    topics: DeadLetterTopics,
}

/// Most dead letters [`DeadLetters::topics`] reads from a single dead-letter topic.
pub const MAX_TOPICS_SCAN: usize = 100_000;

impl DeadLetters {
    /// Tools over `backend`, for dead letters in `{topic}.dlq`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        DeadLetters {
            backend,
            topics: DeadLetterTopics::PerTopic,
        }
    }

    /// Tools for dead letters routed by `topics` (what the bus uses:
    /// [`BusBuilder::dead_letter_topic`](crate::BusBuilder::dead_letter_topic)).
    pub fn routed(mut self, topics: DeadLetterTopics) -> Self {
        self.topics = topics;
        self
    }

    /// Where these tools look for dead letters.
    pub fn routing(&self) -> &DeadLetterTopics {
        &self.topics
    }

    /// The original topics with dead letters, sorted: the backend's dead-letter topics, or,
    /// with a single dead-letter topic, the original topics named in it (reading at most
    /// [`MAX_TOPICS_SCAN`] letters).
    pub async fn topics(&self) -> Result<Vec<String>, Error> {
        let admin = self.admin("listing dead-letter topics")?;
        let DeadLetterTopics::Single(single) = &self.topics else {
            return admin.dead_letter_topics().await;
        };
        let mut found = std::collections::BTreeSet::new();
        let (mut cursor, mut read) = (None, 0usize);
        while read < MAX_TOPICS_SCAN {
            let page = admin.read_page(single, cursor, MAX_PAGE).await?;
            read += page.messages.len().max(1);
            for stored in &page.messages {
                found.insert(DeadLetter::from_stored(stored).original_topic);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(found.into_iter().collect())
    }

    fn admin(&self, operation: &'static str) -> Result<&dyn crate::backend::BackendAdmin, Error> {
        crate::backend::admin_of(self.backend.as_ref(), operation)
    }

    /// One page of the dead letters of `topic` (the original topic, not the `.dlq` one),
    /// oldest first: up to `limit` (at most [`MAX_PAGE`]) after `cursor`. Walk a queue with
    /// the returned [`DeadLetterPage::next`]; no call loads more than a page.
    pub async fn page(
        &self,
        topic: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<DeadLetterPage, Error> {
        let page = self
            .admin("reading dead letters")?
            .read_page(&self.topics.topic_for(topic), cursor, limit)
            .await?;
        Ok(DeadLetterPage {
            letters: page
                .messages
                .iter()
                .map(DeadLetter::from_stored)
                .filter(|letter| self.topics.holds(topic, letter))
                .collect(),
            next: page.next,
        })
    }

    /// Every dead letter of `topic`, oldest first, read page by page. Holds the whole queue in
    /// memory: for tests and small queues; tools walk [`page`](Self::page) instead.
    pub async fn list(&self, topic: &str) -> Result<Vec<DeadLetter>, Error> {
        let mut letters = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.page(topic, cursor, MAX_PAGE).await?;
            letters.extend(page.letters);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(letters),
            }
        }
    }

    /// How many dead letters `topic` holds (with a single dead-letter topic, counted by
    /// reading it page by page).
    pub async fn count(&self, topic: &str) -> Result<u64, Error> {
        if let DeadLetterTopics::PerTopic = self.topics {
            return self
                .admin("counting dead letters")?
                .count(&dlq_topic(topic))
                .await;
        }
        let mut count = 0u64;
        let mut cursor = None;
        loop {
            let page = self.page(topic, cursor, MAX_PAGE).await?;
            count += page.letters.len() as u64;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(count),
            }
        }
    }

    /// The dead letters with the given ids (at most [`MAX_PAGE`] per call), oldest first, or
    /// an error naming the first id that is not (or no longer) on the queue.
    pub async fn get_many(&self, topic: &str, ids: &[String]) -> Result<Vec<DeadLetter>, Error> {
        if ids.len() > MAX_PAGE {
            return Err(Error::config(
                "ids",
                format!(
                    "at most {MAX_PAGE} dead letters per call, got {}",
                    ids.len()
                ),
            ));
        }
        let found: Vec<DeadLetter> = self
            .admin("reading dead letters")?
            .read_ids(&self.topics.topic_for(topic), ids.to_vec())
            .await?
            .iter()
            .map(DeadLetter::from_stored)
            .filter(|letter| self.topics.holds(topic, letter))
            .collect();
        if let Some(missing) = ids.iter().find(|id| found.iter().all(|d| &d.id != *id)) {
            return Err(Error::DeadLetterNotFound {
                topic: self.topics.topic_for(topic),
                id: missing.clone(),
            });
        }
        Ok(found)
    }

    /// One dead letter by id.
    pub async fn get(&self, topic: &str, id: &str) -> Result<DeadLetter, Error> {
        let mut found = self.get_many(topic, &[id.to_owned()]).await?;
        found.pop().ok_or_else(|| Error::DeadLetterNotFound {
            topic: self.topics.topic_for(topic),
            id: id.to_owned(),
        })
    }

    /// Delivers dead letters again to the consumer group that gave up on them (in their order,
    /// through [`BackendAdmin::deliver_to_group`](crate::backend::BackendAdmin::deliver_to_group),
    /// so the topic's other groups do not see them twice) and removes them from the dead-letter
    /// topic. A dead letter without a group (written by another tool) is published to its
    /// original topic instead. Every id must be on the queue. Returns how many were redriven.
    pub async fn redrive(&self, topic: &str, ids: &[String]) -> Result<usize, Error> {
        let mut unique = ids.to_vec();
        unique.sort();
        unique.dedup();
        // Every id is checked before anything changes.
        let mut chunks = Vec::new();
        for chunk in unique.chunks(MAX_PAGE) {
            chunks.push(self.get_many(topic, chunk).await?);
        }
        let mut redriven = 0;
        for letters in chunks {
            redriven += self.redrive_letters(topic, &letters).await?;
        }
        Ok(redriven)
    }

    /// Redrives `letters` (oldest first) and deletes them from the queue.
    async fn redrive_letters(&self, topic: &str, letters: &[DeadLetter]) -> Result<usize, Error> {
        let mut by_group: Vec<(&str, Vec<Message>)> = Vec::new();
        for letter in letters {
            let message = letter.redrive_message();
            match by_group.iter_mut().find(|(g, _)| *g == letter.group) {
                Some((_, messages)) => messages.push(message),
                None => by_group.push((&letter.group, vec![message])),
            }
        }
        for (group, messages) in by_group {
            if group.is_empty() {
                self.backend.publish(messages).await?;
            } else {
                self.admin("redriving to one group")?
                    .deliver_to_group(group, messages)
                    .await?;
            }
        }
        let ids: Vec<String> = letters.iter().map(|d| d.id.clone()).collect();
        self.admin("deleting dead letters")?
            .delete(&self.topics.topic_for(topic), ids)
            .await
    }

    /// Redrives every dead letter of `topic` that `select` keeps, page by page; returns how
    /// many were redriven.
    pub async fn redrive_where(
        &self,
        topic: &str,
        select: impl Fn(&DeadLetter) -> bool,
    ) -> Result<usize, Error> {
        self.walk(topic, select, |letters| async move {
            self.redrive_letters(topic, &letters).await
        })
        .await
    }

    /// Deletes every dead letter of `topic` that `select` keeps, page by page; returns how
    /// many were removed.
    pub async fn purge_where(
        &self,
        topic: &str,
        select: impl Fn(&DeadLetter) -> bool,
    ) -> Result<usize, Error> {
        self.walk(topic, select, |letters| async move {
            let ids = letters.into_iter().map(|d| d.id).collect();
            self.purge(topic, ids).await
        })
        .await
    }

    /// Walks the queue of `topic` page by page, handing the letters `select` keeps to `act`.
    async fn walk<F, Fut>(
        &self,
        topic: &str,
        select: impl Fn(&DeadLetter) -> bool,
        act: F,
    ) -> Result<usize, Error>
    where
        F: Fn(Vec<DeadLetter>) -> Fut,
        Fut: std::future::Future<Output = Result<usize, Error>>,
    {
        let mut done = 0;
        let mut cursor = None;
        loop {
            let page = self.page(topic, cursor, MAX_PAGE).await?;
            let chosen: Vec<DeadLetter> = page.letters.into_iter().filter(&select).collect();
            if !chosen.is_empty() {
                done += act(chosen).await?;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(done),
            }
        }
    }

    /// Redrives every dead letter of `topic`.
    pub async fn redrive_all(&self, topic: &str) -> Result<usize, Error> {
        self.redrive_where(topic, |_| true).await
    }

    /// Deletes dead letters without redriving them; returns how many were removed. With a
    /// single dead-letter topic, only ids of `topic`'s letters are deleted.
    pub async fn purge(&self, topic: &str, ids: Vec<String>) -> Result<usize, Error> {
        let ids = match self.topics {
            DeadLetterTopics::PerTopic => ids,
            DeadLetterTopics::Single(_) => {
                let mut mine = Vec::new();
                for chunk in ids.chunks(MAX_PAGE) {
                    let found = self
                        .admin("reading dead letters")?
                        .read_ids(&self.topics.topic_for(topic), chunk.to_vec())
                        .await?;
                    mine.extend(
                        found
                            .iter()
                            .map(DeadLetter::from_stored)
                            .filter(|letter| self.topics.holds(topic, letter))
                            .map(|letter| letter.id),
                    );
                }
                mine
            }
        };
        if ids.is_empty() {
            return Ok(0);
        }
        self.admin("deleting dead letters")?
            .delete(&self.topics.topic_for(topic), ids)
            .await
    }
}
