//! The edge's sans-IO core: sessions, demultiplexing, speaker selection and forwarding.
//!
//! Inputs are datagrams, DTLS results and commands, each with the current `Instant`;
//! outputs are drained with [`Edge::poll_output`] and the next wake-up is
//! [`Edge::poll_timeout`]. No sockets, no clock, no locks.
//!
//! One state machine, its concerns in modules of their own: `sessions` (admission, ICE,
//! DTLS hand-off, demultiplexing, drain), `ingest` (a publisher's packets), `forward`
//! (slots and the per-listener write and protect), `relay` (core links and the core's
//! datagrams), `rtcp` (feedback and reports); this file holds the state, the counters,
//! timers and the panic boundary.

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

mod forward;
mod ingest;
mod relay;
mod rtcp;
mod sessions;

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
    /// How long after its handshake a session's DTLS connection is kept (to answer
    /// retransmitted flights and notice close_notify) before it is let go: it is most of a
    /// session's memory. Later DTLS records are dropped (`dtls_late`); a client that
    /// closes without DELETE then ends by the idle timeout.
    pub dtls_linger: Duration,
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
            dtls_linger: Duration::from_secs(60),
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
    /// A core's datagram refused because the edge's input queue was full.
    RelayQueueFull,
    /// An uplink datagram dropped in the link's queue (waited past the age budget behind a
    /// slow link, or refused by QUIC).
    UplinkQueue,
    /// A DTLS record after the session's DTLS connection was let go.
    DtlsLate,
}

impl DropReason {
    pub const ALL: [DropReason; 25] = [
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
        DropReason::RelayQueueFull,
        DropReason::UplinkQueue,
        DropReason::DtlsLate,
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
            DropReason::RelayQueueFull => "relay_queue_full",
            DropReason::UplinkQueue => "uplink_queue",
            DropReason::DtlsLate => "dtls_late",
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
    /// DTLS connections let go after their linger.
    pub dtls_retired: u64,
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

    /// Adds another worker's counters to these (an edge with several workers reports one
    /// set).
    pub fn absorb(&mut self, other: &Counters) {
        let q = &mut self.quality;
        q.join.absorb(&other.quality.join);
        q.listener_loss.absorb(&other.quality.listener_loss);
        q.listener_jitter.absorb(&other.quality.listener_jitter);
        q.listener_rtt.absorb(&other.quality.listener_rtt);
        q.forwarding.0.absorb(&other.quality.forwarding.0);
        for (reason, n) in &other.drops {
            *self.drops.entry(*reason).or_default() += n;
        }
        for (reason, n) in &other.closed {
            *self.closed.entry(*reason).or_default() += n;
        }
        let Counters {
            quality: _,
            drops: _,
            closed: _,
            rtp_in,
            rtp_out,
            rtcp_in,
            rtcp_out,
            nacks_in,
            uplink_out,
            relay_in,
            relay_duplicates,
            send_errors,
            sessions_opened,
            panics,
            stale_epoch,
            link_stalls,
            dtls_retired,
        } = other;
        self.rtp_in += rtp_in;
        self.rtp_out += rtp_out;
        self.rtcp_in += rtcp_in;
        self.rtcp_out += rtcp_out;
        self.nacks_in += nacks_in;
        self.uplink_out += uplink_out;
        self.relay_in += relay_in;
        self.relay_duplicates += relay_duplicates;
        self.send_errors += send_errors;
        self.sessions_opened += sessions_opened;
        self.panics += panics;
        self.stale_epoch += stale_epoch;
        self.link_stalls += link_stalls;
        self.dtls_retired += dtls_retired;
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
    /// The DTLS connection was let go after its linger.
    dtls_retired: bool,
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

    /// Whether `channel` may take another listener here.
    pub fn channel_has_room(&self, channel: &str) -> bool {
        self.channels.get(channel).map_or(0, |c| c.listeners.len()) < self.config.max_listeners_per_channel
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
