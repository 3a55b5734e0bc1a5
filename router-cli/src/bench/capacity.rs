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
    let opened = conn::open_all(dialer, jobs, c.concurrency, true).await;
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
    }
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
    fn our_own_rss_is_readable() {
        assert!(resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
