//! `drain NODE`: ask a node over the mesh to drain (as on SIGTERM): it stops accepting clients,
//! hands its clients to other nodes in waves, removes its routes and exits.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_client::MeshClient;
use wsroute_server::ids::NodeId;
use wsroute_server::route::registry::RouteTable;

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The node to drain
    node: String,
    /// The cluster's mesh secret
    #[arg(long, env = "WSROUTE_MESH_SECRET", hide_env_values = true)]
    mesh_secret: Option<String>,
    /// Return at once instead of waiting until the node has left the route table
    #[arg(long)]
    no_wait: bool,
    /// Longest to wait, in seconds
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub async fn drain(
    table: &RouteTable,
    args: DrainArgs,
    tls: &crate::output::GrpcTlsArgs,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let node = match NodeId::parse(&args.node) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("router-cli: {:?} is not a valid node id: {e}", args.node);
            return Ok(ExitCode::from(2));
        }
    };
    let addr = table
        .node_grpc_addr(&node)
        .await
        .context("reading the route table")?
        .filter(|a| !a.is_empty())
        .with_context(|| format!("node {node} is not registered"))?;
    let channel = crate::output::grpc_channel(&addr, tls)
        .await
        .with_context(|| format!("cannot reach {node}"))?;
    let mut client = MeshClient::new(channel);
    let mut req = tonic::Request::new(pb::DrainRequest {
        node_id: node.to_string(),
    });
    if let Some(secret) = &args.mesh_secret {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {secret}")
                .parse()
                .context("the mesh secret must be printable ASCII")?,
        );
    }
    let reply = client
        .drain(req)
        .await
        .map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))?
        .into_inner();
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
