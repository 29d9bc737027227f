//! Core SFU: per-channel active-speaker selection over every edge's candidates, and
//! fan-out of the selected streams to every edge with listeners of the channel.

pub mod config;
pub mod core;
pub mod server;

use anyhow::Context;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
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
    let state = HttpState {
        handle: handle.clone(),
        node: settings.core.core_id.clone(),
        recorder: Arc::new(PrometheusBuilder::new().build_recorder()),
        admin_token: settings.admin_token.clone(),
        http_stats: Arc::new(Default::default()),
    };
    let state_stats = state.http_stats.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/channels", get(channels))
        .route("/channels/{channel}", get(channel))
        .route("/edges", get(edges))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))?;
    let http_addr = listener.local_addr()?;
    let http_task = tokio::spawn(node_kit::http::serve(listener, app, settings.http_limits, state_stats));
    info!(quic = %handle.quic_addr, http = %http_addr, "core started");
    Ok(RunningCore { http_addr, handle, quic_task, http_task })
}

#[derive(Clone)]
struct HttpState {
    handle: server::CoreHandle,
    node: String,
    /// Operators' bearer token; without one the operator endpoints are off.
    admin_token: Option<node_kit::Secret>,
    http_stats: Arc<node_kit::http::HttpStats>,
    /// This node's own registry: several nodes may share a process (the local cluster).
    recorder: Arc<PrometheusRecorder>,
}

/// The refusal for a request without the admin token, if it has none.
fn admin_only(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    if node_kit::http::bearer_is(headers, state.admin_token.as_ref()) {
        return None;
    }
    let message = if state.admin_token.is_some() {
        "needs the admin token (Authorization: Bearer ...)\n"
    } else {
        "operator endpoints are off: set SFU_ADMIN_TOKEN to turn them on\n"
    };
    Some((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], message).into_response())
}

async fn edges(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    Json(state.handle.edges().await.unwrap_or_default()).into_response()
}

/// One channel: its speakers (SFU speaker id, participant, edge, slot) and edges.
async fn channel(State(state): State<HttpState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    match state.handle.channel(name).await.flatten() {
        Some(detail) => Json(detail).into_response(),
        None => (StatusCode::NOT_FOUND, "no such channel\n").into_response(),
    }
}

async fn channels(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    Json(state.handle.channels().await.unwrap_or_default()).into_response()
}

/// Prometheus text: the core's counters, copied from one snapshot at scrape time so the
/// media path never touches the metrics registry.
async fn metrics_text(State(state): State<HttpState>) -> Response {
    let (Some((c, edges)), Some(channels)) = (state.handle.stats().await, state.handle.channels().await) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "core is shutting down\n").into_response();
    };
    metrics::with_local_recorder(state.recorder.as_ref(), || {
        let node = state.node.clone();
        let labels = [("node", node.clone()), ("role", "core".to_owned())];
        metrics::gauge!("sfu_core_edges", &labels).set(edges as f64);
        metrics::gauge!("sfu_core_channels", &labels).set(channels.len() as f64);
        let listeners: u64 = channels.iter().map(|c| c.listeners).sum();
        metrics::gauge!("sfu_core_listeners", &labels).set(listeners as f64);
        metrics::counter!("sfu_core_datagrams_in_total", &labels).absolute(c.datagrams_in);
        metrics::counter!("sfu_core_datagrams_out_total", &labels).absolute(c.datagrams_out);
        metrics::counter!("sfu_core_datagrams_dropped_total", &labels).absolute(c.datagrams_dropped);
        metrics::counter!("sfu_core_selection_changes_total", &labels).absolute(c.selection_changes);
        metrics::counter!("sfu_core_links_closed_misbehaving_total", &labels).absolute(c.links_closed_misbehaving);
        metrics::counter!("sfu_process_panics_total", &labels).absolute(node_kit::panics::total());
        metrics::counter!("sfu_http_connections_refused_total", &labels).absolute(state.http_stats.refused());
        metrics::counter!("sfu_http_header_timeouts_total", &labels).absolute(state.http_stats.timeouts());
        metrics::gauge!("sfu_http_connections", &labels).set(state.http_stats.open() as f64);
        for r in core::Refusal::ALL {
            let labels = [("node", node.clone()), ("role", "core".to_owned()), ("reason", r.as_str().to_owned())];
            metrics::counter!("sfu_core_refused_total", &labels).absolute(c.refused(r));
        }
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.recorder.handle().render()).into_response()
}
