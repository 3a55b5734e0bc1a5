//! Incoming mesh traffic: batches forwarded by other nodes, written to this node's connections.
//! Each item is answered with how many connections got the frame and which named connections
//! this node does not hold, so that the sender can repair its route instead of losing the message.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_server::Mesh;

use crate::delivery::LocalAttempt;
use crate::envelope::Envelope;
use crate::ids::{ConnId, NodeId};
use crate::sessions::Sessions;
use tokio_util::sync::CancellationToken;

/// Largest batch accepted from a peer; a bigger one is refused whole (peers send at most
/// `Limits::mesh_batch`).
const MAX_ITEMS: usize = 4096;

pub struct MeshService {
    pub sessions: Arc<Sessions>,
    pub secret: Option<String>,
    /// How long to wait for the connections' writers before answering.
    pub write_deadline: Duration,
    pub node: NodeId,
    /// Cancelled to ask the node to drain (`main` waits on it beside the signals).
    pub drain: CancellationToken,
}

#[tonic::async_trait]
impl Mesh for MeshService {
    async fn forward(
        &self,
        req: Request<pb::ForwardBatch>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        if let Some(secret) = &self.secret {
            super::check_bearer(req.metadata(), Some(secret), "mesh secret")?;
        }
        let batch = req.into_inner();
        if batch.items.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!(
                "batch of {} items; at most {MAX_ITEMS}",
                batch.items.len()
            )));
        }
        let mut attempts = Vec::with_capacity(batch.items.len());
        for item in batch.items {
            let env = item
                .envelope
                .ok_or(crate::envelope::EnvelopeError::Missing)
                .and_then(Envelope::try_from);
            let env = match env {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(from_node = %batch.from_node, error = %e, "refusing a malformed mesh item");
                    attempts.push(LocalAttempt::gone(item.conn_ids));
                    continue;
                }
            };
            let mut conns = Vec::with_capacity(item.conn_ids.len());
            let mut unreadable = Vec::new();
            for c in item.conn_ids {
                match ConnId::parse(&c) {
                    Ok(id) => conns.push(id),
                    Err(_) => unreadable.push(c),
                }
            }
            let mut attempt = LocalAttempt::start(&self.sessions, &env, &conns);
            attempt.gone.extend(unreadable);
            attempts.push(attempt);
        }
        let mut results = Vec::with_capacity(attempts.len());
        let deadline = tokio::time::Instant::now() + self.write_deadline;
        for attempt in attempts {
            let (delivered, gone) = attempt.settle(deadline).await;
            results.push(pb::ForwardResult { delivered, gone });
        }
        Ok(Response::new(pb::ForwardReply { results }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        if let Some(secret) = &self.secret {
            super::check_bearer(req.metadata(), Some(secret), "mesh secret")?;
        }
        if req.get_ref().node_id != self.node.as_str() {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not {:?}",
                self.node,
                req.get_ref().node_id
            )));
        }
        let started = !self.drain.is_cancelled();
        tracing::info!(node = %self.node, "drain requested over the mesh");
        self.drain.cancel();
        Ok(Response::new(pb::DrainReply {
            connections: self.sessions.len() as u64,
            started,
        }))
    }
}
