//! Outgoing mesh traffic: one long-lived HTTP/2 channel and one batching queue per peer node.
//!
//! Messages for a peer queue up and leave together as one batch on a long-lived bidirectional
//! stream (natural batching: light load gives small fast batches, heavy load big ones). Batches
//! go out back to back without waiting for earlier replies; the peer hands them to its
//! connections in stream order, which keeps each sender's messages in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Instrument;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use wsroute_core::nodes::NodeReader;
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_client::MeshClient;

use super::wire::{self, Forwarded, ItemKind};
use crate::confirm::{ConfirmStatus, Confirmation};
use crate::envelope::Outgoing;
use crate::holds::{Held, Holds};
use crate::ids::{MsgId, NodeId, UserId};
use crate::metrics::Metrics;

/// Messages waiting for one peer. When full, a sender waits for room (backpressure on the
/// sending clients) for at most the call timeout; then its forward fails with
/// [`MeshError::Timeout`] and the sender repairs the route or stores the message. Nothing is
/// dropped unanswered.
const PEER_QUEUE: usize = 8192;

/// After a stream to a peer could not be opened, batches for it fail at once for this long
/// instead of each waiting for another attempt: a peer that accepts connections but answers
/// nothing (frozen, overloaded) would otherwise cost every queued message a whole call timeout,
/// one batch after another, past the senders' deadline.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

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
    #[error("peer {0} is not reading its mesh stream")]
    Stalled(NodeId),
    #[error("a message of {bytes} bytes is over the mesh's limit of {limit} bytes per batch")]
    TooLarge { bytes: usize, limit: usize },
    #[error("this node is shutting down")]
    ShuttingDown,
}

/// Resolves when the peer has answered for one message.
pub type ForwardReply = oneshot::Receiver<Result<Forwarded, MeshError>>;

struct Job {
    item: pb::ForwardItem,
    /// What the item adds to an encoded `ForwardBatch` (computed once, by the sender).
    bytes: usize,
    reply: oneshot::Sender<Result<Forwarded, MeshError>>,
    /// For a held message, what is held once the peer writes it, until confirmed.
    held: Option<ToHold>,
}

/// The bytes a batch's own fields take, at most: `from_node` (a node id) and `seq`.
const BATCH_HEADER_BYTES: usize = 512;

/// What `item` adds to an encoded `ForwardBatch`: its field tag, its length, itself.
fn batch_bytes(item: &pb::ForwardItem) -> usize {
    let len = prost::Message::encoded_len(item);
    1 + prost::length_delimiter_len(len) + len
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Job>,
    /// Set when a call failed: the next send re-reads the peer's address (it may have restarted
    /// elsewhere) before using this peer again.
    suspect: Arc<AtomicBool>,
    /// Whether the worker holds an open stream to the peer (shown by `Mesh.Stats`).
    stream_up: Arc<AtomicBool>,
    /// What the peer's mesh protocol reads and answers.
    proto: wire::PeerProto,
}

/// What `Mesh.Stats` says about one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub node: NodeId,
    pub addr: String,
    pub stream_up: bool,
    pub suspect: bool,
}

pub struct PeerPool {
    me: NodeId,
    /// Where to dial a peer met for the first time (or moved).
    nodes: NodeReader,
    peers: DashMap<NodeId, Peer, foldhash::quality::RandomState>,
    secret: Option<Arc<str>>,
    /// TLS for dialling peers (`https://`), when the node runs its gRPC listener with TLS.
    tls: Option<tonic::transport::ClientTlsConfig>,
    batch_max: usize,
    call_timeout: Duration,
    metrics: Metrics,
    /// Where peer workers run until the mesh thread is known.
    runtime: tokio::runtime::Handle,
    /// The HTTP worker thread that runs the mesh server (and the client sessions beside it):
    /// peer workers are spawned there once it is set, so that a forward and its reply wake no
    /// other thread.
    mesh_thread: Arc<OnceLock<tokio::runtime::Handle>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Messages peers wrote to their recipients' connections, held until confirmed.
    holds: Arc<Holds>,
}

