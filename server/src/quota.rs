//! Quotas on what senders can make the cluster keep: a token bucket per sending user, and one
//! for the API key, charged for each new send that goes to an inbox (docs/protocol.md, "Limits").
//!
//! Two layers of the same bucket. [`StoreQuota`] lives in this node's memory: a sender past it
//! is refused without a Redis call. [`SharedQuota`] is the cluster-wide one, in Redis, taken by
//! one single-key script for each send the node's own bucket let through: a user connected to
//! several nodes has one quota for all of them, as PROTOCOL 7.6 says ("per sender"). Sends
//! delivered live reach neither.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use wsroute_core::db::{DbError, Redis};
use wsroute_core::keys;

use crate::ids::UserId;
use crate::metrics::Metrics;

/// Buckets tracked before the first sweep of full ones (a full bucket is the same as none).
const MIN_SWEEP: usize = 4096;

/// Who a send is charged to when it goes to an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client connection: its authenticated user (the message's `from`) pays.
    Client,
    /// The push API or the gRPC Router: the API key pays, whatever `from` says.
    Api,
}

/// A rate with a burst of a minute's worth.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_sec: f64,
    capacity: f64,
}

impl Rate {
    fn per_minute(n: u32) -> Self {
        let capacity = f64::from(n.max(1));
        Self {
            per_sec: capacity / 60.0,
            capacity,
        }
    }

    fn full(self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.capacity,
            last: now,
        }
    }

    /// Refills `b` up to `now`; takes one token if there is one.
    fn take(self, b: &mut Bucket, now: Instant) -> bool {
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.capacity);
    }

    fn is_full(self, b: &Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens + elapsed * self.per_sec >= self.capacity
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The node's inbox quotas. Shared by every connection and the API endpoints.
pub struct StoreQuota {
    /// The configured figures, for messages.
    user_per_minute: u32,
    api_per_minute: u32,
    user_rate: Rate,
    api_rate: Rate,
    /// One bucket per user who sent to an inbox lately. Sharded (dashmap): every connection's
    /// sends touch it, and each only its own user's entry. Bounded by the senders active within
    /// a minute: once the map reaches `sweep_at`, buckets that have refilled (the same as no
    /// bucket) are removed, and the next sweep waits until the map has doubled again.
    users: DashMap<UserId, Bucket, foldhash::quality::RandomState>,
    sweep_at: AtomicUsize,
    /// The API key's bucket: one key, one bucket (a mutex held for a few instructions).
    api: Mutex<Bucket>,
}

impl StoreQuota {
    pub fn new(user_per_minute: u32, api_per_minute: u32) -> Self {
        let api_rate = Rate::per_minute(api_per_minute);
        Self {
            user_per_minute,
            api_per_minute,
            user_rate: Rate::per_minute(user_per_minute),
            api_rate,
            users: DashMap::default(),
            sweep_at: AtomicUsize::new(MIN_SWEEP),
            api: Mutex::new(api_rate.full(Instant::now())),
        }
    }

    /// Takes one send to an inbox from `from` (sent by `origin`) out of its quota; false when
    /// the quota is spent.
    pub fn charge(&self, origin: Origin, from: &UserId, now: Instant) -> bool {
        match origin {
            Origin::Api => {
                let mut b = self
                    .api
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                self.api_rate.take(&mut b, now)
            }
            Origin::Client => {
                let taken = {
                    let mut b = self
                        .users
                        .entry(from.clone())
                        .or_insert_with(|| self.user_rate.full(now));
                    self.user_rate.take(&mut b, now)
                };
                self.sweep(now);
                taken
            }
        }
    }

    /// Gives back the token [`Self::charge`] took for a send that turned out to cost nothing:
    /// the message was in the inbox already (a resend with its `cid`).
    pub fn refund(&self, origin: Origin, from: &UserId) {
        let give_back = |rate: Rate, b: &mut Bucket| b.tokens = (b.tokens + 1.0).min(rate.capacity);
        match origin {
            Origin::Api => give_back(
                self.api_rate,
                &mut self
                    .api
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
            Origin::Client => {
                if let Some(mut b) = self.users.get_mut(from) {
                    give_back(self.user_rate, &mut b);
                }
            }
        }
    }

    /// Forgets the buckets that have refilled, once the map has grown to the sweep mark.
    fn sweep(&self, now: Instant) {
        let at = self.sweep_at.load(Ordering::Relaxed);
        if self.users.len() < at {
            return;
        }
        let rate = self.user_rate;
        self.users.retain(|_, b| !rate.is_full(b, now));
        let next = (self.users.len() * 2).max(MIN_SWEEP);
        self.sweep_at.store(next, Ordering::Relaxed);
    }

    /// The quota, per minute, of sends from `origin`.
    pub fn per_minute(&self, origin: Origin) -> u32 {
        match origin {
            Origin::Client => self.user_per_minute,
            Origin::Api => self.api_per_minute,
        }
    }

    /// Users with a bucket (tests and metrics).
    pub fn tracked(&self) -> usize {
        self.users.len()
    }
}

/// A token bucket in Redis, on Redis's clock (every node sees the same time). KEYS: the bucket.
/// ARGV: capacity, tokens per second, cost (1 takes a token if there is one; -1 gives one back,
/// up to the capacity), how long an untouched bucket is kept (ms; by then it has refilled).
/// Returns 1 when taken (or given back), 0 when the bucket is spent.
static BUCKET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local taken = 1
if cost > 0 and tokens < cost then taken = 0 else tokens = math.min(cap, tokens - cost) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return taken
",
    )
});

