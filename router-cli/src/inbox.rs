//! `inbox USER`: what waits for a user who is offline (or has not acked): depth and the oldest.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};
use wsroute_core::ids::UserId;
use wsroute_core::inbox::InboxReader;

use crate::output::{human_ms, now_ms, table};

pub async fn show(inbox: &InboxReader, user: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let user = match UserId::parse(user) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("router-cli: {user:?} is not a valid user id: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let messages = inbox.fetch(&user).await.context("reading the inbox")?;
    let now = now_ms();
    let rows: Vec<(String, String, i64, usize)> = messages
        .iter()
        .map(|(id, frame)| {
            let v: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
            (
                id.to_string(),
                v["from"].as_str().unwrap_or("?").to_owned(),
                v["ts"].as_i64().unwrap_or(0),
                frame.len(),
            )
        })
        .collect();
    if as_json {
        let v = json!({
            "user": user.as_str(),
            "depth": rows.len(),
            "oldest_age_ms": rows.first().map(|(_, _, ts, _)| now - ts),
            "messages": rows.iter().map(|(id, from, ts, bytes)| json!({
                "id": id, "from": from, "ts": ts, "age_ms": now - ts, "bytes": bytes,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    match rows.first() {
        None => println!("{user}: inbox empty"),
        Some((id, from, ts, _)) => {
            println!(
                "{user}: {} message(s) waiting; oldest {id} from {from}, {} ago",
                rows.len(),
                human_ms(now - ts)
            );
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|(id, from, ts, bytes)| {
                    vec![
                        id.clone(),
                        from.clone(),
                        human_ms(now - ts),
                        bytes.to_string(),
                    ]
                })
                .collect();
            table(&["ID", "FROM", "AGE", "BYTES"], &table_rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}
