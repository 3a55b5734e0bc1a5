//! A TCP proxy between a node and Redis that can make one connection go silent (half-open: both
//! sockets stay open, nothing passes either way, as behind a dead middlebox) and can turn new
//! connections away for a while.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct Link {
    /// The proxy's own address on its connection to the upstream: what the upstream (Redis's
    /// `CLIENT LIST`) sees as the client's address.
    upstream_side: SocketAddr,
    silent: Arc<AtomicBool>,
}

#[derive(Default)]
struct Shared {
    links: Mutex<Vec<Link>>,
    refuse_new: AtomicBool,
}

pub struct TcpProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port()))
            .await
            .expect("the proxy binds");
        let port = listener.local_addr().expect("bound").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.refuse_new.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                if let Ok(addr) = server.local_addr() {
                    s.links.lock().expect("proxy lock").push(Link {
                        upstream_side: addr,
                        silent: silent.clone(),
                    });
                }
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, silent.clone()));
                tokio::spawn(pump(sr, cw, silent));
            }
        });
        Self {
            port,
            shared,
            accept,
        }
    }

    /// `redis://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Makes the connection whose upstream side is `addr` (as Redis names its client) silent:
    /// from now on, whatever either end sends is swallowed. False if no such connection.
    pub fn silence(&self, addr: &str) -> bool {
        let links = self.shared.links.lock().expect("proxy lock");
        let mut found = false;
        for l in links.iter().filter(|l| l.upstream_side.to_string() == addr) {
            l.silent.store(true, Ordering::Release);
            found = true;
        }
        found
    }

    /// Whether new connections are turned away (closed at once) from now on.
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.refuse_new.store(refuse, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` until either ends; while `silent`, what is read is dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::Acquire) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
