//! Attacks the load tester runs against a deployment while honest clients measure what
//! they hear: malformed and forged media from a connected session, floods from many
//! source ports, pre-handshake DTLS from a token holder, HTTP abuse, and a relay peer
//! that sends garbage. Each counts what it sent and what came back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use media::rtp_header::{AudioLevel, OutHeader};
use media::srtp::SrtpSession;
use media::Ssrc;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::client::{self, OfferSpec, Shared};

/// What to attack with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// A connected session sends RTP and RTCP whose headers overrun (extension elements
    /// in both forms, CSRC counts, RTCP lengths), unauthenticated.
    MalformedRtp,
    /// A connected session sends packets with random SSRCs, forged and authentic.
    SsrcFlood,
    /// STUN checks with bad credentials from many source ports.
    StunFlood,
    /// DTLS ClientHellos from many source ports that passed no ICE check.
    DtlsHelloFlood,
    /// A token holder passes ICE, then sends DTLS records of every epoch and tiny
    /// fragments instead of a handshake, session after session.
    DtlsPreHandshake,
    /// A connected session replays its own packets and sends forgeries.
    SrtpReplay,
    /// A connected publisher sends valid packets at ten times the Opus rate.
    RtpRate,
    /// HTTP offers from one address as fast as it can.
    OfferFlood,
    /// HTTP connections that send half a request and hold it.
    SlowHttp,
    /// One listener token offers again and again to take the channel's places.
    FillChannel,
    /// One speaker token offers again and again to take the edge's sessions.
    FillEdge,
    /// An authenticated relay peer sends garbage datagrams, then floods its control stream.
    RelayGarbage,
}

impl AttackKind {
    /// Packets (or requests, or connections) a second when none is given.
    pub fn default_rate(self) -> u32 {
        match self {
            AttackKind::MalformedRtp | AttackKind::SrtpReplay => 2000,
            AttackKind::SsrcFlood | AttackKind::StunFlood | AttackKind::DtlsHelloFlood => 5000,
            AttackKind::DtlsPreHandshake => 5000,
            AttackKind::RtpRate => 500,
            AttackKind::OfferFlood => 200,
            AttackKind::SlowHttp => 500,
            AttackKind::FillChannel | AttackKind::FillEdge => 50,
            AttackKind::RelayGarbage => 5000,
        }
    }
}

/// Where and how hard to attack.
#[derive(Clone, Debug)]
pub struct AttackPlan {
    pub kind: AttackKind,
    pub rate: u32,
    /// The attacked edge's signalling URL and its media address.
    pub edge_url: String,
    pub edge_udp: SocketAddr,
    pub channel: String,
    pub token_secret: String,
    /// The core's QUIC address and the cluster secret (for relay attacks).
    pub relay: Option<(SocketAddr, String)>,
    /// Where the attacked nodes serve /metrics (edge, core).
    pub metrics_urls: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AttackReport {
    pub kind: Option<AttackKind>,
    pub rate_per_s: u32,
    pub seconds: f64,
    /// Packets, requests or connections sent.
    pub sent: u64,
    /// Replies the attacker got (STUN or DTLS answers; for floods this must stay 0).
    pub replies: u64,
    /// HTTP statuses the attacker got, by code.
    pub statuses: BTreeMap<u16, u64>,
    /// Sessions the attacker opened.
    pub sessions: u64,
    /// Whether an honest client could still make an offer after the attack (HTTP attacks).
    pub honest_offer_after: Option<u16>,
    /// What the attacked node said when it cut the attacker off, and other observations.
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    /// What the attacked nodes counted: their drop, refusal and limit counters that moved.
    pub counters: BTreeMap<String, u64>,
    /// All SFU nodes' resident memory as the attack started and as it ended, MB.
    pub sfu_rss_before_mb: Option<f64>,
    pub sfu_rss_after_mb: Option<f64>,
}

fn token(plan: &AttackPlan, sub: &str, channel: &str, role: TokenRole) -> String {
    TokenKeys::new(plan.token_secret.as_bytes()).sign(&Claims {
        sub: sub.into(),
        channel: channel.into(),
        role,
        exp: unix_now() + 3600,
    })
}

/// Paces `rate` items a second in 10 ms batches until `stop`; `send(n)` sends n items.
struct Pacer {
    rate: u32,
    started: Instant,
    done: u64,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Pacer { rate, started: Instant::now(), done: 0 }
    }

