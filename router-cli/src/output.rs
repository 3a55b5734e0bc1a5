//! Shared plumbing: the readers of what the nodes keep in Redis, and plain-text tables.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wsroute_core::db::Redis;
use wsroute_core::inbox::InboxReader;
use wsroute_core::nodes::NodeReader;
use wsroute_core::observe::Unobserved;
use wsroute_core::routes::RouteReader;
use wsroute_core::webhooks::DeadEvents;

/// What router-cli reads in Redis: the node list, users' routes and inboxes, dead webhook
/// events (the one thing it writes there: `webhooks retry` moves dead events back). It keeps no
/// metrics.
pub struct Readers {
    pub nodes: NodeReader,
    pub routes: RouteReader,
    pub inbox: InboxReader,
    pub webhooks: DeadEvents,
}

impl Readers {
    pub fn open(url: &str) -> anyhow::Result<Self> {
        // No held connections: every command checks out of the pool (router-cli runs a few).
        let redis = Redis::open(url, Duration::from_secs(3), 0)
            // The URL is not repeated: it may carry a password.
            .map_err(|e| anyhow::anyhow!("bad --redis-url: {e}"))?;
        let observer = Arc::new(Unobserved);
        Ok(Self {
            nodes: NodeReader::new(redis.clone(), observer.clone()),
            routes: RouteReader::new(redis.clone(), observer.clone()),
            inbox: InboxReader::new(redis.clone(), observer),
            webhooks: DeadEvents::new(redis),
        })
    }
}

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// "3.2s", "5m", "2h", for ages and leases.
pub fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

pub use wsroute_core::clock::now_ms;

/// TLS for reaching nodes' gRPC listeners (when they run with --grpc-tls-cert).
#[derive(clap::Args, Debug, Clone)]
pub struct GrpcTlsArgs {
    /// CA that signed the nodes' gRPC certificates: turns on TLS for send, drain, stats and watch
    #[arg(long, env = "WSROUTE_GRPC_TLS_CA", global = true)]
    pub grpc_tls_ca: Option<std::path::PathBuf>,
    /// Client certificate to present (needed by drain, stats and watch when the mesh requires mTLS)
    #[arg(
        long,
        env = "WSROUTE_GRPC_TLS_CERT",
        global = true,
        requires = "grpc_tls_key"
    )]
    pub grpc_tls_cert: Option<std::path::PathBuf>,
    /// Private key of --grpc-tls-cert
    #[arg(
        long,
        env = "WSROUTE_GRPC_TLS_KEY",
        global = true,
        requires = "grpc_tls_cert"
    )]
    pub grpc_tls_key: Option<std::path::PathBuf>,
}

/// A channel to a node's gRPC listener, over TLS when a CA is given.
pub async fn grpc_channel(
    addr: &str,
    tls: &GrpcTlsArgs,
) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let endpoint = match &tls.grpc_tls_ca {
        None => Endpoint::from_shared(format!("http://{addr}"))?,
        Some(ca) => {
            let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&tls.grpc_tls_cert, &tls.grpc_tls_key) {
                cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            Endpoint::from_shared(format!("https://{addr}"))?.tls_config(cfg)?
        }
    };
    endpoint
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))
}