/// The cluster-wide quota (see the module's text): the same rates as [`StoreQuota`], one bucket
/// per sender and one for the API key, in Redis.
#[derive(Clone)]
pub struct SharedQuota {
    redis: Redis,
    user_rate: Rate,
    api_rate: Rate,
    metrics: Metrics,
}

impl SharedQuota {
    pub fn new(redis: Redis, user_per_minute: u32, api_per_minute: u32, metrics: Metrics) -> Self {
        Self {
            redis,
            user_rate: Rate::per_minute(user_per_minute),
            api_rate: Rate::per_minute(api_per_minute),
            metrics,
        }
    }

    /// Takes one send to an inbox from `from` (sent by `origin`) out of the cluster-wide quota;
    /// `Ok(false)` when it is spent.
    pub async fn charge(&self, origin: Origin, from: &UserId) -> Result<bool, DbError> {
        self.bucket(origin, from, 1).await
    }

    /// Gives back the token [`Self::charge`] took (a resend the inbox held already).
    pub async fn refund(&self, origin: Origin, from: &UserId) -> Result<(), DbError> {
        self.bucket(origin, from, -1).await.map(drop)
    }

    async fn bucket(&self, origin: Origin, from: &UserId, cost: i32) -> Result<bool, DbError> {
        let (key, rate) = match origin {
            Origin::Client => (keys::store_quota(from), self.user_rate),
            Origin::Api => (keys::api_store_quota(), self.api_rate),
        };
        // Kept until it has surely refilled: a minute's worth, plus a margin.
        let keep_ms = ((rate.capacity / rate.per_sec) * 1000.0) as u64 + 10_000;
        let _timer = self.metrics.redis_op("store_quota");
        let mut c = self.redis.hot().await?;
        let taken: i64 = BUCKET
            .key(key)
            .arg(rate.capacity)
            .arg(rate.per_sec)
            .arg(cost)
            .arg(keep_ms)
            .invoke_async(&mut c)
            .await?;
        Ok(taken == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    #[test]
    fn a_refund_gives_back_one_token_and_never_more_than_the_burst() {
        let q = StoreQuota::new(2, 2);
        let t0 = Instant::now();
        let alice = user("alice");
        assert!(q.charge(Origin::Client, &alice, t0));
        assert!(q.charge(Origin::Client, &alice, t0));
        assert!(!q.charge(Origin::Client, &alice, t0), "spent");
        q.refund(Origin::Client, &alice);
        assert!(q.charge(Origin::Client, &alice, t0), "one came back");
        assert!(!q.charge(Origin::Client, &alice, t0), "only one");
        // Refunds past the burst are capped; a user never charged has nothing to refund.
        let bob = user("bob");
        q.refund(Origin::Client, &bob);
        assert_eq!(q.tracked(), 1, "no bucket made for bob");
        assert!(q.charge(Origin::Api, &alice, t0));
        for _ in 0..5 {
            q.refund(Origin::Api, &alice);
        }
        assert!(q.charge(Origin::Api, &alice, t0));
        assert!(q.charge(Origin::Api, &alice, t0));
        assert!(!q.charge(Origin::Api, &alice, t0), "the burst, not more");
    }

    #[test]
    fn a_minute_worth_then_the_sustained_rate() {
        let q = StoreQuota::new(60, 6000);
        let t0 = Instant::now();
        let alice = user("alice");
        for _ in 0..60 {
            assert!(q.charge(Origin::Client, &alice, t0));
        }
        assert!(!q.charge(Origin::Client, &alice, t0), "the burst is spent");
        assert!(
            q.charge(Origin::Client, &user("bob"), t0),
            "another sender has its own quota"
        );
        assert!(
            q.charge(Origin::Api, &alice, t0),
            "the API pays from its own bucket, whatever `from` says"
        );
        // One a second comes back.
        let later = t0 + Duration::from_millis(2_100);
        assert!(q.charge(Origin::Client, &alice, later));
        assert!(q.charge(Origin::Client, &alice, later));
        assert!(!q.charge(Origin::Client, &alice, later));
    }

    #[test]
    fn the_api_has_one_bucket() {
        let q = StoreQuota::new(1, 3);
        let t0 = Instant::now();
        for from in ["a", "b", "c"] {
            assert!(q.charge(Origin::Api, &user(from), t0));
        }
        assert!(!q.charge(Origin::Api, &user("d"), t0));
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let q = StoreQuota::new(60, 60);
        let t0 = Instant::now();
        for n in 0..MIN_SWEEP {
            q.charge(Origin::Client, &user(&format!("u{n}")), t0);
        }
        assert_eq!(q.tracked(), MIN_SWEEP, "all still spending");
        // A minute later those buckets are full again: once the map doubles, they go.
        let later = t0 + Duration::from_secs(61);
        for n in 0..MIN_SWEEP {
            q.charge(Origin::Client, &user(&format!("v{n}")), later);
        }
        assert_eq!(
            q.tracked(),
            MIN_SWEEP,
            "only the senders of the last minute"
        );
    }
}