    /// Items due now; waits up to 10 ms first.
    async fn due(&mut self) -> u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let target = (self.started.elapsed().as_secs_f64() * f64::from(self.rate)) as u64;
        let n = target.saturating_sub(self.done);
        self.done += n;
        n
    }
}

/// Sends `next(i)` on the connected `socket` at `rate` a second until `stop` (or
/// `until`); `next` may return `None` to skip one.
async fn pace(
    socket: &UdpSocket,
    rate: u32,
    stop: &watch::Receiver<bool>,
    until: Option<Instant>,
    report: &mut AttackReport,
    mut next: impl FnMut(u64) -> anyhow::Result<Option<Bytes>>,
) -> anyhow::Result<()> {
    let mut pacer = Pacer::new(rate);
    while !*stop.borrow() && until.is_none_or(|u| Instant::now() < u) {
        for i in 0..pacer.due().await {
            if let Some(packet) = next(i)? {
                let _ = socket.send(&packet).await;
                report.sent += 1;
            }
        }
    }
    Ok(())
}

/// Runs the attack until `stop` turns true.
pub async fn run(plan: AttackPlan, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> AttackReport {
    let started = Instant::now();
    let mut report = AttackReport { kind: Some(plan.kind), rate_per_s: plan.rate, ..Default::default() };
    let result = match plan.kind {
        AttackKind::MalformedRtp => malformed_rtp(&plan, &shared, stop, &mut report).await,
        AttackKind::SsrcFlood => ssrc_flood(&plan, &shared, stop, &mut report).await,
        AttackKind::StunFlood => stun_flood(&plan, &shared, stop, &mut report).await,
        AttackKind::DtlsHelloFlood => dtls_hello_flood(&plan, stop, &mut report).await,
        AttackKind::DtlsPreHandshake => dtls_pre_handshake(&plan, &shared, stop, &mut report).await,
        AttackKind::SrtpReplay => srtp_replay(&plan, &shared, stop, &mut report).await,
        AttackKind::RtpRate => rtp_rate(&plan, &shared, stop, &mut report).await,
        AttackKind::OfferFlood => offer_flood(&plan, &shared, stop, &mut report).await,
        AttackKind::SlowHttp => slow_http(&plan, &shared, stop, &mut report).await,
        AttackKind::FillChannel => fill(&plan, &shared, stop, &mut report, TokenRole::Listener).await,
        AttackKind::FillEdge => fill(&plan, &shared, stop, &mut report, TokenRole::Speaker).await,
        AttackKind::RelayGarbage => relay_garbage(&plan, stop, &mut report).await,
    };
    if let Err(e) = result {
        report.errors.push(format!("{e:#}"));
    }
    report.seconds = started.elapsed().as_secs_f64();
    for url in &plan.metrics_urls {
        // From an address of its own: the attacker's may be at its connection limit.
        match defence_counters(shared.offer_http(), url).await {
            Ok(c) => report.counters.extend(c),
            Err(e) => report.errors.push(format!("{url}: {e:#}")),
        }
    }
    report
}

/// The counters of drops, refusals and limits on a node's /metrics that are not zero.
async fn defence_counters(http: &reqwest::Client, url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    const SERIES: [&str; 8] = [
        "sfu_edge_dropped_total",
        "sfu_edge_panics_total",
        "sfu_edge_offers_rate_limited_total",
        "sfu_edge_sessions_closed_total",
        "sfu_core_refused_total",
        "sfu_core_links_closed_misbehaving_total",
        "sfu_http_connections_refused_total",
        "sfu_http_header_timeouts_total",
    ];
    let text = http.get(url).send().await?.error_for_status()?.text().await?;
    let mut out = BTreeMap::new();
    for (name, series, value) in text.lines().filter_map(crate::forwarding::sample_line) {
        if SERIES.contains(&name) && value > 0.0 {
            // Keep the name and the reason label; node and role are known from the URL.
            let key = match crate::forwarding::label(series, "reason") {
                Some(r) => format!("{name}{{reason={r}}}"),
                None => name.to_owned(),
            };
            *out.entry(key).or_default() += value as u64;
        }
    }
    Ok(out)
}

/// A session of the attacker's that finished ICE and DTLS: it may send SRTP.
async fn connected_publisher(
    plan: &AttackPlan,
    shared: &Shared,
    sub: &str,
    report: &mut AttackReport,
) -> anyhow::Result<(client::Joined, SrtpSession)> {
    let token = token(plan, sub, &plan.channel, TokenRole::Speaker);
    let offer = OfferSpec {
        base_url: &plan.edge_url,
        channel: &plan.channel,
        token: &token,
        path: "whip",
        send_ssrc: Some(Ssrc(rand::random::<u32>() | 1)),
        receive_sections: 0,
    };
    let joined = client::join(&offer, shared).await?;
    let srtp = client::handshake(&joined, shared).await?;
    report.sessions += 1;
    Ok((joined, srtp))
}

fn rtp_plain(ssrc: u32, seq: u16, level: AudioLevel) -> Vec<u8> {
    let mut out = Vec::new();
    OutHeader {
        payload_type: media::sdp_offer::OFFER_OPUS_PT,
        marker: false,
        sequence: seq,
        timestamp: u32::from(seq).wrapping_mul(960),
        ssrc: Ssrc(ssrc),
        csrc: None,
        audio_level: Some((media::sdp_offer::OFFER_AUDIO_LEVEL_EXT, level)),
        csrc_level: None,
    }
    .write(&[0xfc; 60], &mut out);
    out
}

/// The packets that crashed edges before headers were bounds-checked, and their kin.
fn malformed_packets(ssrc: u32) -> Vec<Vec<u8>> {
    let header = |b0: u8, pt: u8| {
        let mut p = vec![b0, pt, 0, 1, 0, 0, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    };
    let pt = media::sdp_offer::OFFER_OPUS_PT;
    let mut one_byte = header(0x90, pt);
    one_byte.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x1f, 1, 2, 3]);
    let mut two_byte = header(0x90, pt);
    two_byte.extend_from_slice(&[0x10, 0x00, 0, 1, 1, 200, 0, 0]);
    let mut two_byte_cut = header(0x90, pt);
    two_byte_cut.extend_from_slice(&[0x10, 0x00, 0, 1, 0, 0, 0, 1]);
    let mut block_overrun = header(0x90, pt);
    block_overrun.extend_from_slice(&[0xBE, 0xDE, 0xff, 0xff, 0x10, 0x80]);
    let mut csrcs = header(0x8f, pt);
    csrcs.extend_from_slice(&[1, 2, 3, 4]);
    let mut rtcp_long = vec![0x81, 200, 0xff, 0xff];
    rtcp_long.extend_from_slice(&ssrc.to_be_bytes());
    rtcp_long.extend_from_slice(&[0; 24]);
    let mut rtcp_count = vec![0x9f, 201, 0, 1];
    rtcp_count.extend_from_slice(&ssrc.to_be_bytes());
    rtcp_count.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    vec![one_byte, two_byte, two_byte_cut, block_overrun, csrcs, rtcp_long, rtcp_count]
}

