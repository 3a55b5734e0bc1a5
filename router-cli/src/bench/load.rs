//! The messages run: every connection sends direct messages to random bench users (a chosen
//! share of them on other nodes), at a fixed rate or within a window of unacked sends, and
//! checks everything it receives; after sending stops, a bounded drain waits for the last acks
//! and messages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::check::{self, Receipt, Received};
use super::conn::Ws;
use super::report::Recorder;
use super::unix_us;

/// How sends are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// One send per connection every `per_conn` (the total rate spread over all connections).
    Rate { per_conn: Duration },
    /// As fast as the window of unacked sends per connection allows.
    Window,
}

/// Everything a connection needs to know about the run; shared read-only.
pub struct Plan {
    pub run_id: String,
    pub users: usize,
    /// User `i` is connected to node URL `i % nodes`.
    pub nodes: usize,
    /// Share of sends whose recipient is on another node URL than the sender.
    pub cross: f64,
    pub pace: Pace,
    /// Unacked sends per connection at most (also the cap in rate mode).
    pub window: usize,
    pub start: Instant,
    pub stop: Instant,
    /// Samples sent in `[measure_from_us, stop_us)` (unix µs) make the figures; earlier is warmup.
    pub measure_from_us: u64,
    pub stop_us: u64,
    pub drain: Duration,
    pub seed: u64,
}

impl Plan {
    pub fn user(&self, i: usize) -> String {
        format!("bench-{}-{i}", self.run_id)
    }

    /// How many users are on node URL `node`.
    fn on_node(&self, node: usize) -> usize {
        (self.users + self.nodes - 1 - node) / self.nodes
    }

    /// A random recipient for user `i` and whether it is on another node.
    fn pick(&self, i: usize, rng: &mut StdRng) -> (usize, bool) {
        let k = self.nodes;
        let home = i % k;
        let cross = k > 1 && rng.random_bool(self.cross);
        if cross {
            let node = (home + 1 + rng.random_range(0..k - 1)) % k;
            let r = rng.random_range(0..self.on_node(node));
            return (node + k * r, true);
        }
        let count = self.on_node(home);
        if count < 2 {
            return (i, false);
        }
        // Any other user on the same node: skip our own slot.
        let me = i / k;
        let mut r = rng.random_range(0..count - 1);
        if r >= me {
            r += 1;
        }
        (home + k * r, false)
    }
}

/// Run-wide counters, bumped by every connection.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub cross: AtomicU64,
    pub delivered: AtomicU64,
    pub stored: AtomicU64,
    pub rejected: AtomicU64,
    /// Sends the node refused with an `error` frame (no ack will come).
    pub refused: AtomicU64,
    /// Distinct bench messages received.
    pub received: AtomicU64,
    /// Of those, received while the measured window was open (throughput).
    pub received_in_window: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    /// Broken connections, failed writes, unexpected frames.
    pub errors: AtomicU64,
}

/// What the connections share: counters, histograms, and rare details.
pub struct Shared {
    pub counters: Counters,
    pub recorder: Recorder,
    pub rejected_codes: Mutex<BTreeMap<String, u64>>,
    pub error_samples: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.counters.errors.fetch_add(1, Relaxed);
        let mut samples = self.error_samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < 5 {
            samples.push(what);
        }
    }
}

/// The outcome of the send and drain phases.
pub struct LoadResult {
    pub lost: u64,
    pub lost_samples: Vec<String>,
    pub drain_seconds: f64,
    pub settled: bool,
}

/// Runs the plan on the open connections (`conns[i]` is user `i`).
pub async fn run(plan: Arc<Plan>, conns: Vec<Ws>, shared: Arc<Shared>) -> LoadResult {
    let done = CancellationToken::new();
    let mut writers: Vec<JoinHandle<Option<SplitSink<Ws, Message>>>> = Vec::new();
    let mut readers: Vec<JoinHandle<Ledger>> = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let permits = Arc::new(Semaphore::new(plan.window));
        writers.push(tokio::spawn(write_loop(
            i,
            sink,
            Arc::clone(&plan),
            Arc::clone(&permits),
            Arc::clone(&shared),
        )));
        readers.push(tokio::spawn(read_loop(
            i,
            stream,
            Arc::clone(&plan),
            permits,
            Arc::clone(&shared),
            done.clone(),
        )));
    }
    // Keep the write halves until the drain is over: dropping one would disconnect its user.
    let mut sinks = Vec::with_capacity(writers.len());
    for w in writers {
        if let Ok(Some(sink)) = w.await {
            sinks.push(sink);
        }
    }
    let drain_started = Instant::now();
    let settled = drain(&plan, &shared.counters).await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    done.cancel();
    let mut delivered = Vec::with_capacity(readers.len());
    let mut received = Vec::with_capacity(readers.len());
    for r in readers {
        let ledger = r.await.unwrap_or_default();
        delivered.push(ledger.delivered);
        received.push(ledger.received);
    }
    let (lost, lost_samples) = check::lost(&delivered, &received);
    drop(sinks);
    LoadResult {
        lost,
        lost_samples,
        drain_seconds,
        settled,
    }
}

