//! `chat`: a terminal WebSocket client for trying a cluster by hand. Prints every frame the
//! server sends; each input line `USER TEXT` sends TEXT to USER (`USER {json}` sends JSON).

use std::process::ExitCode;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Node URL, e.g. ws://127.0.0.1:8081/ws
    #[arg(long, default_value = "ws://127.0.0.1:8081/ws")]
    url: String,
    /// Connect as this user (the node must run with --dev-auth)
    #[arg(long, conflicts_with = "token")]
    user: Option<String>,
    /// Connect with this JWT instead
    #[arg(long)]
    token: Option<String>,
    /// Ack every message received (removes it from the inbox)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_ack: bool,
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let query = match (&args.user, &args.token) {
        (Some(u), _) => format!("user={u}"),
        (None, Some(t)) => format!("token={t}"),
        (None, None) => {
            eprintln!("router-cli: chat needs --user USER (dev auth) or --token JWT");
            return Ok(ExitCode::from(2));
        }
    };
    let sep = if args.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}{query}", args.url);
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let (mut tx, mut rx) = ws.split();
    eprintln!(
        "connected to {}; type `USER message` and Enter to send, Ctrl-D to quit",
        args.url
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    loop {
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    println!("<- {t}");
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if args.auto_ack && v["type"] == "message" {
                        tx.send(Message::text(json!({"type":"ack","id":v["id"]}).to_string())).await?;
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    println!("<- close {c:?}");
                    return Ok(ExitCode::SUCCESS);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("connection failed: {e}"),
                None => return Ok(ExitCode::SUCCESS),
            },
            line = lines.next_line() => {
                let Some(line) = line? else {
                    let _ = tx.close().await;
                    return Ok(ExitCode::SUCCESS);
                };
                let Some((to, text)) = line.trim().split_once(' ') else {
                    if !line.trim().is_empty() {
                        eprintln!("usage: USER message");
                    }
                    continue;
                };
                n += 1;
                let body = serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!({"text": text}));
                let frame = json!({"type":"send","to":to,"ref":format!("c{n}"),"body":body});
                println!("-> {frame}");
                tx.send(Message::text(frame.to_string())).await?;
            }
        }
    }
}
