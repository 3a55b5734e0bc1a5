//! The mesh's wire form, in one place: a message as the protobuf `ForwardItem` a peer receives
//! (its `message` frame passed through, or an `Envelope` for nodes from before frames), and back.
//! Generated protobuf types stop here: the rest of the node sees `Envelope`, `Outgoing` and
//! [`Forwarded`].

use bytestring::ByteString;
use serde_json::value::RawValue;
use wsroute_proto::v1 as pb;

use crate::config::MAX_FRAME_BYTES_CEILING;
use crate::envelope::{Envelope, Outgoing};
use crate::ids::{IdError, MsgId, UserId};

/// The mesh protocol a node announces in its record (`mesh` in `wsr:n:{node}:info`): "2" reads
/// pass-through frames; "3" also confirms held messages and writes notices. A peer that
/// announces nothing predates frames and is sent envelopes ([`legacy_item`]).
pub const MESH_PROTOCOL: &str = "3";

/// gRPC metadata on a `ForwardStream` call: the id of the node that opens it (the peer opens
/// its own stream back at once; a node that does not send it is met with its first message).
pub const FROM_NODE: &str = "x-wsroute-from-node";

/// What a peer's announced mesh protocol reads and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProto {
    /// Reads pass-through frames (else it is sent envelopes).
    pub frames: bool,
    /// Confirms held messages and writes notices.
    pub confirms: bool,
}

impl PeerProto {
    pub fn announced(protocol: Option<&str>) -> Self {
        let version: u32 = protocol.and_then(|p| p.parse().ok()).unwrap_or(1);
        Self {
            frames: version >= 2,
            confirms: version >= 3,
        }
    }
}

/// A sender closes a batch before its encoded size would pass this; a message bigger than this
/// travels alone. Small enough that one big batch does not hold the stream for long.
pub const BATCH_TARGET_BYTES: usize = 1024 * 1024;

/// Room for what a forwarded item carries beside its frame (id, connection ids, envelope fields)
/// and for the batch's own fields.
pub const ITEM_OVERHEAD_BYTES: usize = 64 * 1024;

/// The largest `ForwardBatch` a node decodes (set explicitly on the mesh server: tonic's default
/// is 4 MiB, which a few big frames pass). A batch is at most [`BATCH_TARGET_BYTES`], or one
/// message alone, and no node accepts a frame over [`MAX_FRAME_BYTES_CEILING`]: every batch a
/// sender builds fits, whatever `--max-frame-bytes` either node runs with.
pub const MAX_BATCH_BYTES: usize =
    BATCH_TARGET_BYTES + MAX_FRAME_BYTES_CEILING + ITEM_OVERHEAD_BYTES;

/// A mesh item (or envelope) that cannot be turned back into a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
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
    /// A pass-through frame that is not exactly a `message` frame for the item's id, as this
    /// node's encoder writes it: a peer must not put any other frame in front of a client.
    #[error("frame is not a message frame for id {0}")]
    NotMessage(String),
}

/// What a peer answered for one forwarded message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// How many of the named connections the peer wrote the frame to.
    pub delivered: u32,
    /// The named connections the peer does not hold (the sender's route to them is stale).
    pub gone: Vec<String>,
}

impl From<pb::ForwardResult> for Forwarded {
    fn from(r: pb::ForwardResult) -> Self {
        Self {
            delivered: r.delivered,
            gone: r.gone,
        }
    }
}

/// The mesh item carrying `msg` to `conn_ids` on another node.
pub fn to_item(msg: &Outgoing, conn_ids: Vec<String>, kind: ItemKind) -> pb::ForwardItem {
    pb::ForwardItem {
        envelope: None,
        conn_ids,
        frame: msg.frame.as_bytes().clone(),
        id: msg.id.as_str().to_owned(),
        accepted_us: msg.accepted_us,
        from: msg
            .from
            .as_ref()
            .map(|f| f.as_str().to_owned())
            .unwrap_or_default(),
        held: kind == ItemKind::Held,
        notice: kind == ItemKind::Notice,
    }
}

/// What a forwarded item is to the node that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A message nobody holds (for peers that do not confirm).
    Plain,
    /// A message the sending node holds until it hears what became of it (a `Confirmation`).
    Held,
    /// A notification (a `receipt`): written where it can be, kept nowhere.
    Notice,
}

