//! Incoming mesh traffic: batches forwarded by other nodes, written to this node's connections.
//! Each item is answered with how many connections got the frame and which named connections
//! this node does not hold, so that the sender can repair its route instead of losing the message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_server::Mesh;

use super::wire;
use crate::bearer;
use crate::confirm::{ConfirmStatus, Confirmation};
use crate::error::Refusal;
use crate::ids::{ConnId, NodeId};
use crate::local::LocalAttempt;
use crate::sessions::Sessions;
use crate::state::NodeState;
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
    /// Cancelled when the node stops: open streams end.
    pub shutdown: CancellationToken,
    /// `--mesh-mtls`: every Mesh call must come with a client certificate (verified by TLS).
    pub require_client_cert: bool,
    /// The whole node, for `Stats` (its figures come from every part of it).
    pub state: Arc<NodeState>,
}

impl MeshService {
    /// A call that names a node must name this one, so that a reused address never answers (or
    /// drains) for another.
    fn check_addressee(&self, named: &str) -> Result<(), Status> {
        if named == self.node.as_str() {
            Ok(())
        } else {
            Err(Refusal::WrongNode.grpc(format!("this is node {}, not {named:?}", self.node)))
        }
    }

    /// The mesh secret and, with mTLS, a verified client certificate.
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if let Some(secret) = &self.secret {
            bearer::check_grpc(req.metadata(), Some(secret), "mesh secret")?;
        }
        if self.require_client_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(
                Refusal::Unauthorized.grpc("the mesh needs a client certificate (--mesh-mtls)")
            );
        }
        Ok(())
    }
}

/// Batches answered concurrently on one stream before the node stops reading more from it.
const STREAM_IN_FLIGHT: usize = 64;

