//! One handle on Redis, through deadpool-redis pools: a single server (`redis://`, `rediss://`),
//! a Redis Cluster (`redis+cluster://h1:p1,h2:p2`) or the primary that a set of Sentinels names
//! (`redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER`); and the one thing that differs between
//! them for wsroute: how a write that touches keys in several slots runs.
//!
//! On a cluster no command, script, MULTI or pipeline may span slots. Every key of one user shares
//! the hash tag `{user}` and every key of one node `{node}` (see `keys`), so a multi-key write is
//! split into per-slot pipelines, run in stages whose order keeps the route table's invariant: a
//! route entry never exists without the node-index entry that lets it be cleaned up (index first
//! on the way in, route first on the way out).
//!
//! # Checking connections out, and what it costs
//!
//! deadpool-redis checks a connection on every `Pool::get`: `UNWATCH` + `PING`, one round trip,
//! with no switch to turn it off. Checking out per command would double the Redis round trips of
//! a connect. But every command wsroute sends is non-blocking and none uses WATCH, so one pooled
//! connection (a `MultiplexedConnection`, or a `ClusterConnection`) carries any number of
//! concurrent requests, pipelined on its socket. Hence two ways to a connection:
//!
//! - [`RedisPool::hot`]: one of a few pooled connections that the node holds checked out, taken
//!   in turn. No checkout and no PING per command. Used by the paths that run per client: a
//!   connect's registration and a disconnect's removal, a route-cache miss, the inbox, events.
//!   They are checked out before the node says it is ready ([`RedisPool::hold`]). A held
//!   connection that fails (I/O error, timeout, dropped connection, or a `READONLY` /
//!   `MASTERDOWN` answer: a primary demoted by a failover) is taken out of its pool and replaced
//!   by a fresh checkout at its next use.
//! - [`RedisPool::cold`]: a checkout per use, returned to the pool afterwards (or taken out of it
//!   when it failed). Used by the paths that run per interval or per operator: leases, sweeps,
//!   bulk re-registration, node lists, and everything router-cli does.
//!
//! Every request is bounded by the response timeout, whatever the backend; so are checking out
//! (waiting for a free connection, connecting, the PING).
//!
//! Pub/sub is not pooled: a subscribed connection can carry nothing else, so each subscription
//! has a connection of its own ([`Subscriptions`]). Behind Sentinel it is made on the primary
//! the sentinels name at that moment, and moved when they name another.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deadpool_redis::{PoolConfig, QueueMode, Runtime, Timeouts};
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// The error of every Redis call: no connection to be had from the pool, or the command failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no Redis connection: {0}")]
    Pool(String),
    #[error("Redis command failed: {0}")]
    Command(#[source] RedisError),
}

impl From<RedisError> for RouteError {
    fn from(e: RedisError) -> Self {
        Self::Command(e)
    }
}

/// How many pooled connections a node holds checked out for its hot paths. Each one pipelines
/// concurrent requests; two keep a spare socket without spreading requests so thin that they
/// stop batching.
pub const NODE_HELD_CONNECTIONS: usize = 2;

/// Connections a pool may open beyond the held ones, for cold paths running at the same time.
const COLD_CONNECTIONS: usize = 8;

/// The node's way to Redis: deadpool-redis pools, one server, a cluster or a Sentinel-watched
/// primary. Cheap to clone (clones share the pools and the held connections).
#[derive(Clone)]
pub struct RedisPool(Arc<Shared>);

struct Shared {
    pools: Pools,
    target: RedisTarget,
    /// The connections held checked out for the hot paths.
    held: Box<[Held]>,
    /// Which held connection the next hot request takes.
    next: AtomicUsize,
    /// Numbers the connections put into `held`, so that a failure reported on one that was
    /// already replaced does not throw its replacement away.
    placed: AtomicU64,
    timeout: Duration,
    /// Counts the times the primary moved (a failover seen through Sentinel).
    primary_moves: AtomicU64,
}

