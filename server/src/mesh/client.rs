//! Outgoing mesh traffic: one long-lived HTTP/2 channel and one batching queue per peer node.
//!
//! Messages for a peer queue up while the previous batch is in flight and leave together in the
//! next call (natural batching: light load gives small fast batches, heavy load big ones). One
//! call at a time per peer keeps messages in the order they were queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_client::MeshClient;

use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::route::registry::RouteTable;

/// Messages waiting for one peer. When full, senders wait (backpressure on the sending clients)
/// rather than drop anything.
const PEER_QUEUE: usize = 8192;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MeshError {
    #[error("node {0} is not registered")]
    UnknownNode(NodeId),
    #[error("route table unavailable: {0}")]
    RouteTable(String),
    #[error("peer {node} failed: {message}")]
    Call { node: NodeId, message: String },
    #[error("peer {0} did not answer in time")]
    Timeout(NodeId),
    #[error("this node is shutting down")]
    ShuttingDown,
}

pub type ForwardReply = oneshot::Receiver<Result<pb::ForwardResult, MeshError>>;

struct Job {
    item: pb::ForwardItem,
    reply: oneshot::Sender<Result<pb::ForwardResult, MeshError>>,
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Job>,
    /// Set when a call failed: the next send re-reads the peer's address (it may have restarted
    /// elsewhere) before using this peer again.
    suspect: Arc<AtomicBool>,
}

pub struct PeerPool {
    me: NodeId,
    routes: RouteTable,
    peers: DashMap<NodeId, Peer>,
    secret: Option<Arc<str>>,
    batch_max: usize,
    call_timeout: Duration,
    metrics: Metrics,
    runtime: tokio::runtime::Handle,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl PeerPool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        routes: RouteTable,
        secret: Option<String>,
        batch_max: usize,
        call_timeout: Duration,
        metrics: Metrics,
        runtime: tokio::runtime::Handle,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            me,
            routes,
            peers: DashMap::new(),
            secret: secret.map(Arc::from),
            batch_max,
            call_timeout,
            metrics,
            runtime,
            tracker,
            cancel,
        }
    }

    /// Queues one message for a peer; the receiver resolves when the peer has answered.
    pub async fn forward(&self, node: &NodeId, item: pb::ForwardItem) -> ForwardReply {
        let (reply, rx) = oneshot::channel();
        let queue = match self.queue_for(node).await {
            Ok(q) => q,
            Err(e) => {
                let _ = reply.send(Err(e));
                return rx;
            }
        };
        if let Err(mpsc::error::SendError(job)) = queue.send(Job { item, reply }).await {
            let _ = job.reply.send(Err(MeshError::ShuttingDown));
        }
        rx
    }

    async fn queue_for(&self, node: &NodeId) -> Result<mpsc::Sender<Job>, MeshError> {
        if let Some(peer) = self.peers.get(node)
            && !peer.suspect.load(Ordering::Relaxed)
        {
            return Ok(peer.queue.clone());
        }
        let addr = self
            .routes
            .node_grpc_addr(node)
            .await
            .map_err(|e| MeshError::RouteTable(e.to_string()))?
            .filter(|a| !a.is_empty())
            .ok_or_else(|| MeshError::UnknownNode(node.clone()))?;
        let mut entry = self
            .peers
            .entry(node.clone())
            .or_insert_with(|| self.spawn_peer(node, &addr));
        if entry.addr != addr {
            tracing::info!(peer = %node, old = %entry.addr, new = %addr, "peer moved; new channel");
            *entry = self.spawn_peer(node, &addr);
        } else {
            entry.suspect.store(false, Ordering::Relaxed);
        }
        Ok(entry.queue.clone())
    }

    fn spawn_peer(&self, node: &NodeId, addr: &str) -> Peer {
        let (queue, rx) = mpsc::channel(PEER_QUEUE);
        let suspect = Arc::new(AtomicBool::new(false));
        let worker = PeerWorker {
            me: self.me.clone(),
            node: node.clone(),
            client: mesh_client(addr, self.secret.clone()),
            batch_max: self.batch_max,
            call_timeout: self.call_timeout,
            metrics: self.metrics.clone(),
            suspect: suspect.clone(),
        };
        let cancel = self.cancel.clone();
        self.tracker.spawn_on(worker.run(rx, cancel), &self.runtime);
        Peer {
            addr: addr.to_owned(),
            queue,
            suspect,
        }
    }

    /// Forgets a peer (it died or left); its worker ends once its queue is drained.
    pub fn forget(&self, node: &NodeId) {
        self.peers.remove(node);
    }
}

type Client =
    MeshClient<tonic::service::interceptor::InterceptedService<Channel, BearerInterceptor>>;

/// Adds the mesh secret to every outgoing call.
#[derive(Clone)]
pub struct BearerInterceptor(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(super::AUTH_HEADER, v.clone());
        }
        Ok(req)
    }
}

fn mesh_client(addr: &str, secret: Option<Arc<str>>) -> Client {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://0.0.0.0:1"))
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let header = secret.and_then(|s| format!("Bearer {s}").parse().ok());
    MeshClient::with_interceptor(endpoint.connect_lazy(), BearerInterceptor(header))
}

struct PeerWorker {
    me: NodeId,
    node: NodeId,
    client: Client,
    batch_max: usize,
    call_timeout: Duration,
    metrics: Metrics,
    suspect: Arc<AtomicBool>,
}

impl PeerWorker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
        let mut jobs = Vec::with_capacity(self.batch_max);
        loop {
            let first = tokio::select! {
                biased;
                j = rx.recv() => j,
                _ = cancel.cancelled() => None,
            };
            let Some(first) = first else {
                // Shutting down or forgotten: fail whatever is still queued, honestly.
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Err(MeshError::ShuttingDown));
                }
                return;
            };
            jobs.push(first);
            while jobs.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.call(&mut jobs).await;
        }
    }

    async fn call(&mut self, jobs: &mut Vec<Job>) {
        self.metrics.mesh_batch_size.observe(jobs.len() as f64);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut items = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            items.push(job.item);
            replies.push(job.reply);
        }
        let batch = pb::ForwardBatch {
            from_node: self.me.to_string(),
            items,
        };
        let outcome = tokio::time::timeout(self.call_timeout, self.client.forward(batch)).await;
        let error = match outcome {
            Ok(Ok(resp)) => {
                let results = resp.into_inner().results;
                if results.len() == replies.len() {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                    return;
                }
                MeshError::Call {
                    node: self.node.clone(),
                    message: format!(
                        "answered {} results for {} items",
                        results.len(),
                        replies.len()
                    ),
                }
            }
            Ok(Err(status)) => MeshError::Call {
                node: self.node.clone(),
                message: format!("{:?}: {}", status.code(), status.message()),
            },
            Err(_) => MeshError::Timeout(self.node.clone()),
        };
        self.metrics.mesh_errors.inc();
        self.suspect.store(true, Ordering::Relaxed);
        tracing::warn!(peer = %self.node, error = %error, messages = replies.len(), "mesh forward failed");
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }
}