/// The message a mesh item carries: its frame as sent (checked to be UTF-8, as a text frame
/// must be, and, unless the item is a notice, to be a `message` frame for the item's id: see
/// [`check_message_frame`]), or, from an older sender, built from its envelope. Takes the frame
/// out of `item` (its connection ids stay).
pub fn from_item(item: &mut pb::ForwardItem) -> Result<Outgoing, WireError> {
    if item.frame.is_empty() {
        let env = Envelope::try_from(item.envelope.take().ok_or(WireError::Missing)?)?;
        return Ok(env.outgoing());
    }
    let id = MsgId::parse(&item.id).map_err(|source| WireError::Id {
        field: "id",
        source,
    })?;
    let frame =
        ByteString::try_from(std::mem::take(&mut item.frame)).map_err(|_| WireError::Frame)?;
    if !item.notice {
        check_message_frame(&frame, &id)?;
    }
    Ok(Outgoing {
        id,
        frame,
        accepted_us: item.accepted_us,
        from: UserId::parse(&item.from).ok(),
    })
}

/// Whether `frame` is a `message` frame for `id`, in the form [`Envelope::frame`] writes:
/// `{"type":"message","id":"<id>",` then `from`, `to`, `ts` and `body`, and nothing else. The
/// prefix check alone refuses every other frame type at the cost of a comparison; the strict
/// read after it (every key once, no other key, nothing after the object; the body only
/// scanned, not built) is what stops `{"type":"message","id":..., ..., "type":"reconnect"}`,
/// which a browser's `JSON.parse` reads as a `reconnect` (the last duplicate key wins).
pub fn check_message_frame(frame: &str, id: &MsgId) -> Result<(), WireError> {
    const HEAD: &str = r#"{"type":"message","id":""#;
    let rest = frame
        .strip_prefix(HEAD)
        .and_then(|r| r.strip_prefix(id.as_str()))
        .and_then(|r| r.strip_prefix("\","));
    let not_message = || WireError::NotMessage(id.to_string());
    if rest.is_none() {
        return Err(not_message());
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "read only to check the frame's shape")]
    struct MessageFrame<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        id: &'a str,
        from: &'a str,
        to: &'a str,
        ts: i64,
        #[serde(borrow)]
        body: &'a RawValue,
    }
    let f: MessageFrame<'_> = serde_json::from_str(frame).map_err(|_| not_message())?;
    if UserId::validate(f.from).is_err() || UserId::validate(f.to).is_err() {
        return Err(not_message());
    }
    Ok(())
}

/// The receipt a notice item carries, encoded again from its checked fields; `None` for anything
/// that is not exactly a receipt (a notice never carries another kind of frame to a client).
pub fn receipt_frame(frame: &str) -> Option<ByteString> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Receipt<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        to: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        status: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        device: Option<std::borrow::Cow<'a, str>>,
    }
    let r: Receipt<'_> = serde_json::from_str(frame).ok()?;
    if r.kind != "receipt" || !matches!(r.status.as_ref(), "received" | "read" | "stored") {
        return None;
    }
    let id = MsgId::parse(&r.id).ok()?;
    let to = UserId::parse(&r.to).ok()?;
    let device = match &r.device {
        Some(d) if d.len() > 64 || d.chars().any(|c| c.is_control()) => return None,
        d => d.as_deref(),
    };
    Some(crate::ws::frame::receipt(id.as_str(), to.as_str(), &r.status, device).into())
}

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

impl Envelope {
    /// The protobuf envelope: what nodes from before frame pass-through read, and what the
    /// broadcast baseline publishes.
    pub fn to_proto(&self) -> pb::Envelope {
        pb::Envelope {
            id: self.id.as_str().to_owned(),
            from: self.from.as_str().to_owned(),
            to: self.to.as_str().to_owned(),
            ts_ms: self.ts_ms,
            body_json: self.body.get().as_bytes().to_vec(),
            accepted_us: self.accepted_us,
        }
    }
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = WireError;

