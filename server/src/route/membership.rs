//! Node membership in the route table: a node's record and lease (registered, renewed), the
//! removal of a node and its routes (on a clean stop, or by a survivor), and the sweep that finds
//! nodes whose lease ran out. Reading the node list is `wsroute_core::nodes`.
//!
//! A route lives exactly as long as its node's lease: routes carry no TTL of their own, a live
//! node puts them back if Redis lost them, and a survivor removes a dead node's routes.

use std::time::Duration;

use redis::{AsyncCommands, Cmd};
use wsroute_core::db::{DbError, Redis, RedisConn, Writes};
use wsroute_core::keys::{self, info};
use wsroute_core::nodes::{NodeReader, NodeRecord};

use super::table::removal;
use crate::ids::{NodeId, UserId};
use crate::metrics::Metrics;

/// This node's membership of the cluster. Cheap to clone (the Redis handle is shared).
#[derive(Clone)]
pub struct Membership {
    redis: Redis,
    node: NodeId,
    lease_ttl: Duration,
    metrics: Metrics,
    read: NodeReader,
}

impl Membership {
    pub fn new(redis: Redis, node: NodeId, lease_ttl: Duration, metrics: Metrics) -> Self {
        let read = NodeReader::new(redis.clone(), std::sync::Arc::new(metrics.clone()));
        Self {
            redis,
            node,
            lease_ttl,
            metrics,
            read,
        }
    }

    /// The read side: the node list, a node's record, mesh endpoint and lease.
    pub fn reader(&self) -> &NodeReader {
        &self.read
    }

    /// Every registered node with its record and lease, sorted by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, DbError> {
        self.read.list_nodes().await
    }

    /// A connection checked out for this use: membership runs per interval, not per client.
    async fn cold(&self) -> Result<RedisConn, DbError> {
        self.redis.cold().await
    }

    /// Checks out the connections the hot paths hold (see `wsroute_core::db`), before clients
    /// come.
    pub async fn hold_connections(&self) -> Result<(), DbError> {
        self.redis.hold().await
    }

    /// How many times the Redis primary moved (a Sentinel failover) since the node started:
    /// when it changes, the node puts its routes back.
    pub fn primary_moves(&self) -> u64 {
        self.redis.primary_moves()
    }

    /// Publishes this node's record and takes its lease.
    pub async fn register_node(&self, record: &NodeRecord) -> Result<(), DbError> {
        let _timer = self.metrics.redis_op("register_node");
        let (info_key, lease) = (keys::node_info(&self.node), keys::node_lease(&self.node));
        let mut w = Writes::new();
        w.add(
            &info_key,
            Cmd::hset_multiple(
                &info_key,
                &[
                    (info::GRPC, record.grpc_addr.clone()),
                    (info::URL, record.public_url.clone()),
                    (info::STARTED_MS, record.started_at_ms.to_string()),
                    (info::CONNS, record.connections.to_string()),
                    (info::DRAINING, u8::from(record.draining).to_string()),
                    (info::MAX_CONNS, record.max_connections.to_string()),
                    (info::MESH, crate::mesh::wire::MESH_PROTOCOL.to_owned()),
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
    pub async fn renew_lease(&self, connections: u64, draining: bool) -> Result<bool, DbError> {
        let _timer = self.metrics.redis_op("renew_lease");
        let mut renew = redis::cmd("SET");
        renew
            .arg(keys::node_lease(&self.node))
            .arg("1")
            .arg("PX")
            .arg(self.lease_ttl_ms())
            .arg("XX");
        let fields = Cmd::hset_multiple(
            keys::node_info(&self.node),
            &[
                (info::CONNS, connections.to_string()),
                (info::DRAINING, u8::from(draining).to_string()),
            ],
        );
        let listed = Cmd::sadd(keys::nodes(), self.node.as_str());
        let replies = self
            .cold()
            .await?
            .read_groups(vec![vec![renew, fields], vec![listed]])
            .await?;
        let renewed = replies
            .first()
            .and_then(|g| g.first())
            .is_some_and(|v| *v != redis::Value::Nil);
        Ok(renewed)
    }

    /// Removes every route of `node` listed in its index, then the node itself. Used by a node
    /// stopping cleanly (for itself) and by the cleaner (for a dead node). Returns the users whose
    /// routes changed.
    pub async fn remove_node(&self, node: &NodeId) -> Result<Vec<UserId>, DbError> {
        let _timer = self.metrics.redis_op("remove_node");
        let mut c = self.cold().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        let (mut w, mut users) = removal(node, entries.iter());
        let info_key = keys::node_info(node);
        w.add(&keys::nodes(), Cmd::srem(keys::nodes(), node.as_str()))
            .add(&info_key, Cmd::del(&info_key));
        if node == &self.node {
            let lease = keys::node_lease(node);
            w.add(&lease, Cmd::del(&lease));
        }
        c.write(w).await?;
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Finds nodes whose lease ran out and removes their routes. A per-node lock makes sure
    /// one survivor does the work, not all of them. Returns the nodes cleaned and their users.
    pub async fn sweep_dead_nodes(
        &self,
        turn: Duration,
    ) -> Result<Vec<(NodeId, Vec<UserId>)>, DbError> {
        let _timer = self.metrics.redis_op("sweep");
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
}
