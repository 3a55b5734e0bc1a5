//! The node's background upkeep of the route table: the lease (and putting everything back when
//! Redis lost it), reconciling routes a failed unregister left behind, and removing the routes of
//! dead nodes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::route::membership::{Claim, Renewal};
use crate::state::NodeState;

/// How often a node looks for dead nodes to clean up.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps the lease; puts everything back when Redis lost it or the primary moved (a failover
/// keeps the lease but may have lost the writes just before it); tells `/readyz` the truth.
pub(crate) async fn lease_loop(state: Arc<NodeState>) {
    let interval = state.config.limits.heartbeat_interval;
    let mut first = true;
    // The primary moves seen when everything was last registered.
    let mut registered_on = state.nodes.primary_moves();
    loop {
        // Nothing is written under the node id before this process holds its lease (usually
        // taken in `Node::start` already; here when Redis was unreachable then).
        if !state.nodes.claimed() {
            match state.nodes.claim_lease(interval).await {
                Ok(Claim::Taken) => {}
                Ok(Claim::HeldByLive { holder }) => tracing::error!(
                    node = %state.node,
                    holder = %holder,
                    "another live process runs with this node id; not registering until it stops (give each node its own --node-id)"
                ),
                Err(e) => {
                    if first {
                        tracing::warn!(error = %e, "route table unavailable; not ready until it is back");
                    }
                }
            }
            if !state.nodes.claimed() {
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        }
        let moves = state.nodes.primary_moves();
        let result = if state.in_table.load(Ordering::Acquire) && moves != registered_on {
            tracing::warn!(
                "the Redis primary moved (failover); registering this node's routes again"
            );
            state.register_everything().await.map(|n| {
                registered_on = moves;
                tracing::info!(routes = n, "routes put back on the new primary");
            })
        } else if state.in_table.load(Ordering::Acquire) {
            match state
                .nodes
                .renew_lease(state.sessions.len() as u64, state.is_draining())
                .await
            {
                Ok(Renewal::Renewed) => state.reconcile().await,
                Ok(Renewal::Foreign(holder)) => {
                    // Another process took this node id while this one's lease had run out
                    // (Redis unreachable for longer than the lease): writing now would mix the
                    // two processes' routes. Stop one of them.
                    tracing::error!(
                        node = %state.node,
                        holder = %holder,
                        "another process holds this node id's lease; leaving it and its routes alone"
                    );
                    Ok(())
                }
                Ok(Renewal::Gone) => {
                    tracing::warn!(
                        "this node's lease was gone (Redis lost its data, or this node was declared dead); registering again"
                    );
                    state.register_everything().await.map(|n| {
                        registered_on = moves;
                        tracing::info!(routes = n, "routes put back");
                    })
                }
                Err(e) => Err(e),
            }
        } else {
            let cleanup = if first {
                // Routes a previous process with this node id left behind are not ours (this
                // process holds the id's lease now).
                state.nodes.remove_leftovers().await.map(|_| ())
            } else {
                Ok(())
            };
            // The hot paths' connections are checked out before this node says it is ready,
            // so that a first burst of connects does not check out a connection each.
            let cleanup = match cleanup {
                Ok(()) => state.nodes.hold_connections().await,
                e => e,
            };
            match cleanup {
                Ok(()) => {
                    first = false;
                    state.register_everything().await.map(|n| {
                        registered_on = moves;
                        tracing::info!(routes = n, "registered in the route table");
                    })
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => state.in_table.store(true, Ordering::Release),
            Err(e) => {
                if state.in_table.swap(false, Ordering::AcqRel) || first {
                    tracing::warn!(error = %e, "route table unavailable; not ready until it is back");
                }
            }
        }
        let wait = if state.in_table.load(Ordering::Acquire) {
            interval
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Removes the routes of nodes whose lease ran out: one node per interval looks (by turn), and
/// one survivor cleans each dead node (by lock).
pub(crate) async fn sweep_loop(state: Arc<NodeState>) {
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        if !state.in_table.load(Ordering::Acquire) {
            continue;
        }
        match state.nodes.sweep_dead_nodes(SWEEP_INTERVAL).await {
            Ok(cleaned) => {
                for (node, users) in cleaned {
                    state.cache.forget_node(&node);
                    if let Err(e) = state.routes.publish_invalidations(&users).await {
                        tracing::debug!(error = %e, "cannot announce the removed routes");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "dead-node sweep failed"),
        }
    }
}
