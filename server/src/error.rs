//! The protocol's error vocabulary in one place: codes a client sees in `error` frames and in
//! `rejected` acks, the WebSocket close codes, grouped by what the client should do, and the
//! refusals of HTTP and gRPC calls with their statuses.

use std::fmt;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

/// An enum of codes that clients see, its `as_str` and `ALL`, from one list: a code added here
/// is in `ALL`, so the test that every code is documented (`tests/protocol_doc.rs`) sees it.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The code as clients see it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }
    };
}

codes! {
    /// Why a client frame was refused (`error` frame, docs/protocol.md).
    pub enum FrameErrorCode {
        /// Not JSON, not an object, binary, or no/unknown `type`.
        BadFrame = "bad_frame",
        /// A field is missing or of the wrong kind.
        BadField = "bad_field",
        /// Over `--max-frame-bytes`; the connection is closed with 1009.
        TooLarge = "too_large",
        /// Too many sends waiting for their outcome on this connection.
        RateLimited = "rate_limited",
        /// A `refresh` whose token is not valid, or is for another user; the session keeps its
        /// old expiry.
        Unauthorized = "unauthorized",
        /// The session's token expired; the connection is closed with 4001.
        TokenExpired = "token_expired",
        /// A `watch` that would take the connection past `--max-watch` users.
        TooMany = "too_many",
        /// A `watch` of a user the session may not watch (`--presence-policy token`).
        Forbidden = "forbidden",
    }
}

codes! {
    /// Why a message was not accepted (`rejected` ack, HTTP push, gRPC `SendResult`).
    pub enum RejectCode {
        /// `to` is not a valid user id.
        BadRecipient = "bad_recipient",
        /// The body is larger than the node accepts.
        TooLarge = "too_large",
        /// The recipient's inbox holds the maximum number of messages or bytes.
        InboxFull = "inbox_full",
        /// The sender (a user, or the API key) sent more messages to inboxes than its quota
        /// (`--max-stored-per-minute`, `--api-stored-per-minute`).
        QuotaExceeded = "quota_exceeded",
        /// The route table or the recipient's node could not be reached in time: try again later.
        Unavailable = "unavailable",
        /// The node is draining and accepts no new messages from this connection.
        Draining = "draining",
        /// The body (or the sender label) of a pushed message is not acceptable.
        BadBody = "bad_body",
        /// The connection sends faster than `--max-msgs-per-sec`.
        RateLimited = "rate_limited",
        /// A field of the send is outside its rules (a `cid` of the wrong shape).
        BadField = "bad_field",
    }
}

impl RejectCode {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
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
    /// Reconnect with a fresh token: the session's token expired (docs/protocol.md).
    pub const TOKEN_EXPIRED: u16 = 4001;

    /// Every close code above (`tests/protocol_doc.rs` checks each is documented).
    pub const ALL: &[u16] = &[
        GOING_AWAY,
        PROTOCOL,
        INVALID_PAYLOAD,
        POLICY,
        TOO_BIG,
        TRY_AGAIN_LATER,
        TOKEN_EXPIRED,
    ];
}

codes! {
    /// Why a request is refused before anything is done (an upgrade, an HTTP call, a gRPC call):
    /// the `error` code of the JSON body, the HTTP status and the gRPC status code, in one table.
    pub enum Refusal {
        /// Not what the endpoint takes (not a WebSocket handshake, a malformed argument).
        BadRequest = "bad_request",
        /// The recipient is not a valid user id.
        BadRecipient = "bad_recipient",
        /// The body (or the sender label) of a pushed message is not acceptable.
        BadBody = "bad_body",
        /// A body or a batch larger than the node accepts.
        TooLarge = "too_large",
        /// No credentials, or wrong ones (client token, API key, mesh secret, client certificate).
        Unauthorized = "unauthorized",
        /// A page from an origin that may not connect (`--allowed-origins`).
        ForbiddenOrigin = "forbidden_origin",
        /// Nothing is served there.
        NotFound = "not_found",
        /// The user holds its maximum of connections (`--max-conns-per-user`).
        TooManyConnections = "too_many_connections",
        /// This node holds its maximum of connections: ask `/gateway` for another.
        NodeFull = "node_full",
        /// Starting, draining, or the route table is away: try again, or another node.
        Unavailable = "unavailable",
        /// A call addressed to another node (a reused address).
        WrongNode = "wrong_node",
    }
}

impl Refusal {
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
