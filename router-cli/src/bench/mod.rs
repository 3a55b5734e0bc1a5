//! `bench`: the load generator. `bench messages` measures direct messages between many users
//! (latency, throughput, loss, duplicates, order); `bench connections` measures idle-connection
//! capacity (connect rate, the node's memory per connection). Loopback targets only; every loop
//! is bounded in count and time. Exit 0 ok, 1 a failed run, 2 bad usage.

mod capacity;
mod check;
mod conn;
mod load;
mod report;
mod target;
mod user;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand};
use rand::Rng;
use tokio::time::Instant;

use conn::{Dialer, Job};
use load::{Counters, Pace, Plan, Shared};
use report::{ConnectFigures, MessagesReport, Recorder};
use target::{Auth, Target};

/// Upper bounds that keep every run finite.
const MAX_USERS: usize = 2_000_000;
const MAX_TIME: Duration = Duration::from_secs(3600);
const MAX_WINDOW: usize = 10_000;
/// Finest pacing a per-connection timer can keep.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Bytes a bench connection reads at most per `read` (tungstenite zero-fills this much of its
/// buffer before every read, so a large one costs the load generator a `memset` per frame on
/// the cores the measured nodes share: 16 KiB was 3% of its CPU). Larger frames still arrive
/// whole: the codec grows its buffer to a frame's length.
const READ_BUFFER: usize = 4 * 1024;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Direct messages between bench users: latency, throughput, loss, duplicates, order
    Messages(MessagesArgs),
    /// Idle connections held open: connect rate and the node's memory per connection
    Connections(ConnectionsArgs),
}

/// How connections are opened and authenticated (both modes).
#[derive(Args)]
struct DialArgs {
    /// Mint HS256 tokens with this secret instead of dev auth (`?user=`)
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Loopback source addresses to spread sockets over (127.0.0.2, 127.0.0.3, ...); 0 lets the
    /// kernel choose (one address: about 28k sockets at most)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(0..=250))]
    sources: u8,
    /// Connections being opened at once
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
}

#[derive(Args)]
struct MessagesArgs {
    /// A node's WebSocket URL (repeat for several nodes; users are spread round-robin)
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Users, one connection each
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Total messages per second over all users (default: as fast as the window allows)
    #[arg(long)]
    rate: Option<u64>,
    /// Unacked sends per connection at most (default 16; with --rate, 256)
    #[arg(long)]
    window: Option<usize>,
    /// Measured sending time (e.g. 10s, 500ms, 2m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Sending time before the measurement starts (checked, not measured)
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long to wait for the last acks and messages after sending stops
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Share of messages whose recipient is on another node URL (default 0.67 with several URLs)
    #[arg(long)]
    cross: Option<f64>,
    /// Seed for the choice of recipients (default: random)
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    dial: DialArgs,
}

#[derive(Args)]
struct ConnectionsArgs {
    /// The node's WebSocket URL
    #[arg(long)]
    url: String,
    /// Idle connections to open
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// How long to hold them open
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// The node's process id, to read its resident memory from /proc/PID/status
    #[arg(long)]
    pid: Option<u32>,
    #[command(flatten)]
    dial: DialArgs,
}

pub async fn run(args: BenchArgs, json: bool) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Messages(a) => messages(a, json).await,
        BenchCommand::Connections(a) => connections(a, json).await,
    }
}

fn usage(why: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("router-cli: bench: {why}");
    Ok(ExitCode::from(2))
}

fn verdict(problems: &[String]) -> ExitCode {
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("router-cli: bench failed: {}", problems.join("; "));
        ExitCode::from(1)
    }
}

fn auth(dial: &DialArgs, lasts: Duration) -> Auth {
    match &dial.jwt_secret {
        None => Auth::Dev,
        Some(secret) => Auth::Jwt {
            secret: secret.clone(),
            valid_for_secs: lasts.as_secs() + 3600,
        },
    }
}

fn run_id() -> String {
    format!("{:06x}", rand::rng().random_range(0..0x100_0000u32))
}

