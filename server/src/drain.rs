//! Draining a node (SIGTERM, SIGINT or `router-cli drain`): stop accepting, hand clients to
//! other nodes in waves, wait for them up to the grace period, remove this node's routes, stop.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::node::Node;
use crate::sessions::Control;
use crate::state::NodeState;

/// A drain hands its clients over in this many waves, so that they do not all reconnect at once.
const DRAIN_WAVES: usize = 10;
/// Pause between drain waves.
const DRAIN_WAVE_PAUSE: Duration = Duration::from_millis(200);

impl Node {
    /// Drains and stops: stop accepting, send clients elsewhere, wait for them (up to the grace
    /// period), close the rest, remove this node's routes, stop the servers.
    pub async fn drain(self) {
        let state = &self.state;
        state.draining.store(true, Ordering::Release);
        state.metrics.draining.set(1);
        tracing::info!(node = %state.node, connections = state.sessions.len(), "draining");
        if let Err(e) = state
            .nodes
            .renew_lease(state.sessions.len() as u64, true)
            .await
        {
            tracing::warn!(error = %e, "cannot mark this node draining in Redis");
        }
        hand_over(state).await;
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
                if let Err(e) = state.routes.publish_invalidations(&users).await {
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

/// Sends every client a `reconnect` to the least-loaded other node, in waves; with no other
/// node, clients are closed with 1001 and find their way back through `/gateway` later.
async fn hand_over(state: &NodeState) {
    let clients = state.sessions.snapshot();
    let per_wave = clients.len().div_ceil(DRAIN_WAVES).max(1);
    for (i, wave) in clients.chunks(per_wave).enumerate() {
        if i > 0 {
            tokio::time::sleep(DRAIN_WAVE_PAUSE).await;
        }
        let target = match state.pick_node(Some(&state.node)).await {
            Ok(t) => t.map(|(_, url)| url),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find a node to send clients to");
                None
            }
        };
        let mut gone = 0usize;
        for (conn, _) in wave {
            let ctl = match &target {
                Some(url) => Control::Reconnect {
                    url: url.clone(),
                    reason: "node draining".into(),
                },
                None => Control::Close {
                    code: crate::error::close::GOING_AWAY,
                    reason: "node stopping".into(),
                },
            };
            // Lands however many instructions wait (see `Mailbox::control`); false only for
            // a connection that closed meanwhile.
            if !state.sessions.control(conn, ctl) {
                gone += 1;
            }
        }
        tracing::info!(wave = i + 1, clients = wave.len(), gone, "drain wave sent");
    }
}
