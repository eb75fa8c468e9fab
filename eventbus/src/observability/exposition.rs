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