impl PeerPool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        nodes: NodeReader,
        secret: Option<String>,
        tls: Option<tonic::transport::ClientTlsConfig>,
        batch_max: usize,
        call_timeout: Duration,
        metrics: Metrics,
        runtime: tokio::runtime::Handle,
        tracker: TaskTracker,
        cancel: CancellationToken,
        holds: Arc<Holds>,
    ) -> Self {
        Self {
            me,
            nodes,
            peers: DashMap::default(),
            secret: secret.map(Arc::from),
            tls,
            batch_max,
            call_timeout,
            metrics,
            runtime,
            mesh_thread: Arc::default(),
            tracker,
            cancel,
            holds,
        }
    }

    /// Whether the mesh thread is known (peer workers can be started there).
    pub fn mesh_thread_known(&self) -> bool {
        self.mesh_thread.get().is_some()
    }

    /// The cell the node sets to the mesh thread's runtime once the gRPC server runs there.
    pub fn mesh_thread(&self) -> Arc<OnceLock<tokio::runtime::Handle>> {
        self.mesh_thread.clone()
    }

    /// Queues one message for the peer's connections `conn_ids`; the receiver resolves when the
    /// peer has answered. A message for `to` (`kind` Held) is held once the peer wrote it, until
    /// the peer confirms what became of it; a notice is not.
    pub async fn forward(
        &self,
        node: &NodeId,
        msg: &Outgoing,
        conn_ids: Vec<String>,
        kind: ItemKind,
        to: &UserId,
    ) -> ForwardReply {
        let (reply, rx) = oneshot::channel();
        // The known peer is found without waiting; only a new or suspect one reads Redis, in a
        // boxed future so that every send's future stays small.
        let known = self.known_queue(node);
        let found = match known {
            Some(q) => Ok(q),
            None => Box::pin(self.queue_for(node)).await,
        };
        let (queue, proto) = match found {
            Ok(q) => q,
            Err(e) => {
                let _ = reply.send(Err(e));
                return rx;
            }
        };
        // A peer that does not confirm is not sent holds (nor notices, which it would write as
        // messages).
        let kind = match kind {
            ItemKind::Held if !proto.confirms => ItemKind::Plain,
            ItemKind::Notice if !proto.confirms => {
                let _ = reply.send(Ok(Forwarded::default()));
                return rx;
            }
            k => k,
        };
        // Taken from the message's checked fields (shared, not copied), not read back from the item.
        let held = match (&msg.from, kind) {
            (Some(from), ItemKind::Held) => Some(ToHold {
                id: msg.id.clone(),
                to: to.clone(),
                from: from.clone(),
                frame: msg.frame.clone(),
            }),
            _ => None,
        };
        let item = wire::to_item(msg, conn_ids, kind);
        let item = if proto.frames {
            item
        } else {
            wire::legacy_item(item)
        };
        // No batch may pass what the peer decodes: a message that cannot fit even alone fails
        // here, honestly, rather than breaking the stream for every message on it.
        let bytes = batch_bytes(&item);
        if bytes + BATCH_HEADER_BYTES > wire::MAX_BATCH_BYTES {
            let _ = reply.send(Err(MeshError::TooLarge {
                bytes,
                limit: wire::MAX_BATCH_BYTES,
            }));
            return rx;
        }
        // The peer's queue usually has room; waiting for room (backpressure) is the rare path,
        // bounded by the call timeout and boxed so that every send's future stays small.
        let refused = match queue.try_send(Job {
            item,
            bytes,
            reply,
            held,
        }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(job)) => Some((job, MeshError::ShuttingDown)),
            Err(mpsc::error::TrySendError::Full(job)) => {
                Box::pin(wait_for_room(&queue, job, self.call_timeout, node)).await
            }
        };
        if let Some((job, e)) = refused {
            let _ = job.reply.send(Err(e));
        }
        rx
    }

    fn known_queue(&self, node: &NodeId) -> Option<(mpsc::Sender<Job>, wire::PeerProto)> {
        let peer = self.peers.get(node)?;
        (!peer.suspect.load(Ordering::Relaxed)).then(|| (peer.queue.clone(), peer.proto))
    }

    async fn queue_for(
        &self,
        node: &NodeId,
    ) -> Result<(mpsc::Sender<Job>, wire::PeerProto), MeshError> {
        if let Some(known) = self.known_queue(node) {
            return Ok(known);
        }
        let endpoint = self
            .nodes
            .mesh_endpoint(node)
            .await
            .map_err(|e| MeshError::RouteTable(e.to_string()))?
            .filter(|e| !e.grpc_addr.is_empty())
            .ok_or_else(|| MeshError::UnknownNode(node.clone()))?;
        let addr = endpoint.grpc_addr;
        // What it reads and answers, from the mesh protocol it announces.
        let proto = wire::PeerProto::announced(endpoint.protocol.as_deref());
        let mut entry = self
            .peers
            .entry(node.clone())
            .or_insert_with(|| self.spawn_peer(node, &addr, proto));
        if entry.addr != addr {
            tracing::info!(peer = %node, old = %entry.addr, new = %addr, "peer moved; new channel");
            *entry = self.spawn_peer(node, &addr, proto);
        } else {
            // A peer restarted in place may have been upgraded: take what it announces now.
            entry.proto = proto;
            entry.suspect.store(false, Ordering::Relaxed);
        }
        Ok((entry.queue.clone(), entry.proto))
    }

    fn spawn_peer(&self, node: &NodeId, addr: &str, proto: wire::PeerProto) -> Peer {
        let (queue, rx) = mpsc::channel(PEER_QUEUE);
        let suspect = Arc::new(AtomicBool::new(false));
        let stream_up = Arc::new(AtomicBool::new(false));
        let (dial, secret, tls) = (addr.to_owned(), self.secret.clone(), self.tls.clone());
        let mut worker = PeerWorker {
            me: self.me.clone(),
            node: node.clone(),
            client: None,
            batch_max: self.batch_max,
            call_timeout: self.call_timeout,
            metrics: self.metrics.clone(),
            suspect: suspect.clone(),
            stream_up: stream_up.clone(),
            holds: self.holds.clone(),
            reopen_at: None,
        };
        let cancel = self.cancel.clone();
        let span = tracing::info_span!("peer", node = %self.me, peer = %node);
        let runtime = self.mesh_thread.get().unwrap_or(&self.runtime);
        // The channel is made on the worker's own thread, whoever met the peer: making it
        // spawns its connection's tasks on the runtime it is made on, and a channel made on
        // the node's runtime (by `warm`, called from a background loop) would cost a hop
        // between threads for every batch (measured: +4% instructions on that node).
        let run = async move {
            worker.client = Some(mesh_client(&dial, secret, tls));
            worker.run(rx, cancel).await
        };
        self.tracker.spawn_on(run.instrument(span), runtime);
        Peer {
            addr: addr.to_owned(),
            queue,
            suspect,
            stream_up,
            proto,
        }
    }

    /// Meets the peers in `nodes` this node has not met yet: each gets its worker, which opens
    /// its stream at once, so that the first message to a peer does not wait for that. Does
    /// nothing (`None`) until the mesh thread is known: workers are spawned there (see
    /// `mesh_thread`). Returns how many peers it met.
    pub async fn warm(&self, nodes: &[NodeId]) -> Option<usize> {
        self.mesh_thread.get()?;
        let mut met = 0;
        for node in nodes {
            if *node == self.me || self.peers.contains_key(node) {
                continue;
            }
            match self.queue_for(node).await {
                Ok(_) => met += 1,
                Err(e) => tracing::debug!(peer = %node, error = %e, "cannot meet a peer yet"),
            }
        }
        Some(met)
    }

    /// Whether this node's last attempt to reach `node` over the mesh failed (and nothing has
    /// re-resolved it since): a node to not send clients to.
    pub fn unreachable(&self, node: &NodeId) -> bool {
        self.peers
            .get(node)
            .is_some_and(|p| p.suspect.load(Ordering::Relaxed))
    }

    /// Every peer this node has dialled, and the state of its link.
    pub fn status(&self) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|p| PeerStatus {
                node: p.key().clone(),
                addr: p.addr.clone(),
                stream_up: p.stream_up.load(Ordering::Relaxed),
                suspect: p.suspect.load(Ordering::Relaxed),
            })
            .collect();
        peers.sort_by(|a, b| a.node.as_str().cmp(b.node.as_str()));
        peers
    }

    /// The peers this node has dialled that say (`Mesh.Stats`, within the call timeout) they take
    /// clients: `(connections, public url)` each. Asks nothing of Redis: for a node that cannot
    /// reach it, to learn whether other nodes can.
    pub async fn takers(&self) -> Vec<(u64, String)> {
        let peers: Vec<(NodeId, String)> = self
            .peers
            .iter()
            .map(|p| (p.key().clone(), p.addr.clone()))
            .collect();
        let asks = peers.into_iter().map(|(node, addr)| {
            let mut client = mesh_client(&addr, self.secret.clone(), self.tls.clone());
            let timeout = self.call_timeout;
            async move {
                let req = pb::StatsRequest {
                    node_id: node.to_string(),
                };
                let reply = tokio::time::timeout(timeout, client.stats(req)).await;
                match reply {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        (r.accepting && !r.draining).then_some((r.connections, r.public_url))
                    }
                    _ => None,
                }
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Forgets a peer (it died or left); its worker ends once its queue is drained.
    pub fn forget(&self, node: &NodeId) {
        self.peers.remove(node);
    }
}

/// Queues `job` once the peer's queue has room, waiting at most `limit`; hands the job back
/// with the reason when it cannot.
async fn wait_for_room(
    queue: &mpsc::Sender<Job>,
    job: Job,
    limit: Duration,
    node: &NodeId,
) -> Option<(Job, MeshError)> {
    match tokio::time::timeout(limit, queue.reserve()).await {
        Ok(Ok(permit)) => {
            permit.send(job);
            None
        }
        Ok(Err(_)) => Some((job, MeshError::ShuttingDown)),
        Err(_) => Some((job, MeshError::Timeout(node.clone()))),
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
            req.metadata_mut()
                .insert(crate::bearer::AUTH_HEADER, v.clone());
        }
        Ok(req)
    }
}

fn mesh_client(
    addr: &str,
    secret: Option<Arc<str>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Client {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://0.0.0.0:1"));
    if let Some(tls) = tls {
        endpoint = match endpoint.clone().tls_config(tls) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(peer = %addr, error = %e, "cannot use TLS for this peer; calls to it will fail");
                endpoint
            }
        };
    }
    let endpoint = endpoint
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
    /// Made when the worker starts, on its thread (see `PeerPool::spawn_peer`).
    client: Option<Client>,
    batch_max: usize,
    call_timeout: Duration,
    metrics: Metrics,
    suspect: Arc<AtomicBool>,
    stream_up: Arc<AtomicBool>,
    holds: Arc<Holds>,
    /// Set when a stream could not be opened: until then, batches fail at once (see
    /// [`REOPEN_BACKOFF`]).
    reopen_at: Option<tokio::time::Instant>,
}

