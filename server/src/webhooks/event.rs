//! Webhook events: their JSON bodies and ids, and how they are appended to the events stream:
//! inside the route or inbox script that makes the change (the [`ADD_EVENT_LUA`] function those
//! scripts include), or, on Redis Cluster where the stream is in another slot, by
//! [`Emitter::append`] right after it.

use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use wsroute_core::db::{DbError, RedisConn};
use wsroute_core::keys;

use crate::envelope::now_ms;
use crate::ids::{IdGen, UserId};
use crate::metrics::Metrics;

/// The Lua function a script calls to append an event: `add_event(stream, event id, body,
/// max entries)`. It trims the stream to about `max entries` (oldest first; Redis trims whole
/// nodes, so "about") and returns how many entries the trim dropped, for
/// `wsroute_webhook_dropped_total`. Settled entries are deleted from the stream, so what a trim
/// drops is always an event not yet delivered.
pub const ADD_EVENT_LUA: &str = r"
local function add_event(key, eid, body, maxlen)
  local before = redis.call('XLEN', key)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'eid', eid, 'body', body)
  return before + 1 - redis.call('XLEN', key)
end
";

/// Appends one event on its own. KEYS: the stream. ARGV: event id, body, max entries. Returns
/// how many entries the trim dropped.
static APPEND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{ADD_EVENT_LUA}\nreturn add_event(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"
    ))
});

/// One event, ready to be appended: its id (`X-Wsroute-Event-Id`) and the exact body POSTed.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Arc<str>,
    pub kind: &'static str,
    pub body: String,
}

/// `user.online` / `user.offline`.
#[derive(Serialize)]
struct Presence<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    event_id: &'a str,
    user: &'a str,
    ts: i64,
}

/// A `message` frame as read back (the fields the `message.stored` event carries).
#[derive(Deserialize)]
struct StoredFrame<'a> {
    id: String,
    from: String,
    to: String,
    ts: i64,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// `message.stored`.
#[derive(Serialize)]
struct Stored<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    event_id: &'a str,
    id: &'a str,
    from: &'a str,
    to: &'a str,
    ts: i64,
    body: &'a RawValue,
}

/// What the route table and the inbox write events through. Present only when webhooks are
/// configured: without it no script writes an event and the stream never exists.
pub struct Emitter {
    stream: String,
    max_events: u64,
    ids: IdGen,
    metrics: Metrics,
}

impl Emitter {
    pub fn new(max_events: u64, metrics: Metrics) -> Self {
        Self {
            stream: keys::webhook_events(),
            max_events,
            ids: IdGen::new(),
            metrics,
        }
    }

    /// The events stream's key (a script's extra KEYS entry on a single server).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn online(&self, user: &UserId) -> Event {
        self.presence("user.online", user)
    }

    pub fn offline(&self, user: &UserId) -> Event {
        self.presence("user.offline", user)
    }

    fn presence(&self, kind: &'static str, user: &UserId) -> Event {
        let id = self.ids.event();
        let body = serde_json::to_string(&Presence {
            kind,
            event_id: &id,
            user: user.as_str(),
            ts: now_ms(),
        })
        .expect("an event of plain strings and a number serializes");
        Event { id, kind, body }
    }

    /// `message.stored` for a `message` frame going to an inbox; `None` (logged) if the frame
    /// cannot be read back, which the node's own frames always can.
    pub fn stored(&self, frame: &str) -> Option<Event> {
        let m: StoredFrame = match serde_json::from_str(frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a stored message frame back; no message.stored event for it");
                return None;
            }
        };
        let id = self.ids.event();
        let body = serde_json::to_string(&Stored {
            kind: "message.stored",
            event_id: &id,
            id: &m.id,
            from: &m.from,
            to: &m.to,
            ts: m.ts,
            body: m.body,
        })
        .expect("a message read from JSON serializes again");
        Some(Event {
            id,
            kind: "message.stored",
            body,
        })
    }

    /// Adds the stream key and the event's arguments to a script invocation whose script calls
    /// `add_event` with its last KEYS entry and its last three ARGV entries.
    pub fn add_to(&self, inv: &mut redis::ScriptInvocation<'_>, event: &Event) {
        inv.key(&self.stream)
            .arg(&*event.id)
            .arg(&event.body)
            .arg(self.max_events);
    }

    /// The arguments `add_event` takes after the stream key: event id, body, max entries.
    pub fn args(&self, event: &Event) -> Vec<String> {
        vec![
            event.id.to_string(),
            event.body.clone(),
            self.max_events.to_string(),
        ]
    }

    /// An event was written (inside a script, or by [`Self::append`]); the write's trim dropped
    /// `dropped` older ones.
    pub fn written(&self, event: &Event, dropped: i64) {
        self.metrics
            .webhook_emitted
            .with_label_values(&[event.kind])
            .inc();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max = self.max_events,
                "webhook events stream full: dropped its oldest undelivered events (--webhook-max-events)"
            );
            self.metrics
                .webhook_dropped
                .with_label_values(&["trimmed"])
                .inc_by(dropped.unsigned_abs());
        }
    }

    /// Appends `event` by itself: the follow-up of a route or inbox script on Redis Cluster,
    /// where the script cannot reach the stream's slot. A failure is logged and counted: the
    /// change it announces is already made.
    pub async fn append(&self, c: &mut RedisConn, event: &Event) {
        let r: Result<i64, DbError> = APPEND
            .key(&self.stream)
            .arg(&*event.id)
            .arg(&event.body)
            .arg(self.max_events)
            .invoke_async(c)
            .await
            .map_err(DbError::from);
        match r {
            Ok(dropped) => self.written(event, dropped),
            Err(e) => {
                tracing::error!(event_id = %event.id, kind = event.kind, error = %e, "cannot append a webhook event after its change (Redis Cluster): lost");
                self.metrics
                    .webhook_dropped
                    .with_label_values(&["unwritten"])
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_protocol_fields() {
        let e = Emitter::new(100, Metrics::new());
        let on = e.online(&UserId::parse("bob").expect("valid"));
        let v: serde_json::Value = serde_json::from_str(&on.body).expect("json");
        assert_eq!(v["type"], "user.online");
        assert_eq!(v["user"], "bob");
        assert_eq!(v["event_id"], &*on.id);
        assert!(v["ts"].as_i64().is_some_and(|t| t > 0));
        let frame = crate::envelope::tests::env().frame();
        let st = e.stored(&frame).expect("readable");
        let v: serde_json::Value = serde_json::from_str(&st.body).expect("json");
        assert_eq!(v["type"], "message.stored");
        assert_eq!(v["id"], "m1");
        assert_eq!(v["from"], "alice");
        assert_eq!(v["to"], "bob");
        assert_eq!(v["ts"], 7);
        assert_eq!(v["body"]["text"], "hi \"there\"");
        assert_ne!(st.id, on.id);
        assert!(e.stored("not a frame").is_none());
    }
}
