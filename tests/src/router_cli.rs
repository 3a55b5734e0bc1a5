//! Runs the real `router-cli` binary against a test cluster's Redis.

use std::process::Command;

use serde_json::Value;

use crate::binary;

/// `router-cli --redis-url URL ARGS...`: (exit code, stdout, stderr).
pub fn cli(redis_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("router-cli"))
        .arg("--redis-url")
        .arg(redis_url)
        .args(args)
        .env_remove("WSROUTE_MESH_SECRET")
        .env_remove("WSROUTE_API_KEY")
        .env_remove("WSROUTE_MESH_SECRET_FILE")
        .env_remove("WSROUTE_API_KEY_FILE")
        .output()
        .expect("router-cli runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `router-cli --json ARGS...`, which must succeed and print one JSON document.
pub fn cli_json(redis_url: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out, err) = cli(redis_url, &a);
    assert_eq!(code, 0, "router-cli {args:?}: {err}");
    serde_json::from_str(&out).expect("--json prints JSON")
}
