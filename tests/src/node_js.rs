//! Running Node.js scripts from a test: the browser test and the JavaScript client's tests, each
//! to its end within a deadline, failing with what it printed.

use std::path::Path;
use std::time::Duration;

/// Runs `cmd` to its end (killed after `limit`), asserts it succeeded, and returns what it printed.
pub async fn finish(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> String {
    let run = cmd.kill_on_drop(true).output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {limit:?}"))
        .expect("node runs (is Node.js installed?)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{printed}",
        out.status
    );
    printed
}

/// Fails with what to run when a tool a test needs is missing.
pub fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{} not found ({what}): run `bash scripts/install-deps.sh --for-tests`",
        path.display()
    );
}

/// Node.js's major version (`node` on the PATH).
pub fn node_major() -> u32 {
    let out = std::process::Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .expect("node runs (is Node.js installed?)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("node prints its major version")
}
