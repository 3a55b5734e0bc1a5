//! The way to Redis: one handle ([`Redis`]) on deadpool-redis pools, for a single server
//! (`redis://`, `rediss://`), a Redis Cluster (`redis+cluster://h1:p1,h2:p2`) or the primary that a
//! set of Sentinels names (`redis+sentinel://[user:pass@]h1:p1,h2:p2/MASTER`); and the one thing
//! that differs between them for wsroute: how a write that touches keys in several slots runs.
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
//! - [`Redis::hot`]: one of a few pooled connections that the node holds checked out, taken
//!   in turn. No checkout and no PING per command. Used by the paths that run per client: a
//!   connect's registration and a disconnect's removal, a route-cache miss, the inbox, events.
//!   They are checked out before the node says it is ready ([`Redis::hold`]). A held
//!   connection that fails (I/O error, timeout, dropped connection, or a `READONLY` /
//!   `MASTERDOWN` answer: a primary demoted by a failover) is taken out of its pool and replaced
//!   by a fresh checkout at its next use.
//! - [`Redis::cold`]: a checkout per use, returned to the pool afterwards (or taken out of it
//!   when it failed). Used by the paths that run per interval or per operator: leases, sweeps,
//!   bulk re-registration, node lists, and everything router-cli does.
//!
//! Every request is bounded by the response timeout, whatever the backend; so are checking out
//! (waiting for a free connection, connecting, the PING).
//!
//! Pub/sub is not pooled: a subscribed connection can carry nothing else, so each subscription
//! has a connection of its own (`subscriptions`). Behind Sentinel it is made on the primary
//! the sentinels name at that moment, and moved when they name another.
//!
//! Files: this one holds the handle and its connections; `target` reads a `--redis-url`,
//! `writes` stages multi-slot writes, `subscriptions` makes the pub/sub connections.

pub mod subscriptions;
pub mod target;
pub mod writes;

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
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, Value,
};

pub use target::{CLUSTER_SCHEME, RedisTarget, SENTINEL_SCHEME, SentinelTarget, cluster_seeds};
pub use writes::Writes;

/// The error of every Redis call wsroute makes (the route table, the inbox, the broadcast
/// baseline): no connection to be had from the pool, or the command failed. (Not
/// `redis::RedisError`, which is the second case's cause.)
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no Redis connection: {0}")]
    Pool(String),
    #[error("Redis command failed: {0}")]
    Command(#[source] RedisError),
}

impl From<RedisError> for DbError {
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

/// The way to Redis: deadpool-redis pools, one server, a cluster or a Sentinel-watched
/// primary. Cheap to clone (clones share the pools and the held connections).
#[derive(Clone)]
pub struct Redis(Arc<Shared>);

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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
pub(crate) async fn bounded<T>(
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

/// A connection for a few requests: a held one ([`Redis::hot`]) or one checked out for this
/// use ([`Redis::cold`]). Every request on it is bounded by the response timeout. If one
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
    pub async fn write(&mut self, writes: Writes) -> Result<(), DbError> {
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
    pub async fn read_groups(&mut self, groups: Vec<Vec<Cmd>>) -> Result<Vec<Vec<Value>>, DbError> {
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

impl Redis {
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
    pub async fn hot(&self) -> Result<RedisConn, DbError> {
        let shared = &self.0;
        if shared.held.is_empty() {
            return self.cold().await;
        }
        let index = shared.next.fetch_add(1, Ordering::Relaxed) % shared.held.len();
        self.held_at(index).await
    }

    /// Checks out every held connection that is not held yet, so that the first burst of hot
    /// requests finds them (until then concurrent hot requests check out for themselves).
    pub async fn hold(&self) -> Result<(), DbError> {
        for index in 0..self.0.held.len() {
            self.held_at(index).await?;
        }
        Ok(())
    }

    /// The first held connection: requests made one after another on it reach Redis in that
    /// order (the broadcast baseline publishes through it).
    pub async fn ordered(&self) -> Result<RedisConn, DbError> {
        if self.0.held.is_empty() {
            return self.cold().await;
        }
        self.held_at(0).await
    }

    async fn held_at(&self, index: usize) -> Result<RedisConn, DbError> {
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
    pub async fn cold(&self) -> Result<RedisConn, DbError> {
        let pooled = self.checkout().await?;
        Ok(RedisConn {
            link: pooled.link(),
            from: Origin::CheckedOut(Some(pooled)),
            timeout: self.0.timeout,
            broken: false,
        })
    }

    async fn checkout(&self) -> Result<Pooled, DbError> {
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
        r.map_err(DbError::Pool)
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

    /// What the URL named (where subscriptions go).
    pub(crate) fn target(&self) -> &RedisTarget {
        &self.0.target
    }

    /// The bound on every response and checkout.
    pub(crate) fn timeout(&self) -> Duration {
        self.0.timeout
    }
}

/// A connection's address and settings from its URL, with Nagle's algorithm off: commands are
/// small and pipelined from many tasks, and redis-rs leaves `TCP_NODELAY` unset, so a command
/// written while an earlier one is unanswered would wait for that answer's ACK (measured: a
/// node's CPU per connect 114 -> 99-103 us, BENCHMARKS.md "Session 11"). Used for a single
/// server's pool and every pub/sub connection; deadpool-redis 0.23's cluster and Sentinel
/// managers take no TCP settings, so those pools keep redis-rs's default.
pub(crate) fn no_delay(url: &str) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("cannot read the Redis URL: {e}"))?;
    Ok(info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
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
                deadpool_redis::Manager::new_with_config(no_delay(url)?, connection)
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
