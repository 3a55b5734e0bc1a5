//! One handle on Redis: a single server (`redis://`, `rediss://`) or a Redis Cluster
//! (`redis+cluster://h1:p1,h2:p2`), and the one thing that differs between them for wsroute: how
//! a write that touches keys in several slots runs.
//!
//! On a cluster no command, script, MULTI or pipeline may span slots. Every key of one user shares
//! the hash tag `{user}` and every key of one node `{node}` (see `keys`), so a multi-key write is
//! split into per-slot pipelines, run in stages whose order keeps the route table's invariant: a
//! route entry never exists without the node-index entry that lets it be cleaned up (index first
//! on the way in, route first on the way out).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::registry::RouteError;

/// The node's way to Redis, one server or a cluster. Cheap to clone.
///
/// Not a pool: every command wsroute sends is non-blocking and none uses WATCH, so one
/// multiplexed connection (per cluster node) carries all of them, pipelining concurrent requests
/// on the socket. A pool would check each connection out with a PING round trip of its own,
/// doubling the cost of a connect. Both kinds reconnect by themselves after a failure; a
/// request never waits longer than the response timeout.
#[derive(Clone)]
pub struct RedisPool(Arc<Backend>);

// Made once per process and kept behind an Arc: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(ConnectionManager),
    Cluster {
        client: ClusterClient,
        conn: OnceCell<ClusterConnection>,
    },
}

/// A handle on the connection (cheap to clone; requests on clones share the socket).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The scheme of a Redis Cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The seed servers of a `redis+cluster://[user:pass@]h1:p1,h2:p2[/]` URL, each as a `redis://`
/// URL carrying the credentials; `None` when `url` is not a cluster URL.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    Some(if seeds.is_empty() {
        Err(format!(
            "{url:?} names no cluster node (redis+cluster://host:port,host:port)"
        ))
    } else if let Some(bad) = hosts.split(',').find(|h| h.contains('/')) {
        Err(format!("{url:?}: {bad:?} is not host:port"))
    } else {
        Ok(seeds)
    })
}