impl MeshService {
    /// Hands every item of a batch to its connections, without waiting. Called in stream order,
    /// which keeps messages from one sender in order.
    /// `peer` is the caller's address, for the log when an item is refused.
    fn start_batch(
        &self,
        batch: pb::ForwardBatch,
        peer: Option<SocketAddr>,
    ) -> Result<(u64, Vec<LocalAttempt>), Status> {
        let holder = NodeId::parse(&batch.from_node).ok();
        if batch.items.len() > MAX_ITEMS {
            return Err(Refusal::TooLarge.grpc(format!(
                "batch of {} items; at most {MAX_ITEMS}",
                batch.items.len()
            )));
        }
        let mut attempts = Vec::with_capacity(batch.items.len());
        for mut item in batch.items {
            let form = if item.frame.is_empty() {
                "envelope"
            } else if item.notice {
                "notice"
            } else {
                "frame"
            };
            self.state
                .metrics
                .mesh_items_received
                .with_label_values(&[form])
                .inc();
            let msg = match wire::from_item(&mut item) {
                Ok(msg) => msg,
                Err(e @ wire::WireError::NotMessage(_)) => {
                    // Only `message` frames pass through: anything else (a `reconnect` to
                    // another host, an `error`) is answered as written to none of the named
                    // connections, so an honest sender stores the message, and nothing reaches
                    // a client.
                    tracing::warn!(
                        from_node = %batch.from_node,
                        peer = ?peer,
                        conns = item.conn_ids.len(),
                        error = %e,
                        "refusing a forwarded frame that is not a message"
                    );
                    self.state
                        .metrics
                        .mesh_items_received
                        .with_label_values(&["refused"])
                        .inc();
                    attempts.push(LocalAttempt::gone(Vec::new()));
                    continue;
                }
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
            let mut attempt = if item.notice {
                // Only a receipt, and rebuilt here from its fields: a peer cannot put any other
                // frame in front of a client this way.
                match wire::receipt_frame(&msg.frame) {
                    Some(frame) => {
                        let attempt = LocalAttempt::notice(&self.sessions, &frame, &conns);
                        self.state
                            .metrics
                            .receipts
                            .inc_by(u64::from(attempt.notices_queued()));
                        attempt
                    }
                    None => {
                        tracing::warn!(from_node = %batch.from_node, peer = ?peer, "refusing a notice that is not a receipt");
                        self.state
                            .metrics
                            .mesh_items_received
                            .with_label_values(&["refused"])
                            .inc();
                        LocalAttempt::gone(Vec::new())
                    }
                }
            } else {
                let holder = if item.held { holder.as_ref() } else { None };
                LocalAttempt::start(&self.sessions, &msg, &conns, holder)
            };
            attempt.gone.extend(unreadable);
            attempts.push(attempt);
        }
        Ok((batch.seq, attempts))
    }
}

/// Waits for a batch's writes (until the deadline) and builds its reply.
async fn settle_batch(
    seq: u64,
    attempts: Vec<LocalAttempt>,
    write_wait: Duration,
) -> pb::ForwardReply {
    let deadline = tokio::time::Instant::now() + write_wait;
    let mut results = Vec::with_capacity(attempts.len());
    for attempt in attempts {
        let (delivered, gone) = attempt.settle(deadline).await;
        results.push(pb::ForwardResult { delivered, gone });
    }
    pb::ForwardReply {
        results,
        seq,
        confirmations: Vec::new(),
    }
}

/// The sending and receiving ends of one peer's confirmation queue.
type ConfirmQueue = (mpsc::Sender<Confirmation>, mpsc::Receiver<Confirmation>);

/// Confirmations sent in one reply, at most.
const CONFIRMATIONS_PER_REPLY: usize = 1024;

async fn next_confirmation(confirms: &mut Option<(NodeId, ConfirmQueue)>) -> Option<Confirmation> {
    match confirms {
        Some((_, (_, rx))) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A reply that only carries confirmations: `first` and whatever else is queued.
fn confirmation_reply(
    first: Confirmation,
    confirms: &mut Option<(NodeId, ConfirmQueue)>,
) -> pb::ForwardReply {
    let mut all = vec![first];
    if let Some((_, (_, rx))) = confirms {
        while all.len() < CONFIRMATIONS_PER_REPLY {
            match rx.try_recv() {
                Ok(c) => all.push(c),
                Err(_) => break,
            }
        }
    }
    pb::ForwardReply {
        results: Vec::new(),
        seq: 0,
        confirmations: all
            .into_iter()
            .map(|c| pb::Confirmation {
                id: c.id.as_str().to_owned(),
                status: match c.status {
                    ConfirmStatus::Received => pb::confirmation::Status::Received,
                    ConfirmStatus::Stored => pb::confirmation::Status::Stored,
                } as i32,
                device: c.device.as_deref().unwrap_or_default().to_owned(),
            })
            .collect(),
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::ForwardReply, Status>> + Send>>;

#[tonic::async_trait]
impl Mesh for MeshService {
    async fn forward(
        &self,
        req: Request<pb::ForwardBatch>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        self.admit(&req)?;
        let peer = req.remote_addr();
        let (seq, attempts) = self.start_batch(req.into_inner(), peer)?;
        Ok(Response::new(
            settle_batch(seq, attempts, self.write_deadline).await,
        ))
    }

    type ForwardStreamStream = ReplyStream;

    async fn forward_stream(
        &self,
        req: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.admit(&req)?;
        // A peer that names itself is met back: this node opens its own stream to it now
        // rather than with its first message (a node that just joined, see `upkeep::meet_peers`).
        if let Some(from) = req
            .metadata()
            .get(wire::FROM_NODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| NodeId::parse(v).ok())
            .filter(|n| *n != self.node)
        {
            let state = self.state.clone();
            tokio::spawn(async move {
                state.delivery.peers.warm(&[from]).await;
            });
        }
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let this = MeshService {
            sessions: self.sessions.clone(),
            secret: None,
            write_deadline: self.write_deadline,
            node: self.node.clone(),
            drain: self.drain.clone(),
            shutdown: self.shutdown.clone(),
            require_client_cert: false,
            state: self.state.clone(),
        };
        tokio::spawn(async move {
            let mut settling = FuturesOrdered::new();
            let mut open = true;
            // Confirmations for the peer at the other end go back on this stream's replies
            // (the peer is known from its first batch).
            let mut confirms: Option<(NodeId, ConfirmQueue)> = None;
            while open || !settling.is_empty() {
                tokio::select! {
                    biased;
                    _ = this.shutdown.cancelled() => break,
                    Some(reply) = settling.next(), if !settling.is_empty() => {
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                    Some(first) = next_confirmation(&mut confirms) => {
                        let reply = confirmation_reply(first, &mut confirms);
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                    batch = inbound.message(), if open && settling.len() < STREAM_IN_FLIGHT => match batch {
                        Ok(Some(batch)) => {
                            if confirms.is_none()
                                && let Ok(peer) = NodeId::parse(&batch.from_node)
                            {
                                let queue = this.state.confirms.attach(peer.clone());
                                confirms = Some((peer, queue));
                            }
                            match this.start_batch(batch, peer) {
                                Ok((seq, attempts)) => settling.push_back(settle_batch(seq, attempts, this.write_deadline)),
                                Err(status) => {
                                    let _ = tx.send(Err(status)).await;
                                    break;
                                }
                            }
                        }
                        Ok(None) => open = false,
                        Err(status) => {
                            tracing::debug!(error = %status, "mesh stream ended");
                            open = false;
                        }
                    },
                }
            }
            if let Some((peer, (queue, _))) = confirms {
                this.state.confirms.detach(&peer, &queue);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        self.admit(&req)?;
        self.check_addressee(&req.get_ref().node_id)?;
        let started = !self.drain.is_cancelled();
        tracing::info!(node = %self.node, "drain requested over the mesh");
        self.drain.cancel();
        Ok(Response::new(pb::DrainReply {
            connections: self.sessions.len() as u64,
            started,
        }))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, Status> {
        self.admit(&req)?;
        self.check_addressee(&req.get_ref().node_id)?;
        Ok(Response::new(self.state.stats()))
    }
}
