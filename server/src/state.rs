//! What the parts of a node share: its configuration, identity, session table, route table,
//! delivery and flags, below every endpoint (`ws`, `api`, `mesh::server`) and background loop
//! (`upkeep`, `drain`) that uses it. `node` builds it and wires those parts together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsroute_core::db::DbError;
use wsroute_core::nodes::NodeRecord;

use crate::backlog::Backlog;
use crate::config::Config;
use crate::confirm::Confirms;
use crate::delivery::Delivery;
use crate::holds::Holds;
use crate::ids::{IdGen, NodeId};
use crate::inbox::Inbox;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::route::Route;
use crate::route::cache::RouteCache;
use crate::route::events::RouteEvent;
use crate::route::membership::Membership;
use crate::route::table::{Registration, RouteTable};
use crate::sessions::Sessions;
use crate::ws::auth::Authenticator;

/// How long a node list read from Redis serves requests before one of them reads it again.
pub const NODES_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything the parts of a node share.
pub struct NodeState {
    pub config: Config,
    pub node: NodeId,
    pub public_url: String,
    pub grpc_addr: String,
    pub started_at_ms: i64,
    pub ids: IdGen,
    pub auth: Authenticator,
    pub sessions: Arc<Sessions>,
    /// Users' routes in Redis (this node's connections).
    pub routes: RouteTable,
    /// This node's record and lease in Redis, and the other nodes'.
    pub nodes: Membership,
    pub cache: Arc<RouteCache>,
    pub inbox: Inbox,
    pub delivery: Arc<Delivery>,
    /// Messages peers wrote to their recipients, held here until confirmed.
    pub holds: Arc<Holds>,
    /// Confirmations owed to peers for messages they hold.
    pub confirms: Arc<Confirms>,
    /// Who this node's connections watch, and the counts they were told (docs/protocol.md, presence).
    pub presence: Arc<Presence>,
    pub metrics: Metrics,
    /// True while this node's lease is held in Redis (false while starting or Redis is away).
    pub(crate) in_table: AtomicBool,
    /// Set once the start-up meeting of the peers was started (see `upkeep::meet_peers_once_ready`).
    pub(crate) peers_met: AtomicBool,
    /// The node list as last read, and when (see [`NodeState::known_nodes`]).
    pub(crate) nodes_seen: std::sync::RwLock<Option<(std::time::Instant, Arc<Vec<NodeRecord>>)>>,
    /// Held by the request that reads the node list again.
    pub(crate) nodes_refresh: tokio::sync::Mutex<()>,
    /// True while this node hears the route events (cache invalidations, inbox changes).
    /// Until then a node would cache routes it cannot keep fresh, and every (re)subscription
    /// drops the cache anyway: it takes no clients before.
    pub(crate) subscribed: Arc<AtomicBool>,
    pub(crate) draining: AtomicBool,
    /// Woken when [`NodeState::accepting`] may have changed (drain, registration, a lost
    /// lease, the route events' subscription), so that the gRPC health service tells its
    /// watchers at once.
    pub readiness_changed: Arc<tokio::sync::Notify>,
    /// When this node's lease runs out unless renewed before: the send time of the last renewal
    /// that Redis answered, plus the lease's length. `None` until the first registration.
    pub(crate) lease_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// True from the moment the lease ran out without a renewal (Redis cut off) until the node
    /// is registered again: other nodes count it dead and store for its users, so it has sent
    /// its clients away and takes none.
    pub(crate) cut_off: AtomicBool,
    /// Messages for inboxes that wait until Redis answers again.
    pub backlog: Backlog,
    /// Set when a route could not be removed; the lease loop then reconciles Redis with the
    /// connections this node really holds.
    pub(crate) reconcile_needed: AtomicBool,
    /// Cancelled when something other than a signal asks the node to drain (`router-cli drain`).
    pub drain_requested: CancellationToken,
    /// Admission control: one permit per send awaiting its outcome (`Limits::node_sends_in_flight`).
    pub admission: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the node stops: sessions close and background loops end.
    pub shutdown: CancellationToken,
    /// Every task the node spawns, so that stopping can wait for them.
    pub tracker: TaskTracker,
    /// The node's multi-thread runtime: background loops (lease, sweeps, route events) and the
    /// sends a closed session leaves unfinished run here. Client sessions run on the HTTP
    /// workers, and the mesh on the first of them (see `node.rs`).
    pub runtime: tokio::runtime::Handle,
}

impl NodeState {
    /// Whether new clients may connect (`/readyz`).
    pub fn accepting(&self) -> bool {
        self.in_table.load(Ordering::Acquire)
            && self.subscribed.load(Ordering::Acquire)
            && !self.is_draining()
            && !self.is_cut_off()
    }

    /// Whether the lease ran out without a renewal and the node has not registered again since.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }

