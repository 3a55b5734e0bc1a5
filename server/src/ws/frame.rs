//! Client frames: parsing what a client sends (every byte hostile until checked) and encoding
//! what the server sends. All frames are JSON objects with a `"type"`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{FrameErrorCode, RejectCode};
use crate::ids::{Cid, IdError, MsgId, UserId};
use crate::json_text;

/// Longest `ref` a client may attach to a send (it is echoed back verbatim).
pub const MAX_REF_BYTES: usize = 256;

/// Every `type` a client may send. [`parse`] refuses any other as unknown, so a frame type that
/// the parser learns is listed here or refused; `tests/protocol_doc.rs` checks each one is
/// documented.
pub const CLIENT_FRAME_TYPES: &[&str] =
    &["send", "ack", "read", "ping", "refresh", "watch", "unwatch"];

/// Every `type` the server writes to a client: [`ServerFrame`]'s (see its `kind`, which a new
/// variant must extend) and the `message` frame (`envelope.rs`). `tests/protocol_doc.rs` checks
/// each one is documented.
pub const SERVER_FRAME_TYPES: &[&str] = &[
    "hello",
    "message",
    "ack",
    "pong",
    "error",
    "reconnect",
    "receipt",
    "refreshed",
    "presence",
];

/// A frame from the client, checked.
#[derive(Debug)]
pub enum ClientFrame {
    Send(SendFrame),
    /// `id` is `None` when it is not a valid message id: no message has it, so such an ack
    /// answers nothing (and is counted like any frame).
    Ack {
        id: Option<MsgId>,
    },
    /// The user has read message `id` (docs/protocol.md, `read`).
    Read {
        id: MsgId,
    },
    Ping,
    /// A fresh token for the same user (docs/protocol.md, `refresh`); verified by the session.
    Refresh {
        token: String,
    },
    /// Tell me about these users' presence (docs/protocol.md, presence): distinct, valid ids, in the
    /// order given; the session checks them against `--max-watch` and the policy.
    Watch {
        users: Vec<UserId>,
    },
    /// Stop telling me about these users (distinct, valid ids).
    Unwatch {
        users: Vec<UserId>,
    },
}

#[derive(Debug)]
pub struct SendFrame {
    /// The recipient, or why the string given is not a user id: the caller answers that with a
    /// `rejected` ack (`bad_recipient`).
    pub to: Result<UserId, IdError>,
    /// The client's own reference, echoed in the ack (`null` when absent).
    pub reference: Option<String>,
    /// The client's key for this message (docs/protocol.md, "Idempotent sends"), `Ok(None)` when absent or `null`.
    /// One that is not a string is refused here; one that is a string outside the cid rules is
    /// kept as its error, for the caller to answer with a `rejected` ack (`bad_field`), like `to`.
    pub cid: Result<Option<Cid>, IdError>,
    /// The body, exactly as the client wrote it (valid JSON).
    pub body: Box<RawValue>,
}

/// A refused frame: the code, a human message and the `ref` when one could be read.
#[derive(Debug, PartialEq)]
pub struct FrameError {
    pub code: FrameErrorCode,
    pub message: String,
    pub reference: Option<String>,
}

impl FrameError {
    fn new(code: FrameErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    cid: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    users: Option<&'a RawValue>,
}

/// The JSON string `raw`, borrowed from the frame unless it has escapes to undo; `None` for
/// anything that is not a string. (serde's own `Cow<str>` always copies.)
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

/// A string field, borrowed from the frame unless it has escapes to undo.
fn string_field<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<Cow<'a, str>, FrameError> {
    let raw = raw.ok_or_else(|| {
        FrameError::new(FrameErrorCode::BadField, format!("missing field `{name}`"))
    })?;
    json_str(raw).ok_or_else(|| {
        FrameError::new(
            FrameErrorCode::BadField,
            format!("field `{name}` must be a string"),
        )
    })
}

