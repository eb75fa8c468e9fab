//! The topics the admin API and the dashboard know: one list for every panel, so the
//! throughput table, the dead-letter panel and the API agree on what exists.

use std::collections::BTreeSet;

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
    match state.bus.dead_letters().topics().await {
        Ok(found) => topics.extend(found),
        Err(error) => tracing::debug!(
            error = %crate::error::chain(&error),
            "dead-letter topics not listed"
        ),
    }
    topics.into_iter().filter(|t| !is_dlq_topic(t)).collect()
}

/// [`known`] with the bus's current metrics.
pub(crate) async fn known_now(state: &AdminState) -> Vec<String> {
    let samples = crate::observability::exposition::parse_samples(&state.bus.metrics().encode());
    known(state, &samples).await
}