    /// When the lease runs out unless renewed (see `lease_until`).
    pub(crate) fn lease_deadline(&self) -> Option<tokio::time::Instant> {
        *self
            .lease_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Redis answered a renewal (or registration) sent at `sent`.
    pub(crate) fn lease_renewed(&self, sent: tokio::time::Instant) {
        *self
            .lease_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(sent + self.config.limits.lease_ttl);
    }

    /// Whether this node may take another client (`--max-connections`).
    pub fn has_room(&self) -> bool {
        let cap = self.config.limits.node_connections;
        cap == 0 || (self.sessions.len() as u64) < cap
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn request_reconcile(&self) {
        self.reconcile_needed.store(true, Ordering::Release);
    }

    /// Removes routes this node left in Redis for connections it no longer holds.
    pub(crate) async fn reconcile(&self) -> Result<(), DbError> {
        if !self.reconcile_needed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self
            .routes
            .reconcile(|conn| {
                crate::ids::ConnId::parse(conn).is_ok_and(|c| self.sessions.contains(&c))
            })
            .await;
        match result {
            Ok(users) => {
                if !users.is_empty() {
                    tracing::info!(
                        routes = users.len(),
                        "removed routes of connections that had left"
                    );
                }
                if let Err(e) = self.routes.publish_invalidations(&users).await {
                    tracing::debug!(error = %e, "cannot announce the removed routes");
                }
                Ok(())
            }
            Err(e) => {
                self.request_reconcile();
                Err(e)
            }
        }
    }

    pub(crate) fn record(&self) -> NodeRecord {
        NodeRecord {
            node: self.node.clone(),
            grpc_addr: self.grpc_addr.clone(),
            public_url: self.public_url.clone(),
            started_at_ms: self.started_at_ms,
            connections: self.sessions.len() as u64,
            lease_left_ms: 0,
            draining: self.is_draining(),
            max_connections: self.config.limits.node_connections,
        }
    }

    /// The nodes of the cluster, read from Redis at most once per [`NODES_FRESH`] whatever the
    /// number of requests: what unauthenticated requests (`/gateway`, the page) and a drain see.
    /// While one request refreshes the list, the others take the last one read.
    pub async fn known_nodes(&self) -> Result<Arc<Vec<NodeRecord>>, DbError> {
        let seen = self
            .nodes_seen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let refresh = match &seen {
            Some((at, nodes)) if at.elapsed() < NODES_FRESH => return Ok(nodes.clone()),
            Some((_, nodes)) => match self.nodes_refresh.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(nodes.clone()),
            },
            None => self.nodes_refresh.lock().await,
        };
        let nodes = Arc::new(self.nodes.list_nodes().await?);
        *self
            .nodes_seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), nodes.clone()));
        drop(refresh);
        Ok(nodes)
    }

    /// The live, non-draining node with the fewest connections, other than `exclude` and other
    /// than peers this node just failed to reach: `(node id, public url)`, from a node list at
    /// most [`NODES_FRESH`] old (this node's own figures are read live). Ties go to this node,
    /// then to a random one of the others.
    pub async fn pick_node(
        &self,
        exclude: Option<&NodeId>,
    ) -> Result<Option<(String, String)>, DbError> {
        let nodes = self.known_nodes().await?;
        Ok(nodes
            .iter()
            .filter(|n| n.alive() && !n.draining && !n.public_url.is_empty())
            .filter(|n| {
                if n.node == self.node {
                    self.has_room()
                } else {
                    n.has_room()
                }
            })
            .filter(|n| Some(&n.node) != exclude)
            .filter(|n| n.node != self.node || self.accepting())
            // A peer this node just failed to reach is likely dead though its lease runs on.
            .filter(|n| n.node == self.node || !self.delivery.peers.unreachable(&n.node))
            // Fewest connections first. Among equals this node first: it is the one node known
            // to be alive (it is answering), where another's count may be a record a killed node
            // left behind until its lease ends. Then at random, so that clients spread instead
            // of all taking the first name.
            .min_by_key(|n| {
                let me = n.node == self.node;
                let conns = if me {
                    self.sessions.len() as u64
                } else {
                    n.connections
                };
                (conns, !me, rand::random::<u32>())
            })
            .map(|n| (n.node.to_string(), n.public_url.clone())))
    }

    /// Puts this node and every connection it holds (back) into the route table.
    pub(crate) async fn register_everything(&self) -> Result<usize, DbError> {
        self.nodes.register_node(&self.record()).await?;
        let regs: Vec<Registration> = self
            .sessions
            .snapshot()
            .into_iter()
            .map(|(conn, h)| Registration {
                user: h.user,
                route: Route {
                    conn,
                    node: self.node.clone(),
                    device: h.device,
                    connected_at_ms: h.connected_at_ms,
                },
            })
            .collect();
        for chunk in regs.chunks(1000) {
            self.routes.register(chunk).await?;
        }
        if let Err(e) = self
            .routes
            .publish(&RouteEvent::NodeUp(self.node.clone()).encode())
            .await
        {
            tracing::debug!(error = %e, "cannot announce this node");
        }
        Ok(regs.len())
    }
}
