//! The protocol's error vocabulary in one place: codes a client sees in `error` frames and in
//! `rejected` acks, and the WebSocket close codes, grouped by what the client should do.

use std::fmt;

/// Why a client frame was refused (`error` frame, PROTOCOL.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameErrorCode {
    /// Not JSON, not an object, binary, or no/unknown `type`.
    BadFrame,
    /// A field is missing or of the wrong kind.
    BadField,
    /// Over `--max-frame-bytes`; the connection is closed with 1009.
    TooLarge,
    /// Too many sends waiting for their outcome on this connection.
    RateLimited,
}

impl FrameErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::BadField => "bad_field",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Why a message was not accepted (`rejected` ack, HTTP push, gRPC `SendResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// `to` is not a valid user id.
    BadRecipient,
    /// The body is larger than the node accepts.
    TooLarge,
    /// The recipient's inbox holds the maximum number of messages.
    InboxFull,
    /// The route table or the recipient's node could not be reached in time: try again later.
    Unavailable,
    /// The node is draining and accepts no new messages from this connection.
    Draining,
    /// The body (or the sender label) of a pushed message is not acceptable.
    BadBody,
    /// The connection sends faster than `--max-msgs-per-sec`.
    RateLimited,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRecipient => "bad_recipient",
            Self::TooLarge => "too_large",
            Self::InboxFull => "inbox_full",
            Self::Unavailable => "unavailable",
            Self::Draining => "draining",
            Self::BadBody => "bad_body",
            Self::RateLimited => "rate_limited",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bad_recipient" => Self::BadRecipient,
            "too_large" => Self::TooLarge,
            "inbox_full" => Self::InboxFull,
            "unavailable" => Self::Unavailable,
            "draining" => Self::Draining,
            "bad_body" => Self::BadBody,
            "rate_limited" => Self::RateLimited,
            _ => return None,
        })
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the server uses, by what the client should do next.
pub mod close {
    /// Reconnect now, elsewhere: the node is going away (drain).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks RFC 6455 (unmasked, a bad opcode, ...).
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Do not reconnect the same way: the client broke a policy (sustained flooding).
    pub const POLICY: u16 = 1008;
    /// Do not resend the same frame: it was too large.
    pub const TOO_BIG: u16 = 1009;
    /// Back off, then reconnect: the server could not keep up or lost its route table.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}
