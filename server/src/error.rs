//! The protocol's error vocabulary in one place: codes a client sees in `error` frames and in
//! `rejected` acks, the WebSocket close codes, grouped by what the client should do, and the
//! refusals of HTTP and gRPC calls with their statuses.

use std::fmt;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

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
    /// A `refresh` whose token is not valid, or is for another user; the session keeps its
    /// old expiry.
    Unauthorized,
    /// The session's token expired; the connection is closed with 4001.
    TokenExpired,
    /// A `watch` that would take the connection past `--max-watch` users (PROTOCOL.md 7.3).
    TooMany,
    /// A `watch` of a user the session may not watch (`--presence-policy token`).
    Forbidden,
}

impl FrameErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::BadField => "bad_field",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::TooMany => "too_many",
            Self::Forbidden => "forbidden",
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
    /// The recipient's inbox holds the maximum number of messages or bytes.
    InboxFull,
    /// The sender (a user, or the API key) sent more messages to inboxes than its quota
    /// (`--max-stored-per-minute`, `--api-stored-per-minute`).
    QuotaExceeded,
    /// The route table or the recipient's node could not be reached in time: try again later.
    Unavailable,
    /// The node is draining and accepts no new messages from this connection.
    Draining,
    /// The body (or the sender label) of a pushed message is not acceptable.
    BadBody,
    /// The connection sends faster than `--max-msgs-per-sec`.
    RateLimited,
    /// A field of the send is outside its rules (a `cid` of the wrong shape).
    BadField,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRecipient => "bad_recipient",
            Self::TooLarge => "too_large",
            Self::InboxFull => "inbox_full",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Unavailable => "unavailable",
            Self::Draining => "draining",
            Self::BadBody => "bad_body",
            Self::RateLimited => "rate_limited",
            Self::BadField => "bad_field",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bad_recipient" => Self::BadRecipient,
            "too_large" => Self::TooLarge,
            "inbox_full" => Self::InboxFull,
            "quota_exceeded" => Self::QuotaExceeded,
            "unavailable" => Self::Unavailable,
            "draining" => Self::Draining,
            "bad_body" => Self::BadBody,
            "rate_limited" => Self::RateLimited,
            "bad_field" => Self::BadField,
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
    /// Reconnect with a fresh token: the session's token expired (PROTOCOL 7.5).
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Why a request is refused before anything is done (an upgrade, an HTTP call, a gRPC call):
/// the `error` code of the JSON body, the HTTP status and the gRPC status code, in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not what the endpoint takes (not a WebSocket handshake, a malformed argument).
    BadRequest,
    /// The recipient is not a valid user id.
    BadRecipient,
    /// The body (or the sender label) of a pushed message is not acceptable.
    BadBody,
    /// A body or a batch larger than the node accepts.
    TooLarge,
    /// No credentials, or wrong ones (client token, API key, mesh secret, client certificate).
    Unauthorized,
    /// A page from an origin that may not connect (`--allowed-origins`).
    ForbiddenOrigin,
    /// Nothing is served there.
    NotFound,
    /// The user holds its maximum of connections (`--max-conns-per-user`).
    TooManyConnections,
    /// This node holds its maximum of connections: ask `/gateway` for another.
    NodeFull,
    /// Starting, draining, or the route table is away: try again, or another node.
    Unavailable,
    /// A call addressed to another node (a reused address).
    WrongNode,
}

impl Refusal {
    /// The `error` code of the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadRecipient => "bad_recipient",
            Self::BadBody => "bad_body",
            Self::TooLarge => "too_large",
            Self::Unauthorized => "unauthorized",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::NotFound => "not_found",
            Self::TooManyConnections => "too_many_connections",
            Self::NodeFull => "node_full",
            Self::Unavailable => "unavailable",
            Self::WrongNode => "wrong_node",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::BadRecipient | Self::BadBody => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            Self::NodeFull | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::WrongNode => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadRequest | Self::BadRecipient | Self::BadBody | Self::TooLarge => {
                tonic::Code::InvalidArgument
            }
            Self::Unauthorized => tonic::Code::Unauthenticated,
            Self::ForbiddenOrigin => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::TooManyConnections => tonic::Code::ResourceExhausted,
            Self::NodeFull | Self::Unavailable => tonic::Code::Unavailable,
            Self::WrongNode => tonic::Code::FailedPrecondition,
        }
    }

    /// The HTTP answer: this status and `{"error": code, "message": message}`. Every HTTP error
    /// the node answers is built here.
    pub fn http(self, message: &str) -> HttpResponse {
        HttpResponse::build(self.http_status())
            .json(serde_json::json!({ "error": self.as_str(), "message": message }))
    }

    /// The gRPC answer: this status code and `message`.
    pub fn grpc(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_answers_the_same_on_http_and_grpc() {
        let r = Refusal::Unavailable.http("route table unavailable");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let s = Refusal::Unavailable.grpc("route table unavailable");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.message(), "route table unavailable");
        assert_eq!(
            Refusal::TooLarge.http_status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            Refusal::WrongNode.grpc_code(),
            tonic::Code::FailedPrecondition
        );
    }
}