    fn try_from(p: pb::Envelope) -> Result<Self, Self::Error> {
        let body_text = String::from_utf8(p.body_json).map_err(|e| {
            WireError::Body(serde_json::Error::io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        })?;
        Ok(Self {
            id: MsgId::parse(&p.id).map_err(|source| WireError::Id {
                field: "id",
                source,
            })?,
            from: UserId::parse(&p.from).map_err(|source| WireError::Id {
                field: "from",
                source,
            })?,
            to: UserId::parse(&p.to).map_err(|source| WireError::Id {
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
            body: RawValue::from_string(body_text).map_err(WireError::Body)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::env;

    #[test]
    fn proto_round_trip_and_hostile_envelopes() {
        let back = Envelope::try_from(env().to_proto()).expect("round trip");
        assert_eq!(back.body.get(), env().body.get());
        let mut bad = env().to_proto();
        bad.body_json = b"{not json".to_vec();
        assert!(matches!(Envelope::try_from(bad), Err(WireError::Body(_))));
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
        let mut item = to_item(&msg, vec!["c1".into()], ItemKind::Held);
        assert!(item.envelope.is_none());
        let back = from_item(&mut item).expect("valid item");
        assert_eq!(back.frame, msg.frame);
        assert_eq!(back.id, msg.id);
        assert_eq!(back.accepted_us, 7_000);

        // From an older sender: the envelope, turned into the same frame.
        let mut legacy = pb::ForwardItem {
            envelope: Some(env().to_proto()),
            conn_ids: vec!["c1".into()],
            ..Default::default()
        };
        assert_eq!(from_item(&mut legacy).expect("valid").frame, msg.frame);

        // A frame that is not UTF-8, or a bad id, is refused; so is an item with neither.
        let mut bad = to_item(&msg, vec![], ItemKind::Held);
        bad.frame = vec![0xff, 0xfe].into();
        assert!(matches!(from_item(&mut bad), Err(WireError::Frame)));
        let mut bad = to_item(&msg, vec![], ItemKind::Held);
        bad.id = "no spaces".into();
        assert!(from_item(&mut bad).is_err());
        let mut empty = pb::ForwardItem::default();
        assert!(matches!(from_item(&mut empty), Err(WireError::Missing)));
    }

    #[test]
    fn a_forwarded_frame_passes_only_as_this_items_message() {
        let msg = env().outgoing();
        let id = msg.id.as_str();
        assert!(check_message_frame(&msg.frame, &msg.id).is_ok());
        let hostile = [
            r#"{"type":"reconnect","url":"ws://evil.example/ws","reason":"draining"}"#.to_owned(),
            r#"{"type":"error","code":"unauthorized","message":"log in again"}"#.to_owned(),
            r#"{"type":"message","id":"other","from":"a","to":"b","ts":1,"body":{}}"#.to_owned(),
            // The right prefix, then a second `type` (JSON.parse keeps the last one).
            format!(
                r#"{{"type":"message","id":"{id}","from":"a","to":"b","ts":1,"body":{{}},"type":"reconnect","url":"ws://evil.example/ws"}}"#
            ),
            // An extra key, something after the object, a field missing, a bad user id.
            format!(
                r#"{{"type":"message","id":"{id}","from":"a","to":"b","ts":1,"body":{{}},"url":"x"}}"#
            ),
            format!(
                r#"{{"type":"message","id":"{id}","from":"a","to":"b","ts":1,"body":{{}}}}{{"type":"reconnect"}}"#
            ),
            format!(r#"{{"type":"message","id":"{id}","from":"a","to":"b","body":{{}}}}"#),
            format!(r#"{{"type":"message","id":"{id}","from":"a b","to":"b","ts":1,"body":{{}}}}"#),
            // The id as a prefix of a longer one.
            format!(r#"{{"type":"message","id":"{id}x","from":"a","to":"b","ts":1,"body":{{}}}}"#),
        ];
        for frame in hostile {
            assert!(
                matches!(
                    check_message_frame(&frame, &msg.id),
                    Err(WireError::NotMessage(_))
                ),
                "accepted {frame}"
            );
            let mut item = to_item(&msg, vec!["c1".into()], ItemKind::Held);
            item.frame = frame.clone().into_bytes().into();
            assert!(from_item(&mut item).is_err(), "from_item accepted {frame}");
        }
        // A notice is checked as a receipt instead (`receipt_frame`), not here.
        let mut notice = to_item(&msg, vec![], ItemKind::Notice);
        notice.frame = crate::ws::frame::receipt(id, "bob", "read", None)
            .into_bytes()
            .into();
        assert!(from_item(&mut notice).is_ok());
    }

    #[test]
    fn a_notice_passes_only_as_a_receipt() {
        let good = crate::ws::frame::receipt("m1", "bob", "received", Some("phone"));
        assert_eq!(receipt_frame(&good).as_deref(), Some(good.as_str()));
        let no_device = crate::ws::frame::receipt("m1", "bob", "read", None);
        assert!(receipt_frame(&no_device).is_some());
        for bad in [
            r#"{"type":"reconnect","url":"ws://evil.example/ws","reason":"x"}"#,
            r#"{"type":"receipt","id":"m1","to":"bob","status":"received","url":"ws://evil"}"#,
            r#"{"type":"receipt","id":"m1","to":"bob","status":"hacked"}"#,
            r#"{"type":"receipt","id":"no spaces","to":"bob","status":"read"}"#,
            r#"{"type":"message","id":"m1","from":"a","to":"bob","ts":1,"body":1}"#,
            "not json",
        ] {
            assert!(receipt_frame(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn older_peers_get_the_envelope_back_from_the_frame() {
        let msg = env().outgoing();
        let legacy = legacy_item(to_item(&msg, vec!["c1".into()], ItemKind::Held));
        assert!(legacy.frame.is_empty());
        assert_eq!(legacy.conn_ids, vec!["c1".to_owned()]);
        let back = Envelope::try_from(legacy.envelope.expect("an envelope")).expect("valid");
        assert_eq!(back.frame(), msg.frame);
        assert_eq!(back.accepted_us, 7_000);
    }
}
