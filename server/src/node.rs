//! Wires a node together: binds its listeners, connects Redis, builds the shared [`NodeState`],
//! and starts the HTTP/WebSocket and gRPC servers and the background loops (`upkeep`, route
//! events). Only wiring: what the parts share is in `state.rs`, draining in `drain.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tracing::Instrument;

use actix_web::{App, web};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsroute_core::db::subscriptions::Subscriptions;
use wsroute_core::db::{NODE_HELD_CONNECTIONS, Redis};
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
use crate::route::cache::RouteCache;
use crate::route::events;
use crate::route::membership::{Claim, Membership};
use crate::route::table::RouteTable;
use crate::sessions::Sessions;
use crate::state::NodeState;
use crate::webhooks::deliver::{Deliverer, Settings};
use crate::webhooks::event::Emitter;
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
    #[error("cannot make the webhook HTTP client: {0}")]
    Webhooks(#[source] reqwest::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error(
        "node id {node} is in use by another live process (it renews the id's lease in Redis, instance {holder}); give each node its own --node-id"
    )]
    NodeIdInUse { node: NodeId, holder: String },
}

impl StartError {
    /// A mistake in the configuration (a key or certificate file that cannot be used, a Redis
    /// URL that does not parse), as opposed to the world refusing (a port taken, a node id in
    /// use): the process exits 2 for these, as for a bad flag.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Keys(_) | Self::Tls(_) | Self::Redis(_))
    }
}

/// A running node: its bound addresses and the handles needed to stop it.
pub struct Node {
    pub state: Arc<NodeState>,
    pub ws_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub(crate) http: actix_web::dev::ServerHandle,
    /// The gRPC server's task, handed over once the first HTTP worker has started it.
    pub(crate) grpc: tokio::sync::oneshot::Receiver<
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    >,
}

