//! The route table in Redis: node registration and leases, per-user connection entries, the
//! per-node index that lets a node's routes be removed in one sweep, and dead-node cleanup.
//!
//! A route lives exactly as long as its node's lease: routes carry no TTL of their own, a live
//! node puts them back if Redis lost them, and a survivor removes a dead node's routes.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_redis::Pool;
use redis::AsyncCommands;

use super::Route;
use super::keys;
use crate::ids::{ConnId, NodeId, UserId};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no Redis connection: {0}")]
    Pool(#[source] deadpool_redis::PoolError),
    #[error("Redis command failed: {0}")]
    Command(#[source] redis::RedisError),
}

impl From<deadpool_redis::PoolError> for RouteError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Pool(e)
    }
}

impl From<redis::RedisError> for RouteError {
    fn from(e: redis::RedisError) -> Self {
        Self::Command(e)
    }
}

/// KEYS: user's connections, node's index. ARGV: conn, route value, user, max per user.
static REGISTER_NEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
",
    )
});

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: NodeId,
    pub grpc_addr: String,
    pub public_url: String,
    pub started_at_ms: i64,
    pub connections: u64,
    /// Milliseconds left on the lease; 0 or less when the lease is gone (node dead).
    pub lease_left_ms: i64,
    pub draining: bool,
    /// Connections the node accepts at most (0 = no cap).
    pub max_connections: u64,
}

impl NodeRecord {
    pub fn alive(&self) -> bool {
        self.lease_left_ms > 0
    }

    /// Whether the node has room for another client (as of its last heartbeat).
    pub fn has_room(&self) -> bool {
        self.max_connections == 0 || self.connections < self.max_connections
    }
}

/// One connection to register (on connect, or in bulk after Redis lost its data).
#[derive(Debug, Clone)]
pub struct Registration {
    pub user: UserId,
    pub route: Route,
}

/// The route table. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct RouteTable {
    pool: Pool,
    node: NodeId,
    lease_ttl: Duration,
    metrics: Metrics,
}

