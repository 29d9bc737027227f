//! Logging set-up every node binary shares: `RUST_LOG` (or the binary's default filter),
//! to stderr, with colour only when stderr is a terminal (a log file or a journal gets
//! plain text).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
