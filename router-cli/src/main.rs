//! `router-cli`: see and steer a wsroute cluster (who is where, which nodes live, send a test
//! message, load it with `bench`). Exit codes: 0 success, 1 failed operation, 2 bad usage.

mod bench;
mod chat;
mod drain;
mod inbox;
mod mesh;
mod nodes;
mod output;
mod routes;
mod send;
mod stats;
mod watch;
mod webhooks;

use std::process::ExitCode;

/// The load generator shares the machine with the nodes it measures: a cheaper allocator leaves
/// them more CPU. (The nodes use the system allocator; see BENCHMARKS.md, session 8.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "router-cli", version, about = "Operate a wsroute cluster")]
struct Cli {
    /// The cluster's route table
    #[arg(
        long,
        env = "WSROUTE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    redis_url: String,
    /// Print JSON instead of a table (one document; `watch`: one object per line)
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    tls: output::GrpcTlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes registered in the route table
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Where users are connected
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Send a direct message to a user through a live node (Router.SendToUser)
    Send(send::SendArgs),
    /// Drain a node (as on SIGTERM) through the mesh and wait until it has left
    Drain(drain::DrainArgs),
    /// What a node says about itself over the mesh: state, connections, messages, cache, peers
    Stats(stats::StatsArgs),
    /// Live counts per node and in total, refreshed every --interval (Ctrl-C to stop)
    Watch(watch::WatchArgs),
    /// What waits in a user's inbox: depth, and each message's id, sender and age
    Inbox {
        /// The user id
        user: String,
    },
    /// Webhook events that failed every attempt: list them, give them back for delivery
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// Connect as a user and chat from the terminal (to try a cluster by hand)
    Chat(chat::ChatArgs),
    /// Load generator: message latency, throughput and loss, or idle-connection capacity
    Bench(bench::BenchArgs),
    /// Print a shell completion script (e.g. `router-cli completions bash`)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum NodesCommand {
    /// Every registered node, its addresses, connections and lease
    List,
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// A user's live connections and the nodes that hold them
    Get {
        /// The user id
        user: String,
    },
    /// Every connection a node holds
    List {
        /// The node id
        #[arg(long)]
        node: String,
    },
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The load generator needs every core; the other commands make a few calls.
    let mut builder = if matches!(cli.command, Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("router-cli: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("router-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap prints them; a usage error becomes one line on stderr and
/// exit 2 (the contract), without clap's usage block.
/// Keeps this process's memory in 4 KiB pages. mimalloc asks the kernel for transparent huge
/// pages, so each fresh 2 MiB of heap is faulted in and zeroed at once; opening 15,000
/// connections that cost the load generator about a quarter of its kernel time (BENCHMARKS.md,
/// session 9), CPU taken from the node it measures on the same cores. Failure (an old kernel)
/// only leaves that cost in place.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let reason = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("bad usage");
    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
    eprintln!("router-cli: {reason} (see router-cli --help)");
    ExitCode::from(2)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let redis = || output::Readers::open(&cli.redis_url);
    match cli.command {
        Command::Nodes {
            command: NodesCommand::List,
        } => nodes::list(&redis()?.nodes, cli.json).await,
        Command::Routes {
            command: RoutesCommand::Get { user },
        } => {
            let r = redis()?;
            routes::get(&r.routes, &r.nodes, &user, cli.json).await
        }
        Command::Routes {
            command: RoutesCommand::List { node },
        } => routes::list(&redis()?.routes, &node, cli.json).await,
        Command::Send(args) => send::send(&redis()?.nodes, args, &cli.tls, cli.json).await,
        Command::Drain(args) => drain::drain(&redis()?.nodes, args, &cli.tls, cli.json).await,
        Command::Stats(args) => stats::show(&redis()?.nodes, args, &cli.tls, cli.json).await,
        Command::Watch(args) => watch::watch(&redis()?.nodes, args, &cli.tls, cli.json).await,
        Command::Inbox { user } => inbox::show(&redis()?.inbox, &user, cli.json).await,
        Command::Webhooks { command } => webhooks::run(&redis()?.webhooks, command, cli.json).await,
        Command::Chat(args) => chat::chat(args).await,
        Command::Bench(args) => bench::run(args, cli.json).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "router-cli",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
