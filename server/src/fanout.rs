//! The broadcast baseline (`--fanout broadcast`), kept small and separate, for comparison only:
//! every message is published to every node through Redis pub/sub and each node delivers it to
//! whoever it holds, which is how broadcast-based servers work. It exists so that `router-cli
//! bench` can measure routing against broadcasting on the same machine in the same session.
//!
//! Its acks cannot be honest: a publisher does not learn whether anyone held the recipient, so
//! a published message is acked `delivered` with `devices` = the number of nodes it reached.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use wsroute_proto::v1 as pb;

use wsroute_core::db::subscriptions::Subscriptions;
use wsroute_core::db::{DbError, Redis};
use wsroute_core::keys;

use crate::envelope::Envelope;
use crate::sessions::{Outbound, Sessions};

/// How messages travel between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fanout {
    /// Forward to exactly the nodes that hold the recipient (wsroute's design).
    #[default]
    Route,
    /// Publish every message to every node (the baseline to compare with).
    Broadcast,
}

/// The publishing side: through the Redis handle's first held connection, so that messages from one
/// connection are published in the order they were sent; on a cluster to the node the listeners
/// subscribe on, whose receiver count is the one that means "nodes reached".
pub struct Broadcast {
    redis: Redis,
    subs: Subscriptions,
}

impl Broadcast {
    pub fn new(redis: Redis, subs: Subscriptions) -> Self {
        Self { redis, subs }
    }

    /// Publishes a message to every node; returns how many nodes received it.
    pub async fn publish(&self, env: &Envelope) -> Result<u32, DbError> {
        let payload = env.to_proto().encode_to_vec();
        let mut c = self.redis.ordered().await?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(keys::broadcast_channel()).arg(payload);
        let receivers: i64 = c
            .query_at(publish, self.subs.fixed_server(0).as_ref())
            .await?;
        Ok(u32::try_from(receivers).unwrap_or(0))
    }
}

/// Receives every published message and delivers the ones whose recipient this node holds.
pub async fn listen(subs: Subscriptions, sessions: Arc<Sessions>, cancel: CancellationToken) {
    loop {
        let attempt = async {
            let mut pubsub = subs.server(0).await?.get_async_pubsub().await?;
            pubsub.subscribe(keys::broadcast_channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = tokio::select! {
            _ = cancel.cancelled() => return,
            r = attempt => match r {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "broadcast: cannot subscribe; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            },
        };
        let mut stream = pubsub.on_message();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = stream.next() => m,
            };
            let Some(msg) = msg else { break };
            let env = pb::Envelope::decode(msg.get_payload_bytes())
                .map_err(|e| e.to_string())
                .and_then(|p| Envelope::try_from(p).map_err(|e| e.to_string()));
            let env = match env {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(error = %e, "broadcast: dropping an unreadable message");
                    continue;
                }
            };
            let conns = sessions.conns_of(&env.to);
            if conns.is_empty() {
                continue;
            }
            let frame = env.frame();
            for conn in conns {
                let _ = sessions.deliver(
                    &conn,
                    Outbound::Message {
                        id: env.id.clone(),
                        frame: frame.clone(),
                        from_inbox: false,
                        accepted_us: env.accepted_us,
                        written: None,
                        source: None,
                    },
                );
            }
        }
    }
}
