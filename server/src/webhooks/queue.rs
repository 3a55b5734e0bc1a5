//! The Redis side of delivering webhook events: the consumer group every node reads the events
//! stream through (XREADGROUP), the pending entries (XPENDING) that are claimed for another
//! attempt (XCLAIM), settling an entry (XACK + XDEL) and burying it in the dead stream, and the
//! figures behind the lag metrics. Every multi-key step runs in one script on the `{webhooks}`
//! slot.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;
use wsroute_core::db::{DbError, Redis};
use wsroute_core::keys::{self, WEBHOOK_GROUP};
use wsroute_core::webhooks::{Entry, entries, field, read_group_entries};

/// Acks and deletes a settled entry, so that the stream holds only events not yet settled.
/// KEYS: events. ARGV: group, entry id.
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
",
    )
});

/// Moves a pending entry to the dead stream with its attempts and last error, unless it is no
/// longer pending (another node settled or buried it). KEYS: events, dead. ARGV: group, entry
/// id, event id, body, attempts, error, now ms, max dead entries. Returns -1 when not pending,
/// else how many old dead entries the dead stream's trim dropped.
static BURY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('XDEL', KEYS[1], ARGV[2])
local before = redis.call('XLEN', KEYS[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'eid', ARGV[3], 'body', ARGV[4],
  'attempts', ARGV[5], 'error', ARGV[6], 'dead_ms', ARGV[7])
return before + 1 - redis.call('XLEN', KEYS[2])
",
    )
});

/// A pending entry: delivered to a consumer at least once, not settled.
#[derive(Debug, Clone)]
pub struct Pending {
    pub entry: String,
    pub consumer: String,
    /// Time since it was last delivered (read or claimed).
    pub idle: Duration,
    /// How many times it was delivered: the attempts made (or begun) so far.
    pub deliveries: u64,
}

/// The figures behind the lag gauges.
#[derive(Debug, Clone, Default)]
pub struct Lag {
    /// Entries not yet settled (never read, or pending).
    pub waiting: u64,
    /// Entries read at least once and not settled.
    pub pending: u64,
    /// Age of the oldest entry not yet settled.
    pub oldest: Duration,
    /// Dead entries kept.
    pub dead: u64,
}

/// This node's consumer of the shared group.
pub struct Queue {
    redis: Redis,
    consumer: String,
    events: String,
    dead: String,
    max_events: u64,
}

