//! What the webhook streams hold (see `keys::webhook_events`, `keys::webhook_dead`): the fields of
//! an entry, reading entries out of Redis's stream replies, and the operator's side of dead
//! events: listing them and moving them back for delivery (router-cli). Emitting and delivering
//! events is the node's job (`wsroute_server::webhooks`).

use std::sync::LazyLock;

use redis::Value;

use crate::db::{DbError, Redis};
use crate::keys;

/// The fields of a stream entry.
pub mod field {
    /// The event id: the `X-Wsroute-Event-Id` of every POST of the event, kept when it is moved.
    pub const EVENT_ID: &str = "eid";
    /// The JSON body, exactly the bytes that are POSTed and signed.
    pub const BODY: &str = "body";
    /// Dead entries: how many attempts were made.
    pub const ATTEMPTS: &str = "attempts";
    /// Dead entries: what the last attempt got (a status, a timeout, a connection error).
    pub const ERROR: &str = "error";
    /// Dead entries: when the event was given up, in Unix milliseconds.
    pub const DEAD_MS: &str = "dead_ms";
}

/// One entry of a webhook stream, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id (`ms-seq`): where the entry is, not which event it is.
    pub entry: String,
    /// Field, value pairs in order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_str())
    }

    /// The event id, falling back to the entry id for an entry written without one.
    pub fn event_id(&self) -> &str {
        self.get(field::EVENT_ID).unwrap_or(&self.entry)
    }

    /// When the entry was added, in Unix milliseconds (the first part of its id).
    pub fn added_ms(&self) -> Option<i64> {
        self.entry.split('-').next()?.parse().ok()
    }
}

/// The entries of an XRANGE or XCLAIM reply (`[[id, [f, v, ...]], ...]`). An entry whose fields
/// are nil (deleted while still pending) comes back with none.
pub fn entries(reply: Value) -> Vec<Entry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<Entry> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id: String = redis::from_redis_value(parts.pop()?).ok()?;
    let flat: Vec<String> = match fields {
        Value::Nil => Vec::new(),
        v => redis::from_redis_value(v).ok()?,
    };
    let mut it = flat.into_iter();
    let mut fields = Vec::new();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        fields.push((f, v));
    }
    Some(Entry { entry: id, fields })
}

/// The entries of an XREADGROUP reply on one stream (`[[stream, [entries]]]`, or nil).
pub fn read_group_entries(reply: Value) -> Vec<Entry> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|s| match s {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
            _ => None,
        })
        .flat_map(entries)
        .collect()
}

/// A dead event, as `router-cli webhooks dead` shows it.
#[derive(Debug, Clone)]
pub struct DeadEvent {
    pub entry: Entry,
}

impl DeadEvent {
    pub fn event_id(&self) -> &str {
        self.entry.event_id()
    }
    pub fn body(&self) -> &str {
        self.entry.get(field::BODY).unwrap_or("")
    }
    /// The event's `type`, read from its body.
    pub fn kind(&self) -> String {
        serde_type(self.body())
    }
    pub fn attempts(&self) -> u64 {
        self.entry
            .get(field::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
    pub fn error(&self) -> &str {
        self.entry.get(field::ERROR).unwrap_or("")
    }
    pub fn dead_ms(&self) -> i64 {
        self.entry
            .get(field::DEAD_MS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

/// The value of the top-level `"type":"..."` of a JSON object, without a JSON library (this
/// crate has none): the bodies are the node's own, `{"type":"...",...}` first.
fn serde_type(body: &str) -> String {
    body.strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
        .to_owned()
}

/// Dead entries examined per script call by [`DeadEvents::retry`], so that one call never holds
/// Redis for long whatever the dead stream holds.
const RETRY_BATCH: usize = 500;

/// Moves dead entries back to the events stream, with their event id and body (attempts start
/// again). KEYS: dead, events. ARGV: start (an XRANGE bound), count, event id ('' for every one).
/// Returns {moved, the last entry id examined ('' when none was)}.
static RETRY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local moved, last = 0, ''
for _, e in ipairs(entries) do
  last = e[1]
  local f = e[2]
  local eid, body
  for i = 1, #f, 2 do
    if f[i] == 'eid' then eid = f[i + 1] elseif f[i] == 'body' then body = f[i + 1] end
  end
  if eid and body and (ARGV[3] == '' or ARGV[3] == eid) then
    redis.call('XADD', KEYS[2], '*', 'eid', eid, 'body', body)
    redis.call('XDEL', KEYS[1], e[1])
    moved = moved + 1
  end
end
return {moved, last}
",
    )
});

/// Which dead events to give back for delivery.
#[derive(Debug, Clone)]
pub enum Retry {
    All,
    /// The one with this event id.
    Event(String),
}

/// The operator's side of dead events. Cheap to clone.
#[derive(Clone)]
pub struct DeadEvents {
    redis: Redis,
}

impl DeadEvents {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The oldest `limit` dead events and how many there are in all.
    pub async fn list(&self, limit: usize) -> Result<(Vec<DeadEvent>, u64), DbError> {
        let mut c = self.redis.cold().await?;
        let reply: Value = redis::cmd("XRANGE")
            .arg(keys::webhook_dead())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut c)
            .await?;
        let total: u64 = redis::cmd("XLEN")
            .arg(keys::webhook_dead())
            .query_async(&mut c)
            .await?;
        let dead = entries(reply)
            .into_iter()
            .map(|entry| DeadEvent { entry })
            .collect();
        Ok((dead, total))
    }

    /// Moves dead events back to the events stream, where the nodes deliver them again (with
    /// their attempts counted from zero). Returns how many were moved.
    pub async fn retry(&self, which: &Retry) -> Result<u64, DbError> {
        let wanted = match which {
            Retry::All => "",
            Retry::Event(id) => id.as_str(),
        };
        let mut c = self.redis.cold().await?;
        let (mut moved, mut start) = (0u64, "-".to_owned());
        loop {
            let (n, last): (u64, String) = RETRY
                .key(keys::webhook_dead())
                .key(keys::webhook_events())
                .arg(&start)
                .arg(RETRY_BATCH)
                .arg(wanted)
                .invoke_async(&mut c)
                .await?;
            moved += n;
            if last.is_empty() || (!wanted.is_empty() && moved > 0) {
                return Ok(moved);
            }
            start = format!("({last}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_are_read_with_their_fields_and_deleted_ones_without() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("eid"), bulk("e1"), bulk("body"), bulk("{}")]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let got = entries(reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].event_id(), "e1");
        assert_eq!(got[0].get("body"), Some("{}"));
        assert_eq!(got[0].added_ms(), Some(1));
        assert_eq!(got[1].event_id(), "2-0");
        assert!(got[1].fields.is_empty());
        let read = Value::Array(vec![Value::Array(vec![
            bulk("wsr:{webhooks}:events"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-1"),
                Value::Array(vec![bulk("eid"), bulk("e3")]),
            ])]),
        ])]);
        assert_eq!(read_group_entries(read)[0].event_id(), "e3");
        assert!(read_group_entries(Value::Nil).is_empty());
    }

    #[test]
    fn the_type_is_read_from_the_body() {
        assert_eq!(
            serde_type(r#"{"type":"user.online","user":"a"}"#),
            "user.online"
        );
        assert_eq!(serde_type("not json"), "?");
    }
}
