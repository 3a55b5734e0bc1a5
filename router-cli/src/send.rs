//! `send USER BODY_JSON`: a test message through a live node's `Router.SendToUser`.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use wsroute_core::nodes::NodeReader;
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::router_client::RouterClient;

#[derive(clap::Args)]
pub struct SendArgs {
    /// Recipient user id
    user: String,
    /// Message body, any JSON value (e.g. '{"text":"hi"}')
    body: String,
    /// Sender label shown as `from` [default: api]
    #[arg(long)]
    from: Option<String>,
    /// Send through this node (default: the live node with the fewest connections)
    #[arg(long)]
    node: Option<String>,
    /// The cluster's API key
    #[arg(long, env = "WSROUTE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the API key (one trailing newline trimmed), to keep it out of `ps`
    #[arg(long, env = "WSROUTE_API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,
}

pub async fn send(
    table: &NodeReader,
    args: SendArgs,
    tls: &crate::output::GrpcTlsArgs,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&args.body) {
        eprintln!("router-cli: BODY_JSON is not valid JSON: {e}");
        return Ok(ExitCode::from(2));
    }
    let api_key = match wsroute_core::secret::secret_or_file(
        "api-key",
        args.api_key,
        args.api_key_file.as_deref(),
    ) {
        Ok(Some(key)) => key,
        Ok(None) => {
            eprintln!(
                "router-cli: send needs the API key: --api-key-file (WSROUTE_API_KEY_FILE) or --api-key (WSROUTE_API_KEY)"
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("router-cli: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let nodes = table.list_nodes().await.context("reading the node list")?;
    let node = nodes
        .iter()
        .filter(|n| n.alive() && !n.draining)
        .filter(|n| {
            args.node
                .as_deref()
                .is_none_or(|want| n.node.as_str() == want)
        })
        .min_by_key(|n| n.connections)
        .with_context(|| match &args.node {
            Some(n) => format!("node {n} is not live"),
            None => "no live node".to_owned(),
        })?;
    let channel = crate::output::grpc_channel(&node.grpc_addr, tls)
        .await
        .with_context(|| format!("cannot reach {}", node.node))?;
    let mut client = RouterClient::new(channel);
    let mut req = tonic::Request::new(pb::SendToUserRequest {
        to: args.user.clone(),
        body_json: args.body,
        from: args.from.unwrap_or_default(),
        cid: None,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {api_key}")
            .parse()
            .context("the API key must be printable ASCII")?,
    );
    let r = client
        .send_to_user(req)
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", node.node, s.message()))?
        .into_inner();
    if as_json {
        let mut v = json!({"id": r.id, "status": r.status, "devices": r.devices, "via": node.node.as_str()});
        if !r.error_code.is_empty() {
            v["error"] = json!({"code": r.error_code, "message": r.error_message});
        }
        println!("{v}");
    } else if r.status == "rejected" {
        println!(
            "{}: rejected ({}: {})",
            args.user, r.error_code, r.error_message
        );
    } else {
        println!(
            "{}: {} (devices: {}, id: {}, via {})",
            args.user, r.status, r.devices, r.id, node.node
        );
    }
    Ok(if r.status == "rejected" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
