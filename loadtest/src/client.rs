//! One synthetic WebRTC client: real HTTP offer/answer, a STUN check, a DTLS handshake
//! as client and SRTP, on its own UDP socket (the edge binds a session to the address
//! that passed ICE). Speakers send stamped 20 ms Opus packets; listeners measure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use media::dtls::{self, DatagramSink, DtlsIdentity};
use media::ice::{binding_request, parse_binding_success, random_credentials};
use media::rtcp_report::{parse_feedback, Feedback};
use media::rtp_header::{AudioLevel, OutHeader, RtpView};
use media::sdp_offer::{build_offer, Answer, OfferParams, OFFER_AUDIO_LEVEL_EXT, OFFER_OPUS_PT};
use media::srtp::SrtpSession;
use media::{classify, PacketKind, Ssrc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::measure::{latency, micros_since, read_spurt, read_stamp, stamped_payload, StreamStats};

const CONSENT_INTERVAL: Duration = Duration::from_secs(5);
const ICE_ATTEMPTS: u32 = 25;
const ICE_RETRY: Duration = Duration::from_millis(200);
const FRAME: Duration = Duration::from_millis(20);
const LOUD: AudioLevel = AudioLevel { level: 20, voice: true };

/// Latency histograms record microseconds up to a minute.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What every client of a run shares.
pub struct Shared {
    pub epoch: Instant,
    pub identity: DtlsIdentity,
    pub http: reqwest::Client,
    /// Clients' offers come from many loopback addresses, as real clients come from many
    /// hosts: per-address limits on the SFU then apply as they would in production.
    pub client_http: Vec<reqwest::Client>,
    pub next_client_http: std::sync::atomic::AtomicUsize,
    pub live: Live,
    /// Listeners decrypt one packet in this many (and each talk spurt's first, and each
    /// speaker change on a slot); loss, order, jitter and gaps come from every packet's
    /// clear header. 1: every packet.
    pub decrypt_every: u64,
    /// Listeners join, then never read their socket again (the kernel drops what
    /// overflows it) and only keep consent: the SFU's sending is measured without the
    /// generator's receiving. Nothing is counted for them.
    pub deaf: bool,
    /// Clients join this VideoRoom room of the Janus at their base URL instead of an
    /// edge (for the side-by-side benchmark).
    pub janus_room: Option<u64>,
    /// Listeners receive in these threads once connected (batched), instead of each on
    /// its own task (never for deaf listeners, which do not read: the scenario makes none).
    pub pool: Option<crate::pool::ReceivePool>,
}

/// Counters for the live display; histograms are merged once a second per client.
pub struct Live {
    pub joined: AtomicU64,
    pub failed: AtomicU64,
    pub packets: AtomicU64,
    pub interval_latency: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            joined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            interval_latency: Mutex::new(latency_histogram()),
        }
    }
}

/// How a speaker talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TalkPattern {
    /// Always talking.
    Steady,
    /// Speakers take turns of `turn` each.
    TurnTaking,
    /// Random bursts of speech and silence.
    Bursts,
}

#[derive(Clone, Copy, Debug)]
pub struct SpeakerParams {
    pub index: usize,
    pub speakers: usize,
    pub pattern: TalkPattern,
    pub turn: Duration,
    pub payload_size: usize,
}

#[derive(Clone, Debug)]
pub enum Role {
    Speaker(SpeakerParams),
    Listener { slots: usize },
}

#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub name: String,
    pub edge: usize,
    pub base_url: String,
    pub channel: String,
    pub token: String,
    pub role: Role,
}

#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub jitter: Duration,
}

#[derive(Debug)]
pub struct ClientReport {
    pub name: String,
    pub edge: usize,
    pub listener: bool,
    pub error: Option<String>,
    /// Offer sent to first decrypted packet (listeners) or to SRTP ready (speakers).
    pub join_time: Option<Duration>,
    pub latency: Histogram<u64>,
    pub streams: Vec<StreamReport>,
    /// A talk spurt's start to its first packet here (spurts that began while receiving).
    pub switch_times: Vec<Duration>,
    /// For each of those, how much of the talk spurt's start never arrived: the first
    /// packet heard was sent this long after the spurt's first (zero: no clipped onset).
    pub onset_clips: Vec<Duration>,
    pub packets_sent: u64,
    /// The edge the client ended up on (placement through the core chooses it).
    pub edge_url: Option<String>,
    /// Where its media went (the answer's candidate: an edge worker's UDP address).
    pub media_addr: Option<std::net::SocketAddr>,
    /// The edge ended the session (RTCP BYE for every slot), e.g. at a drain deadline.
    pub ended_by_edge: bool,
    /// When the last audio packet arrived (listeners).
    pub last_packet_at: Option<Instant>,
    /// The longest time between two audio packets once audio arrived (listeners): how
    /// long a core failover kept this listener without sound.
    pub max_gap: Duration,
    /// Per speaker (CSRC): when its audio last arrived and its longest gap once it had.
    pub speaker_gaps: HashMap<u32, (Instant, Duration)>,
    /// Audio packets received, and those of them decrypted (listeners).
    pub packets_received: u64,
    pub packets_decrypted: u64,
}

