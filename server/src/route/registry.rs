//! The route table in Redis: node registration and leases, per-user connection entries, the
//! per-node index that lets a node's routes be removed in one sweep, and dead-node cleanup.
//!
//! A route lives exactly as long as its node's lease: routes carry no TTL of their own, a live
//! node puts them back if Redis lost them, and a survivor removes a dead node's routes.

use std::collections::HashMap;
use std::time::Duration;

use redis::{AsyncCommands, Cmd};

use super::Route;
use super::events::RouteEvent;
use super::keys;
// The error of every Redis call, defined with the pools; named here too, where callers find it.
pub use super::store::RouteError;
use super::store::{RedisConn, RedisPool, Writes};
use crate::ids::{ConnId, NodeId, UserId};
use crate::metrics::Metrics;

/// Adds a route unless the user is at the limit. KEYS: the user's connections, the user's inbox
/// ids (same slot). ARGV: conn, route value, max per user. Returns -1 refused, else how many
/// messages wait in the inbox (so that a connect with an empty inbox skips reading it).
static REGISTER_NEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('LLEN', KEYS[2])
",
    )
});

/// What registering a new connection answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The user already holds the maximum number of connections.
    Refused,
    /// Registered; `inbox` messages were waiting for the user at that instant (any stored later
    /// announces itself with an inbox event).
    Admitted { inbox: u64 },
}

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
    pool: RedisPool,
    node: NodeId,
    lease_ttl: Duration,
    metrics: Metrics,
}

