//! Messages for users with no live connection: kept in Redis (bounded per user, with an expiry),
//! delivered oldest first on the user's next connect on any node, removed only on the client's ack.
//! An inbox is bounded by messages and by bytes (a counter beside it, kept in step by the
//! scripts below) for new sends; messages a connection had not acked are kept whatever its size.
//! Reading an inbox is `wsroute_core::inbox` (router-cli reads it too); storing and acking here.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use wsroute_core::db::{DbError, Redis};
use wsroute_core::inbox::InboxReader;
use wsroute_core::keys;

use crate::envelope::Envelope;
use crate::ids::{MsgId, UserId};
use crate::metrics::Metrics;
use crate::webhooks::event::{ADD_EVENT_LUA, Emitter};

/// Appends a message unless the inbox is full (by count or by bytes). Idempotent per id, so a
/// retried store never duplicates. KEYS: ids list, msgs hash, bytes counter, and with webhooks on
/// a single server the webhook events stream. ARGV: id, frame, max messages, max bytes, ttl_ms,
/// and with the stream the `message.stored` event's id, body and the stream's max entries.
/// Returns {the depth after storing, -1 when already there, 0 when full by count, -2 when full
/// by bytes; how many old events the event's append dropped}. The counter moves with the hash,
/// here and in [`ACK`], and expires with it. The event is written only when the message was.
static STORE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{ADD_EVENT_LUA}
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {{-1, 0}} end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {{0, 0}} end
local size = string.len(ARGV[2])
local bytes = tonumber(redis.call('GET', KEYS[3]) or '0')
if bytes + size > tonumber(ARGV[4]) then return {{-2, 0}} end
local depth = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[3], size)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
local dropped = 0
if KEYS[4] then dropped = add_event(KEYS[4], ARGV[6], ARGV[7], ARGV[8]) end
return {{depth, dropped}}
"
    ))
});

/// Removes one acked message and its bytes from the counter. Returns 1 if it was there.
static ACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('LREM', KEYS[1], 1, ARGV[1])
local frame = redis.call('HGET', KEYS[2], ARGV[1])
if not frame then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('DECRBY', KEYS[3], string.len(frame)) <= 0 then redis.call('DEL', KEYS[3]) end
return 1
",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    /// The inbox holds this id already (a resend): nothing was added.
    Had,
    /// The inbox holds its maximum number of messages.
    Full,
    /// The message would take the inbox past its maximum bytes.
    FullBytes,
}

#[derive(Clone)]
pub struct Inbox {
    redis: Redis,
    max: usize,
    max_bytes: usize,
    ttl: Duration,
    metrics: Metrics,
    read: InboxReader,
    /// With webhooks: writes `message.stored` beside every message stored.
    webhooks: Option<Arc<Emitter>>,
}

impl Inbox {
    pub fn new(
        redis: Redis,
        max: usize,
        max_bytes: usize,
        ttl: Duration,
        metrics: Metrics,
    ) -> Self {
        let read = InboxReader::new(redis.clone(), Arc::new(metrics.clone()));
        Self {
            redis,
            max,
            max_bytes,
            ttl,
            metrics,
            read,
            webhooks: None,
        }
    }

    /// Writes a `message.stored` webhook event with every message that enters an inbox.
    pub fn with_webhooks(mut self, emitter: Arc<Emitter>) -> Self {
        self.webhooks = Some(emitter);
        self
    }

    pub async fn store(&self, env: &Envelope) -> Result<StoreOutcome, DbError> {
        self.store_frame(&env.to, &env.id, &env.frame()).await
    }

    /// Stores an already-encoded `message` frame (a message written to a connection that ended
    /// before the client acked it).
    pub async fn store_frame(
        &self,
        user: &UserId,
        id: &MsgId,
        frame: &str,
    ) -> Result<StoreOutcome, DbError> {
        self.store_capped(user, id, frame, (self.max, self.max_bytes))
            .await
    }

