//! Wires a node together: binds its listeners, connects Redis, and starts the HTTP/WebSocket and
//! gRPC servers and the background loops (`upkeep`, route events). Draining is in `drain.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument;

use actix_http::HttpService;
use actix_web::{App, web};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsroute_proto::v1::mesh_server::MeshServer;
use wsroute_proto::v1::router_server::RouterServer;

use crate::api;
use crate::config::{Config, dialable};
use crate::delivery::Delivery;
use crate::envelope::now_ms;
use crate::fanout::{Broadcast, Fanout};
use crate::ids::{IdGen, NodeId};
use crate::inbox::Inbox;
use crate::mesh::client::PeerPool;
use crate::mesh::server::MeshService;
use crate::metrics::Metrics;
use crate::route::Route;
use crate::route::cache::RouteCache;
use crate::route::events::{self, RouteEvent};
use crate::route::registry::{NodeRecord, Registration, RouteError, RouteTable};
use crate::route::store::RedisPool;
use crate::sessions::Sessions;
use crate::ws::auth::Authenticator;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bad --redis-url: {0}")]
    Redis(String),
    #[error("client token keys: {0}")]
    Keys(#[source] crate::ws::auth::KeyError),
    #[error("gRPC TLS: {0}")]
    Tls(String),
}

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
    pub routes: RouteTable,
    pub cache: Arc<RouteCache>,
    pub inbox: Inbox,
    pub delivery: Arc<Delivery>,
    pub metrics: Metrics,
    /// True while this node's lease is held in Redis (false while starting or Redis is away).
    pub(crate) in_table: AtomicBool,
    /// True while this node hears the route events (cache invalidations, inbox changes).
    /// Until then a node would cache routes it cannot keep fresh, and every (re)subscription
    /// drops the cache anyway: it takes no clients before.
    pub(crate) subscribed: Arc<AtomicBool>,
    pub(crate) draining: AtomicBool,
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
    /// The node's multi-thread runtime: client sessions run here, beside the mesh, not on the
    /// HTTP server's worker threads (a message crossing a node then wakes tasks on the threads
    /// it already runs on).
    pub runtime: tokio::runtime::Handle,
}