/// The pools, one kind per URL form.
enum Pools {
    Server(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// A connection checked out of one of the pools; back into it when dropped.
enum Pooled {
    Server(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
    Sentinel(deadpool_redis::sentinel::Connection),
}

impl Pooled {
    /// A handle on the pooled connection (requests on it share its socket).
    fn link(&self) -> Link {
        match self {
            Self::Server(c) => Link::Multiplexed(MultiplexedConnection::clone(c)),
            Self::Cluster(c) => Link::Cluster(ClusterConnection::clone(c)),
            Self::Sentinel(c) => Link::Multiplexed(MultiplexedConnection::clone(c)),
        }
    }

    /// Takes the connection out of its pool for good and closes it (once the requests still
    /// running on it end); the pool makes a new one when one is wanted.
    fn discard(self) {
        match self {
            Self::Server(c) => drop(deadpool_redis::Connection::take(c)),
            Self::Cluster(c) => drop(deadpool_redis::cluster::Connection::take(c)),
            Self::Sentinel(c) => drop(deadpool_redis::sentinel::Connection::take(c)),
        }
    }
}

/// One held connection's place.
#[derive(Default)]
struct Held {
    /// The connection and its number (see `Shared::placed`); `None` until the first hot request,
    /// and again after a failure.
    conn: Mutex<Option<(u64, Pooled)>>,
    /// Taken by the request that checks a replacement out; the others meanwhile check out for
    /// themselves rather than queue behind it.
    filling: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a request runs on.
#[derive(Clone)]
enum Link {
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Multiplexed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs `request`, failing it with a timeout error after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    request: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from Redis within {timeout:?}"),
        ))),
    }
}

/// Whether an error means the connection must be replaced, not just the request failed: the
/// socket broke or went silent, or the server is no longer the primary.
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// A connection for a few requests: a held one ([`RedisPool::hot`]) or one checked out for this
/// use ([`RedisPool::cold`]). Every request on it is bounded by the response timeout. If one
/// fails in a way that breaks the connection, dropping this takes the connection out of its pool.
pub struct RedisConn {
    link: Link,
    from: Origin,
    timeout: Duration,
    broken: bool,
}

enum Origin {
    Held {
        shared: Arc<Shared>,
        index: usize,
        number: u64,
    },
    CheckedOut(Option<Pooled>),
}

