//! Node configuration: command-line flags, environment and an optional TOML file, resolved once
//! into a plain [`Config`] (flag > env > file > default) and validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::fanout::Fanout;
use crate::ids::{IdError, NodeId};

/// The largest `--max-frame-bytes` a node accepts. The mesh sizes its batch limit by it
/// (`mesh::wire::MAX_BATCH_BYTES`), so that a message any node accepts can cross to any other.
pub const MAX_FRAME_BYTES_CEILING: usize = 16 * 1024 * 1024;

/// Flags as typed by the operator. Every field is optional so that the TOML file can fill the
/// gaps; defaults are applied in [`Config::resolve`].
#[derive(Debug, Default, Parser)]
#[command(name = "wsroute-server", version, about = "A wsroute WebSocket node")]
pub struct Args {
    /// Unique name of this node in the cluster [default: hostname]
    #[arg(long, env = "WSROUTE_NODE_ID")]
    pub node_id: Option<String>,
    /// HTTP + WebSocket listen address [default: 0.0.0.0:8080]
    #[arg(long, env = "WSROUTE_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// gRPC listen address (mesh + public API) [default: 0.0.0.0:50051]
    #[arg(long, env = "WSROUTE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// host:port other nodes dial [default: from --grpc-listen]
    #[arg(long, env = "WSROUTE_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,
    /// ws://host:port/ws that clients are sent to [default: from --ws-listen]
    #[arg(long, env = "WSROUTE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Route table [default: redis://127.0.0.1:6379]
    #[arg(long, env = "WSROUTE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// HS256 secret for client tokens
    #[arg(long, env = "WSROUTE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA or EC public key: accept RS256/RS384/RS512, PS256/PS384/PS512 or ES256/ES384 tokens
    #[arg(long, env = "WSROUTE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Local JWKS file (JSON) with RSA/EC public keys, chosen by the token's `kid` (no network fetch)
    #[arg(long, env = "WSROUTE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds [default: 5]
    #[arg(long, env = "WSROUTE_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Required `iss` of client tokens [default: not checked]
    #[arg(long, env = "WSROUTE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of client tokens [default: not checked]
    #[arg(long, env = "WSROUTE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Bearer key for the HTTP push API and the public gRPC API
    #[arg(long, env = "WSROUTE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Shared secret every node presents on mesh calls
    #[arg(long, env = "WSROUTE_MESH_SECRET", hide_env_values = true)]
    pub mesh_secret: Option<String>,
    /// Largest client frame accepted; larger frames close the connection with 1009 [default: 65536]
    #[arg(long, env = "WSROUTE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Accept ?user=ID without a token (development and tests only)
    #[arg(long, env = "WSROUTE_DEV_AUTH", value_parser = clap::builder::FalseyValueParser::new())]
    pub dev_auth: bool,
    /// TOML file with the same keys (snake_case)
    #[arg(long, env = "WSROUTE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Client heartbeat announced in `hello`; a client silent for twice this long is closed [default: 30000]
    #[arg(long, env = "WSROUTE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Longest a drain waits for clients to move before closing the rest [default: 20000]
    #[arg(long, env = "WSROUTE_DRAIN_GRACE_MS")]
    pub drain_grace_ms: Option<u64>,
    /// Frames queued per connection before it is closed as a slow consumer (1013) [default: 1024]
    #[arg(long, env = "WSROUTE_SESSION_QUEUE")]
    pub session_queue: Option<usize>,
    /// Bytes of messages written to one connection and not acked by its client (a window: past
    /// it nothing more is written until the client acks) [default: 1048576]
    #[arg(long, env = "WSROUTE_UNACKED_BYTES")]
    pub unacked_bytes: Option<usize>,
    /// Bytes of messages this node holds for peers' confirmations (delivered elsewhere, not yet
    /// acked); past this the oldest are stored to the inbox [default: 268435456]
    #[arg(long, env = "WSROUTE_HOLD_BYTES")]
    pub hold_bytes: Option<usize>,
    /// How messages reach other nodes: `route` (to the nodes that hold the recipient) or
    /// `broadcast` (to every node, through Redis pub/sub: a baseline for benchmarks) [default: route]
    #[arg(long, env = "WSROUTE_FANOUT", value_enum)]
    pub fanout: Option<Fanout>,
    /// Frames one connection may send per second, sustained (sends, pings, WebSocket pings;
    /// acks only of messages not waiting for one); bursts up to ten times that are absorbed.
    /// Past it: `rate_limited`; sustained abuse closes with 1008 [default: 200]
    #[arg(long, env = "WSROUTE_MAX_MSGS_PER_SEC")]
    pub max_msgs_per_sec: Option<u32>,
    /// Live connections one user may hold across the whole cluster [default: 16]
    #[arg(long, env = "WSROUTE_MAX_CONNS_PER_USER")]
    pub max_conns_per_user: Option<u32>,
    /// Sends from one user that may go to inboxes per minute, per node (a token bucket holding
    /// a minute's worth); past it: `rejected` `quota_exceeded` [default: 120]
    #[arg(long, env = "WSROUTE_MAX_STORED_PER_MINUTE")]
    pub max_stored_per_minute: Option<u32>,
    /// The same for the push API and the gRPC Router together (they share the API key), per
    /// node [default: 6000]
    #[arg(long, env = "WSROUTE_API_STORED_PER_MINUTE")]
    pub api_stored_per_minute: Option<u32>,
    /// Bytes one user's inbox may hold (as well as 1,000 messages); past it: `inbox_full`
    /// [default: 1048576]
    #[arg(long, env = "WSROUTE_INBOX_MAX_BYTES")]
    pub inbox_max_bytes: Option<usize>,
    /// Comma-separated `Origin` values browsers may connect from (exact match); requests without
    /// an Origin header (non-browser clients) are not affected [default: any origin]
    #[arg(long, env = "WSROUTE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Connections this node accepts; past it new clients get 503 and /gateway stops naming it
    /// (0 = no cap) [default: 0]
    #[arg(long, env = "WSROUTE_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// Time a client has to send its whole HTTP upgrade request [default: 5000]
    #[arg(long, env = "WSROUTE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// HTTP worker threads. The first one also runs the mesh and the Router API, so that a
    /// message crossing the node stays on one thread; more take more clients, whose messages
    /// then cross a thread (1-64) [default: 1]
    #[arg(long, env = "WSROUTE_HTTP_WORKERS")]
    pub http_workers: Option<u64>,
    /// PEM certificate (chain) of the gRPC listener: turns on TLS for the mesh and Router
    #[arg(long, env = "WSROUTE_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert
    #[arg(long, env = "WSROUTE_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM CA that signs the nodes' certificates: trusted when dialling peers, and for client
    /// certificates
    #[arg(long, env = "WSROUTE_GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<PathBuf>,
    /// Mutual TLS for the mesh: Mesh calls must present a certificate signed by --grpc-tls-ca
    #[arg(long, env = "WSROUTE_MESH_MTLS", value_parser = clap::builder::FalseyValueParser::new())]
    pub mesh_mtls: bool,
    /// File holding the HS256 secret (one trailing newline trimmed): keeps it out of the process's
    /// arguments and environment
    #[arg(long, env = "WSROUTE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// File holding the API key (one trailing newline trimmed)
    #[arg(long, env = "WSROUTE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// File holding the mesh secret (one trailing newline trimmed)
    #[arg(long, env = "WSROUTE_MESH_SECRET_FILE")]
    pub mesh_secret_file: Option<PathBuf>,
    /// Run the mesh with neither --mesh-secret nor --mesh-mtls: anyone who reaches the gRPC port
    /// can then forward messages to this node's clients and drain it. Without this (or
    /// --dev-auth) such a node refuses to start
    #[arg(long, env = "WSROUTE_INSECURE_MESH", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure_mesh: bool,
    /// Users one connection may watch for presence at once (1-100000) [default: 1000]
    #[arg(long, env = "WSROUTE_MAX_WATCH")]
    pub max_watch: Option<u64>,
    /// Who a signed-in user may watch for presence: `open` (anyone) or `token` (only the user
    /// ids in the token's `watch` claim; with --dev-auth, a `?user=` session's `?watch=a,b`)
    /// [default: open]
    #[arg(long, env = "WSROUTE_PRESENCE_POLICY", value_enum)]
    pub presence_policy: Option<PresencePolicy>,
    /// POST webhook events (message.stored, user.online, user.offline) to this http(s):// URL of
    /// the app's backend, signed with --webhook-secret [default: no webhooks]
    #[arg(long, env = "WSROUTE_WEBHOOK_URL", help_heading = "Webhooks")]
    pub webhook_url: Option<String>,
    /// Key of the X-Wsroute-Signature of every webhook POST (HMAC-SHA256 of the body); required
    /// with --webhook-url
    #[arg(
        long,
        env = "WSROUTE_WEBHOOK_SECRET",
        hide_env_values = true,
        help_heading = "Webhooks"
    )]
    pub webhook_secret: Option<String>,
    /// File holding the webhook secret (one trailing newline trimmed)
    #[arg(long, env = "WSROUTE_WEBHOOK_SECRET_FILE", help_heading = "Webhooks")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Attempts per webhook event (a 2xx answer settles it; anything else, or no answer in 5 s,
    /// is retried); after the last one the event is kept as dead (`router-cli webhooks dead`)
    /// [default: 10]
    #[arg(long, env = "WSROUTE_WEBHOOK_MAX_ATTEMPTS", help_heading = "Webhooks")]
    pub webhook_max_attempts: Option<u32>,
    /// Wait after a webhook event's first failed attempt; it doubles after each failure, up to
    /// --webhook-backoff-max-ms, and each wait is jittered (between half and all of it)
    /// [default: 5000]
    #[arg(long, env = "WSROUTE_WEBHOOK_BACKOFF_MS", help_heading = "Webhooks")]
    pub webhook_backoff_ms: Option<u64>,
    /// Longest wait between two attempts of a webhook event [default: 3600000]
    #[arg(
        long,
        env = "WSROUTE_WEBHOOK_BACKOFF_MAX_MS",
        help_heading = "Webhooks"
    )]
    pub webhook_backoff_max_ms: Option<u64>,
    /// Webhook events kept waiting for delivery in Redis (cluster-wide), and dead events kept;
    /// past it the oldest are dropped and counted (wsroute_webhook_dropped_total)
    /// [default: 100000]
    #[arg(long, env = "WSROUTE_WEBHOOK_MAX_EVENTS", help_heading = "Webhooks")]
    pub webhook_max_events: Option<u64>,
    /// Webhook POSTs one node has in flight at most [default: 16]
    #[arg(long, env = "WSROUTE_WEBHOOK_CONCURRENCY", help_heading = "Webhooks")]
    pub webhook_concurrency: Option<u64>,
}

