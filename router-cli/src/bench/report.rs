//! The figures of a run: latency histograms (sharded so that connections rarely wait on each
//! other), and the summary printed for people or as one JSON object, with what went wrong.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Histogram shards; connection `i` records into shard `i % SHARDS`.
const SHARDS: usize = 16;
/// Largest latency recorded (µs); slower samples count as this.
const MAX_US: u64 = 60_000_000;

struct Pair {
    end_to_end: Histogram<u64>,
    ack: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("1..60s at 3 significant digits is valid")
}

/// Latency samples in microseconds, from every connection.
pub struct Recorder {
    shards: Vec<Mutex<Pair>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Pair {
                        end_to_end: histogram(),
                        ack: histogram(),
                    })
                })
                .collect(),
        }
    }
}

impl Recorder {
    fn shard(&self, conn: usize) -> std::sync::MutexGuard<'_, Pair> {
        self.shards[conn % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Send to `message` frame at the recipient.
    pub fn end_to_end(&self, conn: usize, us: u64) {
        self.shard(conn).end_to_end.saturating_record(us.max(1));
    }

    /// Send to `ack` at the sender.
    pub fn ack(&self, conn: usize, us: u64) {
        self.shard(conn).ack.saturating_record(us.max(1));
    }

    /// (end-to-end, ack) over every shard.
    pub fn merged(&self) -> (Quantiles, Quantiles) {
        let (mut e2e, mut ack) = (histogram(), histogram());
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides: adding cannot fail.
            let _ = e2e.add(&s.end_to_end);
            let _ = ack.add(&s.ack);
        }
        (Quantiles::of(&e2e), Quantiles::of(&ack))
    }
}

/// A latency distribution's summary, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50": self.p50,
            "p99": self.p99,
            "p99_9": self.p999,
            "max": self.max,
            "mean": (self.mean * 10.0).round() / 10.0,
        })
    }

    fn human(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count
        )
    }
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// How opening the connections went.
#[derive(Debug, Clone)]
pub struct ConnectFigures {
    pub opened: usize,
    pub failed: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub error_samples: Vec<String>,
}

impl ConnectFigures {
    /// The figures of one round of opening connections.
    pub fn of(opened: &super::conn::Opened) -> Self {
        Self {
            opened: opened.opened(),
            failed: opened.failed,
            seconds: opened.elapsed.as_secs_f64(),
            per_second: opened.per_second(),
            error_samples: opened.error_samples.clone(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "opened": self.opened,
            "failed": self.failed,
            "seconds": round3(self.seconds),
            "per_second": self.per_second.round(),
            "error_samples": self.error_samples,
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Everything `bench messages` measured.
pub struct MessagesReport {
    pub run_id: String,
    pub urls: Vec<String>,
    pub users: usize,
    pub cross_share: f64,
    pub rate: Option<u64>,
    pub window: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub settled: bool,
    pub fd_limit: u64,
    pub connect: ConnectFigures,
    pub sent: u64,
    pub sent_cross: u64,
    pub delivered: u64,
    pub stored: u64,
    pub rejected: u64,
    pub rejected_codes: BTreeMap<String, u64>,
    pub refused: u64,
    pub received: u64,
    pub received_in_window: u64,
    pub lost: u64,
    pub lost_samples: Vec<String>,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub end_to_end: Quantiles,
    pub ack: Quantiles,
}

impl MessagesReport {
    /// Sends that never learned their fate.
    pub fn unacked(&self) -> u64 {
        self.sent
            .saturating_sub(self.delivered + self.stored + self.rejected + self.refused)
    }

    /// Delivered messages per second while the measured window was open.
    pub fn throughput(&self) -> f64 {
        self.received_in_window as f64 / self.duration_s.max(1e-9)
    }

    /// Why the run failed; empty when it did not.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                p.push(format!("{n} {what}"));
            }
        };
        say(self.connect.failed as u64, "connections failed to open");
        say(self.lost, "messages lost (acked delivered, never received)");
        say(self.duplicates, "messages received twice");
        say(self.out_of_order, "messages out of order");
        say(self.rejected, "sends rejected");
        say(self.refused, "sends refused with an error frame");
        say(self.unacked(), "sends never acked");
        say(self.errors, "connection errors");
        p
    }

    pub fn json(&self) -> Value {
        let problems = self.problems();
        json!({
            "mode": "messages",
            "ok": problems.is_empty(),
            "problems": problems,
            "run_id": self.run_id,
            "urls": self.urls,
            "users": self.users,
            "cross_share": self.cross_share,
            "rate": self.rate,
            "window": self.window,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "drain_s": round3(self.drain_s),
            "settled": self.settled,
            "fd_limit": self.fd_limit,
            "connect": self.connect.json(),
            "sent": self.sent,
            "sent_cross": self.sent_cross,
            "acked_delivered": self.delivered,
            "acked_stored": self.stored,
            "acked_rejected": self.rejected,
            "rejected_codes": self.rejected_codes,
            "refused": self.refused,
            "unacked": self.unacked(),
            "received": self.received,
            "lost": self.lost,
            "lost_samples": self.lost_samples,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "throughput_per_s": self.throughput().round(),
            "latency_us": {
                "end_to_end": self.end_to_end.json(),
                "ack": self.ack.json(),
            },
        })
    }

    pub fn print(&self) {
        let pace = match self.rate {
            Some(r) => format!(
                "{r} msg/s in total (at most {} unacked per connection)",
                self.window
            ),
            None => format!("as fast as possible, window {} per connection", self.window),
        };
        println!("bench messages (run {})", self.run_id);
        println!("  nodes        {}", self.urls.join(" "));
        println!(
            "  users        {} ({} opened in {:.2}s, {:.0}/s; fd limit {})",
            self.users,
            self.connect.opened,
            self.connect.seconds,
            self.connect.per_second,
            self.fd_limit
        );
        println!("  pace         {pace}");
        println!(
            "  time         {}s warmup + {}s measured, drain {:.2}s{}",
            self.warmup_s,
            self.duration_s,
            self.drain_s,
            if self.settled {
                ""
            } else {
                " (did not settle)"
            }
        );
        let cross = if self.sent > 0 {
            100.0 * self.sent_cross as f64 / self.sent as f64
        } else {
            0.0
        };
        println!("  sent         {} ({cross:.1}% to another node)", self.sent);
        println!(
            "  acked        {} delivered, {} stored, {} rejected{}, {} unacked",
            self.delivered,
            self.stored,
            self.rejected,
            if self.rejected_codes.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.rejected_codes)
            },
            self.unacked()
        );
        println!(
            "  received     {} (lost {}, duplicated {}, out of order {})",
            self.received, self.lost, self.duplicates, self.out_of_order
        );
        println!("  throughput   {:.0} delivered msg/s", self.throughput());
        println!("  end-to-end   {}", self.end_to_end.human());
        println!("  ack          {}", self.ack.human());
        print_verdict(&self.problems(), &[&self.lost_samples, &self.error_samples]);
    }
}

