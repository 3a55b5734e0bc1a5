//! `scripts/cluster.sh` run as a newcomer runs it: every hint it prints, followed literally in a
//! shell that has none of wsroute's variables, works; the page it points at answers; Ctrl-C
//! (SIGTERM here) stops the nodes and its Redis.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use wsroute_tests::{binary, free_port, patience, workspace_dir};

/// A process whose output lines arrive on a channel, killed with its whole process group if
/// the test ends first.
struct Running {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far (for failure messages).
    seen: Vec<String>,
}

impl Running {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .current_dir(workspace_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("bash runs");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `want` (returned), for at most the tests' patience.
    fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + patience();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {:?}; output:\n{}",
                    patience(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("piped stdin")
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("-KILL");
            let _ = self.child.wait();
        }
    }
}

/// Runs one printed line as a person pastes it: in bash, in the repository, with no WSROUTE_*
/// variable of the test's own environment.
fn paste(line: &str) -> (bool, String, String) {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", line]).current_dir(workspace_dir());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSROUTE_")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("bash runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_hint_cluster_sh_prints_works_as_printed() {
    let ws: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let grpc: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let redis_port = free_port();
    let dir = std::env::temp_dir().join(format!("wsroute-cluster-sh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    let bin = binary("wsroute-server")
        .parent()
        .expect("a directory")
        .to_path_buf();
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut cmd = Command::new("bash");
    cmd.arg("scripts/cluster.sh")
        .arg("--bin")
        .arg(&bin)
        .env("WSROUTE_DEV_WS_PORTS", join(&ws))
        .env("WSROUTE_DEV_GRPC_PORTS", join(&grpc))
        .env("WSROUTE_DEV_REDIS_PORT", redis_port.to_string())
        .env("WSROUTE_DEV_DIR", &dir)
        .stderr(std::fs::File::create(dir.join("script.err")).expect("stderr file"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WSROUTE_")) {
        cmd.env_remove(k);
    }
    let mut script = Running::start(&mut cmd);
    script.until("the first line of the hints", |l| {
        l.starts_with("wsroute is up")
    });
    script.until("the last line of the hints", |l| {
        l.contains("Ctrl-C to stop")
    });
    let printed = script.seen.clone();

    // The browser hint: the page answers on each URL it names.
    let browser = printed
        .iter()
        .find(|l| l.starts_with("Try it in a browser"))
        .expect("a browser hint");
    let urls: Vec<&str> = browser
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .collect();
    assert_eq!(urls.len(), 2, "{browser}");
    for url in urls {
        let (ok, page, err) = paste(&format!("curl -fsS '{url}'"));
        assert!(ok && page.contains("<html"), "{url}: {err}");
    }

    // The chat hints: bob in one terminal, alice in another, and the line to type in hers.
    let chats: Vec<&String> = printed
        .iter()
        .filter(|l| l.contains("router-cli chat"))
        .collect();
    assert_eq!(chats.len(), 2, "{printed:?}");
    let typed = printed
        .iter()
        .find_map(|l| l.split_once("type in alice's terminal:"))
        .map(|(_, t)| t.trim().to_owned())
        .expect("what to type");
    let terminal = |line: &str| {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", line.trim()]).stderr(Stdio::null());
        Running::start(&mut cmd)
    };
    let chat_as = |user: &str| {
        chats
            .iter()
            .find(|l| l.ends_with(&format!("--user {user}")))
            .unwrap_or_else(|| panic!("a chat hint for {user}: {chats:?}"))
            .as_str()
    };
    let mut bob = terminal(chat_as("bob"));
    bob.until("bob's hello", |l| l.contains(r#""type":"hello""#));
    let mut alice = terminal(chat_as("alice"));
    alice.until("alice's hello", |l| l.contains(r#""type":"hello""#));
    writeln!(alice.stdin(), "{typed}").expect("type in alice's terminal");
    let ack = alice.until("the ack", |l| l.contains(r#""type":"ack""#));
    assert!(ack.contains(r#""status":"delivered""#), "{ack}");
    let message = bob.until("the message", |l| l.contains(r#""type":"message""#));
    assert!(message.contains(r#""from":"alice""#), "{message}");
    let said = typed.split_once(' ').map(|(_, m)| m).unwrap_or_default();
    assert!(message.contains(said), "{message} carries {said:?}");

    // Every command line, pasted as it is. Those after `source FILE` run after it, in the
    // same shell; before it each one must carry what it needs.
    let mut sourced: Option<String> = None;
    let mut ran = 0;
    for line in &printed {
        if let Some((_, file)) = line.split_once("once in a shell: source ") {
            sourced = Some(file.trim().to_owned());
            continue;
        }
        // A command: its first word that is no `NAME=value` is router-cli (chat aside) or curl.
        let command = line.trim();
        let program = command.split_whitespace().find(|w| !w.contains('='));
        let is_command = program.is_some_and(|p| p.ends_with("/router-cli") || p == "curl")
            && !command.contains(" chat ");
        if !line.starts_with("  ") || !is_command {
            continue;
        }
        let pasted = match &sourced {
            Some(file) => format!("source {file} && {command}"),
            None => command.to_owned(),
        };
        let (ok, out, err) = paste(&pasted);
        assert!(ok, "`{pasted}` failed: {err}{out}");
        assert!(!out.trim().is_empty(), "`{pasted}` printed nothing");
        ran += 1;
        if command.contains(" send ") || command.starts_with("curl ") {
            assert!(out.contains("stored") || out.contains("delivered"), "{out}");
        }
    }
    println!("{ran} printed commands ran");
    assert!(
        ran >= 7,
        "nodes, routes, inbox, send, stats, watch, curl, and one after source: {printed:?}"
    );
    assert!(sourced.is_some(), "the hints say what to source");

    // Ctrl-C: the nodes drain, Redis stops, every port is closed.
    drop(alice);
    drop(bob);
    let _ = Command::new("kill")
        .args(["-INT", &script.child.id().to_string()])
        .status();
    script.until("the script's goodbye", |l| l.contains("stopped."));
    let deadline = Instant::now() + patience();
    while script.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the script did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    for port in ws.iter().chain(&grpc).chain([&redis_port]) {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still open after the script stopped"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
