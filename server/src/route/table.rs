//! Users' routes in the route table: registering a connection (within the per-user limit),
//! removing it, bulk re-registration, reconciling what a failed removal left behind, and the
//! route events that tell other nodes' caches. Reading routes is `wsroute_core::routes`.
//!
//! Every route is indexed under its node (`keys::node_conns`), index entry first, so that a
//! node's routes can be removed without scanning every user (see `membership`).

use std::sync::Arc;

use redis::{AsyncCommands, Cmd};
use wsroute_core::db::{DbError, Redis, RedisConn, Writes};
use wsroute_core::keys;
use wsroute_core::routes::{Route, RouteReader};

use super::events::RouteEvent;
use crate::ids::{ConnId, NodeId, UserId};
use crate::metrics::Metrics;
use crate::webhooks::event::{ADD_EVENT_LUA, Emitter, Event};

/// Adds a route unless the user is at the limit. KEYS: the user's connections, the user's inbox
/// ids (same slot), and with webhooks on a single server the webhook events stream. ARGV: conn,
/// route value, max per user, and with the stream: event id, body, max events. Returns {-1, 0,
/// 0} refused, else {how many messages wait in the inbox (so that a connect with an empty inbox
/// skips reading it), 1 if this is the user's first connection in the cluster, how many old
/// events the event's append dropped}. The `user.online` event is appended here, in the step
/// that sees the first connection.
static REGISTER_NEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{ADD_EVENT_LUA}
local n = redis.call('HLEN', KEYS[1])
if n >= tonumber(ARGV[3]) then return {{-1, 0, 0}} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local first, dropped = 0, 0
if n == 0 then
  first = 1
  if KEYS[3] then dropped = add_event(KEYS[3], ARGV[4], ARGV[5], ARGV[6]) end
end
return {{redis.call('LLEN', KEYS[2]), first, dropped}}
"
    ))
});

/// Removes connections of one user and tells whether that removed the user's last one. KEYS:
/// the user's connections, and with webhooks on a single server the webhook events stream. ARGV:
/// event id, body, max events (of the `user.offline` event appended when the last connection
/// went), then the connection ids. Returns {1 if the user has no connection left and this removed
/// one, how many old events the append dropped}.
const UNREGISTER_LUA: &str = r"
local removed = 0
for i = 4, #ARGV do removed = removed + redis.call('HDEL', KEYS[1], ARGV[i]) end
if removed > 0 and redis.call('HLEN', KEYS[1]) == 0 then
  local dropped = 0
  if KEYS[2] then dropped = add_event(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) end
  return {1, dropped}
end
return {0, 0}
";

static UNREGISTER: std::sync::LazyLock<(String, redis::Script)> = std::sync::LazyLock::new(|| {
    let source = format!("{ADD_EVENT_LUA}{UNREGISTER_LUA}");
    let script = redis::Script::new(&source);
    (source, script)
});

/// Adds connections of one user (bulk re-registration) and tells whether the user had none
/// before. KEYS: the user's connections, [the events stream]. ARGV: event id, body, max events
/// (of the `user.online` event), then connection id, route value pairs. Returns {1 if the
/// user had no connection before and has now, dropped}.
const REGISTER_BULK_LUA: &str = r"
local n = redis.call('HLEN', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if n == 0 and #ARGV >= 5 then
  local dropped = 0
  if KEYS[2] then dropped = add_event(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) end
  return {1, dropped}
end
return {0, 0}
";

static REGISTER_BULK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{ADD_EVENT_LUA}{REGISTER_BULK_LUA}"));

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
    /// With webhooks: writes `user.online` / `user.offline` beside the route changes.
    webhooks: Option<Arc<Emitter>>,
}

impl RouteTable {
    pub fn new(redis: Redis, node: NodeId, metrics: Metrics) -> Self {
        let read = RouteReader::new(redis.clone(), std::sync::Arc::new(metrics.clone()));
        Self {
            redis,
            node,
            metrics,
            read,
            webhooks: None,
        }
    }

