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
        let sent = tokio::time::Instant::now();
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
            Ok(()) => {
                state.lease_renewed(sent);
                let was_in = state.in_table.swap(true, Ordering::AcqRel);
                if !was_in {
                    meet_peers_once_ready(&state);
                }
                let was_cut_off = state.cut_off.swap(false, Ordering::AcqRel);
                if !was_in || was_cut_off {
                    state.readiness_changed.notify_one();
                }
                if was_cut_off {
                    tracing::warn!("Redis reachable again: registered anew, taking clients again");
                }
            }
            Err(e) => {
                let was_in = state.in_table.swap(false, Ordering::AcqRel);
                if was_in {
                    state.readiness_changed.notify_one();
                }
                if was_in || first {
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

/// How often the lease's deadline is checked.
const LEASE_WATCH: Duration = Duration::from_millis(250);
/// Past the lease, how often the peers are asked whether they take clients.
const ASK_PEERS: Duration = Duration::from_secs(1);
/// How long peers must have been taking clients while this node's lease is out before it
/// sends its clients to them (so that after a Redis outage for every node, a node that
/// registers again a moment after the others keeps its clients).
const PEERS_TAKING_FOR: Duration = Duration::from_secs(1);

/// Watches the lease's deadline, apart from the lease loop (whose renewal may be waiting on a
/// Redis that does not answer). When the lease runs out without a renewal, the other nodes count
/// this node dead: they ignore its routes, store messages for its users, and a survivor removes
/// its routes. Its clients would stay connected to a node that nobody routes to and that cannot
/// hear of their inboxes. So, once other nodes say over the mesh that they take clients (they
/// reach Redis), the node is cut off: it takes no clients (`/readyz` 503) and sends every client
/// a `reconnect` to the least-loaded of them, in waves, then closes it with 1001. Their unacked
/// messages go to the inbox, or wait in the node's backlog until Redis answers (the peers holding
/// cross-node ones wait for this node's `stored` confirmation). The lease loop registers the node
/// again once Redis answers, which ends the cut. If no other node takes clients (Redis is away for
/// every node, or there is no other node), the node keeps its clients, not ready, as while Redis
/// is away: nobody could take them.
pub(crate) async fn lease_watch(state: Arc<NodeState>) {
    let mut asked: Option<tokio::time::Instant> = None;
    let mut peers_taking_since: Option<tokio::time::Instant> = None;
    let mut told = false;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(LEASE_WATCH) => {}
        }
        let expired = || {
            state
                .lease_deadline()
                .is_some_and(|d| tokio::time::Instant::now() >= d)
        };
        if !expired() || state.is_cut_off() || state.is_draining() {
            (asked, peers_taking_since, told) = (None, None, false);
            continue;
        }
        if asked.is_some_and(|a| a.elapsed() < ASK_PEERS) {
            continue;
        }
        asked = Some(tokio::time::Instant::now());
        let Some((_, url)) = state.delivery.peers.takers().await.into_iter().min() else {
            if !told {
                tracing::error!(
                    clients = state.sessions.len(),
                    "lease ran out without a renewal (Redis unreachable), and no other node takes clients: keeping them"
                );
                told = true;
            }
            peers_taking_since = None;
            continue;
        };
        let since = *peers_taking_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < PEERS_TAKING_FOR || !expired() {
            continue;
        }
        state.cut_off.store(true, Ordering::Release);
        state.in_table.store(false, Ordering::Release);
        state.readiness_changed.notify_one();
        tracing::error!(
            clients = state.sessions.len(),
            to = %url,
            "lease ran out without a renewal (Redis unreachable) while other nodes take clients: this node counts as dead; sending its clients away until Redis answers"
        );
        crate::handover::hand_over(
            &state,
            crate::handover::Away::To(url),
            "node cut off from Redis",
        )
        .await;
    }
}

/// Starts the meeting of the peers ([`meet_peers`]) once both of its conditions hold:
/// the mesh thread is known (peer workers run there) and this node is in the table. Called
/// where each turns true; whichever comes second starts it, once. In the table first: two
/// nodes starting together could otherwise each list the table before the other was in it,
/// and neither meet the other until a first message waited for the stream (a node that lists
/// after both registered sees the other, and names itself when it opens its stream, so the
/// other opens its way back).
pub(crate) fn meet_peers_once_ready(state: &Arc<NodeState>) {
    // Each caller has just stored its own condition; the fence orders that store before
    // the load of the other's, so that of two racing callers at least one sees both.
    std::sync::atomic::fence(Ordering::SeqCst);
    if !state.in_table.load(Ordering::Acquire)
        || !state.delivery.peers.mesh_thread_known()
        || state.peers_met.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let span = tracing::info_span!("node", node = %state.node);
    state.tracker.spawn(tracing::Instrument::instrument(
        meet_peers(state.clone()),
        span,
    ));
}

/// Once the node's mesh thread runs and the node is in the table (started then, by
/// [`meet_peers_once_ready`]), opens a mesh stream to every node in the table, so that the first
/// message to a peer does not wait for one (under load, past its deadline: it would be stored
/// instead of delivered). One read of the
/// node set, retried with back-off while Redis does not answer. A node that joins later does the
/// same, and names itself when it opens its streams: each peer then opens its stream back (see
/// `MeshService::forward_stream`), so no peer needs to poll the node set.
pub(crate) async fn meet_peers(state: Arc<NodeState>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match state.nodes.reader().node_ids().await {
            Ok(nodes) => {
                let met = state.delivery.peers.warm(&nodes).await;
                tracing::debug!(peers = ?met, "opened mesh streams to the peers");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the nodes to meet the peers yet"),
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
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
                    if let Err(e) = state.routes.publish_node_gone(&node, &users).await {
                        tracing::debug!(error = %e, "cannot announce the removed routes");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "dead-node sweep failed"),
        }
    }
}
