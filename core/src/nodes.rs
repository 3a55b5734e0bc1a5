//! The nodes of a cluster as Redis lists them: each node's [`NodeRecord`] (what it publishes
//! about itself, and its lease), read by [`NodeReader`]. Registering, renewing leases and
//! sweeping dead nodes is the node's job (`wsroute_server::route::membership`).

use std::collections::HashMap;

use redis::{AsyncCommands, Cmd};

use crate::db::{DbError, Redis};
use crate::ids::NodeId;
use crate::keys::{self, info};
use crate::observe::{SharedObserver, Timed};

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

    /// Reads a node's info hash and the milliseconds left on its lease (`PTTL`: negative when
    /// there is none). Missing or unreadable fields read as empty, zero or false.
    fn read(node: NodeId, fields: &HashMap<String, String>, pttl: i64) -> Self {
        let text = |f: &str| fields.get(f).cloned().unwrap_or_default();
        let number = |f: &str| fields.get(f).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            node,
            grpc_addr: text(info::GRPC),
            public_url: text(info::URL),
            started_at_ms: fields
                .get(info::STARTED_MS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            connections: number(info::CONNS),
            lease_left_ms: pttl.max(0),
            draining: fields.get(info::DRAINING).is_some_and(|v| v == "1"),
            max_connections: number(info::MAX_CONNS),
        }
    }
}

/// Where to dial a node over the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshEndpoint {
    /// The gRPC address it advertises (may be empty for a half-written record).
    pub grpc_addr: String,
    /// The mesh protocol it announces (`None`: a node from before the announcement).
    pub protocol: Option<String>,
}

/// Reads the node list and nodes' records. Cheap to clone.
#[derive(Clone)]
pub struct NodeReader {
    redis: Redis,
    observer: SharedObserver,
}

impl NodeReader {
    pub fn new(redis: Redis, observer: SharedObserver) -> Self {
        Self { redis, observer }
    }

    /// Every registered node with its record and lease, sorted by id.
    /// The ids of every registered node (alive or not yet swept), sorted: one command, for
    /// callers that read a node's record only when it is new to them.
    pub async fn node_ids(&self) -> Result<Vec<NodeId>, DbError> {
        let _timed = Timed::start(&*self.observer, "node_ids");
        let mut c = self.redis.cold().await?;
        let ids: Vec<String> = c.smembers(keys::nodes()).await?;
        let mut nodes: Vec<NodeId> = ids.iter().filter_map(|id| NodeId::parse(id).ok()).collect();
        nodes.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(nodes)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, DbError> {
        let _timed = Timed::start(&*self.observer, "list_nodes");
        let mut c = self.redis.cold().await?;
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
            let fields: HashMap<String, String> = pair
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let pttl: i64 = pair
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or(-2);
            out.push(NodeRecord::read(node, &fields, pttl));
        }
        Ok(out)
    }

    /// The gRPC address a node advertises, if it is registered.
    pub async fn node_grpc_addr(&self, node: &NodeId) -> Result<Option<String>, DbError> {
        Ok(self.mesh_endpoint(node).await?.map(|e| e.grpc_addr))
    }

    /// Where to dial a node and which mesh protocol it announces; `None` if it is not
    /// registered. On a held connection: a node reads this when it meets a new peer.
    pub async fn mesh_endpoint(&self, node: &NodeId) -> Result<Option<MeshEndpoint>, DbError> {
        let _timed = Timed::start(&*self.observer, "node_addr");
        let mut c = self.redis.hot().await?;
        let (addr, protocol): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::node_info(node))
            .arg(info::GRPC)
            .arg(info::MESH)
            .query_async(&mut c)
            .await?;
        Ok(addr.map(|grpc_addr| MeshEndpoint {
            grpc_addr,
            protocol,
        }))
    }

    /// Whether a node's lease is still held.
    pub async fn node_alive(&self, node: &NodeId) -> Result<bool, DbError> {
        let _timed = Timed::start(&*self.observer, "node_alive");
        let mut c = self.redis.hot().await?;
        Ok(c.exists(keys::node_lease(node)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_its_fields_and_defaults_what_is_missing() {
        let node = NodeId::parse("n1").expect("valid");
        let fields: HashMap<String, String> = [
            (info::GRPC, "10.0.0.1:50051"),
            (info::URL, "ws://h/ws"),
            (info::STARTED_MS, "42"),
            (info::CONNS, "7"),
            (info::DRAINING, "1"),
            (info::MAX_CONNS, "bad"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = NodeRecord::read(node.clone(), &fields, 900);
        assert_eq!(
            r,
            NodeRecord {
                node: node.clone(),
                grpc_addr: "10.0.0.1:50051".into(),
                public_url: "ws://h/ws".into(),
                started_at_ms: 42,
                connections: 7,
                lease_left_ms: 900,
                draining: true,
                max_connections: 0,
            }
        );
        assert!(r.alive() && r.has_room());
        let gone = NodeRecord::read(node, &HashMap::new(), -2);
        assert!(!gone.alive() && !gone.draining && gone.grpc_addr.is_empty());
    }
}