/// Connections a listener queues before they are accepted. std and tokio bind with 128: a
/// reconnect storm (thousands of clients of a node that just died) overflows that, the kernel
/// drops their SYNs and each waits a full SYN retransmit (1 s, then 3 s) before trying again.
/// The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Connections one HTTP worker thread holds before it stops accepting more: far above what a
/// node can hold (the process's open-file limit and `--max-connections` bind first).
const MAX_CONNECTIONS_PER_HTTP_WORKER: usize = 1_000_000;

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

        let redis = Redis::open(
            &config.redis_url,
            Duration::from_secs(2),
            NODE_HELD_CONNECTIONS,
        )
        .map_err(StartError::Redis)?;
        let subscriptions = Subscriptions::new(&redis).map_err(StartError::Redis)?;

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
        // With webhooks, the route table and the inbox write events beside their changes.
        let emitter = config
            .webhooks
            .as_ref()
            .map(|w| Arc::new(Emitter::new(w.max_events, metrics.clone())));
        let mut routes = RouteTable::new(redis.clone(), node.clone(), metrics.clone());
        let mut nodes = Membership::new(
            redis.clone(),
            node.clone(),
            limits.lease_ttl,
            metrics.clone(),
        );
        if let Some(e) = &emitter {
            routes = routes.with_webhooks(e.clone());
            nodes = nodes.with_webhooks(e.clone());
        }
        // The node id's lease before anything else: a second process under a live node's id
        // refuses to start here rather than wipe that node's routes. With Redis unreachable
        // now, the lease loop takes it (and writes nothing under the id until it has).
        match nodes.claim_lease(limits.heartbeat_interval).await {
            Ok(Claim::Taken) => {}
            Ok(Claim::HeldByLive { holder }) => {
                return Err(StartError::NodeIdInUse { node, holder });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take this node id's lease yet (Redis); will keep trying")
            }
        }
        let sessions = Arc::new(Sessions::default());
        let cache = Arc::new(RouteCache::new(metrics.clone()));
        let mut inbox = Inbox::new(
            redis.clone(),
            limits.inbox_max,
            limits.inbox_max_bytes,
            limits.inbox_ttl,
            metrics.clone(),
        );
        if let Some(e) = emitter {
            inbox = inbox.with_webhooks(e);
        }
        let deliverer = match &config.webhooks {
            Some(w) => Some(Arc::new(
                Deliverer::new(
                    redis.clone(),
                    node.as_str(),
                    Settings {
                        url: w.url.to_string(),
                        secret: w.secret.to_string(),
                        max_attempts: w.max_attempts,
                        backoff: w.backoff,
                        backoff_max: w.backoff_max,
                        max_events: w.max_events,
                        concurrency: w.concurrency,
                    },
                    metrics.clone(),
                )
                .map_err(StartError::Webhooks)?,
            )),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // The runtime this runs on (the multi-thread one, see `main.rs`): background loops run
        // on it, and peer workers until the first HTTP worker takes the mesh.
        let runtime = tokio::runtime::Handle::current();
        let (holds, hold_events) = crate::holds::Holds::new(limits.hold_bytes);
        let holds = Arc::new(holds);
        let peers = Arc::new(PeerPool::new(
            node.clone(),
            nodes.reader().clone(),
            config.mesh_secret.as_deref().map(str::to_owned),
            tls.as_ref().map(|t| t.client.clone()),
            limits.mesh_batch,
            limits.mesh_timeout,
            metrics.clone(),
            runtime.clone(),
            tracker.clone(),
            shutdown.clone(),
            holds.clone(),
        ));
        let delivery = Delivery {
            node: node.clone(),
            sessions: sessions.clone(),
            routes: routes.clone(),
            nodes: nodes.reader().clone(),
            cache: cache.clone(),
            peers: peers.clone(),
            inbox: inbox.clone(),
            quota: crate::quota::StoreQuota::new(
                limits.stored_per_minute,
                limits.api_stored_per_minute,
            ),
            shared_quota: crate::quota::SharedQuota::new(
                redis.clone(),
                limits.stored_per_minute,
                limits.api_stored_per_minute,
                metrics.clone(),
            ),
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
                delivery.with_broadcast(Broadcast::new(redis, subscriptions.clone()))
            }
        });
        holds.set_sink(delivery.clone());
        let presence = Arc::new(crate::presence::Presence::new(
            limits.max_watch,
            routes.reader(),
            sessions.clone(),
            metrics.clone(),
        ));
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
            nodes,
            cache,
            inbox,
            delivery,
            holds,
            confirms: Arc::default(),
            presence,
            metrics,
            in_table: AtomicBool::new(false),
            peers_met: AtomicBool::new(false),
            nodes_seen: std::sync::RwLock::new(None),
            nodes_refresh: tokio::sync::Mutex::new(()),
            subscribed: Arc::new(AtomicBool::new(false)),
            draining: AtomicBool::new(false),
            readiness_changed: Arc::new(tokio::sync::Notify::new()),
            lease_until: std::sync::Mutex::new(None),
            cut_off: AtomicBool::new(false),
            backlog: crate::backlog::Backlog::new(limits.hold_bytes),
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
        let mesh_mtls = state.config.grpc_tls.as_ref().is_some_and(|t| t.mesh_mtls);
        if state.config.mesh_secret.is_none() && !mesh_mtls {
            // Only with --insecure-mesh or --dev-auth: the configuration refuses it otherwise.
            tracing::warn!(
                "no --mesh-secret and no --mesh-mtls: the mesh accepts forwarded messages and drains from anyone who can reach {grpc_addr}"
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
        state
            .tracker
            .spawn(crate::upkeep::lease_watch(state.clone()).instrument(span.clone()));
        state
            .tracker
            .spawn(crate::keeper::run(state.clone(), hold_events).instrument(span.clone()));
        state.tracker.spawn(
            state
                .presence
                .clone()
                .run(state.shutdown.clone())
                .instrument(span.clone()),
        );
        if let Some(deliverer) = deliverer {
            state.tracker.spawn(
                deliverer
                    .run(state.tracker.clone(), state.shutdown.clone())
                    .instrument(span.clone()),
            );
        }
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
                state.presence.clone(),
                state.delivery.peers.clone(),
                state.subscribed.clone(),
                state.readiness_changed.clone(),
                state.metrics.route_events.clone(),
                state.shutdown.clone(),
            )
            .instrument(span),
        );

        // gRPC: the mesh, the public Router API, health and reflection on one listener.
        let mesh = MeshService {
            sessions: state.sessions.clone(),
            secret: state.config.mesh_secret.as_deref().map(str::to_owned),
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
        // The standard services: health and reflection, asked without credentials (each of
        // Mesh and Router checks its own secret, so these two need no exemption).
        let (reflection_v1, reflection_v1alpha) =
            api::reflection::services().map_err(StartError::Reflection)?;
        let (health_reporter, health) = api::health::service(state.shutdown.clone()).await;
        state.tracker.spawn(
            api::health::follow_readiness(state.clone(), health_reporter)
                .instrument(tracing::info_span!("node", node = %state.node)),
        );
        let grpc_shutdown = state.shutdown.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &tls {
            builder = builder
                .tls_config(t.server.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        let http_workers = state.config.http_workers;
        let grpc_router = builder
            .tcp_nodelay(true)
            .add_service(
                MeshServer::new(mesh).max_decoding_message_size(crate::mesh::wire::MAX_BATCH_BYTES),
            )
            .add_service(RouterServer::new(router))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        // The gRPC server starts on the first HTTP worker, beside the client sessions there: a
        // forwarded message then reaches its recipient's session, and the session's "written"
        // its mesh reply, without waking another thread. Its listener moves to that worker's
        // reactor, so the mesh's sockets are driven there too.
        let grpc_listener = grpc_listener.into_std().map_err(bind_error(grpc_addr))?;
        let (grpc_started, grpc) = tokio::sync::oneshot::channel();
        let mesh_thread = peers.mesh_thread();
        let meeting = state.clone();
        let start_grpc = Arc::new(std::sync::Mutex::new(Some(move || {
            let _ = mesh_thread.set(tokio::runtime::Handle::current());
            // The mesh thread is known from here on: the peers can be met (their workers run
            // on this thread) once this node is in the table too.
            crate::upkeep::meet_peers_once_ready(&meeting);
            let incoming = match tokio::net::TcpListener::from_std(grpc_listener) {
                Ok(l) => tokio_stream::wrappers::TcpListenerStream::new(l),
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve gRPC on this HTTP worker");
                    return;
                }
            };
            let task = actix_web::rt::spawn(
                grpc_router.serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned()),
            );
            let _ = grpc_started.send(task);
        })));

        // HTTP + WebSocket: actix-web serves every endpoint, `/ws` through actix-ws.
        let app_state = web::Data::new(state.clone());
        let server = actix_web::HttpServer::new(move || {
            // Runs once per HTTP worker, on that worker's thread: the first one takes the mesh.
            if let Some(start) = start_grpc
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                start();
            }
            App::new()
                .app_data(app_state.clone())
                .wrap_fn(|req, srv| {
                    use actix_web::dev::Service;
                    use futures_util::future::{FutureExt, LocalBoxFuture, ready};
                    let refused: LocalBoxFuture<'static, _> =
                        match crate::ws::upgrade_elsewhere(&req) {
                            Some(refusal) => {
                                ready(Ok(req.into_response(refusal).map_into_right_body()))
                                    .boxed_local()
                            }
                            None => srv
                                .call(req)
                                .map(|r| r.map(|r| r.map_into_left_body()))
                                .boxed_local(),
                        };
                    refused
                })
                .route("/ws", web::get().to(crate::ws::endpoint))
                .route("/healthz", web::get().to(api::probes::healthz))
                .route("/readyz", web::get().to(api::probes::readyz))
                .route("/metrics", web::get().to(api::probes::metrics))
                .route("/gateway", web::get().to(api::probes::gateway))
                .route("/v1/users/{user}/messages", web::post().to(api::push::push))
                .route(
                    "/v1/users/{user}/presence",
                    web::get().to(api::presence::presence),
                )
                .configure(api::page::routes)
                .default_service(web::to(api::probes::not_found))
        })
        // Frames are small and latency matters: no Nagle delay on client sockets.
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
                && let Err(e) = tcp.set_nodelay(true)
            {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
        // A WebSocket stays with the HTTP worker that accepted it for its whole life; actix
        // stops accepting on a worker past its default of 25,000 connections, so it would cap a
        // node at 25,000 per worker thread, below what `--max-connections` (answered with a
        // clear 503) and the open-file limit allow.
        .workers(http_workers)
        .max_connections(MAX_CONNECTIONS_PER_HTTP_WORKER)
        .client_request_timeout(limits.handshake_timeout)
        .client_disconnect_timeout(Duration::from_secs(1))
        .disable_signals()
        .shutdown_timeout(5)
        .listen(ws_listener)
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
