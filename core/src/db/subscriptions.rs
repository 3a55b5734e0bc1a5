//! Where pub/sub subscriptions are made: each on a dedicated connection outside the pools (a
//! subscribed connection can carry nothing else). Behind Sentinel, on the primary the sentinels
//! name at that moment, moved when they name another.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ErrorKind, RedisError, RedisResult};

use super::target::RedisTarget;
use super::{Redis, bounded, lock};

/// Where pub/sub subscriptions are made: each on a dedicated connection outside the pools.
/// Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions(Arc<SubShared>);

struct SubShared {
    source: Source,
    timeout: Duration,
    /// Told when the primary moved (Sentinel only).
    redis: Redis,
}

// Made once per process and kept behind an Arc: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// Fixed servers, tried in turn: the one server, or every seed of a cluster.
    Servers(Vec<redis::Client>),
    /// The primary the sentinels name, asked again for every subscription.
    Sentinel {
        client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
        /// The sentinels themselves, to ask which primary they name now.
        sentinels: Vec<redis::Client>,
        /// A connection to the sentinel that answered last.
        asking: tokio::sync::Mutex<Option<MultiplexedConnection>>,
        master: String,
        /// Where the last subscription was made.
        last: Mutex<Option<ConnectionAddr>>,
    },
}

impl Subscriptions {
    /// Where `redis`'s pub/sub subscriptions go.
    pub fn new(redis: &Redis) -> Result<Self, String> {
        let timeout = redis.timeout();
        let source = match redis.target() {
            RedisTarget::Server(url) => Source::Servers(vec![open_client(url)?]),
            // Classic pub/sub is cluster-wide: a subscriber on any node hears every publish.
            RedisTarget::Cluster(seeds) => Source::Servers(
                seeds
                    .iter()
                    .map(|u| open_client(u))
                    .collect::<Result<_, _>>()?,
            ),
            RedisTarget::Sentinel(s) => Source::Sentinel {
                client: tokio::sync::Mutex::new(
                    redis::sentinel::SentinelClient::build(
                        s.sentinels.clone(),
                        s.master.clone(),
                        Some(s.node_info()),
                        redis::sentinel::SentinelServerType::Master,
                    )
                    .map_err(|e| e.to_string())?,
                ),
                sentinels: s
                    .sentinels
                    .iter()
                    .map(|u| open_client(u))
                    .collect::<Result<_, _>>()?,
                asking: tokio::sync::Mutex::new(None),
                master: s.master.clone(),
                last: Mutex::new(None),
            },
        };
        Ok(Subscriptions(Arc::new(SubShared {
            source,
            timeout,
            redis: redis.clone(),
        })))
    }

    /// Whether subscriptions follow a primary named by Sentinel (and should check that they
    /// still do, see [`Self::still_primary`]).
    pub fn follows_sentinels(&self) -> bool {
        matches!(self.0.source, Source::Sentinel { .. })
    }

    /// The server to subscribe on, for attempt number `turn`: the servers in turn, or the primary
    /// the sentinels name now (they are asked every time: after a failover it is another).
    pub async fn server(&self, turn: usize) -> RedisResult<redis::Client> {
        match &self.0.source {
            Source::Servers(servers) => servers
                .get(turn % servers.len().max(1))
                .cloned()
                .ok_or_else(|| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "no Redis server named"))
                }),
            Source::Sentinel { client, .. } => {
                bounded(self.0.timeout, async {
                    client.lock().await.async_get_client().await
                })
                .await
            }
        }
    }

    /// The address of server number `turn` when subscriptions go to fixed servers (one server,
    /// or a cluster's seeds); `None` behind Sentinel.
    pub fn fixed_server(&self, turn: usize) -> Option<ConnectionAddr> {
        let Source::Servers(servers) = &self.0.source else {
            return None;
        };
        let server = servers.get(turn % servers.len().max(1))?;
        Some(server.get_connection_info().addr().clone())
    }

    /// Notes that the route events are now heard on `server`. Behind Sentinel, a server other
    /// than the last one means the primary moved: the Redis handle drops its connections to the old one
    /// and counts the move (see [`Redis::primary_moved`]).
    pub fn subscribed_on(&self, server: &redis::Client) {
        let Source::Sentinel { last, .. } = &self.0.source else {
            return;
        };
        let addr = server.get_connection_info().addr().clone();
        let before = lock(last).replace(addr.clone());
        if before.as_ref().is_some_and(|b| *b != addr) {
            tracing::warn!(primary = %addr, "the Redis primary moved (failover); following it");
            self.0.redis.primary_moved();
        }
    }

    /// Whether `server` is still the primary the sentinels name. False once they name another
    /// (a demoted primary keeps its subscribers connected, as a replica); true when not behind
    /// Sentinel, or when no sentinel answers (nothing better is known).
    pub async fn still_primary(&self, server: &redis::Client) -> bool {
        let Source::Sentinel {
            sentinels,
            asking,
            master,
            ..
        } = &self.0.source
        else {
            return true;
        };
        let ConnectionAddr::Tcp(host, port) = server.get_connection_info().addr() else {
            return true;
        };
        let mut asking = asking.lock().await;
        let ask = |mut c: MultiplexedConnection| async move {
            let named: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master)
                .query_async(&mut c)
                .await?;
            Ok::<_, RedisError>((c, named))
        };
        let mut answer = None;
        if let Some(c) = asking.take() {
            answer = bounded(self.0.timeout, ask(c)).await.ok();
        }
        for s in sentinels {
            if answer.is_some() {
                break;
            }
            answer = bounded(self.0.timeout, async {
                ask(s.get_multiplexed_async_connection().await?).await
            })
            .await
            .ok();
        }
        match answer {
            Some((c, named)) => {
                *asking = Some(c);
                named.is_none_or(|(h, p)| h == *host && p == *port)
            }
            None => true,
        }
    }
}

fn open_client(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(super::no_delay(url)?).map_err(|e| e.to_string())
}
