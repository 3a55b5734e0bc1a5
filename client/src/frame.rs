//! The protocol's frames as Rust types: what the server sends ([`ServerFrame`]) and what a client
//! sends ([`ClientFrame`]), for every frame of the wsroute protocol (sections 2 and 7: send, ack,
//! message, receipt, read, watch/unwatch, presence, refresh/refreshed, ping/pong, error,
//! reconnect). Unknown fields are ignored and an unknown `type` reads as
//! [`ServerFrame::Unknown`], so that a newer server does not break an older client.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// The first frame after the upgrade.
    Hello(Hello),
    /// A direct message for this user.
    Message(Message),
    /// The answer to a `send`.
    Ack(Ack),
    /// The answer to a `ping`.
    Pong,
    /// A frame was refused; the connection stays open unless the server says otherwise.
    Error(ErrorFrame),
    /// The node is draining: reconnect to `url`; the server then closes with 1001.
    Reconnect(Reconnect),
    /// What became of a message this user sent (docs/protocol.md, receipts).
    Receipt(Receipt),
    /// A watched user's presence (docs/protocol.md, presence).
    Presence(Presence),
    /// The answer to a good `refresh` (docs/protocol.md, token refresh).
    Refreshed(Refreshed),
    /// A frame type this client does not know (a newer server); ignored by [`crate::Client`].
    #[serde(other)]
    Unknown,
}

impl ServerFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// `hello`: who and where this connection is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub conn_id: String,
    pub user: String,
    pub node: String,
    /// The server closes a client silent for twice this long.
    pub heartbeat_ms: u64,
}

/// `message`: a direct message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique across the cluster; the same for every copy of one message (and for a resend with
    /// the same `cid`).
    pub id: String,
    /// The authenticated sender (or the label of a pushed message).
    pub from: String,
    pub to: String,
    /// Unix milliseconds.
    pub ts: u64,
    /// Any JSON.
    pub body: Value,
}

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Written to at least one live connection of the recipient.
    Delivered,
    /// Kept in the recipient's inbox.
    Stored,
    /// Not accepted; the ack's `error` says why.
    Rejected,
}

/// `ack`: the answer to a `send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The send's `ref`, echoed.
    #[serde(rename = "ref", default)]
    pub reference: Option<String>,
    /// The message id (absent on some rejections).
    #[serde(default)]
    pub id: Option<String>,
    pub status: AckStatus,
    /// Live connections written to.
    #[serde(default)]
    pub devices: u32,
    /// Why a send was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `code` and `message` of a rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// `error`: a refused frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// `bad_frame`, `bad_field`, `too_large`, `rate_limited`, `unauthorized`, `token_expired`,
    /// `too_many`, `forbidden`, ...
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The `ref` of the refused send, when one could be read.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `reconnect`: where a draining node sends its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconnect {
    pub url: String,
    #[serde(default)]
    pub reason: String,
}

/// What a receipt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// A device of the recipient acked the message.
    Received,
    /// The recipient reported it read.
    Read,
    /// Acked `delivered`, but no device confirmed it; it is in the recipient's inbox now.
    Stored,
}

/// `receipt`: sent to every live connection of a message's sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: String,
    /// The recipient.
    pub to: String,
    pub status: ReceiptStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// `presence`: a watched user's state, after `watch` and on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    pub online: bool,
    /// Live connections, cluster-wide.
    pub devices: u32,
}

/// `refreshed`: the session now ends at `exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    /// Unix seconds.
    pub exp: u64,
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// A direct message to `to`.
    Send {
        to: String,
        /// Echoed in the ack.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The client's key for the message: a resend with the same `cid` has the same `id`.
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        body: Value,
    },
    /// This message was received; the server may forget it.
    Ack { id: String },
    /// The user read this message; its sender gets a `read` receipt.
    Read { id: String },
    /// Application heartbeat.
    Ping,
    /// Tell me about these users' presence.
    Watch { users: Vec<String> },
    /// Stop telling me about these users.
    Unwatch { users: Vec<String> },
    /// A fresh token for the same user.
    Refresh { token: String },
}