/// The peer's queue, taken from in batches bounded by count and by encoded bytes.
struct Batcher {
    rx: mpsc::Receiver<Job>,
    /// The job that did not fit in the last batch: it opens the next one.
    carry: Option<Job>,
}

impl Batcher {
    /// The next batch: at least one job (waiting for it), then whatever is queued, up to `max`
    /// jobs and [`wire::BATCH_TARGET_BYTES`] (a job bigger than that goes alone). `None` once
    /// the queue is closed and empty. Cancel-safe: the only wait is for the first job.
    async fn next(&mut self, max: usize) -> Option<Vec<Job>> {
        let first = match self.carry.take() {
            Some(job) => job,
            None => self.rx.recv().await?,
        };
        let mut bytes = BATCH_HEADER_BYTES + first.bytes;
        let mut jobs = vec![first];
        while jobs.len() < max {
            let Ok(job) = self.rx.try_recv() else {
                break;
            };
            if bytes + job.bytes > wire::BATCH_TARGET_BYTES {
                self.carry = Some(job);
                break;
            }
            bytes += job.bytes;
            jobs.push(job);
        }
        Some(jobs)
    }

    /// Closes the queue and hands back every job still in it.
    fn close(&mut self) -> Vec<Job> {
        self.rx.close();
        let mut left: Vec<Job> = self.carry.take().into_iter().collect();
        while let Ok(job) = self.rx.try_recv() {
            left.push(job);
        }
        left
    }
}