    /// Writes a user's first and last connection as webhook events.
    pub fn with_webhooks(mut self, emitter: Arc<Emitter>) -> Self {
        self.webhooks = Some(emitter);
        self
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
        let online = self.webhooks.as_ref().map(|w| (w, w.online(&reg.user)));
        // The index entry first: a route must never exist without it.
        let (admitted, first, dropped): (i64, i64, i64) = if c.is_cluster() {
            indexed.query_async::<()>(&mut c).await?;
            let answer = add.invoke_async(&mut c).await?;
            announce.query_async::<()>(&mut c).await?;
            answer
        } else {
            // The event goes in the script: written in the same step as the route.
            if let Some((w, event)) = &online {
                w.add_to(&mut add, event);
            }
            // One round trip: all three in one pipeline (the script loaded first if Redis
            // lost it). A refused connect announces too: harmless, and rare.
            let mut pipe = redis::pipe();
            pipe.add_command(indexed)
                .ignore()
                .invoke_script(&add)
                .add_command(announce)
                .ignore();
            let first: Result<((i64, i64, i64),), _> = pipe.query_async(&mut c).await;
            match first {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    add.load_async(&mut c).await?;
                    pipe.query_async::<((i64, i64, i64),)>(&mut c).await?.0
                }
                r => r?.0,
            }
        };
        if admitted < 0 {
            let _: Result<(), _> = c.hdel(&index, conn).await;
            return Ok(Admission::Refused);
        }
        if let Some((w, event)) = &online
            && first == 1
        {
            if c.is_cluster() {
                w.append(&mut c, event).await;
            } else {
                w.written(event, dropped);
            }
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
        let mut c = self.cold().await?;
        if let Some(emitter) = &self.webhooks {
            c.write(w).await?;
            // Users' entries by script, one per user, so that a user who had no connection
            // before is announced online in the same step.
            return register_announcing(&mut c, emitter, regs).await;
        }
        for r in regs {
            let key = keys::user_conns(&r.user);
            w.add(
                &key,
                Cmd::hset(&key, r.route.conn.as_str(), r.route.encode_value()),
            );
        }
        c.write(w).await
    }

    /// Removes one connection of this node and tells the other nodes to drop the user from their
    /// route caches. Entries are keyed by the cluster-unique connection id, so this can never
    /// remove the entry of a newer connection of the same user.
    pub async fn unregister(&self, user: &UserId, conn: &ConnId) -> Result<(), DbError> {
        let _timer = self.count("unregister");
        let (route, index) = (keys::user_conns(user), keys::node_conns(&self.node));
        let mut w = Writes::new();
        let channel = keys::events_channel();
        let mut c = self.hot().await?;
        // The route first, its index entry after.
        match &self.webhooks {
            None => {
                w.add(&route, Cmd::hdel(&route, conn.as_str())).then();
            }
            Some(emitter) => {
                // A script that sees whether this was the user's last connection, and writes
                // `user.offline` in the same step if so (on a single server; on a cluster just
                // after it).
                let offline = emitter.offline(user);
                let cluster = c.is_cluster();
                let mut remove = UNREGISTER.1.key(&route);
                if cluster {
                    remove.arg(emitter.args(&offline));
                } else {
                    emitter.add_to(&mut remove, &offline);
                }
                remove.arg(conn.as_str());
                let (last, dropped): (i64, i64) = remove.invoke_async(&mut c).await?;
                if last == 1 {
                    if cluster {
                        emitter.append(&mut c, &offline).await;
                    } else {
                        emitter.written(&offline, dropped);
                    }
                }
            }
        }
        w.add(&index, Cmd::hdel(&index, conn.as_str())).add(
            &channel,
            Cmd::publish(&channel, RouteEvent::Invalidate(user.clone()).encode()),
        );
        c.write(w).await
    }