impl ClientFrame {
    /// The frame as the JSON text the server reads.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize: string keys only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_server_frame() {
        let cases = [
            (
                r#"{"type":"hello","conn_id":"c1","user":"alice","node":"n1","heartbeat_ms":30000}"#,
                ServerFrame::Hello(Hello {
                    conn_id: "c1".into(),
                    user: "alice".into(),
                    node: "n1".into(),
                    heartbeat_ms: 30000,
                }),
            ),
            (
                r#"{"type":"message","id":"m1","from":"a","to":"b","ts":7,"body":{"x":[1]}}"#,
                ServerFrame::Message(Message {
                    id: "m1".into(),
                    from: "a".into(),
                    to: "b".into(),
                    ts: 7,
                    body: json!({"x":[1]}),
                }),
            ),
            (
                r#"{"type":"ack","ref":null,"id":null,"status":"rejected","devices":0,"error":{"code":"bad_recipient","message":"no"}}"#,
                ServerFrame::Ack(Ack {
                    reference: None,
                    id: None,
                    status: AckStatus::Rejected,
                    devices: 0,
                    error: Some(ErrorBody {
                        code: "bad_recipient".into(),
                        message: "no".into(),
                    }),
                }),
            ),
            (r#"{"type":"pong"}"#, ServerFrame::Pong),
            (
                r#"{"type":"error","code":"bad_frame","message":"m","ref":"r"}"#,
                ServerFrame::Error(ErrorFrame {
                    code: "bad_frame".into(),
                    message: "m".into(),
                    reference: Some("r".into()),
                }),
            ),
            (
                r#"{"type":"reconnect","url":"ws://b/ws","reason":"draining"}"#,
                ServerFrame::Reconnect(Reconnect {
                    url: "ws://b/ws".into(),
                    reason: "draining".into(),
                }),
            ),
            (
                r#"{"type":"receipt","id":"m1","to":"b","status":"read","device":"phone"}"#,
                ServerFrame::Receipt(Receipt {
                    id: "m1".into(),
                    to: "b".into(),
                    status: ReceiptStatus::Read,
                    device: Some("phone".into()),
                }),
            ),
            (
                r#"{"type":"presence","user":"b","online":true,"devices":2}"#,
                ServerFrame::Presence(Presence {
                    user: "b".into(),
                    online: true,
                    devices: 2,
                }),
            ),
            (
                r#"{"type":"refreshed","exp":1700000000}"#,
                ServerFrame::Refreshed(Refreshed { exp: 1_700_000_000 }),
            ),
            (r#"{"type":"teleport","x":1}"#, ServerFrame::Unknown),
        ];
        for (text, want) in cases {
            assert_eq!(ServerFrame::parse(text).expect(text), want, "{text}");
        }
        assert!(ServerFrame::parse("[1]").is_err());
        assert!(ServerFrame::parse(r#"{"type":"ack"}"#).is_err());
    }

    #[test]
    fn writes_every_client_frame() {
        let cases = [
            (
                ClientFrame::Send {
                    to: "bob".into(),
                    reference: Some("r1".into()),
                    cid: Some("c1".into()),
                    body: json!({"t":"hi"}),
                },
                json!({"type":"send","to":"bob","ref":"r1","cid":"c1","body":{"t":"hi"}}),
            ),
            (
                ClientFrame::Send {
                    to: "bob".into(),
                    reference: None,
                    cid: None,
                    body: json!(1),
                },
                json!({"type":"send","to":"bob","body":1}),
            ),
            (
                ClientFrame::Ack { id: "m1".into() },
                json!({"type":"ack","id":"m1"}),
            ),
            (
                ClientFrame::Read { id: "m1".into() },
                json!({"type":"read","id":"m1"}),
            ),
            (ClientFrame::Ping, json!({"type":"ping"})),
            (
                ClientFrame::Watch {
                    users: vec!["a".into(), "b".into()],
                },
                json!({"type":"watch","users":["a","b"]}),
            ),
            (
                ClientFrame::Unwatch {
                    users: vec!["a".into()],
                },
                json!({"type":"unwatch","users":["a"]}),
            ),
            (
                ClientFrame::Refresh {
                    token: "t.o.k".into(),
                },
                json!({"type":"refresh","token":"t.o.k"}),
            ),
        ];
        for (frame, want) in cases {
            let got: Value = serde_json::from_str(&frame.to_text()).expect("json");
            assert_eq!(got, want);
        }
    }
}