impl Queue {
    pub fn new(redis: Redis, consumer: &str, max_events: u64) -> Self {
        Self {
            redis,
            consumer: consumer.to_owned(),
            events: keys::webhook_events(),
            dead: keys::webhook_dead(),
            max_events,
        }
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Makes the group (and the stream) if they do not exist; the group starts at the stream's
    /// first entry, so that events appended before it existed are delivered too.
    pub async fn ensure_group(&self) -> Result<(), DbError> {
        let mut c = self.redis.cold().await?;
        let made: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.events)
            .arg(WEBHOOK_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match made {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            r => Ok(r?),
        }
    }

    /// Entries no consumer has read yet, at most `count`, waiting up to `block` for one. On a
    /// connection of its own (a checkout), since a blocking read would hold up every request
    /// pipelined behind it on a shared one. A lost group (Redis restarted empty) is made again.
    pub async fn read_new(&self, count: usize, block: Duration) -> Result<Vec<Entry>, DbError> {
        let mut c = self.redis.cold().await?;
        let read: Result<Value, redis::RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WEBHOOK_GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.events)
            .arg(">")
            .query_async(&mut c)
            .await;
        match read {
            Ok(v) => Ok(read_group_entries(v)),
            Err(e) if e.code() == Some("NOGROUP") => {
                drop(c);
                tracing::info!(
                    "the webhook consumer group is gone (Redis lost its data?); making it again"
                );
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `count` pending entries idle for at least `min_idle`, after entry `after` (`-` from
    /// the start), oldest first.
    pub async fn pending(
        &self,
        min_idle: Duration,
        after: &str,
        count: usize,
    ) -> Result<Vec<Pending>, DbError> {
        let mut c = self.redis.hot().await?;
        let rows: Result<Vec<(String, String, u64, u64)>, redis::RedisError> =
            redis::cmd("XPENDING")
                .arg(&self.events)
                .arg(WEBHOOK_GROUP)
                .arg("IDLE")
                .arg(min_idle.as_millis() as u64)
                .arg(after)
                .arg("+")
                .arg(count)
                .query_async(&mut c)
                .await;
        let rows = match rows {
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            r => r?,
        };
        Ok(rows
            .into_iter()
            .map(|(entry, consumer, idle, deliveries)| Pending {
                entry,
                consumer,
                idle: Duration::from_millis(idle),
                deliveries,
            })
            .collect())
    }

    /// Claims `entry` for this node if it is still idle for at least `min_idle` (so that of two
    /// nodes claiming it at once, one gets it), counting one more delivery. `None` when another
    /// node was first, or the entry no longer exists (trimmed; Redis drops it from the pending
    /// list then).
    pub async fn claim(&self, entry: &str, min_idle: Duration) -> Result<Option<Entry>, DbError> {
        let mut c = self.redis.hot().await?;
        let reply: Value = redis::cmd("XCLAIM")
            .arg(&self.events)
            .arg(WEBHOOK_GROUP)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(entry)
            .query_async(&mut c)
            .await?;
        Ok(entries(reply)
            .into_iter()
            .find(|e| e.entry == entry && !e.fields.is_empty()))
    }

    /// The entry's POST was answered 2xx: it is done.
    pub async fn settle(&self, entry: &str) -> Result<(), DbError> {
        let mut c = self.redis.hot().await?;
        let _: i64 = SETTLE
            .key(&self.events)
            .arg(WEBHOOK_GROUP)
            .arg(entry)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Moves the entry to the dead stream. `Ok(None)` if it was no longer pending (settled or
    /// buried by another node); else how many old dead entries were dropped to make room.
    pub async fn bury(
        &self,
        entry: &Entry,
        attempts: u64,
        error: &str,
        now_ms: i64,
    ) -> Result<Option<u64>, DbError> {
        let mut c = self.redis.hot().await?;
        let dropped: i64 = BURY
            .key(&self.events)
            .key(&self.dead)
            .arg(WEBHOOK_GROUP)
            .arg(&entry.entry)
            .arg(entry.event_id())
            .arg(entry.get(field::BODY).unwrap_or(""))
            .arg(attempts)
            .arg(error)
            .arg(now_ms)
            .arg(self.max_events)
            .invoke_async(&mut c)
            .await?;
        Ok((dropped >= 0).then_some(dropped.unsigned_abs()))
    }

    /// What waits, what is pending, how old the oldest is, how many are dead.
    pub async fn lag(&self, now_ms: i64) -> Result<Lag, DbError> {
        let mut c = self.redis.cold().await?;
        let replies = c
            .read_groups(vec![vec![
                redis::cmd("XLEN").arg(&self.events).clone(),
                redis::cmd("XRANGE")
                    .arg(&self.events)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .clone(),
                redis::cmd("XLEN").arg(&self.dead).clone(),
                redis::cmd("XINFO").arg("GROUPS").arg(&self.events).clone(),
            ]])
            .await;
        let replies = match replies {
            // The stream does not exist yet (XINFO GROUPS fails on a missing key).
            Err(DbError::Command(e)) if e.code() == Some("ERR") => return Ok(Lag::default()),
            r => r?,
        };
        let mut it = replies.into_iter().flatten();
        let waiting: u64 = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(0);
        let oldest = it
            .next()
            .map(entries)
            .and_then(|e| e.first().and_then(Entry::added_ms))
            .map(|ms| Duration::from_millis(now_ms.saturating_sub(ms).max(0) as u64))
            .unwrap_or_default();
        let dead: u64 = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(0);
        let pending = it.next().map(group_pending).unwrap_or(0);
        Ok(Lag {
            waiting,
            pending,
            oldest,
            dead,
        })
    }
}

/// The `pending` count of our group in an XINFO GROUPS reply.
fn group_pending(reply: Value) -> u64 {
    let Value::Array(groups) = reply else {
        return 0;
    };
    for g in groups {
        let flat: Vec<Value> = match g {
            Value::Array(v) => v,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let mut name = None;
        let mut pending = 0;
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match redis::from_redis_value::<String>(k).as_deref() {
                Ok("name") => name = redis::from_redis_value::<String>(v).ok(),
                Ok("pending") => pending = redis::from_redis_value(v).unwrap_or(0),
                _ => {}
            }
        }
        if name.as_deref() == Some(WEBHOOK_GROUP) {
            return pending;
        }
    }
    0
}
