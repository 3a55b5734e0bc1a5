//! Node membership in the route table: a node's record and lease (registered, renewed), the
//! removal of a node and its routes (on a clean stop, or by a survivor), and the sweep that finds
//! nodes whose lease ran out. Reading the node list is `wsroute_core::nodes`.
//!
//! A route lives exactly as long as its node's lease: routes carry no TTL of their own, a live
//! node puts them back if Redis lost them, and a survivor removes a dead node's routes.
//!
//! A sweep and the dead node coming back cannot interleave: the sweeper takes the node's cleanup
//! lock, then checks that the lease is still gone, deletes the node's record and reads its index
//! in one script ([`CLAIM_DEAD`]); a node that takes its lease again waits for that lock to be
//! released before it writes its routes back (see [`Membership::register_node`]). So either the
//! sweep sees the lease and removes nothing, or it removes only what it claimed, before any
//! route the node writes again.
//!
//! The lease holds the token of the process that took it (drawn at start-up), so that a second
//! process started with the same node id can tell a live holder (it renews) from one that
//! crashed (its lease only runs down) and refuse to start instead of wiping the first one's
//! routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{AsyncCommands, Cmd};
use wsroute_core::db::{DbError, Redis, RedisConn, Writes};
use wsroute_core::keys::{self, info};
use wsroute_core::nodes::{NodeReader, NodeRecord};

use super::table::{removal, unroute_announcing};
use crate::ids::{NodeId, UserId};
use crate::metrics::Metrics;
use crate::webhooks::event::Emitter;

/// Claims a dead node's routes for removal, in one step: refuses (nil) if the node's lease is
/// back; else deletes the node's record and returns its index's entries (`conn, user, ...`).
/// The index itself is removed entry by entry after the users' routes (so that a sweep that
/// fails half way is taken up again by the next). KEYS (all in the node's slot): lease, index,
/// record.
static CLAIM_DEAD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('DEL', KEYS[3])
return redis.call('HGETALL', KEYS[2])
",
    )
});

/// How long a sweeper may hold a node's cleanup lock (if it dies holding it, the lock expires).
const CLEANUP_LOCK_TTL: Duration = Duration::from_secs(30);

/// How often a node that took its lease again looks whether a sweeper still holds its cleanup
/// lock.
const CLEANUP_POLL: Duration = Duration::from_millis(50);

/// A dead node's routes, claimed by a sweep that holds the node's cleanup lock; removed by
/// [`Membership::finish_sweep`].
#[derive(Debug)]
pub struct SweepClaim {
    pub node: NodeId,
    entries: Vec<(String, String)>,
}

/// This node's membership of the cluster. Cheap to clone (the Redis handle is shared).
#[derive(Clone)]
pub struct Membership {
    redis: Redis,
    node: NodeId,
    lease_ttl: Duration,
    metrics: Metrics,
    read: NodeReader,
    /// This process's token, the value of its lease: another process under the same node id
    /// has another one.
    instance: Arc<str>,
    /// Set once this process took the node id's lease ([`Membership::claim_lease`]); until
    /// then it must not touch the node id's routes (another process may own them).
    claimed: Arc<AtomicBool>,
    /// With webhooks: writes `user.offline` for users whose last connection a removal took.
    webhooks: Option<Arc<Emitter>>,
}

/// What [`Membership::claim_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is this process's now.
    Taken,
    /// Another live process holds the node id: it renewed its lease while this one waited.
    HeldByLive {
        /// The other process's token (`1` for a node from before tokens).
        holder: String,
    },
}

/// What renewing the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// No lease: Redis lost its data or a survivor declared this node dead.
    Gone,
    /// Another process holds this node id's lease (it started while this one's lease had run
    /// out); this node leaves the lease and the routes alone.
    Foreign(String),
}

/// Renews the lease only if it is this process's: KEYS[1] the lease, ARGV[1] the token,
/// ARGV[2] the TTL in ms. 1 renewed, 0 gone, else the holder's token.
const RENEW_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then return 0 end
return v
";

impl Membership {
    pub fn new(redis: Redis, node: NodeId, lease_ttl: Duration, metrics: Metrics) -> Self {
        let read = NodeReader::new(redis.clone(), std::sync::Arc::new(metrics.clone()));
        let instance = format!("{:032x}", rand::random::<u128>());
        Self {
            redis,
            node,
            lease_ttl,
            metrics,
            read,
            instance: Arc::from(instance),
            claimed: Arc::default(),
            webhooks: None,
        }
    }