impl RedisConn {
    /// Whether this is a Redis Cluster connection (multi-slot writes run per slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    fn note<T>(&mut self, r: &RedisResult<T>) {
        if let Err(e) = r
            && breaks_connection(e)
        {
            self.broken = true;
        }
    }

    /// Runs `cmd` on the server at `at` when this is a cluster connection (for a PUBLISH whose
    /// receiver count must be that server's: a cluster counts each node's subscribers apart);
    /// anywhere else like any command.
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        cmd: Cmd,
        at: Option<&ConnectionAddr>,
    ) -> RedisResult<T> {
        let (Link::Cluster(c), Some(ConnectionAddr::Tcp(host, port))) = (&mut self.link, at) else {
            return cmd.query_async(self).await;
        };
        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            },
        );
        let r = bounded(self.timeout, c.route_command(cmd, routing)).await;
        self.note(&r);
        Ok(redis::from_redis_value(r?)?)
    }

    /// Applies `writes`: on one server as one pipeline in order; on a cluster stage by stage, each
    /// stage as one pipeline per slot group, run concurrently.
    pub async fn write(&mut self, writes: Writes) -> Result<(), RouteError> {
        let Link::Cluster(c) = self.link.clone() else {
            let mut pipe = redis::pipe();
            for (_, cmd) in writes.stages.into_iter().flatten() {
                pipe.add_command(cmd).ignore();
            }
            return Ok(pipe.query_async::<()>(self).await?);
        };
        let timeout = self.timeout;
        for stage in writes.stages {
            let mut groups: HashMap<String, Pipeline> = HashMap::new();
            for (group, cmd) in stage {
                groups
                    .entry(group)
                    .or_insert_with(redis::pipe)
                    .add_command(cmd)
                    .ignore();
            }
            let r = try_join_all(groups.into_values().map(|pipe| {
                let mut c = c.clone();
                bounded(timeout, async move { pipe.query_async::<()>(&mut c).await })
            }))
            .await;
            self.note(&r);
            r?;
        }
        Ok(())
    }

    /// Runs groups of reads, each group's commands on keys of one slot, and answers each group's
    /// replies in order: one pipeline on one server, one pipeline per group on a cluster.
    pub async fn read_groups(
        &mut self,
        groups: Vec<Vec<Cmd>>,
    ) -> Result<Vec<Vec<Value>>, RouteError> {
        let Link::Cluster(c) = self.link.clone() else {
            let mut pipe = redis::pipe();
            let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
            for cmd in groups.into_iter().flatten() {
                pipe.add_command(cmd);
            }
            if sizes.iter().sum::<usize>() == 0 {
                return Ok(sizes.iter().map(|_| Vec::new()).collect());
            }
            let mut replies: Vec<Value> = pipe.query_async(self).await?;
            let mut out = Vec::with_capacity(sizes.len());
            for n in sizes {
                let rest = replies.split_off(n.min(replies.len()));
                out.push(std::mem::replace(&mut replies, rest));
            }
            return Ok(out);
        };
        let timeout = self.timeout;
        let r = try_join_all(groups.into_iter().map(|group| {
            let mut c = c.clone();
            bounded(timeout, async move {
                if group.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for cmd in group {
                    pipe.add_command(cmd);
                }
                pipe.query_async::<Vec<Value>>(&mut c).await
            })
        }))
        .await;
        self.note(&r);
        Ok(r?)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = bounded(self.timeout, self.link.req_packed_command(cmd)).await;
            self.note(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = bounded(
                self.timeout,
                self.link.req_packed_commands(cmd, offset, count),
            )
            .await;
            self.note(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

impl Drop for RedisConn {
    fn drop(&mut self) {
        if !self.broken {
            // A checked-out connection goes back to its pool as its `Pooled` drops.
            return;
        }
        match &mut self.from {
            Origin::Held {
                shared,
                index,
                number,
            } => shared.let_go(*index, *number),
            Origin::CheckedOut(pooled) => {
                if let Some(p) = pooled.take() {
                    p.discard();
                }
            }
        }
    }
}

impl Shared {
    /// Drops held connection `index` if it is still the one numbered `number`.
    fn let_go(&self, index: usize, number: u64) {
        let Some(held) = self.held.get(index) else {
            return;
        };
        let mut conn = lock(&held.conn);
        if conn.as_ref().is_some_and(|(n, _)| *n == number)
            && let Some((_, pooled)) = conn.take()
        {
            drop(conn);
            tracing::debug!(
                held = index,
                "a held Redis connection failed; it is replaced at its next use"
            );
            pooled.discard();
        }
    }
}

impl RedisPool {
    /// A handle on `url`'s server, cluster or Sentinel-watched primary, holding `held`
    /// connections checked out for [`Self::hot`] (none: every request checks out). `timeout`
    /// bounds each response and each checkout. Nothing is dialled until the first request, so a
    /// node can start while Redis is away.
    pub fn open(url: &str, timeout: Duration, held: usize) -> Result<Self, String> {
        let target = RedisTarget::parse(url)?;
        let pools = build_pools(&target, timeout, held + COLD_CONNECTIONS)?;
        Ok(Self(Arc::new(Shared {
            pools,
            target,
            held: (0..held).map(|_| Held::default()).collect(),
            next: AtomicUsize::new(0),
            placed: AtomicU64::new(0),
            timeout,
            primary_moves: AtomicU64::new(0),
        })))
    }

    /// A connection for a hot path: one of the held ones, in turn (checked out first if its
    /// place is empty). No checkout cost per use.
    pub async fn hot(&self) -> Result<RedisConn, RouteError> {
        let shared = &self.0;
        if shared.held.is_empty() {
            return self.cold().await;
        }
        let index = shared.next.fetch_add(1, Ordering::Relaxed) % shared.held.len();
        self.held_at(index).await
    }

    /// Checks out every held connection that is not held yet, so that the first burst of hot
    /// requests finds them (until then concurrent hot requests check out for themselves).
    pub async fn hold(&self) -> Result<(), RouteError> {
        for index in 0..self.0.held.len() {
            self.held_at(index).await?;
        }
        Ok(())
    }

    /// The first held connection: requests made one after another on it reach Redis in that
    /// order (the broadcast baseline publishes through it).
    pub async fn ordered(&self) -> Result<RedisConn, RouteError> {
        if self.0.held.is_empty() {
            return self.cold().await;
        }
        self.held_at(0).await
    }

    async fn held_at(&self, index: usize) -> Result<RedisConn, RouteError> {
        let shared = &self.0;
        let Some(place) = shared.held.get(index) else {
            return self.cold().await;
        };
        if let Some(conn) = self.take_held(index) {
            return Ok(conn);
        }
        let Ok(_filling) = place.filling.try_lock() else {
            // Another request is checking a replacement out: this one does not wait for it.
            return self.cold().await;
        };
        if let Some(conn) = self.take_held(index) {
            return Ok(conn);
        }
        let pooled = self.checkout().await?;
        let number = shared.placed.fetch_add(1, Ordering::Relaxed);
        let link = pooled.link();
        *lock(&place.conn) = Some((number, pooled));
        Ok(RedisConn {
            link,
            from: Origin::Held {
                shared: shared.clone(),
                index,
                number,
            },
            timeout: shared.timeout,
            broken: false,
        })
    }

    fn take_held(&self, index: usize) -> Option<RedisConn> {
        let shared = &self.0;
        let conn = lock(&shared.held.get(index)?.conn);
        let (number, pooled) = conn.as_ref()?;
        Some(RedisConn {
            link: pooled.link(),
            from: Origin::Held {
                shared: shared.clone(),
                index,
                number: *number,
            },
            timeout: shared.timeout,
            broken: false,
        })
    }

    /// A connection for a cold path: checked out of the pool for this use (deadpool checks it
    /// with UNWATCH + PING first) and returned when dropped.
    pub async fn cold(&self) -> Result<RedisConn, RouteError> {
        let pooled = self.checkout().await?;
        Ok(RedisConn {
            link: pooled.link(),
            from: Origin::CheckedOut(Some(pooled)),
            timeout: self.0.timeout,
            broken: false,
        })
    }

    async fn checkout(&self) -> Result<Pooled, RouteError> {
        let r = match &self.0.pools {
            Pools::Server(p) => p.get().await.map(Pooled::Server).map_err(|e| e.to_string()),
            Pools::Cluster(p) => p
                .get()
                .await
                .map(Pooled::Cluster)
                .map_err(|e| e.to_string()),
            Pools::Sentinel(p) => p
                .get()
                .await
                .map(Pooled::Sentinel)
                .map_err(|e| e.to_string()),
        };
        r.map_err(RouteError::Pool)
    }

    /// The sentinels named another primary: drops every held and idle connection (the ones to
    /// the old primary would answer reads as a replica, or not at all) and counts the move, so
    /// that the node puts its routes back (writes the old primary took just before it fell may
    /// not have reached the new one).
    pub fn primary_moved(&self) {
        for place in self.0.held.iter() {
            let taken = lock(&place.conn).take();
            if let Some((_, pooled)) = taken {
                pooled.discard();
            }
        }
        let idle = match &self.0.pools {
            Pools::Server(p) => p.retain(|_, _| false).removed.len(),
            Pools::Cluster(p) => p.retain(|_, _| false).removed.len(),
            Pools::Sentinel(p) => p.retain(|_, _| false).removed.len(),
        };
        tracing::debug!(idle, "dropped the connections to the former primary");
        self.0.primary_moves.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the primary moved since this handle was made (see [`Self::primary_moved`]).
    pub fn primary_moves(&self) -> u64 {
        self.0.primary_moves.load(Ordering::Acquire)
    }

    /// Where this handle's pub/sub subscriptions go (see [`Subscriptions`]).
    pub fn subscriptions(&self) -> Result<Subscriptions, String> {
        let timeout = self.0.timeout;
        let source = match &self.0.target {
            RedisTarget::Server(url) => Source::Servers(vec![open_client(url)?]),
            // Classic pub/sub is cluster-wide: a subscriber on any node hears every publish.
            RedisTarget::Cluster(seeds) => Source::Servers(
                seeds
                    .iter()
                    .map(|u| open_client(u))
                    .collect::<Result<_, _>>()?,
            ),
            RedisTarget::Sentinel(s) => Source::Sentinel {
                client: tokio::sync::Mutex::new(
                    redis::sentinel::SentinelClient::build(
                        s.sentinels.clone(),
                        s.master.clone(),
                        Some(s.node_info()),
                        redis::sentinel::SentinelServerType::Master,
                    )
                    .map_err(|e| e.to_string())?,
                ),
                sentinels: s
                    .sentinels
                    .iter()
                    .map(|u| open_client(u))
                    .collect::<Result<_, _>>()?,
                asking: tokio::sync::Mutex::new(None),
                master: s.master.clone(),
                last: Mutex::new(None),
            },
        };
        Ok(Subscriptions(Arc::new(SubShared {
            source,
            timeout,
            pool: self.clone(),
        })))
    }
}

fn open_client(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| e.to_string())
}

/// The one place pools are built: one deadpool-redis pool per handle, of the kind the URL names.
/// Checking out waits, connects and PINGs for at most `timeout` each; a single server's
/// connections also bound each response by it (cluster and Sentinel connections are bounded by
/// [`RedisConn`]).
fn build_pools(target: &RedisTarget, timeout: Duration, max_size: usize) -> Result<Pools, String> {
    let config = PoolConfig {
        max_size,
        timeouts: Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        },
        // The most recently returned connection first: the others age and are the ones to go.
        queue_mode: QueueMode::Lifo,
    };
    let fail = |e: &dyn std::fmt::Display| format!("cannot make a Redis pool: {e}");
    // Every kind of pool is built the same way from its manager.
    macro_rules! pool {
        ($pool:ty, $manager:expr) => {
            <$pool>::builder($manager.map_err(|e| fail(&e))?)
                .config(config)
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| fail(&e))?
        };
    }
    Ok(match target {
        RedisTarget::Server(url) => {
            let connection = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            Pools::Server(pool!(
                deadpool_redis::Pool,
                deadpool_redis::Manager::new_with_config(url.as_str(), connection)
            ))
        }
        RedisTarget::Cluster(seeds) => Pools::Cluster(pool!(
            deadpool_redis::cluster::Pool,
            deadpool_redis::cluster::Manager::new(seeds.clone(), false)
        )),
        RedisTarget::Sentinel(s) => {
            let node = deadpool_redis::sentinel::SentinelNodeConnectionInfo {
                tls_mode: None,
                redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                    username: s.username.clone(),
                    password: s.password.clone(),
                    ..Default::default()
                }),
            };
            Pools::Sentinel(pool!(
                deadpool_redis::sentinel::Pool,
                deadpool_redis::sentinel::Manager::new(
                    s.sentinels.clone(),
                    s.master.clone(),
                    Some(node),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                )
            ))
        }
    })
}

