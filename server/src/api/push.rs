//! `POST /v1/users/{user}/messages`: other services push a message to a user over HTTP, behind
//! the API key, and learn its outcome like a WebSocket sender does.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::Envelope;
use crate::error::Refusal;
use crate::ids::{Cid, UserId};
use crate::quota::Origin;
use crate::state::NodeState;

/// `from` when the caller gives none.
pub const DEFAULT_SENDER: &str = "api";

#[derive(Deserialize)]
struct PushBody {
    body: Box<RawValue>,
    from: Option<String>,
    /// The caller's idempotency key: the id is derived from `from` and `cid` (docs/protocol.md, "Idempotent sends").
    cid: Option<String>,
}

pub async fn push(
    req: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
    state: web::Data<Arc<NodeState>>,
) -> HttpResponse {
    if let Some(refused) = super::api_key_refusal(&req, &state) {
        return refused;
    }
    let to = match UserId::parse(&path.into_inner()) {
        Ok(u) => u,
        Err(e) => {
            return Refusal::BadRecipient.http(&format!("user id in the path is not valid: {e}"));
        }
    };
    // Read the body up to the frame limit; refuse more without buffering it.
    let max = state.config.max_frame_bytes;
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Refusal::BadBody.http(&e.to_string()),
        };
        if buf.len() + chunk.len() > max {
            return Refusal::TooLarge.http(&format!("body larger than {max} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    let parsed: PushBody = match serde_json::from_slice(&buf) {
        Ok(p) => p,
        Err(e) => {
            return Refusal::BadBody.http(&format!(
                "expected {{\"body\": <JSON>, \"from\": \"<optional label>\", \"cid\": \"<optional key>\"}}: {e}"
            ));
        }
    };
    let from = match parsed.from.as_deref().map(UserId::parse) {
        None => UserId::parse(DEFAULT_SENDER).expect("the default sender is a valid id"),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            return Refusal::BadBody.http(&format!("`from` must follow the user id rules: {e}"));
        }
    };
    let cid = match parsed.cid.as_deref().map(Cid::parse).transpose() {
        Ok(cid) => cid,
        Err(e) => return Refusal::BadBody.http(&format!("`cid` is not valid: {e}")),
    };
    let env = Envelope::new(
        state.ids.msg_for(&from, cid.as_ref()),
        from,
        to,
        parsed.body,
    );
    let id = env.id.to_string();
    let outcome = state.delivery.send(env, Origin::Api).await;
    HttpResponse::Ok().json(super::outcome_json(&id, &outcome))
}