async fn messages(a: MessagesArgs, json: bool) -> anyhow::Result<ExitCode> {
    let targets: Vec<Target> = match a.urls.iter().map(|u| Target::parse(u)).collect() {
        Ok(t) => t,
        Err(why) => return usage(why),
    };
    let nodes = targets.len();
    let cross = a.cross.unwrap_or(if nodes > 1 { 0.67 } else { 0.0 });
    if !(0.0..=1.0).contains(&cross) {
        return usage(format!("--cross {cross} must be between 0 and 1"));
    }
    if nodes == 1 && cross > 0.0 {
        return usage("--cross needs at least two --url (one per node)");
    }
    if a.users < 2 || a.users < nodes || a.users > MAX_USERS {
        return usage(format!(
            "--users must be at least 2, at least one per --url, and at most {MAX_USERS}"
        ));
    }
    if a.duration.is_zero() || a.duration + a.warmup + a.drain > MAX_TIME {
        return usage(format!(
            "--duration must be positive and warmup + duration + drain at most {MAX_TIME:?}"
        ));
    }
    let (pace, window) = match a.rate {
        Some(0) => return usage("--rate must be positive"),
        Some(rate) => {
            let per_conn = Duration::from_secs_f64(a.users as f64 / rate as f64);
            if per_conn < MIN_PERIOD {
                return usage(format!(
                    "--rate {rate} over {} users is more than 1000 sends/s per connection; use more users or --window",
                    a.users
                ));
            }
            (Pace::Rate { per_conn }, a.window.unwrap_or(256))
        }
        None => (Pace::Window, a.window.unwrap_or(16)),
    };
    if window == 0 || window > MAX_WINDOW {
        return usage(format!("--window must be 1..={MAX_WINDOW}"));
    }

    let fd_limit = raise_fd_limit(a.users as u64 + 512);
    let run_id = run_id();
    let auth = auth(&a.dial, a.warmup + a.duration + a.drain);
    let user = |i: usize| format!("bench-{run_id}-{i}");
    let jobs: Arc<[Job]> = (0..a.users)
        .map(|i| {
            let t = &targets[i % nodes];
            Job {
                addr: t.addr,
                url: t.with_query(&auth.query(&user(i))),
            }
        })
        .collect();
    let dialer = Arc::new(Dialer::new(
        a.dial.sources,
        READ_BUFFER,
        Duration::from_secs(10),
    ));
    let opened = conn::open_all(dialer, jobs, a.dial.concurrency as usize, true).await;
    let connect = ConnectFigures::of(&opened);
    if opened.failed > 0 {
        eprintln!(
            "router-cli: bench: {} of {} connections failed to open, not sending:",
            opened.failed, a.users
        );
        for e in &opened.error_samples {
            eprintln!("  {e}");
        }
        return Ok(ExitCode::from(1));
    }
    let conns = opened.conns.into_iter().flatten().collect();

    // Every connection starts together, shortly after this.
    let lead = Duration::from_millis(100);
    let start = Instant::now() + lead;
    let start_us = unix_us() + lead.as_micros() as u64;
    let measure_from_us = start_us + a.warmup.as_micros() as u64;
    let plan = Arc::new(Plan {
        run_id: run_id.clone(),
        users: a.users,
        nodes,
        cross,
        pace,
        window,
        start,
        stop: start + a.warmup + a.duration,
        measure_from_us,
        stop_us: measure_from_us + a.duration.as_micros() as u64,
        drain: a.drain,
        seed: a.seed.unwrap_or_else(|| rand::rng().random()),
    });
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        recorder: Recorder::default(),
        rejected_codes: Mutex::new(BTreeMap::new()),
        error_samples: Mutex::new(Vec::new()),
    });
    let result = load::run(plan, conns, Arc::clone(&shared)).await;

    let c = &shared.counters;
    let (end_to_end, ack) = shared.recorder.merged();
    let report = MessagesReport {
        run_id,
        urls: a.urls,
        users: a.users,
        cross_share: cross,
        rate: a.rate,
        window,
        warmup_s: a.warmup.as_secs_f64(),
        duration_s: a.duration.as_secs_f64(),
        drain_s: result.drain_seconds,
        settled: result.settled,
        fd_limit,
        connect,
        sent: c.sent.load(Relaxed),
        sent_cross: c.cross.load(Relaxed),
        delivered: c.delivered.load(Relaxed),
        stored: c.stored.load(Relaxed),
        rejected: c.rejected.load(Relaxed),
        rejected_codes: take(&shared.rejected_codes),
        refused: c.refused.load(Relaxed),
        received: c.received.load(Relaxed),
        received_in_window: c.received_in_window.load(Relaxed),
        lost: result.lost,
        lost_samples: result.lost_samples,
        duplicates: c.duplicates.load(Relaxed),
        out_of_order: c.out_of_order.load(Relaxed),
        errors: c.errors.load(Relaxed),
        error_samples: take(&shared.error_samples),
        end_to_end,
        ack,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    Ok(verdict(&report.problems()))
}

fn take<T: Default>(m: &Mutex<T>) -> T {
    std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()))
}

async fn connections(a: ConnectionsArgs, json: bool) -> anyhow::Result<ExitCode> {
    let target = match Target::parse(&a.url) {
        Ok(t) => t,
        Err(why) => return usage(why),
    };
    if a.count == 0 || a.count > MAX_USERS {
        return usage(format!("--count must be 1..={MAX_USERS}"));
    }
    if a.hold > MAX_TIME {
        return usage(format!("--hold must be at most {MAX_TIME:?}"));
    }
    let fd_limit = raise_fd_limit(a.count as u64 + 512);
    let report = capacity::run(capacity::Capacity {
        target,
        auth: auth(&a.dial, a.hold),
        run_id: run_id(),
        count: a.count,
        hold: a.hold,
        pid: a.pid,
        sources: a.dial.sources,
        concurrency: a.dial.concurrency as usize,
        fd_limit,
    })
    .await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    Ok(verdict(&report.problems()))
}

/// Raises this process's open-file limit: the soft limit to the hard one, and past the hard
/// limit to `wanted` where the process may (root). Says what it got; returns the soft limit.
fn raise_fd_limit(wanted: u64) -> u64 {
    use rlimit::Resource;
    let mut got = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if got < wanted && Resource::NOFILE.set(wanted, wanted).is_ok() {
        got = wanted;
    }
    if got < wanted {
        eprintln!(
            "bench: file descriptor limit {got}, below the {wanted} this run needs: expect failures"
        );
    } else {
        eprintln!("bench: file descriptor limit {got}");
    }
    got
}

/// Unix time in microseconds: send times travel in message bodies and refs, and the same
/// process reads them back, so one clock measures both ends.
pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// "10s", "500ms", "2m", "1.5s", or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
