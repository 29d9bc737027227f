//! Edge SFU: terminates WebRTC for clients, selects and forwards speakers to listeners.

pub mod budget;
pub mod config;
pub mod drain;
pub mod edge;
pub mod http;
pub mod server;
pub mod token;
pub mod workers;

use std::time::Duration;

use anyhow::Context;
use media::dtls::DtlsIdentity;
use tracing::{info, warn};

pub use config::{RunArgs, Settings};

/// A running edge: its HTTP and UDP addresses, and the tasks to await or abort.
pub struct RunningEdge {
    pub http_addr: std::net::SocketAddr,
    pub handle: workers::Workers,
    pub http_task: tokio::task::JoinHandle<()>,
    pub udp_task: tokio::task::JoinHandle<()>,
}

/// Starts an edge (UDP media and HTTP signalling) on the current tokio runtime.
pub async fn start(settings: Settings) -> anyhow::Result<RunningEdge> {
    let identity = match &settings.dtls_cert {
        Some(path) => {
            let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            DtlsIdentity::from_pem(&pem).with_context(|| format!("loading DTLS certificate {}", path.display()))?
        }
        None => DtlsIdentity::generate()?,
    };
    settings.check_safe()?;
    let secret = match &settings.token_secret {
        Some(s) => s.clone(),
        None => {
            warn!("DEVELOPMENT MODE (--dev): random token secret; /demo/token hands join tokens to anyone who asks");
            node_kit::Secret::random()
        }
    };
    if settings.dev && settings.token_secret.is_some() {
        warn!("DEVELOPMENT MODE (--dev): /demo/token hands join tokens to anyone who asks");
    }
    let listener = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))?;
    let http_addr = listener.local_addr()?;
    let n = settings.workers.max(1);
    let mut worker_config = settings.edge.clone();
    worker_config.max_sessions = workers::share(settings.edge.max_sessions, n);
    worker_config.max_pending_sessions = workers::share(settings.edge.max_pending_sessions, n);
    if settings.cascade.is_some() {
        // The core feeds each worker: a channel's listeners may spread over them.
        worker_config.max_listeners_per_channel = workers::share(settings.edge.max_listeners_per_channel, n);
    }
    let mut handles = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    let mut edge_id = None;
    // How the edge reaches its cores (read once); each worker links as an edge of its own.
    let mut edge_relay: Option<server::RelayConfig> = None;
    for k in 0..n {
        let mut addr = settings.udp;
        if addr.port() != 0 {
            addr.set_port(settings.udp.port() + k as u16);
        }
        let udp = bind_media(addr).await?;
        let udp_addr = udp.local_addr()?;
        let id = edge_id
            .get_or_insert_with(|| {
                settings.cascade.as_ref().and_then(|c| c.edge_id.clone()).unwrap_or_else(|| format!("edge-{udp_addr}"))
            })
            .clone();
        let relay = match &settings.cascade {
            Some(c) => {
                if edge_relay.is_none() {
                    edge_relay = Some(relay_config(c, &worker_config, http_addr, &id)?);
                }
                let edge = edge_relay.as_ref().expect("set above");
                let mut worker = edge.clone();
                worker.edge_id = workers::worker_edge_id(&edge.edge_id, k, n);
                worker.signalling_url = workers::worker_url(&edge.signalling_url, k, n);
                Some(worker)
            }
            None => None,
        };
        let candidate_settings = settings.clone();
        let (handle, task) = server::start(
            worker_config.clone(),
            udp,
            move |bound| candidate_settings.candidate(bound),
            identity.clone(),
            settings.handshake_timeout,
            relay,
            (!settings.media_cpus.is_empty()).then(|| settings.media_cpus[k % settings.media_cpus.len()]),
        )?;
        handles.push(handle);
        tasks.push(task);
    }
    let node = edge_id.expect("at least one worker");
    let handle = workers::Workers::new(handles, settings.edge.clone());
    // The media task ends when any worker's does.
    let udp_task = tokio::spawn(async move {
        let _ = futures_util::future::select_all(tasks).await;
    });
    let offer_limiter =
        node_kit::per_ip::PerIpLimiter::new(settings.offers_per_sec_per_ip, 4 * settings.offers_per_sec_per_ip);
    offer_limiter.spawn_housekeeping(Duration::from_secs(30));
    let http_stats = std::sync::Arc::new(node_kit::http::HttpStats::default());
    let state = http::AppState {
        edge: handle.clone(),
        tokens: token::TokenKeys::new(secret.expose()),
        demo_tokens: settings.dev,
        admin_token: settings.admin_token.clone(),
        offer_limiter,
        core_url: settings.cascade.as_ref().and_then(|c| c.core_url.clone()),
        offers_rate_limited: Default::default(),
        http_stats: http_stats.clone(),
        join_refusals: Default::default(),
        drain_deadline: settings.drain_deadline,
        metrics: std::sync::Arc::new(node_kit::metrics_catalogue::recorder()),
        node,
    };
    let app = http::router(state, &settings.cors_allow_origin);
    let http_task = tokio::spawn(node_kit::http::serve(listener, app, settings.http_limits, http_stats));
    info!(http = %http_addr, udp = ?handle.udp_addrs(), workers = n, "edge started");
    Ok(RunningEdge { http_addr, handle, http_task, udp_task })
}

