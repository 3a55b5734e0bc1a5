//! The message in flight: who sent it, to whom, and the body passed through untouched; its
//! `message` frame encoding. (Its mesh form is in `mesh::wire`.)

use bytestring::ByteString;
use serde_json::value::RawValue;

use crate::ids::{MsgId, UserId};
use crate::json_text;

#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: MsgId,
    /// The authenticated sender (or the push API's label); never what a client claimed.
    pub from: UserId,
    pub to: UserId,
    pub ts_ms: i64,
    /// When the cluster accepted it, in microseconds since the Unix epoch: the start of the
    /// end-to-end delivery latency the receiving node measures (`ts_ms` is too coarse for that).
    pub accepted_us: i64,
    /// Valid JSON, as the sender wrote it.
    pub body: Box<RawValue>,
}

/// The `message` frame's serde form: what [`Envelope::frame`] writes by hand, byte for byte.
#[cfg(test)]
#[derive(serde::Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    from: &'a str,
    to: &'a str,
    ts: i64,
    body: &'a RawValue,
}

impl Envelope {
    /// A message accepted now.
    pub fn new(id: MsgId, from: UserId, to: UserId, body: Box<RawValue>) -> Self {
        let accepted_us = now_us();
        Self {
            id,
            from,
            to,
            ts_ms: accepted_us / 1000,
            accepted_us,
            body,
        }
    }

    /// The `message` frame, encoded once and shared by every connection it goes to.
    pub fn frame(&self) -> ByteString {
        let (id, from, to, body) = (
            self.id.as_str(),
            self.from.as_str(),
            self.to.as_str(),
            self.body.get(),
        );
        let room = 80 + id.len() + from.len() + to.len() + body.len();
        json_text::Object::new("message", room)
            .str("id", id)
            .str("from", from)
            .str("to", to)
            .num("ts", self.ts_ms)
            .raw("body", body)
            .end()
            .into()
    }
}

/// A message ready to be written: its id, its `message` frame (encoded once, shared by every
/// connection and peer it goes to) and when the cluster accepted it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: MsgId,
    pub frame: ByteString,
    pub accepted_us: i64,
    /// The sending user, to whom receipts go (unknown for items from older peers).
    pub from: Option<UserId>,
}

impl Envelope {
    pub fn outgoing(&self) -> Outgoing {
        Outgoing {
            id: self.id.clone(),
            frame: self.frame(),
            accepted_us: self.accepted_us,
            from: Some(self.from.clone()),
        }
    }
}

/// Whether `s` is one valid JSON value (used by the fuzz targets' checks).
pub fn is_valid_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// The clock the node stamps with, shared with router-cli through `wsroute-core`.
pub use wsroute_core::clock::{now_ms, now_us};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A message from alice to bob whose body needs escaping.
    pub(crate) fn env() -> Envelope {
        Envelope {
            id: MsgId::parse("m1").expect("valid"),
            from: UserId::parse("alice").expect("valid"),
            to: UserId::parse("bob").expect("valid"),
            ts_ms: 7,
            accepted_us: 7_000,
            body: RawValue::from_string(r#"{"text":"hi \"there\""}"#.into()).expect("json"),
        }
    }

    #[test]
    fn frame_is_the_protocol_message() {
        let v: serde_json::Value = serde_json::from_str(&env().frame()).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["from"], "alice");
        assert_eq!(v["to"], "bob");
        assert_eq!(v["ts"], 7);
        assert_eq!(v["body"]["text"], "hi \"there\"");
    }

    #[test]
    fn frame_is_what_serde_writes() {
        let mut e = env();
        for body in [
            r#"{"text":"hi \"there\""}"#,
            "1",
            "[1,2]",
            r#""é\u0001""#,
            "null",
        ] {
            for ts in [0, 7, -3, i64::MAX] {
                e.body = RawValue::from_string(body.into()).expect("json");
                e.ts_ms = ts;
                let serde = serde_json::to_string(&MessageFrame {
                    kind: "message",
                    id: e.id.as_str(),
                    from: e.from.as_str(),
                    to: e.to.as_str(),
                    ts: e.ts_ms,
                    body: &e.body,
                })
                .expect("json");
                assert_eq!(&*e.frame(), serde.as_str());
            }
        }
    }
}