/// Everything `bench connections` measured.
pub struct ConnectionsReport {
    pub url: String,
    pub requested: usize,
    pub fd_limit: u64,
    pub connect: ConnectFigures,
    pub hold_s: f64,
    /// Connections the node closed while they were held.
    pub dropped: u64,
    pub pid: Option<u32>,
    pub rss_before: Option<u64>,
    pub rss_holding: Option<u64>,
    /// CPU seconds the node used while the connections opened (all its threads).
    pub cpu_connecting: Option<f64>,
}

impl ConnectionsReport {
    /// Resident memory the node grew by, per open connection.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (before, after) = (self.rss_before?, self.rss_holding?);
        (self.connect.opened > 0)
            .then(|| (after as f64 - before as f64) / self.connect.opened as f64)
    }

    /// The node's CPU time per opened connection, in microseconds: what a connect costs the
    /// node whatever else shares the machine (the load generator, Redis).
    pub fn cpu_per_connect_us(&self) -> Option<f64> {
        let cpu = self.cpu_connecting?;
        (self.connect.opened > 0).then(|| cpu * 1e6 / self.connect.opened as f64)
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.connect.failed > 0 {
            p.push(format!(
                "{} connections failed to open",
                self.connect.failed
            ));
        }
        if self.dropped > 0 {
            p.push(format!("{} connections closed while held", self.dropped));
        }
        p
    }

    pub fn json(&self) -> Value {
        let problems = self.problems();
        json!({
            "mode": "connections",
            "ok": problems.is_empty(),
            "problems": problems,
            "url": self.url,
            "requested": self.requested,
            "connections": self.connect.opened,
            "fd_limit": self.fd_limit,
            "connect": self.connect.json(),
            "hold_s": self.hold_s,
            "dropped": self.dropped,
            "pid": self.pid,
            "rss_before_bytes": self.rss_before,
            "rss_holding_bytes": self.rss_holding,
            "rss_per_connection_bytes": self.bytes_per_connection().map(f64::round),
            "node_cpu_s_connecting": self.cpu_connecting,
            "node_cpu_us_per_connect": self.cpu_per_connect_us().map(f64::round),
        })
    }

    pub fn print(&self) {
        println!("bench connections");
        println!("  node         {}", self.url);
        println!(
            "  connections  {} of {} opened in {:.2}s: {:.0}/s (fd limit {})",
            self.connect.opened,
            self.requested,
            self.connect.seconds,
            self.connect.per_second,
            self.fd_limit
        );
        println!("  held         {}s, {} dropped", self.hold_s, self.dropped);
        match (self.pid, self.rss_before, self.rss_holding) {
            (Some(pid), Some(b), Some(a)) => {
                println!(
                    "  node memory  pid {pid}: {} -> {} resident",
                    mib(b),
                    mib(a)
                );
                if let Some(per) = self.bytes_per_connection() {
                    println!("  per conn     {per:.0} bytes ({:.2} KiB)", per / 1024.0);
                }
            }
            (Some(pid), _, _) => println!("  node memory  cannot read /proc/{pid}/status"),
            (None, _, _) => println!("  node memory  not measured (give --pid PID)"),
        }
        if let (Some(cpu), Some(per)) = (self.cpu_connecting, self.cpu_per_connect_us()) {
            println!(
                "  node CPU     {cpu:.2}s while connecting: {per:.0} us per connect ({:.0} connects per CPU second)",
                1e6 / per
            );
        }
        print_verdict(&self.problems(), &[&self.connect.error_samples]);
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_verdict(problems: &[String], samples: &[&Vec<String>]) {
    if problems.is_empty() {
        println!("  result       OK");
        return;
    }
    println!("  result       FAILED: {}", problems.join("; "));
    for s in samples.iter().flat_map(|s| s.iter()) {
        println!("    e.g. {s}");
    }
}