async fn malformed_rtp(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let (joined, _) = connected_publisher(plan, shared, "attacker-malformed", report).await?;
    let packets: Vec<Bytes> = malformed_packets(rand::random()).into_iter().map(Bytes::from).collect();
    pace(&joined.socket, plan.rate, &stop, None, report, |i| Ok(Some(packets[i as usize % packets.len()].clone())))
        .await
}

async fn ssrc_flood(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let (joined, mut srtp) = connected_publisher(plan, shared, "attacker-ssrc", report).await?;
    let mut seq = 0u16;
    pace(&joined.socket, plan.rate, &stop, None, report, |i| {
        seq = seq.wrapping_add(1);
        let plain = rtp_plain(rand::random(), seq, AudioLevel::SILENCE);
        // Every tenth is authentic (a new SSRC that passes SRTP; our own SRTP stops at its
        // outgoing SSRC limit, then these are skipped), the rest forged.
        if i % 10 == 0 {
            return Ok(srtp.protect_rtp(&plain).ok());
        }
        Ok(Some(Bytes::from([plain, rand::random::<[u8; 16]>().to_vec()].concat())))
    })
    .await
}

/// Sockets on 127.0.0.x ports, to look like many sources.
async fn sources(n: usize) -> anyhow::Result<Vec<UdpSocket>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ip = [127, 0, 0, 10 + (i % 200) as u8];
        out.push(UdpSocket::bind(SocketAddr::from((ip, 0))).await?);
    }
    Ok(out)
}

