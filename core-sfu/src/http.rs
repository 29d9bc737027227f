//! The core's HTTP: placement (`POST /whip|/whep|/join/{channel}` answer `307` to the
//! chosen edge), the operator API behind the admin token, health and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusRecorder;
use node_kit::metrics_catalogue::counters_by;
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::core::{self, PlaceError, PlaceRequest};
use crate::server::{self, PlaceOutcome};
use node_kit::token::{unix_now, Claims, Role, TokenKeys};

#[derive(Clone)]
pub struct HttpState {
    pub handle: server::CoreHandle,
    pub node: String,
    /// Operators' bearer token; without one the operator endpoints are off.
    pub admin_token: Option<node_kit::Secret>,
    pub http_stats: Arc<node_kit::http::HttpStats>,
    /// This node's own registry: several nodes may share a process (the local cluster).
    pub recorder: Arc<PrometheusRecorder>,
    /// Placement requests a second per client address.
    pub placement_limiter: Arc<node_kit::per_ip::PerIpLimiter>,
    /// A drain's deadline when the operator names none.
    pub drain_deadline: Duration,
    /// Signs join tokens for operators (`POST /v1/tokens`); the edges' token secret.
    pub token_keys: Option<TokenKeys>,
    pub placement_refusals: Arc<PlacementRefusals>,
}

/// Why a placement request got no redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementRefusal {
    RateLimited,
    BadChannel,
    /// The client came back from too many edges.
    TooManyEdgesTried,
    /// The channel's lease is being settled or moves between cores.
    ChannelMoving,
    NoRoom,
    StoreUnreachable,
    ShuttingDown,
    /// The chosen node's URL does not make a header.
    BadUrl,
}

impl PlacementRefusal {
    pub const ALL: [PlacementRefusal; 8] = [
        PlacementRefusal::RateLimited,
        PlacementRefusal::BadChannel,
        PlacementRefusal::TooManyEdgesTried,
        PlacementRefusal::ChannelMoving,
        PlacementRefusal::NoRoom,
        PlacementRefusal::StoreUnreachable,
        PlacementRefusal::ShuttingDown,
        PlacementRefusal::BadUrl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlacementRefusal::RateLimited => "rate_limited",
            PlacementRefusal::BadChannel => "bad_channel",
            PlacementRefusal::TooManyEdgesTried => "too_many_edges_tried",
            PlacementRefusal::ChannelMoving => "channel_moving",
            PlacementRefusal::NoRoom => "no_room",
            PlacementRefusal::StoreUnreachable => "store_unreachable",
            PlacementRefusal::ShuttingDown => "shutting_down",
            PlacementRefusal::BadUrl => "bad_url",
        }
    }
}

pub type PlacementRefusals = node_kit::reasons::ReasonCounts<{ PlacementRefusal::ALL.len() }>;

/// What a client of a channel is placed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Publish,
    Listen,
    Join,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Publish => "whip",
            Endpoint::Listen => "whep",
            Endpoint::Join => "join",
        }
    }
}

pub fn router(state: HttpState, cors_allow_origin: &str) -> Router {
    let origin = if cors_allow_origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(cors_allow_origin.split(',').filter_map(|o| HeaderValue::from_str(o.trim()).ok()))
    };
    let cors = CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION, header::RETRY_AFTER]);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/whip/{channel}", post(|s, p, c, q, h| place(s, p, c, q, h, Endpoint::Publish)))
        .route("/whep/{channel}", post(|s, p, c, q, h| place(s, p, c, q, h, Endpoint::Listen)))
        .route("/join/{channel}", post(|s, p, c, q, h| place(s, p, c, q, h, Endpoint::Join)))
        .route("/channels", get(channels))
        .route("/channels/{channel}", get(channel))
        .route("/edges", get(edges))
        .route("/v1/channels", get(channels))
        .route("/v1/channels/{channel}", get(channel))
        .route("/v1/edges", get(edges))
        .route("/v1/edges/{id}/drain", post(drain))
        .route("/v1/edges/{id}/undrain", post(undrain))
        .route("/v1/channels/{channel}/participants/{participant}/kick", post(kick))
        .route("/v1/tokens", post(mint_token))
        .layer(cors)
        .with_state(state)
}