    /// Stores unless the inbox holds `caps.0` messages or would hold more than `caps.1` bytes.
    async fn store_capped(
        &self,
        user: &UserId,
        id: &MsgId,
        frame: &str,
        (max, max_bytes): (usize, usize),
    ) -> Result<StoreOutcome, DbError> {
        let _timer = self.metrics.redis_op("inbox_store");
        let mut c = self.redis.hot().await?;
        let mut store = STORE.key(keys::inbox_ids(user));
        store
            .key(keys::inbox_msgs(user))
            .key(keys::inbox_bytes(user))
            .arg(id.as_str())
            .arg(frame)
            .arg(max)
            .arg(max_bytes)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let event = self
            .webhooks
            .as_ref()
            .and_then(|w| Some((w, w.stored(frame)?)));
        let cluster = c.is_cluster();
        if let Some((w, event)) = &event
            && !cluster
        {
            // In the script: the event is written in the same step as the message.
            w.add_to(&mut store, event);
        }
        let (stored, dropped): (i64, i64) = store.invoke_async(&mut c).await?;
        if stored > 0 {
            self.metrics.inbox_depth.observe(stored as f64);
            if let Some((w, event)) = &event {
                if cluster {
                    w.append(&mut c, event).await;
                } else {
                    w.written(event, dropped);
                }
            }
        }
        Ok(match stored {
            0 => StoreOutcome::Full,
            -1 => StoreOutcome::Had,
            -2 => StoreOutcome::FullBytes,
            _ => StoreOutcome::Stored,
        })
    }

    /// Keeps messages that were acked `delivered` and could not be confirmed (their connection,
    /// or the peer holding them, ended first). They are stored whatever the inbox's depth: they
    /// were accepted already, and what can come here at once is bounded by the connection's
    /// unacked budget or the node's holds. Each store is retried across a Redis blip until
    /// `within` has passed. Returns the ids stored (or already there) and those that could not be
    /// (the caller hands them to the node's backlog, stored once Redis answers again).
    pub async fn keep(
        &self,
        user: &UserId,
        messages: &[(MsgId, &str)],
        within: Duration,
    ) -> (Vec<MsgId>, Vec<MsgId>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut kept = Vec::with_capacity(messages.len());
        let mut lost = Vec::new();
        let mut pause = Duration::from_millis(50);
        // Once a store failed past the deadline Redis is away: the rest are not tried (each try
        // could wait out the response timeout), they are handed back.
        let mut away = false;
        for (id, frame) in messages {
            if away {
                lost.push(id.clone());
                continue;
            }
            loop {
                match self
                    .store_capped(user, id, frame, (usize::MAX, usize::MAX))
                    .await
                {
                    Ok(_) => {
                        kept.push(id.clone());
                        break;
                    }
                    Err(e) if tokio::time::Instant::now() + pause < deadline => {
                        tracing::warn!(%user, msg_id = %id, error = %e, "cannot keep a delivered message yet; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        tracing::warn!(%user, msg_id = %id, error = %e, "cannot keep a delivered message in the inbox now");
                        lost.push(id.clone());
                        away = true;
                        break;
                    }
                }
            }
        }
        (kept, lost)
    }

    /// The user's inbox, oldest first, as `(id, message frame)`.
    pub async fn fetch(&self, user: &UserId) -> Result<Vec<(MsgId, String)>, DbError> {
        self.read.fetch(user).await
    }

    /// Forgets one message the client acked; false if it was not (or no longer) there.
    pub async fn ack(&self, user: &UserId, id: &MsgId) -> Result<bool, DbError> {
        let _timer = self.metrics.redis_op("inbox_ack");
        let mut c = self.redis.hot().await?;
        let removed: i64 = ACK
            .key(keys::inbox_ids(user))
            .key(keys::inbox_msgs(user))
            .key(keys::inbox_bytes(user))
            .arg(id.as_str())
            .invoke_async(&mut c)
            .await?;
        Ok(removed == 1)
    }

    /// How many messages wait for a user.
    pub async fn depth(&self, user: &UserId) -> Result<usize, DbError> {
        self.read.depth(user).await
    }
}