impl ClientReport {
    fn new(spec: &ClientSpec) -> Self {
        Self::blank(spec.name.clone(), spec.edge, matches!(spec.role, Role::Listener { .. }))
    }

    fn blank(name: String, edge: usize, listener: bool) -> Self {
        ClientReport {
            name,
            edge,
            listener,
            error: None,
            join_time: None,
            latency: latency_histogram(),
            streams: Vec::new(),
            switch_times: Vec::new(),
            onset_clips: Vec::new(),
            packets_received: 0,
            packets_decrypted: 0,
            packets_sent: 0,
            edge_url: None,
            media_addr: None,
            ended_by_edge: false,
            last_packet_at: None,
            max_gap: Duration::ZERO,
            speaker_gaps: HashMap::new(),
        }
    }
}

/// Runs a client until `stop` turns true; never panics on what the network sends.
pub async fn run(spec: ClientSpec, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> ClientReport {
    let mut report = ClientReport::new(&spec);
    match session(&spec, &shared, &mut stop, &mut report).await {
        Ok(()) => {}
        Err(e) => {
            shared.live.failed.fetch_add(1, Ordering::Relaxed);
            report.error = Some(format!("{e:#}"));
        }
    }
    report
}

struct Connected {
    edge_url: String,
    socket: Arc<UdpSocket>,
    srtp: SrtpSession,
    answer: Answer,
    /// Our ICE ufrag, for consent checks, and password, to answer the server's.
    ufrag: String,
    pwd: String,
    location: Option<String>,
    offer_sent: Instant,
    /// The SSRC the offer named for what we send.
    send_ssrc: Option<Ssrc>,
    /// The Janus session, kept alive until the client ends, then destroyed.
    janus: Option<Arc<crate::janus::Session>>,
}

impl Connected {
    /// A consent-freshness check (RFC 7675), as browsers send every few seconds.
    /// `&mut`: the SRTP contexts inside are `Send` but not `Sync`.
    async fn consent(&mut self) -> anyhow::Result<()> {
        let req = consent_request(&self.answer, &self.ufrag)?;
        let _ = self.socket.send(&req).await;
        Ok(())
    }
}

/// A consent-freshness check (RFC 7675) with the answer's credentials, a new
/// transaction each time.
fn consent_request(answer: &Answer, ufrag: &str) -> anyhow::Result<Vec<u8>> {
    Ok(binding_request(&answer.ice_ufrag, ufrag, &answer.ice_pwd)?.0)
}

/// How many loopback addresses (127.0.1.1 and up) clients' HTTP requests come from when
/// the SFU is local.
pub const CLIENT_ADDRESSES: u8 = 64;

impl Shared {
    /// `loopback`: the SFU is on this machine's loopback, so offers can come from many
    /// loopback addresses; otherwise they come from this host's own address.
    pub fn new(identity: DtlsIdentity, loopback: bool) -> anyhow::Result<Shared> {
        let build = |local: Option<std::net::IpAddr>| {
            reqwest::Client::builder().timeout(Duration::from_secs(15)).local_address(local).build()
        };
        let client_http = if loopback {
            (1..=CLIENT_ADDRESSES)
                .map(|i| build(Some(std::net::IpAddr::from([127, 0, 1, i]))))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![build(None)?]
        };
        Ok(Shared {
            epoch: Instant::now(),
            identity,
            http: build(None)?,
            client_http,
            next_client_http: Default::default(),
            live: Live::default(),
            decrypt_every: 1,
            deaf: false,
            janus_room: None,
            pool: None,
        })
    }

    /// The HTTP client for the next synthetic client's offer, round-robin over addresses.
    pub fn offer_http(&self) -> &reqwest::Client {
        let i = self.next_client_http.fetch_add(1, Ordering::Relaxed);
        &self.client_http[i % self.client_http.len()]
    }
}

/// A session that passed its ICE check: the socket is connected to the edge.
pub struct Joined {
    pub socket: Arc<UdpSocket>,
    pub answer: Answer,
    /// Our ICE ufrag and password (a full ICE server checks us too).
    pub ufrag: String,
    pub pwd: String,
    /// The session's URL, for DELETE.
    pub location: Option<String>,
    pub offer_sent: Instant,
    /// The edge that answered (after any redirect from the core), as `scheme://host:port`.
    pub edge_url: String,
}

/// What a client offers: `path` is whip, whep or join.
pub struct OfferSpec<'a> {
    pub base_url: &'a str,
    pub channel: &'a str,
    pub token: &'a str,
    pub path: &'a str,
    pub send_ssrc: Option<Ssrc>,
    pub receive_sections: usize,
}

