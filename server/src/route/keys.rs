//! Every Redis key and channel name wsroute uses, in one place. Keys of one user share the hash
//! tag `{user}` and keys of one node share `{node}`, so that each multi-key operation stays in one
//! Redis Cluster slot.

use crate::ids::{NodeId, UserId};

/// Prefix of every key, so that wsroute can share a Redis with other software.
pub const PREFIX: &str = "wsr";

/// Set of every registered node id (live or not yet cleaned up).
pub fn nodes() -> String {
    format!("{PREFIX}:nodes")
}

/// Hash `conn_id -> "node \t device \t connected_at_ms"`: a user's live connections.
pub fn user_conns(user: &UserId) -> String {
    format!("{PREFIX}:u:{{{user}}}:conns")
}

/// List of message ids in a user's inbox, oldest first.
pub fn inbox_ids(user: &UserId) -> String {
    format!("{PREFIX}:u:{{{user}}}:inbox:ids")
}

/// Hash `msg_id -> message frame`: the inbox messages themselves.
pub fn inbox_msgs(user: &UserId) -> String {
    format!("{PREFIX}:u:{{{user}}}:inbox:msgs")
}

/// The node's lease: present (with a TTL) while the node is alive.
pub fn node_lease(node: &NodeId) -> String {
    format!("{PREFIX}:n:{{{node}}}:lease")
}

/// Hash of what other nodes and the CLI need to know about a node (addresses, counts).
pub fn node_info(node: &NodeId) -> String {
    format!("{PREFIX}:n:{{{node}}}:info")
}

/// Hash `conn_id -> user`: the per-node index of routes, so that a node's routes can be removed
/// without scanning every user.
pub fn node_conns(node: &NodeId) -> String {
    format!("{PREFIX}:n:{{{node}}}:conns")
}

/// Lock a surviving node takes before cleaning up a dead node's routes.
pub fn node_cleanup_lock(node: &NodeId) -> String {
    format!("{PREFIX}:n:{{{node}}}:cleanup")
}

/// Held (briefly, with a TTL) by the node whose turn it is to look for dead nodes: one sweep
/// per interval for the whole cluster, not one per node.
pub fn sweep_turn() -> String {
    format!("{PREFIX}:sweep")
}

/// Pub/sub channel of route events (`inv USER`, `inbox USER`).
pub fn events_channel() -> String {
    format!("{PREFIX}:events")
}
