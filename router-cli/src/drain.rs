//! `drain NODE`: ask a node over the mesh to drain (as on SIGTERM): it stops accepting clients,
//! hands its clients to other nodes in waves, removes its routes and exits.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use wsroute_core::ids::NodeId;
use wsroute_core::nodes::NodeReader;

use crate::mesh::{MeshAuth, NodeLink};

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The node to drain
    #[arg(value_parser = NodeId::parse)]
    node: NodeId,
    #[command(flatten)]
    auth: MeshAuth,
    /// Return at once instead of waiting until the node has left the route table
    #[arg(long)]
    no_wait: bool,
    /// Longest to wait, in seconds
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub async fn drain(
    table: &NodeReader,
    args: DrainArgs,
    tls: &crate::output::GrpcTlsArgs,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let node = args.node;
    let reply = NodeLink::open(table, &node, tls, &args.auth)
        .await?
        .drain()
        .await?;
    if !as_json {
        println!(
            "{node}: {} ({} connections to hand over)",
            if reply.started {
                "draining"
            } else {
                "already draining"
            },
            reply.connections
        );
    }
    let mut left = true;
    if !args.no_wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        loop {
            let nodes = table.list_nodes().await.context("reading the node list")?;
            if !nodes.iter().any(|n| n.node == node) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                left = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if as_json {
        println!(
            "{}",
            json!({"node": node.as_str(), "started": reply.started, "connections": reply.connections, "left": left && !args.no_wait})
        );
    } else if !args.no_wait {
        if left {
            println!("{node}: drained and gone from the route table");
        } else {
            eprintln!(
                "router-cli: {node} still registered after {} s",
                args.timeout
            );
        }
    }
    Ok(if left {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