/// Offer/answer over HTTP, then the ICE check until it is answered.
pub async fn join(o: &OfferSpec<'_>, shared: &Shared) -> anyhow::Result<Joined> {
    let socket = Arc::new(UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?);
    let (ufrag, pwd) = random_credentials();
    let offer = build_offer(&OfferParams {
        ice_ufrag: &ufrag,
        ice_pwd: &pwd,
        fingerprint: shared.identity.fingerprint(),
        send_ssrc: o.send_ssrc,
        receive_sections: o.receive_sections,
    });
    let url = format!("{}/{}/{}", o.base_url.trim_end_matches('/'), o.path, o.channel);
    let offer_sent = Instant::now();
    let resp = shared
        .offer_http()
        .post(&url)
        .header("Content-Type", "application/sdp")
        .header("Authorization", format!("Bearer {}", o.token))
        .body(offer)
        .send()
        .await?;
    let status = resp.status();
    let final_url = resp.url().clone();
    let location =
        resp.headers().get("location").and_then(|v| v.to_str().ok()).map(|l| final_url.join(l).map(|u| u.to_string()));
    let body = resp.text().await?;
    anyhow::ensure!(status.as_u16() == 201, "{url}: {status}: {}", body.trim());
    let answer = Answer::parse(&body)?;
    let remote = *answer.candidates.first().ok_or_else(|| anyhow::anyhow!("answer has no candidate"))?;
    socket.connect(remote).await?;

    ice_check(&socket, &answer, &ufrag, &pwd, true).await?;
    let edge_url = final_url.origin().ascii_serialization();
    Ok(Joined { socket, answer, ufrag, pwd, location: location.transpose()?, offer_sent, edge_url })
}

/// The DTLS handshake as client through the pipe, pumping the socket meanwhile; the
/// session's SRTP keys.
pub async fn handshake(j: &Joined, shared: &Shared) -> anyhow::Result<SrtpSession> {
    handshake_as(j, shared, true).await
}

/// ICE: a check with the answer's credentials until it is answered, answering the
/// server's own checks meanwhile (a full agent such as Janus's checks us too).
async fn ice_check(
    socket: &UdpSocket,
    answer: &Answer,
    ufrag: &str,
    pwd: &str,
    controlling: bool,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..ICE_ATTEMPTS {
        let (req, tid) = media::ice::binding_request_as(&answer.ice_ufrag, ufrag, &answer.ice_pwd, controlling)?;
        socket.send(&req).await?;
        let until = tokio::time::Instant::now() + ICE_RETRY;
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await {
            if parse_binding_success(&buf[..n], &tid, &answer.ice_pwd).is_ok() {
                return Ok(());
            }
            if classify(&buf[..n]) == PacketKind::Stun {
                answer_check(socket, &buf[..n], pwd);
            }
        }
    }
    anyhow::bail!("no answer to the ICE check from {}", socket.peer_addr()?)
}

/// Answers a server's connectivity check (a full ICE agent such as Janus's checks its
/// peers, and keeps checking for consent).
fn answer_check(socket: &UdpSocket, packet: &[u8], pwd: &str) {
    if let Some(response) = socket.peer_addr().ok().and_then(|from| check_response(packet, pwd, from)) {
        let _ = socket.try_send(&response);
    }
}

/// The answer to a connectivity check from `from` (the server, which our socket is
/// connected to), if `packet` is one.
fn check_response(packet: &[u8], pwd: &str, from: std::net::SocketAddr) -> Option<Vec<u8>> {
    media::ice::BindingRequest::parse(packet).and_then(|r| r.respond(pwd, from)).ok()
}

