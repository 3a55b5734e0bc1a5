//! `chat`: a terminal client for trying a cluster by hand, on wsroute-client's [`Client`] (so it
//! reconnects, acks, and resends what a dead node may have lost, as an app would). Prints what
//! the server sends as protocol frames; each input line `USER TEXT` sends TEXT to USER
//! (`USER {json}` sends JSON) and prints its ack when it comes.

use std::process::ExitCode;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;
use wsroute_client::{
    Ack, Client, ClientConfig, ConnectError, Event, SendError, ServerFrame, TokenSource,
};

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Node URL, e.g. ws://127.0.0.1:8081/ws
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8081/ws",
        conflicts_with = "gateway"
    )]
    url: String,
    /// Ask this node's /gateway (e.g. http://127.0.0.1:8081) which node to use, instead of --url
    #[arg(long)]
    gateway: Option<String>,
    /// Connect as this user (the node must run with --dev-auth)
    #[arg(long, conflicts_with = "token")]
    user: Option<String>,
    /// Connect with this JWT instead (the session ends when it expires)
    #[arg(long)]
    token: Option<String>,
    /// Name this device (`?device=`)
    #[arg(long)]
    device: Option<String>,
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let (mut config, place) = match &args.gateway {
        Some(g) => (ClientConfig::gateways([g.as_str()]), g.clone()),
        None => (ClientConfig::url(args.url.as_str()), args.url.clone()),
    };
    config = match (&args.user, &args.token) {
        (Some(u), _) => config.dev_user(u.as_str()),
        (None, Some(t)) => config.token_source(TokenSource::fixed(t.as_str())),
        (None, None) => {
            eprintln!("router-cli: chat needs --user USER (dev auth) or --token JWT");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(d) = &args.device {
        config = config.device(d.as_str());
    }
    let (client, mut events) = match Client::connect(config).await {
        Ok(c) => c,
        Err(ConnectError::Refused { status, body }) => {
            anyhow::bail!("{place} refused the connection: HTTP {status} {body}")
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot connect to {place}"))),
    };
    eprintln!("connected to {place}; type `USER message` and Enter to send, Ctrl-D to quit");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // One task per send waiting for its ack; each ends when its ack (or the client's end) comes.
    let mut acks: JoinSet<Result<Ack, SendError>> = JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => return Ok(ExitCode::SUCCESS),
                Some(Event::Stopped { why }) => {
                    eprintln!("router-cli: the client stopped: {why}");
                    return Ok(ExitCode::from(1));
                }
                Some(e) => print_event(e),
            },
            Some(done) = acks.join_next(), if !acks.is_empty() => match done {
                Ok(Ok(ack)) => println!("<- {}", frame_text(ServerFrame::Ack(ack))),
                Ok(Err(e)) => eprintln!("a send ended without an ack: {e}"),
                Err(e) => eprintln!("an ack task failed: {e}"),
            },
            line = lines.next_line() => {
                let Some(line) = line? else {
                    client.close().await;
                    return Ok(ExitCode::SUCCESS);
                };
                let Some((to, text)) = line.trim().split_once(' ') else {
                    if !line.trim().is_empty() {
                        eprintln!("usage: USER message");
                    }
                    continue;
                };
                let body = serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!({"text": text}));
                match client.send(to, body.clone()) {
                    Ok(pending) => {
                        println!("-> {}", json!({"type":"send","to":to,"cid":pending.cid(),"body":body}));
                        acks.spawn(pending);
                    }
                    Err(e) => eprintln!("not sent: {e}"),
                }
            }
        }
    }
}

fn print_event(e: Event) {
    match e {
        Event::Connected(h) => println!("<- {}", frame_text(ServerFrame::Hello(h))),
        Event::Disconnected { close } => match close {
            Some(c) => eprintln!("-- disconnected ({c}); reconnecting"),
            None => eprintln!("-- disconnected; reconnecting"),
        },
        Event::Message(m) => println!("<- {}", frame_text(ServerFrame::Message(m))),
        Event::Receipt(r) => println!("<- {}", frame_text(ServerFrame::Receipt(r))),
        Event::Presence(p) => println!("<- {}", frame_text(ServerFrame::Presence(p))),
        Event::Error(e) => println!("<- {}", frame_text(ServerFrame::Error(e))),
        Event::Refreshed { exp } => println!("<- {}", json!({"type":"refreshed","exp":exp})),
        Event::Stopped { why } => eprintln!("-- stopped: {why}"),
    }
}

fn frame_text(f: ServerFrame) -> String {
    serde_json::to_string(&f).unwrap_or_default()
}
