//! The loop that POSTs webhook events: reads new entries through the shared consumer group,
//! claims pending ones whose back-off has passed (this node's and, past [`VISIBILITY`], any
//! other node's), POSTs each signed with at most `--webhook-concurrency` in flight, settles what
//! was answered 2xx and buries what failed its last attempt. Runs on every node that has
//! `--webhook-url`; the group shares the work among them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use wsroute_core::db::Redis;
use wsroute_core::webhooks::{Entry, field};

use super::queue::{Pending, Queue};
use super::sign::signature;
use crate::envelope::now_ms;
use crate::metrics::Metrics;

/// An answer must come within this, or the attempt failed (docs/protocol.md, webhooks).
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an entry another node holds must sit idle before this node takes it over: longer
/// than any attempt lasts (the POST timeout, the Redis calls around it), so that an attempt in
/// flight on a live node is never taken from it; a node that died leaves its entries to the
/// others after this.
pub const VISIBILITY: Duration = Duration::from_secs(10);

/// Pending entries looked at per scan for due retries (the scan goes on where it stopped).
const SCAN: usize = 200;

/// How often the lag gauges are read from Redis.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Settings of the loop (from `config::Webhooks`).
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub secret: String,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub max_events: u64,
    pub concurrency: usize,
}

/// One node's deliverer.
pub struct Deliverer {
    queue: Queue,
    http: reqwest::Client,
    settings: Settings,
    /// One permit per POST in flight.
    permits: Arc<Semaphore>,
    /// Entries this node is attempting now: never claimed again by it meanwhile.
    in_flight: Mutex<HashSet<String>>,
    metrics: Metrics,
}

