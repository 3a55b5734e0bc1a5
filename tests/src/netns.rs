//! A network namespace for one node, to cut it off from Redis but not from its clients
//! (`ip netns`, veth pairs; needs root, as CI has).
//!
//! Two veth pairs join the namespace to the root namespace, each a /30 of its own:
//! - the *client link*: the node listens on its namespace side ([`NetNs::inside`]); clients and
//!   the other nodes, in the root namespace, reach it there, and it reaches the other nodes on the
//!   root side ([`NetNs::outside`]), where they listen;
//! - the *Redis link*: used only to reach Redis, which listens on its root side
//!   ([`NetNs::redis_host`]). [`NetNs::cut_redis`] takes the root side down: the node's packets
//!   to Redis vanish (no reset, no error: a partition), while the client link stays up.
//!
//! Names and addresses come from the test process id and a counter, so that runs do not collide;
//! dropping the value deletes the namespace and the links.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct NetNs {
    pub name: String,
    /// Root-side names of the client and Redis links.
    client_link: String,
    redis_link: String,
    /// The third octet pair of this namespace's addresses: `10.{a}.{b}.x`.
    a: u8,
    b: u8,
}

/// Runs `ip` with `args`; the output, or why it could not run.
fn ip(args: &[&str]) -> Result<Output, String> {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))
}

/// Runs `ip` with `args` and panics with its error output if it fails.
fn ip_ok(args: &[&str]) {
    let out = ip(args).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl NetNs {
    /// Creates the namespace and both links, addressed and up. Panics with a clear message when
    /// network namespaces are not available (no `ip`, not root, no CAP_NET_ADMIN).
    pub fn create() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{seq}", pid % 100_000);
        let ns = Self {
            name: format!("wsr-{tag}"),
            client_link: format!("wsc{tag}"),
            redis_link: format!("wsr{tag}"),
            // 10.64.0.0 to 10.127.255.255, away from the usual 10.0.x.x of hosts and containers.
            a: 64 + ((pid / 251) % 64) as u8,
            b: ((pid % 251) as u8).wrapping_add((seq * 37) as u8),
        };
        let probe = ip(&["netns", "add", &ns.name]);
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "network namespaces are not available (`ip netns add` failed: {}); this test \
                 needs root or CAP_NET_ADMIN, as CI has",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("network namespaces are not available: {e}"),
        }
        for (link, host) in [(&ns.client_link, 1u8), (&ns.redis_link, 5u8)] {
            let inner = format!("{link}n");
            ip_ok(&["link", "add", link, "type", "veth", "peer", "name", &inner]);
            ip_ok(&["link", "set", &inner, "netns", &ns.name]);
            ip_ok(&["addr", "add", &format!("{}/30", ns.addr(host)), "dev", link]);
            ip_ok(&["link", "set", link, "up"]);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}/30", ns.addr(host + 1)),
                "dev",
                &inner,
            ]);
            ns.exec_ok(&["ip", "link", "set", &inner, "up"]);
        }
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn addr(&self, host: u8) -> String {
        format!("10.{}.{}.{host}", self.a, self.b)
    }

    fn exec_ok(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip_ok(&all);
    }

    /// The node's address inside the namespace (client link): clients and peers reach it here.
    pub fn inside(&self) -> String {
        self.addr(2)
    }

    /// The root side of the client link: nodes in the root namespace listen here so that the
    /// node inside can reach them (it has its own loopback).
    pub fn outside(&self) -> String {
        self.addr(1)
    }

    /// The root side of the Redis link: Redis listens here for the node inside.
    pub fn redis_host(&self) -> String {
        self.addr(5)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// Cuts the node off from Redis: the Redis link goes down on its root side.
    pub fn cut_redis(&self) {
        ip_ok(&["link", "set", &self.redis_link, "down"]);
    }

    /// Restores the Redis link.
    pub fn restore_redis(&self) {
        ip_ok(&["link", "set", &self.redis_link, "up"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes the inner ends and, with them, their peers; the peers
        // are deleted too in case something still holds the namespace open.
        let _ = ip(&["netns", "delete", &self.name]);
        for link in [&self.client_link, &self.redis_link] {
            let _ = ip(&["link", "delete", link]);
        }
    }
}