/// Where pub/sub subscriptions are made: each on a dedicated connection outside the pools.
/// Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions(Arc<SubShared>);

struct SubShared {
    source: Source,
    timeout: Duration,
    /// Told when the primary moved (Sentinel only).
    pool: RedisPool,
}

// Made once per process and kept behind an Arc: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// Fixed servers, tried in turn: the one server, or every seed of a cluster.
    Servers(Vec<redis::Client>),
    /// The primary the sentinels name, asked again for every subscription.
    Sentinel {
        client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
        /// The sentinels themselves, to ask which primary they name now.
        sentinels: Vec<redis::Client>,
        /// A connection to the sentinel that answered last.
        asking: tokio::sync::Mutex<Option<MultiplexedConnection>>,
        master: String,
        /// Where the last subscription was made.
        last: Mutex<Option<ConnectionAddr>>,
    },
}

impl Subscriptions {
    /// Whether subscriptions follow a primary named by Sentinel (and should check that they
    /// still do, see [`Self::still_primary`]).
    pub fn follows_sentinels(&self) -> bool {
        matches!(self.0.source, Source::Sentinel { .. })
    }

    /// The server to subscribe on, for attempt number `turn`: the servers in turn, or the primary
    /// the sentinels name now (they are asked every time: after a failover it is another).
    pub async fn server(&self, turn: usize) -> RedisResult<redis::Client> {
        match &self.0.source {
            Source::Servers(servers) => servers
                .get(turn % servers.len().max(1))
                .cloned()
                .ok_or_else(|| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "no Redis server named"))
                }),
            Source::Sentinel { client, .. } => {
                bounded(self.0.timeout, async {
                    client.lock().await.async_get_client().await
                })
                .await
            }
        }
    }

    /// The address of server number `turn` when subscriptions go to fixed servers (one server,
    /// or a cluster's seeds); `None` behind Sentinel.
    pub fn fixed_server(&self, turn: usize) -> Option<ConnectionAddr> {
        let Source::Servers(servers) = &self.0.source else {
            return None;
        };
        let server = servers.get(turn % servers.len().max(1))?;
        Some(server.get_connection_info().addr().clone())
    }

    /// Notes that the route events are now heard on `server`. Behind Sentinel, a server other
    /// than the last one means the primary moved: the pool drops its connections to the old one
    /// and counts the move (see [`RedisPool::primary_moved`]).
    pub fn subscribed_on(&self, server: &redis::Client) {
        let Source::Sentinel { last, .. } = &self.0.source else {
            return;
        };
        let addr = server.get_connection_info().addr().clone();
        let before = lock(last).replace(addr.clone());
        if before.as_ref().is_some_and(|b| *b != addr) {
            tracing::warn!(primary = %addr, "the Redis primary moved (failover); following it");
            self.0.pool.primary_moved();
        }
    }

    /// Whether `server` is still the primary the sentinels name. False once they name another
    /// (a demoted primary keeps its subscribers connected, as a replica); true when not behind
    /// Sentinel, or when no sentinel answers (nothing better is known).
    pub async fn still_primary(&self, server: &redis::Client) -> bool {
        let Source::Sentinel {
            sentinels,
            asking,
            master,
            ..
        } = &self.0.source
        else {
            return true;
        };
        let ConnectionAddr::Tcp(host, port) = server.get_connection_info().addr() else {
            return true;
        };
        let mut asking = asking.lock().await;
        let ask = |mut c: MultiplexedConnection| async move {
            let named: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master)
                .query_async(&mut c)
                .await?;
            Ok::<_, RedisError>((c, named))
        };
        let mut answer = None;
        if let Some(c) = asking.take() {
            answer = bounded(self.0.timeout, ask(c)).await.ok();
        }
        for s in sentinels {
            if answer.is_some() {
                break;
            }
            answer = bounded(self.0.timeout, async {
                ask(s.get_multiplexed_async_connection().await?).await
            })
            .await
            .ok();
        }
        match answer {
            Some((c, named)) => {
                *asking = Some(c);
                named.is_none_or(|(h, p)| h == *host && p == *port)
            }
            None => true,
        }
    }
}

