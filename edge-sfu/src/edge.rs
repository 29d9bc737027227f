//! The edge's sans-IO core: sessions, demultiplexing, speaker selection and forwarding.
//!
//! Inputs are datagrams, DTLS results and commands, each with the current `Instant`;
//! outputs are drained with [`Edge::poll_output`] and the next wake-up is
//! [`Edge::poll_timeout`]. No sockets, no clock, no locks.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use media::buf::TxArena;
use media::dtls_filter::{HelloAssembly, HelloStep};
use media::ice::BindingRequest;
use media::rtcp_report::{self, Feedback, NtpClock, ReceiveStats, SenderInfo};
use media::rtp_header::{AudioLevel, OutHeader, RtpView};
use media::slot::SlotRewriter;
use media::speakers::{ActiveSpeakers, SelectorConfig};
use media::srtp::{SrtpError, SrtpKeys, SrtpSession};
use media::{classify, PacketKind, Ssrc, MAX_DATAGRAM, OPUS_CLOCK_RATE};
use node_kit::histogram::Histogram;
use relay_proto::control::Message;
use relay_proto::datagram::MediaHeader;
use relay_proto::loss::{LinkLoss, LossCounts, RepairSwitch};
use relay_proto::reorder::{Reorder, ReorderCounts};
use relay_proto::speaker;
use tracing::{debug, error, info, trace, warn};

use crate::budget::{SessionBudget, SessionLimits};

pub type SessionId = u64;

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Audio slots per listener (N).
    pub slots: usize,
    pub max_listeners_per_channel: usize,
    pub max_sessions: usize,
    /// Sessions that have not finished ICE and DTLS yet, at most; and from one client
    /// address (IPv6: one /64), which keeps one address from reserving a channel's places.
    pub max_pending_sessions: usize,
    pub max_pending_per_address: usize,
    /// Sessions of one participant in one channel; a new one replaces the oldest.
    pub max_sessions_per_participant: usize,
    /// A session that has not finished ICE and DTLS by then is closed.
    pub connect_timeout: Duration,
    /// A connected session silent this long is closed (consent freshness, RFC 7675).
    pub idle_timeout: Duration,
    pub report_interval: Duration,
    pub cname: String,
    /// Selection comes from a core: local speakers are uplinked, the core's picks forwarded.
    pub cascade: bool,
    /// What one session may send, before and after its handshake.
    pub limits: SessionLimits,
    /// Uplink repair copies when the core reports loss (on by default).
    pub relay_repair: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            slots: 3,
            max_listeners_per_channel: 25,
            max_sessions: 5000,
            max_pending_sessions: 256,
            max_pending_per_address: 16,
            max_sessions_per_participant: 3,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            cname: "webrtc-sfu".to_owned(),
            cascade: false,
            limits: SessionLimits::default(),
            relay_repair: true,
        }
    }
}

/// Reasons a datagram or packet was dropped; counted, exported as metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    Oversize,
    UnknownKind,
    StunMalformed,
    StunUnknownUfrag,
    StunBadCredentials,
    UnknownSource,
    NotConnected,
    SrtpAuth,
    RtpMalformed,
    RtcpMalformed,
    NotPublishing,
    DtlsQueueFull,
    RelayMalformed,
    RelayUnknownChannel,
    RelayNotSelected,
    SrtpReplay,
    TooManySsrcs,
    RateLimited,
    DtlsRejected,
    DtlsOverBudget,
    UplinkTooLarge,
    /// A core's datagram that waited in the edge's input queue past the age budget.
    RelayStale,
    /// An uplink datagram dropped in the link's queue (waited past the age budget behind a
    /// slow link, or refused by QUIC).
    UplinkQueue,
}

impl DropReason {
    pub const ALL: [DropReason; 23] = [
        DropReason::Oversize,
        DropReason::UnknownKind,
        DropReason::StunMalformed,
        DropReason::StunUnknownUfrag,
        DropReason::StunBadCredentials,
        DropReason::UnknownSource,
        DropReason::NotConnected,
        DropReason::SrtpAuth,
        DropReason::RtpMalformed,
        DropReason::RtcpMalformed,
        DropReason::NotPublishing,
        DropReason::DtlsQueueFull,
        DropReason::RelayMalformed,
        DropReason::RelayUnknownChannel,
        DropReason::RelayNotSelected,
        DropReason::SrtpReplay,
        DropReason::TooManySsrcs,
        DropReason::RateLimited,
        DropReason::DtlsRejected,
        DropReason::DtlsOverBudget,
        DropReason::UplinkTooLarge,
        DropReason::RelayStale,
        DropReason::UplinkQueue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::UnknownKind => "unknown_kind",
            DropReason::StunMalformed => "stun_malformed",
            DropReason::StunUnknownUfrag => "stun_unknown_ufrag",
            DropReason::StunBadCredentials => "stun_bad_credentials",
            DropReason::UnknownSource => "unknown_source",
            DropReason::NotConnected => "not_connected",
            DropReason::SrtpAuth => "srtp_auth",
            DropReason::RtpMalformed => "rtp_malformed",
            DropReason::RtcpMalformed => "rtcp_malformed",
            DropReason::NotPublishing => "not_publishing",
            DropReason::DtlsQueueFull => "dtls_queue_full",
            DropReason::RelayMalformed => "relay_malformed",
            DropReason::RelayUnknownChannel => "relay_unknown_channel",
            DropReason::RelayNotSelected => "relay_not_selected",
            DropReason::SrtpReplay => "srtp_replay",
            DropReason::TooManySsrcs => "too_many_ssrcs",
            DropReason::RateLimited => "rate_limited",
            DropReason::DtlsRejected => "dtls_rejected",
            DropReason::DtlsOverBudget => "dtls_over_budget",
            DropReason::UplinkTooLarge => "uplink_too_large",
            DropReason::RelayStale => "relay_stale",
            DropReason::UplinkQueue => "uplink_queue",
        }
    }
}

/// Why a session ended; counted, exported as metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client's DELETE.
    Deleted,
    /// The same participant joined the channel again.
    Replaced,
    ConnectTimeout,
    IdleTimeout,
    DtlsFailed,
    DtlsClosed,
    SrtpSetupFailed,
    /// The core removed the participant.
    Kicked,
    /// The drain deadline passed.
    Drained,
    /// Handling its input panicked (contained).
    Panic,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Deleted,
        CloseReason::Replaced,
        CloseReason::ConnectTimeout,
        CloseReason::IdleTimeout,
        CloseReason::DtlsFailed,
        CloseReason::DtlsClosed,
        CloseReason::SrtpSetupFailed,
        CloseReason::Kicked,
        CloseReason::Drained,
        CloseReason::Panic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Deleted => "deleted",
            CloseReason::Replaced => "replaced",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::DtlsFailed => "dtls_failed",
            CloseReason::DtlsClosed => "dtls_closed",
            CloseReason::SrtpSetupFailed => "srtp_setup_failed",
            CloseReason::Kicked => "kicked",
            CloseReason::Drained => "drained",
            CloseReason::Panic => "panic",
        }
    }
}

/// What listeners get and how long joins take, as histograms (rendered at scrape time).
#[derive(Clone, Debug)]
pub struct Quality {
    /// Admitted offer to SRTP ready, seconds.
    pub join: Histogram,
    /// Per receiver report from a listener: fraction lost, jitter (s), round trip (s).
    pub listener_loss: Histogram,
    pub listener_jitter: Histogram,
    pub listener_rtt: Histogram,
    /// From media's read off the socket or a core link to its last send (per turn of the
    /// shell: a receive batch or one relay datagram).
    pub forwarding: node_kit::histogram::InNode,
}

