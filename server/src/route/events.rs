//! Route events between nodes over Redis pub/sub: "this user's routes changed" (drop the cached
//! route, and read the user's device count again if a connection here watches its presence)
//! and "this user's inbox has new messages" (a node holding the user sends them).
//!
//! Events are published on connect, disconnect and inbox writes, never per delivered message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use wsroute_core::db::subscriptions::Subscriptions;
use wsroute_core::keys;

use super::cache::RouteCache;
use crate::ids::{NodeId, UserId};
use crate::mesh::client::PeerPool;
use crate::presence::Presence;
use crate::sessions::{Control, Sessions};

/// One event on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// The user's set of connections changed.
    Invalidate(UserId),
    /// The user's inbox received a message.
    Inbox(UserId),
    /// A node (re)registered: routes to it are good again.
    NodeUp(NodeId),
    /// A node left the table (it stopped, or its lease ran out and it was swept): its routes
    /// are gone and so is the mesh link to it.
    NodeGone(NodeId),
}

impl RouteEvent {
    pub fn encode(&self) -> String {
        let (kind, name) = match self {
            Self::Invalidate(u) => ("inv ", u.as_str()),
            Self::Inbox(u) => ("inbox ", u.as_str()),
            Self::NodeUp(n) => ("up ", n.as_str()),
            Self::NodeGone(n) => ("gone ", n.as_str()),
        };
        [kind, name].concat()
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (kind, name) = s.split_once(' ')?;
        match kind {
            "inv" => Some(Self::Invalidate(UserId::parse(name).ok()?)),
            "inbox" => Some(Self::Inbox(UserId::parse(name).ok()?)),
            "up" => Some(Self::NodeUp(NodeId::parse(name).ok()?)),
            "gone" => Some(Self::NodeGone(NodeId::parse(name).ok()?)),
            _ => None,
        }
    }
}

/// How often a subscriber behind Sentinel asks whether its server is still the primary.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// How often the subscription connection is asked for a PING. A half-open connection (the
/// server or a middlebox gone without a FIN, a frozen primary) delivers nothing and says
/// nothing: without asking, the node would stay ready with a cache it can no longer keep fresh.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a PING may go unanswered before the subscription counts as dead. A dead one is
/// noticed within `PING_EVERY + PING_WAIT`.
const PING_WAIT: Duration = Duration::from_secs(2);

/// Pings the subscription connection every [`PING_EVERY`]; resolves, with the reason, on the
/// first PING that fails or goes unanswered for [`PING_WAIT`].
async fn until_unanswered(mut sink: redis::aio::PubSubSink) -> String {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_WAIT, sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no answer to PING within {PING_WAIT:?}"),
        }
    }
}

/// Listens to the event channel until cancelled, reconnecting with backoff. While it is not
/// subscribed, invalidations may be missed, so on every (re)subscription the whole cache is
/// dropped, every local session re-checks its inbox and every watched user's device count is read
/// again. `subs` names the server for each attempt:
/// the seeds of a Redis Cluster in turn (a subscriber on any node hears every publish), or the
/// primary the sentinels name at that moment; behind Sentinel the subscription is also moved when
/// they name another primary (a demoted one keeps it open as a replica). The subscription is
/// pinged every second: one that stops answering counts as lost, like one that closed.
/// `subscribed` says whether it listens now (`/readyz` waits for it); `changed` is woken when it
/// turns (the gRPC health service follows it). A node that left is forgotten by the route cache
/// and by `peers` (its mesh worker ends).
#[allow(clippy::too_many_arguments)]
pub async fn listen(
    subs: Subscriptions,
    cache: Arc<RouteCache>,
    sessions: Arc<Sessions>,
    presence: Arc<Presence>,
    peers: Arc<PeerPool>,
    subscribed: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
    heard: prometheus::IntCounterVec,
    cancel: CancellationToken,
) {
    let set = |now: bool| {
        if subscribed.swap(now, Ordering::AcqRel) != now {
            changed.notify_one();
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut turn = 0usize;
    loop {
        let this_turn = turn;
        let attempt = async {
            let server = subs.server(this_turn).await?;
            let mut pubsub = server.get_async_pubsub().await?;
            pubsub.subscribe(keys::events_channel()).await?;
            Ok::<_, redis::RedisError>((server, pubsub))
        };
        turn = turn.wrapping_add(1);
        let pubsub = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => r,
        };
        let (server, pubsub) = match pubsub {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "route events: cannot subscribe");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        subs.subscribed_on(&server);
        cache.clear();
        set(true);
        for (conn, _) in sessions.snapshot() {
            sessions.control(&conn, Control::InboxChanged);
        }
        presence.recheck_all();
        tracing::info!("route events: subscribed");
        let (sink, mut stream) = pubsub.split();
        let health = until_unanswered(sink);
        tokio::pin!(health);
        let mut check = tokio::time::interval(PRIMARY_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = stream.next() => m,
                why = &mut health => {
                    set(false);
                    tracing::warn!(reason = %why, "route events: the subscription stopped answering; resubscribing");
                    break;
                }
                _ = check.tick(), if subs.follows_sentinels() => {
                    if subs.still_primary(&server).await {
                        continue;
                    }
                    set(false);
                    tracing::warn!("route events: the sentinels name another primary; resubscribing there");
                    break;
                }
            };
            let Some(msg) = msg else {
                set(false);
                tracing::warn!("route events: subscription lost; resubscribing");
                break;
            };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match RouteEvent::decode(&payload) {
                Some(RouteEvent::Invalidate(user)) => {
                    heard.with_label_values(&["invalidate"]).inc();
                    cache.invalidate(&user);
                    presence.changed(&user);
                }
                Some(RouteEvent::Inbox(user)) => {
                    heard.with_label_values(&["inbox"]).inc();
                    for conn in sessions.conns_of(&user) {
                        sessions.control(&conn, Control::InboxChanged);
                    }
                }
                Some(RouteEvent::NodeUp(node)) => {
                    heard.with_label_values(&["node_up"]).inc();
                    cache.node_up(&node);
                    // A node that registers again puts its routes back in bulk, with no event
                    // per user (after Redis lost its data): watched counts may have changed.
                    presence.recheck_all();
                }
                Some(RouteEvent::NodeGone(node)) => {
                    heard.with_label_values(&["node_gone"]).inc();
                    cache.forget_node(&node);
                    peers.forget(&node);
                    tracing::info!(node = %node, "a node left the cluster; its mesh link is closed");
                }
                None => tracing::debug!(payload = %payload, "route events: ignoring unknown event"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let bob = UserId::parse("bob").expect("valid");
        for e in [
            RouteEvent::Invalidate(bob.clone()),
            RouteEvent::Inbox(bob.clone()),
            RouteEvent::NodeUp(NodeId::parse("n1").expect("valid")),
            RouteEvent::NodeGone(NodeId::parse("n1").expect("valid")),
        ] {
            assert_eq!(RouteEvent::decode(&e.encode()), Some(e));
        }
        // The text every node of every version reads.
        assert_eq!(RouteEvent::Invalidate(bob.clone()).encode(), "inv bob");
        assert_eq!(RouteEvent::Inbox(bob.clone()).encode(), "inbox bob");
        let n1 = NodeId::parse("n1").expect("valid");
        assert_eq!(RouteEvent::NodeUp(n1.clone()).encode(), "up n1");
        assert_eq!(RouteEvent::NodeGone(n1).encode(), "gone n1");
        assert_eq!(RouteEvent::decode("inv bad user"), None);
        assert_eq!(RouteEvent::decode("zap bob"), None);
        assert_eq!(RouteEvent::decode(""), None);
    }
}