impl RedisPool {
    /// A handle on `url`'s server or cluster; `timeout` bounds connecting and each response.
    /// Nothing is dialled until the first request, so a node can start while Redis is away.
    pub fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        let backend = match cluster_seeds(url) {
            Some(seeds) => Backend::Cluster {
                client: ClusterClientBuilder::new(seeds?)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()
                    .map_err(|e| e.to_string())?,
                conn: OnceCell::new(),
            },
            None => {
                let client = redis::Client::open(url).map_err(|e| e.to_string())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Backend::Single(
                    ConnectionManager::new_lazy_with_config(client, config)
                        .map_err(|e| e.to_string())?,
                )
            }
        };
        Ok(Self(Arc::new(backend)))
    }

    /// Clients for pub/sub, to be tried in turn: the server, or every seed of a cluster (classic
    /// pub/sub is cluster-wide, so a subscriber on any one node hears what any node publishes).
    pub fn pubsub_clients(url: &str) -> Result<Vec<redis::Client>, String> {
        let urls = match cluster_seeds(url) {
            Some(seeds) => seeds?,
            None => vec![url.to_owned()],
        };
        urls.iter()
            .map(|u| redis::Client::open(u.as_str()).map_err(|e| e.to_string()))
            .collect()
    }

    pub async fn get(&self) -> Result<RedisConn, RouteError> {
        match &*self.0 {
            Backend::Single(m) => Ok(RedisConn::Single(m.clone())),
            Backend::Cluster { client, conn } => Ok(RedisConn::Cluster(
                conn.get_or_try_init(|| client.get_async_connection())
                    .await
                    .map_err(|e| RouteError::Pool(e.to_string()))?
                    .clone(),
            )),
        }
    }

    /// Applies `writes`: on one server as one pipeline in order; on a cluster stage by stage, each
    /// stage as one pipeline per slot group, run concurrently.
    pub async fn write(&self, writes: Writes) -> Result<(), RouteError> {
        let mut conn = self.get().await?;
        match &mut conn {
            RedisConn::Single(_) => {
                let mut pipe = redis::pipe();
                for (_, cmd) in writes.stages.into_iter().flatten() {
                    pipe.add_command(cmd).ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
            }
            RedisConn::Cluster(c) => {
                for stage in writes.stages {
                    let mut groups: HashMap<String, Pipeline> = HashMap::new();
                    for (group, cmd) in stage {
                        groups
                            .entry(group)
                            .or_insert_with(redis::pipe)
                            .add_command(cmd)
                            .ignore();
                    }
                    try_join_all(groups.into_values().map(|pipe| {
                        let mut c = c.clone();
                        async move { pipe.query_async::<()>(&mut c).await }
                    }))
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Runs groups of reads, each group's commands on keys of one slot, and answers each group's
    /// replies in order: one pipeline on one server, one pipeline per group on a cluster.
    pub async fn read_groups(&self, groups: Vec<Vec<Cmd>>) -> Result<Vec<Vec<Value>>, RouteError> {
        let mut conn = self.get().await?;
        match &mut conn {
            RedisConn::Single(_) => {
                let mut pipe = redis::pipe();
                let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
                for cmd in groups.into_iter().flatten() {
                    pipe.add_command(cmd);
                }
                if sizes.iter().sum::<usize>() == 0 {
                    return Ok(sizes.iter().map(|_| Vec::new()).collect());
                }
                let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
                let mut out = Vec::with_capacity(sizes.len());
                for n in sizes {
                    let rest = replies.split_off(n.min(replies.len()));
                    out.push(std::mem::replace(&mut replies, rest));
                }
                Ok(out)
            }
            RedisConn::Cluster(c) => {
                let c: &ClusterConnection = c;
                Ok(try_join_all(groups.into_iter().map(|group| {
                    let mut c = c.clone();
                    async move {
                        if group.is_empty() {
                            return Ok(Vec::new());
                        }
                        let mut pipe = redis::pipe();
                        for cmd in group {
                            pipe.add_command(cmd);
                        }
                        pipe.query_async::<Vec<Value>>(&mut c).await
                    }
                }))
                .await?)
            }
        }
    }
}

/// Writes on keys of several slots, in stages: a stage is applied only after the one before it.
/// Each command is filed under the slot group of its key (its `{hash tag}`).
pub struct Writes {
    stages: Vec<Vec<(String, Cmd)>>,
}

impl Default for Writes {
    fn default() -> Self {
        Self::new()
    }
}

impl Writes {
    pub fn new() -> Self {
        Self {
            stages: vec![Vec::new()],
        }
    }

    /// Adds `cmd`, whose key is `key`, to the current stage.
    pub fn add(&mut self, key: &str, cmd: Cmd) -> &mut Self {
        if let Some(stage) = self.stages.last_mut() {
            stage.push((slot_group(key).to_owned(), cmd));
        }
        self
    }

    /// Starts the next stage: what is added from now on runs after what was added before.
    pub fn then(&mut self) -> &mut Self {
        if self.stages.last().is_some_and(|s| !s.is_empty()) {
            self.stages.push(Vec::new());
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(Vec::is_empty)
    }
}

/// The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the whole key.
fn slot_group(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(cluster_seeds("redis://h:1"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2/"),
            Some(Ok(vec!["redis://a:1".into(), "redis://b:2".into()]))
        );
        assert_eq!(
            cluster_seeds("redis+cluster://u:p@a:1,b:2"),
            Some(Ok(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()]))
        );
        assert!(matches!(cluster_seeds("redis+cluster://"), Some(Err(_))));
        assert!(matches!(
            cluster_seeds("redis+cluster://a:1/0,b:2"),
            Some(Err(_))
        ));
    }

    #[test]
    fn keys_group_by_their_hash_tag() {
        assert_eq!(slot_group("wsr:u:{bob}:conns"), "bob");
        assert_eq!(slot_group("wsr:u:{bob}:inbox:ids"), "bob");
        assert_eq!(slot_group("wsr:nodes"), "wsr:nodes");
        assert_eq!(slot_group("a{}b"), "a{}b");
    }
}