impl Default for Quality {
    fn default() -> Self {
        Quality {
            join: Histogram::new(&[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]),
            listener_loss: Histogram::new(&[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            listener_jitter: Histogram::new(&[0.001, 0.005, 0.01, 0.02, 0.05, 0.1]),
            listener_rtt: Histogram::new(&[0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 1.0]),
            forwarding: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub quality: Quality,
    drops: HashMap<DropReason, u64>,
    pub rtp_in: u64,
    pub rtp_out: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    pub nacks_in: u64,
    pub uplink_out: u64,
    pub relay_in: u64,
    /// Second copies of the core's datagrams dropped (repair copies whose original arrived).
    pub relay_duplicates: u64,
    /// UDP sends to clients the socket refused (counted by the shell).
    pub send_errors: u64,
    pub sessions_opened: u64,
    closed: HashMap<CloseReason, u64>,
    /// Panics contained while handling one input or one handshake.
    pub panics: u64,
    /// Subscriptions refused because a higher lease epoch was seen for the channel.
    pub stale_epoch: u64,
    /// Times a core link went silent and this edge served its own speakers meanwhile.
    pub link_stalls: u64,
}

impl Counters {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    pub fn sessions_closed(&self, reason: CloseReason) -> u64 {
        self.closed.get(&reason).copied().unwrap_or(0)
    }

    pub fn sessions_closed_total(&self) -> u64 {
        self.closed.values().sum()
    }
}

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    #[error("channel has reached its listener limit")]
    ChannelFull,
    #[error("edge has reached its session limit")]
    EdgeFull,
    #[error("edge has too many sessions connecting; retry shortly")]
    TooManyPending,
    #[error("too many sessions connecting from this address; retry shortly")]
    TooManyPendingFromAddress,
    #[error("edge is draining")]
    Draining,
}

/// One listener slot as negotiated on a media section.
#[derive(Clone, Copy, Debug)]
pub struct SlotParams {
    pub ssrc: Ssrc,
    pub payload_type: u8,
    pub audio_level_ext: Option<u8>,
    pub csrc_level_ext: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
pub struct PublishParams {
    pub payload_type: u8,
    pub audio_level_ext: Option<u8>,
}

/// A session as signalling set it up.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub channel: Arc<str>,
    pub participant: Arc<str>,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub publish: Option<PublishParams>,
    pub slots: Vec<SlotParams>,
    /// The SSRC for our receiver reports when we send nothing.
    pub rtcp_ssrc: Ssrc,
    /// The address the offer came from, for the per-address pending limit.
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug)]
pub enum Output {
    Transmit {
        to: SocketAddr,
        data: Bytes,
    },
    /// A DTLS datagram for the session's handshake task.
    Dtls {
        session: SessionId,
        data: Bytes,
    },
    /// The session is gone (timeout, BYE, DELETE): drop its DTLS task.
    Closed {
        session: SessionId,
        reason: CloseReason,
    },
    /// A control message for the core on `link`.
    Relay {
        link: LinkId,
        message: Message,
    },
    /// A media datagram for the core on `link`.
    Uplink {
        link: LinkId,
        data: Bytes,
    },
    /// Open (and keep) a link to the core at `addr` (`host:port`), which a core sent a
    /// channel to; report it with [`Edge::relay_connected`].
    OpenLink {
        link: LinkId,
        addr: String,
    },
}

/// The shell's name for one core link.
pub type LinkId = u32;

/// One core this edge links to.
#[derive(Debug)]
struct CoreLink {
    addr: String,
    up: bool,
    /// This edge's number at that core: the high bits of the speaker ids of channels
    /// served there.
    edge_number: u16,
    /// Configured (tried first for new channels) rather than learnt from a redirect.
    seed: bool,
    /// When anything (media or heartbeat) last came from the core on this link.
    last_heard: Option<Instant>,
    /// Nothing heard for `LINK_STALL`: channels served there fall back to this edge's own
    /// selection until the core is heard again.
    stalled: bool,
    /// What the core's datagrams lose (duplicate filter and counts; reported to the core).
    downlink: LinkLoss,
    /// Whether uplinks go with a repair copy (from the core's reports).
    repair: RepairSwitch,
    /// Repair copies uplinked.
    copies_sent: u64,
    /// Times this link came up again after being down.
    reconnects: u64,
    ever_up: bool,
    /// The core's streams, put back in order.
    reorder: Reorder<Bytes>,
}

impl CoreLink {
    fn new(addr: String, seed: bool) -> Self {
        CoreLink {
            addr,
            up: false,
            edge_number: 0,
            seed,
            last_heard: None,
            stalled: false,
            downlink: LinkLoss::default(),
            repair: RepairSwitch::default(),
            copies_sent: 0,
            reconnects: 0,
            ever_up: false,
            reorder: Reorder::default(),
        }
    }
}

/// How one core link fares, for the operator.
#[derive(Clone, Debug)]
pub struct CoreLinkView {
    pub link: LinkId,
    pub core: String,
    pub up: bool,
    pub stalled: bool,
    /// What this edge received from the core.
    pub downlink: LossCounts,
    /// The loss before repair the core last reported for our uplink.
    pub uplink_loss_permille: u16,
    pub repair_on: bool,
    pub repair_activations: u64,
    pub copies_sent: u64,
    pub reconnects: u64,
    pub reorder: ReorderCounts,
}

/// How often the edge reports the loss it sees on each core link.
const QUALITY_INTERVAL: Duration = Duration::from_secs(1);

/// Silence from a core link (it sends heartbeats every 100 ms) after which the edge
/// serves its own speakers to its own listeners.
const LINK_STALL: Duration = Duration::from_millis(350);

/// Where a channel's media comes from: a core link and that core's id for the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChannelRelay {
    link: LinkId,
    channel_id: u32,
}

/// Where an unserved channel stands in finding its owning core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// Asks when a core link comes up.
    Idle,
    /// A Subscribe went out on `link`.
    Waiting { link: LinkId, since: Instant },
    /// Waits for a new link to the owning core to come up.
    AwaitLink { link: LinkId, since: Instant },
    /// Asks again then.
    RetryAt(Instant),
}

/// How long an edge waits for an answer to a Subscribe, or for a redirect's link to come
/// up, before asking again.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// When the owning core is not reachable from here: ask again after this.
const RETRY_UNREACHABLE_OWNER: Duration = Duration::from_millis(250);
/// Redirects in a row for one channel before the edge backs off.
const MAX_REDIRECTS: u8 = 4;
/// Core links at most (configured and learnt from redirects).
const MAX_CORE_LINKS: usize = 64;

/// What the quality of a session's link looks like from RTCP.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkStats {
    /// Packets the client lost of what we sent it (from its reports).
    pub remote_lost: u32,
    pub remote_jitter_ms: f64,
    pub rtt: Option<Duration>,
    /// Of what the client published: lost and jitter as we measure them.
    pub publish_lost: i64,
    pub publish_jitter_ms: f64,
}

struct Publish {
    params: PublishParams,
    /// This edge's number for the session as a speaker (see `relay_proto::speaker`).
    local: u32,
    /// The SSRC the client sends on (trusted inside this session only).
    ssrc: Option<Ssrc>,
    stats: Option<ReceiveStats>,
    /// In cascade, the last packets: when the core selects this speaker, the ones said
    /// since the packet that won the slot reach this edge's listeners at once, in order
    /// (the core's copies of them come back after newer packets went out directly).
    recent: VecDeque<Recent>,
    /// The newest packet this edge's listeners got directly.
    sent_through: Option<u16>,
}

#[derive(Clone)]
struct Recent {
    sequence: u16,
    timestamp: u32,
    marker: bool,
    level: AudioLevel,
    payload: Bytes,
}

const RECENT_PACKETS: usize = 16;

/// Whether `a` is `b` or after it, in 16-bit sequence space.
fn seq_at_or_after(a: u16, b: u16) -> bool {
    a.wrapping_sub(b) < 0x8000
}

struct ListenerSlot {
    params: SlotParams,
    rewriter: SlotRewriter,
}

struct Session {
    channel: Arc<str>,
    participant: Arc<str>,
    local_pwd: String,
    local_ufrag: String,
    remote_ufrag: String,
    remote: Option<SocketAddr>,
    srtp: Option<SrtpSession>,
    publish: Option<Publish>,
    slots: Vec<ListenerSlot>,
    rtcp_ssrc: Ssrc,
    created: Instant,
    last_seen: Instant,
    next_report: Instant,
    link: LinkStats,
    budget: SessionBudget,
    /// A fragmented ClientHello being put together, and the datagrams held until it is
    /// whole and checked (within the handshake allowance).
    hello: HelloAssembly,
    held_dtls: Vec<Bytes>,
    /// The offer's address key, for the count of pending sessions per address.
    client: Option<IpAddr>,
}

impl Session {
    fn connected(&self) -> bool {
        self.srtp.is_some()
    }
}

struct Channel {
    listeners: Vec<SessionId>,
    /// Publishing sessions by their local speaker number.
    publishers: HashMap<u32, SessionId>,
    /// Local selection by local speaker number: what listeners hear standalone; the
    /// uplink filter in cascade.
    selector: ActiveSpeakers<u32>,
    /// Speaker ids holding each slot: from `selector` standalone, from the core in cascade.
    holders: Vec<Option<u32>>,
    /// The core link and id of this channel's media, once subscribed.
    relay: Option<ChannelRelay>,
    /// The highest lease epoch seen for this channel: media of a lower one is refused.
    epoch: u64,
    /// The core's selection number `core_holders` reflect (from selections and datagrams).
    selection: u32,
    /// The core's selection: what `holders` is unless the channel's link stalls.
    core_holders: Vec<Option<u32>>,
    ask: Ask,
    redirects: u8,
    /// Participant ids of the core's selected speakers, by speaker id.
    holder_names: HashMap<u32, String>,
    /// Sessions of this channel on this edge, connected or not.
    members: usize,
}

impl Channel {
    fn new(slots: usize) -> Self {
        Channel {
            listeners: Vec::new(),
            publishers: HashMap::new(),
            selector: ActiveSpeakers::new(SelectorConfig { slots, ..Default::default() }),
            holders: vec![None; slots],
            relay: None,
            epoch: 0,
            selection: 0,
            core_holders: vec![None; slots],
            ask: Ask::Idle,
            redirects: 0,
            holder_names: HashMap::new(),
            members: 0,
        }
    }
}

/// The fields of one packet forwarded to a slot, from a local publisher or the core.
struct Forwarded<'a> {
    /// The speaker id, which listeners get as the CSRC.
    speaker: Ssrc,
    sequence: u16,
    timestamp: u32,
    marker: bool,
    level: AudioLevel,
    payload: &'a [u8],
}

/// A speaker as the demo page and operators see it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SpeakerView {
    pub participant: String,
    /// The SFU's id for the speaker: the CSRC listeners see.
    pub id: u32,
    pub slot: Option<usize>,
    pub score: f32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChannelView {
    pub listeners: usize,
    pub speakers: Vec<SpeakerView>,
}