/// The scheme of a Redis Cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The scheme of a Redis Sentinel URL.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// What `--redis-url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://` or `rediss://` (TLS), as redis-rs reads it.
    Server(String),
    /// A Redis Cluster: its seed servers, each as a `redis://` URL carrying the credentials.
    Cluster(Vec<String>),
    /// The primary a set of Sentinels names.
    Sentinel(SentinelTarget),
}

/// A `redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER` URL, read.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The sentinels, each as a `redis://host:port` URL.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// Credentials for the primary (and its replicas), not for the sentinels.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl SentinelTarget {
    fn node_info(&self) -> redis::sentinel::SentinelNodeConnectionInfo {
        let mut info = redis::RedisConnectionInfo::default();
        if let Some(u) = &self.username {
            info = info.set_username(u);
        }
        if let Some(p) = &self.password {
            info = info.set_password(p);
        }
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info)
    }
}

impl RedisTarget {
    /// Reads a `--redis-url`. Errors say what is wrong without repeating the URL (it may carry a
    /// password).
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(seeds) = cluster_seeds(url) {
            return seeds.map(Self::Cluster);
        }
        if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
            return parse_sentinel(rest).map(Self::Sentinel);
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(format!(
                "a Redis URL starts with redis://, rediss://, {CLUSTER_SCHEME} or {SENTINEL_SCHEME}"
            ));
        }
        url.into_connection_info()
            .map_err(|e| format!("not a Redis URL: {e}"))?;
        Ok(Self::Server(url.to_owned()))
    }
}

