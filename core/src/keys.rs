//! Every Redis key and channel name wsroute uses, in one place. Keys of one user share the hash
//! tag `{user}` and keys of one node share `{node}`, so that each multi-key operation stays in one
//! Redis Cluster slot.

use crate::ids::{NodeId, UserId};

/// Prefix of every key, so that wsroute can share a Redis with other software.
pub const PREFIX: &str = "wsr";

/// Set of every registered node id (live or not yet cleaned up).
pub fn nodes() -> String {
    [PREFIX, ":nodes"].concat()
}

/// Hash `conn_id -> "node \t device \t connected_at_ms"`: a user's live connections.
pub fn user_conns(user: &UserId) -> String {
    user_key(user, "conns")
}

/// List of message ids in a user's inbox, oldest first.
pub fn inbox_ids(user: &UserId) -> String {
    user_key(user, "inbox:ids")
}

/// Hash `msg_id -> message frame`: the inbox messages themselves.
pub fn inbox_msgs(user: &UserId) -> String {
    user_key(user, "inbox:msgs")
}

/// Hash `tokens, at`: the user's cluster-wide quota of sends to inboxes (a token bucket kept by
/// the nodes' quota script; gone once unused for a while, the same as a full bucket).
pub fn store_quota(user: &UserId) -> String {
    user_key(user, "quota")
}

/// The API key's cluster-wide quota of sends to inboxes (as [`store_quota`]).
pub fn api_store_quota() -> String {
    [PREFIX, ":api:quota"].concat()
}

/// Total bytes of the frames in a user's inbox, kept in step with the hash by the node's store
/// and ack scripts (the same hash tag, so that Redis Cluster keeps it with the inbox).
pub fn inbox_bytes(user: &UserId) -> String {
    user_key(user, "inbox:bytes")
}

/// The node's lease: present (with a TTL) while the node is alive.
pub fn node_lease(node: &NodeId) -> String {
    node_key(node, "lease")
}

/// Hash of what other nodes and the CLI need to know about a node (addresses, counts); its
/// fields are named in [`info`].
pub fn node_info(node: &NodeId) -> String {
    node_key(node, "info")
}

/// The fields of a node's [`node_info`] hash.
pub mod info {
    /// The gRPC address other nodes and the CLI dial.
    pub const GRPC: &str = "grpc";
    /// The node's public WebSocket URL.
    pub const URL: &str = "url";
    /// When the node started, in Unix milliseconds.
    pub const STARTED_MS: &str = "started_ms";
    /// Connections held, as of the last lease renewal.
    pub const CONNS: &str = "conns";
    /// `1` while the node drains.
    pub const DRAINING: &str = "draining";
    /// Connections the node accepts at most (`0`: no cap).
    pub const MAX_CONNS: &str = "max_conns";
    /// The mesh protocol the node speaks; absent on nodes from before it was announced.
    pub const MESH: &str = "mesh";
}

/// Hash `conn_id -> user`: the per-node index of routes, so that a node's routes can be removed
/// without scanning every user.
pub fn node_conns(node: &NodeId) -> String {
    node_key(node, "conns")
}

/// Lock a surviving node takes before cleaning up a dead node's routes.
pub fn node_cleanup_lock(node: &NodeId) -> String {
    node_key(node, "cleanup")
}

/// Held (briefly, with a TTL) by the node whose turn it is to look for dead nodes: one sweep
/// per interval for the whole cluster, not one per node.
pub fn sweep_turn() -> String {
    [PREFIX, ":sweep"].concat()
}

/// Stream of webhook events not yet settled (docs/protocol.md, webhooks): appended in the same Redis step as
/// the change that causes each one, read by the nodes' shared consumer group, each entry
/// deleted once its POST was answered 2xx or it was moved to [`webhook_dead`]. Both webhook keys
/// share the hash tag `{webhooks}`, so that moving an entry between them stays in one slot.
pub fn webhook_events() -> String {
    [PREFIX, ":{webhooks}:events"].concat()
}

/// Stream of webhook events that failed every attempt, with the last error (`router-cli
/// webhooks dead` lists them, `retry` moves them back to [`webhook_events`]).
pub fn webhook_dead() -> String {
    [PREFIX, ":{webhooks}:dead"].concat()
}

/// The consumer group of [`webhook_events`] that every node delivers from (each node is one
/// consumer, named by its node id).
pub const WEBHOOK_GROUP: &str = "deliver";

/// Pub/sub channel of route events (`inv USER`, `inbox USER`).
pub fn events_channel() -> String {
    [PREFIX, ":events"].concat()
}

/// Pub/sub channel of the broadcast baseline (`--fanout broadcast`): every message to every node.
pub fn broadcast_channel() -> String {
    [PREFIX, ":broadcast"].concat()
}

/// `wsr:u:{USER}:SUFFIX`. Keys are concatenated (one exact allocation), not formatted: they are
/// built on every connect and disconnect, and `format!` took about ten times the instructions.
fn user_key(user: &UserId, suffix: &str) -> String {
    [PREFIX, ":u:{", user.as_str(), "}:", suffix].concat()
}

/// `wsr:n:{NODE}:SUFFIX`.
fn node_key(node: &NodeId, suffix: &str) -> String {
    [PREFIX, ":n:{", node.as_str(), "}:", suffix].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is shared with other processes (router-cli, older nodes, operators' scripts):
    /// every name, byte for byte.
    #[test]
    fn every_key_is_named_as_documented() {
        let user = UserId::parse("alice").expect("valid");
        let node = NodeId::parse("n-1").expect("valid");
        let got = [
            nodes(),
            user_conns(&user),
            inbox_ids(&user),
            inbox_msgs(&user),
            inbox_bytes(&user),
            node_lease(&node),
            node_info(&node),
            node_conns(&node),
            node_cleanup_lock(&node),
            sweep_turn(),
            webhook_events(),
            webhook_dead(),
            events_channel(),
            broadcast_channel(),
        ];
        let want = [
            "wsr:nodes",
            "wsr:u:{alice}:conns",
            "wsr:u:{alice}:inbox:ids",
            "wsr:u:{alice}:inbox:msgs",
            "wsr:u:{alice}:inbox:bytes",
            "wsr:n:{n-1}:lease",
            "wsr:n:{n-1}:info",
            "wsr:n:{n-1}:conns",
            "wsr:n:{n-1}:cleanup",
            "wsr:sweep",
            "wsr:{webhooks}:events",
            "wsr:{webhooks}:dead",
            "wsr:events",
            "wsr:broadcast",
        ];
        assert_eq!(got, want);
        for key in got {
            assert_eq!(key.capacity(), key.len(), "{key}: one exact allocation");
        }
    }
}
