//! HTTP signalling in the style of WHIP (publish) and WHEP (listen), plus `join` for
//! participants who do both, the demo page, and health.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use media::ice::random_credentials;
use media::sdp_offer::{build_answer, AnswerParams, MediaAnswer, Offer, MAX_OFFER_LEN};
use media::Ssrc;
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{debug, warn};

use crate::edge::{AdmitError, NewSession, PublishParams, SlotParams};
use crate::token::{unix_now, Claims, Role, TokenError, TokenKeys};
use crate::workers::Workers;

const DEMO_PAGE: &str = include_str!("demo.html");
const RETRY_AFTER_SECS: &str = "5";

#[derive(Clone)]
pub struct AppState {
    pub edge: Workers,
    pub tokens: TokenKeys,
    pub demo_tokens: bool,
    /// Operators' bearer token for channel detail; without one, only join tokens of the channel.
    pub admin_token: Option<node_kit::Secret>,
    pub offer_limiter: Arc<node_kit::per_ip::PerIpLimiter>,
    /// The core's placement URL: clients this edge cannot take go back there.
    pub core_url: Option<String>,
    /// Offers refused with 429.
    pub offers_rate_limited: Arc<std::sync::atomic::AtomicU64>,
    pub http_stats: Arc<node_kit::http::HttpStats>,
    pub join_refusals: Arc<JoinRefusals>,
    /// How long a drain lets sessions stay when the request names no deadline.
    pub drain_deadline: std::time::Duration,
    /// This node's metrics registry (several nodes may share a process).
    pub metrics: std::sync::Arc<metrics_exporter_prometheus::PrometheusRecorder>,
    pub node: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// WHIP: the client sends.
    Publish,
    /// WHEP: the client receives.
    Listen,
    /// Both.
    Join,
}

pub fn router(state: AppState, cors_allow_origin: &str) -> Router {
    let origin = if cors_allow_origin == "*" {
        AllowOrigin::any()
    } else {
        let origins: Vec<HeaderValue> =
            cors_allow_origin.split(',').filter_map(|o| HeaderValue::from_str(o.trim()).ok()).collect();
        AllowOrigin::list(origins)
    };
    let cors = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION, header::RETRY_AFTER]);
    Router::new()
        .route("/", get(demo_page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/whip/{channel}", post(|s, p, c, q, h, b| offer(s, p, c, q, h, b, Endpoint::Publish)))
        .route("/whep/{channel}", post(|s, p, c, q, h, b| offer(s, p, c, q, h, b, Endpoint::Listen)))
        .route("/join/{channel}", post(|s, p, c, q, h, b| offer(s, p, c, q, h, b, Endpoint::Join)))
        // The same, on the worker the core placed the client on.
        .route("/w/{worker}/whip/{channel}", post(|s, p, c, q, h, b| offer(s, p, c, q, h, b, Endpoint::Publish)))
        .route("/w/{worker}/whep/{channel}", post(|s, p, c, q, h, b| offer(s, p, c, q, h, b, Endpoint::Listen)))
        .route("/w/{worker}/join/{channel}", post(|s, p, c, q, h, b| offer(s, p, c, q, h, b, Endpoint::Join)))
        .route("/session/{resource}", delete(end_session))
        .route("/channels/{channel}", get(channel_view))
        .route("/admin/drain", post(drain))
        .route("/demo/token", get(demo_token))
        .layer(DefaultBodyLimit::max(MAX_OFFER_LEN))
        .layer(cors)
        .with_state(Arc::new(state))
}

/// Why an offer got no session here (the client may have been sent back to the core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRefusal {
    RateLimited,
    BadChannel,
    /// No token, or one that does not verify.
    Unauthorized,
    /// A token for another channel, or a listener token on a publish endpoint.
    Forbidden,
    NotSdp,
    BadOffer,
    /// The offer has no audio section the endpoint can use.
    NoUsableAudio,
    TooManyPendingFromAddress,
    TooManyPending,
    ChannelFull,
    EdgeFull,
    Draining,
    ShuttingDown,
}