/// The DTLS handshake in the given role.
pub async fn handshake_as(j: &Joined, shared: &Shared, dtls_client: bool) -> anyhow::Result<SrtpSession> {
    let remote = *j.answer.candidates.first().ok_or_else(|| anyhow::anyhow!("answer has no candidate"))?;
    let (tx, rx) = mpsc::channel(dtls::DTLS_QUEUE);
    // Weak: the DTLS connection's tasks may outlive the handshake, and a receive pool
    // takes the socket for itself afterwards.
    let out = Arc::downgrade(&j.socket);
    let sink: DatagramSink = Arc::new(move |d: Bytes| {
        if let Some(socket) = out.upgrade() {
            let _ = socket.try_send(&d);
        }
    });
    let handshake = dtls::handshake(
        &shared.identity,
        dtls_client,
        rx,
        sink,
        remote,
        j.answer.fingerprint,
        dtls::DEFAULT_HANDSHAKE_TIMEOUT,
    );
    tokio::pin!(handshake);
    let mut buf = vec![0u8; 2048];
    let established = loop {
        tokio::select! {
            r = &mut handshake => break r?,
            n = j.socket.recv(&mut buf) => {
                let n = n?;
                match classify(&buf[..n]) {
                    PacketKind::Dtls => { let _ = tx.try_send(Bytes::copy_from_slice(&buf[..n])); }
                    PacketKind::Stun => answer_check(&j.socket, &buf[..n], &j.pwd),
                    _ => {}
                }
            }
        }
    };
    Ok(SrtpSession::new(&established.keys)?)
}

async fn connect(spec: &ClientSpec, shared: &Shared) -> anyhow::Result<Connected> {
    if let Some(room) = shared.janus_room {
        return connect_janus(spec, shared, room).await;
    }
    let (path, send_ssrc, receive_sections) = match &spec.role {
        Role::Speaker(_) => ("whip", Some(Ssrc(rand::random::<u32>() | 1)), 0),
        Role::Listener { slots } => ("whep", None, *slots),
    };
    let offer = OfferSpec {
        base_url: &spec.base_url,
        channel: &spec.channel,
        token: &spec.token,
        path,
        send_ssrc,
        receive_sections,
    };
    let j = join(&offer, shared).await?;
    let srtp = handshake(&j, shared).await?;
    Ok(Connected {
        edge_url: j.edge_url,
        socket: j.socket,
        srtp,
        answer: j.answer,
        ufrag: j.ufrag,
        pwd: j.pwd,
        location: j.location,
        offer_sent: j.offer_sent,
        send_ssrc,
        janus: None,
    })
}

/// Joins a Janus VideoRoom room: a publisher offers with `joinandconfigure`; a listener
/// subscribes to the room's publishers (up to its slots) and answers Janus's offer. Then
/// the same ICE check and DTLS handshake as against an edge (Janus runs ICE-lite here).
async fn connect_janus(spec: &ClientSpec, shared: &Shared, room: u64) -> anyhow::Result<Connected> {
    use crate::janus;
    let offer_sent = Instant::now();
    let session = Arc::new(janus::Session::open(shared.offer_http().clone(), &spec.base_url).await?);
    let (ufrag, pwd) = media::ice::random_credentials();
    let fingerprint = *shared.identity.fingerprint();
    let send_ssrc = matches!(spec.role, Role::Speaker(_)).then(|| Ssrc(rand::random::<u32>() | 1));
    // Janus wants a candidate of ours before it takes our checks: the address our socket
    // has towards Janus's own candidate, trickled (publishers) or in our answer.
    let socket = Arc::new(UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?);
    let towards = |sdp: &str| -> anyhow::Result<SocketAddr> {
        Answer::parse(sdp)?.candidates.first().copied().ok_or_else(|| anyhow::anyhow!("Janus gave no host candidate"))
    };
    let (server_sdp, dtls_client) = match &spec.role {
        Role::Speaker(_) => {
            let offer = build_offer(&OfferParams {
                ice_ufrag: &ufrag,
                ice_pwd: &pwd,
                fingerprint: &fingerprint,
                send_ssrc,
                receive_sections: 0,
            });
            let body = serde_json::json!({"request": "joinandconfigure", "room": room, "ptype": "publisher",
                                          "display": spec.name, "audio": true, "video": false});
            let joined = session.call(body, Some(serde_json::json!({"type": "offer", "sdp": offer}))).await?;
            let answer = janus::sdp_of(&joined)?;
            socket.connect(towards(&answer)?).await?;
            session.trickle(socket.local_addr()?).await?;
            let client = janus::we_are_dtls_client(&answer);
            (answer, client)
        }
        Role::Listener { slots } => {
            // The speakers joined first, but a publisher is listed once its media is up.
            let mut feeds = session.publishers(room).await?;
            for _ in 0..100 {
                if !feeds.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                feeds = session.publishers(room).await?;
            }
            anyhow::ensure!(!feeds.is_empty(), "no publisher in Janus room {room}");
            feeds.truncate(*slots);
            let streams: Vec<serde_json::Value> = feeds.iter().map(|f| serde_json::json!({"feed": f})).collect();
            let body = serde_json::json!({"request": "join", "room": room, "ptype": "subscriber", "streams": streams});
            let attached = session.call(body, None).await?;
            let offer = janus::sdp_of(&attached)?;
            socket.connect(towards(&offer)?).await?;
            let candidate = janus::host_candidate(socket.local_addr()?);
            let answer = janus::with_candidate(&janus::answer_offer(&offer, &ufrag, &pwd, &fingerprint)?, &candidate);
            session
                .call(
                    serde_json::json!({"request": "start"}),
                    Some(serde_json::json!({"type": "answer", "sdp": answer})),
                )
                .await?;
            (offer, true)
        }
    };
    session.end_of_candidates().await?;
    let answer = Answer::parse(&server_sdp)?;
    // We offered as a publisher (so we control ICE), Janus offered to a subscriber.
    ice_check(&socket, &answer, &ufrag, &pwd, send_ssrc.is_some()).await?;
    let joined = Joined {
        socket,
        answer,
        ufrag,
        pwd,
        location: None,
        offer_sent,
        edge_url: spec.base_url.trim_end_matches('/').to_owned(),
    };
    let srtp = handshake_as(&joined, shared, dtls_client).await?;
    let keepalive = session.clone();
    tokio::spawn(async move {
        // Ends when the client has destroyed the session (the last other handle gone).
        while Arc::strong_count(&keepalive) > 1 {
            tokio::time::sleep(janus::KEEPALIVE_INTERVAL).await;
            if Arc::strong_count(&keepalive) > 1 && keepalive.keepalive().await.is_err() {
                break;
            }
        }
    });
    Ok(Connected {
        edge_url: joined.edge_url,
        socket: joined.socket,
        srtp,
        answer: joined.answer,
        ufrag: joined.ufrag,
        pwd: joined.pwd,
        location: None,
        offer_sent,
        send_ssrc,
        janus: Some(session),
    })
}