/// Waits until every send is answered and every delivered message arrived, or the drain period
/// ends. True when everything settled.
async fn drain(plan: &Plan, c: &Counters) -> bool {
    let deadline = Instant::now() + plan.drain;
    loop {
        let answered = c.delivered.load(Relaxed)
            + c.stored.load(Relaxed)
            + c.rejected.load(Relaxed)
            + c.refused.load(Relaxed);
        let expected = c.delivered.load(Relaxed) + c.stored.load(Relaxed);
        if answered >= c.sent.load(Relaxed) && c.received.load(Relaxed) >= expected {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends until the plan's stop; returns the write half (to keep the connection open), or `None`
/// when the connection broke.
async fn write_loop(
    i: usize,
    mut sink: SplitSink<Ws, Message>,
    plan: Arc<Plan>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
) -> Option<SplitSink<Ws, Message>> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut n: u32 = 0;
    // A write may wait on a node that stopped reading; give up when the drain would end.
    let write_deadline = plan.stop + plan.drain;
    let mut ticker = match plan.pace {
        Pace::Rate { per_conn } => {
            // Stagger the connections over one period so that they do not tick together.
            let offset = per_conn.mul_f64(i as f64 / plan.users as f64);
            let mut t = tokio::time::interval_at(plan.start + offset, per_conn);
            t.set_missed_tick_behavior(MissedTickBehavior::Skip);
            Some(t)
        }
        Pace::Window => None,
    };
    tokio::time::sleep_until(plan.start).await;
    loop {
        if let Some(t) = ticker.as_mut()
            && tokio::time::timeout_at(plan.stop, t.tick()).await.is_err()
        {
            break;
        }
        let Ok(Ok(permit)) = tokio::time::timeout_at(plan.stop, permits.acquire()).await else {
            break;
        };
        permit.forget();
        // In window mode, send every free slot in one write.
        let mut batch = 1;
        if ticker.is_none() {
            let more = permits.available_permits();
            if more > 0
                && let Ok(p) = permits.try_acquire_many(more as u32)
            {
                p.forget();
                batch += more;
            }
        }
        for _ in 0..batch {
            n += 1;
            let (to, cross) = plan.pick(i, &mut rng);
            let t = unix_us();
            let frame = format!(
                r#"{{"type":"send","to":"{}","ref":"{n}:{to}:{t}","body":{{"s":{i},"n":{n},"t":{t}}}}}"#,
                plan.user(to)
            );
            if let Err(e) = sink.feed(Message::text(frame)).await {
                shared.error(format!("user {i}: write failed: {e}"));
                return None;
            }
            shared.counters.sent.fetch_add(1, Relaxed);
            if cross {
                shared.counters.cross.fetch_add(1, Relaxed);
            }
        }
        match tokio::time::timeout_at(write_deadline, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.error(format!("user {i}: write failed: {e}"));
                return None;
            }
            Err(_) => {
                shared.error(format!(
                    "user {i}: a write did not finish before the drain ended"
                ));
                return None;
            }
        }
        if Instant::now() >= plan.stop {
            break;
        }
    }
    Some(sink)
}

/// What one connection learned, for the final loss check.
#[derive(Default)]
struct Ledger {
    /// `(recipient, n)` of each of our sends acked `delivered`.
    delivered: Vec<(u32, u32)>,
    received: Received,
}

/// A server frame, as much of it as the bench reads.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "ref", default, borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<AckError<'a>>,
    /// On `error` frames.
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AckError<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

/// The body every bench message carries.
#[derive(Deserialize)]
struct Body {
    /// Sender index.
    s: u32,
    /// Sender's sequence number, from 1.
    n: u32,
    /// Send time, unix µs.
    t: u64,
}

/// `ref` = `n:recipient:send_time_us`, so an ack needs no lookup on the sending side.
fn parse_ref(r: &str) -> Option<(u32, u32, u64)> {
    let mut parts = r.split(':');
    let n = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((n, to, t))
}

async fn read_loop(
    i: usize,
    mut stream: SplitStream<Ws>,
    plan: Arc<Plan>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    done: CancellationToken,
) -> Ledger {
    let mut ledger = Ledger::default();
    let c = &shared.counters;
    loop {
        let msg = tokio::select! {
            biased;
            _ = done.cancelled() => break,
            msg = stream.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(why))) => {
                shared.error(format!("user {i}: the node closed the connection: {why:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                shared.error(format!("user {i}: connection failed: {e}"));
                break;
            }
            None => {
                shared.error(format!("user {i}: connection closed"));
                break;
            }
        };
        let now = unix_us();
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
            shared.error(format!("user {i}: unreadable frame {text}"));
            continue;
        };
        match frame.kind.as_ref() {
            "message" => {
                let Some(body) = frame
                    .body
                    .and_then(|b| serde_json::from_str::<Body>(b.get()).ok())
                else {
                    shared.error(format!("user {i}: a message without a bench body: {text}"));
                    continue;
                };
                match ledger.received.record(body.s, body.n) {
                    Receipt::Duplicate => {
                        c.duplicates.fetch_add(1, Relaxed);
                        continue;
                    }
                    Receipt::Late => {
                        c.out_of_order.fetch_add(1, Relaxed);
                    }
                    Receipt::New => {}
                }
                c.received.fetch_add(1, Relaxed);
                if (plan.measure_from_us..plan.stop_us).contains(&now) {
                    c.received_in_window.fetch_add(1, Relaxed);
                }
                if (plan.measure_from_us..plan.stop_us).contains(&body.t) {
                    shared.recorder.end_to_end(i, now.saturating_sub(body.t));
                }
            }
            "ack" => {
                let Some((n, to, t)) = frame.reference.as_deref().and_then(parse_ref) else {
                    shared.error(format!("user {i}: an ack for no send of ours: {text}"));
                    continue;
                };
                permits.add_permits(1);
                if (plan.measure_from_us..plan.stop_us).contains(&t) {
                    shared.recorder.ack(i, now.saturating_sub(t));
                }
                match frame.status.as_deref() {
                    Some("delivered") => {
                        c.delivered.fetch_add(1, Relaxed);
                        ledger.delivered.push((to, n));
                    }
                    Some("stored") => {
                        c.stored.fetch_add(1, Relaxed);
                    }
                    _ => {
                        c.rejected.fetch_add(1, Relaxed);
                        let code = frame
                            .error
                            .map(|e| e.code.into_owned())
                            .unwrap_or_else(|| "unknown".into());
                        *shared
                            .rejected_codes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(code)
                            .or_default() += 1;
                    }
                }
            }
            "error" => {
                if frame.reference.as_deref().and_then(parse_ref).is_some() {
                    permits.add_permits(1);
                    c.refused.fetch_add(1, Relaxed);
                }
                let code = frame.code.as_deref().unwrap_or("?");
                shared.error(format!(
                    "user {i}: the node refused a frame ({code}): {text}"
                ));
            }
            "reconnect" => {
                shared.error(format!("user {i}: the node asked to reconnect: {text}"));
            }
            _ => {}
        }
    }
    ledger
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(users: usize, nodes: usize, cross: f64) -> Plan {
        let now = Instant::now();
        Plan {
            run_id: "t".into(),
            users,
            nodes,
            cross,
            pace: Pace::Window,
            window: 1,
            start: now,
            stop: now,
            measure_from_us: 0,
            stop_us: 0,
            drain: Duration::ZERO,
            seed: 1,
        }
    }

    #[test]
    fn recipients_cross_nodes_in_the_chosen_share() {
        let p = plan(10, 3, 0.7);
        let mut rng = StdRng::seed_from_u64(7);
        let mut crossed = 0;
        for k in 0..30_000 {
            let i = k % p.users;
            let (to, cross) = p.pick(i, &mut rng);
            assert!(to < p.users);
            assert_eq!(cross, to % 3 != i % 3, "{i} -> {to}");
            assert_ne!(
                to, i,
                "a user never writes to itself when others share its node"
            );
            crossed += usize::from(cross);
        }
        let share = crossed as f64 / 30_000.0;
        assert!((share - 0.7).abs() < 0.02, "{share}");
    }

    #[test]
    fn one_node_never_crosses() {
        let p = plan(5, 1, 0.0);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let (to, cross) = p.pick(2, &mut rng);
            assert!(!cross && to != 2 && to < 5);
        }
    }

    #[test]
    fn refs_round_trip() {
        assert_eq!(parse_ref("12:3:456"), Some((12, 3, 456)));
        assert_eq!(parse_ref("x"), None);
    }
}
