//! `watch`: live counts per node (connections, messages/s, stored, rejected) and cluster totals,
//! refreshed every `--interval` from each live node's `Mesh.Stats`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;
use wsroute_core::ids::NodeId;
use wsroute_core::nodes::{NodeReader, NodeRecord};
use wsroute_proto::v1 as pb;

use crate::mesh::{MeshAuth, NodeLink};
use crate::output::{GrpcTlsArgs, now_ms, table};
use crate::stats::{messages_total, state};

/// Shorter intervals would mostly measure the CLI itself.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Time between refreshes (e.g. 1s, 500ms; at least 100ms)
    #[arg(long, default_value = "1s", value_parser = interval)]
    interval: Duration,
    /// Stop after this many refreshes [default: run until Ctrl-C]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    auth: MeshAuth,
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = crate::bench::parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!("{s:?} is shorter than {MIN_INTERVAL:?}"));
    }
    Ok(d)
}

/// One node in one refresh.
struct Row {
    node: NodeId,
    stats: Result<pb::StatsReply, String>,
    /// Messages per second since the previous refresh (none on the first, or after a restart).
    rate: Option<f64>,
}

pub async fn watch(
    table_: &NodeReader,
    args: WatchArgs,
    tls: &GrpcTlsArgs,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let redraw = !as_json && std::io::stdout().is_terminal();
    let mut links: HashMap<NodeId, NodeLink> = HashMap::new();
    // Each node's message total at the previous refresh, for the rate.
    let mut previous: HashMap<NodeId, (Instant, u64)> = HashMap::new();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut refreshes = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
        }
        let nodes = table_.list_nodes().await.context("reading the node list")?;
        let sampled = join_all(
            nodes
                .into_iter()
                .filter(NodeRecord::alive)
                .map(|n| {
                    let link = links.remove(&n.node);
                    sample(n, link, tls, &args.auth)
                })
                .collect::<Vec<_>>(),
        )
        .await;
        let now = Instant::now();
        let mut rows = Vec::with_capacity(sampled.len());
        for (node, link, stats) in sampled {
            if let Some(link) = link {
                links.insert(node.clone(), link);
            }
            let rate = stats.as_ref().ok().and_then(|s| {
                let total = messages_total(s);
                let before = previous.insert(node.clone(), (now, total));
                let (then, was) = before?;
                let secs = now.duration_since(then).as_secs_f64();
                (total >= was && secs > 0.0).then(|| (total - was) as f64 / secs)
            });
            rows.push(Row {
                node,
                stats: stats.map_err(|e| format!("{e:#}")),
                rate,
            });
        }
        previous.retain(|n, _| rows.iter().any(|r| &r.node == n));
        if as_json {
            println!("{}", to_json(&rows));
        } else {
            print_table(&rows, &args, redraw, refreshes == 0);
        }
        std::io::stdout().flush().context("writing to stdout")?;
        refreshes += 1;
        if args.count.is_some_and(|c| refreshes >= c) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Asks one node for its stats, reusing its link when it still points at the same address.
async fn sample(
    node: NodeRecord,
    link: Option<NodeLink>,
    tls: &GrpcTlsArgs,
    auth: &MeshAuth,
) -> (NodeId, Option<NodeLink>, anyhow::Result<pb::StatsReply>) {
    let link = match link {
        Some(l) if l.addr == node.grpc_addr => Ok(l),
        _ => NodeLink::dial(&node.node, &node.grpc_addr, tls, auth).await,
    };
    match link {
        Ok(mut l) => {
            let stats = l.stats().await;
            // A failed call drops the link, so the next refresh dials again.
            let keep = stats.is_ok().then_some(l);
            (node.node, keep, stats)
        }
        Err(e) => (node.node, None, Err(e)),
    }
}

fn sum(rows: &[Row], f: impl Fn(&pb::StatsReply) -> u64) -> u64 {
    rows.iter()
        .filter_map(|r| r.stats.as_ref().ok())
        .map(f)
        .sum()
}

/// Sum of the known rates; none when no node has one yet.
fn total_rate(rows: &[Row]) -> Option<f64> {
    rows.iter()
        .filter_map(|r| r.rate)
        .fold(None, |acc, r| Some(acc.unwrap_or(0.0) + r))
}

fn to_json(rows: &[Row]) -> Value {
    let nodes: Vec<Value> = rows
        .iter()
        .map(|r| match &r.stats {
            Ok(s) => json!({
                "node": r.node.as_str(),
                "state": state(s),
                "connections": s.connections,
                "users": s.users,
                "messages": messages_total(s),
                "messages_per_s": r.rate,
                "delivered": s.delivered_local + s.delivered_remote,
                "stored": s.stored,
                "rejected": s.rejected,
            }),
            Err(e) => json!({"node": r.node.as_str(), "state": "unreachable", "error": e}),
        })
        .collect();
    json!({
        "ts_ms": now_ms(),
        "nodes": nodes,
        "totals": {
            "nodes": rows.len(),
            "reachable": rows.iter().filter(|r| r.stats.is_ok()).count(),
            "connections": sum(rows, |s| s.connections),
            "messages": sum(rows, messages_total),
            "messages_per_s": total_rate(rows),
            "stored": sum(rows, |s| s.stored),
            "rejected": sum(rows, |s| s.rejected),
        },
    })
}

fn rate_cell(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

fn print_table(rows: &[Row], args: &WatchArgs, redraw: bool, first: bool) {
    if redraw {
        // Cursor home and clear the screen: the table stays in place.
        print!("\x1b[H\x1b[2J");
    } else if !first {
        println!();
    }
    println!(
        "{} live node(s), every {:?}{}",
        rows.len(),
        args.interval,
        if redraw { " (Ctrl-C to stop)" } else { "" }
    );
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match &r.stats {
            Ok(s) => vec![
                r.node.to_string(),
                state(s).to_owned(),
                s.connections.to_string(),
                rate_cell(r.rate),
                (s.delivered_local + s.delivered_remote).to_string(),
                s.stored.to_string(),
                s.rejected.to_string(),
            ],
            Err(_) => vec![r.node.to_string(), "unreachable".into()],
        })
        .collect();
    cells.push(vec![
        "TOTAL".into(),
        String::new(),
        sum(rows, |s| s.connections).to_string(),
        rate_cell(total_rate(rows)),
        sum(rows, |s| s.delivered_local + s.delivered_remote).to_string(),
        sum(rows, |s| s.stored).to_string(),
        sum(rows, |s| s.rejected).to_string(),
    ]);
    table(
        &[
            "NODE",
            "STATE",
            "CONNS",
            "MSG/S",
            "DELIVERED",
            "STORED",
            "REJECTED",
        ],
        &cells,
    );
    for r in rows {
        if let Err(e) = &r.stats {
            println!("{}: {e}", r.node);
        }
    }
}