impl NodeState {
    /// Whether new clients may connect (`/readyz`).
    pub fn accepting(&self) -> bool {
        self.in_table.load(Ordering::Acquire)
            && self.subscribed.load(Ordering::Acquire)
            && !self.is_draining()
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
    pub(crate) async fn reconcile(&self) -> Result<(), RouteError> {
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
                for u in users {
                    let _ = self
                        .routes
                        .publish(&RouteEvent::Invalidate(u).encode())
                        .await;
                }
                Ok(())
            }
            Err(e) => {
                self.request_reconcile();
                Err(e)
            }
        }
    }

    fn record(&self) -> NodeRecord {
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

    /// The live, non-draining node with the fewest connections, other than `exclude`:
    /// `(node id, public url)`.
    pub async fn pick_node(
        &self,
        exclude: Option<&NodeId>,
    ) -> Result<Option<(String, String)>, RouteError> {
        let nodes = self.routes.list_nodes().await?;
        Ok(nodes
            .into_iter()
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
            .map(|n| {
                let conns = if n.node == self.node {
                    self.sessions.len() as u64
                } else {
                    n.connections
                };
                (conns, n.node.to_string(), n.public_url)
            })
            .min()
            .map(|(_, node, url)| (node, url)))
    }

    /// Puts this node and every connection it holds (back) into the route table.
    pub(crate) async fn register_everything(&self) -> Result<usize, RouteError> {
        self.routes.register_node(&self.record()).await?;
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

/// A running node: its bound addresses and the handles needed to stop it.
pub struct Node {
    pub state: Arc<NodeState>,
    pub ws_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub(crate) http: actix_web::dev::ServerHandle,
    pub(crate) grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Connections a listener queues before they are accepted. std and tokio bind with 128: a
/// reconnect storm (thousands of clients of a node that just died) overflows that, the kernel
/// drops their SYNs and each waits a full SYN retransmit (1 s, then 3 s) before trying again.
/// The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (SO_REUSEADDR, as std does) with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Node {
    /// Binds, connects and starts everything. Must run inside an actix `System` driven by a
    /// multi-thread tokio runtime (see `main.rs`).
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let bind_error = |addr| move |source| StartError::Bind { addr, source };
        let ws_listener = listen(config.ws_listen)
            .and_then(tokio::net::TcpListener::into_std)
            .map_err(bind_error(config.ws_listen))?;
        let ws_addr = ws_listener
            .local_addr()
            .map_err(bind_error(config.ws_listen))?;
        let grpc_listener = listen(config.grpc_listen).map_err(bind_error(config.grpc_listen))?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(bind_error(config.grpc_listen))?;

        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{}/ws", dialable(ws_addr)));
        let advertise = config
            .advertise_grpc
            .clone()
            .unwrap_or_else(|| dialable(grpc_addr));

        let pool = RedisPool::open(
            &config.redis_url,
            Duration::from_secs(2),
            crate::route::store::NODE_HELD_CONNECTIONS,
        )
        .map_err(StartError::Redis)?;
        let subscriptions = pool.subscriptions().map_err(StartError::Redis)?;

        let tls = match &config.grpc_tls {
            Some(t) => Some(
                crate::mesh::tls::MeshTls::load(t).map_err(|e| StartError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let metrics = Metrics::new();
        let node = config.node_id.clone();
        metrics
            .node_info
            .with_label_values(&[node.as_str(), env!("CARGO_PKG_VERSION")])
            .set(1);
        let limits = config.limits.clone();
        let routes = RouteTable::new(
            pool.clone(),
            node.clone(),
            limits.lease_ttl,
            metrics.clone(),
        );
        let sessions = Arc::new(Sessions::default());
        let cache = Arc::new(RouteCache::new(metrics.clone()));
        let inbox = Inbox::new(
            pool.clone(),
            limits.inbox_max,
            limits.inbox_ttl,
            metrics.clone(),
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // The runtime this runs on (the multi-thread one, see `main.rs`): peer workers and client
        // sessions are spawned on it.
        let runtime = tokio::runtime::Handle::current();
        let peers = Arc::new(PeerPool::new(
            node.clone(),
            routes.clone(),
            config.mesh_secret.clone(),
            tls.as_ref().map(|t| t.client.clone()),
            limits.mesh_batch,
            limits.mesh_timeout,
            metrics.clone(),
            runtime.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
        let delivery = Delivery {
            node: node.clone(),
            sessions: sessions.clone(),
            routes: routes.clone(),
            cache: cache.clone(),
            peers: peers.clone(),
            inbox: inbox.clone(),
            metrics: metrics.clone(),
            deadline: limits.send_deadline,
            write_wait: limits.write_wait,
            broadcast: None,
        };
        let delivery = Arc::new(match config.fanout {
            Fanout::Route => delivery,
            Fanout::Broadcast => {
                tracing::warn!(
                    "--fanout broadcast: every message goes to every node (a benchmark baseline, not for production)"
                );
                delivery.with_broadcast(Broadcast::new(pool, subscriptions.clone()))
            }
        });
        let state = Arc::new(NodeState {
            auth: Authenticator::new(config.jwt_secret.as_deref(), &config.jwt, config.dev_auth)
                .map_err(StartError::Keys)?,
            node: node.clone(),
            public_url,
            grpc_addr: advertise,
            started_at_ms: now_ms(),
            ids: IdGen::new(),
            sessions,
            routes,
            cache,
            inbox,
            delivery,
            metrics,
            in_table: AtomicBool::new(false),
            subscribed: Arc::new(AtomicBool::new(false)),
            draining: AtomicBool::new(false),
            reconcile_needed: AtomicBool::new(false),
            drain_requested: CancellationToken::new(),
            admission: Arc::new(tokio::sync::Semaphore::new(limits.node_sends_in_flight)),
            shutdown,
            tracker,
            runtime,
            config,
        });
        if state.config.dev_auth {
            tracing::warn!(
                "--dev-auth is ON: anyone can connect as any user with ?user=ID. Never use this in production."
            );
        }
        if state.config.mesh_secret.is_none() {
            tracing::warn!(
                "no --mesh-secret: the mesh accepts forwarded messages from anyone who can reach {grpc_addr}"
            );
        }

        // Background loops, their log lines marked with the node.
        let span = tracing::info_span!("node", node = %state.node);
        state
            .tracker
            .spawn(crate::upkeep::lease_loop(state.clone()).instrument(span.clone()));
        state
            .tracker
            .spawn(crate::upkeep::sweep_loop(state.clone()).instrument(span.clone()));
        if state.config.fanout == Fanout::Broadcast {
            state.tracker.spawn(
                crate::fanout::listen(
                    subscriptions.clone(),
                    state.sessions.clone(),
                    state.shutdown.clone(),
                )
                .instrument(span.clone()),
            );
        }
        state.tracker.spawn(
            events::listen(
                subscriptions,
                state.cache.clone(),
                state.sessions.clone(),
                state.subscribed.clone(),
                state.metrics.route_events.clone(),
                state.shutdown.clone(),
            )
            .instrument(span),
        );

        // gRPC: the mesh and the public Router API on one listener.
        let mesh = MeshService {
            sessions: state.sessions.clone(),
            secret: state.config.mesh_secret.clone(),
            write_deadline: limits.write_wait,
            node: state.node.clone(),
            drain: state.drain_requested.clone(),
            shutdown: state.shutdown.clone(),
            require_client_cert: state.config.grpc_tls.as_ref().is_some_and(|t| t.mesh_mtls),
            state: state.clone(),
        };
        let router = api::router::RouterService {
            state: state.clone(),
        };
        let grpc_shutdown = state.shutdown.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &tls {
            builder = builder
                .tls_config(t.server.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        let grpc = tokio::spawn(
            builder
                .tcp_nodelay(true)
                .add_service(MeshServer::new(mesh))
                .add_service(RouterServer::new(router))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    grpc_shutdown.cancelled_owned(),
                ),
        );

        // HTTP + WebSocket. actix-web serves the HTTP endpoints; a request that asks to upgrade
        // is handed over with its socket to `ws::upgrade`, which runs the WebSocket itself
        // (tungstenite on the raw socket): no HTTP/1 buffers stay allocated per connection.
        let app_state = web::Data::new(state.clone());
        let upgrade_state = state.clone();
        let handshake_timeout = limits.handshake_timeout;
        let builder = actix_server::Server::build();
        // When the server stops, idle keep-alive connections are closed at once instead of
        // holding the stop up to its timeout (what actix-web's HttpServer wires the same way).
        let stopping = builder.graceful_shutdown_signal();
        let server = builder
            .disable_signals()
            .shutdown_timeout(5)
            .listen("wsroute-http", ws_listener, move || {
                let app = App::new()
                    .app_data(app_state.clone())
                    .route("/ws", web::get().to(crate::ws::not_an_upgrade))
                    .route("/healthz", web::get().to(api::probes::healthz))
                    .route("/readyz", web::get().to(api::probes::readyz))
                    .route("/metrics", web::get().to(api::probes::metrics))
                    .route("/gateway", web::get().to(api::probes::gateway))
                    .route("/v1/users/{user}/messages", web::post().to(api::push::push))
                    .configure(api::page::routes);
                let state = upgrade_state.clone();
                let stopping = stopping.clone();
                HttpService::build()
                    .client_request_timeout(handshake_timeout)
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .graceful_shutdown_signal(move || {
                        let stopping = stopping.clone();
                        async move { stopping.notified().await }
                    })
                    .upgrade(actix_service::fn_service(move |(req, framed)| {
                        crate::ws::upgrade(state.clone(), req, framed)
                    }))
                    .finish(actix_service::map_config(app, |_| {
                        actix_web::dev::AppConfig::default()
                    }))
                    .tcp()
            })
            .map_err(|source| StartError::Bind {
                addr: ws_addr,
                source,
            })?
            .run();
        let http = server.handle();
        actix_web::rt::spawn(server);

        tracing::info!(node = %node, ws = %ws_addr, grpc = %grpc_addr, url = %state.public_url, "node started");
        Ok(Self {
            state,
            ws_addr,
            grpc_addr,
            http,
            grpc,
        })
    }
}
