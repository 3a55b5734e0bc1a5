//! A private `redis-server` on a free loopback port, without persistence, killed on drop; or a
//! private three-master Redis Cluster (`redis-server --cluster-enabled yes` x3 joined by
//! `redis-cli --cluster create`); or a primary, one replica and three `redis-sentinel` processes
//! watching them.
//!
//! `WSROUTE_TEST_REDIS=cluster` makes [`RedisServer::start`] start a cluster, so that any suite
//! that does not stop Redis itself can run unchanged against Redis Cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{eventually, free_port, keys, node_id, user_id};

pub struct RedisServer {
    /// The (first) server's port.
    pub port: u16,
    /// Every server's port (one, or the cluster's masters).
    ports: Vec<u16>,
    children: Vec<Child>,
    /// A cluster's working directory (its nodes-*.conf files), removed on drop.
    dir: Option<PathBuf>,
    /// The sentinels watching `ports` (a primary and its replica), if any.
    sentinels: Option<Sentinels>,
    /// The server's TLS port, if it has one: `url()` is then `rediss://localhost:PORT`.
    tls_port: Option<u16>,
    /// The password set by [`RedisServer::require_password`], carried in `url()`.
    password: Option<String>,
}

/// Three `redis-sentinel` processes and their working directory (their config files, which
/// Sentinel rewrites), removed on drop.
struct Sentinels {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

/// The name the test sentinels monitor their primary under.
pub const SENTINEL_MASTER: &str = "wsroute";

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
            sentinels: None,
            tls_port: None,
            password: None,
        };
        r.spawn_server(port, extra).await;
        r
    }

    /// One server that also listens on `host` (an address of this machine, e.g. the root side
    /// of a veth link into a network namespace), without protected mode so that a node there
    /// may connect; [`Self::url_via`] gives the URL to reach it there.
    pub async fn start_also_on(host: &str) -> Self {
        Self::start_with_args(&["--bind", "127.0.0.1", host, "--protected-mode", "no"]).await
    }

    /// `redis://HOST:PORT`: this (single) server reached at another of its addresses.
    pub fn url_via(&self, host: &str) -> String {
        format!("redis://{host}:{}", self.port)
    }

    /// One server that also listens with TLS (certificate `node.pem`, for localhost, from the test
    /// CA `ca.pem` in `tests/fixtures`); `url()` is its `rediss://` URL, and a client trusts it
    /// with `SSL_CERT_FILE` pointing at the CA. The harness itself uses the plain port.
    pub async fn start_tls(fixtures: &std::path::Path) -> Self {
        let tls_port = free_port();
        let file = |f: &str| fixtures.join(f).display().to_string();
        let mut r = Self::start_with_args(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &file("node.pem"),
            "--tls-key-file",
            &file("node-key.pem"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .await;
        r.tls_port = Some(tls_port);
        r
    }

    /// A primary, one replica of it, and three sentinels that watch them (quorum 2, a server is
    /// down after 1 s without answers), on loopback ports; `url()` is `redis+sentinel://`.
    /// Returns once every sentinel knows the replica and the other two sentinels, so that a
    /// failover can happen. Fails clearly when `redis-sentinel` is not installed.
    pub async fn start_sentinel() -> Self {
        let installed = Command::new("redis-sentinel")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "redis-sentinel is not installed: run scripts/install-deps.sh --for-tests \
             (apt-get install -y redis-sentinel)"
        );
        let (primary, replica) = (free_port(), free_port());
        let mut r = Self {
            port: primary,
            ports: vec![primary, replica],
            children: Vec::new(),
            dir: None,
            sentinels: None,
            tls_port: None,
            password: None,
        };
        r.spawn_server(primary, &[]).await;
        let primary_arg = primary.to_string();
        r.spawn_server(replica, &["--replicaof", "127.0.0.1", &primary_arg])
            .await;
        eventually("the replica is in sync with the primary", || async move {
            let mut c = Self::server_conn(replica).await?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await
                .ok()?;
            info.contains("master_link_status:up").then_some(())
        })
        .await;

        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "wsroute-test-sentinel-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut children = Vec::new();
        for &port in &ports {
            let conf = dir.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {m} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.display(),
                m = SENTINEL_MASTER,
            );
            std::fs::write(&conf, text).expect("sentinel config");
            children.push(
                Command::new("redis-sentinel")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-sentinel starts"),
            );
        }
        r.sentinels = Some(Sentinels {
            ports: ports.clone(),
            children,
            dir,
        });
        for &port in &ports {
            eventually(
                "every sentinel knows the primary, its replica and the other sentinels",
                || async move {
                    let mut c = Self::server_conn(port).await?;
                    let named = Self::ask_sentinel(&mut c).await?;
                    let mut known = Vec::new();
                    for what in ["REPLICAS", "SENTINELS"] {
                        let list: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg(what)
                            .arg(SENTINEL_MASTER)
                            .query_async(&mut c)
                            .await
                            .ok()?;
                        known.push(list.len());
                    }
                    (named == primary && known == [1, 2]).then_some(())
                },
            )
            .await;
        }
        r
    }

    /// The port of the primary a sentinel names.
    async fn ask_sentinel(c: &mut redis::aio::MultiplexedConnection) -> Option<u16> {
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query_async(c)
            .await
            .ok()?;
        Some(port)
    }

    /// The port of the primary: behind Sentinel, the one the first answering sentinel names.
    pub async fn primary_port(&self) -> Option<u16> {
        let Some(s) = &self.sentinels else {
            return Some(self.port);
        };
        for &port in &s.ports {
            if let Some(mut c) = Self::server_conn(port).await
                && let Some(primary) = Self::ask_sentinel(&mut c).await
            {
                return Some(primary);
            }
        }
        None
    }

    /// Behind Sentinel: the port every sentinel names as primary, if they agree.
    pub async fn primary_all_sentinels_name(&self) -> Option<u16> {
        let s = self.sentinels.as_ref()?;
        let mut named = Vec::new();
        for &port in &s.ports {
            let mut c = Self::server_conn(port).await?;
            named.push(Self::ask_sentinel(&mut c).await?);
        }
        named.dedup();
        (named.len() == 1).then(|| named[0])
    }

    /// Behind Sentinel: the servers' ports, the primary first at the start.
    pub fn server_ports(&self) -> &[u16] {
        &self.ports
    }

    /// Kills the server on `port` with SIGKILL (a primary or replica behind Sentinel).
    pub fn kill_server(&mut self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a server of this set");
        let c = &mut self.children[i];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// `ROLE` of the server on `port`: "master", "slave", or None when it does not answer.
    pub async fn role(port: u16) -> Option<String> {
        let mut c = Self::server_conn(port).await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
        redis::from_redis_value(role.into_iter().next()?).ok()
    }

    /// A connection to the server on `port`.
    pub async fn conn_to(port: u16) -> Option<redis::aio::MultiplexedConnection> {
        Self::server_conn(port).await
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
            sentinels: None,
            tls_port: None,
            password: None,
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
            !self.is_cluster() && self.sentinels.is_none(),
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

    /// Makes a single server require `password` from now on (`CONFIG SET requirepass`);
    /// `url()` carries it (`redis://:PASSWORD@...`). The harness's own helpers that open new
    /// connections do not know it: this is for tests that only go through the nodes.
    pub async fn require_password(&mut self, password: &str) {
        assert!(!self.is_cluster() && self.sentinels.is_none() && self.tls_port.is_none());
        let mut c = Self::server_conn(self.port).await.expect("redis reachable");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(password)
            .query_async(&mut c)
            .await
            .expect("CONFIG SET requirepass");
        self.password = Some(password.to_owned());
    }

    /// What `--redis-url` takes: `redis://...`, `redis+cluster://h1:p1,h2:p2,h3:p3`, or
    /// `redis+sentinel://s1,s2,s3/wsroute`.
    pub fn url(&self) -> String {
        if let Some(s) = &self.sentinels {
            let hosts: Vec<String> = s.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
        } else if self.is_cluster() {
            format!("redis+cluster://{}", self.seeds("").join(","))
        } else if let Some(tls) = self.tls_port {
            format!("rediss://localhost:{tls}")
        } else if let Some(pw) = &self.password {
            format!("redis://:{pw}@127.0.0.1:{}", self.port)
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

    /// A connection to the (first) server; behind Sentinel, to the primary.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let port = self.primary_port().await.expect("a sentinel answers");
        Self::server_conn(port).await.expect("redis reachable")
    }

    /// How many connections the route table lists for a node (its index), 0 if Redis is away.
    pub async fn routes_on_node(&self, node: &str) -> usize {
        self.hlen(&keys::node_conns(&node_id(node))).await
    }

    /// How many connections the route table lists for a user, 0 if Redis is away.
    pub async fn routes_of_user(&self, user: &str) -> usize {
        self.hlen(&keys::user_conns(&user_id(user))).await
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
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        if self.is_cluster() {
            let client = redis::cluster::ClusterClient::new(self.seeds("redis://")).ok()?;
            let mut c = client.get_async_connection().await.ok()?;
            return cmd.query_async(&mut c).await.ok();
        }
        let mut c = Self::server_conn(self.primary_port().await?).await?;
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
        if let Some(s) = &mut self.sentinels {
            for mut c in s.children.drain(..) {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&s.dir);
        }
    }
}
