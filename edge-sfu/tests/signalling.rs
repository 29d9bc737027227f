//! HTTP signalling against a running edge core: what a good offer gets, and the clear
//! error each kind of bad request gets.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use edge_sfu::http::{router, AppState};
use edge_sfu::token::{unix_now, Claims, Role, TokenKeys};
use media::dtls::DtlsIdentity;
use tower::ServiceExt;

const SECRET: &[u8] = b"signalling-test-secret-of-32-bytes";
const ADMIN: &str = "signalling-test-admin-token-of-32-bytes";
const CLIENT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 5000);

fn offer(directions: &[&str]) -> String {
    let mids: Vec<String> = (0..directions.len()).map(|i| i.to_string()).collect();
    let mut s = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n\
         a=fingerprint:sha-256 00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1A:1B:1C:1D:1E:1F\r\n",
        mids.join(" ")
    );
    for (i, d) in directions.iter().enumerate() {
        s += &format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=ice-ufrag:cli1\r\n\
             a=ice-pwd:0123456789abcdefghijklmn\r\na=setup:actpass\r\na=rtcp-mux\r\na={d}\r\n\
             a=rtpmap:111 opus/48000/2\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"
        );
    }
    s
}

async fn app(max_listeners: usize, demo_tokens: bool) -> Router {
    app_with(
        edge_sfu::edge::EdgeConfig { max_listeners_per_channel: max_listeners, ..Default::default() },
        demo_tokens,
        1000,
    )
    .await
}

async fn app_with(config: edge_sfu::edge::EdgeConfig, demo_tokens: bool, offers_per_sec: u32) -> Router {
    app_under_core(config, demo_tokens, offers_per_sec, None).await
}

async fn app_under_core(
    config: edge_sfu::edge::EdgeConfig,
    demo_tokens: bool,
    offers_per_sec: u32,
    core_url: Option<&str>,
) -> Router {
    app_on_workers(config, demo_tokens, offers_per_sec, core_url, 1).await
}

async fn app_on_workers(
    config: edge_sfu::edge::EdgeConfig,
    demo_tokens: bool,
    offers_per_sec: u32,
    core_url: Option<&str>,
    workers: usize,
) -> Router {
    let identity = DtlsIdentity::generate().unwrap();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (handle, _task) = edge_sfu::server::start(
            config.clone(),
            socket,
            |a| a,
            identity.clone(),
            std::time::Duration::from_secs(5),
            None,
            None,
        )
        .unwrap();
        handles.push(handle);
    }
    let metrics = std::sync::Arc::new(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder());
    router(
        AppState {
            edge: edge_sfu::workers::Workers::new(handles, config),
            tokens: TokenKeys::new(SECRET),
            demo_tokens,
            admin_token: Some(node_kit::Secret::new("admin token", ADMIN).unwrap()),
            offer_limiter: node_kit::per_ip::PerIpLimiter::new(offers_per_sec, 4 * offers_per_sec),
            core_url: core_url.map(str::to_owned),
            offers_rate_limited: Default::default(),
            http_stats: Default::default(),
            join_refusals: Default::default(),
            drain_deadline: std::time::Duration::from_secs(600),
            metrics,
            node: "edge-test".into(),
        },
        "https://player.example",
    )
}

fn token(channel: &str, role: Role, exp: u64) -> String {
    token_of("p1", channel, role, exp)
}

fn token_of(sub: &str, channel: &str, role: Role, exp: u64) -> String {
    TokenKeys::new(SECRET).sign(&Claims { sub: sub.into(), channel: channel.into(), role, exp })
}