const TICK: Duration = Duration::from_millis(50);

/// Level assumed for a publisher that sends no RFC 6464 level: a quiet voice, just above
/// the speaking threshold. It can take a free slot, but any speaker with real levels
/// displaces it after the minimum hold, so it cannot keep a slot from one.
const UNKNOWN_LEVEL: AudioLevel = AudioLevel { level: 63, voice: true };

/// The speaker ids of the edge's own selection (standalone: what listeners hear).
fn local_holders(channel: &Channel, edge_number: u16) -> Vec<Option<u32>> {
    channel.selector.slots().map(|l| l.map(|l| speaker::id(edge_number, l))).collect()
}

/// The edge's own selection while its core is out of reach: its own speakers that still
/// hold a slot keep it (listeners' streams do not move), remote ones (silent now) leave,
/// and the rest of its own top N fill the free slots.
fn own_holders(channel: &Channel, edge_number: u16, cascade: bool) -> Vec<Option<u32>> {
    let own = local_holders(channel, edge_number);
    if !cascade {
        return own;
    }
    let mut holders: Vec<Option<u32>> =
        channel.holders.iter().map(|h| h.filter(|id| own.contains(&Some(*id)))).collect();
    for id in own.into_iter().flatten() {
        if holders.contains(&Some(id)) {
            continue;
        }
        if let Some(free) = holders.iter_mut().find(|h| h.is_none()) {
            *free = Some(id);
        }
    }
    holders
}

pub struct Edge {
    config: EdgeConfig,
    ntp: NtpClock,
    clock_base: Instant,
    next_id: SessionId,
    sessions: HashMap<SessionId, Session>,
    by_ufrag: HashMap<String, SessionId>,
    by_addr: HashMap<SocketAddr, SessionId>,
    channels: HashMap<Arc<str>, Channel>,
    outputs: VecDeque<Output>,
    next_tick: Instant,
    next_quality: Instant,
    /// Core datagrams ready to go on, reused.
    relay_ready: Vec<Bytes>,
    counters: Counters,
    /// Packets to listeners are written and protected here, then sent and dropped.
    tx: TxArena,
    /// Uplink datagrams (held by the link's queue) and the payloads publishers keep for
    /// catch-up.
    uplink: TxArena,
    /// Decrypted input, reused for every packet.
    plain: Vec<u8>,
    links: HashMap<LinkId, CoreLink>,
    next_link: LinkId,
    by_relay_id: HashMap<(LinkId, u32), Arc<str>>,
    /// Sessions that have not finished ICE and DTLS, in all and by client address.
    pending: usize,
    pending_by_address: HashMap<IpAddr, usize>,
    /// Sessions by (channel, participant), oldest first.
    by_participant: HashMap<(Arc<str>, Arc<str>), Vec<SessionId>>,
    /// Publishing sessions by local speaker number, and the next number to try.
    speakers: HashMap<u32, SessionId>,
    next_speaker: u32,
    /// Draining: no new sessions; those left end at this deadline.
    drain_deadline: Option<Instant>,
}

impl Edge {
    pub fn new(config: EdgeConfig, now: Instant, unix_now: Duration) -> Self {
        Edge {
            config,
            ntp: NtpClock::new(now, unix_now),
            clock_base: now,
            next_id: 1,
            sessions: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            channels: HashMap::new(),
            outputs: VecDeque::new(),
            next_tick: now + TICK,
            next_quality: now + QUALITY_INTERVAL,
            relay_ready: Vec::new(),
            counters: Counters::default(),
            tx: TxArena::default(),
            uplink: TxArena::default(),
            plain: Vec::with_capacity(MAX_DATAGRAM),
            links: HashMap::new(),
            next_link: 1,
            by_relay_id: HashMap::new(),
            pending: 0,
            pending_by_address: HashMap::new(),
            by_participant: HashMap::new(),
            speakers: HashMap::new(),
            next_speaker: 1,
            drain_deadline: None,
        }
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn drop_packet(&mut self, reason: DropReason) {
        trace!(reason = reason.as_str(), "drop");
        *self.counters.drops.entry(reason).or_default() += 1;
    }

    /// Counts a drop that happened in the shell (e.g. a full DTLS queue).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drop_packet(reason);
    }

    /// Counts a UDP send to a client that failed.
    /// Time one turn's media took through this edge (measured by the shell).
    pub fn observe_forwarding(&mut self, took: std::time::Duration) {
        self.counters.quality.forwarding.0.observe(took.as_secs_f64());
    }

    pub fn count_send_error(&mut self) {
        self.counters.send_errors += 1;
    }