impl RouteTable {
    pub fn new(pool: RedisPool, node: NodeId, lease_ttl: Duration, metrics: Metrics) -> Self {
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

    /// A held connection, for what runs per client: connects, disconnects, cache misses,
    /// events (see `store`).
    async fn hot(&self) -> Result<RedisConn, RouteError> {
        self.pool.hot().await
    }

    /// A connection checked out for this use, for what runs per interval or per operator:
    /// leases, sweeps, bulk writes, node lists.
    async fn cold(&self) -> Result<RedisConn, RouteError> {
        self.pool.cold().await
    }

    /// Checks out the connections the hot paths hold (see `store`), before clients come.
    pub async fn hold_connections(&self) -> Result<(), RouteError> {
        self.pool.hold().await
    }

    /// How many times the Redis primary moved (a Sentinel failover) since the node started:
    /// when it changes, the node puts its routes back.
    pub fn primary_moves(&self) -> u64 {
        self.pool.primary_moves()
    }

    /// Counts and times one Redis operation (until the returned timer drops).
    fn count(&self, op: &'static str) -> prometheus::HistogramTimer {
        self.metrics.redis_op(op)
    }

    // ------------------------------------------------------------ nodes and leases

    /// Publishes this node's record and takes its lease.
    pub async fn register_node(&self, record: &NodeRecord) -> Result<(), RouteError> {
        let _timer = self.count("register_node");
        let (info, lease) = (keys::node_info(&self.node), keys::node_lease(&self.node));
        let mut w = Writes::new();
        w.add(
            &info,
            Cmd::hset_multiple(
                &info,
                &[
                    ("grpc", record.grpc_addr.clone()),
                    ("url", record.public_url.clone()),
                    ("started_ms", record.started_at_ms.to_string()),
                    ("conns", record.connections.to_string()),
                    ("draining", u8::from(record.draining).to_string()),
                    ("max_conns", record.max_connections.to_string()),
                    ("mesh", crate::mesh::wire::MESH_PROTOCOL.to_owned()),
                ],
            ),
        )
        .add(&lease, Cmd::pset_ex(&lease, "1", self.lease_ttl_ms()))
        .then()
        .add(&keys::nodes(), Cmd::sadd(keys::nodes(), self.node.as_str()));
        self.cold().await?.write(w).await
    }

    fn lease_ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renews the lease. Returns false when the lease was gone: Redis lost its data or a survivor
    /// declared this node dead, and the caller must register everything again.
    pub async fn renew_lease(&self, connections: u64, draining: bool) -> Result<bool, RouteError> {
        let _timer = self.count("renew_lease");
        let mut renew = redis::cmd("SET");
        renew
            .arg(keys::node_lease(&self.node))
            .arg("1")
            .arg("PX")
            .arg(self.lease_ttl_ms())
            .arg("XX");
        let info = Cmd::hset_multiple(
            keys::node_info(&self.node),
            &[
                ("conns", connections.to_string()),
                ("draining", u8::from(draining).to_string()),
            ],
        );
        let listed = Cmd::sadd(keys::nodes(), self.node.as_str());
        let replies = self
            .cold()
            .await?
            .read_groups(vec![vec![renew, info], vec![listed]])
            .await?;
        let renewed = replies
            .first()
            .and_then(|g| g.first())
            .is_some_and(|v| *v != redis::Value::Nil);
        Ok(renewed)
    }

    /// Every registered node with its record and lease, sorted by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, RouteError> {
        let _timer = self.count("list_nodes");
        let mut c = self.cold().await?;
        let mut ids: Vec<String> = c.smembers(keys::nodes()).await?;
        ids.sort();
        let mut groups = Vec::with_capacity(ids.len());
        let mut valid = Vec::with_capacity(ids.len());
        for id in &ids {
            let Ok(node) = NodeId::parse(id) else {
                tracing::warn!(node = %id, "skipping a node id in Redis that is not valid");
                continue;
            };
            groups.push(vec![
                Cmd::hgetall(keys::node_info(&node)),
                Cmd::pttl(keys::node_lease(&node)),
            ]);
            valid.push(node);
        }
        if valid.is_empty() {
            return Ok(Vec::new());
        }
        let replies = c.read_groups(groups).await?;
        let mut out = Vec::with_capacity(valid.len());
        for (node, pair) in valid.into_iter().zip(replies) {
            let mut pair = pair.into_iter();
            let info: HashMap<String, String> = pair
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let pttl: i64 = pair
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or(-2);
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
        Ok(self.node_mesh_endpoint(node).await?.map(|(addr, _)| addr))
    }

    /// Where to dial a node and whether it reads pass-through frames (it announces
    /// [`crate::mesh::wire::MESH_PROTOCOL`]); `None` if it is not registered.
    pub async fn node_mesh_endpoint(
        &self,
        node: &NodeId,
    ) -> Result<Option<(String, bool)>, RouteError> {
        let _timer = self.count("node_addr");
        let mut c = self.hot().await?;
        let (addr, mesh): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::node_info(node))
            .arg("grpc")
            .arg("mesh")
            .query_async(&mut c)
            .await?;
        Ok(addr.map(|a| (a, mesh.as_deref() == Some(crate::mesh::wire::MESH_PROTOCOL))))
    }

    /// Whether a node's lease is still held.
    pub async fn node_alive(&self, node: &NodeId) -> Result<bool, RouteError> {
        let _timer = self.count("node_alive");
        let mut c = self.hot().await?;
        Ok(c.exists(keys::node_lease(node)).await?)
    }

    // ------------------------------------------------------------ connections

