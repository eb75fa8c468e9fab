//! A [`Message`] as stream entry fields: `topic`, `type`, `key` (when set), `payload` (the
//! envelope JSON) and one `h:{name}` field per transport header.

use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;

use crate::backend::{Message, MessageHeaders};

const TOPIC: &str = "topic";
const TYPE: &str = "type";
const KEY: &str = "key";
const PAYLOAD: &str = "payload";
const HEADER_PREFIX: &str = "h:";

/// The `XADD` of a message to `stream`, sized for its arguments up front (no buffer grows while
/// it is built) and without copying the payload more than into the command.
pub(crate) fn xadd(stream: &str, message: &Message) -> redis::Cmd {
    let key = message.key.as_deref();
    let fields = 3 + usize::from(key.is_some()) + message.headers.len();
    let data = "XADD".len()
        + stream.len()
        + 1
        + TOPIC.len()
        + message.topic.len()
        + TYPE.len()
        + message.event_type.len()
        + key.map_or(0, |key| KEY.len() + key.len())
        + message
            .headers
            .iter()
            .map(|(name, value)| HEADER_PREFIX.len() + name.len() + value.len())
            .sum::<usize>()
        + PAYLOAD.len()
        + message.payload.len();
    let mut cmd = redis::Cmd::with_capacity(3 + 2 * fields, data);
    cmd.arg("XADD").arg(stream).arg("*");
    cmd.arg(TOPIC)
        .arg(&*message.topic)
        .arg(TYPE)
        .arg(&*message.event_type);
    if let Some(key) = key {
        cmd.arg(KEY).arg(key);
    }
    for (name, value) in &message.headers {
        cmd.arg(HeaderField(name)).arg(value);
    }
    cmd.arg(PAYLOAD).arg(&*message.payload);
    cmd
}

/// A header's field name, `h:{name}`, written into the command without a `String` of its own.
struct HeaderField<'a>(&'a str);

impl redis::ToRedisArgs for HeaderField<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        // Writing to the command's buffer cannot fail.
        let _ = arg.write_all(HEADER_PREFIX.as_bytes());
        let _ = arg.write_all(self.0.as_bytes());
    }
}

/// The entry fields of a message, in `XADD` order.
pub(crate) fn to_fields(message: &Message) -> Vec<(String, Vec<u8>)> {
    let mut fields = Vec::with_capacity(4 + message.headers.len());
    fields.push((TOPIC.to_owned(), message.topic.as_bytes().to_vec()));
    fields.push((TYPE.to_owned(), message.event_type.as_bytes().to_vec()));
    if let Some(key) = &message.key {
        fields.push((KEY.to_owned(), key.as_bytes().to_vec()));
    }
    for (name, value) in &message.headers {
        fields.push((format!("{HEADER_PREFIX}{name}"), value.as_bytes().to_vec()));
    }
    fields.push((PAYLOAD.to_owned(), message.payload.to_vec()));
    fields
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    bytes(value).map(crate::wire::owned_text)
}

/// A field's value as shared text (invalid UTF-8 replaced), copied once.
fn shared_text(value: &Value) -> Option<Arc<str>> {
    bytes(value).map(crate::wire::shared_text)
}

/// An entry's fields, however a reply was taken apart: a map by name, or the list in the
/// order they were written (a name written twice counts once, its last value winning, as in
/// the map).
pub(crate) trait Fields {
    /// The value of field `name`.
    fn field(&self, name: &str) -> Option<&Value>;
    /// Every field, each name once.
    fn each(&self) -> impl Iterator<Item = (&str, &Value)>;
}

impl Fields for HashMap<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }

    fn each(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.iter().map(|(name, value)| (name.as_str(), value))
    }
}

