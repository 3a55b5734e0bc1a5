//! `wsroute-server`: parse the configuration, start the node, drain it on SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsroute_server::config::{Args, Config};
use wsroute_server::node::Node;

fn main() -> ExitCode {
    let config = match Config::resolve(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsroute-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing();

    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let system = actix_web::rt::System::with_tokio_rt(|| {
        runtime().expect("the operating system can start a tokio runtime")
    });
    system.block_on(async move {
        let node = match Node::start(config).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("wsroute-server: {e}");
                return if e.is_configuration() {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = node.state.drain_requested.cancelled() => {}
        }
        node.drain().await;
        ExitCode::SUCCESS
    })
}

/// `WSROUTE_LOG` (or `RUST_LOG`) sets levels per module, e.g. `info,wsroute_server::mesh=debug`;
/// `WSROUTE_LOG_FORMAT=json` writes one JSON object per line.
fn init_tracing() {
    let filter = EnvFilter::try_from_env("WSROUTE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("WSROUTE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop this node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