/// Who a signed-in user may watch for presence (docs/protocol.md, presence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresencePolicy {
    /// Anyone.
    #[default]
    Open,
    /// Only the user ids the session's token lists in its `watch` claim.
    Token,
}

/// The same keys as [`Args`], read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    ws_listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    advertise_grpc: Option<String>,
    public_url: Option<String>,
    redis_url: Option<String>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwt_leeway_secs: Option<u64>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    api_key: Option<String>,
    mesh_secret: Option<String>,
    max_frame_bytes: Option<usize>,
    dev_auth: Option<bool>,
    heartbeat_ms: Option<u64>,
    drain_grace_ms: Option<u64>,
    session_queue: Option<usize>,
    unacked_bytes: Option<usize>,
    hold_bytes: Option<usize>,
    fanout: Option<Fanout>,
    max_msgs_per_sec: Option<u32>,
    max_conns_per_user: Option<u32>,
    max_stored_per_minute: Option<u32>,
    api_stored_per_minute: Option<u32>,
    inbox_max_bytes: Option<usize>,
    allowed_origins: Option<Vec<String>>,
    max_connections: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    http_workers: Option<u64>,
    grpc_tls_cert: Option<PathBuf>,
    grpc_tls_key: Option<PathBuf>,
    grpc_tls_ca: Option<PathBuf>,
    mesh_mtls: Option<bool>,
    jwt_secret_file: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
    mesh_secret_file: Option<PathBuf>,
    insecure_mesh: Option<bool>,
    max_watch: Option<u64>,
    presence_policy: Option<PresencePolicy>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    webhook_max_attempts: Option<u32>,
    webhook_backoff_ms: Option<u64>,
    webhook_backoff_max_ms: Option<u64>,
    webhook_max_events: Option<u64>,
    webhook_concurrency: Option<u64>,
}

