//! The connections run: open N idle connections to one node, hold them, and measure the connect
//! rate and the node's resident memory per connection (from `/proc/PID/status`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::conn::{self, Dialer, Job};
use super::report::{ConnectFigures, ConnectionsReport};
use super::target::{Auth, Target};

/// Per-socket read buffer: idle connections read only `hello` and pings.
const IDLE_READ_BUFFER: usize = 4 * 1024;

pub struct Capacity {
    pub target: Target,
    pub auth: Auth,
    pub run_id: String,
    pub count: usize,
    pub hold: Duration,
    pub pid: Option<u32>,
    pub sources: u8,
    pub concurrency: usize,
    pub fd_limit: u64,
}

pub async fn run(c: Capacity) -> ConnectionsReport {
    let rss_before = c.pid.and_then(resident_bytes);
    let jobs: Arc<[Job]> = (0..c.count)
        .map(|i| Job {
            addr: c.target.addr,
            url: c
                .target
                .with_query(&c.auth.query(&format!("bench-{}-c{i}", c.run_id))),
        })
        .collect();
    let dialer = Arc::new(Dialer::new(
        c.sources,
        IDLE_READ_BUFFER,
        Duration::from_secs(10),
    ));
    let cpu_before = c.pid.and_then(cpu_seconds);
    let opened = conn::open_all(dialer, jobs, c.concurrency, true).await;
    let cpu_connecting = c
        .pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let connect = ConnectFigures::of(&opened);

    // Hold: every connection keeps reading (so pings are answered) and counts if it is dropped.
    let stop = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let holders: Vec<_> = opened
        .conns
        .into_iter()
        .flatten()
        .map(|mut ws| {
            let (stop, dropped) = (stop.clone(), Arc::clone(&dropped));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = ws.recv_text() => if msg.is_err() {
                            dropped.fetch_add(1, Relaxed);
                            return;
                        },
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(c.hold).await;
    let rss_holding = c.pid.and_then(resident_bytes);
    stop.cancel();
    for h in holders {
        let _ = h.await;
    }
    ConnectionsReport {
        url: c.target.url,
        requested: c.count,
        fd_limit: c.fd_limit,
        connect,
        hold_s: c.hold.as_secs_f64(),
        dropped: dropped.load(Relaxed),
        pid: c.pid,
        rss_before,
        rss_holding,
        cpu_connecting,
    }
}

/// CPU time (user + system, all threads) a process has used so far, in seconds. `/proc`
/// counts it in USER_HZ ticks, which Linux fixes at 100 per second for user space.
fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // fields 14 (utime) and 15 (stime)
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// `VmRSS` of a process, in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\twsroute-server\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250 and stime 50 ticks.
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 5 6 7";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("42 (x) S 1"), None);
        assert_eq!(parse_cpu_seconds("no parenthesis"), None);
    }

    #[test]
    fn our_own_cpu_time_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn our_own_rss_is_readable() {
        assert!(resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
