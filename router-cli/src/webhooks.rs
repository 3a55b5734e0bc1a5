//! `webhooks dead` and `webhooks retry`: the webhook events that failed every attempt (kept in
//! Redis with their last error), and giving them back to the nodes for delivery.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use wsroute_core::webhooks::{DeadEvents, Retry};

use crate::output::{human_ms, now_ms, table};

#[derive(clap::Subcommand)]
pub enum WebhooksCommand {
    /// Webhook events given up after --webhook-max-attempts, oldest first, with their last error
    Dead {
        /// Show at most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Give dead events back for delivery (their attempts count from zero again)
    Retry {
        /// The event id (X-Wsroute-Event-Id) of the one to retry
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Retry every dead event
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(
    dead: &DeadEvents,
    command: WebhooksCommand,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        WebhooksCommand::Dead { limit } => list(dead, limit, as_json).await,
        WebhooksCommand::Retry { id, all } => {
            let which = match (id, all) {
                (_, true) => Retry::All,
                (Some(id), false) => Retry::Event(id),
                (None, false) => {
                    eprintln!("router-cli: give an event id or --all");
                    return Ok(ExitCode::from(2));
                }
            };
            let moved = dead
                .retry(&which)
                .await
                .context("moving dead webhook events back")?;
            if as_json {
                println!("{}", json!({ "retried": moved }));
            } else {
                println!("{moved} dead webhook event(s) given back for delivery");
            }
            if moved == 0
                && let Retry::Event(id) = which
            {
                eprintln!("router-cli: no dead webhook event has the id {id:?}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(dead: &DeadEvents, limit: usize, as_json: bool) -> anyhow::Result<ExitCode> {
    let (events, total) = dead
        .list(limit)
        .await
        .context("reading dead webhook events")?;
    let now = now_ms();
    if as_json {
        let v = json!({
            "total": total,
            "events": events.iter().map(|e| json!({
                "event_id": e.event_id(),
                "type": e.kind(),
                "attempts": e.attempts(),
                "error": e.error(),
                "dead_ms": e.dead_ms(),
                "body": serde_json::from_str::<serde_json::Value>(e.body()).unwrap_or(serde_json::Value::Null),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        println!("no dead webhook events");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{total} dead webhook event(s); showing {}", events.len());
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.event_id().to_owned(),
                e.kind(),
                e.attempts().to_string(),
                human_ms(now - e.dead_ms()),
                e.error().to_owned(),
            ]
        })
        .collect();
    table(
        &["EVENT ID", "TYPE", "ATTEMPTS", "DEAD FOR", "LAST ERROR"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
