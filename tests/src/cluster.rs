//! Real `wsroute-server` processes: start with chosen flags, wait until ready, signal, kill.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{RedisServer, binary, eventually, free_port};

pub const JWT_SECRET: &str = "test-jwt-secret";
pub const API_KEY: &str = "test-api-key";
pub const MESH_SECRET: &str = "test-mesh-secret";

/// Flags for one node; `Default` gives the shared test secrets and dev auth.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    pub id: String,
    pub dev_auth: bool,
    pub jwt_secret: Option<String>,
    pub api_key: Option<String>,
    pub mesh_secret: Option<String>,
    pub extra: Vec<String>,
    /// `--redis-url` when not the Redis the node is started with (a proxy in front of it, or
    /// another address of it).
    pub redis_url: Option<String>,
    /// Environment variables for the process (e.g. `WSROUTE_LOG_FORMAT=json`).
    pub env: Vec<(String, String)>,
    /// The address the node listens on and is reached at (default 127.0.0.1).
    pub host: String,
    /// A command the node runs under (e.g. `ip netns exec NAME`, see [`crate::netns`]).
    pub prefix: Vec<String>,
}

impl NodeOpts {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            dev_auth: true,
            jwt_secret: Some(JWT_SECRET.into()),
            api_key: Some(API_KEY.into()),
            mesh_secret: Some(MESH_SECRET.into()),
            extra: Vec::new(),
            redis_url: None,
            env: Vec::new(),
            host: "127.0.0.1".into(),
            prefix: Vec::new(),
        }
    }
}

pub struct Node {
    pub id: String,
    /// Where the node listens and is reached.
    pub host: String,
    pub opts: NodeOpts,
    pub ws_port: u16,
    pub grpc_port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a node and waits for `/readyz` to answer 200.
    pub async fn start(redis: &RedisServer, opts: NodeOpts) -> Self {
        let node = Self::spawn(redis, &opts);
        node.wait_ready().await;
        node
    }

    /// Starts a node without waiting.
    pub fn spawn(redis: &RedisServer, opts: &NodeOpts) -> Self {
        Self::spawn_on(redis, opts, free_port(), free_port())
    }

    /// Starts a node on the given ports (a restart keeps its addresses).
    pub fn spawn_on(redis: &RedisServer, opts: &NodeOpts, ws_port: u16, grpc_port: u16) -> Self {
        let log = std::env::temp_dir().join(format!(
            "wsroute-test-{}-{}-{ws_port}.log",
            std::process::id(),
            opts.id
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let server = binary("wsroute-server");
        let mut cmd = match opts.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(server);
                c
            }
            None => Command::new(server),
        };
        let host = &opts.host;
        cmd.arg("--node-id")
            .arg(&opts.id)
            .arg("--ws-listen")
            .arg(format!("{host}:{ws_port}"))
            .arg("--grpc-listen")
            .arg(format!("{host}:{grpc_port}"))
            .arg("--redis-url")
            .arg(opts.redis_url.clone().unwrap_or_else(|| redis.url()))
            .env_remove("WSROUTE_JWT_SECRET")
            .env_remove("WSROUTE_API_KEY")
            .env_remove("WSROUTE_MESH_SECRET")
            .env_remove("WSROUTE_DEV_AUTH")
            .env_remove("WSROUTE_JWT_SECRET_FILE")
            .env_remove("WSROUTE_API_KEY_FILE")
            .env_remove("WSROUTE_MESH_SECRET_FILE")
            .env_remove("WSROUTE_INSECURE_MESH")
            .env_remove("WSROUTE_WEBHOOK_URL")
            .env_remove("WSROUTE_WEBHOOK_SECRET")
            .env_remove("WSROUTE_WEBHOOK_SECRET_FILE")
            .env(
                "WSROUTE_LOG",
                "info,wsroute_server=debug,wsroute_core=debug",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if opts.dev_auth {
            cmd.arg("--dev-auth");
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        for (flag, value) in [
            ("--jwt-secret", &opts.jwt_secret),
            ("--api-key", &opts.api_key),
            ("--mesh-secret", &opts.mesh_secret),
        ] {
            if let Some(v) = value {
                cmd.arg(flag).arg(v);
            }
        }
        cmd.args(&opts.extra);
        let child = cmd.spawn().expect("wsroute-server starts");
        Self {
            id: opts.id.clone(),
            host: opts.host.clone(),
            opts: opts.clone(),
            ws_port,
            grpc_port,
            log,
            child: Some(child),
        }
    }

    pub async fn wait_ready(&self) {
        let url = self.http("/readyz");
        let what = format!("node {} ready (log: {})", self.id, self.log.display());
        eventually(&what, || {
            let url = url.clone();
            async move {
                let r = reqwest::get(url).await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.ws_port)
    }

    /// `ws://.../ws?user=USER` (dev auth).
    pub fn ws_user(&self, user: &str) -> String {
        format!("ws://{}:{}/ws?user={user}", self.host, self.ws_port)
    }

    pub fn ws(&self, query: &str) -> String {
        format!("ws://{}:{}/ws{query}", self.host, self.ws_port)
    }

    pub fn grpc(&self) -> String {
        format!("http://{}:{}", self.host, self.grpc_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once (SIGKILL): no drain, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again with the same id, flags and ports, and waits until ready.
    pub async fn restart(&mut self, redis: &RedisServer) {
        assert!(self.child.is_none(), "node {} is still running", self.id);
        *self = Self::spawn_on(redis, &self.opts.clone(), self.ws_port, self.grpc_port);
        self.wait_ready().await;
    }

    /// Freezes the process (SIGSTOP): its sockets stay open but it reads and answers nothing,
    /// like a node stuck in a long GC pause or a VM that was suspended. [`Node::resume`] thaws it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the node is running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Sends SIGINT (Ctrl-C: a graceful drain, as SIGTERM).
    pub fn interrupt(&self) {
        self.signal("-INT");
    }

    /// Sends SIGTERM (graceful drain).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -TERM {pid} failed");
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("node was started");
        let pid = child.id();
        let waited =
            tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || child.wait())).await;
        match waited {
            Ok(Ok(Ok(status))) => status,
            Ok(other) => panic!("waiting for node {} failed: {other:?}", self.id),
            Err(_) => {
                // Do not leave it running behind a failed test.
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                panic!(
                    "node {} did not exit within {timeout:?} (log: {})",
                    self.id,
                    self.log.display()
                );
            }
        }
    }

    /// The node's log so far (for assertions and failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A Redis and N nodes named node1..nodeN, started concurrently.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub redis: RedisServer,
}

impl Cluster {
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: usize, tweak: impl Fn(&mut NodeOpts)) -> Self {
        Self::start_on(RedisServer::start().await, n, tweak).await
    }

    /// `n` nodes on the given Redis (a single server or a Redis Cluster).
    pub async fn start_on(redis: RedisServer, n: usize, tweak: impl Fn(&mut NodeOpts)) -> Self {
        let nodes: Vec<Node> = (1..=n)
            .map(|i| {
                let mut o = NodeOpts::new(&format!("node{i}"));
                tweak(&mut o);
                Node::spawn(&redis, &o)
            })
            .collect();
        for n in &nodes {
            n.wait_ready().await;
        }
        Self { nodes, redis }
    }

    /// Nodes with the given options (one each), on `redis`, started concurrently.
    pub async fn start_nodes(redis: RedisServer, opts: Vec<NodeOpts>) -> Self {
        let nodes: Vec<Node> = opts.iter().map(|o| Node::spawn(&redis, o)).collect();
        for n in &nodes {
            n.wait_ready().await;
        }
        Self { nodes, redis }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }
}
