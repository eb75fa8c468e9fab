//! Reading back the Prometheus / OpenMetrics text the metrics encode: the admin API's
//! counters per topic and the dashboard's time series come from the same series the
//! `/metrics` scrape shows.

use std::collections::BTreeMap;

/// One sample line of the text exposition format.
#[derive(Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Parses the sample lines of Prometheus / OpenMetrics text (comments and malformed lines are
/// skipped).
pub(crate) fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        while let Some(&(i, c)) = chars.peek() {
            if c == '}' {
                end = Some(i);
                break;
            }
            if c == ',' {
                chars.next();
                continue;
            }
            // key="value"
            let key_start = i;
            let mut key_end = None;
            for (j, c) in chars.by_ref() {
                if c == '=' {
                    key_end = Some(j);
                    break;
                }
            }
            let key = inner[key_start..key_end?].trim().to_owned();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A topic's counters in the bus's metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TopicCounts {
    pub(crate) published: u64,
    pub(crate) publish_failures: u64,
    /// `event_handled_total` with outcome `handled`.
    pub(crate) handled: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    /// `event_handled_total` by outcome.
    pub(crate) outcomes: BTreeMap<String, u64>,
}

/// The per-topic counters in `samples`, by topic (dead-letter topics left out): the one
/// reading of metric names into counts behind `/api/stats` and the dashboard's series.
pub(crate) fn topic_counts(samples: &[Sample]) -> BTreeMap<String, TopicCounts> {
    let mut topics: BTreeMap<String, TopicCounts> = BTreeMap::new();
    for sample in samples {
        let Some(topic) = sample.labels.get("topic") else {
            continue;
        };
        if crate::wire::is_dlq_topic(topic) {
            continue;
        }
        let field: fn(&mut TopicCounts) -> &mut u64 = match sample.name.as_str() {
            "event_published_total" => |c| &mut c.published,
            "event_publish_failures_total" => |c| &mut c.publish_failures,
            "event_failed_total" => |c| &mut c.failed,
            "event_retried_total" => |c| &mut c.retried,
            "event_dead_lettered_total" => |c| &mut c.dead_lettered,
            "event_handled_total" => |c| &mut c.handled,
            _ => continue,
        };
        let n = sample.value.max(0.0) as u64;
        let counts = topics.entry(topic.clone()).or_default();
        if sample.name == "event_handled_total" {
            let outcome = sample.labels.get("outcome").cloned().unwrap_or_default();
            let handled = outcome == "handled";
            *counts.outcomes.entry(outcome).or_insert(0) += n;
            if !handled {
                continue;
            }
        }
        *field(counts) += n;
    }
    topics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let text = "# HELP x y\n# TYPE event_published counter\n\
            event_published_total{service=\"s\",topic=\"orders\"} 3\n\
            event_handled_total{service=\"s\",topic=\"a\\\"b\",group=\"g,1\",outcome=\"handled\"} 2.0\n\
            event_outbox_backlog 7\n# EOF\n";
        let samples = parse_samples(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "event_published_total");
        assert_eq!(samples[0].labels["topic"], "orders");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].labels["topic"], "a\"b");
        assert_eq!(samples[1].labels["group"], "g,1");
        assert_eq!(samples[1].value, 2.0);
        assert!(samples[2].labels.is_empty());
        assert_eq!(samples[2].value, 7.0);
    }
}