fn post(path: &str, token: Option<&str>, content_type: &str, body: String) -> Request<Body> {
    let mut r = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .extension(ConnectInfo(CLIENT));
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(Body::from(body)).unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn good_offers_are_answered_and_sessions_deleted() {
    let app = app(25, false).await;
    let listener = token("lobby", Role::Listener, unix_now() + 60);
    let (status, headers, answer) =
        send(&app, post("/whep/lobby", Some(&listener), "application/sdp", offer(&["recvonly"; 4]))).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert!(answer.contains("a=ice-lite") && answer.contains("a=setup:passive"));
    // Three slots (N=3) answered sendonly with our SSRCs, the fourth rejected.
    assert_eq!(answer.matches("a=sendonly").count(), 3, "{answer}");
    assert_eq!(answer.matches("m=audio 0 ").count(), 1, "{answer}");
    assert_eq!(answer.matches(" cname:").count(), 3);
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/session/"));
    let delete = Request::builder().method(Method::DELETE).uri(&location).body(Body::empty()).unwrap();
    assert_eq!(send(&app, delete).await.0, StatusCode::OK);
    let again = Request::builder().method(Method::DELETE).uri(&location).body(Body::empty()).unwrap();
    assert_eq!(send(&app, again).await.0, StatusCode::NOT_FOUND);

    let speaker = token("lobby", Role::Speaker, unix_now() + 60);
    let (status, _, answer) =
        send(&app, post("/join/lobby", Some(&speaker), "application/sdp", offer(&["sendrecv", "recvonly"]))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(answer.contains("a=sendrecv") && answer.contains("a=sendonly"), "{answer}");
    let (status, _, answer) =
        send(&app, post("/whip/lobby", Some(&speaker), "application/sdp", offer(&["sendonly"]))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(answer.contains("a=recvonly"), "{answer}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let app = app(1, false).await;
    let now = unix_now();
    let listener = token("lobby", Role::Listener, now + 60);
    let good = offer(&["recvonly"]);
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (post("/whep/lobby", None, "application/sdp", good.clone()), StatusCode::UNAUTHORIZED, "missing bearer token"),
        (
            post("/whep/lobby", Some("abc.def.ghi"), "application/sdp", good.clone()),
            StatusCode::UNAUTHORIZED,
            "invalid token",
        ),
        (
            post(
                "/whep/lobby",
                Some(&TokenKeys::new(b"forged").sign(&Claims {
                    sub: "x".into(),
                    channel: "lobby".into(),
                    role: Role::Speaker,
                    exp: now + 60,
                })),
                "application/sdp",
                good.clone(),
            ),
            StatusCode::UNAUTHORIZED,
            "invalid token",
        ),
        (
            post("/whep/lobby", Some(&token("lobby", Role::Listener, now - 600)), "application/sdp", good.clone()),
            StatusCode::UNAUTHORIZED,
            "expired",
        ),
        (post("/whep/other", Some(&listener), "application/sdp", good.clone()), StatusCode::FORBIDDEN, "not \"other\""),
        (
            post("/whip/lobby", Some(&listener), "application/sdp", offer(&["sendonly"])),
            StatusCode::FORBIDDEN,
            "cannot publish",
        ),
        (
            post("/join/lobby", Some(&listener), "application/sdp", offer(&["sendrecv"])),
            StatusCode::FORBIDDEN,
            "cannot publish",
        ),
        (
            post("/whep/lobby", Some(&listener), "text/plain", good.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/sdp",
        ),
        (
            post("/whep/lobby", Some(&listener), "application/sdp", "v=0\r\nnonsense".into()),
            StatusCode::BAD_REQUEST,
            "not valid SDP",
        ),
        (
            post("/whep/lobby", Some(&listener), "application/sdp", good.replace("opus/48000/2", "PCMU/8000")),
            StatusCode::BAD_REQUEST,
            "Opus",
        ),
        (
            post("/whep/lobby", Some(&listener), "application/sdp", good.replace("a=rtcp-mux\r\n", "")),
            StatusCode::BAD_REQUEST,
            "rtcp-mux",
        ),
        (
            post("/whep/lobby", Some(&listener), "application/sdp", offer(&["sendonly"])),
            StatusCode::BAD_REQUEST,
            "receives on",
        ),
        (
            post("/whep/lobby", Some(&listener), "application/sdp", "v".repeat(70_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            post("/whep/bad%20name", Some(&listener), "application/sdp", good.clone()),
            StatusCode::BAD_REQUEST,
            "channel names",
        ),
    ];
    for (req, status, needle) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (got, _, body) = send(&app, req).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.contains(needle), "{what}: {body:?} should mention {needle:?}");
    }
    // The cap: the second listener of the channel waits.
    assert_eq!(
        send(&app, post("/whep/lobby", Some(&listener), "application/sdp", good.clone())).await.0,
        StatusCode::CREATED
    );
    let (status, headers, body) = send(&app, post("/whep/lobby", Some(&listener), "application/sdp", good)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "5");

    let get = |uri: &str| Request::builder().uri(uri).extension(ConnectInfo(CLIENT)).body(Body::empty()).unwrap();
    let get_with = |uri: &str, token: &str| {
        Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, get("/demo/token?channel=lobby&name=x&role=speaker")).await.0, StatusCode::NOT_FOUND);
    // Who is in a channel: its own participants (and operators) may see, nobody else.
    assert_eq!(send(&app, get("/channels/lobby")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&app, get_with("/channels/lobby", &token("other", Role::Listener, unix_now() + 60))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(&app, get_with("/channels/lobby", ADMIN)).await.0, StatusCode::OK);
    assert_eq!(send(&app, get_with("/channels/lobby", &listener)).await.0, StatusCode::OK);
    assert_eq!(send(&app, get_with("/channels/nosuch", ADMIN)).await.0, StatusCode::NOT_FOUND);
    let (status, _, body) = send(&app, get("/healthz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    // Every refused request above is visible to operators.
    let (status, _, metrics) = send(&app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("sfu_edge_sessions{node=\"edge-test\",role=\"edge\"} 1"), "{metrics}");
    assert!(
        metrics.contains("sfu_edge_dropped_total{node=\"edge-test\",role=\"edge\",reason=\"srtp_auth\"} 0"),
        "{metrics}"
    );
    let bad_delete = Request::builder().method(Method::DELETE).uri("/session/zz").body(Body::empty()).unwrap();
    assert_eq!(send(&app, bad_delete).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn web_players_on_other_origins_may_call_signalling() {
    let app = app(25, false).await;
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/whep/lobby")
        .header(header::ORIGIN, "https://player.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&app, preflight).await;
    assert!(status.is_success());
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://player.example");
    let mut req = post(
        "/whep/lobby",
        Some(&token("lobby", Role::Listener, unix_now() + 60)),
        "application/sdp",
        offer(&["recvonly"]),
    );
    req.headers_mut().insert(header::ORIGIN, "https://player.example".parse().unwrap());
    let (status, headers, _) = send(&app, req).await;
    assert_eq!(status, StatusCode::CREATED);
    let exposed = headers[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("location"), "{exposed}");
    // Another origin gets no CORS grant.
    let mut other = post("/whep/lobby", None, "application/sdp", String::new());
    other.headers_mut().insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    let (_, headers, _) = send(&app, other).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[tokio::test]
async fn one_address_offering_too_fast_gets_429_with_retry_after() {
    let app = app_with(Default::default(), false, 2).await;
    let listener = token("lobby", Role::Listener, unix_now() + 60);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (status, headers, _) =
            send(&app, post("/whep/lobby", Some(&listener), "application/sdp", offer(&["recvonly"]))).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let secs: u64 = headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&secs));
        }
        statuses.push(status);
    }
    // The burst (4 x 2) is answered, then 429s; another address is not affected.
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 8, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 4);
    let mut other = post("/whep/lobby", Some(&listener), "application/sdp", offer(&["recvonly"]));
    other.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([198, 51, 100, 7], 1))));
    assert_eq!(send(&app, other).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn one_token_cannot_fill_a_channel_or_the_edge() {
    let config = edge_sfu::edge::EdgeConfig { max_listeners_per_channel: 5, ..Default::default() };
    let per_participant = config.max_sessions_per_participant;
    let app = app_with(config, false, 1000).await;
    let greedy = token_of("mallory", "lobby", Role::Listener, unix_now() + 60);
    let mut locations = Vec::new();
    for _ in 0..20 {
        let (status, headers, body) =
            send(&app, post("/whep/lobby", Some(&greedy), "application/sdp", offer(&["recvonly"]))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        locations.push(headers[header::LOCATION].to_str().unwrap().to_owned());
    }
    // Each new session replaced the oldest: only the newest few are still there.
    let live = |app: Router, loc: String| async move {
        let del = Request::builder().method(Method::DELETE).uri(loc).body(Body::empty()).unwrap();
        send(&app, del).await.0 == StatusCode::OK
    };
    let mut alive = Vec::new();
    for loc in &locations[..locations.len() - per_participant] {
        alive.push(live(app.clone(), loc.clone()).await);
    }
    assert!(alive.iter().all(|a| !a), "replaced sessions are gone");
    // Honest listeners still find their places: 5 - the greedy token's sessions.
    for i in 0..5 - per_participant {
        let t = token_of(&format!("honest-{i}"), "lobby", Role::Listener, unix_now() + 60);
        let (status, _, body) =
            send(&app, post("/whep/lobby", Some(&t), "application/sdp", offer(&["recvonly"]))).await;
        assert_eq!(status, StatusCode::CREATED, "honest listener {i}: {body}");
    }
    // A speaker token across many offers holds no more than its share either.
    let speaker = token_of("loud", "stage", Role::Speaker, unix_now() + 60);
    for _ in 0..50 {
        let (status, _, _) =
            send(&app, post("/join/stage", Some(&speaker), "application/sdp", offer(&["sendrecv"]))).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, _, view) = send(
        &app,
        Request::builder()
            .uri("/channels/stage")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["listeners"], per_participant, "{view}");
}

#[tokio::test]
async fn sessions_that_never_connect_are_capped() {
    let config = edge_sfu::edge::EdgeConfig { max_pending_sessions: 4, ..Default::default() };
    let app = app_with(config, false, 1000).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let t = token_of(&format!("p{i}"), "lobby", Role::Listener, unix_now() + 60);
        let (status, headers, _) =
            send(&app, post("/whep/lobby", Some(&t), "application/sdp", offer(&["recvonly"]))).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(headers.contains_key(header::RETRY_AFTER));
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..4], [StatusCode::CREATED; 4]);
    assert_eq!(statuses[4..], [StatusCode::SERVICE_UNAVAILABLE; 4]);
}

/// Offers captured from real clients (Chromium, Firefox, aiortc), as the fuzz seeds keep them.
#[tokio::test]
async fn offers_from_real_clients_are_answered() {
    let app = app(25, false).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sdp");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let offer = std::fs::read_to_string(&path).unwrap();
        // A section the client sends on makes it a talker; otherwise it listens.
        let media = &offer[offer.find("m=").unwrap()..];
        let talks = media.contains("a=sendrecv") || media.contains("a=sendonly");
        let (path_, role) = if talks { ("/join/lobby", Role::Speaker) } else { ("/whep/lobby", Role::Listener) };
        let t = token_of(&name, "lobby", role, unix_now() + 60);
        let (status, _, answer) = send(&app, post(path_, Some(&t), "application/sdp", offer)).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {answer}");
        assert!(answer.contains("a=ice-lite"), "{name}");
        seen.push(name);
    }
    for client in ["chromium", "firefox", "aiortc"] {
        assert!(seen.iter().any(|n| n.starts_with(client)), "no {client} offer in {seen:?}");
    }
}

#[tokio::test]
async fn one_address_cannot_reserve_a_channel_with_sessions_that_never_connect() {
    let config = edge_sfu::edge::EdgeConfig { max_pending_per_address: 3, ..Default::default() };
    let app = app_with(config, false, 1000).await;
    let offer_from = |i: usize, from: std::net::SocketAddr| {
        let t = token_of(&format!("p{i}"), "lobby", Role::Listener, unix_now() + 60);
        let mut req = post("/whep/lobby", Some(&t), "application/sdp", offer(&["recvonly"]));
        req.extensions_mut().insert(ConnectInfo(from));
        req
    };
    let mut statuses = Vec::new();
    for i in 0..5 {
        let (status, headers, _) = send(&app, offer_from(i, CLIENT)).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.contains_key(header::RETRY_AFTER));
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [&[StatusCode::CREATED; 3][..], &[StatusCode::TOO_MANY_REQUESTS; 2]].concat());
    let other = std::net::SocketAddr::from(([198, 51, 100, 9], 4000));
    assert_eq!(send(&app, offer_from(9, other)).await.0, StatusCode::CREATED, "another address still gets in");
}

#[tokio::test]
async fn a_full_edge_sends_clients_back_to_the_core_which_places_them_elsewhere() {
    let config = edge_sfu::edge::EdgeConfig { max_listeners_per_channel: 1, ..Default::default() };
    let app = app_under_core(config, false, 1000, Some("http://core:8070")).await;
    let exp = unix_now() + 600;
    let (alice, bob) = (token_of("alice", "lobby", Role::Listener, exp), token_of("bob", "lobby", Role::Listener, exp));
    assert_eq!(send(&app, post("/whep/lobby", Some(&alice), "application/sdp", offer(&["recvonly"]))).await.0, 201);
    // Full: back to the core, this edge added to what the client was refused by already,
    // its region and token kept (the token in the URL: the core is another origin).
    let full = post("/whep/lobby?exclude=edge-2&region=eu", Some(&bob), "application/sdp", offer(&["recvonly"]));
    let (status, headers, body) = send(&app, full).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "{body}");
    assert_eq!(
        headers[header::LOCATION].to_str().unwrap(),
        format!("http://core:8070/whep/lobby?exclude=edge-2%2Cedge-test&region=eu&access_token={bob}")
    );
    // Sent back by four edges already: the client gets the edge's own answer.
    let many = post("/whep/lobby?exclude=e1,e2,e3,e4", Some(&bob), "application/sdp", offer(&["recvonly"]));
    assert_eq!(send(&app, many).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// The port of the answer's host candidate: the worker the session was placed on.
fn candidate_port(answer: &str) -> u16 {
    let line = answer.lines().find(|l| l.starts_with("a=candidate:")).expect("a candidate");
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields[5].parse().expect("a port")
}

#[tokio::test]
async fn sessions_of_a_channel_share_a_worker_and_new_channels_go_to_the_least_loaded() {
    let app = app_on_workers(Default::default(), false, 1000, None, 2).await;
    let join = |channel: &'static str, path: String, sub: &'static str| {
        let t = token_of(sub, channel, Role::Listener, unix_now() + 60);
        let app = app.clone();
        async move {
            let (status, headers, answer) =
                send(&app, post(&path, Some(&t), "application/sdp", offer(&["recvonly"]))).await;
            assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
            (candidate_port(&answer), headers[header::LOCATION].to_str().unwrap().to_owned())
        }
    };
    let (a1, _) = join("a", "/whep/a".into(), "p1").await;
    let (a2, _) = join("a", "/whep/a".into(), "p2").await;
    assert_eq!(a1, a2, "a channel's sessions share its worker");
    let (b1, b_session) = join("b", "/whep/b".into(), "p3").await;
    assert_ne!(b1, a1, "a new channel goes to the worker with fewer sessions");
    let (c1, _) = join("c", "/whep/c".into(), "p4").await;
    assert_eq!(c1, b1, "then to the one with fewer again");
    // The core names the worker in its redirect; that placement stands.
    let (b_on_a, _) = join("b", "/w/0/whep/b".into(), "p5").await;
    assert_eq!(b_on_a, a1);
    let (b_on_b, _) = join("b", "/w/1/whep/b".into(), "p6").await;
    assert_eq!(b_on_b, b1);
    let t = token("a", Role::Listener, unix_now() + 60);
    let (status, _, _) = send(&app, post("/w/2/whep/a", Some(&t), "application/sdp", offer(&["recvonly"]))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no third worker");
    let ready = Request::builder().uri("/readyz").body(Body::empty()).unwrap();
    let (_, _, body) = send(&app, ready).await;
    assert!(body.contains("\"sessions\":6"), "{body}");
    // A session is ended wherever it lives.
    let delete = Request::builder().method(Method::DELETE).uri(&b_session).body(Body::empty()).unwrap();
    assert_eq!(send(&app, delete).await.0, StatusCode::OK);
    let ready = Request::builder().uri("/readyz").body(Body::empty()).unwrap();
    assert!(send(&app, ready).await.2.contains("\"sessions\":5"));
}

#[tokio::test]
async fn a_refused_join_leaves_no_count_behind_on_its_worker() {
    let config = edge_sfu::edge::EdgeConfig { max_listeners_per_channel: 1, ..Default::default() };
    let app = app_on_workers(config, false, 1000, None, 2).await;
    let join = |channel: &'static str, sub: &'static str| {
        let t = token_of(sub, channel, Role::Listener, unix_now() + 60);
        let app = app.clone();
        async move {
            let path = format!("/whep/{channel}");
            let (status, _, answer) = send(&app, post(&path, Some(&t), "application/sdp", offer(&["recvonly"]))).await;
            (status, (status == StatusCode::CREATED).then(|| candidate_port(&answer)))
        }
    };
    let (_, a) = join("a", "p1").await;
    let (_, b) = join("b", "p2").await;
    assert_ne!(a, b);
    let (status, _) = join("a", "p3").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the channel is full on its worker");
    // Both workers hold one session again: the next channel goes to the first.
    let (_, c) = join("c", "p4").await;
    assert_eq!(c, a, "the refused join still counts on its worker");
}