impl JoinRefusal {
    pub const ALL: [JoinRefusal; 13] = [
        JoinRefusal::RateLimited,
        JoinRefusal::BadChannel,
        JoinRefusal::Unauthorized,
        JoinRefusal::Forbidden,
        JoinRefusal::NotSdp,
        JoinRefusal::BadOffer,
        JoinRefusal::NoUsableAudio,
        JoinRefusal::TooManyPendingFromAddress,
        JoinRefusal::TooManyPending,
        JoinRefusal::ChannelFull,
        JoinRefusal::EdgeFull,
        JoinRefusal::Draining,
        JoinRefusal::ShuttingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JoinRefusal::RateLimited => "rate_limited",
            JoinRefusal::BadChannel => "bad_channel",
            JoinRefusal::Unauthorized => "unauthorized",
            JoinRefusal::Forbidden => "forbidden",
            JoinRefusal::NotSdp => "not_sdp",
            JoinRefusal::BadOffer => "bad_offer",
            JoinRefusal::NoUsableAudio => "no_usable_audio",
            JoinRefusal::TooManyPendingFromAddress => "too_many_pending_from_address",
            JoinRefusal::TooManyPending => "too_many_pending",
            JoinRefusal::ChannelFull => "channel_full",
            JoinRefusal::EdgeFull => "edge_full",
            JoinRefusal::Draining => "draining",
            JoinRefusal::ShuttingDown => "shutting_down",
        }
    }

    fn of(e: AdmitError) -> Self {
        match e {
            AdmitError::ChannelFull => JoinRefusal::ChannelFull,
            AdmitError::EdgeFull => JoinRefusal::EdgeFull,
            AdmitError::TooManyPending => JoinRefusal::TooManyPending,
            AdmitError::TooManyPendingFromAddress => JoinRefusal::TooManyPendingFromAddress,
            AdmitError::Draining => JoinRefusal::Draining,
        }
    }
}

/// Refused offers by reason.
pub type JoinRefusals = node_kit::reasons::ReasonCounts<{ JoinRefusal::ALL.len() }>;

/// A signalling error: a status, a plain-text reason, and optional extra headers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    header: Option<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), header: None }
    }

    fn with_header(mut self, name: header::HeaderName, value: impl Into<HeaderValue>) -> Self {
        self.header = Some((name, value.into()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.message + "\n").into_response();
        if let Some((name, value)) = self.header {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// 429 with `Retry-After` when `peer` is over its offer rate.
fn rate_limit(state: &AppState, peer: SocketAddr) -> Result<(), ApiError> {
    state.offer_limiter.check(peer.ip()).map_err(|wait| {
        state.offers_rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many offers from this address")
            .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
    })
}

pub fn valid_channel(name: &str) -> bool {
    relay_proto::valid_channel_name(name)
}

/// What an offer's URL may carry: the join token (RFC 6750 2.3, as the core's redirect
/// forwards it, since browsers drop `Authorization` on a cross-origin redirect), and the
/// edges that already refused this client.
#[derive(Deserialize, Default)]
pub struct OfferQuery {
    access_token: Option<String>,
    exclude: Option<String>,
    region: Option<String>,
}

fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: &OfferQuery,
    channel: &str,
    endpoint: Endpoint,
) -> Result<Claims, ApiError> {
    let token = node_kit::http::bearer(headers).or(query.access_token.as_deref()).ok_or(TokenError::Missing);
    let claims = token.and_then(|t| state.tokens.verify(t)).map_err(|e| {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    })?;
    if claims.channel != channel {
        let message = format!("token is for channel {:?}, not {channel:?}", claims.channel);
        return Err(ApiError::new(StatusCode::FORBIDDEN, message));
    }
    if claims.role == Role::Listener && endpoint != Endpoint::Listen {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "a listener token cannot publish"));
    }
    Ok(claims)
}

