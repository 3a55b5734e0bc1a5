//! The message in flight: who sent it, to whom, and the body passed through untouched; its
//! `message` frame encoding and its mesh (protobuf) form.

use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;
use wsroute_proto::v1 as pb;

use crate::ids::{IdError, MsgId, UserId};

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

#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    from: &'a str,
    to: &'a str,
    ts: i64,
    body: &'a RawValue,
}

/// A mesh envelope that cannot be turned back into a message.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("bad {field}: {source}")]
    Id {
        field: &'static str,
        #[source]
        source: IdError,
    },
    #[error("body is not valid JSON: {0}")]
    Body(#[source] serde_json::Error),
    #[error("frame is not UTF-8")]
    Frame,
    #[error("item has no envelope")]
    Missing,
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
        let text = serde_json::to_string(&MessageFrame {
            kind: "message",
            id: self.id.as_str(),
            from: self.from.as_str(),
            to: self.to.as_str(),
            ts: self.ts_ms,
            body: &self.body,
        })
        .expect(
            "a message frame always serializes: ids are plain strings and the body is valid JSON",
        );
        ByteString::from(text)
    }

    pub fn to_proto(&self) -> pb::Envelope {
        pb::Envelope {
            id: self.id.to_string(),
            from: self.from.to_string(),
            to: self.to.to_string(),
            ts_ms: self.ts_ms,
            body_json: self.body.get().as_bytes().to_vec(),
            accepted_us: self.accepted_us,
        }
    }
}

/// A message ready to be written: its id, its `message` frame (encoded once, shared by every
/// connection and peer it goes to) and when the cluster accepted it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: MsgId,
    pub frame: ByteString,
    pub accepted_us: i64,
}

impl Envelope {
    pub fn outgoing(&self) -> Outgoing {
        Outgoing {
            id: self.id.clone(),
            frame: self.frame(),
            accepted_us: self.accepted_us,
        }
    }
}

impl Outgoing {
    /// The mesh item carrying this message to `conn_ids` on another node.
    pub fn to_item(&self, conn_ids: Vec<String>) -> pb::ForwardItem {
        pb::ForwardItem {
            envelope: None,
            conn_ids,
            frame: self.frame.as_bytes().clone(),
            id: self.id.to_string(),
            accepted_us: self.accepted_us,
        }
    }

    /// The message a mesh item carries: its frame as sent (checked to be UTF-8, as a text frame
    /// must be), or, from an older sender, built from its envelope.
    pub fn from_item(item: &mut pb::ForwardItem) -> Result<Self, EnvelopeError> {
        if item.frame.is_empty() {
            let env = Envelope::try_from(item.envelope.take().ok_or(EnvelopeError::Missing)?)?;
            return Ok(env.outgoing());
        }
        let id = MsgId::parse(&item.id).map_err(|source| EnvelopeError::Id {
            field: "id",
            source,
        })?;
        let frame = ByteString::try_from(std::mem::take(&mut item.frame))
            .map_err(|_| EnvelopeError::Frame)?;
        Ok(Self {
            id,
            frame,
            accepted_us: item.accepted_us,
        })
    }
}

/// The mesh protocol a node announces in its record (`mesh` in `wsr:n:{node}:info`): "2" reads
/// pass-through frames. A peer that announces nothing predates them and is sent envelopes.
pub const MESH_FRAMES: &str = "2";

