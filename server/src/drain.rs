//! Draining a node (SIGTERM, SIGINT or `router-cli drain`): stop accepting, hand clients to
//! other nodes in waves, wait for them up to the grace period, remove this node's routes, stop.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::handover::{Away, hand_over};
use crate::node::Node;

impl Node {
    /// Drains and stops: stop accepting, send clients elsewhere, wait for them (up to the grace
    /// period), close the rest, remove this node's routes, stop the servers.
    pub async fn drain(self) {
        let state = &self.state;
        state.draining.store(true, Ordering::Release);
        state.readiness_changed.notify_one();
        state.metrics.draining.set(1);
        tracing::info!(node = %state.node, connections = state.sessions.len(), "draining");
        if let Err(e) = state
            .nodes
            .renew_lease(state.sessions.len() as u64, true)
            .await
        {
            tracing::warn!(error = %e, "cannot mark this node draining in Redis");
        }
        hand_over(state, Away::ToAnotherNode, "node draining").await;
        let grace = state.config.limits.drain_grace;
        if !state.sessions.wait_empty(grace).await {
            tracing::warn!(
                left = state.sessions.len(),
                "drain grace period over; closing the rest"
            );
        }
        state.shutdown.cancel();
        state.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within 10 s; stopping anyway");
        }
        // A node that never took its id's lease owns no routes under it (another live process
        // may): nothing to remove.
        let removed = if state.nodes.claimed() {
            state.nodes.remove_node(&state.node).await
        } else {
            Ok(Vec::new())
        };
        match removed {
            Ok(users) => {
                // With the news that this node is gone: the peers close their mesh links to it
                // (else each keeps an idle worker for it until it stops; a node whose id is not
                // reused would add one per restart).
                if let Err(e) = state.routes.publish_node_gone(&state.node, &users).await {
                    tracing::debug!(error = %e, "cannot announce the removed routes");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove this node's routes; its lease will expire")
            }
        }
        self.http.stop(true).await;
        match self.grpc.await {
            Ok(task) => match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
            },
            Err(_) => tracing::warn!("the gRPC server never started"),
        }
        tracing::info!(node = %state.node, "stopped");
    }
}
