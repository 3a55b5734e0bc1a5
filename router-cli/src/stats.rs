//! `stats NODE`: what a node says about itself over the mesh (`Mesh.Stats`): state, connections,
//! messages by outcome, cache, Redis, mesh and its peer links.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use serde_json::{Value, json};
use wsroute_core::ids::NodeId;
use wsroute_core::nodes::NodeReader;
use wsroute_proto::v1 as pb;

use crate::mesh::{MeshAuth, NodeLink};
use crate::output::{GrpcTlsArgs, human_ms, table};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The node to ask
    #[arg(value_parser = NodeId::parse)]
    node: NodeId,
    #[command(flatten)]
    auth: MeshAuth,
}

pub async fn show(
    nodes: &NodeReader,
    args: StatsArgs,
    tls: &GrpcTlsArgs,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let s = NodeLink::open(nodes, &args.node, tls, &args.auth)
        .await?
        .stats()
        .await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&s))?);
    } else {
        print_human(&s);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every message the node has sent on, whatever became of it.
pub fn messages_total(s: &pb::StatsReply) -> u64 {
    s.delivered_local + s.delivered_remote + s.stored + s.rejected
}

pub fn state(s: &pb::StatsReply) -> &'static str {
    match (s.draining, s.accepting) {
        (true, _) => "draining",
        (false, true) => "live",
        (false, false) => "not accepting",
    }
}

fn sorted(m: &HashMap<String, u64>) -> BTreeMap<&str, u64> {
    m.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

pub fn to_json(s: &pb::StatsReply) -> Value {
    json!({
        "node": s.node_id,
        "version": s.version,
        "grpc": s.grpc_addr,
        "url": s.public_url,
        "started_at_ms": s.started_at_ms,
        "uptime_ms": s.uptime_ms,
        "draining": s.draining,
        "accepting": s.accepting,
        "connections": s.connections,
        "users": s.users,
        "max_connections": s.max_connections,
        "messages": {
            "delivered_local": s.delivered_local,
            "delivered_remote": s.delivered_remote,
            "stored": s.stored,
            "rejected": s.rejected,
            "total": messages_total(s),
        },
        "rejected_by_code": sorted(&s.rejected_by_code),
        "frames_refused": sorted(&s.frames_refused),
        "route_cache": {"hits": s.route_cache_hits, "misses": s.route_cache_misses},
        "redis_ops": sorted(&s.redis_ops),
        "mesh": {
            "errors": s.mesh_errors,
            "batches": s.mesh_batches,
            "batched_messages": s.mesh_batched_messages,
        },
        "slow_consumers": s.slow_consumers,
        "unacked_dropped": s.unacked_dropped,
        "sends_in_flight": s.sends_in_flight,
        "sends_in_flight_max": s.sends_in_flight_max,
        "peers": s.peers.iter().map(|p| json!({
            "node": p.node_id,
            "grpc": p.grpc_addr,
            "stream_up": p.stream_up,
            "suspect": p.suspect,
        })).collect::<Vec<_>>(),
    })
}

/// `a 1, b 2` (or `-` when empty), sorted by name.
fn counts(m: &HashMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    sorted(m)
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_human(s: &pb::StatsReply) {
    let lookups = s.route_cache_hits + s.route_cache_misses;
    let hit_rate = if lookups > 0 {
        format!(
            " ({:.0}% hits)",
            100.0 * s.route_cache_hits as f64 / lookups as f64
        )
    } else {
        String::new()
    };
    let limit = match s.max_connections {
        0 => "no limit".to_owned(),
        n => format!("limit {n}"),
    };
    let rows: Vec<(&str, String)> = vec![
        ("node", format!("{} (wsroute {})", s.node_id, s.version)),
        ("state", state(s).to_owned()),
        ("uptime", human_ms(s.uptime_ms)),
        ("grpc", s.grpc_addr.clone()),
        ("url", s.public_url.clone()),
        (
            "connections",
            format!("{} ({} users; {limit})", s.connections, s.users),
        ),
        (
            "messages",
            format!(
                "{} (delivered_local {}, delivered_remote {}, stored {}, rejected {})",
                messages_total(s),
                s.delivered_local,
                s.delivered_remote,
                s.stored,
                s.rejected
            ),
        ),
        ("rejected by code", counts(&s.rejected_by_code)),
        ("frames refused", counts(&s.frames_refused)),
        (
            "route cache",
            format!(
                "{} hits, {} misses{hit_rate}",
                s.route_cache_hits, s.route_cache_misses
            ),
        ),
        ("redis ops", counts(&s.redis_ops)),
        (
            "mesh",
            format!(
                "{} batches ({} messages), {} errors",
                s.mesh_batches, s.mesh_batched_messages, s.mesh_errors
            ),
        ),
        ("slow consumers", s.slow_consumers.to_string()),
        ("delivered but lost", s.unacked_dropped.to_string()),
        (
            "sends in flight",
            format!("{} of {}", s.sends_in_flight, s.sends_in_flight_max),
        ),
        (
            "peers",
            match s.peers.len() {
                0 => "none dialled yet".to_owned(),
                n => format!("{n} (below)"),
            },
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &rows {
        println!("{k:<width$}  {v}");
    }
    if s.peers.is_empty() {
        return;
    }
    println!();
    let peers: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.node_id.clone(),
                p.grpc_addr.clone(),
                if p.stream_up { "up" } else { "down" }.into(),
                if p.suspect { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(&["PEER", "GRPC", "STREAM", "SUSPECT"], &peers);
}