    /// Writes `user.offline` for the users a node removal leaves without a connection.
    pub fn with_webhooks(mut self, emitter: Arc<Emitter>) -> Self {
        self.webhooks = Some(emitter);
        self
    }

    /// Whether this process took the node id's lease.
    pub fn claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Takes the node id's lease for this process, before anything else is written under the
    /// id. A lease already there belongs to another process: one that crashed (its lease runs
    /// down within the lease TTL, which this waits out) or one that lives (it renews every
    /// `renew_every`, which this sees as the TTL going up: [`Claim::HeldByLive`]).
    pub async fn claim_lease(&self, renew_every: Duration) -> Result<Claim, DbError> {
        if self.claimed() {
            return Ok(Claim::Taken);
        }
        let lease = keys::node_lease(&self.node);
        // Longer than a crashed holder's lease can last; a holder still there then renewed.
        let deadline = tokio::time::Instant::now() + self.lease_ttl + renew_every;
        let mut seen: Option<(String, i64)> = None;
        loop {
            let mut c = self.cold().await?;
            let took: Option<String> = redis::cmd("SET")
                .arg(&lease)
                .arg(&*self.instance)
                .arg("NX")
                .arg("PX")
                .arg(self.lease_ttl_ms())
                .query_async(&mut c)
                .await?;
            if took.is_some() {
                self.claimed.store(true, Ordering::Release);
                return Ok(Claim::Taken);
            }
            let (holder, ttl): (Option<String>, i64) = redis::pipe()
                .get(&lease)
                .pttl(&lease)
                .query_async(&mut c)
                .await?;
            drop(c);
            let Some(holder) = holder else {
                continue; // ran out between the two calls: try again
            };
            let renewed = match &seen {
                None => {
                    tracing::warn!(
                        node = %self.node,
                        lease_ms = ttl,
                        "another process holds this node id's lease: waiting to see whether it lives (it renews) or crashed (the lease runs out)"
                    );
                    false
                }
                // A lease without a TTL is no crashed node's; a TTL that went up was renewed.
                Some((before, before_ttl)) => *before != holder || ttl < 0 || ttl > *before_ttl,
            };
            if renewed || tokio::time::Instant::now() >= deadline {
                return Ok(Claim::HeldByLive { holder });
            }
            seen = Some((holder, ttl));
            let wait = u64::try_from(ttl).unwrap_or(0).clamp(10, 250);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// The read side: the node list, a node's record, mesh endpoint and lease.
    pub fn reader(&self) -> &NodeReader {
        &self.read
    }

    /// Every registered node with its record and lease, sorted by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, DbError> {
        self.read.list_nodes().await
    }

    /// A connection checked out for this use: membership runs per interval, not per client.
    async fn cold(&self) -> Result<RedisConn, DbError> {
        self.redis.cold().await
    }

    /// Checks out the connections the hot paths hold (see `wsroute_core::db`), before clients
    /// come.
    pub async fn hold_connections(&self) -> Result<(), DbError> {
        self.redis.hold().await
    }

    /// How many times the Redis primary moved (a Sentinel failover) since the node started:
    /// when it changes, the node puts its routes back.
    pub fn primary_moves(&self) -> u64 {
        self.redis.primary_moves()
    }

    /// Publishes this node's record and takes its lease. If a survivor was sweeping this node
    /// (its lease had run out), waits until that sweep is over, so that the routes the caller
    /// writes next cannot be removed by it.
    pub async fn register_node(&self, record: &NodeRecord) -> Result<(), DbError> {
        let _timer = self.metrics.redis_op("register_node");
        let (info_key, lease) = (keys::node_info(&self.node), keys::node_lease(&self.node));
        // The lease before the record (one pipeline on their slot, in order): a sweep's claim
        // between the two sees the lease and leaves the record alone; one before both deletes
        // only the old record.
        let mut w = Writes::new();
        w.add(
            &lease,
            Cmd::pset_ex(&lease, &*self.instance, self.lease_ttl_ms()),
        )
        .add(
            &info_key,
            Cmd::hset_multiple(
                &info_key,
                &[
                    (info::GRPC, record.grpc_addr.clone()),
                    (info::URL, record.public_url.clone()),
                    (info::STARTED_MS, record.started_at_ms.to_string()),
                    (info::CONNS, record.connections.to_string()),
                    (info::DRAINING, u8::from(record.draining).to_string()),
                    (info::MAX_CONNS, record.max_connections.to_string()),
                    (info::MESH, crate::mesh::wire::MESH_PROTOCOL.to_owned()),
                ],
            ),
        )
        .then()
        .add(&keys::nodes(), Cmd::sadd(keys::nodes(), self.node.as_str()));
        let mut c = self.cold().await?;
        c.write(w).await?;
        // A sweep that claimed this node before the lease was back holds the lock until it has
        // removed what it claimed (the lock's TTL bounds the wait).
        let lock = keys::node_cleanup_lock(&self.node);
        let since = tokio::time::Instant::now();
        let mut swept = false;
        while c.exists::<_, bool>(&lock).await? {
            swept = true;
            if since.elapsed() > CLEANUP_LOCK_TTL {
                tracing::warn!(lock = %lock, "a sweep of this node outlived its lock; going on");
                break;
            }
            tokio::time::sleep(CLEANUP_POLL).await;
        }
        if swept {
            tracing::warn!(
                waited_ms = since.elapsed().as_millis() as u64,
                "waited for a sweep of this node to finish before registering again"
            );
            // The sweep took this node off the node list last: back on it.
            let _: () = c.sadd(keys::nodes(), self.node.as_str()).await?;
        }
        Ok(())
    }

    fn lease_ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renews the lease if it is this process's. [`Renewal::Gone`]: Redis lost its data or a
    /// survivor declared this node dead, and the caller must register everything again.
    pub async fn renew_lease(&self, connections: u64, draining: bool) -> Result<Renewal, DbError> {
        let _timer = self.metrics.redis_op("renew_lease");
        let mut renew = redis::cmd("EVAL");
        renew
            .arg(RENEW_SCRIPT)
            .arg(1)
            .arg(keys::node_lease(&self.node))
            .arg(&*self.instance)
            .arg(self.lease_ttl_ms());
        let fields = Cmd::hset_multiple(
            keys::node_info(&self.node),
            &[
                (info::CONNS, connections.to_string()),
                (info::DRAINING, u8::from(draining).to_string()),
            ],
        );
        let listed = Cmd::sadd(keys::nodes(), self.node.as_str());
        let replies = self
            .cold()
            .await?
            .read_groups(vec![vec![renew, fields], vec![listed]])
            .await?;
        Ok(match replies.first().and_then(|g| g.first()) {
            Some(redis::Value::Int(1)) => Renewal::Renewed,
            Some(redis::Value::Int(_)) | None => Renewal::Gone,
            Some(other) => Renewal::Foreign(
                redis::from_redis_value::<String>(other.clone())
                    .unwrap_or_else(|_| format!("{other:?}")),
            ),
        })
    }

    /// Removes every route of `node` listed in its index, then the node itself. Used by a node
    /// stopping cleanly (for itself) and by the cleaner (for a dead node). Returns the users whose
    /// routes changed.
    pub async fn remove_node(&self, node: &NodeId) -> Result<Vec<UserId>, DbError> {
        self.remove(node, true).await
    }

    /// Removes what a previous process under this node id left behind (its routes, its record),
    /// keeping the lease this process has just claimed.
    pub async fn remove_leftovers(&self) -> Result<Vec<UserId>, DbError> {
        self.remove(&self.node, false).await
    }

    async fn remove(&self, node: &NodeId, with_own_lease: bool) -> Result<Vec<UserId>, DbError> {
        let _timer = self.metrics.redis_op("remove_node");
        let mut c = self.cold().await?;
        let entries: Vec<(String, String)> = c.hgetall(keys::node_conns(node)).await?;
        if let Some(emitter) = &self.webhooks {
            unroute_announcing(&mut c, emitter, entries.iter()).await?;
        }
        let (mut w, mut users) = removal(node, entries.iter());
        let info_key = keys::node_info(node);
        w.add(&keys::nodes(), Cmd::srem(keys::nodes(), node.as_str()))
            .add(&info_key, Cmd::del(&info_key));
        if node == &self.node && with_own_lease {
            let lease = keys::node_lease(node);
            w.add(&lease, Cmd::del(&lease));
        }
        c.write(w).await?;
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Finds nodes whose lease ran out and removes their routes. A per-node lock makes sure
    /// one survivor does the work, not all of them. Returns the nodes cleaned and their users.
    pub async fn sweep_dead_nodes(
        &self,
        turn: Duration,
    ) -> Result<Vec<(NodeId, Vec<UserId>)>, DbError> {
        let _timer = self.metrics.redis_op("sweep");
        let mut c = self.cold().await?;
        // One node per `turn` looks: every node looking would cost Redis (nodes x nodes)
        // lease reads per interval, growing with the square of the cluster. A sweeper that dies
        // holds the turn no longer than its TTL.
        let mine: Option<String> = redis::cmd("SET")
            .arg(keys::sweep_turn())
            .arg(self.node.as_str())
            .arg("NX")
            .arg("PX")
            .arg(turn.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await?;
        if mine.is_none() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = c.smembers(keys::nodes()).await?;
        let mut cleaned = Vec::new();
        for id in ids {
            let Ok(node) = NodeId::parse(&id) else {
                continue;
            };
            if node == self.node {
                continue;
            }
            let alive: bool = c.exists(keys::node_lease(&node)).await?;
            if alive {
                continue;
            }
            let Some(claim) = self.claim_dead(&node).await? else {
                continue;
            };
            let users = self.finish_sweep(claim).await?;
            tracing::warn!(dead_node = %node, routes_users = users.len(), "removed the routes of a node whose lease ran out");
            cleaned.push((node, users));
        }
        Ok(cleaned)
    }

    /// First step of sweeping `node`: takes its cleanup lock, then, in one script, checks that
    /// its lease is still gone, deletes its record and reads its index ([`CLAIM_DEAD`]). `None` when another
    /// survivor sweeps it or its lease is back (the lock is then released at once). The lock is
    /// held until [`Self::finish_sweep`].
    pub async fn claim_dead(&self, node: &NodeId) -> Result<Option<SweepClaim>, DbError> {
        let mut c = self.cold().await?;
        let lock = keys::node_cleanup_lock(node);
        let locked: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(self.node.as_str())
            .arg("NX")
            .arg("PX")
            .arg(CLEANUP_LOCK_TTL.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        if locked.is_none() {
            return Ok(None);
        }
        let claimed: Result<Option<Vec<String>>, _> = CLAIM_DEAD
            .key(keys::node_lease(node))
            .key(keys::node_conns(node))
            .key(keys::node_info(node))
            .invoke_async(&mut c)
            .await;
        let flat = match claimed {
            Ok(Some(flat)) => flat,
            other => {
                // The lease is back, or the claim failed: nothing was taken.
                let _: Result<(), _> = c.del(&lock).await;
                other?;
                tracing::info!(node = %node, "not sweeping a node whose lease is back");
                return Ok(None);
            }
        };
        let mut entries = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(conn), Some(user)) = (it.next(), it.next()) {
            entries.push((conn, user));
        }
        Ok(Some(SweepClaim {
            node: node.clone(),
            entries,
        }))
    }

    /// Second step: removes the claimed node's users' routes, then their index entries, then
    /// takes the node off the node list, and releases its cleanup lock (also when this fails:
    /// what is left is still indexed, and the next sweep takes it up). Returns the users whose
    /// routes changed.
    pub async fn finish_sweep(&self, claim: SweepClaim) -> Result<Vec<UserId>, DbError> {
        let _timer = self.metrics.redis_op("remove_node");
        let mut c = self.cold().await?;
        if let Some(emitter) = &self.webhooks {
            let announced = unroute_announcing(&mut c, emitter, claim.entries.iter()).await;
            if let Err(e) = announced {
                let _: Result<(), _> = c.del(keys::node_cleanup_lock(&claim.node)).await;
                return Err(e);
            }
        }
        let (mut w, mut users) = removal(&claim.node, claim.entries.iter());
        w.add(
            &keys::nodes(),
            Cmd::srem(keys::nodes(), claim.node.as_str()),
        );
        let removed = c.write(w).await;
        let _: Result<(), _> = c.del(keys::node_cleanup_lock(&claim.node)).await;
        removed?;
        users.sort();
        users.dedup();
        Ok(users)
    }
}