/// Everything a node needs, resolved and validated. Plain data: building it has no side effects.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: NodeId,
    pub ws_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// `None` means "derive from the bound gRPC address" (known only after binding port 0).
    pub advertise_grpc: Option<String>,
    /// `None` means "derive from the bound WebSocket address".
    pub public_url: Option<String>,
    /// May carry the Redis password, which its `Debug` hides.
    pub redis_url: RedisUrl,
    pub jwt_secret: Option<Secret>,
    /// Public keys and checks for RS*/ES* tokens, and claims checks for every token.
    pub jwt: JwtOptions,
    pub api_key: Option<Secret>,
    pub mesh_secret: Option<Secret>,
    pub max_frame_bytes: usize,
    pub dev_auth: bool,
    pub fanout: Fanout,
    /// HTTP worker threads; the first also runs the mesh and the Router API.
    pub http_workers: usize,
    /// Browser origins allowed to open `/ws`; empty means any.
    pub allowed_origins: Vec<String>,
    /// TLS on the gRPC listener and for dialling peers; `None` is plaintext.
    pub grpc_tls: Option<GrpcTls>,
    /// Who may watch whom for presence.
    pub presence_policy: PresencePolicy,
    /// Where and how webhook events go; `None`: no webhooks (no event is written to Redis).
    pub webhooks: Option<Webhooks>,
    pub limits: Limits,
}

/// Webhooks to the app's backend (docs/protocol.md, webhooks).
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// An `http://` or `https://` URL (a server certificate is checked against the system's
    /// roots, or `SSL_CERT_FILE`); printed without its query, which may carry a token.
    pub url: WebhookUrl,
    pub secret: Secret,
    /// Attempts per event before it is dead.
    pub max_attempts: u32,
    /// Wait after the first failed attempt (doubled after each further one).
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Events kept in each webhook stream at most (approximately: Redis trims whole nodes).
    pub max_events: u64,
    /// POSTs in flight per node.
    pub concurrency: usize,
}

/// The `--webhook-url`: reads as a `str`; prints without its query string.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl std::ops::Deref for WebhookUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.split('?').next().unwrap_or_default();
        write!(f, "{shown:?}")
    }
}

/// A secret from the configuration: reads as a `str`, prints as `[redacted]`, so that logging a
/// [`Config`] (or anything holding one) never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The `--redis-url`: reads as a `str`; prints with the password of its user-info (if any)
/// replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl std::ops::Deref for RedisUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.0;
        let Some((scheme, rest)) = url.split_once("://") else {
            return f.write_str("[unreadable url]");
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or_default();
                write!(f, "\"{scheme}://{user}:***{}\"", &rest[at..])
            }
            None => write!(f, "{url:?}"),
        }
    }
}

/// Certificates for the gRPC listener and the mesh.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
    /// Mesh calls must present a client certificate signed by `ca`.
    pub mesh_mtls: bool,
}