/// The same item as a node from before frame pass-through reads it: the envelope rebuilt from the
/// frame. An item that has no frame, or whose frame cannot be read back, is returned as it is.
pub fn legacy_item(mut item: pb::ForwardItem) -> pb::ForwardItem {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        from: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        to: std::borrow::Cow<'a, str>,
        ts: i64,
        #[serde(borrow)]
        body: &'a RawValue,
    }
    if item.frame.is_empty() {
        return item;
    }
    let Ok(f) = serde_json::from_slice::<Frame<'_>>(&item.frame) else {
        return item;
    };
    let envelope = pb::Envelope {
        id: f.id.into_owned(),
        from: f.from.into_owned(),
        to: f.to.into_owned(),
        ts_ms: f.ts,
        body_json: f.body.get().as_bytes().to_vec(),
        accepted_us: item.accepted_us,
    };
    item.envelope = Some(envelope);
    item.frame = Default::default();
    item.id = String::new();
    item
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = EnvelopeError;

    fn try_from(p: pb::Envelope) -> Result<Self, Self::Error> {
        let body_text = String::from_utf8(p.body_json).map_err(|e| {
            EnvelopeError::Body(serde_json::Error::io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        })?;
        Ok(Self {
            id: MsgId::parse(&p.id).map_err(|source| EnvelopeError::Id {
                field: "id",
                source,
            })?,
            from: UserId::parse(&p.from).map_err(|source| EnvelopeError::Id {
                field: "from",
                source,
            })?,
            to: UserId::parse(&p.to).map_err(|source| EnvelopeError::Id {
                field: "to",
                source,
            })?,
            ts_ms: p.ts_ms,
            // A peer that does not send it: fall back to the millisecond timestamp.
            accepted_us: if p.accepted_us > 0 {
                p.accepted_us
            } else {
                p.ts_ms.saturating_mul(1000)
            },
            body: RawValue::from_string(body_text).map_err(EnvelopeError::Body)?,
        })
    }
}

/// Whether `s` is one valid JSON value (used by the fuzz targets' checks).
pub fn is_valid_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
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
    fn proto_round_trip_and_hostile_envelopes() {
        let back = Envelope::try_from(env().to_proto()).expect("round trip");
        assert_eq!(back.body.get(), env().body.get());
        let mut bad = env().to_proto();
        bad.body_json = b"{not json".to_vec();
        assert!(matches!(
            Envelope::try_from(bad),
            Err(EnvelopeError::Body(_))
        ));
        let mut bad = env().to_proto();
        bad.body_json = vec![0xff, 0xfe];
        assert!(Envelope::try_from(bad).is_err());
        let mut bad = env().to_proto();
        bad.to = "no spaces".into();
        assert!(Envelope::try_from(bad).is_err());
    }

    #[test]
    fn mesh_items_carry_the_frame_through_untouched() {
        let msg = env().outgoing();
        let mut item = msg.to_item(vec!["c1".into()]);
        assert!(item.envelope.is_none());
        let back = Outgoing::from_item(&mut item).expect("valid item");
        assert_eq!(back.frame, msg.frame);
        assert_eq!(back.id, msg.id);
        assert_eq!(back.accepted_us, 7_000);

        // From an older sender: the envelope, turned into the same frame.
        let mut legacy = pb::ForwardItem {
            envelope: Some(env().to_proto()),
            conn_ids: vec!["c1".into()],
            ..Default::default()
        };
        assert_eq!(
            Outgoing::from_item(&mut legacy).expect("valid").frame,
            msg.frame
        );

        // A frame that is not UTF-8, or a bad id, is refused; so is an item with neither.
        let mut bad = msg.to_item(vec![]);
        bad.frame = vec![0xff, 0xfe].into();
        assert!(matches!(
            Outgoing::from_item(&mut bad),
            Err(EnvelopeError::Frame)
        ));
        let mut bad = msg.to_item(vec![]);
        bad.id = "no spaces".into();
        assert!(Outgoing::from_item(&mut bad).is_err());
        let mut empty = pb::ForwardItem::default();
        assert!(matches!(
            Outgoing::from_item(&mut empty),
            Err(EnvelopeError::Missing)
        ));
    }

    #[test]
    fn older_peers_get_the_envelope_back_from_the_frame() {
        let msg = env().outgoing();
        let legacy = legacy_item(msg.to_item(vec!["c1".into()]));
        assert!(legacy.frame.is_empty());
        assert_eq!(legacy.conn_ids, vec!["c1".to_owned()]);
        let back = Envelope::try_from(legacy.envelope.expect("an envelope")).expect("valid");
        assert_eq!(back.frame(), msg.frame);
        assert_eq!(back.accepted_us, 7_000);
    }
}