/// Batches sent on a peer's stream and not yet answered, at most.
const BATCHES_IN_FLIGHT: usize = 32;

/// An open `ForwardStream` to the peer.
struct Link {
    batches: mpsc::Sender<pb::ForwardBatch>,
    replies: tonic::Streaming<pb::ForwardReply>,
}

/// A batch on the wire, waiting for its reply.
struct InFlightBatch {
    seq: u64,
    replies: Vec<oneshot::Sender<Result<Forwarded, MeshError>>>,
    /// Per item, what to hold once the peer wrote it (held messages only).
    holds: Vec<Option<ToHold>>,
    sent_at: tokio::time::Instant,
}

/// A held message on the wire: what is kept if the peer writes it.
struct ToHold {
    id: MsgId,
    to: UserId,
    from: UserId,
    frame: bytestring::ByteString,
}

impl PeerWorker {
    /// Sends batches back to back on one stream (up to `BATCHES_IN_FLIGHT` unanswered) and
    /// matches replies in order. Any failure fails every unanswered batch honestly and the
    /// stream is opened again for the next batch.
    async fn run(mut self, rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
        let mut queue = Batcher { rx, carry: None };
        let mut link: Option<Link> = None;
        let mut waiting: VecDeque<InFlightBatch> = VecDeque::new();
        let mut seq = 0u64;
        // The stream opens now rather than with the first batch, so that the first messages
        // do not wait for it (under load, past their deadline: they would be stored instead of
        // delivered). A failure here is retried with the first batch, as any other.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = self.ensure_link(&mut link, 0) => {}
        }
        loop {
            let oldest = waiting.front().map(|b| b.sent_at + self.call_timeout);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.fail(&mut waiting, &MeshError::ShuttingDown);
                    for job in queue.close() {
                        let _ = job.reply.send(Err(MeshError::ShuttingDown));
                    }
                    return;
                }
                reply = next_reply(&mut link), if link.is_some() => {
                    match reply {
                        Some(Ok(reply)) if reply.seq == 0 && reply.results.is_empty() => {
                            self.confirmed(reply.confirmations);
                        }
                        Some(Ok(reply)) => {
                            let Some(batch) = waiting.pop_front() else {
                                let e = self.call_error(format!("answered batch {} that was never sent", reply.seq));
                                self.broken(&mut link, &mut waiting, e);
                                continue;
                            };
                            if reply.seq != batch.seq || reply.results.len() != batch.replies.len() {
                                let e = self.call_error(format!(
                                    "answered batch {} with {} results for batch {} of {}",
                                    reply.seq, reply.results.len(), batch.seq, batch.replies.len()
                                ));
                                waiting.push_front(batch);
                                self.broken(&mut link, &mut waiting, e);
                                continue;
                            }
                            self.metrics
                                .mesh_forward_latency
                                .observe(batch.sent_at.elapsed().as_secs_f64());
                            self.answered(batch, reply);
                        }
                        Some(Err(status)) => {
                            let e = self.call_error(format!("{:?}: {}", status.code(), status.message()));
                            self.broken(&mut link, &mut waiting, e);
                        }
                        None => {
                            let e = self.call_error("stream closed".into());
                            self.broken(&mut link, &mut waiting, e);
                        }
                    }
                }
                _ = sleep_until(oldest), if oldest.is_some() => {
                    let e = MeshError::Timeout(self.node.clone());
                    self.broken(&mut link, &mut waiting, e);
                }
                jobs = queue.next(self.batch_max), if waiting.len() < BATCHES_IN_FLIGHT => {
                    let Some(jobs) = jobs else {
                        // Forgotten by the pool: answer what is on the wire, then stop.
                        while !waiting.is_empty() {
                            match tokio::time::timeout(self.call_timeout, next_reply(&mut link)).await {
                                Ok(Some(Ok(reply))) if reply.seq == 0 && reply.results.is_empty() => {
                                    self.confirmed(reply.confirmations);
                                }
                                Ok(Some(Ok(reply))) => {
                                    let batch = waiting.pop_front().expect("not empty");
                                    self.answered(batch, reply);
                                }
                                _ => break,
                            }
                        }
                        self.fail(&mut waiting, &MeshError::ShuttingDown);
                        return;
                    };
                    self.send(&mut link, &mut waiting, &mut seq, jobs).await;
                }
            }
        }
    }

    async fn send(
        &mut self,
        link: &mut Option<Link>,
        waiting: &mut VecDeque<InFlightBatch>,
        seq: &mut u64,
        jobs: Vec<Job>,
    ) {
        self.metrics.mesh_batch_size.observe(jobs.len() as f64);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut items = Vec::with_capacity(jobs.len());
        let mut holds = Vec::with_capacity(jobs.len());
        for job in jobs {
            holds.push(job.held);
            items.push(job.item);
            replies.push(job.reply);
        }
        if let Err(e) = self.ensure_link(link, replies.len()).await {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
            return;
        }
        *seq += 1;
        let batch = pb::ForwardBatch {
            from_node: self.me.as_str().to_owned(),
            items,
            seq: *seq,
        };
        // Never waits: a peer that stopped reading must not keep this loop from its timeouts
        // (and the senders past their deadline). The stream holds as many batches as may be in
        // flight, so a full one means the peer has stopped reading: the stream is given up.
        let sent = match link.as_ref() {
            Some(l) => l.batches.try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => MeshError::Stalled(self.node.clone()),
                mpsc::error::TrySendError::Closed(_) => self.call_error("stream closed".into()),
            }),
            None => Err(self.call_error("stream closed".into())),
        };
        waiting.push_back(InFlightBatch {
            seq: *seq,
            replies,
            holds,
            sent_at: tokio::time::Instant::now(),
        });
        if let Err(e) = sent {
            self.broken(link, waiting, e);
        }
    }

    /// Opens the stream unless it is open, for a batch of `messages` (0: opened ahead of the
    /// first message, see [`PeerPool::warm`]).
    async fn ensure_link(
        &mut self,
        link: &mut Option<Link>,
        messages: usize,
    ) -> Result<(), MeshError> {
        if link.is_some() {
            return Ok(());
        }
        // A peer that could not be reached a moment ago is not waited for again yet.
        let opened = match self.reopen_at {
            Some(at) if tokio::time::Instant::now() < at => {
                Err(self.call_error("no stream (the last attempt failed); retrying shortly".into()))
            }
            _ => self.open().await,
        };
        match opened {
            Ok(l) => {
                *link = Some(l);
                self.reopen_at = None;
                self.stream_up.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.metrics.mesh_errors.inc();
                self.suspect.store(true, Ordering::Relaxed);
                if self
                    .reopen_at
                    .is_none_or(|at| tokio::time::Instant::now() >= at)
                {
                    self.reopen_at = Some(tokio::time::Instant::now() + REOPEN_BACKOFF);
                    tracing::warn!(peer = %self.node, error = %e, messages, "mesh stream cannot open");
                }
                Err(e)
            }
        }
    }

    async fn open(&mut self) -> Result<Link, MeshError> {
        let (batches, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        // Who opens it, so that the peer can open its own stream back at once.
        if let Ok(me) = self.me.as_str().parse() {
            request.metadata_mut().insert(wire::FROM_NODE, me);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(self.call_error("no channel yet".into()));
        };
        let call = client.forward_stream(request);
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(resp)) => Ok(Link {
                batches,
                replies: resp.into_inner(),
            }),
            Ok(Err(status)) => {
                Err(self.call_error(format!("{:?}: {}", status.code(), status.message())))
            }
            Err(_) => Err(MeshError::Timeout(self.node.clone())),
        }
    }

    fn call_error(&self, message: String) -> MeshError {
        MeshError::Call {
            node: self.node.clone(),
            message,
        }
    }

    /// A batch was answered: hold what the peer wrote, then tell each sender.
    fn answered(&self, batch: InFlightBatch, reply: pb::ForwardReply) {
        for ((r, result), hold) in batch
            .replies
            .into_iter()
            .zip(reply.results)
            .zip(batch.holds)
        {
            if let Some(h) = hold
                && result.delivered > 0
            {
                self.holds.hold(
                    h.id,
                    Held {
                        to: h.to,
                        from: h.from,
                        frame: h.frame,
                        peer: self.node.clone(),
                        since: tokio::time::Instant::now(),
                    },
                );
            }
            let _ = r.send(Ok(result.into()));
        }
        self.confirmed(reply.confirmations);
    }

    /// The peer says what became of held messages.
    fn confirmed(&self, confirmations: Vec<pb::Confirmation>) {
        for c in confirmations {
            let Ok(id) = MsgId::parse(&c.id) else {
                tracing::debug!(peer = %self.node, id = %c.id, "ignoring a confirmation with a bad id");
                continue;
            };
            let status = match pb::confirmation::Status::try_from(c.status) {
                Ok(pb::confirmation::Status::Stored) => ConfirmStatus::Stored,
                _ => ConfirmStatus::Received,
            };
            self.holds.confirm(Confirmation {
                id,
                status,
                device: (!c.device.is_empty()).then(|| Arc::from(c.device.as_str())),
            });
        }
    }

    /// The stream failed: every unanswered batch fails, and the next batch opens a new stream.
    /// What the peer holds for this node's held messages may not survive it: they are stored.
    fn broken(&self, link: &mut Option<Link>, waiting: &mut VecDeque<InFlightBatch>, e: MeshError) {
        self.holds.peer_lost(&self.node);
        *link = None;
        self.stream_up.store(false, Ordering::Relaxed);
        self.metrics.mesh_errors.inc();
        self.suspect.store(true, Ordering::Relaxed);
        let messages: usize = waiting.iter().map(|b| b.replies.len()).sum();
        tracing::warn!(peer = %self.node, error = %e, messages, "mesh forward failed");
        self.fail(waiting, &e);
    }

    fn fail(&self, waiting: &mut VecDeque<InFlightBatch>, e: &MeshError) {
        for batch in waiting.drain(..) {
            for r in batch.replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

async fn next_reply(link: &mut Option<Link>) -> Option<Result<pb::ForwardReply, tonic::Status>> {
    match link {
        Some(l) => l.replies.message().await.transpose(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(frame_bytes: usize) -> Job {
        let item = pb::ForwardItem {
            frame: vec![b'x'; frame_bytes].into(),
            id: "m".into(),
            ..Default::default()
        };
        Job {
            bytes: batch_bytes(&item),
            item,
            reply: oneshot::channel().0,
            held: None,
        }
    }

    async fn batches(sizes: &[usize], max: usize) -> Vec<usize> {
        let (tx, rx) = mpsc::channel(sizes.len());
        for &s in sizes {
            tx.try_send(job(s)).expect("room");
        }
        drop(tx);
        let mut q = Batcher { rx, carry: None };
        let mut out = Vec::new();
        while let Some(b) = q.next(max).await {
            let bytes: usize = b.iter().map(|j| j.bytes).sum();
            assert!(
                b.len() == 1 || bytes + BATCH_HEADER_BYTES <= wire::BATCH_TARGET_BYTES,
                "a batch of {} jobs and {bytes} bytes",
                b.len()
            );
            out.push(b.len());
        }
        out
    }

    #[tokio::test]
    async fn batches_are_bounded_by_bytes_and_by_count() {
        // 60 KiB frames: 17 fit in 1 MiB with their overhead, not 18; nothing is left behind.
        let sizes = vec![60 * 1024; 40];
        assert_eq!(batches(&sizes, 512).await, vec![17, 17, 6]);
        // Small ones: the count bounds.
        assert_eq!(batches(&[10; 5], 2).await, vec![2, 2, 1]);
        // One bigger than a batch goes alone, between its neighbours.
        let big = 2 * wire::BATCH_TARGET_BYTES;
        assert_eq!(batches(&[10, big, 10], 512).await, vec![1, 1, 1]);
    }

    #[test]
    fn the_largest_frame_any_node_accepts_fits_a_batch_alone() {
        let j = job(crate::config::MAX_FRAME_BYTES_CEILING + 1024);
        assert!(j.bytes + BATCH_HEADER_BYTES <= wire::MAX_BATCH_BYTES);
    }
}