#[derive(Deserialize, Default)]
struct PlaceQuery {
    region: Option<String>,
    /// Comma-separated edge ids that refused this client already.
    exclude: Option<String>,
    /// The join token, when it comes in the URL (RFC 6750 2.3) rather than a header.
    access_token: Option<String>,
    /// How many cores have sent this client on already (a fleet's owner redirect).
    core_hops: Option<u8>,
}

/// Most times one placement is sent from core to core (the owner moved meanwhile).
const MAX_CORE_HOPS: u8 = 2;

/// The join token of a request: `Authorization: Bearer`, else `?access_token=`.
fn join_token<'a>(headers: &'a HeaderMap, query: &'a PlaceQuery) -> Option<&'a str> {
    node_kit::http::bearer(headers).or(query.access_token.as_deref())
}

/// An edge id: 1-128 of `A-Z a-z 0-9 - _ . :` (it travels in URLs and logs).
pub fn valid_edge_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Most edges a client can have come back from before placement gives up on it.
const MAX_EXCLUDED: usize = 8;

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into() + "\n").into_response()
}

/// Places one client: `307 Temporary Redirect` to its edge, with the same method and
/// body (WHIP and WHEP clients, and browsers' fetch, follow it).
async fn place(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(channel): Path<String>,
    Query(q): Query<PlaceQuery>,
    headers: HeaderMap,
    endpoint: Endpoint,
) -> Response {
    let refuse = |reason: PlacementRefusal, response: Response| {
        state.placement_refusals.count(reason as usize);
        response
    };
    if let Err(wait) = state.placement_limiter.check(peer.ip()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
        let mut r = text(StatusCode::TOO_MANY_REQUESTS, "too many requests from this address");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return refuse(PlacementRefusal::RateLimited, r);
    }
    if !relay_proto::valid_channel_name(&channel) {
        let message = "channel names are 1-64 characters of A-Z a-z 0-9 - _ .";
        return refuse(PlacementRefusal::BadChannel, text(StatusCode::BAD_REQUEST, message));
    }
    // Browsers drop `Authorization` on a cross-origin redirect: the token travels on in
    // the edge's URL (RFC 6750 2.3). JWTs are URL-safe; anything else is not forwarded.
    let token = join_token(&headers, &q)
        .filter(|t| t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        .map(str::to_owned);
    let region = q.region.filter(|r| relay_proto::valid_channel_name(r));
    let exclude: Vec<String> =
        q.exclude.iter().flat_map(|e| e.split(',')).filter(|e| valid_edge_id(e)).map(str::to_owned).collect();
    if exclude.len() > MAX_EXCLUDED {
        let response = text(StatusCode::SERVICE_UNAVAILABLE, "no edge could take this client");
        return refuse(PlacementRefusal::TooManyEdgesTried, response);
    }
    let hops = q.core_hops.unwrap_or(0);
    let request = PlaceRequest {
        channel: channel.clone(),
        listens: endpoint != Endpoint::Publish,
        region,
        exclude: exclude.clone(),
    };
    let retry = |status: StatusCode, message: &str, secs: &'static str| {
        let mut r = text(status, message);
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        r
    };
    let location = match state.handle.place(request.clone()).await {
        Some(PlaceOutcome::Edge(placed)) => {
            let mut location = format!("{}/{}/{channel}", placed.signalling_url.trim_end_matches('/'), endpoint.path());
            if let Some(token) = &token {
                location += &format!("?access_token={token}");
            }
            location
        }
        Some(PlaceOutcome::OtherCore(url)) if hops < MAX_CORE_HOPS => {
            // The channel's owner places it; the client asks there with what it asked here.
            let mut location =
                format!("{}/{}/{channel}?core_hops={}", url.trim_end_matches('/'), endpoint.path(), hops + 1);
            if let Some(region) = &request.region {
                location += &format!("&region={region}");
            }
            if !exclude.is_empty() {
                location += &format!("&exclude={}", exclude.join(","));
            }
            if let Some(token) = &token {
                location += &format!("&access_token={token}");
            }
            location
        }
        Some(PlaceOutcome::OtherCore(_))
        | Some(PlaceOutcome::Failed(PlaceError::Pending | PlaceError::Unavailable)) => {
            let response =
                retry(StatusCode::SERVICE_UNAVAILABLE, "the channel is moving between cores; try again", "1");
            return refuse(PlacementRefusal::ChannelMoving, response);
        }
        Some(PlaceOutcome::Failed(PlaceError::NoRoom)) => {
            let response = retry(StatusCode::SERVICE_UNAVAILABLE, "no edge has room for this client", "5");
            return refuse(PlacementRefusal::NoRoom, response);
        }
        Some(PlaceOutcome::Failed(PlaceError::StoreUnreachable)) => {
            let response = retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "the channel directory (Redis) cannot be reached: new channels cannot start; channels already running go on",
                "2",
            );
            return refuse(PlacementRefusal::StoreUnreachable, response);
        }
        None => {
            let response = text(StatusCode::SERVICE_UNAVAILABLE, "core is shutting down");
            return refuse(PlacementRefusal::ShuttingDown, response);
        }
    };
    // Edge ids and region names are checked above; URLs come from edges' checked hellos or
    // the store: still, never send a header that does not parse.
    match HeaderValue::from_str(&location) {
        Ok(location) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => {
            refuse(PlacementRefusal::BadUrl, text(StatusCode::SERVICE_UNAVAILABLE, "the chosen node has no usable URL"))
        }
    }
}