const SENTINEL_FORM: &str = "redis+sentinel://[user:password@]host:port,host:port/MASTER";

fn parse_sentinel(rest: &str) -> Result<SentinelTarget, String> {
    let Some((authority, master)) = rest.split_once('/') else {
        return Err(format!(
            "a Sentinel URL names its master after a '/': {SENTINEL_FORM}"
        ));
    };
    let master = master.strip_suffix('/').unwrap_or(master);
    if master.is_empty() {
        return Err(format!("a Sentinel URL names its master: {SENTINEL_FORM}"));
    }
    if master.contains(['/', '?', '#']) || master.chars().any(char::is_whitespace) {
        return Err(format!(
            "{master:?} is not a master name (one word after the hosts): {SENTINEL_FORM}"
        ));
    }
    let (auth, hosts) = match authority.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, authority),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let port = host
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty())
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if port.is_none() {
            return Err(format!(
                "{host:?} is not host:port (a sentinel): {SENTINEL_FORM}"
            ));
        }
        let url = format!("redis://{host}");
        url.as_str()
            .into_connection_info()
            .map_err(|e| format!("{host:?} is not a sentinel address: {e}"))?;
        sentinels.push(url);
    }
    // The user-info read as redis-rs reads it in a redis:// URL (percent-decoded).
    let (username, password) = match auth {
        None => (None, None),
        Some(auth) => {
            let info = format!("redis://{auth}@localhost")
                .into_connection_info()
                .map_err(|_| {
                    "the user-info of the Sentinel URL is not user:password (percent-encode reserved characters)".to_owned()
                })?;
            let settings = info.redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            )
        }
    };
    Ok(SentinelTarget {
        sentinels,
        master: master.to_owned(),
        username,
        password,
    })
}