    /// Registers one new connection unless its user already holds `max` connections in the
    /// cluster (checked and written in one script, so that concurrent connects cannot both slip
    /// under the limit), and tells the other nodes to drop the user from their route caches.
    pub async fn register_new(
        &self,
        reg: &Registration,
        max: u32,
    ) -> Result<Admission, RouteError> {
        let _timer = self.count("register");
        let index = keys::node_conns(&self.node);
        let conn = reg.route.conn.as_str();
        let indexed = Cmd::hset(&index, conn, reg.user.as_str());
        let mut add = REGISTER_NEW.key(keys::user_conns(&reg.user));
        add.key(keys::inbox_ids(&reg.user));
        add.arg(conn).arg(reg.route.encode_value()).arg(max);
        let announce = Cmd::publish(
            keys::events_channel(),
            RouteEvent::Invalidate(reg.user.clone()).encode(),
        );
        let mut c = self.hot().await?;
        // The index entry first: a route must never exist without it.
        let admitted: i64 = if c.is_cluster() {
            indexed.query_async::<()>(&mut c).await?;
            let admitted = add.invoke_async(&mut c).await?;
            announce.query_async::<()>(&mut c).await?;
            admitted
        } else {
            // One round trip: all three in one pipeline (the script loaded first if Redis
            // lost it). A refused connect announces too: harmless, and rare.
            let mut pipe = redis::pipe();
            pipe.add_command(indexed)
                .ignore()
                .invoke_script(&add)
                .add_command(announce)
                .ignore();
            let first: Result<(i64,), _> = pipe.query_async(&mut c).await;
            match first {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    add.load_async(&mut c).await?;
                    pipe.query_async::<(i64,)>(&mut c).await?.0
                }
                r => r?.0,
            }
        };
        if admitted < 0 {
            let _: Result<(), _> = c.hdel(&index, conn).await;
            return Ok(Admission::Refused);
        }
        Ok(Admission::Admitted {
            inbox: admitted.unsigned_abs(),
        })
    }

    /// Adds connections of this node: the index entries first, then the users' entries, so that a
    /// route never exists without the index entry that lets it be cleaned up.
    pub async fn register(&self, regs: &[Registration]) -> Result<(), RouteError> {
        if regs.is_empty() {
            return Ok(());
        }
        let _timer = self.count("register");
        let index = keys::node_conns(&self.node);
        let mut w = Writes::new();
        for r in regs {
            w.add(
                &index,
                Cmd::hset(&index, r.route.conn.as_str(), r.user.as_str()),
            );
        }
        // Index entries first, so that no route exists without one.
        w.then();
        for r in regs {
            let key = keys::user_conns(&r.user);
            w.add(
                &key,
                Cmd::hset(&key, r.route.conn.as_str(), r.route.encode_value()),
            );
        }
        self.cold().await?.write(w).await
    }

    /// Removes one connection of this node and tells the other nodes to drop the user from their
    /// route caches. Entries are keyed by the cluster-unique connection id, so this can never
    /// remove the entry of a newer connection of the same user.
    pub async fn unregister(&self, user: &UserId, conn: &ConnId) -> Result<(), RouteError> {
        let _timer = self.count("unregister");
        let (route, index) = (keys::user_conns(user), keys::node_conns(&self.node));
        let mut w = Writes::new();
        // The route first, its index entry after.
        let channel = keys::events_channel();
        w.add(&route, Cmd::hdel(&route, conn.as_str()))
            .then()
            .add(&index, Cmd::hdel(&index, conn.as_str()))
            .add(
                &channel,
                Cmd::publish(&channel, RouteEvent::Invalidate(user.clone()).encode()),
            );
        self.hot().await?.write(w).await
    }

    /// A user's live connections, straight from Redis.
    pub async fn lookup(&self, user: &UserId) -> Result<Vec<Route>, RouteError> {
        let _timer = self.count("lookup");
        let mut c = self.hot().await?;
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
        let mut c = self.cold().await?;
        let mut entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        entries.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(entries)
    }

    /// Removes this node's index entries (and their user entries) for connections it no longer
    /// holds: what a failed unregister left behind. Returns the users whose routes changed.
    pub async fn reconcile(&self, holds: impl Fn(&str) -> bool) -> Result<Vec<UserId>, RouteError> {
        let _timer = self.count("reconcile");
        let mut c = self.cold().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(&self.node)).await?;
        let stale = entries.iter().filter(|(conn, _)| !holds(conn));
        let (w, users) = self.removal(&self.node, stale);
        if !w.is_empty() {
            c.write(w).await?;
        }
        Ok(users)
    }

    /// Removes every route of `node` listed in its index, then the node itself. Used by a node
    /// stopping cleanly (for itself) and by the cleaner (for a dead node). Returns the users whose
    /// routes changed.
    pub async fn remove_node(&self, node: &NodeId) -> Result<Vec<UserId>, RouteError> {
        let _timer = self.count("remove_node");
        let mut c = self.cold().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        let (mut w, mut users) = self.removal(node, entries.iter());
        let info = keys::node_info(node);
        w.add(&keys::nodes(), Cmd::srem(keys::nodes(), node.as_str()))
            .add(&info, Cmd::del(&info));
        if node == &self.node {
            let lease = keys::node_lease(node);
            w.add(&lease, Cmd::del(&lease));
        }
        c.write(w).await?;
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// The writes that remove `(conn, user)` entries of `node`: every user's route first, then
    /// the index entries (field by field, not DEL: a restarted node of the same id may be adding
    /// new ones). Leaves the last stage open for more. Returns the users whose routes change.
    fn removal<'a>(
        &self,
        node: &NodeId,
        entries: impl Iterator<Item = &'a (String, String)>,
    ) -> (Writes, Vec<UserId>) {
        let index = keys::node_conns(node);
        let mut routes = Writes::new();
        let mut index_dels = Vec::new();
        let mut users = Vec::new();
        for (conn, user) in entries {
            if let Ok(u) = UserId::parse(user) {
                let key = keys::user_conns(&u);
                routes.add(&key, Cmd::hdel(&key, conn));
                users.push(u);
            }
            index_dels.push(Cmd::hdel(&index, conn));
        }
        if index_dels.is_empty() {
            return (Writes::new(), users);
        }
        routes.then();
        for cmd in index_dels {
            routes.add(&index, cmd);
        }
        (routes, users)
    }

    /// Finds nodes whose lease ran out and removes their routes. A per-node lock makes sure
    /// one survivor does the work, not all of them. Returns the nodes cleaned and their users.
    pub async fn sweep_dead_nodes(
        &self,
        turn: Duration,
    ) -> Result<Vec<(NodeId, Vec<UserId>)>, RouteError> {
        let _timer = self.count("sweep");
        let mut c = self.cold().await?;
        // One node per `turn` looks: every node looking would cost Redis (nodes x nodes)
        // lease reads per interval, growing with the square of the cluster. A sweeper that dies
        // holds the turn no longer than its TTL.
        let mine: Option<String> = redis::cmd("SET")
            .arg(keys::sweep_turn())
            .arg(self.node.as_str())
            .arg("NX")
            .arg("PX")
            .arg(turn.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await?;
        if mine.is_none() {
            return Ok(Vec::new());
        }
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
                .query_async(&mut c)
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
        let mut c = self.hot().await?;
        let _: i64 = c.publish(keys::events_channel(), payload).await?;
        Ok(())
    }

    /// Tells the other nodes to drop these users from their route caches (their routes were
    /// removed in bulk): one PUBLISH per user, sent in pipelines of up to [`PUBLISH_BATCH`]
    /// instead of one round trip each. Classic pub/sub is cluster-wide, so on Redis Cluster the
    /// node that takes a pipeline reaches every subscriber.
    pub async fn publish_invalidations(&self, users: &[UserId]) -> Result<(), RouteError> {
        let channel = keys::events_channel();
        // A bulk removal's follow-up: a cold path (one checkout for every batch).
        let mut c = self.cold().await?;
        for batch in users.chunks(PUBLISH_BATCH) {
            let _timer = self.count("publish");
            let mut w = Writes::new();
            for user in batch {
                let event = RouteEvent::Invalidate(user.clone()).encode();
                w.add(&channel, Cmd::publish(&channel, event));
            }
            c.write(w).await?;
        }
        Ok(())
    }
}

/// PUBLISHes sent in one pipeline at most (a node removed in bulk may have had many users).
const PUBLISH_BATCH: usize = 1000;