/// Client token options beyond the HS256 secret.
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    pub public_key: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub leeway_secs: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Tunables that are no flag (docs/protocol.md lists the flags); sensible defaults, overridable in code and tests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Node lease in Redis; a node whose lease ran out is dead.
    pub lease_ttl: Duration,
    /// How often the lease is renewed (and lost Redis state re-registered).
    pub heartbeat_interval: Duration,
    /// Application heartbeat the clients are told about in `hello`.
    pub client_heartbeat: Duration,
    /// Frames queued for one connection before it counts as a slow consumer.
    pub session_queue: usize,
    /// Bytes of messages written to a connection and not yet acked by the client, kept so that
    /// they go to the inbox if the connection ends; past this nothing more is written to it until
    /// the client acks (a window).
    pub unacked_bytes: usize,
    /// Bytes of messages held for peers' confirmations (soft: past it the oldest are stored to
    /// the inbox; past twice it no new message is held).
    pub hold_bytes: usize,
    /// How long a message is held for a peer's confirmation before it is stored to the inbox
    /// anyway (the peer closes a silent client after two heartbeats and then confirms).
    pub hold_timeout: Duration,
    /// How long a writer may take to put a frame on a connection before the message counts as
    /// not written there (and is stored instead).
    pub write_wait: Duration,
    /// How long one mesh call may take.
    pub mesh_timeout: Duration,
    /// Frames per second per connection, sustained (bursts: ten times as many); acks of
    /// messages waiting for them are free.
    pub msgs_per_sec: u32,
    /// Live connections per user, cluster-wide.
    pub conns_per_user: u32,
    /// Connections this node accepts (0 = no cap).
    pub node_connections: u64,
    /// Time a client has to finish its HTTP upgrade request.
    pub handshake_timeout: Duration,
    /// Sends of one connection awaiting their outcome before the node stops reading its frames.
    pub sends_in_flight: usize,
    /// Sends of all connections of this node awaiting their outcome. Past this, connections
    /// with a send to make stop reading (TCP backpressure on the clients) instead of queueing
    /// more work than the node can finish within the send deadline.
    pub node_sends_in_flight: usize,
    /// Messages kept per offline user.
    pub inbox_max: usize,
    /// Bytes of message frames kept per offline user (new sends; what a closed connection had
    /// not acked is kept whatever the size, bounded by `unacked_bytes`).
    pub inbox_max_bytes: usize,
    /// Sends of one user that may go to inboxes per minute, on this node (bucket: a minute's worth).
    pub stored_per_minute: u32,
    /// Sends of the push API and the Router that may go to inboxes per minute, on this node.
    pub api_stored_per_minute: u32,
    /// How long an inbox is kept after its last write.
    pub inbox_ttl: Duration,
    /// How long a send normally takes at most to learn its fate; one still waiting then is
    /// logged and counted, and waited for (it may be delivered or stored already).
    pub send_deadline: Duration,
    /// Largest batch of messages in one mesh call.
    pub mesh_batch: usize,
    /// How long a drain waits for clients to leave before closing the rest.
    pub drain_grace: Duration,
    /// Users one connection may watch for presence at once.
    pub max_watch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            client_heartbeat: Duration::from_secs(30),
            session_queue: 1024,
            unacked_bytes: 1 << 20,
            hold_bytes: 256 << 20,
            hold_timeout: Duration::from_secs(90),
            write_wait: Duration::from_secs(2),
            mesh_timeout: Duration::from_secs(3),
            msgs_per_sec: 200,
            conns_per_user: 16,
            node_connections: 0,
            handshake_timeout: Duration::from_secs(5),
            sends_in_flight: 256,
            node_sends_in_flight: 4096,
            inbox_max: 1000,
            inbox_max_bytes: 1 << 20,
            stored_per_minute: 120,
            api_stored_per_minute: 6000,
            inbox_ttl: Duration::from_secs(7 * 24 * 3600),
            send_deadline: Duration::from_secs(8),
            mesh_batch: 512,
            drain_grace: Duration::from_secs(20),
            max_watch: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error(
        "no client authentication configured: set --jwt-secret (WSROUTE_JWT_SECRET), --jwt-secret-file, --jwt-public-key or --jwks-file, or --dev-auth for development only"
    )]
    NoAuth,
    #[error("--node-id {0:?} is not a valid id: {1}")]
    NodeId(String, #[source] IdError),
    #[error("--node-id not given and the hostname cannot be read")]
    NoHostname,
    #[error("--max-frame-bytes must be between 256 and 16777216, got {0}")]
    FrameBytes(usize),
    #[error("--{0} must not be empty")]
    EmptySecret(&'static str),
    #[error(
        "--redis-url must start with redis://, rediss://, redis+cluster:// or redis+sentinel:// (it starts {0:?})"
    )]
    RedisUrl(String),
    #[error("--grpc-tls-cert and --grpc-tls-key go together")]
    TlsPair,
    #[error("--mesh-mtls needs --grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca")]
    MtlsNeedsCa,
    #[error("--{0} must be between {1} and {2}, got {3}")]
    OutOfRange(&'static str, u64, u64, u64),
    #[error(transparent)]
    SecretFile(#[from] wsroute_core::secret::SecretError),
    #[error("--webhook-url must be an http:// or https:// URL with a host, got {0:?}")]
    WebhookUrl(String),
    #[error(
        "--webhook-url needs --webhook-secret (or --webhook-secret-file, WSROUTE_WEBHOOK_SECRET_FILE): the backend checks every event's signature with it"
    )]
    WebhookNoSecret,
    #[error("--webhook-secret is given without --webhook-url")]
    WebhookNoUrl,
    #[error(
        "the mesh is not protected: set --mesh-secret (or --mesh-secret-file, WSROUTE_MESH_SECRET_FILE) or --mesh-mtls; \
         --insecure-mesh (WSROUTE_INSECURE_MESH=1) runs it open, so that anyone who reaches the gRPC port can \
         forward messages to this node's clients and drain it"
    )]
    OpenMesh,
}

impl Config {
    /// Resolves flags (already merged with the environment by clap) and the optional file.
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::ParseFile {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };

        let node_id = match args.node_id.or(file.node_id) {
            Some(id) => id,
            None => hostname().ok_or(ConfigError::NoHostname)?,
        };
        let node_id = NodeId::parse(&node_id).map_err(|e| ConfigError::NodeId(node_id, e))?;

        let max_frame_bytes = args
            .max_frame_bytes
            .or(file.max_frame_bytes)
            .unwrap_or(65536);
        if !(256..=MAX_FRAME_BYTES_CEILING).contains(&max_frame_bytes) {
            return Err(ConfigError::FrameBytes(max_frame_bytes));
        }

        let redis_url = args
            .redis_url
            .or(file.redis_url)
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        if ![
            "redis://",
            "rediss://",
            "redis+cluster://",
            "redis+sentinel://",
        ]
        .iter()
        .any(|p| redis_url.starts_with(p))
        {
            // Only the start: the rest may carry a password.
            let start: String = redis_url
                .chars()
                .take_while(|c| *c != ':')
                .take(20)
                .collect();
            return Err(ConfigError::RedisUrl(start));
        }

        let jwt_secret = secret(
            "jwt-secret",
            (args.jwt_secret, args.jwt_secret_file),
            (file.jwt_secret, file.jwt_secret_file),
        )?;
        let api_key = secret(
            "api-key",
            (args.api_key, args.api_key_file),
            (file.api_key, file.api_key_file),
        )?;
        let mesh_secret = secret(
            "mesh-secret",
            (args.mesh_secret, args.mesh_secret_file),
            (file.mesh_secret, file.mesh_secret_file),
        )?;
        for (name, value) in [
            ("jwt-secret", &jwt_secret),
            ("api-key", &api_key),
            ("mesh-secret", &mesh_secret),
        ] {
            if value.as_deref() == Some("") {
                return Err(ConfigError::EmptySecret(name));
            }
        }
        let (jwt_secret, api_key, mesh_secret) = (
            jwt_secret.map(Secret),
            api_key.map(Secret),
            mesh_secret.map(Secret),
        );
        let dev_auth = args.dev_auth || file.dev_auth.unwrap_or(false);
        let jwt = JwtOptions {
            public_key: args.jwt_public_key.or(file.jwt_public_key),
            jwks_file: args.jwks_file.or(file.jwks_file),
            leeway_secs: args.jwt_leeway_secs.or(file.jwt_leeway_secs).unwrap_or(5),
            issuer: args.jwt_issuer.or(file.jwt_issuer),
            audience: args.jwt_audience.or(file.jwt_audience),
        };
        if jwt.leeway_secs > 3600 {
            return Err(ConfigError::OutOfRange(
                "jwt-leeway-secs",
                0,
                3600,
                jwt.leeway_secs,
            ));
        }
        if jwt_secret.is_none() && jwt.public_key.is_none() && jwt.jwks_file.is_none() && !dev_auth
        {
            return Err(ConfigError::NoAuth);
        }

