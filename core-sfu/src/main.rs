use clap::Parser;
use core_sfu::{CoreArgs, CoreSettings};

/// jemalloc, as the edge: it keeps less memory than glibc's malloc across many threads
/// (benches/RESULTS.md, "Memory per listener and the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Core SFU: selects a channel's active speakers across edges and fans them out.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: CoreArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    node_kit::logging::init("info");
    node_kit::panics::install_hook();
    let settings = CoreSettings::resolve(&Cli::parse().args)?;
    let core = core_sfu::start(settings).await?;
    println!(
        "Core SFU running: QUIC {} for edges, http://{}/channels for operators.",
        core.handle.quic_addr, core.http_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = core.quic_task => anyhow::bail!("core task stopped"),
        _ = core.http_task => anyhow::bail!("http server stopped"),
    }
    // Other cores of a fleet take this core's channels now, not when the leases expire;
    // the edges are told to ask again. Give those messages a moment to leave.
    tracing::info!("stopping: handing channels over");
    core.handle.hand_over().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(())
}
