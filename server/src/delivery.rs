//! Delivering one message: resolve the recipient's connections (cache, then Redis), write to the
//! local ones, forward the rest to exactly the nodes that hold them, repair a stale route once,
//! and fall back to the inbox. The sender always gets an honest [`Outcome`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wsroute_core::db::DbError;
use wsroute_core::nodes::NodeReader;

use crate::envelope::Envelope;
use crate::envelope::Outgoing;
use crate::error::RejectCode;
use crate::fanout::Broadcast;
use crate::holds::{ReceiptSink, ReceiptStatus};
use crate::ids::MsgId;
use crate::ids::{ConnId, NodeId, UserId};
use crate::inbox::{Inbox, StoreOutcome};
use crate::local::LocalAttempt;
use crate::mesh::client::{ForwardReply, PeerPool};
use crate::mesh::wire::ItemKind;
use crate::metrics::Metrics;
use crate::quota::{Origin, SharedQuota, StoreQuota};
use crate::route::Route;
use crate::route::cache::RouteCache;
use crate::route::events::RouteEvent;
use crate::route::table::RouteTable;
use crate::sessions::Sessions;

/// What happened to a message, as the sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written to this many live connections of the recipient.
    Delivered {
        devices: u32,
    },
    /// Kept in the recipient's inbox.
    Stored,
    Rejected {
        code: RejectCode,
        message: String,
    },
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Stored => "stored",
            Self::Rejected { .. } => "rejected",
        }
    }

    pub fn devices(&self) -> u32 {
        match self {
            Self::Delivered { devices } => *devices,
            _ => 0,
        }
    }

    pub fn rejected(code: RejectCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            message: message.into(),
        }
    }
}

/// A message handed to its recipients, its outcome still to come.
pub struct InFlight {
    env: Envelope,
    /// Who pays if it goes to an inbox.
    origin: Origin,
    state: State,
}

enum State {
    Decided(Outcome),
    /// No route at all: the inbox decides.
    Offline,
    Sent(Attempt),
}

/// One round of handing a message out.
struct Attempt {
    /// The routes tried (shared with the route cache: nothing copied per message; the rare
    /// repair path lists their connections).
    tried: Arc<[Route]>,
    local: LocalAttempt,
    remote: Vec<(NodeId, ForwardReply)>,
}

/// Built once per node (in `node.rs`); every field is shared with the rest of the node.
pub struct Delivery {
    pub(crate) node: NodeId,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) routes: RouteTable,
    /// To check a peer's lease when a forward to it fails.
    pub(crate) nodes: NodeReader,
    pub(crate) cache: Arc<RouteCache>,
    pub(crate) peers: Arc<PeerPool>,
    pub(crate) inbox: Inbox,
    /// What each sender may still send to inboxes; charged only for new sends that go there.
    pub(crate) quota: StoreQuota,
    /// The same, cluster-wide (Redis), charged after the node's own bucket let a send through.
    pub(crate) shared_quota: SharedQuota,
    pub(crate) metrics: Metrics,
    /// How long a send normally takes at most to learn its fate; one still waiting then is
    /// logged and counted, and waited for (it may be delivered or stored already).
    pub(crate) deadline: Duration,
    /// How long to wait for local writers before a connection counts as not written.
    pub(crate) write_wait: Duration,
    /// Set only in the `--fanout broadcast` baseline: every message goes to every node.
    pub(crate) broadcast: Option<Broadcast>,
}

impl Delivery {
    /// Switches this node to the broadcast baseline.
    pub fn with_broadcast(mut self, broadcast: Broadcast) -> Self {
        self.broadcast = Some(broadcast);
        self
    }

    /// Resolves and delivers, then waits for the outcome.
    pub async fn send(&self, env: Envelope, origin: Origin) -> Outcome {
        let in_flight = self.dispatch(env, origin).await;
        self.finish(in_flight).await
    }