async fn session(
    spec: &ClientSpec,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    report: &mut ClientReport,
) -> anyhow::Result<()> {
    let mut c = connect(spec, shared).await?;
    report.edge_url = Some(c.edge_url.clone());
    report.media_addr = c.answer.candidates.first().copied();
    // Kept here: a pooled listener hands the rest of `c` to its receive thread.
    let (location, janus) = (c.location.take(), c.janus.take());
    let result = match &spec.role {
        Role::Speaker(params) => {
            report.join_time = Some(c.offer_sent.elapsed());
            shared.live.joined.fetch_add(1, Ordering::Relaxed);
            speak(&mut c, shared, stop, report, params).await
        }
        Role::Listener { .. } => match &shared.pool {
            Some(pool) => listen_pooled(c, shared, pool, stop, report).await,
            None => listen(&mut c, shared, stop, report).await,
        },
    };
    leave(shared, location.as_deref(), janus.as_deref()).await;
    result
}

/// Ends the session at the SFU: DELETE for ours, destroy for a Janus session.
async fn leave(shared: &Shared, location: Option<&str>, janus: Option<&crate::janus::Session>) {
    if let Some(location) = location {
        let _ = shared.http.delete(location).send().await;
    }
    if let Some(session) = janus {
        session.destroy().await;
    }
}

