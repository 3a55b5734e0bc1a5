//! Opening many client connections: from several loopback source addresses (so that 100k+
//! sockets do not run out of ephemeral ports), with bounded concurrency, each one confirmed by
//! the node's `hello` frame (sent only once its route is registered). The upgrade and the hello
//! are wsroute-client's [`Connection::handshake`]; the sockets are bound here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use wsroute_client::raw::WebSocketConfig;
use wsroute_client::{ConnectOptions, Connection};

pub type Ws = Connection<TcpStream>;

/// Error samples kept for the report; the rest are only counted.
const ERROR_SAMPLES: usize = 5;

/// One connection to open: where to, and the full URL with its auth query.
pub struct Job {
    pub addr: SocketAddr,
    pub url: String,
}

/// Dials one connection at a time, spreading IPv4 sockets over 127.0.0.2, 127.0.0.3, ...
pub struct Dialer {
    /// Source addresses for IPv4 targets; each has its own ~28k ephemeral ports.
    sources: Vec<IpAddr>,
    config: WebSocketConfig,
    /// For the TCP connect, the upgrade and the `hello`, each.
    timeout: Duration,
}

impl Dialer {
    /// `sources` loopback source addresses starting at 127.0.0.2 (0: let the kernel choose);
    /// `read_buffer` bytes per socket (tungstenite allocates it up front, so keep it small when
    /// holding 100k idle sockets).
    pub fn new(sources: u8, read_buffer: usize, timeout: Duration) -> Self {
        let sources = (0..sources)
            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)))
            .collect();
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(read_buffer);
        Self {
            sources,
            config,
            timeout,
        }
    }

    /// Connects, upgrades and reads the `hello`.
    pub async fn dial(&self, i: usize, job: &Job) -> anyhow::Result<Ws> {
        let socket = match job.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("cannot create a socket")?;
        if job.addr.is_ipv4() && !self.sources.is_empty() {
            let src = self.sources[i % self.sources.len()];
            socket
                .bind(SocketAddr::new(src, 0))
                .with_context(|| format!("cannot bind source address {src}"))?;
        }
        let stream = tokio::time::timeout(self.timeout, socket.connect(job.addr))
            .await
            .context("TCP connect timed out")?
            .with_context(|| format!("TCP connect to {}", job.addr))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let opts = ConnectOptions::new(job.url.as_str())
            .websocket_config(self.config)
            .timeout(self.timeout);
        Ok(Connection::handshake(stream, &opts).await?)
    }
}

/// What opening a batch of connections gave.
pub struct Opened {
    /// Indexed like the jobs; `None` where the connection failed.
    pub conns: Vec<Option<Ws>>,
    pub failed: usize,
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
}

impl Opened {
    pub fn opened(&self) -> usize {
        self.conns.len() - self.failed
    }

    pub fn per_second(&self) -> f64 {
        self.opened() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens every job with at most `concurrency` dials in flight; `progress` prints every 10%.
pub async fn open_all(
    dialer: Arc<Dialer>,
    jobs: Arc<[Job]>,
    concurrency: usize,
    progress: bool,
) -> Opened {
    let n = jobs.len();
    let started = Instant::now();
    let mut conns: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut failed = 0;
    let mut error_samples = Vec::new();
    let mut set = JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    let step = (n / 10).max(1);
    while next < n || !set.is_empty() {
        while next < n && set.len() < concurrency.max(1) {
            let (dialer, jobs, i) = (Arc::clone(&dialer), Arc::clone(&jobs), next);
            set.spawn(async move { (i, dialer.dial(i, &jobs[i]).await) });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        done += 1;
        let error = match joined {
            Ok((i, Ok(ws))) => {
                conns[i] = Some(ws);
                None
            }
            Ok((i, Err(e))) => Some(format!("connection {i}: {e:#}")),
            Err(e) => Some(format!("a dial task failed: {e}")),
        };
        if let Some(e) = error {
            failed += 1;
            if error_samples.len() < ERROR_SAMPLES {
                error_samples.push(e);
            }
        }
        if progress && n >= 10_000 && done % step == 0 {
            eprintln!(
                "bench: {done}/{n} connections ({failed} failed, {:.1}s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Opened {
        conns,
        failed,
        error_samples,
        elapsed: started.elapsed(),
    }
}