    /// First half of a send: resolve the recipient and queue the message on every connection and
    /// peer. Calls made in order on one connection queue in that order, which is what keeps
    /// messages from one sender to one recipient in order while their outcomes are awaited
    /// concurrently.
    pub async fn dispatch(&self, env: Envelope, origin: Origin) -> InFlight {
        if let Some(b) = &self.broadcast {
            let outcome = match Box::pin(b.publish(&env)).await {
                Ok(nodes) => Outcome::Delivered { devices: nodes },
                Err(e) => Outcome::rejected(RejectCode::Unavailable, e.to_string()),
            };
            return InFlight {
                env,
                origin,
                state: State::Decided(outcome),
            };
        }
        // A cache hit is synchronous; only a miss (rare in steady state) waits on Redis, in a
        // boxed future so that every send's future stays small.
        let cached = self.cache.get(&env.to);
        let resolved = match cached {
            Some(r) => Ok(r),
            None => Box::pin(self.read_routes(&env.to)).await,
        };
        let routes = match resolved {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(to = %env.to, msg_id = %env.id, error = %e, "cannot resolve recipient");
                return InFlight {
                    env,
                    origin,
                    state: State::Decided(Outcome::rejected(
                        RejectCode::Unavailable,
                        "route table unavailable; try again",
                    )),
                };
            }
        };
        let state = if routes.is_empty() {
            State::Offline
        } else {
            State::Sent(self.hand_out(&env, routes).await)
        };
        InFlight { env, origin, state }
    }

    /// Second half: the honest outcome. By the time it runs the message has been handed to
    /// connections or peers, or is about to be stored, so it may already be delivered or stored
    /// and is never given up as `rejected`: past the send deadline it is still waited for, which
    /// ends because every step below has its own bound (writers' wait, mesh call timeout,
    /// Redis call timeout).
    pub async fn finish(&self, in_flight: InFlight) -> Outcome {
        let InFlight { env, origin, state } = in_flight;
        let settle = self.settle(&env, origin, state);
        tokio::pin!(settle);
        let outcome = match tokio::time::timeout(self.deadline, &mut settle).await {
            Ok(o) => o,
            Err(_) => {
                tracing::warn!(to = %env.to, msg_id = %env.id, "send past its deadline; waiting for its outcome (it may be delivered or stored)");
                self.metrics.sends_overdue.inc();
                settle.await
            }
        };
        match &outcome {
            Outcome::Delivered { .. } | Outcome::Stored => {}
            Outcome::Rejected { code, .. } => {
                self.metrics
                    .rejected
                    .with_label_values(&[code.as_str()])
                    .inc();
            }
        }
        outcome
    }

    /// The common path (the routes we knew took the message) waits inline; the inbox and the
    /// repair path run in boxed futures, so that every send's future stays small (it is
    /// allocated per send, and under ~1 KiB an allocation stays in the allocator's fast path).
    async fn settle(&self, env: &Envelope, origin: Origin, state: State) -> Outcome {
        let attempt = match state {
            State::Decided(o) => return o,
            State::Offline => return Box::pin(self.store(env, origin)).await,
            State::Sent(a) => a,
        };
        let tried = Arc::clone(&attempt.tried);
        let (written, stale) = self.wait(attempt).await;
        if stale {
            self.cache.invalidate(&env.to);
        }
        if written.total() > 0 {
            return self.delivered(written);
        }
        Box::pin(self.repair(env, origin, tried)).await
    }

    /// Every route we knew failed: read the truth once and try what is new, else store.
    async fn repair(&self, env: &Envelope, origin: Origin, tried: Arc<[Route]>) -> Outcome {
        let mut tried: Vec<ConnId> = tried.iter().map(|r| r.conn.clone()).collect();
        let fresh = match self.routes.lookup(&env.to).await {
            Ok(r) => self.cache.live_only(r),
            Err(e) => return self.store_or_unavailable(env, origin, e).await,
        };
        let new: Arc<[Route]> = fresh
            .into_iter()
            .filter(|r| !tried.contains(&r.conn))
            .collect();
        if !new.is_empty() {
            tracing::debug!(to = %env.to, msg_id = %env.id, routes = new.len(), "retrying on repaired routes");
            let again = self.hand_out(env, new).await;
            tried.extend(again.tried.iter().map(|r| r.conn.clone()));
            let (written, _) = self.wait(again).await;
            if written.total() > 0 {
                return self.delivered(written);
            }
        }
        self.store(env, origin).await
    }

    fn delivered(&self, w: Written) -> Outcome {
        let label = if w.local > 0 {
            "delivered_local"
        } else {
            "delivered_remote"
        };
        self.metrics.messages.with_label_values(&[label]).inc();
        Outcome::Delivered { devices: w.total() }
    }

    async fn store_or_unavailable(&self, env: &Envelope, origin: Origin, e: DbError) -> Outcome {
        tracing::warn!(to = %env.to, msg_id = %env.id, error = %e, "route re-read failed; storing");
        self.store(env, origin).await
    }

    /// Stores a new message for an offline recipient, if its sender's quota allows: this node's
    /// bucket first (a sender past it here costs Redis nothing more), then the cluster-wide one
    /// (one call; a sender past that one costs that call per attempt, and no store).
    async fn store(&self, env: &Envelope, origin: Origin) -> Outcome {
        let local = self
            .quota
            .charge(origin, &env.from, std::time::Instant::now());
        // The cluster-wide bucket, only for sends this node's own let through. Redis not
        // answering here is the store's failure to report, just below: not a refusal.
        let shared = local
            && match self.shared_quota.charge(origin, &env.from).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::debug!(from = %env.from, error = %e, "cannot read the cluster-wide quota; storing");
                    true
                }
            };
        if local && !shared {
            self.quota.refund(origin, &env.from);
        }
        if !shared {
            tracing::debug!(from = %env.from, to = %env.to, msg_id = %env.id, ?origin, "inbox quota spent");
            self.metrics.messages.with_label_values(&["rejected"]).inc();
            let per_minute = self.quota.per_minute(origin);
            let flag = match origin {
                Origin::Client => "--max-stored-per-minute",
                Origin::Api => "--api-stored-per-minute",
            };
            return Outcome::rejected(
                RejectCode::QuotaExceeded,
                format!(
                    "the recipient is offline and this sender has sent {per_minute} messages to inboxes in the last minute, across the cluster ({flag}); try again later"
                ),
            );
        }
        match self.inbox.store(env).await {
            // A resend of a message the inbox holds already cost nothing: its token goes back.
            Ok(StoreOutcome::Had) => {
                self.quota.refund(origin, &env.from);
                if let Err(e) = self.shared_quota.refund(origin, &env.from).await {
                    tracing::debug!(from = %env.from, error = %e, "cannot give a quota token back");
                }
                self.metrics.messages.with_label_values(&["stored"]).inc();
                Outcome::Stored
            }
            Ok(StoreOutcome::Stored) => {
                self.metrics.messages.with_label_values(&["stored"]).inc();
                // Close the race with a connect that read the inbox just before this write.
                if let Err(e) = self
                    .routes
                    .publish(&RouteEvent::Inbox(env.to.clone()).encode())
                    .await
                {
                    tracing::warn!(to = %env.to, error = %e, "cannot announce inbox write");
                }
                Outcome::Stored
            }
            Ok(StoreOutcome::Full) => {
                self.metrics.messages.with_label_values(&["rejected"]).inc();
                Outcome::rejected(
                    RejectCode::InboxFull,
                    "the recipient's inbox is full (its maximum of messages)",
                )
            }
            Ok(StoreOutcome::FullBytes) => {
                self.metrics.messages.with_label_values(&["rejected"]).inc();
                Outcome::rejected(
                    RejectCode::InboxFull,
                    "the recipient's inbox is full (--inbox-max-bytes)",
                )
            }
            Err(e) => {
                tracing::warn!(to = %env.to, msg_id = %env.id, error = %e, "cannot store to inbox");
                self.metrics.messages.with_label_values(&["rejected"]).inc();
                Outcome::rejected(RejectCode::Unavailable, "inbox unavailable; try again")
            }
        }
    }

    /// Writes a notice (a `receipt` about message `id`) to every live connection of `user`,
    /// wherever they are. Best effort: nothing waits for it and nothing keeps it; a user with no
    /// live connection misses it (docs/protocol.md, `receipt`). The user's connections on this node are taken
    /// from the session table, not the route table: they get it even while their routes are
    /// not in Redis (Redis restarted empty and the node has not put them back yet) or cannot
    /// be read.
    pub async fn notify(&self, user: &UserId, id: &MsgId, frame: bytestring::ByteString) {
        if self.broadcast.is_some() {
            return;
        }
        self.notice_here(user, &frame);
        self.notify_elsewhere(user, id, frame).await;
    }

    /// Writes a notice to `user`'s connections on this node (from the session table: they get
    /// it even while their routes are not in Redis).
    fn notice_here(&self, user: &UserId, frame: &bytestring::ByteString) {
        let local = self.sessions.conns_of(user);
        let attempt = LocalAttempt::notice(&self.sessions, frame, &local);
        self.metrics
            .receipts
            .inc_by(u64::from(attempt.notices_queued()));
    }

    /// The part of [`Self::notify`] for `user`'s connections on other nodes.
    pub async fn notify_elsewhere(&self, user: &UserId, id: &MsgId, frame: bytestring::ByteString) {
        if self.broadcast.is_some() {
            return;
        }
        let routes = match self.cache.get(user) {
            Some(r) => r,
            None => match self.read_routes(user).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%user, msg_id = %id, error = %e, "cannot resolve a receipt's recipient on other nodes; dropped there");
                    return;
                }
            },
        };
        let msg = Outgoing {
            id: id.clone(),
            frame,
            accepted_us: 0,
            from: None,
        };
        let mut remote: Vec<(&NodeId, Vec<String>)> = Vec::new();
        for r in routes.iter().filter(|r| r.node != self.node) {
            match remote.iter_mut().find(|(n, _)| **n == r.node) {
                Some((_, conns)) => conns.push(r.conn.as_str().to_owned()),
                None => remote.push((&r.node, vec![r.conn.as_str().to_owned()])),
            }
        }
        for (node, conns) in remote {
            // Nobody waits for the answer.
            drop(
                self.peers
                    .forward(node, &msg, conns, ItemKind::Notice, user)
                    .await,
            );
        }
    }

    /// A cache miss: read the user's routes from Redis and cache them (unless an invalidation
    /// raced with the read).
    async fn read_routes(&self, user: &UserId) -> Result<Arc<[Route]>, DbError> {
        let epoch = self.cache.epoch(user);
        let routes: Arc<[Route]> = self.cache.live_only(self.routes.lookup(user).await?).into();
        self.cache.insert(user.clone(), Arc::clone(&routes), epoch);
        Ok(routes)
    }

    async fn hand_out(&self, env: &Envelope, routes: Arc<[Route]>) -> Attempt {
        let mut local = Vec::new();
        // A user is on one or a few nodes: a short list beats a hash map (and its allocation).
        let mut remote: Vec<(&NodeId, Vec<String>)> = Vec::new();
        for r in routes.iter() {
            if r.node == self.node {
                local.push(r.conn.clone());
            } else {
                let conn = r.conn.as_str().to_owned();
                match remote.iter_mut().find(|(n, _)| **n == r.node) {
                    Some((_, conns)) => conns.push(conn),
                    None => remote.push((&r.node, vec![conn])),
                }
            }
        }
        // Encoded once, for local connections and every peer alike.
        let msg = env.outgoing();
        let local_attempt = LocalAttempt::start(&self.sessions, &msg, &local, None);
        let mut replies = Vec::with_capacity(remote.len());
        for (node, conn_ids) in remote {
            let reply = self
                .peers
                .forward(node, &msg, conn_ids, ItemKind::Held, &env.to)
                .await;
            replies.push((node.clone(), reply));
        }
        Attempt {
            tried: routes,
            local: local_attempt,
            remote: replies,
        }
    }

    /// Collects an attempt's results: how many written, and whether any route was stale.
    async fn wait(&self, attempt: Attempt) -> (Written, bool) {
        let deadline = Instant::now() + self.write_wait;
        let (local, gone) = attempt.local.settle(deadline).await;
        let mut stale = !gone.is_empty();
        let mut remote = 0;
        for (node, reply) in attempt.remote {
            match reply.await {
                Ok(Ok(result)) => {
                    remote += result.delivered;
                    stale |= !result.gone.is_empty();
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %node, error = %e, "forward failed");
                    stale = true;
                    Box::pin(self.check_peer(&node)).await;
                }
                Err(_) => stale = true,
            }
        }
        (Written { local, remote }, stale)
    }

    /// A forward to `node` failed: if its lease is gone, stop routing to it at once rather than
    /// waiting for the sweep (its users' messages go to their inboxes meanwhile).
    async fn check_peer(&self, node: &NodeId) {
        match self.nodes.node_alive(node).await {
            Ok(false) => self.cache.mark_dead(node),
            Ok(true) => {}
            Err(e) => tracing::debug!(peer = %node, error = %e, "cannot check a peer's lease"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Written {
    local: u32,
    remote: u32,
}

impl Written {
    fn total(self) -> u32 {
        self.local + self.remote
    }
}

/// Receipts written at once to the sender's connections on this node (see `holds::ReceiptSink`).
impl ReceiptSink for Delivery {
    fn here(
        &self,
        user: &UserId,
        id: &MsgId,
        to: &UserId,
        status: ReceiptStatus,
        device: Option<&str>,
    ) -> bool {
        if self.broadcast.is_some() {
            return true;
        }
        let frame: bytestring::ByteString =
            crate::ws::frame::receipt(id.as_str(), to.as_str(), status.as_str(), device).into();
        self.notice_here(user, &frame);
        matches!(self.cache.get(user), Some(routes) if routes.iter().all(|r| r.node == self.node))
    }
}
