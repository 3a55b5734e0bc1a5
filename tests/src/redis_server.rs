//! A private `redis-server` on a free loopback port, without persistence, killed on drop; or a
//! private three-master Redis Cluster (`redis-server --cluster-enabled yes` x3 joined by
//! `redis-cli --cluster create`).
//!
//! `WSROUTE_TEST_REDIS=cluster` makes [`RedisServer::start`] start a cluster, so that any suite
//! that does not stop Redis itself can run unchanged against Redis Cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{eventually, free_port};

pub struct RedisServer {
    /// The (first) server's port.
    pub port: u16,
    /// Every server's port (one, or the cluster's masters).
    ports: Vec<u16>,
    children: Vec<Child>,
    /// A cluster's working directory (its nodes-*.conf files), removed on drop.
    dir: Option<PathBuf>,
}

impl RedisServer {
    /// One server, or a cluster when `WSROUTE_TEST_REDIS=cluster`.
    pub async fn start() -> Self {
        if std::env::var("WSROUTE_TEST_REDIS").as_deref() == Ok("cluster") {
            return Self::start_cluster(3).await;
        }
        Self::start_with_args(&[]).await
    }

    /// One server started with extra `redis-server` arguments (always a single server).
    pub async fn start_with_args(extra: &[&str]) -> Self {
        let port = free_port();
        let mut r = Self {
            port,
            ports: vec![port],
            children: Vec::new(),
            dir: None,
        };
        r.spawn_server(port, extra).await;
        r
    }

    /// A Redis Cluster of `masters` masters (no replicas), every slot assigned, state ok.
    pub async fn start_cluster(masters: usize) -> Self {
        let ports: Vec<u16> = (0..masters).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "wsroute-test-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut r = Self {
            port: ports[0],
            ports: ports.clone(),
            children: Vec::new(),
            dir: Some(dir.clone()),
        };
        for &port in &ports {
            // The bus port is chosen too: port + 10000 may be taken or out of range.
            let bus = free_port().to_string();
            let conf = format!("nodes-{port}.conf");
            r.spawn_server(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "5000",
                    "--dir",
                    dir.to_str().expect("temp dir is UTF-8"),
                ],
            )
            .await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for &port in &ports {
            eventually(
                "every cluster node reports cluster_state:ok",
                || async move {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut Self::server_conn(port).await?)
                        .await
                        .ok()?;
                    info.contains("cluster_state:ok").then_some(())
                },
            )
            .await;
        }
        r
    }

    pub fn is_cluster(&self) -> bool {
        self.dir.is_some()
    }

    /// Every server as `{scheme}127.0.0.1:PORT`.
    fn seeds(&self, scheme: &str) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("{scheme}127.0.0.1:{p}"))
            .collect()
    }

    async fn spawn(&mut self) {
        self.spawn_server(self.port, &[]).await;
    }

    async fn spawn_server(&mut self, port: u16, extra: &[&str]) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/install-deps.sh installs it)");
        self.children.push(child);
        eventually("redis answers PING", || async move {
            let mut c = Self::server_conn(port).await?;
            let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
            (pong == "PONG").then_some(())
        })
        .await;
    }

    async fn server_conn(port: u16) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        client.get_multiplexed_async_connection().await.ok()
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        assert!(
            !self.is_cluster(),
            "stop/start_again are for a single server"
        );
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.children.is_empty(), "redis is still running");
        self.spawn().await;
    }

    /// What `--redis-url` takes: `redis://...`, or `redis+cluster://h1:p1,h2:p2,h3:p3`.
    pub fn url(&self) -> String {
        if self.is_cluster() {
            format!("redis+cluster://{}", self.seeds("").join(","))
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The server (of a cluster: the master) that holds `key`.
    pub async fn server_of(&self, key: &str) -> u16 {
        if !self.is_cluster() {
            return self.port;
        }
        let mut c = Self::server_conn(self.port).await.expect("redis reachable");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("CLUSTER KEYSLOT");
        for &port in &self.ports {
            let mut c = Self::server_conn(port).await.expect("redis reachable");
            let n: u64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query_async(&mut c)
                .await
                .unwrap_or(0);
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap_or(false);
            if n > 0 && exists {
                return port;
            }
        }
        panic!("no master holds {key}");
    }

    /// A connection to the (first) server.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        Self::server_conn(self.port).await.expect("redis reachable")
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
        let mut cmd = redis::cmd("HLEN");
        cmd.arg(key);
        self.query(&cmd).await.unwrap_or(0)
    }

    /// Removes a field of a hash (on a cluster, on the master that holds it); panics on failure.
    pub async fn hdel(&self, key: &str, field: &str) {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(key).arg(field);
        let removed: Option<u64> = self.query(&cmd).await;
        assert_eq!(removed, Some(1), "HDEL {key} {field}");
    }

    /// Runs one command on the server, or on a cluster through a cluster client; `None` when
    /// Redis is away or the command failed.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        if self.is_cluster() {
            let client = redis::cluster::ClusterClient::new(self.seeds("redis://")).ok()?;
            let mut c = client.get_async_connection().await.ok()?;
            return cmd.query_async(&mut c).await.ok();
        }
        let mut c = Self::server_conn(self.port).await?;
        cmd.query_async(&mut c).await.ok()
    }

    /// `INFO commandstats` as command -> calls, summed over every server (of a cluster: every
    /// master).
    pub async fn command_calls(&self) -> HashMap<String, u64> {
        let mut total = HashMap::new();
        for &port in &self.ports {
            let mut c = Self::server_conn(port).await.expect("redis reachable");
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut c)
                .await
                .expect("INFO works");
            for l in info.lines() {
                let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                let calls = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                *total.entry(name.to_owned()).or_insert(0) += calls;
            }
        }
        total
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
