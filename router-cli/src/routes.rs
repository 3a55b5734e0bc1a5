//! `routes get USER` and `routes list --node NODE`: "why didn't Bob get it?" in one command.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use wsroute_core::ids::{NodeId, UserId};
use wsroute_core::nodes::NodeReader;
use wsroute_core::routes::RouteReader;

use crate::output::{human_ms, now_ms, table};

pub async fn get(
    table_: &RouteReader,
    nodes: &NodeReader,
    user: &str,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let user = match UserId::parse(user) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("router-cli: {user:?} is not a valid user id: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let routes = table_
        .lookup(&user)
        .await
        .context("reading the route table")?;
    let nodes = nodes.list_nodes().await.context("reading the node list")?;
    let alive = |n: &NodeId| nodes.iter().any(|r| &r.node == n && r.alive());
    if as_json {
        let v = json!({
            "user": user.as_str(),
            "connections": routes.iter().map(|r| json!({
                "conn_id": r.conn.as_str(),
                "node": r.node.as_str(),
                "device": r.device.as_deref(),
                "connected_at_ms": r.connected_at_ms,
                "node_alive": alive(&r.node),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if routes.is_empty() {
        println!("{user}: no live connections (messages to {user} go to the inbox)");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                user.to_string(),
                r.node.to_string(),
                if alive(&r.node) { "live" } else { "dead" }.into(),
                r.conn.to_string(),
                r.device.as_deref().unwrap_or("-").to_owned(),
                human_ms(now - r.connected_at_ms),
            ]
        })
        .collect();
    table(
        &["USER", "NODE", "NODE STATE", "CONN", "DEVICE", "CONNECTED"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list(table_: &RouteReader, node: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let node = match NodeId::parse(node) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("router-cli: {node:?} is not a valid node id: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let entries = table_
        .node_routes(&node)
        .await
        .context("reading the route table")?;
    if as_json {
        let v = json!({
            "node": node.as_str(),
            "connections": entries.iter().map(|(conn, user)| json!({"conn_id": conn, "user": user})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("{node}: no connections");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|(conn, user)| vec![user, conn])
        .collect();
    table(&["USER", "CONN"], &rows);
    println!("{} connection(s) on {node}", rows.len());
    Ok(ExitCode::SUCCESS)
}
