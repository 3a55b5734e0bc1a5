//! `nodes list`: every registered node, alive or waiting to be cleaned up.

use std::process::ExitCode;

use serde_json::json;
use wsroute_core::nodes::NodeReader;

use crate::output::{human_ms, now_ms, table};

pub async fn list(table_: &NodeReader, as_json: bool) -> anyhow::Result<ExitCode> {
    let nodes = table_.list_nodes().await?;
    if as_json {
        let v: Vec<_> = nodes
            .iter()
            .map(|n| {
                json!({
                    "node": n.node.as_str(),
                    "grpc": n.grpc_addr,
                    "url": n.public_url,
                    "connections": n.connections,
                    "started_at_ms": n.started_at_ms,
                    "lease_left_ms": n.lease_left_ms,
                    "alive": n.alive(),
                    "draining": n.draining,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if nodes.is_empty() {
        println!("no nodes registered");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let state = match (n.alive(), n.draining) {
                (false, _) => "dead",
                (true, true) => "draining",
                (true, false) => "live",
            };
            vec![
                n.node.to_string(),
                state.to_owned(),
                n.connections.to_string(),
                human_ms(n.lease_left_ms),
                if n.started_at_ms > 0 {
                    human_ms(now - n.started_at_ms)
                } else {
                    "-".into()
                },
                n.grpc_addr.clone(),
                n.public_url.clone(),
            ]
        })
        .collect();
    table(
        &["NODE", "STATE", "CONNS", "LEASE", "AGE", "GRPC", "URL"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
