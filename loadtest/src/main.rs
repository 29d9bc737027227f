use clap::{Parser, Subcommand};
use loadtest::cluster::{ClusterSpec, LocalCluster};
use tracing_subscriber::EnvFilter;

/// Local clusters and load tests for the cascading SFU.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a core and several edges on loopback and print each edge's demo page.
    Cluster {
        /// Number of edges.
        #[arg(long, default_value_t = 3)]
        edges: usize,
        /// Active speakers per channel.
        #[arg(long, default_value_t = 3)]
        slots: usize,
        /// First edge's HTTP port; the others follow.
        #[arg(long, default_value_t = 8081)]
        http_port: u16,
        /// First edge's UDP media port; the others follow.
        #[arg(long, default_value_t = 3479)]
        udp_port: u16,
        /// The core's QUIC port.
        #[arg(long, default_value_t = 4433)]
        quic_port: u16,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,webrtc_dtls=error,webrtc_srtp=error")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Cluster { edges, slots, http_port, udp_port, quic_port } => {
            anyhow::ensure!(edges >= 1, "at least one edge");
            let cluster = LocalCluster::start(ClusterSpec {
                edges,
                slots,
                core_quic_port: quic_port,
                first_http_port: http_port,
                first_udp_port: udp_port,
                ..ClusterSpec::default()
            })?;
            println!("Local cascade: a core on QUIC {} and {edges} edges.", cluster.core_quic_addr().expect("core running"));
            for (i, url) in cluster.edge_urls().iter().enumerate() {
                println!("  edge {}: {url}", i + 1);
            }
            println!("Talk on one edge's page and listen on another's. Ctrl-C stops the cluster.");
            let (tx, rx) = std::sync::mpsc::channel();
            let signals = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::spawn(move || {
                signals.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
                let _ = tx.send(());
            });
            let _ = rx.recv();
            drop(cluster);
            Ok(())
        }
    }
}