/// The seed servers of a `redis+cluster://[user:pass@]h1:p1,h2:p2[/]` URL, each as a `redis://`
/// URL carrying the credentials; `None` when `url` is not a cluster URL.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    Some(if seeds.is_empty() {
        Err("a cluster URL names its nodes: redis+cluster://host:port,host:port".to_owned())
    } else if let Some(bad) = hosts.split(',').find(|h| h.contains('/')) {
        Err(format!("{bad:?} is not host:port (a cluster node)"))
    } else {
        Ok(seeds)
    })
}

/// Writes on keys of several slots, in stages: a stage is applied only after the one before it.
/// Each command is filed under the slot group of its key (its `{hash tag}`).
pub struct Writes {
    stages: Vec<Vec<(String, Cmd)>>,
}

impl Default for Writes {
    fn default() -> Self {
        Self::new()
    }
}

impl Writes {
    pub fn new() -> Self {
        Self {
            stages: vec![Vec::new()],
        }
    }

    /// Adds `cmd`, whose key is `key`, to the current stage.
    pub fn add(&mut self, key: &str, cmd: Cmd) -> &mut Self {
        if let Some(stage) = self.stages.last_mut() {
            stage.push((slot_group(key).to_owned(), cmd));
        }
        self
    }

    /// Starts the next stage: what is added from now on runs after what was added before.
    pub fn then(&mut self) -> &mut Self {
        if self.stages.last().is_some_and(|s| !s.is_empty()) {
            self.stages.push(Vec::new());
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(Vec::is_empty)
    }
}

/// The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the whole key.
fn slot_group(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(cluster_seeds("redis://h:1"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2/"),
            Some(Ok(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(
            cluster_seeds("redis+cluster://u:p@a:1,b:2"),
            Some(Ok(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()]))
        );
        assert!(matches!(cluster_seeds("redis+cluster://"), Some(Err(_))));
        assert!(matches!(
            cluster_seeds("redis+cluster://a:1/0,b:2"),
            Some(Err(_))
        ));
    }

    fn sentinel(url: &str) -> SentinelTarget {
        match RedisTarget::parse(url) {
            Ok(RedisTarget::Sentinel(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_credentials() {
        let s = sentinel("redis+sentinel://a:26379,b:26380/mymaster");
        assert_eq!(s.sentinels, ["redis://a:26379", "redis://b:26380"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!((s.username, s.password), (None, None));

        let s = sentinel("redis+sentinel://:s3cret@127.0.0.1:1/primary/");
        assert_eq!(s.sentinels, ["redis://127.0.0.1:1"]);
        assert_eq!(s.master, "primary");
        assert_eq!((s.username, s.password), (None, Some("s3cret".into())));

        let s = sentinel("redis+sentinel://app:p%40ss@h:1, h2:2/m");
        assert_eq!(s.sentinels, ["redis://h:1", "redis://h2:2"]);
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("app"), Some("p@ss"))
        );
        assert!(
            !format!("{s:?}").contains("p@ss"),
            "Debug hides the password"
        );
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong_without_the_password() {
        for (url, says) in [
            ("redis+sentinel://h:1", "master"),
            ("redis+sentinel://h:1/", "master"),
            ("redis+sentinel:///m", "host:port"),
            ("redis+sentinel://h/m", "host:port"),
            ("redis+sentinel://h:1,,h:2/m", "host:port"),
            ("redis+sentinel://h:99999/m", "host:port"),
            ("redis+sentinel://:pw@h:1/m/0", "master name"),
            ("redis+sentinel://:pw@h:1/a b", "master name"),
        ] {
            let e = RedisTarget::parse(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }

    #[test]
    fn urls_name_their_kind() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379"),
            Ok(RedisTarget::Server("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            RedisTarget::parse("rediss://:pw@cache.example:6380/0"),
            Ok(RedisTarget::Server(
                "rediss://:pw@cache.example:6380/0".into()
            ))
        );
        assert!(matches!(
            RedisTarget::parse("redis+cluster://a:1"),
            Ok(RedisTarget::Cluster(_))
        ));
        let e = RedisTarget::parse("http://:pw@h:1").expect_err("not redis");
        assert!(e.contains("redis+sentinel://") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn keys_group_by_their_hash_tag() {
        assert_eq!(slot_group("wsr:u:{bob}:conns"), "bob");
        assert_eq!(slot_group("wsr:u:{bob}:inbox:ids"), "bob");
        assert_eq!(slot_group("wsr:nodes"), "wsr:nodes");
        assert_eq!(slot_group("a{}b"), "a{}b");
    }
}