    /// Removes this node's index entries (and their user entries) for connections it no longer
    /// holds: what a failed unregister left behind. Returns the users whose routes changed.
    pub async fn reconcile(&self, holds: impl Fn(&str) -> bool) -> Result<Vec<UserId>, DbError> {
        let _timer = self.count("reconcile");
        let mut c = self.cold().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(&self.node)).await?;
        let stale: Vec<&(String, String)> =
            entries.iter().filter(|(conn, _)| !holds(conn)).collect();
        if let Some(emitter) = &self.webhooks {
            unroute_announcing(&mut c, emitter, stale.iter().copied()).await?;
        }
        let (w, users) = removal(&self.node, stale.into_iter());
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
        self.publish_removed(users, None).await
    }

    /// [`Self::publish_invalidations`] for a node that left the table (it stopped, or was swept
    /// after its lease ran out), followed in the same pipeline by the news that it is gone:
    /// every node then drops its cached routes to it and its mesh link.
    pub async fn publish_node_gone(&self, node: &NodeId, users: &[UserId]) -> Result<(), DbError> {
        self.publish_removed(users, Some(node)).await
    }

    async fn publish_removed(
        &self,
        users: &[UserId],
        gone: Option<&NodeId>,
    ) -> Result<(), DbError> {
        let channel = keys::events_channel();
        let mut events: Vec<String> = users
            .iter()
            .map(|user| RouteEvent::Invalidate(user.clone()).encode())
            .collect();
        if let Some(node) = gone {
            events.push(RouteEvent::NodeGone(node.clone()).encode());
        }
        if events.is_empty() {
            return Ok(());
        }
        // A bulk removal's follow-up: a cold path (one checkout for every batch).
        let mut c = self.cold().await?;
        for batch in events.chunks(PUBLISH_BATCH) {
            let _timer = self.count("publish");
            let mut w = Writes::new();
            for event in batch {
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

/// Users per pipeline of [`per_user_scripts`] (each carries its script's text: bulk paths run
/// rarely, and EVAL needs no script loaded on every cluster node).
const SCRIPT_BATCH: usize = 1000;

/// Removes `(conn, user)` entries from the users' connections by script, one per user, writing
/// `user.offline` for each user left with none (a bulk removal's first stage, with webhooks: the
/// index entries go after, as in [`removal`], whose own removal of these entries then finds them
/// gone).
pub(super) async fn unroute_announcing<'a>(
    c: &mut RedisConn,
    emitter: &Emitter,
    entries: impl Iterator<Item = &'a (String, String)>,
) -> Result<(), DbError> {
    let mut by_user: std::collections::BTreeMap<UserId, Vec<String>> = Default::default();
    for (conn, user) in entries {
        if let Ok(u) = UserId::parse(user) {
            by_user.entry(u).or_default().push(conn.clone());
        }
    }
    let scripts = by_user
        .into_iter()
        .map(|(user, conns)| {
            let event = emitter.offline(&user);
            (user, event, conns)
        })
        .collect();
    per_user_scripts(c, emitter, &UNREGISTER.0, scripts).await
}

/// Adds this node's connections to their users' entries by script, one per user, writing
/// `user.online` for each user who had none (bulk re-registration, with webhooks).
async fn register_announcing(
    c: &mut RedisConn,
    emitter: &Emitter,
    regs: &[Registration],
) -> Result<(), DbError> {
    let mut by_user: std::collections::BTreeMap<UserId, Vec<String>> = Default::default();
    for r in regs {
        let pairs = by_user.entry(r.user.clone()).or_default();
        pairs.push(r.route.conn.as_str().to_owned());
        pairs.push(r.route.encode_value());
    }
    let scripts = by_user
        .into_iter()
        .map(|(user, pairs)| {
            let event = emitter.online(&user);
            (user, event, pairs)
        })
        .collect();
    per_user_scripts(c, emitter, &REGISTER_BULK, scripts).await
}

/// Runs `source` once per user (KEYS: the user's connections, and on a single server the
/// events stream; ARGV: the event's arguments, then the user's own), in per-slot pipelines of
/// up to [`SCRIPT_BATCH`]; then counts the events written, or on a cluster appends them.
async fn per_user_scripts(
    c: &mut RedisConn,
    emitter: &Emitter,
    source: &str,
    scripts: Vec<(UserId, Event, Vec<String>)>,
) -> Result<(), DbError> {
    let cluster = c.is_cluster();
    for batch in scripts.chunks(SCRIPT_BATCH) {
        let groups = batch
            .iter()
            .map(|(user, event, rest)| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(source);
                if cluster {
                    cmd.arg(1).arg(keys::user_conns(user));
                } else {
                    cmd.arg(2).arg(keys::user_conns(user)).arg(emitter.stream());
                }
                cmd.arg(emitter.args(event)).arg(rest);
                vec![cmd]
            })
            .collect();
        let replies = c.read_groups(groups).await?;
        for ((_, event, _), reply) in batch.iter().zip(replies) {
            let (happened, dropped): (i64, i64) = reply
                .into_iter()
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or((0, 0));
            if happened != 1 {
                continue;
            }
            if cluster {
                emitter.append(c, event).await;
            } else {
                emitter.written(event, dropped);
            }
        }
    }
    Ok(())
}
