//! Core SFU: per-channel active-speaker selection over every edge's candidates, and
//! fan-out of the selected streams to every edge with listeners of the channel.

pub mod config;
pub mod core;
pub mod directory;
pub mod http;
pub mod server;

use anyhow::Context;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusBuilder;
use relay_proto::endpoint::TlsIdentity;
use tracing::info;

pub use config::{CoreArgs, CoreSettings};

pub struct RunningCore {
    pub http_addr: std::net::SocketAddr,
    pub handle: server::CoreHandle,
    pub quic_task: tokio::task::JoinHandle<()>,
    pub http_task: tokio::task::JoinHandle<()>,
}

/// Starts a core (QUIC for edges, HTTP for operators) on the current tokio runtime.
pub async fn start(settings: CoreSettings) -> anyhow::Result<RunningCore> {
    let identity = match (&settings.quic_cert, &settings.quic_key) {
        (Some(cert), Some(key)) => TlsIdentity::from_pem_files(cert, key)?,
        (None, None) => TlsIdentity::self_signed(vec!["sfu-core".to_owned(), "localhost".to_owned()])?,
        _ => anyhow::bail!("give both quic_cert and quic_key, or neither for a self-signed certificate"),
    };
    let (handle, quic_task) =
        server::start(settings.core.clone(), settings.quic, identity, settings.cluster_secret.expose().to_vec())
            .with_context(|| format!("binding QUIC {}", settings.quic))?;
    let placement_limiter =
        node_kit::per_ip::PerIpLimiter::new(settings.offers_per_sec_per_ip, 4 * settings.offers_per_sec_per_ip);
    placement_limiter.spawn_housekeeping(std::time::Duration::from_secs(30));
    let state = http::HttpState {
        handle: handle.clone(),
        node: settings.core.core_id.clone(),
        recorder: Arc::new(PrometheusBuilder::new().build_recorder()),
        admin_token: settings.admin_token.clone(),
        http_stats: Arc::new(Default::default()),
        placement_limiter,
        drain_deadline: settings.drain_deadline,
    };
    let state_stats = state.http_stats.clone();
    let app = http::router(state, &settings.cors_allow_origin);
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))?;
    let http_addr = listener.local_addr()?;
    let http_task = tokio::spawn(node_kit::http::serve(listener, app, settings.http_limits, state_stats));
    info!(quic = %handle.quic_addr, http = %http_addr, "core started");
    Ok(RunningCore { http_addr, handle, quic_task, http_task })
}
