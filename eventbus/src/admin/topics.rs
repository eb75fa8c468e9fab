//! The topics the admin API and the dashboard know: one list for every panel, so the
//! throughput table, the dead-letter panel and the API agree on what exists.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::State as AdminState;
use crate::observability::exposition::Sample;
use crate::wire::is_dlq_topic;

/// The topics of `samples`' `topic` labels (dead-letter topics left out).
pub(crate) fn of_samples(samples: &[Sample]) -> impl Iterator<Item = &str> {
    samples
        .iter()
        .filter_map(|s| s.labels.get("topic"))
        .map(String::as_str)
        .filter(|t| !t.is_empty() && !is_dlq_topic(t))
}

/// Every topic the bus knows, sorted: its catalog's, its subscriptions' concrete topics,
/// those its metrics have seen (published to, handled, dead-lettered: how topics a wildcard
/// subscription discovers enter), and those with a dead-letter topic in the backend (dead
/// letters left from before a restart, or of another process). A name a request makes up
/// is never among them.
pub(crate) async fn known(state: &AdminState, samples: &[Sample]) -> Vec<String> {
    let mut topics: BTreeSet<String> = super::catalog::topics(state).into_iter().collect();
    topics.extend(state.bus.subscribed_topics().iter().cloned());
    topics.extend(of_samples(samples).map(str::to_owned));
    topics.extend(dead_letter_topics(state).await);
    topics.into_iter().filter(|t| !is_dlq_topic(t)).collect()
}

/// The backend's dead-letter topics, listed at most once per
/// [`DLQ_TOPICS_TTL`] (a single dead-letter topic is read through to list them; every
/// dashboard refresh asks twice).
async fn dead_letter_topics(state: &AdminState) -> Vec<String> {
    {
        let cached = state.dlq_topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, topics)) = cached.as_ref() {
            if at.elapsed() < DLQ_TOPICS_TTL {
                return topics.clone();
            }
        }
    }
    match state.bus.dead_letters().topics().await {
        Ok(found) => {
            *state.dlq_topics.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), found.clone()));
            found
        }
        Err(error) => {
            tracing::debug!(
                error = %crate::error::chain(&error),
                "dead-letter topics not listed"
            );
            Vec::new()
        }
    }
}

/// How long a listing of the backend's dead-letter topics is reused. Topics dead-lettered
/// by this process are known at once from the metrics; the listing adds those from before a
/// restart or from other processes.
const DLQ_TOPICS_TTL: Duration = Duration::from_secs(10);

/// [`known`] with the bus's current metrics.
pub(crate) async fn known_now(state: &AdminState) -> Vec<String> {
    let samples = crate::observability::exposition::parse_samples(&state.bus.metrics().encode());
    known(state, &samples).await
}