/// `listen` in a receive pool: the socket and the measuring move to a receive thread
/// until the stop (or the edge's BYE), then the report comes back.
async fn listen_pooled(
    mut c: Connected,
    shared: &Arc<Shared>,
    pool: &crate::pool::ReceivePool,
    stop: &mut watch::Receiver<bool>,
    report: &mut ClientReport,
) -> anyhow::Result<()> {
    let listening = Listening::new(&c, shared.epoch, Instant::now())?;
    // The handshake's sink may hold the socket for the moment of a send.
    let mut tries = 0;
    let socket = loop {
        match Arc::try_unwrap(c.socket) {
            Ok(socket) => break socket.into_std()?,
            Err(shared_socket) if tries < 100 => {
                c.socket = shared_socket;
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => anyhow::bail!("the socket is still shared a second after the handshake"),
        }
    };
    let listener = crate::pool::PooledListener {
        socket,
        srtp: c.srtp,
        listening,
        report: std::mem::replace(report, ClientReport::blank(String::new(), 0, true)),
    };
    let receiving = pool.add(listener, shared.clone())?;
    let mut back = pool.until(receiving, stop).await?;
    back.listening.finish(shared, &mut back.report);
    *report = back.report;
    Ok(())
}

fn talking(
    pattern: TalkPattern,
    index: usize,
    speakers: usize,
    turn: Duration,
    elapsed: Duration,
    burst_seed: u64,
) -> bool {
    match pattern {
        TalkPattern::Steady => true,
        TalkPattern::TurnTaking => {
            let turn_ms = turn.as_millis().max(1);
            (elapsed.as_millis() / turn_ms) as usize % speakers.max(1) == index
        }
        TalkPattern::Bursts => {
            // 1 s periods; each speaker talks in a pseudo-random 60 % of them.
            let period = elapsed.as_secs() ^ burst_seed;
            period.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 10 < 6
        }
    }
}

async fn speak(
    c: &mut Connected,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    report: &mut ClientReport,
    p: &SpeakerParams,
) -> anyhow::Result<()> {
    let ssrc = c.send_ssrc.unwrap_or(Ssrc(rand::random::<u32>() | 1));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(FRAME);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seq, mut ts) = (rand::random::<u16>(), rand::random::<u32>());
    let mut payload = Vec::with_capacity(p.payload_size);
    let mut packet = Vec::with_capacity(1500);
    let mut was_talking = false;
    let mut spurt_start = 0;
    let mut next_consent = Instant::now() + CONSENT_INTERVAL;
    let mut buf = vec![0u8; 2048];
    let seed = rand::random::<u64>();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
            // Drain what the edge sends (RTCP, consent answers) so the socket never fills.
            r = c.socket.recv(&mut buf) => {
                if let Ok(n) = r {
                    if classify(&buf[..n]) == PacketKind::Stun {
                        answer_check(&c.socket, &buf[..n], &c.pwd);
                    }
                }
                continue;
            }
        }
        let now = Instant::now();
        ts = ts.wrapping_add(960);
        let talk = talking(p.pattern, p.index, p.speakers, p.turn, now - started, seed);
        let spurt_begins = talk && !was_talking;
        if spurt_begins {
            spurt_start = micros_since(shared.epoch, now);
        }
        was_talking = talk;
        if talk {
            stamped_payload(micros_since(shared.epoch, now), spurt_start, p.payload_size, &mut payload);
            OutHeader {
                payload_type: OFFER_OPUS_PT,
                // RFC 3551: the first packet of a talk spurt.
                marker: spurt_begins,
                sequence: seq,
                timestamp: ts,
                ssrc,
                csrc: None,
                audio_level: Some((OFFER_AUDIO_LEVEL_EXT, LOUD)),
                csrc_level: None,
            }
            .write(&payload, &mut packet);
            seq = seq.wrapping_add(1);
            let protected = c.srtp.protect_rtp(&packet)?;
            if c.socket.send(&protected).await.is_ok() {
                report.packets_sent += 1;
            }
        }
        if now >= next_consent {
            next_consent = now + CONSENT_INTERVAL;
            c.consent().await?;
        }
    }
    Ok(())
}

async fn listen(
    c: &mut Connected,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    report: &mut ClientReport,
) -> anyhow::Result<()> {
    if shared.deaf {
        // Joined: connected, and the edge sends to it from now on.
        report.join_time = Some(c.offer_sent.elapsed());
        shared.live.joined.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep(CONSENT_INTERVAL) => c.consent().await?,
            }
        }
    }
    let mut l = Listening::new(c, shared.epoch, Instant::now())?;
    let mut buf = vec![0u8; 2048];
    // One timer, moved when it must be: not a new one per packet.
    let timer = tokio::time::sleep_until(l.deadline().into());
    tokio::pin!(timer);
    // One stop future for the whole loop, likewise.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            r = c.socket.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let socket = &c.socket;
                let send = |reply: &[u8]| {
                    let _ = socket.try_send(reply);
                };
                if l.on_datagram(&buf[..n], Instant::now(), &mut c.srtp, shared, report, send) == Heard::Ended {
                    break;
                }
            }
            _ = &mut timer => {
                if let Some(consent) = l.on_time(Instant::now(), shared, report)? {
                    let _ = c.socket.send(&consent).await;
                }
                timer.as_mut().reset(l.deadline().into());
            }
        }
    }
    l.finish(shared, report);
    Ok(())
}

/// What a listener's datagram did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    Counted,
    /// The edge said BYE on every slot.
    Ended,
}

/// A listener's measuring, apart from how its datagrams are received: fed datagrams
/// and the time, it counts every packet from its clear header, decrypts and times a
/// sample, answers the server's ICE checks, and gives the consent checks to send. Run
/// on the listener's own task (`listen`) or in a receive pool (`crate::pool`).
pub(crate) struct Listening {
    answer: Answer,
    /// Our ICE credentials: consent checks carry the ufrag, answers to the server's
    /// checks the password.
    ufrag: String,
    pwd: String,
    /// The edge's media address (our ICE answers echo it).
    peer: std::net::SocketAddr,
    offer_sent: Instant,
    streams: Vec<StreamStats>,
    spurts_heard: HashMap<u32, u64>,
    said_bye: Vec<bool>,
    /// This second's latency samples, for the live view: recorded into the shared
    /// histogram one by one each second (adding a whole histogram walks all its buckets).
    samples: Vec<u64>,
    /// Each speaker's last packet and longest gap, written to the report each second.
    gaps: Vec<(u32, Instant, Duration)>,
    last_speaker: Vec<Option<Ssrc>>,
    plain_buf: Vec<u8>,
    packets: u64,
    receiving_since: Option<u64>,
    next_flush: Instant,
    next_consent: Instant,
}