/// How the edge reaches its cores, with one worker's share (`edge`) of its limits.
fn relay_config(
    c: &config::CascadeSettings,
    edge: &edge::EdgeConfig,
    http_addr: std::net::SocketAddr,
    edge_id: &str,
) -> anyhow::Result<server::RelayConfig> {
    use relay_proto::endpoint::Trust;
    use rustls_pki_types::pem::PemObject;
    let trust = match &c.core_ca {
        Some(path) => Trust::Roots(
            rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
        ),
        None => Trust::ClusterSecretOnly,
    };
    Ok(server::RelayConfig {
        cores: c.core.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect(),
        cluster_secret: c.cluster_secret.expose().to_vec(),
        edge_id: edge_id.to_owned(),
        signalling_url: c.public_url.clone().unwrap_or_else(|| format!("http://{http_addr}")),
        capacity: edge.max_listeners_per_channel as u32,
        max_sessions: edge.max_sessions as u32,
        region: c.region.clone(),
        trust,
        slots: edge.slots,
    })
}

/// How long a demo or test token lives by default.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A media worker's socket, bound to `addr`, sending with don't-fragment set.
async fn bind_media(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    let udp = tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("binding UDP {addr}"))?;
    dont_fragment(&udp).with_context(|| format!("setting don't-fragment on UDP {addr}"))?;
    Ok(udp)
}

/// Media leaves with don't-fragment set, and the kernel ignores path-MTU news from ICMP
/// (`IP_PMTUDISC_PROBE`, as quinn does). Our datagrams are small (voice packets of a few
/// hundred bytes, STUN, DTLS records of at most 1,200), so refusing to fragment costs
/// nothing on an internet path; a forged "fragmentation needed" cannot shrink what we
/// send; and an unconnected socket's IPv4 packets with DF carry ID 0, sparing each send
/// the kernel's shared, hashed ID counters (one cache line per destination, shared by
/// every core).
fn dont_fragment(socket: &tokio::net::UdpSocket) -> std::io::Result<()> {
    use rustix::net::sockopt;
    match socket.local_addr()? {
        std::net::SocketAddr::V4(_) => sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::PROBE)?,
        std::net::SocketAddr::V6(_) => {
            sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::PROBE)?;
            // A dual-stack socket's IPv4 traffic follows the IPv4 option.
            let _ = sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::PROBE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rustix::net::sockopt;

    #[tokio::test]
    async fn media_sockets_send_with_dont_fragment_and_ignore_icmp_path_mtu() {
        let v4 = super::bind_media(([127, 0, 0, 1], 0).into()).await.unwrap();
        assert_eq!(sockopt::ip_mtu_discover(&v4).unwrap(), sockopt::Ipv4PathMtuDiscovery::PROBE);
        // IPv6 where the host has it.
        let v6_loopback = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        if std::net::UdpSocket::bind(v6_loopback).is_ok() {
            let v6 = super::bind_media(v6_loopback).await.unwrap();
            assert_eq!(sockopt::ipv6_mtu_discover(&v6).unwrap(), sockopt::Ipv6PathMtuDiscovery::PROBE);
        }
    }
}
