use clap::{Parser, Subcommand};
use edge_sfu::token::{unix_now, Claims, Role, TokenKeys};
use edge_sfu::{RunArgs, Settings, DEFAULT_TOKEN_TTL};

/// jemalloc, not glibc's malloc: with a thread per media worker beside the shared
/// runtime's, glibc's per-thread arenas held about half as much memory again per listener
/// (benches/RESULTS.md, "Memory per listener and the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// webrtc-dtls warns about every unknown ClientHello extension; keep that out of info logs.
const DEFAULT_LOG_FILTER: &str = "info,webrtc_dtls=error,webrtc_srtp=error";

/// Edge SFU: WebRTC voice for large channels.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge (the default).
    Run(RunArgs),
    /// Print a join token signed with the configured secret.
    Token {
        #[arg(long)]
        channel: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Participant id.
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = DEFAULT_TOKEN_TTL.as_secs())]
        ttl: u64,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Drain the edge that runs with these settings (same flags, file and variables) on
    /// this machine: it takes no new sessions, and this waits until those left have gone
    /// or the drain deadline ended them. For a Kubernetes preStop hook.
    Drain {
        #[command(flatten)]
        run: RunArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    node_kit::logging::init(DEFAULT_LOG_FILTER);
    node_kit::panics::install_hook();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token { channel, role, sub, ttl, run }) => {
            let settings = Settings::resolve(&run)?;
            let secret = settings.token_secret.ok_or_else(|| {
                anyhow::anyhow!("no token secret: set SFU_TOKEN_SECRET or token_secret in the config file")
            })?;
            anyhow::ensure!(edge_sfu::http::valid_channel(&channel), "invalid channel name {channel:?}");
            let token = TokenKeys::new(secret.expose()).sign(&Claims { sub, channel, role, exp: unix_now() + ttl });
            println!("{token}");
            Ok(())
        }
        Some(Command::Drain { run }) => {
            let settings = Settings::resolve(&run)?;
            edge_sfu::drain::drain_running_edge(&settings).await
        }
        Some(Command::Run(run)) => serve(run).await,
        None => serve(cli.run).await,
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    let deadline = settings.drain_deadline;
    let edge = edge_sfu::start(settings).await?;
    println!(
        "Edge SFU running. Open http://{}/ in two browser tabs: Talk in one, Listen in the other.",
        edge.http_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = edge.http_task => anyhow::bail!("http server stopped"),
        _ = edge.udp_task => anyhow::bail!("media task stopped"),
    }
    // Drain: no new sessions; those left stay until they leave or the deadline ends them.
    // A second signal exits at once.
    tracing::info!(deadline_s = deadline.as_secs(), "signal received: draining");
    edge.handle.drain(deadline).await?;
    let drained = async {
        loop {
            match edge.handle.readiness().await {
                Ok(r) if r.sessions > 0 => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
                _ => break,
            }
        }
    };
    tokio::select! {
        _ = drained => tracing::info!("drained"),
        _ = tokio::signal::ctrl_c() => tracing::warn!("second signal: exiting before the drain ended"),
        _ = term.recv() => tracing::warn!("second signal: exiting before the drain ended"),
    }
    Ok(())
}