impl Deliverer {
    pub fn new(
        redis: Redis,
        consumer: &str,
        settings: Settings,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(POST_TIMEOUT)
            // A redirect is not a 2xx: the event is retried, never sent on to another place.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(settings.concurrency)
            .user_agent(concat!("wsroute/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            queue: Queue::new(redis, consumer, settings.max_events),
            http,
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            settings,
            in_flight: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// How long after its last delivery an entry delivered `deliveries` times is due again:
    /// the back-off doubled per attempt made, capped, then jittered to between half and all of
    /// it. The jitter is drawn from the entry id and the attempt, so every node computes the
    /// same wait for it (and events that failed together spread out).
    pub fn wait_after(&self, entry: &str, deliveries: u64) -> Duration {
        let doublings = deliveries.saturating_sub(1).min(32) as u32;
        let full = self
            .settings
            .backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.settings.backoff_max);
        let fraction = 0.5 + 0.5 * unit_hash(entry, deliveries);
        full.mul_f64(fraction)
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, tracker: TaskTracker, shutdown: CancellationToken) {
        let tick =
            (self.settings.backoff / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        while let Err(e) = self.queue.ensure_group().await {
            tracing::warn!(error = %e, "cannot make the webhook consumer group yet; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!(
            consumer = self.queue.consumer(),
            "delivering webhook events"
        );
        let mut cursor = "-".to_owned();
        let mut lag_read = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if let Err(e) = self.retry_due(&mut cursor, &tracker, &shutdown).await {
                tracing::warn!(error = %e, "cannot look for webhook events due again");
            }
            if lag_read.elapsed() >= LAG_EVERY {
                lag_read = tokio::time::Instant::now();
                self.read_lag().await;
            }
            let mut permits = Vec::new();
            while let Ok(p) = self.permits.clone().try_acquire_owned() {
                permits.push(p);
            }
            if permits.is_empty() {
                // Every POST slot is taken: wait for one to free up.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(tick) => {}
                    p = self.permits.clone().acquire_owned() => drop(p),
                }
                continue;
            }
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.queue.read_new(permits.len(), tick) => r,
            };
            match read {
                Ok(entries) => {
                    for entry in entries {
                        let Some(permit) = permits.pop() else { break };
                        self.start(entry, 1, permit, &tracker, &shutdown);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read webhook events; retrying");
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(tick) => {}
                    }
                }
            }
        }
    }

    /// Claims pending entries whose wait is over (one scan of up to [`SCAN`], from `cursor`)
    /// and starts their next attempt, as long as POST slots are free.
    async fn retry_due(
        self: &Arc<Self>,
        cursor: &mut String,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<(), wsroute_core::db::DbError> {
        let soonest = self.settings.backoff / 2;
        let rows = self.queue.pending(soonest, cursor, SCAN).await?;
        *cursor = match rows.last() {
            Some(last) if rows.len() == SCAN => format!("({}", last.entry),
            _ => "-".to_owned(),
        };
        for p in rows {
            if self.is_in_flight(&p.entry) {
                continue;
            }
            let due = self.due(&p);
            if p.idle < due {
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                // No POST slot free: the scan goes on from here next time.
                *cursor = "-".to_owned();
                break;
            };
            let Some(entry) = self.queue.claim(&p.entry, due).await? else {
                continue;
            };
            if p.deliveries >= u64::from(self.settings.max_attempts) {
                // Its last attempt was made, but the node making it stopped before recording
                // the outcome.
                self.give_up(
                    &entry,
                    p.deliveries,
                    "attempts exhausted (the node making the last attempt stopped before recording its outcome)",
                )
                .await;
                continue;
            }
            self.start(entry, p.deliveries + 1, permit, tracker, shutdown);
        }
        Ok(())
    }

    /// How long `p` must be idle before this node may claim it.
    fn due(&self, p: &Pending) -> Duration {
        let wait = self.wait_after(&p.entry, p.deliveries);
        if p.consumer == self.queue.consumer() {
            wait
        } else {
            // Another node holds it: it may be attempting it right now.
            wait.max(VISIBILITY)
        }
    }

    fn is_in_flight(&self, entry: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(entry)
    }

    /// Starts attempt `attempt` of `entry` in the background, holding `permit` until done.
    fn start(
        self: &Arc<Self>,
        entry: Entry,
        attempt: u64,
        permit: OwnedSemaphorePermit,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry.entry.clone());
        let this = self.clone();
        let shutdown = shutdown.clone();
        let span = tracing::debug_span!("webhook", event_id = %entry.event_id(), attempt);
        tracker.spawn(
            async move {
                tokio::select! {
                    // Left pending: another node (or this one, started again) takes it up.
                    _ = shutdown.cancelled() => {}
                    _ = this.attempt(&entry, attempt) => {}
                }
                this.in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&entry.entry);
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// One attempt: POST, then settle (2xx), bury (last attempt failed) or leave pending.
    async fn attempt(&self, entry: &Entry, attempt: u64) {
        if attempt > 1 {
            self.metrics.webhook_retried.inc();
        }
        let Some(body) = entry.get(field::BODY) else {
            self.give_up(entry, attempt, "the stream entry has no body")
                .await;
            return;
        };
        match self.post(entry.event_id(), body).await {
            Ok(()) => {
                self.metrics.webhook_sent.inc();
                if let Err(e) = self.queue.settle(&entry.entry).await {
                    // It stays pending and is POSTed again later, with the same event id.
                    tracing::warn!(error = %e, "webhook event delivered but not recorded as such; it will be sent again");
                }
            }
            Err(why) => {
                self.metrics.webhook_failed.inc();
                if attempt >= u64::from(self.settings.max_attempts) {
                    self.give_up(entry, attempt, &why).await;
                } else {
                    tracing::debug!(error = %why, "webhook attempt failed; will retry");
                }
            }
        }
    }

    /// POSTs `body`; `Err` says why it did not settle.
    async fn post(&self, event_id: &str, body: &str) -> Result<(), String> {
        let sent = self
            .http
            .post(&self.settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-wsroute-event-id", event_id)
            .header(
                "x-wsroute-signature",
                signature(&self.settings.secret, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err(format!("no answer within {POST_TIMEOUT:?}")),
            Err(e) if e.is_connect() => Err(format!("cannot connect: {}", root_cause(&e))),
            Err(e) => Err(format!("request failed: {}", root_cause(&e))),
        }
    }

    /// Moves `entry` to the dead stream with `why`.
    async fn give_up(&self, entry: &Entry, attempts: u64, why: &str) {
        match self.queue.bury(entry, attempts, why, now_ms()).await {
            Ok(Some(dropped)) => {
                tracing::warn!(event_id = %entry.event_id(), attempts, error = %why, "webhook event is dead (router-cli webhooks dead lists it)");
                self.metrics.webhook_dead.inc();
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "dead webhook events stream full: dropped its oldest (--webhook-max-events)"
                    );
                    self.metrics
                        .webhook_dropped
                        .with_label_values(&["dead_trimmed"])
                        .inc_by(dropped);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(event_id = %entry.event_id(), error = %e, "cannot move a dead webhook event; it stays pending and is looked at again")
            }
        }
    }

    async fn read_lag(&self) {
        match self.queue.lag(now_ms()).await {
            Ok(lag) => {
                let m = &self.metrics;
                m.webhook_waiting.set(lag.waiting as i64);
                m.webhook_pending.set(lag.pending as i64);
                m.webhook_oldest_age.set(lag.oldest.as_secs_f64());
                m.webhook_dead_kept.set(lag.dead as i64);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the webhook lag"),
        }
    }
}

/// The innermost cause of a request error (reqwest's own message names only the URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A number in [0, 1) drawn from `entry` and `n` (FNV-1a): the same on every node.
fn unit_hash(entry: &str, n: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in entry.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliverer(backoff_ms: u64, max_ms: u64) -> Deliverer {
        let redis = Redis::open("redis://127.0.0.1:1", Duration::from_millis(10), 0).expect("url");
        Deliverer::new(
            redis,
            "n1",
            Settings {
                url: "http://127.0.0.1:1/".into(),
                secret: "s".into(),
                max_attempts: 10,
                backoff: Duration::from_millis(backoff_ms),
                backoff_max: Duration::from_millis(max_ms),
                max_events: 100,
                concurrency: 4,
            },
            Metrics::new(),
        )
        .expect("client")
    }

    #[test]
    fn back_off_doubles_within_its_jitter_and_is_capped() {
        let d = deliverer(1000, 10_000);
        for n in 1..=6u64 {
            let full = Duration::from_millis((1000u64 << (n - 1)).min(10_000));
            let w = d.wait_after("1-0", n);
            assert!(w >= full / 2 && w <= full, "attempt {n}: {w:?} vs {full:?}");
            // The same on every node.
            assert_eq!(w, d.wait_after("1-0", n));
        }
        assert!(d.wait_after("1-0", 60) <= Duration::from_secs(10));
        let spread: HashSet<Duration> = (0..20)
            .map(|i| d.wait_after(&format!("{i}-0"), 3))
            .collect();
        assert!(spread.len() > 10, "jitter spreads events: {spread:?}");
    }
}