impl Listening {
    fn new(c: &Connected, epoch: Instant, now: Instant) -> anyhow::Result<Self> {
        let slots = c.answer.slot_ssrcs.len();
        Ok(Listening {
            answer: c.answer.clone(),
            ufrag: c.ufrag.clone(),
            pwd: c.pwd.clone(),
            peer: c.socket.peer_addr()?,
            offer_sent: c.offer_sent,
            streams: c.answer.slot_ssrcs.iter().map(|&s| StreamStats::new(s, epoch)).collect(),
            spurts_heard: HashMap::new(),
            said_bye: vec![false; slots],
            samples: Vec::with_capacity(256),
            gaps: Vec::new(),
            last_speaker: vec![None; slots],
            plain_buf: Vec::with_capacity(2048),
            packets: 0,
            receiving_since: None,
            next_flush: now + Duration::from_secs(1),
            next_consent: now + CONSENT_INTERVAL,
        })
    }

    /// When `on_time` has work next.
    pub(crate) fn deadline(&self) -> Instant {
        self.next_flush.min(self.next_consent)
    }

    /// One datagram from the edge; `send` carries a reply (to the server's ICE checks).
    pub(crate) fn on_datagram(
        &mut self,
        data: &[u8],
        now: Instant,
        srtp: &mut SrtpSession,
        shared: &Shared,
        report: &mut ClientReport,
        send: impl FnOnce(&[u8]),
    ) -> Heard {
        match classify(data) {
            PacketKind::Stun => {
                if let Some(response) = check_response(data, &self.pwd, self.peer) {
                    send(&response);
                }
                Heard::Counted
            }
            PacketKind::Rtcp => self.on_rtcp(data, srtp, report),
            PacketKind::Rtp => {
                self.on_rtp(data, now, srtp, shared, report);
                Heard::Counted
            }
            _ => Heard::Counted,
        }
    }

    fn on_rtcp(&mut self, data: &[u8], srtp: &mut SrtpSession, report: &mut ClientReport) -> Heard {
        let Ok(plain) = srtp.unprotect_rtcp(data) else { return Heard::Counted };
        for fb in parse_feedback(&plain).unwrap_or_default() {
            if let Feedback::Bye(ssrc) = fb {
                if let Some(slot) = self.answer.slot_ssrcs.iter().position(|&s| s == ssrc) {
                    self.said_bye[slot] = true;
                }
            }
        }
        if self.said_bye.iter().all(|&b| b) {
            report.ended_by_edge = true;
            return Heard::Ended;
        }
        Heard::Counted
    }