impl RouteTable {
    pub fn new(pool: Pool, node: NodeId, lease_ttl: Duration, metrics: Metrics) -> Self {
        Self {
            pool,
            node,
            lease_ttl,
            metrics,
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, RouteError> {
        Ok(self.pool.get().await?)
    }

    /// Counts and times one Redis operation (until the returned timer drops).
    fn count(&self, op: &'static str) -> prometheus::HistogramTimer {
        self.metrics.redis_op(op)
    }

    // ------------------------------------------------------------ nodes and leases

    /// Publishes this node's record and takes its lease.
    pub async fn register_node(&self, record: &NodeRecord) -> Result<(), RouteError> {
        let _timer = self.count("register_node");
        let mut c = self.conn().await?;
        redis::pipe()
            .atomic()
            .hset_multiple(
                keys::node_info(&self.node),
                &[
                    ("grpc", record.grpc_addr.clone()),
                    ("url", record.public_url.clone()),
                    ("started_ms", record.started_at_ms.to_string()),
                    ("conns", record.connections.to_string()),
                    ("draining", u8::from(record.draining).to_string()),
                    ("max_conns", record.max_connections.to_string()),
                ],
            )
            .ignore()
            .sadd(keys::nodes(), self.node.as_str())
            .ignore()
            .pset_ex(keys::node_lease(&self.node), "1", self.lease_ttl_ms())
            .ignore()
            .query_async::<()>(&mut *c)
            .await?;
        Ok(())
    }

    fn lease_ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renews the lease. Returns false when the lease was gone: Redis lost its data or a survivor
    /// declared this node dead, and the caller must register everything again.
    pub async fn renew_lease(&self, connections: u64, draining: bool) -> Result<bool, RouteError> {
        let _timer = self.count("renew_lease");
        let mut c = self.conn().await?;
        let (renewed,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(keys::node_lease(&self.node))
            .arg("1")
            .arg("PX")
            .arg(self.lease_ttl_ms())
            .arg("XX")
            .hset_multiple(
                keys::node_info(&self.node),
                &[
                    ("conns", connections.to_string()),
                    ("draining", u8::from(draining).to_string()),
                ],
            )
            .ignore()
            .sadd(keys::nodes(), self.node.as_str())
            .ignore()
            .query_async(&mut *c)
            .await?;
        Ok(renewed.is_some())
    }

    /// Every registered node with its record and lease, sorted by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, RouteError> {
        let _timer = self.count("list_nodes");
        let mut c = self.conn().await?;
        let mut ids: Vec<String> = c.smembers(keys::nodes()).await?;
        ids.sort();
        let mut pipe = redis::pipe();
        let mut valid = Vec::with_capacity(ids.len());
        for id in &ids {
            let Ok(node) = NodeId::parse(id) else {
                tracing::warn!(node = %id, "skipping a node id in Redis that is not valid");
                continue;
            };
            pipe.hgetall(keys::node_info(&node))
                .pttl(keys::node_lease(&node));
            valid.push(node);
        }
        if valid.is_empty() {
            return Ok(Vec::new());
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut *c).await?;
        let mut out = Vec::with_capacity(valid.len());
        for (node, pair) in valid.into_iter().zip(replies.chunks(2)) {
            let info: HashMap<String, String> =
                redis::from_redis_value(pair[0].clone()).unwrap_or_default();
            let pttl: i64 = redis::from_redis_value(pair[1].clone()).unwrap_or(-2);
            out.push(NodeRecord {
                node,
                grpc_addr: info.get("grpc").cloned().unwrap_or_default(),
                public_url: info.get("url").cloned().unwrap_or_default(),
                started_at_ms: info
                    .get("started_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                connections: info.get("conns").and_then(|v| v.parse().ok()).unwrap_or(0),
                lease_left_ms: pttl.max(0),
                draining: info.get("draining").map(|v| v == "1").unwrap_or(false),
                max_connections: info
                    .get("max_conns")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// The gRPC address a node advertises, if it is registered.
    pub async fn node_grpc_addr(&self, node: &NodeId) -> Result<Option<String>, RouteError> {
        let _timer = self.count("node_addr");
        let mut c = self.conn().await?;
        Ok(c.hget(keys::node_info(node), "grpc").await?)
    }

    /// Whether a node's lease is still held.
    pub async fn node_alive(&self, node: &NodeId) -> Result<bool, RouteError> {
        let _timer = self.count("node_alive");
        let mut c = self.conn().await?;
        Ok(c.exists(keys::node_lease(node)).await?)
    }

    // ------------------------------------------------------------ connections

    /// Registers one new connection unless its user already holds `max` connections in the
    /// cluster (checked and written in one script, so that concurrent connects cannot both slip
    /// under the limit). Returns false when the user is at the limit.
    pub async fn register_new(&self, reg: &Registration, max: u32) -> Result<bool, RouteError> {
        let _timer = self.count("register");
        let mut c = self.conn().await?;
        let admitted: i64 = REGISTER_NEW
            .key(keys::user_conns(&reg.user))
            .key(keys::node_conns(&self.node))
            .arg(reg.route.conn.as_str())
            .arg(reg.route.encode_value())
            .arg(reg.user.as_str())
            .arg(max)
            .invoke_async(&mut *c)
            .await?;
        Ok(admitted == 1)
    }

    /// Adds connections of this node. Each user entry and its index entry are written in one
    /// MULTI, so that a route never exists without the index that lets it be cleaned up.
    pub async fn register(&self, regs: &[Registration]) -> Result<(), RouteError> {
        if regs.is_empty() {
            return Ok(());
        }
        let _timer = self.count("register");
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in regs {
            pipe.hset(
                keys::user_conns(&r.user),
                r.route.conn.as_str(),
                r.route.encode_value(),
            )
            .ignore()
            .hset(
                keys::node_conns(&self.node),
                r.route.conn.as_str(),
                r.user.as_str(),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut *c).await?;
        Ok(())
    }

    /// Removes one connection of this node. Entries are keyed by the cluster-unique connection
    /// id, so this can never remove the entry of a newer connection of the same user.
    pub async fn unregister(&self, user: &UserId, conn: &ConnId) -> Result<(), RouteError> {
        let _timer = self.count("unregister");
        let mut c = self.conn().await?;
        redis::pipe()
            .atomic()
            .hdel(keys::user_conns(user), conn.as_str())
            .ignore()
            .hdel(keys::node_conns(&self.node), conn.as_str())
            .ignore()
            .query_async::<()>(&mut *c)
            .await?;
        Ok(())
    }

    /// A user's live connections, straight from Redis.
    pub async fn lookup(&self, user: &UserId) -> Result<Vec<Route>, RouteError> {
        let _timer = self.count("lookup");
        let mut c = self.conn().await?;
        let entries: HashMap<String, String> = c.hgetall(keys::user_conns(user)).await?;
        let mut routes: Vec<Route> = entries
            .iter()
            .filter_map(|(conn, value)| {
                let r = Route::decode(conn, value);
                if r.is_none() {
                    tracing::warn!(%user, conn = %conn, "skipping an unreadable route entry");
                }
                r
            })
            .collect();
        routes.sort_by(|a, b| {
            (a.connected_at_ms, a.conn.as_str()).cmp(&(b.connected_at_ms, b.conn.as_str()))
        });
        Ok(routes)
    }

    /// The connections a node's index holds, as `(conn, user)` pairs.
    pub async fn node_routes(&self, node: &NodeId) -> Result<Vec<(String, String)>, RouteError> {
        let _timer = self.count("node_routes");
        let mut c = self.conn().await?;
        let mut entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        entries.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(entries)
    }

    /// Removes this node's index entries (and their user entries) for connections it no longer
    /// holds: what a failed unregister left behind. Returns the users whose routes changed.
    pub async fn reconcile(&self, holds: impl Fn(&str) -> bool) -> Result<Vec<UserId>, RouteError> {
        let _timer = self.count("reconcile");
        let mut c = self.conn().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(&self.node)).await?;
        let mut pipe = redis::pipe();
        let mut users = Vec::new();
        for (conn, user) in entries.iter().filter(|(conn, _)| !holds(conn)) {
            if let Ok(u) = UserId::parse(user) {
                pipe.hdel(keys::user_conns(&u), conn).ignore();
                users.push(u);
            }
            pipe.hdel(keys::node_conns(&self.node), conn).ignore();
        }
        if !users.is_empty() {
            pipe.query_async::<()>(&mut *c).await?;
        }
        Ok(users)
    }

    /// Removes every route of `node` listed in its index, then the node itself. Used by a node
    /// stopping cleanly (for itself) and by the cleaner (for a dead node). Returns the users whose
    /// routes changed.
    pub async fn remove_node(&self, node: &NodeId) -> Result<Vec<UserId>, RouteError> {
        let _timer = self.count("remove_node");
        let mut c = self.conn().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        let mut users = Vec::new();
        let mut pipe = redis::pipe();
        for (conn, user) in &entries {
            if let Ok(u) = UserId::parse(user) {
                pipe.hdel(keys::user_conns(&u), conn).ignore();
                users.push(u);
            }
            // Field by field, not DEL: a restarted node of the same id may be adding new ones.
            pipe.hdel(keys::node_conns(node), conn).ignore();
        }
        pipe.srem(keys::nodes(), node.as_str())
            .ignore()
            .del(keys::node_info(node))
            .ignore();
        if node == &self.node {
            pipe.del(keys::node_lease(node)).ignore();
        }
        pipe.query_async::<()>(&mut *c).await?;
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Finds nodes whose lease ran out and removes their routes. A per-node lock makes sure
    /// one survivor does the work, not all of them. Returns the nodes cleaned and their users.
    pub async fn sweep_dead_nodes(&self) -> Result<Vec<(NodeId, Vec<UserId>)>, RouteError> {
        let _timer = self.count("sweep");
        let mut c = self.conn().await?;
        let ids: Vec<String> = c.smembers(keys::nodes()).await?;
        let mut cleaned = Vec::new();
        for id in ids {
            let Ok(node) = NodeId::parse(&id) else {
                continue;
            };
            if node == self.node {
                continue;
            }
            let alive: bool = c.exists(keys::node_lease(&node)).await?;
            if alive {
                continue;
            }
            let locked: Option<String> = redis::cmd("SET")
                .arg(keys::node_cleanup_lock(&node))
                .arg(self.node.as_str())
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut *c)
                .await?;
            if locked.is_none() {
                continue;
            }
            let users = self.remove_node(&node).await;
            // Released either way: a node restarting under this id must be cleanable again.
            let _: Result<(), _> = c.del(keys::node_cleanup_lock(&node)).await;
            let users = users?;
            tracing::warn!(dead_node = %node, routes_users = users.len(), "removed the routes of a node whose lease ran out");
            cleaned.push((node, users));
        }
        Ok(cleaned)
    }

    /// Publishes an event for the other nodes (cache invalidation, inbox changes).
    pub async fn publish(&self, payload: &str) -> Result<(), RouteError> {
        let _timer = self.count("publish");
        let mut c = self.conn().await?;
        let _: i64 = c.publish(keys::events_channel(), payload).await?;
        Ok(())
    }
}
