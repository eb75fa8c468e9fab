//! Non-blocking retry tiers.
//!
//! A delivery deferred for `delay` (a delayed retry round of its subscription) is produced to
//! the tier topic of its topic and delay, `{topic}.retry.{delay}` (`orders.retry.1m`,
//! `orders.retry.5m`, `orders.retry.30m`, `orders.retry.200ms`), with its retry state, the
//! consumer group, the original topic and its due time in headers; then its source offset
//! counts as done. Every record of one tier topic has the same delay, so each tier partition is
//! ordered by due time.
//!
//! The group's own consumer also subscribes to the tier topics of its topics (one consumer for
//! every tier, not one per tier): a tier record of another group is skipped, and a tier
//! partition whose head is not due yet is paused until it is, without holding up any other
//! partition. The due record re-enters the group's pipeline with its original topic, so a last
//! failure dead-letters to `{topic}.dlq`, never to a tier's or back to the source topic.

use std::time::Duration;

use super::record::{ORIGIN_TOPIC_HEADER, RETRY_DUE_HEADER, RETRY_GROUP_HEADER};
use crate::backend::{Message, RetryState};

/// The infix of retry-tier topics.
pub const RETRY_INFIX: &str = ".retry.";

/// The tier name of a delay: the largest unit that divides it (`1m`, `5m`, `30m`, `2h`, `90s`,
/// `200ms`).
pub fn tier_name(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms == 0 {
        return "0ms".to_owned();
    }
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The retry-tier topic of `topic` for `delay`.
pub fn tier_topic(topic: &str, delay: Duration) -> String {
    format!("{topic}{RETRY_INFIX}{}", tier_name(delay))
}

/// Whether `topic` is named like a retry tier (`{topic}.retry.{delay}`).
pub fn is_tier_topic(topic: &str) -> bool {
    let Some((_, tier)) = topic.rsplit_once(RETRY_INFIX) else {
        return false;
    };
    let digits = tier.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &tier[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "ms" | "s" | "m" | "h")
}

/// The regular expression (librdkafka syntax) of the tier topics of topics matching `source`,
/// itself a regex anchored with `^...$`, or of one literal topic.
pub(crate) fn tier_regex(source: &str) -> String {
    let base = match source.strip_prefix('^') {
        Some(regex) => regex.trim_end_matches('$').to_owned(),
        None => super::consumer::escape_regex(source),
    };
    format!("^{base}\\.retry\\.[0-9]+(ms|s|m|h)$")
}

/// The tier record of `message` (as delivered, original topic restored) deferred by `group`
/// for `delay` with retry state `state`.
pub(crate) fn tier_message(
    message: &Message,
    group: &str,
    delay: Duration,
    state: &RetryState,
) -> Message {
    let mut tier = message.clone();
    tier.set_retry_state(state);
    tier.topic = tier_topic(&message.topic, delay).into();
    let due = crate::clock::unix_ms()
        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    tier.headers
        .insert(ORIGIN_TOPIC_HEADER.to_owned(), message.topic.to_string());
    tier.headers
        .insert(RETRY_GROUP_HEADER.to_owned(), group.to_owned());
    tier.headers
        .insert(RETRY_DUE_HEADER.to_owned(), due.to_string());
    tier
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_use_the_largest_whole_unit() {
        let names: Vec<String> = [60_000, 300_000, 1_800_000, 7_200_000, 90_000, 200, 1_500]
            .map(Duration::from_millis)
            .iter()
            .map(|d| tier_name(*d))
            .collect();
        assert_eq!(names, ["1m", "5m", "30m", "2h", "90s", "200ms", "1500ms"]);
        assert_eq!(
            tier_topic("orders", Duration::from_secs(60)),
            "orders.retry.1m"
        );
    }

    #[test]
    fn recognizes_tier_topics() {
        assert!(is_tier_topic("orders.retry.1m"));
        assert!(is_tier_topic("order.created.retry.200ms"));
        assert!(!is_tier_topic("payment.retry.requested"));
        assert!(!is_tier_topic("orders.retry."));
        assert!(!is_tier_topic("orders.dlq"));
    }

    #[test]
    fn tier_regexes() {
        assert_eq!(
            tier_regex("order.created"),
            "^order\\.created\\.retry\\.[0-9]+(ms|s|m|h)$"
        );
        assert_eq!(
            tier_regex("^order\\.[^.]+$"),
            "^order\\.[^.]+\\.retry\\.[0-9]+(ms|s|m|h)$"
        );
    }

    #[test]
    fn tier_messages_carry_state_group_origin_and_due_time() {
        let message = Message {
            topic: "orders".into(),
            key: Some("k".into()),
            event_type: "order.created".into(),
            headers: Default::default(),
            payload: b"{}".to_vec().into(),
        };
        let before = crate::clock::unix_ms();
        let state = RetryState {
            attempts: 3,
            round: 1,
            first_failure: None,
        };
        let t = tier_message(&message, "billing", Duration::from_secs(60), &state);
        assert_eq!(&*t.topic, "orders.retry.1m");
        assert_eq!(t.key.as_deref(), Some("k"));
        assert_eq!(t.retry_state(), state);
        assert_eq!(t.headers[ORIGIN_TOPIC_HEADER], "orders");
        assert_eq!(t.headers[RETRY_GROUP_HEADER], "billing");
        let due: i64 = t.headers[RETRY_DUE_HEADER].parse().unwrap();
        assert!(due >= before + 60_000 && due <= crate::clock::unix_ms() + 60_000);
    }
}
