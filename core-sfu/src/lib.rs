//! Core SFU: per-channel active-speaker selection over every edge's candidates, and
//! fan-out of the selected streams to every edge with listeners of the channel.

pub mod config;
pub mod core;
pub mod server;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
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
    let (handle, quic_task) = server::start(settings.core.clone(), settings.quic, identity, settings.cluster_secret.clone().into_bytes())
        .with_context(|| format!("binding QUIC {}", settings.quic))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/channels", get(channels))
        .with_state(handle.clone());
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))?;
    let http_addr = listener.local_addr()?;
    let http_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    info!(quic = %handle.quic_addr, http = %http_addr, "core started");
    Ok(RunningCore { http_addr, handle, quic_task, http_task })
}

async fn channels(State(handle): State<server::CoreHandle>) -> Json<Vec<core::ChannelSummary>> {
    Json(handle.channels().await.unwrap_or_default())
}