/// Ends a participant's sessions in a channel on every edge that serves it.
async fn kick(
    State(state): State<HttpState>,
    Path((channel, participant)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    if !relay_proto::valid_channel_name(&channel) || !node_kit::token::valid_participant(&participant) {
        return text(StatusCode::BAD_REQUEST, "bad channel or participant name");
    }
    match state.handle.kick(channel, participant).await {
        Some(true) => Json(serde_json::json!({ "kicked": true })).into_response(),
        Some(false) => text(StatusCode::NOT_FOUND, "this core does not serve that channel"),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "core is shutting down"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    channel: String,
    participant: String,
    role: Role,
    /// Lifetime in seconds (default one hour, at most a day).
    ttl_s: Option<u64>,
}

/// The longest lifetime of a minted join token.
const MAX_TOKEN_TTL_S: u64 = 24 * 3600;

/// Mints a join token (what the application's backend does for its users).
async fn mint_token(State(state): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    let Some(keys) = &state.token_keys else {
        return text(StatusCode::NOT_FOUND, "this core has no token secret (SFU_TOKEN_SECRET)");
    };
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("expected {{channel, participant, role, ttl_s}}: {e}")),
    };
    if !relay_proto::valid_channel_name(&req.channel) || !node_kit::token::valid_participant(&req.participant) {
        return text(StatusCode::BAD_REQUEST, "bad channel or participant name");
    }
    let ttl = req.ttl_s.unwrap_or(3600);
    if !(1..=MAX_TOKEN_TTL_S).contains(&ttl) {
        return text(StatusCode::BAD_REQUEST, format!("ttl_s must be 1..={MAX_TOKEN_TTL_S}"));
    }
    let exp = unix_now() + ttl;
    let token = keys.sign(&Claims { sub: req.participant, channel: req.channel, role: req.role, exp });
    Json(serde_json::json!({ "token": token, "expires_at": exp })).into_response()
}

#[derive(Deserialize, Default)]
struct DrainQuery {
    /// Seconds the edge's sessions may stay (default: the core's drain deadline).
    deadline_s: Option<u64>,
}

/// Stops placing clients on an edge and tells it to end its sessions by the deadline.
async fn drain(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<DrainQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    let deadline = q.deadline_s.map_or(state.drain_deadline, Duration::from_secs);
    match state.handle.drain(id, Some(deadline)).await {
        Some(true) => {
            Json(serde_json::json!({ "state": "draining", "deadline_s": deadline.as_secs() })).into_response()
        }
        Some(false) => text(StatusCode::NOT_FOUND, "no such edge"),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "core is shutting down"),
    }
}

/// Places clients on the edge again (its sessions already ended stay ended).
async fn undrain(State(state): State<HttpState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_only(&state, &headers) {
        return r;
    }
    match state.handle.drain(id, None).await {
        Some(true) => Json(serde_json::json!({ "state": "ready" })).into_response(),
        Some(false) => text(StatusCode::NOT_FOUND, "no such edge"),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "core is shutting down"),
    }
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

