//! Serving an axum router on the open internet: at most `max_connections` at once and
//! `max_connections_per_ip` from one address (more are closed on accept), headers within `header_timeout` (also the idle limit between
//! requests on a kept-alive connection), and each request, body included, within
//! `request_timeout`. HTTP/1.1 only; put a TLS terminator in front for HTTPS.
//! Handlers can read the peer address with `ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold open.
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_connections_per_ip: 64,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// One open connection counted against its address; released on drop.
struct PerIpSlot {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerIpSlot {
    fn take(table: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<PerIpSlot> {
        let key = crate::per_ip::key(ip);
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.entry(key).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot { table: table.clone(), key })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.key);
            }
        }
    }
}

/// What the server refused or cut short, and the statuses it answered, for metrics.
#[derive(Debug)]
pub struct HttpStats {
    pub connections_refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub connections_open: AtomicU64,
    /// Responses by status code, 100 to 599.
    responses: Box<[AtomicU64]>,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            connections_refused: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            responses: (100..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl HttpStats {
    pub fn count_response(&self, status: StatusCode) {
        if let Some(n) = self.responses.get(usize::from(status.as_u16()).wrapping_sub(100)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (status, responses) for every status answered at least once.
    pub fn responses(&self) -> Vec<(u16, u64)> {
        (100u16..600)
            .zip(self.responses.iter())
            .map(|(status, n)| (status, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    pub fn timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }
}

/// Counts every response by status (timeouts and refusals included).
async fn count_responses(
    axum::extract::State(stats): axum::extract::State<Arc<HttpStats>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    stats.count_response(response.status());
    response
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits, stats: Arc<HttpStats>) {
    let app = app
        .layer(RequestBodyTimeoutLayer::new(limits.request_timeout))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .layer(axum::middleware::from_fn_with_state(stats.clone(), count_responses));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut last_accept_error: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                let now = std::time::Instant::now();
                if last_accept_error.is_none_or(|t| now.duration_since(t) > Duration::from_secs(5)) {
                    last_accept_error = Some(now);
                    tracing::warn!(error = %e, "http accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let Some(per_ip) = PerIpSlot::take(&per_ip, peer.ip(), limits.max_connections_per_ip) else {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let stats = stats.clone();
        tokio::spawn(async move {
            stats.connections_open.fetch_add(1, Ordering::Relaxed);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
            stats.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop((permit, per_ip));
        });
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Whether the request's bearer token is `secret` (compared in constant time); false
/// when no secret is configured.
pub fn bearer_is(headers: &axum::http::HeaderMap, secret: Option<&crate::Secret>) -> bool {
    match (secret, bearer(headers)) {
        (Some(secret), Some(given)) => {
            let (a, b) = (secret.expose(), given.as_bytes());
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        }
        _ => false,
    }
}