        let mut limits = Limits::default();
        let ranged = |name: &'static str, v: Option<u64>, lo: u64, hi: u64| match v {
            Some(v) if !(lo..=hi).contains(&v) => Err(ConfigError::OutOfRange(name, lo, hi, v)),
            other => Ok(other),
        };
        if let Some(ms) = ranged(
            "heartbeat-ms",
            args.heartbeat_ms.or(file.heartbeat_ms),
            100,
            600_000,
        )? {
            limits.client_heartbeat = Duration::from_millis(ms);
        }
        // A peer confirms a held message at the latest when it closes a silent client (two
        // heartbeats); the hold waits for that, and a margin.
        limits.hold_timeout = limits.client_heartbeat * 2 + Duration::from_secs(30);
        if let Some(ms) = ranged(
            "drain-grace-ms",
            args.drain_grace_ms.or(file.drain_grace_ms),
            0,
            3_600_000,
        )? {
            limits.drain_grace = Duration::from_millis(ms);
        }
        if let Some(n) = ranged(
            "session-queue",
            args.session_queue.or(file.session_queue).map(|n| n as u64),
            8,
            1 << 20,
        )? {
            limits.session_queue = n as usize;
        }
        if let Some(n) = ranged(
            "unacked-bytes",
            args.unacked_bytes.or(file.unacked_bytes).map(|n| n as u64),
            64 << 10,
            1 << 30,
        )? {
            limits.unacked_bytes = n as usize;
        }
        if let Some(n) = ranged(
            "hold-bytes",
            args.hold_bytes.or(file.hold_bytes).map(|n| n as u64),
            1 << 20,
            1 << 40,
        )? {
            limits.hold_bytes = n as usize;
        }

        if let Some(n) = ranged(
            "max-msgs-per-sec",
            args.max_msgs_per_sec
                .or(file.max_msgs_per_sec)
                .map(u64::from),
            1,
            1_000_000,
        )? {
            limits.msgs_per_sec = n as u32;
        }
        if let Some(n) = ranged(
            "max-conns-per-user",
            args.max_conns_per_user
                .or(file.max_conns_per_user)
                .map(u64::from),
            1,
            100_000,
        )? {
            limits.conns_per_user = n as u32;
        }
        if let Some(n) = ranged(
            "max-stored-per-minute",
            args.max_stored_per_minute
                .or(file.max_stored_per_minute)
                .map(u64::from),
            1,
            1_000_000,
        )? {
            limits.stored_per_minute = n as u32;
        }
        if let Some(n) = ranged(
            "api-stored-per-minute",
            args.api_stored_per_minute
                .or(file.api_stored_per_minute)
                .map(u64::from),
            1,
            100_000_000,
        )? {
            limits.api_stored_per_minute = n as u32;
        }
        if let Some(n) = ranged(
            "inbox-max-bytes",
            args.inbox_max_bytes
                .or(file.inbox_max_bytes)
                .map(|n| n as u64),
            64 << 10,
            1 << 30,
        )? {
            limits.inbox_max_bytes = n as usize;
        }

        if let Some(n) = ranged(
            "max-connections",
            args.max_connections.or(file.max_connections),
            0,
            10_000_000,
        )? {
            limits.node_connections = n;
        }
        if let Some(ms) = ranged(
            "handshake-timeout-ms",
            args.handshake_timeout_ms.or(file.handshake_timeout_ms),
            100,
            120_000,
        )? {
            limits.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = ranged("max-watch", args.max_watch.or(file.max_watch), 1, 100_000)? {
            limits.max_watch = n as usize;
        }
        let http_workers = ranged(
            "http-workers",
            args.http_workers.or(file.http_workers),
            1,
            64,
        )?
        .unwrap_or(1) as usize;

        let mesh_mtls = args.mesh_mtls || file.mesh_mtls.unwrap_or(false);
        let grpc_tls = match (
            args.grpc_tls_cert.or(file.grpc_tls_cert),
            args.grpc_tls_key.or(file.grpc_tls_key),
        ) {
            (Some(cert), Some(key)) => Some(GrpcTls {
                cert,
                key,
                ca: args.grpc_tls_ca.or(file.grpc_tls_ca),
                mesh_mtls,
            }),
            (None, None) => None,
            _ => return Err(ConfigError::TlsPair),
        };
        if mesh_mtls && grpc_tls.as_ref().is_none_or(|t| t.ca.is_none()) {
            return Err(ConfigError::MtlsNeedsCa);
        }
        let webhooks = webhooks(
            WebhookInput {
                url: args.webhook_url.or(file.webhook_url),
                secret: secret(
                    "webhook-secret",
                    (args.webhook_secret, args.webhook_secret_file),
                    (file.webhook_secret, file.webhook_secret_file),
                )?,
                max_attempts: args.webhook_max_attempts.or(file.webhook_max_attempts),
                backoff_ms: args.webhook_backoff_ms.or(file.webhook_backoff_ms),
                backoff_max_ms: args.webhook_backoff_max_ms.or(file.webhook_backoff_max_ms),
                max_events: args.webhook_max_events.or(file.webhook_max_events),
                concurrency: args.webhook_concurrency.or(file.webhook_concurrency),
            },
            ranged,
        )?;
        let insecure_mesh = args.insecure_mesh || file.insecure_mesh.unwrap_or(false);
        if mesh_secret.is_none() && !mesh_mtls && !dev_auth && !insecure_mesh {
            return Err(ConfigError::OpenMesh);
        }

        Ok(Self {
            node_id,
            grpc_tls,
            webhooks,
            ws_listen: args
                .ws_listen
                .or(file.ws_listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            grpc_listen: args
                .grpc_listen
                .or(file.grpc_listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 50051))),
            advertise_grpc: args.advertise_grpc.or(file.advertise_grpc),
            public_url: args.public_url.or(file.public_url),
            redis_url: RedisUrl(redis_url),
            jwt_secret,
            jwt,
            api_key,
            mesh_secret,
            max_frame_bytes,
            dev_auth,
            fanout: args.fanout.or(file.fanout).unwrap_or_default(),
            presence_policy: args
                .presence_policy
                .or(file.presence_policy)
                .unwrap_or_default(),
            http_workers,
            allowed_origins: args
                .allowed_origins
                .or(file.allowed_origins)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            limits,
        })
    }
}

/// The webhook flags as given (flag, env or file).
struct WebhookInput {
    url: Option<String>,
    secret: Option<String>,
    max_attempts: Option<u32>,
    backoff_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    max_events: Option<u64>,
    concurrency: Option<u64>,
}

/// Validates the webhook flags: none without a URL, and a URL only with a secret.
fn webhooks(
    given: WebhookInput,
    ranged: impl Fn(&'static str, Option<u64>, u64, u64) -> Result<Option<u64>, ConfigError>,
) -> Result<Option<Webhooks>, ConfigError> {
    let Some(url) = given.url else {
        if given.secret.is_some() {
            return Err(ConfigError::WebhookNoUrl);
        }
        return Ok(None);
    };
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default())
        .unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(ConfigError::WebhookUrl(
            url.split('?').next().unwrap_or_default().to_owned(),
        ));
    }
    let secret = match given.secret {
        None => return Err(ConfigError::WebhookNoSecret),
        Some(s) if s.is_empty() => return Err(ConfigError::EmptySecret("webhook-secret")),
        Some(s) => Secret(s),
    };
    let max_attempts = ranged(
        "webhook-max-attempts",
        given.max_attempts.map(u64::from),
        1,
        100,
    )?
    .unwrap_or(10) as u32;
    let backoff_ms = ranged("webhook-backoff-ms", given.backoff_ms, 10, 3_600_000)?.unwrap_or(5000);
    let backoff_max_ms = ranged(
        "webhook-backoff-max-ms",
        given.backoff_max_ms,
        backoff_ms,
        86_400_000,
    )?
    .unwrap_or(3_600_000.max(backoff_ms));
    Ok(Some(Webhooks {
        url: WebhookUrl(url),
        secret,
        max_attempts,
        backoff: Duration::from_millis(backoff_ms),
        backoff_max: Duration::from_millis(backoff_max_ms),
        max_events: ranged("webhook-max-events", given.max_events, 100, 100_000_000)?
            .unwrap_or(100_000),
        concurrency: ranged("webhook-concurrency", given.concurrency, 1, 1024)?.unwrap_or(16)
            as usize,
    }))
}

