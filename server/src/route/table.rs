//! Users' routes in the route table: registering a connection (within the per-user limit),
//! removing it, bulk re-registration, reconciling what a failed removal left behind, and the
//! route events that tell other nodes' caches. Reading routes is `wsroute_core::routes`.
//!
//! Every route is indexed under its node (`keys::node_conns`), index entry first, so that a
//! node's routes can be removed without scanning every user (see `membership`).

use redis::{AsyncCommands, Cmd};
use wsroute_core::db::{DbError, Redis, RedisConn, Writes};
use wsroute_core::keys;
use wsroute_core::routes::{Route, RouteReader};

use super::events::RouteEvent;
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

/// One connection to register (on connect, or in bulk after Redis lost its data).
#[derive(Debug, Clone)]
pub struct Registration {
    pub user: UserId,
    pub route: Route,
}

/// This node's users' routes. Cheap to clone (the Redis handle is shared).
#[derive(Clone)]
pub struct RouteTable {
    redis: Redis,
    node: NodeId,
    metrics: Metrics,
    read: RouteReader,
}

impl RouteTable {
    pub fn new(redis: Redis, node: NodeId, metrics: Metrics) -> Self {
        let read = RouteReader::new(redis.clone(), std::sync::Arc::new(metrics.clone()));
        Self {
            redis,
            node,
            metrics,
            read,
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The read side of the route table (a clone: it shares the Redis handle).
    pub fn reader(&self) -> RouteReader {
        self.read.clone()
    }

    /// A held connection, for what runs per client: connects, disconnects, events (see
    /// `wsroute_core::db`).
    async fn hot(&self) -> Result<RedisConn, DbError> {
        self.redis.hot().await
    }

    /// A connection checked out for this use, for what runs per interval: bulk writes,
    /// reconciling.
    async fn cold(&self) -> Result<RedisConn, DbError> {
        self.redis.cold().await
    }

    /// Counts and times one Redis operation (until the returned timer drops).
    fn count(&self, op: &'static str) -> prometheus::HistogramTimer {
        self.metrics.redis_op(op)
    }

    /// A user's live connections, straight from Redis (a route-cache miss).
    pub async fn lookup(&self, user: &UserId) -> Result<Vec<Route>, DbError> {
        self.read.lookup(user).await
    }

    /// Registers one new connection unless its user already holds `max` connections in the
    /// cluster (checked and written in one script, so that concurrent connects cannot both slip
    /// under the limit), and tells the other nodes to drop the user from their route caches.
    pub async fn register_new(&self, reg: &Registration, max: u32) -> Result<Admission, DbError> {
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
    pub async fn register(&self, regs: &[Registration]) -> Result<(), DbError> {
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
    pub async fn unregister(&self, user: &UserId, conn: &ConnId) -> Result<(), DbError> {
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

    /// Removes this node's index entries (and their user entries) for connections it no longer
    /// holds: what a failed unregister left behind. Returns the users whose routes changed.
    pub async fn reconcile(&self, holds: impl Fn(&str) -> bool) -> Result<Vec<UserId>, DbError> {
        let _timer = self.count("reconcile");
        let mut c = self.cold().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(&self.node)).await?;
        let stale = entries.iter().filter(|(conn, _)| !holds(conn));
        let (w, users) = removal(&self.node, stale);
        if !w.is_empty() {
            c.write(w).await?;
        }
        Ok(users)
    }

    /// Publishes an event for the other nodes (cache invalidation, inbox changes).
    pub async fn publish(&self, payload: &str) -> Result<(), DbError> {
        let _timer = self.count("publish");
        let mut c = self.hot().await?;
        let _: i64 = c.publish(keys::events_channel(), payload).await?;
        Ok(())
    }

    /// Tells the other nodes to drop these users from their route caches (their routes were
    /// removed in bulk): one PUBLISH per user, sent in pipelines of up to [`PUBLISH_BATCH`]
    /// instead of one round trip each. Classic pub/sub is cluster-wide, so on Redis Cluster the
    /// node that takes a pipeline reaches every subscriber.
    pub async fn publish_invalidations(&self, users: &[UserId]) -> Result<(), DbError> {
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

/// The writes that remove `(conn, user)` entries of `node`: every user's route first, then
/// the index entries (field by field, not DEL: a restarted node of the same id may be adding
/// new ones). Leaves the last stage open for more. Returns the users whose routes change.
pub(super) fn removal<'a>(
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