    /// Counts `n` drops the shell made for `reason`.
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        if n > 0 {
            *self.counters.drops.entry(reason).or_default() += n;
        }
    }

    /// Whether a new session with (`listens`) from `client` could join `channel` now.
    pub fn admit(&self, channel: &str, listens: bool, client: Option<IpAddr>) -> Result<(), AdmitError> {
        if self.drain_deadline.is_some() {
            return Err(AdmitError::Draining);
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Err(AdmitError::EdgeFull);
        }
        if self.pending >= self.config.max_pending_sessions {
            return Err(AdmitError::TooManyPending);
        }
        let from_client =
            client.map_or(0, |ip| self.pending_by_address.get(&node_kit::per_ip::key(ip)).copied().unwrap_or(0));
        if from_client >= self.config.max_pending_per_address {
            return Err(AdmitError::TooManyPendingFromAddress);
        }
        if listens {
            let listeners = self.channels.get(channel).map_or(0, |c| c.listeners.len());
            if listeners >= self.config.max_listeners_per_channel {
                return Err(AdmitError::ChannelFull);
            }
        }
        Ok(())
    }

    /// A session is no longer pending (connected or gone).
    fn pending_done(&mut self, client: Option<IpAddr>) {
        self.pending -= 1;
        if let Some(key) = client {
            if let Some(n) = self.pending_by_address.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.pending_by_address.remove(&key);
                }
            }
        }
    }

    /// A free local speaker number for session `id` (numbers are reused after 2^20).
    fn allocate_speaker(&mut self, id: SessionId) -> u32 {
        loop {
            let local = self.next_speaker;
            self.next_speaker = if local >= speaker::MAX_LOCAL { 1 } else { local + 1 };
            if let std::collections::hash_map::Entry::Vacant(e) = self.speakers.entry(local) {
                e.insert(id);
                return local;
            }
        }
    }

    /// This edge's number at the core serving `channel` (0 standalone or unserved).
    fn edge_number_for(links: &HashMap<LinkId, CoreLink>, channel: &Channel) -> u16 {
        channel.relay.and_then(|r| links.get(&r.link)).map_or(0, |l| l.edge_number)
    }

    /// Whether the edge's own selection decides the slots of `channel`: standalone, or in
    /// cascade while no core serves it or its core link stalls (local speakers stay
    /// audible to local listeners through a blip).
    fn local_mode(links: &HashMap<LinkId, CoreLink>, cascade: bool, channel: &Channel) -> bool {
        !cascade || channel.relay.is_none_or(|r| links.get(&r.link).is_none_or(|l| l.stalled || !l.up))
    }

    /// Adds a session if the edge, the channel and the pending set have room. A participant
    /// at its session limit in the channel makes room by losing its oldest session.
    pub fn add_session(&mut self, new: NewSession, now: Instant) -> Result<SessionId, AdmitError> {
        let listens = !new.slots.is_empty();
        let participant_key = (new.channel.clone(), new.participant.clone());
        let oldest = self
            .by_participant
            .get(&participant_key)
            .filter(|ids| ids.len() >= self.config.max_sessions_per_participant)
            .map(|ids| ids[0]);
        if let Some(oldest) = oldest {
            self.remove_session(oldest, CloseReason::Replaced);
        }
        self.admit(&new.channel, listens, new.client_ip)?;
        let id = self.next_id;
        self.next_id += 1;
        let local = if new.publish.is_some() { self.allocate_speaker(id) } else { 0 };
        let slots = new.slots.iter().take(self.config.slots).map(|&params| ListenerSlot {
            params,
            rewriter: SlotRewriter::new(params.ssrc, rand::random(), rand::random()),
        });
        let session = Session {
            channel: new.channel.clone(),
            participant: new.participant.clone(),
            local_pwd: new.local_pwd,
            local_ufrag: new.local_ufrag.clone(),
            remote_ufrag: new.remote_ufrag,
            remote: None,
            srtp: None,
            publish: new.publish.map(|params| Publish {
                params,
                local,
                ssrc: None,
                stats: None,
                recent: VecDeque::new(),
                sent_through: None,
            }),
            slots: slots.collect(),
            rtcp_ssrc: new.rtcp_ssrc,
            created: now,
            last_seen: now,
            next_report: now + self.config.report_interval,
            link: LinkStats::default(),
            budget: SessionBudget::new(&self.config.limits, now),
            hello: HelloAssembly::default(),
            held_dtls: Vec::new(),
            client: new.client_ip.map(node_kit::per_ip::key),
        };
        let slots = self.config.slots;
        let is_new = !self.channels.contains_key(&new.channel);
        let channel = self.channels.entry(new.channel.clone()).or_insert_with(|| Channel::new(slots));
        channel.members += 1;
        if listens {
            channel.listeners.push(id);
        }
        if self.config.cascade {
            let listeners = channel.listeners.len() as u32;
            match (is_new, channel.relay) {
                (true, _) => self.ask(&new.channel, None, now),
                (false, Some(r)) if listens => {
                    let speakers = channel.publishers.len() as u32;
                    let message = Message::Load { channel_id: r.channel_id, listeners, speakers };
                    self.outputs.push_back(Output::Relay { link: r.link, message });
                }
                _ => {}
            }
        }
        self.by_ufrag.insert(new.local_ufrag, id);
        self.sessions.insert(id, session);
        self.pending += 1;
        if let Some(key) = new.client_ip.map(node_kit::per_ip::key) {
            *self.pending_by_address.entry(key).or_default() += 1;
        }
        self.by_participant.entry(participant_key).or_default().push(id);
        self.counters.sessions_opened += 1;
        info!(session = id, channel = %new.channel, participant = ?new.participant, listens, "session added");
        Ok(id)
    }

    /// Ends a session (DELETE, DTLS failure, timeout); sends BYE if it was connected.
    pub fn remove_session(&mut self, id: SessionId, reason: CloseReason) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_ufrag.remove(&s.local_ufrag);
        if !s.connected() {
            self.pending_done(s.client);
        }
        let participant_key = (s.channel.clone(), s.participant.clone());
        if let Some(ids) = self.by_participant.get_mut(&participant_key) {
            ids.retain(|&other| other != id);
            if ids.is_empty() {
                self.by_participant.remove(&participant_key);
            }
        }
        if let Some(publish) = &s.publish {
            self.speakers.remove(&publish.local);
        }
        if let Some(addr) = s.remote {
            // A newer session may have taken this address over; its mapping stays.
            if self.by_addr.get(&addr) == Some(&id) {
                self.by_addr.remove(&addr);
            }
            let ours: Vec<Ssrc> = s.slots.iter().map(|l| l.rewriter.ssrc).collect();
            let sources = if ours.is_empty() { vec![s.rtcp_ssrc] } else { ours };
            if let (Some(srtp), Some(bye)) = (s.srtp.as_mut(), rtcp_report::bye(&sources, &self.config.cname)) {
                if let Ok(data) = srtp.protect_rtcp(&bye) {
                    self.counters.rtcp_out += 1;
                    self.outputs.push_back(Output::Transmit { to: addr, data });
                }
            }
        }
        if let Some(channel) = self.channels.get_mut(&s.channel) {
            channel.listeners.retain(|&l| l != id);
            if let Some(publish) = &s.publish {
                channel.publishers.remove(&publish.local);
                channel.selector.remove(&publish.local);
            }
            channel.members -= 1;
            let (listeners, speakers) = (channel.listeners.len() as u32, channel.publishers.len() as u32);
            let empty = channel.members == 0;
            if let Some(r) = channel.relay {
                let channel_id = r.channel_id;
                let message = if empty {
                    Message::Unsubscribe { channel_id }
                } else {
                    Message::Load { channel_id, listeners, speakers }
                };
                self.outputs.push_back(Output::Relay { link: r.link, message });
            }
            if empty {
                if let Some(r) = channel.relay {
                    self.by_relay_id.remove(&(r.link, r.channel_id));
                }
                self.channels.remove(&s.channel);
            }
        }
        *self.counters.closed.entry(reason).or_default() += 1;
        info!(session = id, channel = %s.channel, reason = reason.as_str(), "session closed");
        self.outputs.push_back(Output::Closed { session: id, reason });
    }

    pub fn dtls_established(&mut self, id: SessionId, keys: &SrtpKeys, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.connected() {
            return;
        }
        match SrtpSession::new(keys) {
            Ok(srtp) => {
                debug!(session = id, profile = ?keys.profile, "connected");
                s.srtp = Some(srtp);
                s.last_seen = now;
                self.counters.quality.join.observe(now.saturating_duration_since(s.created).as_secs_f64());
                let client = s.client;
                self.pending_done(client);
            }
            Err(e) => {
                debug!(session = id, error = %e, "srtp set-up failed");
                self.remove_session(id, CloseReason::SrtpSetupFailed);
            }
        }
    }

    /// An outgoing DTLS datagram of the session's handshake task.
    pub fn send_dtls(&mut self, id: SessionId, data: Bytes) {
        if let Some(to) = self.sessions.get(&id).and_then(|s| s.remote) {
            self.outputs.push_back(Output::Transmit { to, data });
        }
    }

    /// One datagram from a client, validated in layers, cheapest first: size, first
    /// byte, the address ICE learnt, the session's rate, then per kind our own bounds
    /// checks before any library or SRTP state sees it.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        if buf.len() > MAX_DATAGRAM {
            return self.drop_packet(DropReason::Oversize);
        }
        match classify(buf) {
            PacketKind::Stun => self.handle_stun(now, from, buf),
            PacketKind::Unknown => self.drop_packet(DropReason::UnknownKind),
            kind => {
                let Some(&id) = self.by_addr.get(&from) else {
                    return self.drop_packet(DropReason::UnknownSource);
                };
                let Some(s) = self.sessions.get_mut(&id) else { return };
                if !s.budget.admit(buf.len(), now) {
                    return self.drop_packet(DropReason::RateLimited);
                }
                match kind {
                    PacketKind::Dtls => self.handle_dtls(now, id, buf),
                    PacketKind::Rtp => self.handle_rtp(now, id, buf),
                    PacketKind::Rtcp => self.handle_rtcp(now, id, buf),
                    PacketKind::Stun | PacketKind::Unknown => {}
                }
            }
        }
    }

    /// DTLS for the session's handshake task: only records a client can send, within the
    /// session's handshake allowance (and a slow rate once connected).
    fn handle_dtls(&mut self, now: Instant, id: SessionId, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let shape = match media::dtls_filter::inspect(buf) {
            Ok(shape) => shape,
            Err(reject) => {
                trace!(session = id, reason = reject.as_str(), "dtls refused");
                return self.drop_packet(DropReason::DtlsRejected);
            }
        };
        if !s.budget.admit_dtls(buf.len(), shape, s.connected(), now) {
            return self.drop_packet(DropReason::DtlsOverBudget);
        }
        s.last_seen = now;
        if shape.partial_hello {
            // The library reads no part of a ClientHello before we checked all of it.
            let mut step = HelloStep::Pass;
            for f in media::dtls_filter::hello_fragments(buf) {
                step = s.hello.add(&f);
                if step == HelloStep::Reject {
                    break;
                }
            }
            match step {
                HelloStep::Hold => return s.held_dtls.push(Bytes::copy_from_slice(buf)),
                HelloStep::Reject => {
                    s.held_dtls.clear();
                    return self.drop_packet(DropReason::DtlsRejected);
                }
                HelloStep::Release => {
                    for data in s.held_dtls.drain(..) {
                        self.outputs.push_back(Output::Dtls { session: id, data });
                    }
                }
                HelloStep::Pass => {}
            }
        }
        self.outputs.push_back(Output::Dtls { session: id, data: Bytes::copy_from_slice(buf) });
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let req = match BindingRequest::parse(buf) {
            Ok(r) => r,
            Err(_) => return self.drop_packet(DropReason::StunMalformed),
        };
        let Some(&id) = self.by_ufrag.get(&req.local_ufrag) else {
            return self.drop_packet(DropReason::StunUnknownUfrag);
        };
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if req.remote_ufrag != s.remote_ufrag {
            return self.drop_packet(DropReason::StunBadCredentials);
        }
        // Charged before the integrity check, which is the expensive part.
        if !s.budget.admit(buf.len(), now) {
            return self.drop_packet(DropReason::RateLimited);
        }
        let use_candidate = req.use_candidate;
        let response = match req.respond(&s.local_pwd, from) {
            Ok(r) => r,
            Err(_) => return self.drop_packet(DropReason::StunBadCredentials),
        };
        s.last_seen = now;
        // Learn the address from the first valid check; move only on a nominating one.
        if s.remote.is_none() || (use_candidate && s.remote != Some(from)) {
            if let Some(old) = s.remote.replace(from) {
                if self.by_addr.get(&old) == Some(&id) {
                    self.by_addr.remove(&old);
                }
            }
            if let Some(other) = self.by_addr.insert(from, id) {
                if other != id {
                    debug!(session = id, previous = other, "address taken over by a newer session");
                }
            }
            debug!(session = id, "ice address learnt");
        }
        self.outputs.push_back(Output::Transmit { to: from, data: Bytes::from(response) });
    }

    fn handle_rtp(&mut self, now: Instant, id: SessionId, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(srtp) = s.srtp.as_mut() else {
            return self.drop_packet(DropReason::NotConnected);
        };
        let Some(publish) = s.publish.as_ref() else {
            return self.drop_packet(DropReason::NotPublishing);
        };
        // The clear header is bounds-checked (CSRCs, every extension element) before
        // SRTP looks at it; SRTP keeps no state for a packet that does not authenticate.
        match RtpView::parse_protected(buf) {
            Ok(h) if h.payload_type == publish.params.payload_type => {}
            _ => return self.drop_packet(DropReason::RtpMalformed),
        }
        let mut plain = std::mem::take(&mut self.plain);
        let result = srtp.unprotect_rtp_into(buf, &mut plain);
        if result.is_ok() {
            s.last_seen = now;
            self.forward_published(now, id, &plain);
        }
        self.plain = plain;
        match result {
            Ok(()) => {}
            Err(SrtpError::Replay) => self.drop_packet(DropReason::SrtpReplay),
            Err(SrtpError::TooManySsrcs) => self.drop_packet(DropReason::TooManySsrcs),
            Err(_) => self.drop_packet(DropReason::SrtpAuth),
        }
    }

    /// An authenticated packet of a publishing session: selection, then uplink or forwarding.
    fn forward_published(&mut self, now: Instant, id: SessionId, plain: &[u8]) {
        let view = match RtpView::parse(plain) {
            Ok(v) if !v.payload().is_empty() => v,
            _ => return self.drop_packet(DropReason::RtpMalformed),
        };
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(publish) = s.publish.as_mut() else { return };
        self.counters.rtp_in += 1;
        let ssrc = view.ssrc;
        let local = publish.local;
        let Some(channel) = self.channels.get_mut(&s.channel) else { return };
        let edge_number = Self::edge_number_for(&self.links, channel);
        let speaker_id = speaker::id(edge_number, local);
        if publish.ssrc != Some(ssrc) {
            // The client's SSRC is only its stream's name inside this session: a new one
            // restarts the statistics, never the speaker's identity.
            publish.ssrc = Some(ssrc);
            publish.stats = Some(ReceiveStats::new(ssrc, self.clock_base));
        }
        if channel.publishers.insert(local, id).is_none() {
            debug!(session = id, %ssrc, speaker = speaker_id, "publishing");
            if let Some(r) = channel.relay {
                let participant = s.participant.to_string();
                let message = Message::SpeakerInfo { channel_id: r.channel_id, speaker: speaker_id, participant };
                self.outputs.push_back(Output::Relay { link: r.link, message });
            }
        }
        if let Some(stats) = publish.stats.as_mut() {
            stats.on_packet(view.sequence, view.timestamp, now);
        }
        let level = publish.params.audio_level_ext.and_then(|ext| view.audio_level(ext)).unwrap_or(UNKNOWN_LEVEL);
        let channel_name = s.channel.clone();
        channel.selector.on_level(local, level, now);
        let changed = channel.selector.update(now);
        let packet = Forwarded {
            speaker: Ssrc(speaker_id),
            sequence: view.sequence,
            timestamp: view.timestamp,
            marker: view.marker,
            level,
            payload: view.payload(),
        };
        let local_mode = Self::local_mode(&self.links, self.config.cascade, channel);
        // In cascade, one copy of the payload (in the uplink arena) serves the uplink
        // datagram and the catch-up buffer.
        let mut recent_payload = None;
        if self.config.cascade {
            let uplink = channel.relay.filter(|_| channel.selector.slot_of(&local).is_some());
            if uplink.is_some() && packet.payload.len() > relay_proto::datagram::MAX_PAYLOAD {
                // The core would refuse it and count it against this edge's link.
                return self.drop_packet(DropReason::UplinkTooLarge);
            }
            let buf = self.uplink.start();
            match channel.relay.filter(|_| packet.payload.len() <= relay_proto::datagram::MAX_PAYLOAD) {
                Some(ChannelRelay { channel_id, .. }) => MediaHeader {
                    channel_id,
                    speaker: speaker_id,
                    sequence: packet.sequence,
                    timestamp: packet.timestamp,
                    level: level.level,
                    voice: level.voice,
                    marker: packet.marker,
                    slot: None,
                    selection: 0,
                }
                .encode(packet.payload, buf),
                None => buf.extend_from_slice(packet.payload),
            }
            let written = self.uplink.finish();
            recent_payload = Some(written.slice(written.len() - packet.payload.len()..));
            if let Some(ChannelRelay { link, .. }) = uplink {
                self.counters.uplink_out += 1;
                if let Some(l) = self.links.get_mut(&link).filter(|l| l.repair.is_on()) {
                    l.copies_sent += 1;
                    let copy = self.uplink.start();
                    copy.extend_from_slice(&written);
                    relay_proto::datagram::set_copy_mark(copy);
                    let copy = self.uplink.finish();
                    self.outputs.push_back(Output::Uplink { link, data: written });
                    self.outputs.push_back(Output::Uplink { link, data: copy });
                } else {
                    self.outputs.push_back(Output::Uplink { link, data: written });
                }
            }
        }
        if changed && local_mode {
            let holders = own_holders(channel, edge_number, self.config.cascade);
            Self::set_holders(channel, holders, &mut self.sessions, &channel_name);
        }
        // The edge's own selected speakers reach its listeners directly, in cascade too:
        // no round trip through the core, and nothing lost while the core link blips
        // (the core's copies that follow are dropped as duplicates per slot).
        let slot = channel.holders.iter().position(|h| *h == Some(speaker_id));
        if self.config.cascade {
            if let Some(publish) = self.sessions.get_mut(&id).and_then(|s| s.publish.as_mut()) {
                if publish.recent.len() == RECENT_PACKETS {
                    publish.recent.pop_front();
                }
                publish.recent.push_back(Recent {
                    sequence: packet.sequence,
                    timestamp: packet.timestamp,
                    marker: packet.marker,
                    level,
                    payload: recent_payload.unwrap_or_default(),
                });
                // Not selected: nothing sent directly to resume from.
                publish.sent_through = slot.map(|_| packet.sequence);
            }
        }
        let Some(slot) = slot else { return };
        self.forward(id, &channel_name, slot, &packet, now);
    }

    /// Sets who holds each slot, detaching changed slots so the next packet starts a new mapping.
    fn set_holders(
        channel: &mut Channel,
        holders: Vec<Option<u32>>,
        sessions: &mut HashMap<SessionId, Session>,
        name: &str,
    ) {
        for (slot, (old, new)) in channel.holders.iter().zip(&holders).enumerate() {
            if old == new {
                continue;
            }
            debug!(channel = name, slot, from = ?old, to = ?new, "slot changed");
            for l in &channel.listeners {
                if let Some(ls) = sessions.get_mut(l).and_then(|s| s.slots.get_mut(slot)) {
                    ls.rewriter.detach();
                }
            }
        }
        channel.holders = holders;
    }

    /// Sends one packet on `slot` to every listener of the channel but `from`.
    fn forward(&mut self, from: SessionId, channel: &str, slot: usize, packet: &Forwarded<'_>, now: Instant) {
        let Some(ch) = self.channels.get(channel) else { return };
        let payload = packet.payload;
        let level = packet.level;
        for &lid in &ch.listeners {
            if lid == from {
                continue;
            }
            let Some(l) = self.sessions.get_mut(&lid) else { continue };
            let (Some(to), Some(srtp)) = (l.remote, l.srtp.as_mut()) else { continue };
            let Some(ls) = l.slots.get_mut(slot) else { continue };
            let Some(out) = ls.rewriter.rewrite(packet.speaker, packet.sequence, packet.timestamp, payload.len(), now)
            else {
                continue;
            };
            let p = ls.params;
            OutHeader {
                payload_type: p.payload_type,
                marker: packet.marker,
                sequence: out.sequence,
                timestamp: out.timestamp,
                ssrc: p.ssrc,
                csrc: Some(packet.speaker),
                audio_level: p.audio_level_ext.map(|id| (id, level)),
                csrc_level: p.csrc_level_ext.map(|id| (id, level.level)),
            }
            .write(payload, self.tx.start());
            match srtp.protect_rtp_in_place(self.tx.current()) {
                Ok(()) => {
                    self.counters.rtp_out += 1;
                    self.outputs.push_back(Output::Transmit { to, data: self.tx.finish() });
                }
                Err(e) => debug!(session = lid, error = %e, "srtp protect failed"),
            }
        }
    }

    /// Drains the edge: no new sessions from now, and those left end at `deadline` (an
    /// earlier deadline than one already set wins). The core is told, so it stops placing
    /// clients here at once.
    pub fn drain(&mut self, deadline: Instant, now: Instant) {
        let deadline = self.drain_deadline.map_or(deadline, |d| d.min(deadline));
        if self.drain_deadline.is_none() {
            info!(sessions = self.sessions.len(), in_s = deadline.saturating_duration_since(now).as_secs(), "draining");
        }
        self.drain_deadline = Some(deadline);
        let deadline_ms = deadline.saturating_duration_since(now).as_millis().min(u128::from(u32::MAX)) as u32;
        for (&link, l) in &self.links {
            if l.up {
                self.outputs.push_back(Output::Relay { link, message: Message::Drain { deadline_ms } });
            }
        }
    }

    /// Draining, with sessions left or not.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// Takes new sessions: not draining, and (in cascade mode) linked to a core.
    pub fn is_ready(&self) -> bool {
        self.drain_deadline.is_none() && (!self.config.cascade || self.links.values().any(|l| l.up))
    }

    /// A configured core: links to it are tried first for new channels. The shell opens
    /// and keeps the link and reports it with [`Edge::relay_connected`].
    pub fn add_core(&mut self, addr: String) -> LinkId {
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(link, CoreLink::new(addr, true));
        link
    }

    /// The link to a core is up, and that core numbered this edge `edge_number` (the high
    /// bits of the speaker ids of channels it serves): channels without a core ask now.
    pub fn relay_connected(&mut self, link: LinkId, edge_number: u16, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.up = true;
        l.edge_number = edge_number;
        l.last_heard = Some(now);
        l.stalled = false;
        l.downlink.reset_streams();
        l.reorder.clear();
        l.repair.reset();
        if l.ever_up {
            l.reconnects += 1;
        }
        l.ever_up = true;
        info!(link, core = %l.addr, edge_number, "core link up");
        let waiting: Vec<(Arc<str>, Option<LinkId>)> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.relay.is_none())
            .filter_map(|(name, ch)| match ch.ask {
                Ask::Idle => Some((name.clone(), None)),
                Ask::AwaitLink { link: l, .. } if l == link => Some((name.clone(), Some(link))),
                _ => None,
            })
            .collect();
        for (name, prefer) in waiting {
            self.ask(&name, prefer, now);
        }
    }

    /// The link is down: listeners stay; channels served there find their core again.
    pub fn relay_disconnected(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else { return };
        if !l.up {
            return;
        }
        l.up = false;
        info!(link, core = %l.addr, "core link down");
        let affected: Vec<Arc<str>> = self
            .channels
            .iter()
            .filter(|(_, ch)| {
                ch.relay.is_some_and(|r| r.link == link) || matches!(ch.ask, Ask::Waiting { link: l, .. } if l == link)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in affected {
            self.detach(&name);
            self.ask(&name, None, now);
        }
    }

    /// The link new channels ask first: the first configured core that is up, else any.
    fn home_link(&self) -> Option<LinkId> {
        let up = |seed: bool| self.links.iter().filter(|(_, l)| l.up && (l.seed || !seed)).map(|(&k, _)| k).min();
        up(true).or_else(|| up(false))
    }

    /// Sends a Subscribe for `name` on `prefer` if it is up, else on the home link.
    fn ask(&mut self, name: &Arc<str>, prefer: Option<LinkId>, now: Instant) {
        let link = prefer.filter(|l| self.links.get(l).is_some_and(|l| l.up)).or_else(|| self.home_link());
        let Some(ch) = self.channels.get_mut(name) else { return };
        match link {
            Some(link) => {
                ch.ask = Ask::Waiting { link, since: now };
                let message = Message::Subscribe { channel: name.to_string(), listeners: ch.listeners.len() as u32 };
                self.outputs.push_back(Output::Relay { link, message });
            }
            None => ch.ask = Ask::Idle,
        }
    }

    /// The channel's media no longer comes from where it came: slots are vacated so the
    /// next selection starts new mappings and every slot stays continuous.
    fn detach(&mut self, name: &Arc<str>) {
        let slots = self.config.slots;
        let Some(ch) = self.channels.get_mut(name) else { return };
        if let Some(r) = ch.relay.take() {
            self.by_relay_id.remove(&(r.link, r.channel_id));
            ch.selection = 0;
            ch.core_holders = vec![None; slots];
            // Until a core serves it again, the edge's own speakers are heard here.
            let holders = own_holders(ch, 0, true);
            Self::set_holders(ch, holders, &mut self.sessions, name);
        }
    }

    /// A link to `addr`, made (and asked of the shell) if there is none yet: `None` when
    /// the address is unusable or there are too many links.
    fn link_to(&mut self, addr: &str) -> Option<(LinkId, bool)> {
        if let Some((&id, _)) = self.links.iter().find(|(_, l)| l.addr == addr) {
            return Some((id, false));
        }
        let usable = !addr.is_empty() && addr.len() <= 255 && addr.chars().all(|c| c.is_ascii_graphic());
        if !usable || self.links.len() >= MAX_CORE_LINKS {
            return None;
        }
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(link, CoreLink::new(addr.to_owned(), false));
        self.outputs.push_back(Output::OpenLink { link, addr: addr.to_owned() });
        Some((link, true))
    }

    /// Whether a core's answer about `name` on `link` is one this edge waits for: the
    /// channel is served there, or was asked there.
    fn answers_for(&self, name: &str, link: LinkId) -> bool {
        self.channels.get(name).is_some_and(|ch| {
            ch.relay.is_some_and(|r| r.link == link) || matches!(ch.ask, Ask::Waiting { link: l, .. } if l == link)
        })
    }

    pub fn handle_relay_control(&mut self, link: LinkId, message: Message, now: Instant) {
        self.heard_from(link, now);
        match message {
            Message::Subscribed { channel, channel_id, epoch } => {
                let name = self.channels.get_key_value(channel.as_str()).map(|(k, _)| k.clone());
                let Some(name) = name else {
                    // Gone while the subscription was under way.
                    self.outputs.push_back(Output::Relay { link, message: Message::Unsubscribe { channel_id } });
                    return;
                };
                let ch = self.channels.get_mut(&name).expect("found above");
                if epoch < ch.epoch {
                    // An owner older than one already seen: fenced off.
                    self.counters.stale_epoch += 1;
                    warn!(%channel, epoch, seen = ch.epoch, link, "subscription from a stale channel owner refused");
                    self.outputs.push_back(Output::Relay { link, message: Message::Unsubscribe { channel_id } });
                    if ch.relay.is_none() {
                        ch.ask = Ask::RetryAt(now + RETRY_UNREACHABLE_OWNER);
                    }
                    return;
                }
                let new = ChannelRelay { link, channel_id };
                if let Some(old) = ch.relay.filter(|&old| old != new) {
                    if old.link != link {
                        let message = Message::Unsubscribe { channel_id: old.channel_id };
                        self.outputs.push_back(Output::Relay { link: old.link, message });
                    }
                    self.detach(&name);
                }
                let ch = self.channels.get_mut(&name).expect("found above");
                ch.relay = Some(new);
                ch.epoch = epoch;
                ch.ask = Ask::Idle;
                ch.redirects = 0;
                self.by_relay_id.insert((link, channel_id), name.clone());
                // Counts may have moved while the subscription was under way.
                let (listeners, speakers) = (ch.listeners.len() as u32, ch.publishers.len() as u32);
                self.outputs
                    .push_back(Output::Relay { link, message: Message::Load { channel_id, listeners, speakers } });
                let edge_number = self.links.get(&link).map_or(0, |l| l.edge_number);
                for (&local, sid) in &ch.publishers {
                    if let Some(s) = self.sessions.get(sid) {
                        let participant = s.participant.to_string();
                        let speaker = speaker::id(edge_number, local);
                        let message = Message::SpeakerInfo { channel_id, speaker, participant };
                        self.outputs.push_back(Output::Relay { link, message });
                    }
                }
                debug!(%channel, channel_id, epoch, link, "subscribed");
            }
            Message::Redirect { channel, core } => {
                if !self.answers_for(&channel, link) {
                    return;
                }
                let name = self.channels.get_key_value(channel.as_str()).map(|(k, _)| k.clone()).expect("checked");
                self.detach(&name);
                let redirects = {
                    let ch = self.channels.get_mut(&name).expect("checked");
                    ch.redirects = ch.redirects.saturating_add(1);
                    ch.redirects
                };
                debug!(%channel, to = ?core, link, "redirected to the owning core");
                let target = if redirects > MAX_REDIRECTS { None } else { self.link_to(&core) };
                let ch = self.channels.get_mut(&name).expect("checked");
                match target {
                    Some((target, _)) if self.links.get(&target).is_some_and(|l| l.up) => {
                        self.ask(&name, Some(target), now)
                    }
                    Some((target, true)) => ch.ask = Ask::AwaitLink { link: target, since: now },
                    // The owner is known and unreachable from here (it may have died and
                    // its lease not expired yet): ask again shortly.
                    _ => {
                        if redirects > MAX_REDIRECTS {
                            ch.redirects = 0;
                        }
                        ch.ask = Ask::RetryAt(now + RETRY_UNREACHABLE_OWNER);
                    }
                }
            }
            Message::Unavailable { channel, retry_ms } => {
                if !self.answers_for(&channel, link) {
                    return;
                }
                let name = self.channels.get_key_value(channel.as_str()).map(|(k, _)| k.clone()).expect("checked");
                self.detach(&name);
                let wait = Duration::from_millis(u64::from(retry_ms).clamp(50, 10_000));
                if let Some(ch) = self.channels.get_mut(&name) {
                    ch.ask = Ask::RetryAt(now + wait);
                }
            }
            Message::Selection { channel_id, selection, slots } => {
                let Some(name) = self.by_relay_id.get(&(link, channel_id)).cloned() else {
                    return self.drop_packet(DropReason::RelayUnknownChannel);
                };
                let Some(ch) = self.channels.get_mut(&name) else { return };
                if selection < ch.selection {
                    // A datagram of a newer selection got here first: only names are news.
                    for h in slots.into_iter().flatten() {
                        if ch.holders.contains(&Some(h.speaker)) {
                            ch.holder_names.insert(h.speaker, h.participant);
                        }
                    }
                    return;
                }
                ch.selection = selection;
                let mut holders = vec![None; self.config.slots];
                ch.holder_names.clear();
                for (slot, holder) in holders.iter_mut().zip(slots) {
                    if let Some(h) = holder {
                        *slot = Some(h.speaker);
                        ch.holder_names.insert(h.speaker, h.participant);
                    }
                }
                ch.core_holders = holders.clone();
                Self::set_holders(ch, holders, &mut self.sessions, &name);
            }
            Message::Kick { channel, participant } => {
                // Only from the core serving the channel.
                let served_there = |ch: &Channel| ch.relay.is_some_and(|r| r.link == link);
                if !self.channels.get(channel.as_str()).is_some_and(served_there) {
                    return;
                }
                let key: (Arc<str>, Arc<str>) = (channel.as_str().into(), participant.as_str().into());
                let ids = self.by_participant.get(&key).cloned().unwrap_or_default();
                info!(%channel, participant = ?participant, sessions = ids.len(), "kicked by the core");
                for id in ids {
                    self.remove_session(id, CloseReason::Kicked);
                }
            }
            Message::Drain { deadline_ms } => {
                info!(deadline_ms, link, "core asks this edge to drain");
                self.drain(now + Duration::from_millis(u64::from(deadline_ms)), now);
            }
            Message::Goodbye { reason } => info!(reason = ?reason, link, "core says goodbye"),
            Message::LinkQuality { lost_permille } => {
                if let Some(l) = self.links.get_mut(&link).filter(|_| self.config.relay_repair) {
                    let was_on = l.repair.is_on();
                    l.repair.on_report(lost_permille, now);
                    if l.repair.is_on() != was_on {
                        info!(link, core = %l.addr, lost_permille, repair = l.repair.is_on(), "repair copies on the uplink");
                    }
                }
            }
            other => debug!(?other, "unexpected message from the core"),
        }
    }

    /// Something came from the core on `link`: a stalled link is back, and its channels
    /// play the core's selection again (slots stay continuous).
    fn heard_from(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.last_heard = Some(now);
        if !l.stalled {
            return;
        }
        l.stalled = false;
        info!(link, core = %l.addr, "core link heard again: the core's selection plays");
        for (name, ch) in self.channels.iter_mut().filter(|(_, ch)| ch.relay.is_some_and(|r| r.link == link)) {
            let holders = ch.core_holders.clone();
            Self::set_holders(ch, holders, &mut self.sessions, name);
        }
    }

    /// Every `QUALITY_INTERVAL`: tells each core what its datagrams lost before repair.
    fn report_quality(&mut self, now: Instant) {
        if now < self.next_quality {
            return;
        }
        self.next_quality = now + QUALITY_INTERVAL;
        let mut idle_held = Vec::new();
        for (&link, l) in self.links.iter_mut() {
            let mut out = Vec::new();
            l.reorder.sweep(now, &mut out);
            idle_held.extend(out.into_iter().map(|d| (link, d)));
        }
        for (link, d) in idle_held {
            self.deliver_relay(link, &d, now);
        }
        for (&link, l) in self.links.iter_mut().filter(|(_, l)| l.up) {
            l.downlink.sweep(now);
            let interval = l.downlink.take_interval();
            if interval.received + interval.lost > 0 {
                let message = Message::LinkQuality { lost_permille: interval.raw_loss_permille() };
                self.outputs.push_back(Output::Relay { link, message });
            }
        }
    }

    /// Each core link's state, loss and repair.
    pub fn core_links(&self) -> Vec<CoreLinkView> {
        self.links
            .iter()
            .map(|(&link, l)| CoreLinkView {
                link,
                core: l.addr.clone(),
                up: l.up,
                stalled: l.stalled,
                downlink: l.downlink.counts(),
                uplink_loss_permille: l.repair.reported_permille,
                repair_on: l.repair.is_on(),
                repair_activations: l.repair.activations,
                copies_sent: l.copies_sent,
                reconnects: l.reconnects,
                reorder: l.reorder.counts,
            })
            .collect()
    }

    /// Links the core has been silent on for `LINK_STALL`: their channels fall back to
    /// this edge's own selection.
    fn find_stalls(&mut self, now: Instant) {
        for (&link, l) in self.links.iter_mut() {
            let silent = l.last_heard.is_some_and(|t| now.saturating_duration_since(t) >= LINK_STALL);
            if !l.up || l.stalled || !silent {
                continue;
            }
            l.stalled = true;
            self.counters.link_stalls += 1;
            warn!(link, core = %l.addr, "core link stalls: serving this edge's own speakers until it is back");
            for (name, ch) in self.channels.iter_mut().filter(|(_, ch)| ch.relay.is_some_and(|r| r.link == link)) {
                let holders = own_holders(ch, l.edge_number, true);
                Self::set_holders(ch, holders, &mut self.sessions, name);
            }
        }
    }

    /// Channels whose ask timed out or whose retry is due ask again.
    fn ask_again(&mut self, now: Instant) {
        let due: Vec<Arc<str>> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.relay.is_none())
            .filter(|(_, ch)| match ch.ask {
                Ask::Idle => false,
                Ask::Waiting { since, .. } | Ask::AwaitLink { since, .. } => {
                    now.saturating_duration_since(since) >= ASK_TIMEOUT
                }
                Ask::RetryAt(at) => now >= at,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.ask(&name, None, now);
        }
    }

    /// A datagram from the core: a selected speaker's packet for this edge's listeners.
    pub fn handle_relay_datagram(&mut self, link: LinkId, data: &Bytes, now: Instant) {
        self.heard_from(link, now);
        if let Some(seq) = relay_proto::datagram::heartbeat_seq(data) {
            if let Some(l) = self.links.get_mut(&link) {
                let (channel, speaker) = relay_proto::datagram::HEARTBEAT_STREAM;
                l.downlink.on_datagram(channel, speaker, seq, false, now);
            }
            return;
        }
        let header = match MediaHeader::parse(data) {
            Ok(h) => h,
            Err(_) => return self.drop_packet(DropReason::RelayMalformed),
        };
        // Only the channel's current owner link maps: an old owner's media is dropped here.
        if !self.by_relay_id.contains_key(&(link, header.channel_id)) {
            return self.drop_packet(DropReason::RelayUnknownChannel);
        }
        let Some(l) = self.links.get_mut(&link) else { return };
        let copy = relay_proto::datagram::is_copy(data);
        if !l.downlink.on_datagram(header.channel_id, header.speaker, header.sequence, copy, now) {
            self.counters.relay_duplicates += 1;
            return;
        }
        // Each stream goes on in sequence order (a packet after a hole waits briefly for
        // the hole's repair copy or late packet).
        let mut ready = std::mem::take(&mut self.relay_ready);
        l.reorder.push((header.channel_id, header.speaker), header.sequence, data.clone(), now, &mut ready);
        for d in ready.drain(..) {
            self.deliver_relay(link, &d, now);
        }
        self.relay_ready = ready;
    }

    /// Held datagrams whose hole was given up go on.
    fn release_held(&mut self, now: Instant) {
        let mut ready = std::mem::take(&mut self.relay_ready);
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            if let Some(l) = self.links.get_mut(&link) {
                l.reorder.poll(now, &mut ready);
            }
            for d in ready.drain(..) {
                self.deliver_relay(link, &d, now);
            }
        }
        self.relay_ready = ready;
    }

    /// A core datagram in its stream's order: onto its slot, to every listener.
    fn deliver_relay(&mut self, link: LinkId, data: &Bytes, now: Instant) {
        let Ok((header, payload)) = MediaHeader::decode(data) else { return };
        let Some(name) = self.by_relay_id.get(&(link, header.channel_id)).cloned() else {
            return self.drop_packet(DropReason::RelayUnknownChannel);
        };
        let slots = self.config.slots;
        let Some(ch) = self.channels.get_mut(&name) else { return };
        let slot = match header.slot.map(usize::from) {
            // The core says which slot, as of which selection: a newer selection than the
            // edge knows takes effect with this packet (the selection message may still be
            // on its way), so a new speaker's first words are not dropped.
            Some(slot) if slot < slots => {
                if header.selection > ch.selection && ch.core_holders[slot] != Some(header.speaker) {
                    let mut holders = ch.core_holders.clone();
                    for h in holders.iter_mut().filter(|h| **h == Some(header.speaker)) {
                        *h = None;
                    }
                    holders[slot] = Some(header.speaker);
                    ch.selection = header.selection;
                    ch.core_holders = holders.clone();
                    Self::set_holders(ch, holders, &mut self.sessions, &name);
                }
                if ch.holders[slot] != Some(header.speaker) {
                    return self.drop_packet(DropReason::RelayNotSelected);
                }
                slot
            }
            _ => match ch.holders.iter().position(|h| *h == Some(header.speaker)) {
                Some(slot) => slot,
                None => return self.drop_packet(DropReason::RelayNotSelected),
            },
        };
        let ch = &self.channels[&name];
        self.counters.relay_in += 1;
        // A local speaker's own session never gets its voice back.
        let edge_number = self.links.get(&link).map_or(0, |l| l.edge_number);
        let from = if speaker::edge_of(header.speaker) == edge_number {
            ch.publishers.get(&speaker::local_of(header.speaker)).copied().unwrap_or(0)
        } else {
            0
        };
        if let Some(publish) = self.sessions.get_mut(&from).and_then(|s| s.publish.as_mut()) {
            // This edge's own speaker: its listeners get it directly. The core's copy
            // only says it is selected; what it said since then goes out now, in order.
            if publish.sent_through.is_some_and(|t| seq_at_or_after(t, header.sequence)) {
                return;
            }
            let catch_up: Vec<Recent> = publish
                .recent
                .iter()
                .filter(|r| seq_at_or_after(r.sequence, header.sequence))
                .filter(|r| publish.sent_through.is_none_or(|t| !seq_at_or_after(t, r.sequence)))
                .cloned()
                .collect();
            if let Some(last) = catch_up.last() {
                publish.sent_through = Some(last.sequence);
                for r in &catch_up {
                    let packet = Forwarded {
                        speaker: Ssrc(header.speaker),
                        sequence: r.sequence,
                        timestamp: r.timestamp,
                        marker: r.marker,
                        level: r.level,
                        payload: &r.payload,
                    };
                    self.forward(from, &name, slot, &packet, now);
                }
                return;
            }
        }
        let packet = Forwarded {
            speaker: Ssrc(header.speaker),
            sequence: header.sequence,
            timestamp: header.timestamp,
            marker: header.marker,
            level: AudioLevel { level: header.level, voice: header.voice },
            payload: &payload,
        };
        self.forward(from, &name, slot, &packet, now);
    }

    fn handle_rtcp(&mut self, now: Instant, id: SessionId, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(srtp) = s.srtp.as_mut() else {
            return self.drop_packet(DropReason::NotConnected);
        };
        // Only the first header is in the clear: its length must fit before the trailer.
        if !rtcp_report::protected_header_fits(buf, srtp.profile().rtcp_trailer_len()) {
            return self.drop_packet(DropReason::RtcpMalformed);
        }
        let result = srtp.unprotect_rtcp_into(buf, &mut self.plain);
        match result {
            Ok(()) => {}
            Err(SrtpError::Replay) => return self.drop_packet(DropReason::SrtpReplay),
            Err(SrtpError::TooManySsrcs) => return self.drop_packet(DropReason::TooManySsrcs),
            Err(_) => return self.drop_packet(DropReason::SrtpAuth),
        }
        s.last_seen = now;
        let feedback = match rtcp_report::parse_feedback(&self.plain) {
            Ok(f) => f,
            Err(_) => return self.drop_packet(DropReason::RtcpMalformed),
        };
        self.counters.rtcp_in += 1;
        let ntp_now = self.ntp.ntp(now);
        let mut bye = None;
        for f in feedback {
            match f {
                Feedback::SenderReport { ssrc, ntp } => {
                    if let Some(stats) = s.publish.as_mut().and_then(|p| p.stats.as_mut()).filter(|st| st.ssrc == ssrc)
                    {
                        stats.on_sender_report(ntp, now);
                    }
                }
                Feedback::Report(block) => {
                    if s.slots.iter().any(|l| l.rewriter.ssrc.0 == block.ssrc) {
                        s.link.remote_lost = block.total_lost;
                        s.link.remote_jitter_ms = f64::from(block.jitter) * 1000.0 / f64::from(OPUS_CLOCK_RATE);
                        let quality = &mut self.counters.quality;
                        quality.listener_loss.observe(f64::from(block.fraction_lost) / 256.0);
                        quality.listener_jitter.observe(f64::from(block.jitter) / f64::from(OPUS_CLOCK_RATE));
                        if let Some(rtt) = rtcp_report::round_trip_time(&block, ntp_now) {
                            s.link.rtt = Some(rtt);
                            quality.listener_rtt.observe(rtt.as_secs_f64());
                        }
                    }
                }
                Feedback::Nack { lost, .. } => self.counters.nacks_in += u64::from(lost),
                Feedback::Bye(ssrc) => {
                    if let Some(publish) = s.publish.as_ref().filter(|p| p.ssrc == Some(ssrc)) {
                        bye = Some(publish.local);
                    }
                }
            }
        }
        if let Some(local) = bye {
            let channel = s.channel.clone();
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.selector.remove(&local);
                if Self::local_mode(&self.links, self.config.cascade, ch) {
                    let holders = own_holders(ch, Self::edge_number_for(&self.links, ch), self.config.cascade);
                    Self::set_holders(ch, holders, &mut self.sessions, &channel);
                }
            }
        }
    }

    /// Runs `f` on the edge. A panic inside (a library bug reached by one input) is
    /// contained: the session whose address sent the input is closed, the panic counted
    /// and logged once with the session id, and the edge carries on.
    pub fn contain(&mut self, source: Option<SocketAddr>, what: &'static str, f: impl FnOnce(&mut Edge)) {
        let edge = &mut *self;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(edge))).is_ok() {
            return;
        }
        match source.and_then(|a| self.by_addr.get(&a).copied()) {
            Some(id) => self.session_panicked(id, what),
            None => {
                self.counters.panics += 1;
                error!(what, "panic while handling input from no known session; input dropped");
            }
        }
    }

    /// A panic was contained while serving session `id` (its input or its handshake task).
    pub fn session_panicked(&mut self, id: SessionId, what: &'static str) {
        self.counters.panics += 1;
        error!(session = id, what, "panic while serving a session; the session is closed");
        self.remove_session(id, CloseReason::Panic);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        self.links.values().filter_map(|l| l.reorder.next_deadline()).fold(self.next_tick, Instant::min)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_held(now);
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        if self.drain_deadline.is_some_and(|d| now >= d) && !self.sessions.is_empty() {
            let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
            info!(sessions = ids.len(), "drain deadline reached: ending the sessions left");
            for id in ids {
                self.remove_session(id, CloseReason::Drained);
            }
        }
        if self.config.cascade {
            self.ask_again(now);
            self.find_stalls(now);
            self.report_quality(now);
        }
        let cascade = self.config.cascade;
        for (name, channel) in self.channels.iter_mut() {
            if channel.selector.update(now) && Self::local_mode(&self.links, cascade, channel) {
                let holders = own_holders(channel, Self::edge_number_for(&self.links, channel), cascade);
                Self::set_holders(channel, holders, &mut self.sessions, name);
            }
        }
        let mut expired = Vec::new();
        for (&id, s) in &self.sessions {
            if !s.connected() && now.saturating_duration_since(s.created) > self.config.connect_timeout {
                expired.push((id, CloseReason::ConnectTimeout));
            } else if s.connected() && now.saturating_duration_since(s.last_seen) > self.config.idle_timeout {
                expired.push((id, CloseReason::IdleTimeout));
            }
        }
        for (id, reason) in expired {
            self.remove_session(id, reason);
        }
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.connected() && s.remote.is_some() && now >= s.next_report)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.send_reports(id, now);
        }
    }

    fn send_reports(&mut self, id: SessionId, now: Instant) {
        let ntp = self.ntp.ntp(now);
        let cname = &self.config.cname;
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.next_report = now + self.config.report_interval;
        let (Some(to), Some(srtp)) = (s.remote, s.srtp.as_mut()) else { return };
        let mut blocks = Vec::new();
        if let Some(publish) = s.publish.as_mut() {
            if let Some(stats) = publish.stats.as_mut() {
                blocks.push(stats.report_block(now));
                s.link.publish_lost = stats.lost();
                s.link.publish_jitter_ms = stats.jitter().as_secs_f64() * 1000.0;
            }
        }
        let mut reports = Vec::new();
        for ls in &s.slots {
            let Some((ts, at)) = ls.rewriter.last_sent() else { continue };
            let elapsed = now.saturating_duration_since(at);
            let rtp_time =
                ts.wrapping_add((elapsed.as_micros() as u64 * u64::from(OPUS_CLOCK_RATE) / 1_000_000) as u32);
            let info = SenderInfo {
                ssrc: ls.rewriter.ssrc,
                ntp,
                rtp_time,
                packets: ls.rewriter.packets_sent,
                octets: ls.rewriter.octets_sent,
            };
            reports.extend(rtcp_report::sender_report(info, std::mem::take(&mut blocks), cname));
        }
        if !blocks.is_empty() {
            let sender = s.slots.first().map_or(s.rtcp_ssrc, |l| l.rewriter.ssrc);
            reports.extend(rtcp_report::receiver_report(sender, blocks, cname));
        }
        for r in reports {
            if let Ok(data) = srtp.protect_rtcp(&r) {
                self.counters.rtcp_out += 1;
                self.outputs.push_back(Output::Transmit { to, data });
            }
        }
    }

    pub fn link_stats(&self, id: SessionId) -> Option<LinkStats> {
        self.sessions.get(&id).map(|s| s.link)
    }

    pub fn channel_view(&self, name: &str) -> Option<ChannelView> {
        let ch = self.channels.get(name)?;
        let now = self.next_tick;
        let mut speakers: Vec<SpeakerView> = ch
            .publishers
            .iter()
            .filter_map(|(local, id)| {
                let s = self.sessions.get(id)?;
                let speaker = speaker::id(Self::edge_number_for(&self.links, ch), *local);
                Some(SpeakerView {
                    participant: s.participant.to_string(),
                    id: speaker,
                    slot: ch.holders.iter().position(|h| h == &Some(speaker)),
                    score: ch.selector.score(local, now).unwrap_or(0.0),
                })
            })
            .collect();
        for (slot, holder) in ch.holders.iter().enumerate() {
            let Some(speaker) = *holder else { continue };
            if speakers.iter().any(|s| s.id == speaker) {
                continue;
            }
            let participant = ch.holder_names.get(&speaker).cloned().unwrap_or_default();
            speakers.push(SpeakerView { participant, id: speaker, slot: Some(slot), score: 1.0 });
        }
        speakers.sort_by(|a, b| a.participant.cmp(&b.participant));
        Some(ChannelView { listeners: ch.listeners.len(), speakers })
    }
}
