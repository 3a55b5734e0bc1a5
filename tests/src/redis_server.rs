//! A private `redis-server` on a free loopback port, without persistence, killed on drop.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

use crate::{eventually, free_port};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = free_port();
        let mut r = Self { port, child: None };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        eventually("redis answers PING", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis reachable")
    }

    /// How many connections the route table lists for a node (its index), 0 if Redis is away.
    pub async fn routes_on_node(&self, node: &str) -> usize {
        self.hlen(&format!("wsr:n:{{{node}}}:conns")).await
    }

    /// How many connections the route table lists for a user, 0 if Redis is away.
    pub async fn routes_of_user(&self, user: &str) -> usize {
        self.hlen(&format!("wsr:u:{{{user}}}:conns")).await
    }

    async fn hlen(&self, key: &str) -> usize {
        let Ok(client) = redis::Client::open(self.url()) else {
            return 0;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return 0;
        };
        redis::cmd("HLEN")
            .arg(key)
            .query_async::<usize>(&mut c)
            .await
            .unwrap_or(0)
    }

    /// `INFO commandstats` as command -> calls.
    pub async fn command_calls(&self) -> HashMap<String, u64> {
        let mut c = self.conn().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .expect("INFO works");
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
