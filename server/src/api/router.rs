//! The public gRPC `Router` service: send to users, look users up, list nodes; every call needs
//! `authorization: Bearer <api-key>`.

use std::sync::Arc;

use serde_json::value::RawValue;
use tonic::{Request, Response, Status};
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::router_server::Router;

use crate::bearer;
use crate::delivery::Outcome;
use crate::envelope::Envelope;
use crate::error::{Refusal, RejectCode};
use crate::ids::{Cid, UserId};
use crate::quota::Origin;
use crate::state::NodeState;

/// Largest `SendToUsers` batch.
const MAX_BATCH: usize = 1000;

pub struct RouterService {
    pub state: Arc<NodeState>,
}

impl RouterService {
    fn auth<T>(&self, req: &Request<T>) -> Result<(), Status> {
        bearer::check_grpc(
            req.metadata(),
            self.state.config.api_key.as_deref(),
            "API key",
        )
    }

    async fn send_one(&self, m: pb::SendToUserRequest) -> pb::SendResult {
        let rejected = |code: RejectCode, message: String| pb::SendResult {
            id: String::new(),
            status: "rejected".into(),
            devices: 0,
            error_code: code.as_str().into(),
            error_message: message,
        };
        let to = match UserId::parse(&m.to) {
            Ok(u) => u,
            Err(e) => return rejected(RejectCode::BadRecipient, format!("`to`: {e}")),
        };
        if m.body_json.len() > self.state.config.max_frame_bytes {
            return rejected(RejectCode::TooLarge, "body too large".into());
        }
        let body = match RawValue::from_string(m.body_json) {
            Ok(b) => b,
            Err(e) => {
                return rejected(RejectCode::BadBody, format!("body_json is not JSON: {e}"));
            }
        };
        let from = if m.from.is_empty() {
            UserId::parse(crate::api::push::DEFAULT_SENDER).expect("valid default sender")
        } else {
            match UserId::parse(&m.from) {
                Ok(f) => f,
                Err(e) => {
                    return rejected(RejectCode::BadBody, format!("`from`: {e}"));
                }
            }
        };
        let cid = match m.cid.as_deref().map(Cid::parse).transpose() {
            Ok(cid) => cid,
            Err(e) => return rejected(RejectCode::BadField, format!("`cid`: {e}")),
        };
        let id = self.state.ids.msg_for(&from, cid.as_ref());
        let env = Envelope::new(id, from, to, body);
        let id = env.id.to_string();
        let outcome = self.state.delivery.send(env, Origin::Api).await;
        let (error_code, error_message) = match &outcome {
            Outcome::Rejected { code, message } => (code.as_str().to_owned(), message.clone()),
            _ => (String::new(), String::new()),
        };
        pb::SendResult {
            id,
            status: outcome.status().into(),
            devices: outcome.devices(),
            error_code,
            error_message,
        }
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn send_to_user(
        &self,
        req: Request<pb::SendToUserRequest>,
    ) -> Result<Response<pb::SendResult>, Status> {
        self.auth(&req)?;
        Ok(Response::new(self.send_one(req.into_inner()).await))
    }

    async fn send_to_users(
        &self,
        req: Request<pb::SendToUsersRequest>,
    ) -> Result<Response<pb::SendToUsersResponse>, Status> {
        self.auth(&req)?;
        let messages = req.into_inner().messages;
        if messages.len() > MAX_BATCH {
            return Err(Refusal::TooLarge.grpc(format!(
                "{} messages; at most {MAX_BATCH} per call",
                messages.len()
            )));
        }
        let results =
            futures_util::future::join_all(messages.into_iter().map(|m| self.send_one(m))).await;
        Ok(Response::new(pb::SendToUsersResponse { results }))
    }

    async fn lookup_user(
        &self,
        req: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::LookupUserResponse>, Status> {
        self.auth(&req)?;
        let user = UserId::parse(&req.get_ref().user)
            .map_err(|e| Refusal::BadRequest.grpc(format!("user: {e}")))?;
        let routes = self
            .state
            .routes
            .lookup(&user)
            .await
            .map_err(|e| Refusal::Unavailable.grpc(e.to_string()))?;
        Ok(Response::new(pb::LookupUserResponse {
            user: user.to_string(),
            connections: routes
                .into_iter()
                .map(|r| pb::Connection {
                    conn_id: r.conn.to_string(),
                    node_id: r.node.to_string(),
                    device: r.device.as_deref().unwrap_or("").to_owned(),
                    connected_at_ms: r.connected_at_ms,
                })
                .collect(),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.auth(&req)?;
        let nodes = self
            .state
            .nodes
            .list_nodes()
            .await
            .map_err(|e| Refusal::Unavailable.grpc(e.to_string()))?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| pb::NodeInfo {
                    node_id: n.node.to_string(),
                    grpc_addr: n.grpc_addr,
                    public_url: n.public_url,
                    connections: n.connections,
                    started_at_ms: n.started_at_ms,
                    lease_left_ms: n.lease_left_ms,
                    draining: n.draining,
                })
                .collect(),
        }))
    }
}