    fn on_rtp(
        &mut self,
        data: &[u8],
        now: Instant,
        srtp: &mut SrtpSession,
        shared: &Shared,
        report: &mut ClientReport,
    ) {
        // The header is clear text: every packet counts for loss, order, jitter and gaps;
        // only a sample is decrypted (and timed).
        let Ok(v) = RtpView::parse_protected(data) else { return };
        let Some(slot) = self.answer.slot_ssrcs.iter().position(|&s| s == v.ssrc) else { return };
        let speaker = v.csrcs().next();
        let (sequence, timestamp, marker) = (v.sequence, v.timestamp, v.marker);
        let switched = speaker != self.last_speaker[slot];
        self.last_speaker[slot] = speaker;
        report.packets_received += 1;
        let sampled = report.packets_received % shared.decrypt_every == 1 % shared.decrypt_every;
        let decrypt = sampled || marker || switched || report.join_time.is_none();
        let plain = match decrypt {
            true => match srtp.unprotect_rtp_into(data, &mut self.plain_buf) {
                Ok(()) => Some(&self.plain_buf[..]),
                // Forged or damaged: not counted as received audio.
                Err(_) => {
                    report.packets_received -= 1;
                    return;
                }
            },
            false => None,
        };
        if plain.is_some() {
            report.packets_decrypted += 1;
            if report.join_time.is_none() {
                report.join_time = Some(now - self.offer_sent);
                shared.live.joined.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.streams[slot].on_packet(sequence, timestamp, now);
        self.packets += 1;
        if let Some(previous) = report.last_packet_at {
            report.max_gap = report.max_gap.max(now - previous);
        }
        report.last_packet_at = Some(now);
        let arrival_us = micros_since(shared.epoch, now);
        let receiving_since = *self.receiving_since.get_or_insert(arrival_us);
        if let Some(csrc) = speaker {
            match self.gaps.iter_mut().find(|(s, _, _)| *s == csrc.0) {
                Some((_, last, gap)) => {
                    *gap = (*gap).max(now - *last);
                    *last = now;
                }
                None => self.gaps.push((csrc.0, now, Duration::ZERO)),
            }
        }
        let Some(payload) = plain.and_then(|p| RtpView::parse(p).ok()).map(|v| v.payload()) else { return };
        let stamp = read_stamp(payload);
        if let Some(sent) = stamp {
            let micros = (latency(sent, arrival_us).as_micros() as u64).max(1);
            let _ = report.latency.record(micros);
            if self.samples.len() < self.samples.capacity() {
                self.samples.push(micros);
            }
        }
        // A talk spurt heard for the first time (on any slot, under any id): how long
        // it took to arrive, and how much of its start was lost. Sampled, a spurt whose
        // first packet was lost shows at its next decrypted packet: clips are then
        // overstated, never hidden.
        if let (Some(csrc), Some(sent), Some(spurt)) = (speaker, stamp, read_spurt(payload)) {
            if self.spurts_heard.get(&csrc.0) != Some(&spurt) {
                self.spurts_heard.insert(csrc.0, spurt);
                // Only talk spurts that began while this listener was receiving.
                if spurt > receiving_since {
                    report.switch_times.push(latency(spurt, arrival_us));
                    report.onset_clips.push(latency(spurt, sent));
                }
            }
        }
    }

    /// The time's work: each second the live counts; a consent check when one is due
    /// (the caller sends it).
    pub(crate) fn on_time(
        &mut self,
        now: Instant,
        shared: &Shared,
        report: &mut ClientReport,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        if now >= self.next_flush {
            self.next_flush = now + Duration::from_secs(1);
            self.flush(shared, report);
        }
        if now < self.next_consent {
            return Ok(None);
        }
        self.next_consent = now + CONSENT_INTERVAL;
        consent_request(&self.answer, &self.ufrag).map(Some)
    }

    fn flush(&mut self, shared: &Shared, report: &mut ClientReport) {
        shared.live.packets.fetch_add(std::mem::take(&mut self.packets), Ordering::Relaxed);
        if !self.samples.is_empty() {
            let mut live = shared.live.interval_latency.lock().expect("live histogram");
            for micros in self.samples.drain(..) {
                let _ = live.record(micros);
            }
        }
        report.speaker_gaps.extend(self.gaps.iter().map(|&(s, last, gap)| (s, (last, gap))));
    }

    /// The listener stops: what it counted goes into its report.
    pub(crate) fn finish(mut self, shared: &Shared, report: &mut ClientReport) {
        self.flush(shared, report);
        report.streams = self
            .streams
            .iter()
            .map(|s| StreamReport {
                expected: s.expected(),
                lost: s.lost(),
                duplicates: s.duplicates,
                out_of_order: s.out_of_order,
                jitter: s.jitter(),
            })
            .collect();
    }
}

/// A client on its own task, as tests drive them: started, then stopped for its report.
pub struct RunningClient {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<ClientReport>,
}

impl RunningClient {
    pub fn spawn(spec: ClientSpec, shared: &Arc<Shared>) -> RunningClient {
        let (stop, rx) = watch::channel(false);
        RunningClient { stop, task: tokio::spawn(run(spec, shared.clone(), rx)) }
    }

    /// Stops the client (it leaves with DELETE) and returns its report.
    pub async fn stop(self) -> ClientReport {
        let _ = self.stop.send(true);
        self.finished().await
    }

    /// The report once the client ended by itself (the edge ended its session).
    pub async fn finished(self) -> ClientReport {
        self.task.await.expect("client tasks do not panic")
    }
}

/// A speaker that talks all the time, alone in its channel's turn-taking.
pub fn steady_speaker() -> Role {
    Role::Speaker(SpeakerParams {
        index: 0,
        speakers: 1,
        pattern: TalkPattern::Steady,
        turn: Duration::from_secs(3),
        payload_size: 80,
    })
}

impl Shared {
    /// Waits until `n` clients have joined (listeners: heard audio); an error if one fails.
    pub async fn wait_joined(&self, n: u64) -> anyhow::Result<()> {
        while self.live.joined.load(Ordering::Relaxed) < n {
            anyhow::ensure!(self.live.failed.load(Ordering::Relaxed) == 0, "a client failed to join");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
