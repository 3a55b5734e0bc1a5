//! The messages run: the plan every bench user follows (who writes to whom, how fast, when to
//! stop), the run-wide counters, and the orchestration: start every user, wait for the bounded
//! drain after sending stops, then check which delivered messages never arrived.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check;
use super::conn::Ws;
use super::report::Recorder;
use super::user;

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
    pub fn user_name(&self, i: usize) -> String {
        format!("bench-{}-{i}", self.run_id)
    }

    /// How many users are on node URL `node`.
    fn on_node(&self, node: usize) -> usize {
        (self.users + self.nodes - 1 - node) / self.nodes
    }

    /// A random recipient for user `i` and whether it is on another node.
    pub fn pick(&self, i: usize, rng: &mut StdRng) -> (usize, bool) {
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
    pub fn error(&self, what: String) {
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
    let users: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            tokio::spawn(user::run(
                i,
                ws,
                Arc::clone(&plan),
                Arc::clone(&shared),
                done.clone(),
            ))
        })
        .collect();
    tokio::time::sleep_until(plan.stop).await;
    let drain_started = Instant::now();
    let settled = drain(&plan, &shared.counters).await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    done.cancel();
    let mut delivered = Vec::with_capacity(users.len());
    let mut received = Vec::with_capacity(users.len());
    for u in users {
        let ledger = u.await.unwrap_or_default();
        delivered.push(ledger.delivered);
        received.push(ledger.received);
    }
    let (lost, lost_samples) = check::lost(&delivered, &received);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
}