/// Sends a client this edge cannot take back to the core's placement, which picks
/// another edge (this one excluded): `None` without a core URL, or after too many edges.
fn retry_at_core(
    state: &AppState,
    headers: &HeaderMap,
    query: &OfferQuery,
    channel: &str,
    endpoint: Endpoint,
) -> Option<Response> {
    let core = state.core_url.as_deref()?;
    let mut exclude: Vec<&str> = query.exclude.as_deref().unwrap_or("").split(',').filter(|e| !e.is_empty()).collect();
    if exclude.len() >= MAX_RETRIES_AT_CORE {
        return None;
    }
    exclude.push(&state.node);
    let path = match endpoint {
        Endpoint::Publish => "whip",
        Endpoint::Listen => "whep",
        Endpoint::Join => "join",
    };
    let mut location =
        format!("{}/{path}/{channel}?exclude={}", core.trim_end_matches('/'), url_encode(&exclude.join(",")));
    if let Some(region) = query.region.as_deref().filter(|r| valid_channel(r)) {
        location += &format!("&region={region}");
    }
    if let Some(token) = node_kit::http::bearer(headers).or(query.access_token.as_deref()) {
        location += &format!("&access_token={}", url_encode(token));
    }
    let location = HeaderValue::from_str(&location).ok()?;
    Some((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response())
}

/// How many edges a client may be sent back from before it gets a 503.
const MAX_RETRIES_AT_CORE: usize = 4;

/// Percent-encodes all but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// What the answer does with each offered section, and what the session sends and receives.
struct Plan {
    answers: Vec<MediaAnswer>,
    publish: Option<PublishParams>,
    slots: Vec<SlotParams>,
}

/// Decides each offered section's fate: one publish section and up to `slots` listen sections.
fn plan(offer: &Offer, endpoint: Endpoint, slots: usize) -> Result<Plan, String> {
    let mut answers = vec![MediaAnswer::Reject; offer.media.len()];
    let mut publish = None;
    let mut listen = Vec::new();
    let bundled = |mid: &str| offer.bundle.iter().any(|m| m == mid);
    for (i, m) in offer.media.iter().enumerate() {
        let Some(audio) = &m.audio else { continue };
        let accepted_any = publish.is_some() || !listen.is_empty();
        // Without BUNDLE only one section can share our single transport.
        if accepted_any && !(bundled(&m.mid) && offer.bundle.len() > 1) {
            continue;
        }
        let take_publish = publish.is_none() && endpoint != Endpoint::Listen && audio.direction.client_sends();
        let take_slot = listen.len() < slots && endpoint != Endpoint::Publish && audio.direction.client_receives();
        let ssrc = take_slot.then(|| Ssrc(rand::random::<u32>() | 1));
        if take_publish {
            publish = Some(PublishParams { payload_type: audio.opus_pt, audio_level_ext: audio.audio_level_ext });
        }
        if let Some(ssrc) = ssrc {
            listen.push(SlotParams {
                ssrc,
                payload_type: audio.opus_pt,
                audio_level_ext: audio.audio_level_ext,
                csrc_level_ext: audio.csrc_level_ext,
            });
        }
        answers[i] = match (take_publish, ssrc) {
            (true, Some(ssrc)) => MediaAnswer::SendReceive(ssrc),
            (true, None) => MediaAnswer::Receive,
            (false, Some(ssrc)) => MediaAnswer::Send(ssrc),
            (false, None) => MediaAnswer::Reject,
        };
    }
    match endpoint {
        Endpoint::Publish | Endpoint::Join if publish.is_none() => {
            Err("offer has no audio section the client sends on (sendonly or sendrecv)".into())
        }
        Endpoint::Listen if listen.is_empty() => {
            Err("offer has no audio section the client receives on (recvonly or sendrecv)".into())
        }
        _ => Ok(Plan { answers, publish, slots: listen }),
    }
}

/// An offer's path: the channel, and the worker when the core placed the client on one.
#[derive(Deserialize)]
struct OfferPath {
    worker: Option<usize>,
    channel: String,
}

async fn offer(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(OfferPath { worker, channel }): Path<OfferPath>,
    Query(query): Query<OfferQuery>,
    headers: HeaderMap,
    body: String,
    endpoint: Endpoint,
) -> Response {
    let refuse = |reason: JoinRefusal, response: Response| {
        state.join_refusals.count(reason as usize);
        response
    };
    if let Err(e) = rate_limit(&state, peer) {
        return refuse(JoinRefusal::RateLimited, e.into_response());
    }
    if !valid_channel(&channel) {
        let message = "channel names are 1-64 characters of A-Z a-z 0-9 - _ .";
        return refuse(JoinRefusal::BadChannel, error(StatusCode::BAD_REQUEST, message));
    }
    if worker.is_some_and(|k| k >= state.edge.len()) {
        return error(StatusCode::NOT_FOUND, "no such worker on this edge");
    }
    let claims = match authorize(&state, &headers, &query, &channel, endpoint) {
        Ok(c) => c,
        Err(e) => {
            let reason =
                if e.status == StatusCode::UNAUTHORIZED { JoinRefusal::Unauthorized } else { JoinRefusal::Forbidden };
            return refuse(reason, e.into_response());
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        let message = "body must be an SDP offer (Content-Type: application/sdp)";
        return refuse(JoinRefusal::NotSdp, error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message));
    }
    let offer = match Offer::parse(&body) {
        Ok(o) => o,
        Err(e) => return refuse(JoinRefusal::BadOffer, error(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let Plan { answers, publish, slots } = match plan(&offer, endpoint, state.edge.config().slots) {
        Ok(p) => p,
        Err(e) => return refuse(JoinRefusal::NoUsableAudio, error(StatusCode::BAD_REQUEST, e)),
    };
    let (local_ufrag, local_pwd) = random_credentials();
    let resource = format!("{:032x}", rand::random::<u128>());
    let new = NewSession {
        channel: channel.as_str().into(),
        participant: claims.sub.as_str().into(),
        local_ufrag: local_ufrag.clone(),
        local_pwd: local_pwd.clone(),
        remote_ufrag: offer.ice_ufrag.clone(),
        publish,
        slots,
        rtcp_ssrc: Ssrc(rand::random::<u32>() | 1),
        client_ip: Some(peer.ip()),
    };
    let candidate = match state.edge.add_session(worker, new, resource.clone(), offer.fingerprint).await {
        Ok(Ok(placed)) => {
            debug!(session = placed.session, worker = placed.worker, %channel, participant = ?claims.sub, ?endpoint, "offer answered");
            placed.candidate
        }
        Ok(Err(e)) => {
            let reason = JoinRefusal::of(e);
            let status = match e {
                AdmitError::TooManyPendingFromAddress => StatusCode::TOO_MANY_REQUESTS,
                AdmitError::ChannelFull | AdmitError::EdgeFull | AdmitError::Draining => {
                    if let Some(back) = retry_at_core(&state, &headers, &query, &channel, endpoint) {
                        return refuse(reason, back);
                    }
                    StatusCode::SERVICE_UNAVAILABLE
                }
                AdmitError::TooManyPending => StatusCode::SERVICE_UNAVAILABLE,
            };
            let response = ApiError::new(status, e.to_string())
                .with_header(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS))
                .into_response();
            return refuse(reason, response);
        }
        Err(e) => return refuse(JoinRefusal::ShuttingDown, error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    let answer = build_answer(
        &offer,
        &AnswerParams {
            ice_ufrag: &local_ufrag,
            ice_pwd: &local_pwd,
            fingerprint: state.edge.fingerprint(),
            candidates: &[candidate],
            cname: &state.edge.config().cname,
            session_id: rand::random::<u64>() >> 1,
        },
        &answers,
    );
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp".to_owned()), (header::LOCATION, format!("/session/{resource}"))],
        answer,
    )
        .into_response()
}

/// Takes new sessions: not draining and, in cascade mode, linked to a core. Liveness
/// (`/healthz`) never depends on the core or anything else.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.edge.readiness().await {
        Ok(r) if r.ready => Json(r).into_response(),
        Ok(r) => (StatusCode::SERVICE_UNAVAILABLE, Json(r)).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct DrainQuery {
    /// How long sessions may stay, seconds (default: the configured drain deadline).
    deadline_s: Option<u64>,
}

/// Operators (admin token): stop taking sessions; those left end at the deadline. The
/// edge keeps running; `/readyz` reports the sessions left. A second drain may only bring
/// the deadline closer.
async fn drain(State(state): State<Arc<AppState>>, Query(q): Query<DrainQuery>, headers: HeaderMap) -> Response {
    if state.admin_token.is_none() {
        return error(StatusCode::NOT_FOUND, "no admin token is configured on this edge");
    }
    if !node_kit::http::bearer_is(&headers, state.admin_token.as_ref()) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "needs the admin token")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .into_response();
    }
    let deadline = match q.deadline_s.map(std::time::Duration::from_secs) {
        None => state.drain_deadline,
        Some(d) if d <= MAX_DRAIN_DEADLINE => d,
        Some(_) => return error(StatusCode::BAD_REQUEST, "deadline_s: at most 86400"),
    };
    warn!(deadline_s = deadline.as_secs(), "drain requested by an operator");
    if let Err(e) = state.edge.drain(deadline).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    match state.edge.readiness().await {
        Ok(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

const MAX_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

async fn end_session(State(state): State<Arc<AppState>>, Path(resource): Path<String>) -> Response {
    if resource.len() != 32 || !resource.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(StatusCode::NOT_FOUND, "no such session");
    }
    match state.edge.remove_session(resource).await {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such session"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Who is in a channel on this edge: for operators (admin token) and the channel's own
/// participants (a join token of the channel).
async fn channel_view(State(state): State<Arc<AppState>>, Path(channel): Path<String>, headers: HeaderMap) -> Response {
    if !valid_channel(&channel) {
        return error(StatusCode::BAD_REQUEST, "invalid channel name");
    }
    if !node_kit::http::bearer_is(&headers, state.admin_token.as_ref()) {
        match node_kit::http::bearer(&headers).map(|t| state.tokens.verify(t)) {
            Some(Ok(claims)) if claims.channel == channel => {}
            Some(Ok(_)) => return error(StatusCode::FORBIDDEN, "token is for another channel"),
            _ => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "needs the admin token or a join token of this channel")
                    .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
                    .into_response()
            }
        }
    }
    match state.edge.channel_view(channel).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such channel on this edge"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct DemoTokenQuery {
    channel: String,
    name: String,
    role: Role,
}

/// The demo page; with a core, it joins through the core's placement.
async fn demo_page(State(state): State<Arc<AppState>>) -> Html<String> {
    let core = state.core_url.as_deref().unwrap_or("");
    let escaped: String = core
        .chars()
        .map(|c| match c {
            '"' => "&quot;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    Html(DEMO_PAGE.replace("{{CORE_URL}}", &escaped))
}

async fn demo_token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<DemoTokenQuery>,
) -> Response {
    if !state.demo_tokens {
        return error(StatusCode::NOT_FOUND, "demo tokens are off on this edge; get a token from your application");
    }
    if let Err(e) = rate_limit(&state, peer) {
        return e.into_response();
    }
    if !valid_channel(&q.channel) || !crate::token::valid_participant(&q.name) {
        return error(StatusCode::BAD_REQUEST, "invalid channel or name");
    }
    warn!(channel = %q.channel, name = ?q.name, "issuing a demo token");
    let token = state.tokens.sign(&Claims { sub: q.name, channel: q.channel, role: q.role, exp: unix_now() + 3600 });
    Json(serde_json::json!({ "token": token })).into_response()
}

/// Prometheus text: the edge's counters, copied from one snapshot at scrape time so the
/// media path never touches the metrics registry.
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let (Ok(by_worker), Ok(links), Ok(readiness)) =
        (state.edge.stats_by_worker().await, state.edge.links().await, state.edge.readiness().await)
    else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "edge is shutting down");
    };
    let (c, sessions) = crate::workers::merged(&by_worker);
    let several = by_worker.len() > 1;
    metrics::with_local_recorder(state.metrics.as_ref(), || {
        let labels = [("node", state.node.clone()), ("role", "edge".to_owned())];
        for (k, worker_links) in links.iter().enumerate() {
            // Each worker links to the cores on its own: its links are told apart by worker.
            let mut link_labels = labels.to_vec();
            if several {
                link_labels.push(("worker", k.to_string()));
            }
            for link in worker_links {
                link.record(&link_labels);
            }
        }
        node_kit::process_stats::record(&labels);
        metrics::gauge!("sfu_edge_sessions", &labels).set(sessions as f64);
        metrics::gauge!("sfu_edge_workers", &labels).set(by_worker.len() as f64);
        for (k, (_, worker_sessions)) in by_worker.iter().enumerate() {
            let worker_labels = [("node", state.node.clone()), ("role", "edge".to_owned()), ("worker", k.to_string())];
            metrics::gauge!("sfu_edge_worker_sessions", &worker_labels).set(*worker_sessions as f64);
        }
        metrics::gauge!("sfu_edge_input_queue_depth", &labels).set(state.edge.input_queue_depth() as f64);
        metrics::gauge!("sfu_edge_session_capacity", &labels).set(state.edge.config().max_sessions as f64);
        metrics::gauge!("sfu_node_ready", &labels).set(f64::from(u8::from(readiness.ready)));
        metrics::counter!("sfu_edge_sessions_opened_total", &labels).absolute(c.sessions_opened);
        metrics::counter!("sfu_edge_rtp_in_total", &labels).absolute(c.rtp_in);
        metrics::counter!("sfu_edge_rtp_out_total", &labels).absolute(c.rtp_out);
        metrics::counter!("sfu_edge_rtcp_in_total", &labels).absolute(c.rtcp_in);
        metrics::counter!("sfu_edge_rtcp_out_total", &labels).absolute(c.rtcp_out);
        metrics::counter!("sfu_edge_nacks_in_total", &labels).absolute(c.nacks_in);
        metrics::counter!("sfu_edge_uplink_out_total", &labels).absolute(c.uplink_out);
        metrics::counter!("sfu_edge_relay_in_total", &labels).absolute(c.relay_in);
        metrics::counter!("sfu_edge_stale_epoch_total", &labels).absolute(c.stale_epoch);
        metrics::counter!("sfu_edge_link_stalls_total", &labels).absolute(c.link_stalls);
        metrics::counter!("sfu_edge_dtls_retired_total", &labels).absolute(c.dtls_retired);
        metrics::counter!("sfu_edge_send_errors_total", &labels).absolute(c.send_errors);
        metrics::counter!("sfu_edge_panics_total", &labels).absolute(c.panics);
        metrics::counter!("sfu_process_panics_total", &labels).absolute(node_kit::panics::total());
        metrics::counter!("sfu_edge_offers_rate_limited_total", &labels)
            .absolute(state.offers_rate_limited.load(std::sync::atomic::Ordering::Relaxed));
        metrics::counter!("sfu_http_connections_refused_total", &labels).absolute(state.http_stats.refused());
        metrics::counter!("sfu_http_header_timeouts_total", &labels).absolute(state.http_stats.timeouts());
        metrics::gauge!("sfu_http_connections", &labels).set(state.http_stats.open() as f64);
        use node_kit::metrics_catalogue::counters_by;
        counters_by("sfu_http_responses_total", &labels, "status", state.http_stats.responses());
        let closed = crate::edge::CloseReason::ALL.map(|r| (r.as_str(), c.sessions_closed(r)));
        counters_by("sfu_edge_sessions_closed_total", &labels, "reason", closed);
        let refused = JoinRefusal::ALL.map(|r| (r.as_str(), state.join_refusals.get(r as usize)));
        counters_by("sfu_edge_join_refusals_total", &labels, "reason", refused);
        let dropped = crate::edge::DropReason::ALL.map(|d| (d.as_str(), c.dropped(d)));
        counters_by("sfu_edge_dropped_total", &labels, "reason", dropped);
    });
    let mut text = state.metrics.handle().render();
    let labels = [("node", state.node.clone()), ("role", "edge".to_owned())];
    let q = &c.quality;
    for (name, h) in [
        ("sfu_edge_join_seconds", &q.join),
        ("sfu_edge_listener_loss_ratio", &q.listener_loss),
        ("sfu_edge_listener_jitter_seconds", &q.listener_jitter),
        ("sfu_edge_listener_rtt_seconds", &q.listener_rtt),
        ("sfu_edge_forward_seconds", &q.forwarding.0),
    ] {
        let help = node_kit::metrics_catalogue::find(name).map_or("", |s| s.help);
        h.render(name, help, &labels, &mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
