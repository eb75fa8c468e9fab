//! The reply of an `XREADGROUP`, taken apart as it comes: each stream's entries with their
//! fields in order, the reply's values moved, not copied.
//!
//! The client's own `StreamReadReply` copies the whole reply once and builds a hash map per
//! entry; a consumer reads every entry's few fields once, so a list serves it better.

use redis::{FromRedisValue, ParsingError, Value};

/// What one read returned: each stream read, with its entries in id order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct StreamEntries {
    pub(crate) streams: Vec<StreamRead>,
}

/// One stream's entries in a read.
#[derive(Debug, PartialEq)]
pub(crate) struct StreamRead {
    /// The stream's key.
    pub(crate) key: String,
    pub(crate) entries: Vec<Entry>,
}

/// One entry: its id and its fields, in the order they were written.
#[derive(Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Vec<(String, Value)>,
}

fn text(value: Value, what: &str) -> Result<String, ParsingError> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Value::SimpleString(text) => Ok(text),
        Value::VerbatimString { text, .. } => Ok(text),
        other => Err(format!("{what}: expected a string, got {other:?}").into()),
    }
}

/// The items of an array, or the keys and values of a map in turn (RESP3 replies maps where
/// RESP2 replies flat arrays).
fn items(value: Value, what: &str) -> Result<Vec<Value>, ParsingError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("{what}: expected an array, got {other:?}").into()),
    }
}

fn entry(value: Value) -> Result<Entry, ParsingError> {
    let mut parts = items(value, "stream entry")?.into_iter();
    let id = text(
        parts.next().ok_or("stream entry: no id")?,
        "stream entry id",
    )?;
    // An entry deleted while pending comes back without fields (`nil`): kept, so that it is
    // still settled.
    let mut flat = match parts.next() {
        Some(fields) => items(fields, "stream entry fields")?.into_iter(),
        None => Vec::new().into_iter(),
    };
    let mut fields = Vec::with_capacity(flat.len() / 2);
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        fields.push((text(name, "field name")?, value));
    }
    Ok(Entry { id, fields })
}

/// One stream of a read: `[key, [entry, ...]]`, or a key and its entries from a map.
fn stream(key: Value, entries: Value) -> Result<StreamRead, ParsingError> {
    Ok(StreamRead {
        key: text(key, "stream key")?,
        entries: items(entries, "stream entries")?
            .into_iter()
            .map(entry)
            .collect::<Result<_, _>>()?,
    })
}

impl FromRedisValue for StreamEntries {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let streams = match v {
            Value::Nil => Vec::new(),
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(key, entries)| stream(key, entries))
                .collect::<Result<_, _>>()?,
            other => items(other, "stream read")?
                .into_iter()
                .map(|row| {
                    let mut parts = items(row, "stream read row")?.into_iter();
                    match (parts.next(), parts.next()) {
                        (Some(key), Some(entries)) => stream(key, entries),
                        _ => Err("stream read row: expected a key and its entries".into()),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(StreamEntries { streams })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry_value(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    fn expected() -> StreamEntries {
        StreamEntries {
            streams: vec![StreamRead {
                key: "s".into(),
                entries: vec![
                    Entry {
                        id: "1-0".into(),
                        fields: vec![("type".into(), bulk("a")), ("payload".into(), bulk("{}"))],
                    },
                    Entry {
                        id: "2-0".into(),
                        fields: vec![("type".into(), bulk("b"))],
                    },
                ],
            }],
        }
    }

    /// The entries of [`expected`], as Redis sends them.
    fn entries_value() -> Value {
        Value::Array(vec![
            entry_value("1-0", &[("type", "a"), ("payload", "{}")]),
            entry_value("2-0", &[("type", "b")]),
        ])
    }

    #[test]
    fn reads_the_resp2_shape() {
        let reply = Value::Array(vec![Value::Array(vec![bulk("s"), entries_value()])]);
        assert_eq!(StreamEntries::from_redis_value(reply).unwrap(), expected());
    }

    #[test]
    fn reads_the_resp3_shape() {
        let reply = Value::Map(vec![(bulk("s"), entries_value())]);
        assert_eq!(StreamEntries::from_redis_value(reply).unwrap(), expected());
    }

    #[test]
    fn nothing_read_and_entries_without_fields() {
        assert_eq!(
            StreamEntries::from_redis_value(Value::Nil).unwrap(),
            StreamEntries::default()
        );
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Nil])]),
        ])]);
        let read = StreamEntries::from_redis_value(reply).unwrap();
        assert_eq!(read.streams[0].entries[0].id, "3-0");
        assert!(read.streams[0].entries[0].fields.is_empty());
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error() {
        assert!(StreamEntries::from_redis_value(Value::Int(3)).is_err());
        let no_entries = Value::Array(vec![Value::Array(vec![bulk("s")])]);
        assert!(StreamEntries::from_redis_value(no_entries).is_err());
    }
}