/// One secret from its flag (or env) or its `-file` flag, else from the TOML file's key or its
/// `_file` key: the command line wins over the file, and both forms at one level is an error.
fn secret(
    flag: &'static str,
    (arg, arg_file): (Option<String>, Option<PathBuf>),
    (toml, toml_file): (Option<String>, Option<PathBuf>),
) -> Result<Option<String>, ConfigError> {
    use wsroute_core::secret::secret_or_file;
    Ok(match secret_or_file(flag, arg, arg_file.as_deref())? {
        Some(v) => Some(v),
        None => secret_or_file(flag, toml, toml_file.as_deref())?,
    })
}

/// `host:port` for other nodes to dial, from a bound address: an unspecified IP (0.0.0.0)
/// cannot be dialled, so it becomes the loopback address; operators set `--advertise-grpc`.
pub fn dialable(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

fn hostname() -> Option<String> {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.is_empty()
    {
        return Some(h);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        let mut v = vec!["wsroute-server"];
        v.extend_from_slice(list);
        Args::try_parse_from(v).expect("test args parse")
    }

    #[test]
    fn refuses_to_start_without_auth() {
        let err = Config::resolve(args(&["--node-id", "n1"])).expect_err("no auth");
        assert!(matches!(err, ConfigError::NoAuth));
        assert!(err.to_string().contains("--jwt-secret"));
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = Config::resolve(args(&["--node-id", "n1", "--dev-auth"])).expect("valid");
        assert_eq!(c.ws_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.grpc_listen.to_string(), "0.0.0.0:50051");
        assert_eq!(&*c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.http_workers, 1);
    }

    #[test]
    fn http_workers_are_one_to_64() {
        let c = Config::resolve(args(&[
            "--node-id",
            "n",
            "--dev-auth",
            "--http-workers",
            "4",
        ]))
        .expect("valid");
        assert_eq!(c.http_workers, 4);
        for bad in ["0", "65"] {
            let err = Config::resolve(args(&[
                "--node-id",
                "n",
                "--dev-auth",
                "--http-workers",
                bad,
            ]))
            .expect_err("out of range");
            assert!(err.to_string().contains("http-workers"), "{err}");
        }
    }

    #[test]
    fn file_fills_gaps_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("wsroute-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\njwt_secret = \"s\"\nmesh_secret = \"m\"\nmax_frame_bytes = 1024\n",
        )
        .expect("write");
        let c = Config::resolve(args(&[
            "--config",
            path.to_str().expect("utf8"),
            "--max-frame-bytes",
            "2048",
        ]))
        .expect("valid");
        assert_eq!(c.node_id.as_str(), "from-file");
        assert_eq!(c.max_frame_bytes, 2048);
        assert_eq!(c.jwt_secret.as_deref(), Some("s"));
    }

    #[test]
    fn the_mesh_is_closed_unless_opened_on_purpose() {
        let jwt = ["--node-id", "n", "--jwt-secret", "j"];
        let err = Config::resolve(args(&jwt)).expect_err("no mesh secret");
        assert!(matches!(err, ConfigError::OpenMesh), "{err}");
        for flag in ["--mesh-secret", "--mesh-secret-file"] {
            assert!(err.to_string().contains(flag), "{err}");
        }
        assert!(err.to_string().contains("--insecure-mesh"), "{err}");
        for open in [
            &["--insecure-mesh"][..],
            &["--dev-auth"],
            &["--mesh-secret", "m"],
        ] {
            let mut list = jwt.to_vec();
            list.extend_from_slice(open);
            Config::resolve(args(&list)).expect("starts");
        }
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = std::env::temp_dir().join(format!("wsroute-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p.to_str().expect("utf8").to_owned()
        };
        let (jwt, key, mesh) = (
            write("jwt", "jwt-from-file\n"),
            write("key", "key-from-file\n"),
            write("mesh", "mesh-from-file"),
        );
        let c = Config::resolve(args(&[
            "--node-id",
            "n",
            "--jwt-secret-file",
            &jwt,
            "--api-key-file",
            &key,
            "--mesh-secret-file",
            &mesh,
            "--redis-url",
            "redis://:redis-pass@r:6379/0",
        ]))
        .expect("valid");
        assert_eq!(c.jwt_secret.as_deref(), Some("jwt-from-file"));
        assert_eq!(c.api_key.as_deref(), Some("key-from-file"));
        assert_eq!(c.mesh_secret.as_deref(), Some("mesh-from-file"));
        let printed = format!("{c:?}");
        for secret in [
            "jwt-from-file",
            "key-from-file",
            "mesh-from-file",
            "redis-pass",
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("redis://:***@r:6379/0"), "{printed}");

        let err = Config::resolve(args(&[
            "--node-id",
            "n",
            "--dev-auth",
            "--api-key",
            "k",
            "--api-key-file",
            &key,
        ]))
        .expect_err("both");
        assert!(
            err.to_string().contains("--api-key and --api-key-file"),
            "{err}"
        );
        let empty = write("empty", "\n");
        let err = Config::resolve(args(&[
            "--node-id",
            "n",
            "--dev-auth",
            "--mesh-secret-file",
            &empty,
        ]))
        .expect_err("empty");
        assert!(err.to_string().contains(&empty), "{err}");

        // The TOML file may name the files too; the command line wins over it.
        let toml = write(
            "node.toml",
            &format!("node_id = \"t\"\njwt_secret_file = {jwt:?}\nmesh_secret_file = {mesh:?}\n"),
        );
        let c =
            Config::resolve(args(&["--config", &toml, "--mesh-secret", "flag"])).expect("valid");
        assert_eq!(c.jwt_secret.as_deref(), Some("jwt-from-file"));
        assert_eq!(c.mesh_secret.as_deref(), Some("flag"));
    }

    #[test]
    fn unknown_file_keys_are_an_error() {
        let dir = std::env::temp_dir().join(format!("wsroute-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("node.toml");
        std::fs::write(&path, "nod_id = \"typo\"\n").expect("write");
        let err = Config::resolve(args(&[
            "--config",
            path.to_str().expect("utf8"),
            "--dev-auth",
        ]))
        .expect_err("typo");
        assert!(err.to_string().contains("nod_id"), "{err}");
    }

    #[test]
    fn tunables_are_range_checked() {
        let c = Config::resolve(args(&[
            "--node-id",
            "n",
            "--dev-auth",
            "--heartbeat-ms",
            "500",
        ]))
        .expect("valid");
        assert_eq!(c.limits.client_heartbeat, Duration::from_millis(500));
        let err = Config::resolve(args(&[
            "--node-id",
            "n",
            "--dev-auth",
            "--heartbeat-ms",
            "5",
        ]))
        .expect_err("too small");
        assert!(err.to_string().contains("heartbeat-ms"), "{err}");
        let err = Config::resolve(args(&[
            "--node-id",
            "n",
            "--dev-auth",
            "--session-queue",
            "1",
        ]))
        .expect_err("too small");
        assert!(err.to_string().contains("session-queue"), "{err}");
    }

    #[test]
    fn presence_flags_default_and_are_checked() {
        let dev = ["--node-id", "n", "--dev-auth"];
        let c = Config::resolve(args(&dev)).expect("valid");
        assert_eq!(c.limits.max_watch, 1000);
        assert_eq!(c.presence_policy, PresencePolicy::Open);
        let mut list = dev.to_vec();
        list.extend_from_slice(&["--max-watch", "5", "--presence-policy", "token"]);
        let c = Config::resolve(args(&list)).expect("valid");
        assert_eq!(c.limits.max_watch, 5);
        assert_eq!(c.presence_policy, PresencePolicy::Token);
        let mut list = dev.to_vec();
        list.extend_from_slice(&["--max-watch", "0"]);
        let err = Config::resolve(args(&list)).expect_err("out of range");
        assert!(err.to_string().contains("max-watch"), "{err}");
        let mut v = vec!["wsroute-server"];
        v.extend_from_slice(&dev);
        v.extend_from_slice(&["--presence-policy", "closed"]);
        assert!(Args::try_parse_from(v).is_err(), "only open|token");
    }

    #[test]
    fn unspecified_address_is_advertised_as_loopback() {
        assert_eq!(
            dialable("0.0.0.0:9000".parse().expect("addr")),
            "127.0.0.1:9000"
        );
        assert_eq!(
            dialable("10.1.2.3:9000".parse().expect("addr")),
            "10.1.2.3:9000"
        );
    }

    #[test]
    fn webhooks_need_an_http_url_and_a_secret() {
        let base = ["--node-id", "n", "--dev-auth"];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            Config::resolve(args(&a))
        };
        assert!(with(&[]).expect("valid").webhooks.is_none());
        let e = with(&["--webhook-url", "http://b/h"]).expect_err("no secret");
        assert!(matches!(e, ConfigError::WebhookNoSecret), "{e}");
        let e = with(&["--webhook-secret", "s"]).expect_err("no url");
        assert!(matches!(e, ConfigError::WebhookNoUrl), "{e}");
        for bad in ["ftp://b", "http://", "https://", "b:80/h", "https:// b/h"] {
            let e = with(&["--webhook-url", bad, "--webhook-secret", "s"]).expect_err(bad);
            assert!(matches!(e, ConfigError::WebhookUrl(_)), "{bad}: {e}");
        }
        let e = with(&[
            "--webhook-url",
            "http://b/h",
            "--webhook-secret",
            "s",
            "--webhook-max-attempts",
            "0",
        ])
        .expect_err("0 attempts");
        assert!(e.to_string().contains("--webhook-max-attempts"), "{e}");
        with(&["--webhook-url", "https://b/h", "--webhook-secret", "s"]).expect("https");
        let c = with(&[
            "--webhook-url",
            "http://b:81/h?token=t",
            "--webhook-secret",
            "s",
        ])
        .expect("valid");
        let w = c.webhooks.expect("on");
        assert_eq!(w.max_attempts, 10);
        assert_eq!(w.backoff, Duration::from_secs(5));
        assert_eq!(w.concurrency, 16);
        let printed = format!("{w:?}");
        assert!(
            !printed.contains("token=t") && !printed.contains("\"s\""),
            "{printed}"
        );
    }
}