impl Fields for [(String, Value)] {
    fn field(&self, name: &str) -> Option<&Value> {
        self.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn each(&self) -> impl Iterator<Item = (&str, &Value)> {
        // In order: the headers' map keeps the last value of a name written twice.
        self.iter().map(|(name, value)| (name.as_str(), value))
    }
}

/// Rebuilds a message from entry fields. Entries written by other producers without our
/// fields still come through: the payload is whatever `payload` (or, failing that, `data`)
/// holds, so the pipeline can dead-letter it with a decode error instead of losing it. The
/// topic is the entry's `topic` field only when `topic_field` says it is trusted (the retry
/// stream, replays); otherwise, and when the field is missing, `stream_topic`.
pub(crate) fn from_fields<F: Fields + ?Sized>(
    stream_topic: &str,
    fields: &F,
    topic_field: bool,
) -> Message {
    let mut headers = MessageHeaders::new();
    for (name, value) in fields.each() {
        if let (Some(header), Some(value)) = (name.strip_prefix(HEADER_PREFIX), text(value)) {
            headers.insert(header.to_owned(), value);
        }
    }
    let payload = fields
        .field(PAYLOAD)
        .or_else(|| fields.field("data"))
        .and_then(bytes)
        .unwrap_or_default();
    Message {
        topic: fields
            .field(TOPIC)
            .filter(|_| topic_field)
            .and_then(shared_text)
            .unwrap_or_else(|| stream_topic.into()),
        key: fields.field(KEY).and_then(shared_text),
        event_type: fields.field(TYPE).and_then(shared_text).unwrap_or_default(),
        headers,
        payload: payload.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let message = Message {
            topic: "orders".into(),
            key: Some("o-1".into()),
            event_type: "order.created".into(),
            headers: MessageHeaders::from([("eventbus-attempt".to_owned(), "2".to_owned())]),
            payload: b"{\"x\":1}".to_vec().into(),
        };
        let map: HashMap<String, Value> = to_fields(&message)
            .into_iter()
            .map(|(k, v)| (k, Value::BulkString(v)))
            .collect();
        assert_eq!(from_fields("ignored", &map, true), message);
        let list: Vec<(String, Value)> = to_fields(&message)
            .into_iter()
            .map(|(k, v)| (k, Value::BulkString(v)))
            .collect();
        assert_eq!(from_fields("ignored", list.as_slice(), true), message);
        let live = from_fields("from-the-stream", &map, false);
        assert_eq!(
            &*live.topic, "from-the-stream",
            "a live stream's topic field is not trusted"
        );
    }

    #[test]
    fn the_xadd_writes_the_entry_fields_in_their_order() {
        let message = Message {
            topic: "orders".into(),
            key: Some("o-1".into()),
            event_type: "order.created".into(),
            headers: MessageHeaders::from([
                ("eventbus-attempt".to_owned(), "2".to_owned()),
                ("eventbus-tenant".to_owned(), "acme".to_owned()),
            ]),
            payload: b"{\"x\":1}".to_vec().into(),
        };
        let cmd = xadd("prefix:orders", &message);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"<not a plain argument>".to_vec(),
            })
            .collect();
        let mut expected: Vec<Vec<u8>> =
            vec![b"XADD".to_vec(), b"prefix:orders".to_vec(), b"*".to_vec()];
        for (name, value) in to_fields(&message) {
            expected.push(name.into_bytes());
            expected.push(value);
        }
        assert_eq!(args, expected);
    }

    #[test]
    fn a_field_written_twice_counts_once_with_its_last_value() {
        let list = vec![
            ("type".to_owned(), Value::BulkString(b"first".to_vec())),
            ("h:a".to_owned(), Value::BulkString(b"1".to_vec())),
            ("type".to_owned(), Value::BulkString(b"second".to_vec())),
            ("h:a".to_owned(), Value::BulkString(b"2".to_vec())),
        ];
        let m = from_fields("orders", list.as_slice(), true);
        assert_eq!(&*m.event_type, "second");
        assert_eq!(m.headers.get("a").map(String::as_str), Some("2"));
    }

    #[test]
    fn foreign_entries_keep_their_bytes() {
        let map = HashMap::from([("data".to_owned(), Value::BulkString(b"garbage".to_vec()))]);
        let m = from_fields("orders", &map, true);
        assert_eq!(&*m.topic, "orders");
        assert_eq!(&*m.payload, b"garbage");
    }
}
