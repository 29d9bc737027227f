//! Core SFU: per-channel active-speaker selection over every edge's candidates, and
//! fan-out of the selected streams to every edge with listeners of the channel.

pub mod config;
pub mod core;
pub mod directory;
pub mod http;
pub mod lease_store;
pub mod server;

use anyhow::Context;
use std::sync::Arc;

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
    // The HTTP listener is bound first: in a fleet its address is part of the lease.
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))?;
    let http_addr = listener.local_addr()?;
    let quic_socket =
        std::net::UdpSocket::bind(settings.quic).with_context(|| format!("binding QUIC {}", settings.quic))?;
    let quic_addr = quic_socket.local_addr()?;
    let mut core_config = settings.core.clone();
    core_config.local_epoch = node_kit::token::unix_now().saturating_mul(1000).max(1);
    let store = match &settings.fleet {
        None => None,
        Some(fleet) => {
            let relay_addr = match &fleet.relay_addr {
                Some(a) => a.clone(),
                None if !quic_addr.ip().is_unspecified() => quic_addr.to_string(),
                None => anyhow::bail!(
                    "with --redis, give --relay-addr: the QUIC address {quic_addr} is not one edges can reach"
                ),
            };
            let public_url = match &fleet.public_url {
                Some(u) => u.trim_end_matches('/').to_owned(),
                None if !http_addr.ip().is_unspecified() => format!("http://{http_addr}"),
                None => anyhow::bail!(
                    "with --redis, give --public-url: the HTTP address {http_addr} is not one clients can reach"
                ),
            };
            let redis_url = std::str::from_utf8(fleet.redis.expose()).context("the Redis URL is not UTF-8")?;
            let store = lease_store::LeaseStore::new(
                redis_url,
                &fleet.redis_prefix,
                &relay_addr,
                &public_url,
                fleet.lease_ttl,
            )?;
            info!(relay = %relay_addr, url = %public_url, prefix = %fleet.redis_prefix, ttl_ms = fleet.lease_ttl.as_millis() as u64, "sharing channels through Redis leases");
            core_config.fleet =
                Some(core::FleetConfig { relay_addr, lease_ttl: fleet.lease_ttl, renew_every: fleet.lease_ttl / 3 });
            Some(Arc::new(store))
        }
    };
    let (handle, quic_task) =
        server::start(core_config, quic_socket, identity, settings.cluster_secret.expose().to_vec(), store)?;
    let placement_limiter =
        node_kit::per_ip::PerIpLimiter::new(settings.offers_per_sec_per_ip, 4 * settings.offers_per_sec_per_ip);
    placement_limiter.spawn_housekeeping(std::time::Duration::from_secs(30));
    let state = http::HttpState {
        handle: handle.clone(),
        node: settings.core.core_id.clone(),
        recorder: Arc::new(node_kit::metrics_catalogue::recorder()),
        admin_token: settings.admin_token.clone(),
        http_stats: Arc::new(Default::default()),
        placement_limiter,
        drain_deadline: settings.drain_deadline,
        token_keys: settings.token_secret.as_ref().map(|s| node_kit::token::TokenKeys::new(s.expose())),
        placement_refusals: Default::default(),
    };
    let state_stats = state.http_stats.clone();
    let app = http::router(state, &settings.cors_allow_origin);
    let http_task = tokio::spawn(node_kit::http::serve(listener, app, settings.http_limits, state_stats));
    info!(quic = %handle.quic_addr, http = %http_addr, "core started");
    Ok(RunningCore { http_addr, handle, quic_task, http_task })
}
