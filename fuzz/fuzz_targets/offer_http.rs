//! The signalling path: join tokens (forged, expired, wrong channel, or valid) and SDP
//! offers through the real HTTP router of an edge. No request may end in a server error.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use edge_sfu::http::{router, AppState};
use edge_sfu::token::{unix_now, Claims, Role, TokenKeys};
use libfuzzer_sys::fuzz_target;
use media::dtls::DtlsIdentity;
use tower::ServiceExt;

const SECRET: &[u8] = b"fuzz-token-secret-of-32-bytes-or-more";

struct Http {
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn http() -> &'static Http {
    static HTTP: OnceLock<Http> = OnceLock::new();
    HTTP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let app = runtime.block_on(async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let (edge, _task) = edge_sfu::server::start(
                Default::default(),
                socket,
                |a| a,
                DtlsIdentity::generate().unwrap(),
                Duration::from_secs(5),
                None,
                None,
            )
            .unwrap();
            router(
                AppState {
                    edge: edge_sfu::workers::Workers::new(vec![edge], Default::default()),
                    tokens: TokenKeys::new(SECRET),
                    demo_tokens: true,
                    admin_token: Some(node_kit::Secret::new("admin", "fuzz-admin-token-of-32-bytes-or-more").unwrap()),
                    offer_limiter: node_kit::per_ip::PerIpLimiter::new(1_000_000, 1_000_000),
                    core_url: Some("http://127.0.0.1:9".into()),
                    offers_rate_limited: Default::default(),
                    http_stats: Default::default(),
                    join_refusals: Default::default(),
                    drain_deadline: std::time::Duration::from_secs(600),
                    metrics: std::sync::Arc::new(
                        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
                    ),
                    node: "fuzz".into(),
                },
                "*",
            )
        });
        Http { runtime, app }
    })
}

// Bytes 0-3 choose the endpoint, the token (none, speaker, listener, expired, other
// channel, forged), the content type and the channel; the rest is the body (seeds:
// real Chromium, Firefox and aiortc offers).
fuzz_target!(|data: &[u8]| {
    let Some((&[endpoint, token, content_type, channel], body)) = data.split_first_chunk::<4>().map(|(a, b)| (a, b))
    else {
        return;
    };
    let h = http();
    let channel = match channel % 4 {
        0 => "lobby".to_owned(),
        1 => "a".repeat(65),
        2 => "..".to_owned(),
        _ => {
            String::from_utf8_lossy(&body[..body.len().min(8)]).chars().filter(|c| c.is_ascii_alphanumeric()).collect()
        }
    };
    let (method, path) = match endpoint % 6 {
        0 => (Method::POST, format!("/whip/{channel}")),
        1 => (Method::POST, format!("/whep/{channel}")),
        2 => (Method::POST, format!("/join/{channel}")),
        3 => (Method::GET, format!("/channels/{channel}")),
        4 => (Method::DELETE, format!("/session/{channel}")),
        _ => (Method::GET, format!("/demo/token?channel={channel}&name={channel}&role=listener")),
    };
    let sign = |role, channel: &str, exp| {
        TokenKeys::new(SECRET).sign(&Claims { sub: "fuzz".into(), channel: channel.into(), role, exp })
    };
    let token = match token % 6 {
        0 => None,
        1 => Some(sign(Role::Speaker, &channel, unix_now() + 100)),
        2 => Some(sign(Role::Listener, &channel, unix_now() + 100)),
        3 => Some(sign(Role::Speaker, &channel, unix_now() - 100)),
        4 => Some(sign(Role::Speaker, "elsewhere", unix_now() + 100)),
        _ => Some(String::from_utf8_lossy(body).into_owned()),
    };
    let mut req =
        Request::builder().method(method).uri(path).extension(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 1))));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if content_type % 2 == 0 {
        req = req.header(header::CONTENT_TYPE, "application/sdp");
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else { return };
    let response = h.runtime.block_on(h.app.clone().oneshot(req)).unwrap();
    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
});
