//! Messages for users with no live connection: kept in Redis (bounded per user, with an expiry),
//! delivered oldest first on the user's next connect on any node, removed only on the client's ack.

use std::sync::LazyLock;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::ids::{MsgId, UserId};
use crate::metrics::Metrics;
use crate::route::keys;
use crate::route::registry::RouteError;
use crate::route::store::RedisPool;

/// Appends a message unless the inbox is full. Idempotent per id, so a retried store never
/// duplicates. KEYS: ids list, msgs hash. ARGV: id, frame, max, ttl_ms. Returns the depth after storing, -1 when already
/// there, 0 when full.
static STORE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
local depth = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return depth
",
    )
});

/// Every message, oldest first, as a flat list id1, frame1, id2, frame2...
static FETCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local frame = redis.call('HGET', KEYS[2], id)
  if frame then
    table.insert(out, id)
    table.insert(out, frame)
  end
end
return out
",
    )
});

/// Removes one acked message. Returns 1 if it was there.
static ACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('LREM', KEYS[1], 1, ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    Full,
}

#[derive(Clone)]
pub struct Inbox {
    pool: RedisPool,
    max: usize,
    ttl: Duration,
    metrics: Metrics,
}

impl Inbox {
    pub fn new(pool: RedisPool, max: usize, ttl: Duration, metrics: Metrics) -> Self {
        Self {
            pool,
            max,
            ttl,
            metrics,
        }
    }

    pub async fn store(&self, env: &Envelope) -> Result<StoreOutcome, RouteError> {
        self.store_frame(&env.to, &env.id, &env.frame()).await
    }

    /// Stores an already-encoded `message` frame (a message written to a connection that ended
    /// before the client acked it).
    pub async fn store_frame(
        &self,
        user: &UserId,
        id: &MsgId,
        frame: &str,
    ) -> Result<StoreOutcome, RouteError> {
        let _timer = self.metrics.redis_op("inbox_store");
        let mut c = self.pool.hot().await?;
        let stored: i64 = STORE
            .key(keys::inbox_ids(user))
            .key(keys::inbox_msgs(user))
            .arg(id.as_str())
            .arg(frame)
            .arg(self.max)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut c)
            .await?;
        if stored > 0 {
            self.metrics.inbox_depth.observe(stored as f64);
        }
        Ok(if stored != 0 {
            StoreOutcome::Stored
        } else {
            StoreOutcome::Full
        })
    }

    /// The user's inbox, oldest first, as `(id, message frame)`.
    pub async fn fetch(&self, user: &UserId) -> Result<Vec<(MsgId, String)>, RouteError> {
        let _timer = self.metrics.redis_op("inbox_fetch");
        let mut c = self.pool.hot().await?;
        let flat: Vec<String> = FETCH
            .key(keys::inbox_ids(user))
            .key(keys::inbox_msgs(user))
            .invoke_async(&mut c)
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(frame)) = (it.next(), it.next()) {
            match MsgId::parse(&id) {
                Ok(id) => out.push((id, frame)),
                Err(_) => tracing::warn!(%user, id = %id, "skipping an inbox entry with a bad id"),
            }
        }
        Ok(out)
    }

    /// Forgets one message the client acked; false if it was not (or no longer) there.
    pub async fn ack(&self, user: &UserId, id: &MsgId) -> Result<bool, RouteError> {
        let _timer = self.metrics.redis_op("inbox_ack");
        let mut c = self.pool.hot().await?;
        let removed: i64 = ACK
            .key(keys::inbox_ids(user))
            .key(keys::inbox_msgs(user))
            .arg(id.as_str())
            .invoke_async(&mut c)
            .await?;
        Ok(removed == 1)
    }

    /// How many messages wait for a user.
    pub async fn depth(&self, user: &UserId) -> Result<usize, RouteError> {
        let mut c = self.pool.hot().await?;
        let n: usize = redis::cmd("LLEN")
            .arg(keys::inbox_ids(user))
            .query_async(&mut c)
            .await?;
        Ok(n)
    }
}
