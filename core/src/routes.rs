//! A user's routes as the route table in Redis holds them: the [`Route`] of one connection (its
//! encoding in the user's hash) and the read side, [`RouteReader`]: a user's routes and a node's
//! index. Writing routes is the node's job (`wsroute_server::route`).

use std::collections::HashMap;
use std::sync::Arc;

use redis::AsyncCommands;

use crate::db::{DbError, Redis};
use crate::ids::{ConnId, NodeId, UserId};
use crate::keys;
use crate::observe::{SharedObserver, Timed};

/// One live connection of a user, as the route table knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub conn: ConnId,
    pub node: NodeId,
    pub device: Option<Arc<str>>,
    pub connected_at_ms: i64,
}

impl Route {
    /// The value stored in the user's hash: `node \t device \t connected_at_ms`.
    pub fn encode_value(&self) -> String {
        let device = self.device.as_deref().unwrap_or("");
        let mut ms = itoa::Buffer::new();
        let ms = ms.format(self.connected_at_ms);
        [self.node.as_str(), "\t", device, "\t", ms].concat()
    }

    /// Reads one hash entry back; `None` for an entry this version cannot read (skipped, logged).
    pub fn decode(conn: &str, value: &str) -> Option<Self> {
        let mut parts = value.splitn(3, '\t');
        let node = NodeId::parse(parts.next()?).ok()?;
        let device = parts.next().filter(|d| !d.is_empty()).map(Arc::from);
        let connected_at_ms = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        Some(Self {
            conn: ConnId::parse(conn).ok()?,
            node,
            device,
            connected_at_ms,
        })
    }
}

/// Reads users' routes and nodes' route indexes. Cheap to clone.
#[derive(Clone)]
pub struct RouteReader {
    redis: Redis,
    observer: SharedObserver,
}

impl RouteReader {
    pub fn new(redis: Redis, observer: SharedObserver) -> Self {
        Self { redis, observer }
    }

    /// A user's live connections, straight from Redis, oldest first (on a held connection: a
    /// node reads this on every route-cache miss).
    pub async fn lookup(&self, user: &UserId) -> Result<Vec<Route>, DbError> {
        let _timed = Timed::start(&*self.observer, "lookup");
        let mut c = self.redis.hot().await?;
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

    /// How many live connections each of `users` holds (one HLEN each, in one pipeline; on a
    /// cluster one per user's slot, concurrently), in the order given: what presence reads when
    /// a watched user's routes changed.
    pub async fn device_counts(&self, users: &[UserId]) -> Result<Vec<u64>, DbError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let _timed = Timed::start(&*self.observer, "presence");
        let mut c = self.redis.hot().await?;
        let groups = users
            .iter()
            .map(|u| vec![redis::Cmd::hlen(keys::user_conns(u))])
            .collect();
        let replies = c.read_groups(groups).await?;
        replies
            .into_iter()
            .map(|group| {
                let reply = group.into_iter().next().unwrap_or(redis::Value::Nil);
                redis::from_redis_value::<u64>(reply)
                    .map_err(|e| DbError::from(redis::RedisError::from(e)))
            })
            .collect()
    }

    /// The connections a node's index holds, as `(conn, user)` pairs sorted by user.
    pub async fn node_routes(&self, node: &NodeId) -> Result<Vec<(String, String)>, DbError> {
        let _timed = Timed::start(&*self.observer, "node_routes");
        let mut c = self.redis.cold().await?;
        let mut entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        entries.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_value_round_trips() {
        let r = Route {
            conn: ConnId::parse("c1").expect("valid"),
            node: NodeId::parse("n1").expect("valid"),
            device: Some(Arc::from("phone")),
            connected_at_ms: 42,
        };
        assert_eq!(
            r.encode_value(),
            "n1\tphone\t42",
            "the layout other nodes read"
        );
        assert_eq!(Route::decode("c1", &r.encode_value()), Some(r.clone()));
        let no_device = Route { device: None, ..r };
        assert_eq!(
            Route::decode("c1", &no_device.encode_value()),
            Some(no_device)
        );
        assert_eq!(Route::decode("c1", "bad node!\t\t1"), None);
    }

    #[test]
    fn a_value_from_before_device_and_connected_at_still_reads() {
        let r = Route::decode("c1", "n1").expect("a bare node id is a route");
        assert_eq!(r.node.as_str(), "n1");
        assert_eq!((r.device, r.connected_at_ms), (None, 0));
    }
}