/// Counts datagrams that arrived on `sockets` (answers to a flood).
fn drain_replies(sockets: &[UdpSocket]) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    for s in sockets {
        while s.try_recv(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

async fn stun_flood(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    // A live session's ufrag (the attacker's own), checked with a wrong password, and
    // unknown ufrags.
    let token = token(plan, "attacker-stun", &plan.channel, TokenRole::Listener);
    let offer = OfferSpec {
        base_url: &plan.edge_url,
        channel: &plan.channel,
        token: &token,
        path: "whep",
        send_ssrc: None,
        receive_sections: 1,
    };
    let joined = client::join(&offer, shared).await?;
    report.sessions += 1;
    let sockets = sources(64).await?;
    let mut pacer = Pacer::new(plan.rate);
    while !*stop.borrow() {
        for i in 0..pacer.due().await {
            let (ufrag, pwd) = if i % 2 == 0 {
                (joined.answer.ice_ufrag.clone(), "wrongpasswordwrongpasswo".to_owned())
            } else {
                (format!("{:08x}", rand::random::<u32>()), "unknownpasswordunknownp1".to_owned())
            };
            let (check, _) = media::ice::binding_request(&ufrag, "atk", &pwd)?;
            let _ = sockets[i as usize % sockets.len()].send_to(&check, plan.edge_udp).await;
            report.sent += 1;
        }
        report.replies += drain_replies(&sockets);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    report.replies += drain_replies(&sockets);
    Ok(())
}

/// A DTLS 1.2 ClientHello record (content type 22, epoch 0) with a plausible body.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&rand::random::<[u8; 32]>());
    body.extend_from_slice(&[0, 0, 0, 4, 0xc0, 0x2b, 0xc0, 0x2f, 1, 0]);
    body.extend_from_slice(&[0, 8, 0, 0x0e, 0, 4, 0, 2, 0, 7]);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&[0, 0, 0, 0, 0]);
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    dtls_record(22, 0, &hs)
}

fn dtls_record(content_type: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
    let mut r = vec![content_type, 0xfe, 0xfd];
    r.extend_from_slice(&epoch.to_be_bytes());
    r.extend_from_slice(&rand::random::<[u8; 6]>());
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

async fn dtls_hello_flood(
    plan: &AttackPlan,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let sockets = sources(64).await?;
    let hello = client_hello();
    let mut pacer = Pacer::new(plan.rate);
    while !*stop.borrow() {
        for i in 0..pacer.due().await {
            let _ = sockets[i as usize % sockets.len()].send_to(&hello, plan.edge_udp).await;
            report.sent += 1;
        }
        report.replies += drain_replies(&sockets);
    }
    Ok(())
}

/// What a token holder sends instead of a handshake: records of every later epoch
/// (which a DTLS library queues until it gets there), application data, and handshake
/// fragments of one byte, many to a record and many records to a datagram.
fn pre_handshake_datagrams() -> Vec<Vec<u8>> {
    // Mostly the next epoch, which a library keeps until the handshake gets there.
    let mut out = vec![dtls_record(22, 1, &[0x42; 1400]); 8];
    for epoch in [2u16, 3, 7, 0x100, 0xffff] {
        out.push(dtls_record(22, epoch, &[0x42; 1400]));
        out.push(dtls_record(23, epoch, &[0x17; 1400]));
    }
    let fragment = |offset: u32| {
        let mut f = vec![1, 0, 0x40, 0, 0, 0];
        f.extend_from_slice(&offset.to_be_bytes()[1..]);
        f.extend_from_slice(&[0, 0, 1, 0x99]);
        f
    };
    let tiny: Vec<u8> = (0..100u32).flat_map(fragment).collect();
    out.push(dtls_record(22, 0, &tiny));
    let many: Vec<u8> = (0..50u32).flat_map(|i| dtls_record(22, 0, &fragment(i))).collect();
    out.push(many);
    out
}

/// The first flight of a genuine DTLS client (our own), to open a handshake on the edge.
async fn genuine_client_hello(shared: &Shared, remote: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let sink: media::dtls::DatagramSink = Arc::new(move |d: Bytes| {
        let _ = first_tx.try_send(d);
    });
    let (_never_tx, never_rx) = tokio::sync::mpsc::channel(1);
    let handshake =
        media::dtls::handshake(&shared.identity, true, never_rx, sink, remote, [0; 32], Duration::from_secs(5));
    tokio::select! {
        _ = handshake => anyhow::bail!("the DTLS client ended without sending"),
        first = first_rx.recv() => Ok(first.ok_or_else(|| anyhow::anyhow!("no ClientHello"))?.to_vec()),
    }
}

async fn dtls_pre_handshake(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let datagrams: Vec<Bytes> = pre_handshake_datagrams().into_iter().map(Bytes::from).collect();
    while !*stop.borrow() {
        let token = token(plan, "attacker-dtls", &plan.channel, TokenRole::Speaker);
        let offer = OfferSpec {
            base_url: &plan.edge_url,
            channel: &plan.channel,
            token: &token,
            path: "whip",
            send_ssrc: Some(Ssrc(1)),
            receive_sections: 0,
        };
        let joined = match client::join(&offer, shared).await {
            Ok(j) => j,
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        report.sessions += 1;
        // A genuine ClientHello opens the handshake; then garbage instead of the rest.
        if let Ok(hello) = genuine_client_hello(shared, plan.edge_udp).await {
            let _ = joined.socket.send(&hello).await;
        }
        // Three seconds of garbage per session, then a new session with the same token.
        let until = Some(Instant::now() + Duration::from_secs(3));
        pace(&joined.socket, plan.rate, &stop, until, report, |i| {
            Ok(Some(datagrams[i as usize % datagrams.len()].clone()))
        })
        .await?;
    }
    Ok(())
}

async fn srtp_replay(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let (joined, mut srtp) = connected_publisher(plan, shared, "attacker-replay", report).await?;
    let ssrc: u32 = rand::random();
    let mut seq = 0u16;
    let mut last = Bytes::new();
    pace(&joined.socket, plan.rate, &stop, None, report, |i| {
        Ok(Some(match i % 10 {
            // One authentic silent packet, then replays of it, then forgeries.
            0 => {
                seq = seq.wrapping_add(1);
                last = srtp.protect_rtp(&rtp_plain(ssrc, seq, AudioLevel::SILENCE))?;
                last.clone()
            }
            1..=5 => last.clone(),
            _ => {
                let mut forged = last.to_vec();
                let n = forged.len();
                forged[n - 4..].copy_from_slice(&rand::random::<[u8; 4]>());
                Bytes::from(forged)
            }
        }))
    })
    .await
}

async fn rtp_rate(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let (joined, mut srtp) = connected_publisher(plan, shared, "attacker-rate", report).await?;
    let ssrc: u32 = rand::random();
    let mut seq = 0u16;
    pace(&joined.socket, plan.rate, &stop, None, report, |_| {
        seq = seq.wrapping_add(1);
        Ok(Some(srtp.protect_rtp(&rtp_plain(ssrc, seq, AudioLevel::SILENCE))?))
    })
    .await
}

/// A client bound to another loopback address, as an honest newcomer: its offer's status.
async fn honest_offer(plan: &AttackPlan, shared: &Shared) -> Option<u16> {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(15))
        .build()
        .ok()?;
    let (ufrag, pwd) = media::ice::random_credentials();
    let offer = media::sdp_offer::build_offer(&media::sdp_offer::OfferParams {
        ice_ufrag: &ufrag,
        ice_pwd: &pwd,
        fingerprint: shared.identity.fingerprint(),
        send_ssrc: None,
        receive_sections: 1,
    });
    let url = format!("{}/whep/{}", plan.edge_url.trim_end_matches('/'), plan.channel);
    let resp = http
        .post(url)
        .header("Content-Type", "application/sdp")
        .bearer_auth(token(plan, "honest-newcomer", &plan.channel, TokenRole::Listener))
        .body(offer)
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

async fn offer_flood(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let (ufrag, pwd) = media::ice::random_credentials();
    let offer = media::sdp_offer::build_offer(&media::sdp_offer::OfferParams {
        ice_ufrag: &ufrag,
        ice_pwd: &pwd,
        fingerprint: shared.identity.fingerprint(),
        send_ssrc: None,
        receive_sections: 1,
    });
    let url = format!("{}/whep/{}", plan.edge_url.trim_end_matches('/'), plan.channel);
    let mut pacer = Pacer::new(plan.rate);
    let mut n = 0u64;
    while !*stop.borrow() {
        let due = pacer.due().await;
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..due {
            n += 1;
            let req = shared
                .http
                .post(&url)
                .header("Content-Type", "application/sdp")
                .bearer_auth(token(plan, &format!("flood-{n}"), &plan.channel, TokenRole::Listener))
                .body(offer.clone());
            requests.spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
        }
        while let Some(r) = requests.join_next().await {
            report.sent += 1;
            match r {
                Ok(Ok(status)) => *report.statuses.entry(status).or_default() += 1,
                _ => *report.statuses.entry(0).or_default() += 1,
            }
        }
    }
    report.honest_offer_after = honest_offer(plan, shared).await;
    Ok(())
}

async fn slow_http(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    let url: reqwest::Url = plan.edge_url.parse()?;
    let addr = url.socket_addrs(|| Some(80))?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no edge address"))?;
    let mut held = tokio::task::JoinSet::new();
    let mut pacer = Pacer::new(plan.rate);
    let closed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while !*stop.borrow() {
        for _ in 0..pacer.due().await {
            report.sent += 1;
            let closed = closed.clone();
            held.spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else { return };
                let _ =
                    s.write_all(b"POST /whep/lobby HTTP/1.1\r\nHost: edge\r\nContent-Type: application/sdp\r\n").await;
                // Hold the half-sent request until the server gives up on it.
                let mut b = [0u8; 64];
                if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await {
                    closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        while held.try_join_next().is_some() {}
    }
    // While the attacker's connections are still held: can someone else get in?
    report.honest_offer_after = honest_offer(plan, shared).await;
    report
        .notes
        .push(format!("{} held connections closed by the server", closed.load(std::sync::atomic::Ordering::Relaxed)));
    held.abort_all();
    Ok(())
}

async fn fill(
    plan: &AttackPlan,
    shared: &Shared,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
    role: TokenRole,
) -> anyhow::Result<()> {
    let (sub, path, receive_sections) = match role {
        TokenRole::Listener => ("greedy-listener", "whep", 3),
        TokenRole::Speaker => ("greedy-speaker", "whip", 0),
    };
    let token = token(plan, sub, &plan.channel, role);
    let mut pacer = Pacer::new(plan.rate);
    while !*stop.borrow() {
        for _ in 0..pacer.due().await {
            let (ufrag, pwd) = media::ice::random_credentials();
            let offer = media::sdp_offer::build_offer(&media::sdp_offer::OfferParams {
                ice_ufrag: &ufrag,
                ice_pwd: &pwd,
                fingerprint: shared.identity.fingerprint(),
                send_ssrc: (role == TokenRole::Speaker).then_some(Ssrc(7)),
                receive_sections,
            });
            let url = format!("{}/{path}/{}", plan.edge_url.trim_end_matches('/'), plan.channel);
            let status = match shared
                .http
                .post(&url)
                .header("Content-Type", "application/sdp")
                .bearer_auth(&token)
                .body(offer)
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            report.sent += 1;
            *report.statuses.entry(status).or_default() += 1;
        }
    }
    report.honest_offer_after = honest_offer(plan, shared).await;
    // What the edge holds now: its session count on /metrics.
    let metrics = shared
        .offer_http()
        .get(format!("{}/metrics", plan.edge_url.trim_end_matches('/')))
        .send()
        .await?
        .text()
        .await?;
    if let Some(line) = metrics.lines().find(|l| l.starts_with("sfu_edge_sessions{")) {
        report.notes.push(line.to_owned());
    }
    Ok(())
}

async fn relay_garbage(
    plan: &AttackPlan,
    stop: watch::Receiver<bool>,
    report: &mut AttackReport,
) -> anyhow::Result<()> {
    use relay_proto::auth::{self, Side};
    use relay_proto::control::{FrameReader, Message};
    use relay_proto::endpoint::{read_message, send_message, Trust};
    let (core, secret) =
        plan.relay.clone().ok_or_else(|| anyhow::anyhow!("relay attacks need the core and its secret"))?;
    let endpoint = relay_proto::endpoint::client("127.0.0.1:0".parse()?, Trust::ClusterSecretOnly)?;
    let mut round = 0u32;
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    while !*stop.borrow() {
        round += 1;
        let conn = endpoint.connect(core, "localhost")?.await?;
        let binding = auth::session_binding(&conn).ok_or_else(|| anyhow::anyhow!("no exporter"))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let edge_id = format!("attacker-{round}");
        let hello = Message::Hello {
            version: relay_proto::PROTOCOL_VERSION,
            edge_id: edge_id.clone(),
            signalling_url: "http://attacker".into(),
            capacity: 25,
            proof: auth::proof(secret.as_bytes(), Side::Edge, &binding, &edge_id),
            region: "local".into(),
            max_sessions: 100,
        };
        send_message(&mut send, &hello).await?;
        let mut reader = FrameReader::default();
        let Some(Message::Welcome { .. }) = read_message(&mut recv, &mut reader).await? else {
            anyhow::bail!("the core did not welcome the attacker");
        };
        report.sessions += 1;
        send_message(&mut send, &Message::Subscribe { channel: plan.channel.clone(), listeners: 1 }).await?;
        let mut pacer = Pacer::new(plan.rate);
        let control_flood = round.is_multiple_of(2);
        let mut frames = BytesMut::new();
        for i in 0..200u32 {
            Message::Load { channel_id: i, listeners: 1, speakers: 0 }.encode(&mut frames);
        }
        let frames = frames.freeze();
        let reason = loop {
            if *stop.borrow() {
                break None;
            }
            if let Some(reason) = conn.close_reason() {
                break Some(reason);
            }
            for _ in 0..pacer.due().await {
                report.sent += 1;
                if control_flood {
                    let _ = send.write_all(&frames).await;
                } else {
                    let mut junk = BytesMut::with_capacity(40);
                    junk.put_u8(0x40 | (rand::random::<u8>() % 64)); // version 1: refused
                    junk.put_slice(&rand::random::<[u8; 31]>());
                    let _ = conn.send_datagram(junk.freeze());
                }
            }
        };
        if let Some(reason) = reason {
            let what = if control_flood { "control flood" } else { "garbage datagrams" };
            *closes.entry(format!("{what}: closed by the core: {reason}")).or_default() += 1;
        }
        conn.close(0u32.into(), b"attacker done");
    }
    report.notes.extend(closes.into_iter().map(|(what, n)| format!("{n} x {what}")));
    Ok(())
}