/// Whether the core takes requests: its task runs. Redis being unreachable is reported,
/// not a reason to be taken out of service (channels it serves go on).
async fn readyz(State(state): State<HttpState>) -> Response {
    match state.handle.stats().await {
        Some((c, edges)) => {
            Json(serde_json::json!({ "ready": true, "edges": edges, "lease_store_reachable": c.lease_store_reachable }))
                .into_response()
        }
        None => text(StatusCode::SERVICE_UNAVAILABLE, "core is shutting down"),
    }
}

/// Prometheus text: the core's counters, copied from one snapshot at scrape time so the
/// media path never touches the metrics registry.
async fn metrics_text(State(state): State<HttpState>) -> Response {
    let (Some((c, edges)), Some(channels), Some(links)) =
        (state.handle.stats().await, state.handle.channels().await, state.handle.links().await)
    else {
        return (StatusCode::SERVICE_UNAVAILABLE, "core is shutting down\n").into_response();
    };
    metrics::with_local_recorder(state.recorder.as_ref(), || {
        let node = state.node.clone();
        let labels = [("node", node.clone()), ("role", "core".to_owned())];
        for link in &links {
            link.record(&labels);
        }
        node_kit::process_stats::record(&labels);
        metrics::gauge!("sfu_core_edges", &labels).set(edges as f64);
        let placement_refusals = PlacementRefusal::ALL.map(|r| (r.as_str(), state.placement_refusals.get(r as usize)));
        counters_by("sfu_core_placement_refusals_total", &labels, "reason", placement_refusals);
        metrics::gauge!("sfu_core_input_queue_depth", &labels).set(state.handle.input_queue_depth() as f64);
        // The core is ready while its task answers (as `/readyz` says).
        metrics::gauge!("sfu_node_ready", &labels).set(1.0);
        metrics::gauge!("sfu_core_channels", &labels).set(channels.len() as f64);
        let listeners: u64 = channels.iter().map(|c| c.listeners).sum();
        metrics::gauge!("sfu_core_listeners", &labels).set(listeners as f64);
        metrics::counter!("sfu_core_datagrams_in_total", &labels).absolute(c.datagrams_in);
        metrics::counter!("sfu_core_datagrams_out_total", &labels).absolute(c.datagrams_out);
        metrics::counter!("sfu_core_datagrams_dropped_total", &labels).absolute(c.datagrams_dropped);
        metrics::counter!("sfu_core_selection_changes_total", &labels).absolute(c.selection_changes);
        metrics::counter!("sfu_core_links_closed_misbehaving_total", &labels).absolute(c.links_closed_misbehaving);
        metrics::counter!("sfu_core_leases_acquired_total", &labels).absolute(c.leases_acquired);
        metrics::counter!("sfu_core_leases_lost_total", &labels).absolute(c.leases_lost);
        metrics::counter!("sfu_core_redirects_total", &labels).absolute(c.redirects);
        metrics::gauge!("sfu_core_lease_store_reachable", &labels).set(if c.lease_store_reachable { 1.0 } else { 0.0 });
        metrics::counter!("sfu_process_panics_total", &labels).absolute(node_kit::panics::total());
        metrics::counter!("sfu_http_connections_refused_total", &labels).absolute(state.http_stats.refused());
        metrics::counter!("sfu_http_header_timeouts_total", &labels).absolute(state.http_stats.timeouts());
        metrics::gauge!("sfu_http_connections", &labels).set(state.http_stats.open() as f64);
        counters_by("sfu_http_responses_total", &labels, "status", state.http_stats.responses());
        counters_by(
            "sfu_core_refused_total",
            &labels,
            "reason",
            core::Refusal::ALL.map(|r| (r.as_str(), c.refused(r))),
        );
    });
    let mut text = state.recorder.handle().render();
    let name = "sfu_core_forward_seconds";
    let help = node_kit::metrics_catalogue::find(name).map_or("", |s| s.help);
    let labels = [("node", state.node.clone()), ("role", "core".to_owned())];
    c.forwarding.0.render(name, help, &labels, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