/// The `users` of a `watch` or `unwatch`: an array of valid user ids, repeats dropped (the first
/// kept). Anything else is refused whole (`bad_field`), naming the first bad entry.
fn users_field(raw: Option<&RawValue>) -> Result<Vec<UserId>, FrameError> {
    let bad = |message: String| FrameError::new(FrameErrorCode::BadField, message);
    let raw = raw.ok_or_else(|| bad("missing field `users`".into()))?;
    let items: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| bad("`users` must be an array of user ids".into()))?;
    let mut users = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = json_str(item).ok_or_else(|| bad(format!("`users[{i}]` must be a string")))?;
        let user = UserId::parse(&name)
            .map_err(|e| bad(format!("`users[{i}]` is not a valid user id: {e}")))?;
        if seen.insert(user.clone()) {
            users.push(user);
        }
    }
    Ok(users)
}

/// The id of an ack written in one of the two shapes clients write (`{"type":"ack","id":"ID"}`,
/// and `{"id":"ID","type":"ack"}` from maps that sort their keys), when the id needs no JSON
/// unescaping: then the JSON parser would read exactly this and nothing else, so it is skipped
/// (it cost ~1,600 instructions per ack, one ack per delivered message). Anything else (spaces,
/// other fields, escapes) goes through [`parse_json`].
fn plain_ack(text: &str) -> Option<&str> {
    let id = text
        .strip_prefix(r#"{"type":"ack","id":""#)
        .and_then(|rest| rest.strip_suffix(r#""}"#))
        .or_else(|| {
            text.strip_prefix(r#"{"id":""#)
                .and_then(|rest| rest.strip_suffix(r#"","type":"ack"}"#))
        })?;
    // No quote (so the string ends where the shape says), no escape, no control character
    // (which JSON refuses unescaped): the JSON string's value is its bytes.
    json_text::is_plain(id).then_some(id)
}

/// A `send` read in one pass, its strings borrowed as they stand (see [`plain_send`]).
#[derive(Deserialize)]
struct PlainSend<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    to: &'a str,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
    cid: Option<&'a str>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    // The other fields of a frame, declared so that one given twice is refused here as the full
    // parser refuses it, not ignored.
    #[serde(borrow, rename = "id")]
    _id: Option<&'a RawValue>,
    #[serde(borrow, rename = "token")]
    _token: Option<&'a RawValue>,
    #[serde(borrow, rename = "users")]
    _users: Option<&'a RawValue>,
}

/// A `send` whose strings need no unescaping and whose fields all pass, read in one pass of the
/// JSON parser instead of [`parse_json`]'s two (it captures every field, then reads the strings
/// out of them): one `send` per message, ~1,000 instructions fewer each. `None` for anything
/// else (escapes, a field of another type, a missing or `null` body, a `ref` too long, another
/// frame type): [`parse_json`] reads those and words the error.
fn plain_send(text: &str) -> Option<SendFrame> {
    // The shapes clients write: `type` first (the JS client, router-cli) or last (sorted keys).
    if !(text.starts_with(r#"{"type":"send","#) || text.ends_with(r#","type":"send"}"#)) {
        return None;
    }
    let f: PlainSend<'_> = serde_json::from_str(text).ok()?;
    if f.kind != "send" || f.reference.is_some_and(|r| r.len() > MAX_REF_BYTES) {
        return None;
    }
    Some(SendFrame {
        to: UserId::parse(f.to),
        reference: f.reference.map(str::to_owned),
        cid: f.cid.map(Cid::parse).transpose(),
        body: f.body?.to_owned(),
    })
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    if let Some(id) = plain_ack(text) {
        return Ok(ClientFrame::Ack {
            id: MsgId::parse(id).ok(),
        });
    }
    if let Some(send) = plain_send(text) {
        return Ok(ClientFrame::Send(send));
    }
    parse_json(text)
}

/// Parses one text frame with the JSON parser.
fn parse_json(text: &str) -> Result<ClientFrame, FrameError> {
    // A struct would also accept a JSON array; frames must be objects.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::new(
            FrameErrorCode::BadFrame,
            "a frame must be a JSON object",
        ));
    }
    let raw: RawFrame<'_> = serde_json::from_str(text)
        .map_err(|e| FrameError::new(FrameErrorCode::BadFrame, format!("not valid JSON: {e}")))?;
    let kind = match raw.kind {
        None => return Err(FrameError::new(FrameErrorCode::BadFrame, "missing `type`")),
        Some(k) => json_str(k)
            .ok_or_else(|| FrameError::new(FrameErrorCode::BadFrame, "`type` must be a string"))?,
    };
    if !CLIENT_FRAME_TYPES.contains(&&*kind) {
        return Err(unknown_type(&kind));
    }
    match &*kind {
        "send" => {
            // Read `ref` first so that every later error can echo it.
            let reference = match raw.reference {
                None => None,
                Some(r) if r.get() == "null" => None,
                Some(_) => {
                    let r = string_field(raw.reference, "ref")?;
                    if r.len() > MAX_REF_BYTES {
                        return Err(FrameError::new(
                            FrameErrorCode::BadField,
                            format!("`ref` must be at most {MAX_REF_BYTES} bytes"),
                        ));
                    }
                    Some(r.into_owned())
                }
            };
            let with_ref = |mut e: FrameError| {
                e.reference = reference.clone();
                e
            };
            let to = UserId::parse(&string_field(raw.to, "to").map_err(with_ref)?);
            let cid = match raw.cid {
                None => Ok(None),
                Some(c) if c.get() == "null" => Ok(None),
                Some(_) => Cid::parse(&string_field(raw.cid, "cid").map_err(with_ref)?).map(Some),
            };
            let body = raw
                .body
                .ok_or_else(|| {
                    with_ref(FrameError::new(
                        FrameErrorCode::BadField,
                        "missing field `body`",
                    ))
                })?
                .to_owned();
            Ok(ClientFrame::Send(SendFrame {
                to,
                reference,
                cid,
                body,
            }))
        }
        "ack" => Ok(ClientFrame::Ack {
            id: MsgId::parse(&string_field(raw.id, "id")?).ok(),
        }),
        "read" => {
            let id = string_field(raw.id, "id")?;
            let id = MsgId::parse(&id).map_err(|e| {
                FrameError::new(
                    FrameErrorCode::BadField,
                    format!("`id` is not a message id: {e}"),
                )
            })?;
            Ok(ClientFrame::Read { id })
        }
        "ping" => Ok(ClientFrame::Ping),
        "refresh" => Ok(ClientFrame::Refresh {
            token: string_field(raw.token, "token")?.into_owned(),
        }),
        "watch" => Ok(ClientFrame::Watch {
            users: users_field(raw.users)?,
        }),
        "unwatch" => Ok(ClientFrame::Unwatch {
            users: users_field(raw.users)?,
        }),
        other => Err(unknown_type(other)),
    }
}

fn unknown_type(kind: &str) -> FrameError {
    FrameError::new(
        FrameErrorCode::BadFrame,
        format!("unknown type {:?}", truncate(kind, 64)),
    )
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ------------------------------------------------------------------ server -> client

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ServerFrame<'a> {
    Hello {
        conn_id: &'a str,
        user: &'a str,
        node: &'a str,
        heartbeat_ms: u64,
    },
    Ack {
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
        id: Option<&'a str>,
        status: &'a str,
        devices: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody<'a>>,
    },
    Pong,
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Reconnect {
        url: &'a str,
        reason: &'a str,
    },
    /// Written by hand in [`receipt`]; kept as the serde form its test compares with.
    #[cfg_attr(not(test), allow(dead_code))]
    Receipt {
        id: &'a str,
        to: &'a str,
        status: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<&'a str>,
    },
    Refreshed {
        exp: u64,
    },
    Presence {
        user: &'a str,
        online: bool,
        devices: u64,
    },
}

impl ServerFrame<'_> {
    /// The frame's `type` (serde writes the same: lowercase variant names). Exhaustive, so a new
    /// variant is named here, beside [`SERVER_FRAME_TYPES`].
    fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ack { .. } => "ack",
            Self::Pong => "pong",
            Self::Error { .. } => "error",
            Self::Reconnect { .. } => "reconnect",
            Self::Receipt { .. } => "receipt",
            Self::Refreshed { .. } => "refreshed",
            Self::Presence { .. } => "presence",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

fn encode(frame: &ServerFrame<'_>) -> String {
    debug_assert!(
        SERVER_FRAME_TYPES.contains(&frame.kind()),
        "{} is missing from SERVER_FRAME_TYPES",
        frame.kind()
    );
    serde_json::to_string(frame)
        .expect("server frames always serialize: no maps with non-string keys")
}

pub fn hello(conn_id: &str, user: &str, node: &str, heartbeat_ms: u64) -> String {
    encode(&ServerFrame::Hello {
        conn_id,
        user,
        node,
        heartbeat_ms,
    })
}

/// The answer to a good `refresh`: the new token's `exp` (unix seconds).
pub fn refreshed(exp: u64) -> String {
    encode(&ServerFrame::Refreshed { exp })
}

/// A watched user's presence (docs/protocol.md, presence): online while it holds at least one live
/// connection, `devices` of them cluster-wide.
pub fn presence(user: &str, devices: u64) -> String {
    encode(&ServerFrame::Presence {
        user,
        online: devices > 0,
        devices,
    })
}

/// The answer to a send, as the client sees it. The two frames written for every message, this
/// one and [`receipt`], are written directly rather than through serde's map serializer (an
/// internally tagged enum); a test holds them equal to it, byte for byte.
pub fn ack(
    reference: Option<&str>,
    id: Option<&str>,
    status: &str,
    devices: u32,
    error: Option<(RejectCode, &str)>,
) -> String {
    if error.is_none() {
        let room = 64 + reference.map_or(4, str::len) + id.map_or(4, str::len) + status.len();
        return json_text::Object::new("ack", room)
            .opt("ref", reference)
            .opt("id", id)
            .str("status", status)
            .num("devices", devices)
            .end();
    }
    encode(&ServerFrame::Ack {
        reference,
        id,
        status,
        devices,
        error: error.map(|(code, message)| ErrorBody {
            code: code.as_str(),
            message,
        }),
    })
}

pub fn pong() -> String {
    encode(&ServerFrame::Pong)
}

pub fn error(err: &FrameError) -> String {
    encode(&ServerFrame::Error {
        code: err.code.as_str(),
        message: &err.message,
        reference: err.reference.as_deref(),
    })
}

pub fn reconnect(url: &str, reason: &str) -> String {
    encode(&ServerFrame::Reconnect { url, reason })
}

/// What became of message `id` that the connection's user sent to `to` (docs/protocol.md, `receipt`).
pub fn receipt(id: &str, to: &str, status: &str, device: Option<&str>) -> String {
    let room = 64 + id.len() + to.len() + status.len() + device.map_or(0, |d| d.len() + 12);
    let frame = json_text::Object::new("receipt", room)
        .str("id", id)
        .str("to", to)
        .str("status", status);
    match device {
        Some(device) => frame.str("device", device),
        None => frame,
    }
    .end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sends_read_in_one_pass_read_as_the_parser_reads_them() {
        let long_ref = "r".repeat(MAX_REF_BYTES + 1);
        let texts = [
            r#"{"type":"send","to":"bob","ref":"r1","body":{"a":[1,2]}}"#.to_owned(),
            r#"{"type":"send","to":"bob","body":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","ref":null,"cid":null,"body":"x"}"#.to_owned(),
            r#"{"type":"send","to":"bob","cid":"c-1","body":{}}"#.to_owned(),
            r#"{"type":"send","to":"bob","cid":"bad cid","body":{}}"#.to_owned(),
            r#"{"type":"send","to":"bad user!","body":{}}"#.to_owned(),
            r#"{"type":"send","to":"","body":{}}"#.to_owned(),
            r#"{"body":{"t":"hi"},"cid":"c1","ref":"r1","to":"bob","type":"send"}"#.to_owned(),
            r#"{"type":"send","to":"bob","body":1} "#.to_owned(),
            // Everything below is left to the full parser by `plain_send`.
            r#"{"type":"send","to":"b\u006fb","ref":"r\"1","body":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","ref":"r1","body":null}"#.to_owned(),
            r#"{"type":"send","to":"bob","ref":"r1"}"#.to_owned(),
            r#"{"type":"send","to":null,"ref":"r1","body":1}"#.to_owned(),
            r#"{"type":"send","to":7,"ref":"r1","body":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","ref":7,"body":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","cid":7,"body":1}"#.to_owned(),
            format!(r#"{{"type":"send","to":"bob","ref":"{long_ref}","body":1}}"#),
            r#"{"type":"send","to":"bob","to":"eve","body":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","id":1,"id":2,"body":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","users":[],"token":"t","id":"m1","x":[1],"body":1}"#
                .to_owned(),
            r#"{"type":"send","to":"bob","body":1}x"#.to_owned(),
            r#"{"type":"send","to":"bob","body":{"open":1}"#.to_owned(),
            r#"{"type":"send","to":"bob","body":1,"type":"read"}"#.to_owned(),
            r#"{"to":"bob","body":1,"type":"ping","type":"send"}"#.to_owned(),
        ];
        let mut fast = 0;
        for text in &texts {
            fast += usize::from(plain_send(text).is_some());
            let (a, b) = (parse(text), parse_json(text));
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}");
        }
        // The nine sends above the comment, and the one with fields a send does not read.
        assert_eq!(fast, 10, "plain sends read in one pass");
    }

    #[test]
    fn plain_acks_read_without_the_parser_read_as_the_parser_reads_them() {
        let id = wsroute_core::ids::IdGen::new().msg().as_str().to_owned();
        let ids = [
            id.as_str(),
            "m1",
            "",
            "not an id",
            "r\"q",
            "back\\slash",
            "\\u0041",
            "tab\there",
            "nul\u{0}",
            "é☃",
            "\"}",
        ];
        let mut fast = 0;
        for i in ids {
            for text in [
                format!(r#"{{"type":"ack","id":"{i}"}}"#),
                format!(r#"{{"id":"{i}","type":"ack"}}"#),
                format!(r#"{{"type":"ack", "id":"{i}"}}"#),
                format!(r#"{{"type":"ack","id":"{i}","x":1}}"#),
                format!(r#"{{"type":"ack","id":"{i}"}} "#),
                format!(r#"{{"type":"ack","id":"{i}"}}{{"#),
            ] {
                fast += usize::from(plain_ack(&text).is_some());
                let (a, b) = (parse(&text), parse_json(&text));
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}");
            }
        }
        // The two plain shapes of each of the five ids without quotes, escapes or control
        // characters.
        assert_eq!(fast, 2 * 5, "plain shapes read directly");
        assert!(matches!(
            parse(&format!(r#"{{"type":"ack","id":"{id}"}}"#)),
            Ok(ClientFrame::Ack { id: Some(_) })
        ));
    }

    #[test]
    fn acks_and_receipts_written_directly_are_what_serde_writes() {
        let texts: [&str; 9] = [
            "m1",
            "",
            "r\"q",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "del\u{7f}",
            "é and ☃ and /",
            "</script>",
        ];
        let opts = || std::iter::once(None).chain(texts.iter().copied().map(Some));
        for reference in opts() {
            for id in opts() {
                for (status, devices) in [("delivered", 2), ("stored", 0)] {
                    assert_eq!(
                        ack(reference, id, status, devices, None),
                        encode(&ServerFrame::Ack {
                            reference,
                            id,
                            status,
                            devices,
                            error: None,
                        }),
                    );
                }
            }
        }
        for id in texts {
            for to in texts {
                for device in opts() {
                    assert_eq!(
                        receipt(id, to, "received", device),
                        encode(&ServerFrame::Receipt {
                            id,
                            to,
                            status: "received",
                            device,
                        }),
                    );
                }
            }
        }
        assert_eq!(
            ack(None, None, "delivered", u32::MAX, None)
                .matches("4294967295")
                .count(),
            1
        );
    }

    fn code(text: &str) -> FrameErrorCode {
        parse(text).expect_err("must be refused").code
    }

    #[test]
    fn parses_send_and_keeps_body_verbatim() {
        let f = parse(r#"{"type":"send","to":"bob","ref":"r1","body":{"a": [1, 2]},"extra":1}"#)
            .expect("valid");
        let ClientFrame::Send(s) = f else {
            panic!("not a send")
        };
        assert_eq!(s.to.as_ref().map(UserId::as_str), Ok("bob"));
        assert_eq!(s.reference.as_deref(), Some("r1"));
        assert_eq!(s.body.get(), r#"{"a": [1, 2]}"#);
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let raw = |t: &str| RawValue::from_string(t.to_owned()).expect("json");
        let plain = raw(r#""bob""#);
        assert!(matches!(json_str(&plain), Some(Cow::Borrowed("bob"))));
        let escaped = raw(r#""b\u006fb""#);
        assert!(matches!(json_str(&escaped), Some(Cow::Owned(s)) if s == "bob"));
        for not_a_string in ["1", "null", "[]", "{}", "true"] {
            assert_eq!(json_str(&raw(not_a_string)), None, "{not_a_string}");
        }
    }

    /// Strings are read in place unless they carry escapes; escaped ones mean the same.
    #[test]
    fn escaped_strings_read_like_plain_ones() {
        let f =
            parse(r#"{"type":"s\u0065nd","to":"b\u006fb","ref":"r\"1","body":1}"#).expect("valid");
        let ClientFrame::Send(s) = f else {
            panic!("not a send")
        };
        assert_eq!(s.to.as_ref().map(UserId::as_str), Ok("bob"));
        assert_eq!(s.reference.as_deref(), Some("r\"1"));
        let ack = parse(r#"{"type":"ack","id":"m\u0031"}"#).expect("valid");
        assert!(matches!(ack, ClientFrame::Ack { id: Some(id) } if id.as_str() == "m1"));
    }

    /// A `to` that is a string but not a user id is kept as its error (the session answers it
    /// with a `rejected` ack that echoes the ref), not refused as a frame.
    #[test]
    fn a_send_to_a_bad_user_id_keeps_its_error() {
        let f = parse(r#"{"type":"send","to":"bob smith","ref":"r1","body":1}"#).expect("parsed");
        let ClientFrame::Send(s) = f else {
            panic!("not a send")
        };
        assert!(s.to.is_err(), "{:?}", s.to);
        assert_eq!(s.reference.as_deref(), Some("r1"));
    }

    #[test]
    fn refuses_what_is_not_a_frame() {
        assert_eq!(code("not json"), FrameErrorCode::BadFrame);
        assert_eq!(code("[1,2]"), FrameErrorCode::BadFrame);
        assert_eq!(code(r#"{"to":"bob"}"#), FrameErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":7}"#), FrameErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"shout"}"#), FrameErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"send","to":"a","body":1"#),
            FrameErrorCode::BadFrame
        );
    }

    #[test]
    fn refuses_bad_fields_and_echoes_ref() {
        let e = parse(r#"{"type":"send","ref":"r9","to":5,"body":1}"#).expect_err("bad to");
        assert_eq!(e.code, FrameErrorCode::BadField);
        assert_eq!(e.reference.as_deref(), Some("r9"));
        assert_eq!(
            code(r#"{"type":"send","to":"bob"}"#),
            FrameErrorCode::BadField
        );
        assert_eq!(
            code(r#"{"type":"send","to":"bob","body":1,"ref":3}"#),
            FrameErrorCode::BadField
        );
        assert_eq!(code(r#"{"type":"ack"}"#), FrameErrorCode::BadField);
        assert_eq!(code(r#"{"type":"ack","id":[]}"#), FrameErrorCode::BadField);
        let long = format!(
            r#"{{"type":"send","to":"b","body":1,"ref":"{}"}}"#,
            "x".repeat(300)
        );
        assert_eq!(code(&long), FrameErrorCode::BadField);
    }

    #[test]
    fn a_send_takes_an_optional_cid() {
        let cid_of = |extra: &str| {
            let text = format!(r#"{{"type":"send","to":"bob","ref":"r1","body":1{extra}}}"#);
            match parse(&text) {
                Ok(ClientFrame::Send(s)) => s.cid,
                other => panic!("not a send: {other:?}"),
            }
        };
        assert_eq!(cid_of(""), Ok(None));
        assert_eq!(cid_of(r#","cid":null"#), Ok(None));
        assert_eq!(
            cid_of(r#","cid":"a.b:c-d_9""#),
            Ok(Some(Cid::parse("a.b:c-d_9").expect("valid")))
        );
        // A string outside the rules is kept as its error: the caller answers with an ack.
        assert!(matches!(cid_of(r#","cid":"""#), Err(IdError::Empty)));
        assert!(matches!(
            cid_of(r#","cid":"a b""#),
            Err(IdError::BadChar { .. })
        ));
        assert!(matches!(
            cid_of(r#","cid":"a@b""#),
            Err(IdError::BadChar { .. })
        ));
        let long = format!(r#","cid":"{}""#, "x".repeat(65));
        assert!(matches!(
            cid_of(&long),
            Err(IdError::TooLong { len: 65, .. })
        ));
        // Not a string at all: refused as a bad field, with the ref.
        let e = parse(r#"{"type":"send","to":"bob","ref":"r2","body":1,"cid":7}"#)
            .expect_err("a number is not a cid");
        assert_eq!(e.code, FrameErrorCode::BadField);
        assert_eq!(e.reference.as_deref(), Some("r2"));
    }

    #[test]
    fn parses_read_and_refuses_a_bad_id() {
        assert!(matches!(
            parse(r#"{"type":"read","id":"m1"}"#),
            Ok(ClientFrame::Read { id }) if id.as_str() == "m1"
        ));
        assert_eq!(code(r#"{"type":"read"}"#), FrameErrorCode::BadField);
        assert_eq!(
            code(r#"{"type":"read","id":null}"#),
            FrameErrorCode::BadField
        );
        assert_eq!(code(r#"{"type":"read","id":5}"#), FrameErrorCode::BadField);
        assert_eq!(code(r#"{"type":"read","id":""}"#), FrameErrorCode::BadField);
        assert_eq!(
            code(r#"{"type":"read","id":"a b"}"#),
            FrameErrorCode::BadField
        );
        let long = format!(r#"{{"type":"read","id":"{}"}}"#, "m".repeat(129));
        assert_eq!(code(&long), FrameErrorCode::BadField);
    }

    #[test]
    fn parses_refresh_and_encodes_refreshed() {
        match parse(r#"{"type":"refresh","token":"a.b.c"}"#) {
            Ok(ClientFrame::Refresh { token }) => assert_eq!(token, "a.b.c"),
            other => panic!("{other:?}"),
        }
        assert_eq!(code(r#"{"type":"refresh"}"#), FrameErrorCode::BadField);
        assert_eq!(
            code(r#"{"type":"refresh","token":5}"#),
            FrameErrorCode::BadField
        );
        let v: serde_json::Value = serde_json::from_str(&refreshed(1_700_000_000)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"refreshed","exp":1_700_000_000u64})
        );
    }

    #[test]
    fn parses_watch_and_unwatch_and_refuses_bad_lists_whole() {
        let users = |text: &str| match parse(text) {
            Ok(ClientFrame::Watch { users } | ClientFrame::Unwatch { users }) => users
                .iter()
                .map(|u| u.as_str().to_owned())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            users(r#"{"type":"watch","users":["bob","carol","bob"]}"#),
            ["bob", "carol"],
            "in order, repeats dropped"
        );
        assert_eq!(
            users(r#"{"type":"unwatch","users":["a.b@c:d-e_f"]}"#),
            ["a.b@c:d-e_f"]
        );
        assert!(users(r#"{"type":"watch","users":[]}"#).is_empty());
        assert!(matches!(
            parse(r#"{"type":"unwatch","users":["bob"]}"#),
            Ok(ClientFrame::Unwatch { .. })
        ));
        for bad in [
            r#"{"type":"watch"}"#,
            r#"{"type":"watch","users":"bob"}"#,
            r#"{"type":"watch","users":{"bob":1}}"#,
            r#"{"type":"watch","users":null}"#,
            r#"{"type":"watch","users":["bob",7]}"#,
            r#"{"type":"watch","users":["bob",""]}"#,
            r#"{"type":"watch","users":["bob","b b"]}"#,
            r#"{"type":"unwatch","users":[["bob"]]}"#,
        ] {
            assert_eq!(code(bad), FrameErrorCode::BadField, "{bad}");
        }
        let long = format!(r#"{{"type":"watch","users":["{}"]}}"#, "x".repeat(129));
        assert_eq!(code(&long), FrameErrorCode::BadField);
        let e = parse(r#"{"type":"watch","users":["ok","no way"]}"#).expect_err("bad id");
        assert!(e.message.contains("users[1]"), "{}", e.message);
    }

    #[test]
    fn encodes_presence() {
        let v: serde_json::Value = serde_json::from_str(&presence("bob", 2)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"presence","user":"bob","online":true,"devices":2})
        );
        let v: serde_json::Value = serde_json::from_str(&presence("bob", 0)).expect("json");
        assert_eq!(v["online"], false);
        assert_eq!(v["devices"], 0);
    }

    #[test]
    fn ping_and_ack() {
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping)));
        assert!(matches!(
            parse(r#"{"type":"ack","id":"m1"}"#),
            Ok(ClientFrame::Ack { id: Some(id) }) if id.as_str() == "m1"
        ));
        // Not a message id: parsed (and counted by the session), but it answers nothing.
        for bad in [r#""m 1""#, r#""""#, r#""é""#] {
            assert!(
                matches!(
                    parse(&format!(r#"{{"type":"ack","id":{bad}}}"#)),
                    Ok(ClientFrame::Ack { id: None })
                ),
                "{bad}"
            );
        }
        assert_eq!(code(r#"{"type":"ack","id":1}"#), FrameErrorCode::BadField);
    }

    #[test]
    fn every_frame_type_is_listed_and_written_as_its_kind() {
        for t in CLIENT_FRAME_TYPES {
            let refused = parse(&format!(r#"{{"type":"{t}"}}"#)).err();
            assert!(
                refused
                    .as_ref()
                    .is_none_or(|e| e.code == FrameErrorCode::BadField),
                "{t} is listed but not parsed: {refused:?}"
            );
        }
        let samples = [
            ServerFrame::Hello {
                conn_id: "c",
                user: "u",
                node: "n",
                heartbeat_ms: 1,
            },
            ServerFrame::Ack {
                reference: None,
                id: None,
                status: "stored",
                devices: 0,
                error: None,
            },
            ServerFrame::Pong,
            ServerFrame::Error {
                code: "bad_frame",
                message: "m",
                reference: None,
            },
            ServerFrame::Reconnect {
                url: "ws://n/ws",
                reason: "r",
            },
            ServerFrame::Receipt {
                id: "m1",
                to: "bob",
                status: "read",
                device: None,
            },
            ServerFrame::Refreshed { exp: 1 },
            ServerFrame::Presence {
                user: "bob",
                online: true,
                devices: 2,
            },
        ];
        for frame in &samples {
            let v: serde_json::Value = serde_json::from_str(&encode(frame)).expect("json");
            assert_eq!(v["type"], frame.kind());
            assert!(
                SERVER_FRAME_TYPES.contains(&frame.kind()),
                "{}",
                frame.kind()
            );
        }
        // Every listed type is written by one of the frames above, or is the message frame.
        for t in SERVER_FRAME_TYPES {
            assert!(
                *t == "message" || samples.iter().any(|f| f.kind() == *t),
                "{t} is listed but no frame writes it"
            );
        }
    }

    #[test]
    fn encodes_server_frames() {
        let v: serde_json::Value =
            serde_json::from_str(&ack(Some("r1"), Some("m1"), "delivered", 2, None)).expect("json");
        assert_eq!(v["type"], "ack");
        assert_eq!(v["ref"], "r1");
        assert_eq!(v["devices"], 2);
        assert!(v.get("error").is_none());
        let v: serde_json::Value = serde_json::from_str(&ack(
            None,
            None,
            "rejected",
            0,
            Some((RejectCode::BadRecipient, "no")),
        ))
        .expect("json");
        assert_eq!(v["error"]["code"], "bad_recipient");
        assert_eq!(v["ref"], serde_json::Value::Null);
        let v: serde_json::Value = serde_json::from_str(&pong()).expect("json");
        assert_eq!(v["type"], "pong");
    }
}
