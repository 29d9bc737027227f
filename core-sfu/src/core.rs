//! The core's sans-IO state: edges, channels, selection and fan-out.
//!
//! The shell authenticates edges and feeds their control messages and datagrams here
//! with the current `Instant`; outputs are drained with [`Core::poll_output`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use media::rtp_header::AudioLevel;
use media::speakers::{ActiveSpeakers, SelectorConfig};
use node_kit::bucket::TokenBucket;
use relay_proto::control::{Message, SlotHolder};
use relay_proto::datagram::MediaHeader;
use relay_proto::loss::{LinkLoss, LossCounts, RepairSwitch};
use relay_proto::speaker;

use crate::directory::Directory;
pub use crate::directory::{EdgeInfo, EdgeView, PlaceError, PlaceRequest, Placed};
use tracing::{debug, error, info, trace, warn};

/// The shell's handle for one edge connection.
pub type EdgeKey = u64;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub core_id: String,
    pub selector: SelectorConfig,
    pub max_channels_per_edge: usize,
    pub max_speakers_per_channel: usize,
    /// A speaker silent (no datagrams) this long is forgotten.
    pub speaker_timeout: Duration,
    /// Where clients that name no region are placed first.
    pub region: String,
    /// Channel ownership shared with other cores through leases; `None`: this core owns
    /// every channel it is asked for (one core, the embedded default).
    pub fleet: Option<FleetConfig>,
    /// The epoch of channels owned without a fleet: the shell's start time in ms, so a
    /// restarted core's epochs are higher than those of its previous run.
    pub local_epoch: u64,
    /// Send repair copies to edges that report loss (on by default).
    pub relay_repair: bool,
}

/// How this core shares channel ownership with other cores.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// `host:port` edges reach this core's relay endpoint at (sent in redirects).
    pub relay_addr: String,
    /// Lease lifetime in the store; renewals every `renew_every` keep it.
    pub lease_ttl: Duration,
    pub renew_every: Duration,
}

impl FleetConfig {
    /// How long an owned channel is served after a renewal was sent: short of the lease's
    /// expiry in the store by a margin for clock rate differences and the round trip.
    pub fn serve_for(&self) -> Duration {
        self.lease_ttl.saturating_sub(self.renew_every.min(self.lease_ttl / 3))
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            core_id: "core".to_owned(),
            selector: SelectorConfig::default(),
            max_channels_per_edge: 10_000,
            max_speakers_per_channel: 256,
            speaker_timeout: Duration::from_secs(10),
            region: "local".to_owned(),
            fleet: None,
            local_epoch: 1,
            relay_repair: true,
        }
    }
}

#[derive(Debug)]
pub enum CoreOutput {
    Control {
        edge: EdgeKey,
        message: Message,
    },
    Datagram {
        edge: EdgeKey,
        data: Bytes,
    },
    Close {
        edge: EdgeKey,
        reason: &'static str,
    },
    /// Work for the lease store (fleet mode); answers come back through
    /// [`Core::lease_answer`] and [`Core::leases_renewed`].
    Lease(LeaseCommand),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseCommand {
    /// Take the channel's lease if nobody holds it (a new epoch), or learn who does.
    Acquire {
        channel: Arc<str>,
    },
    /// Extend every lease this core holds; `sent_at` is when the request left.
    Renew {
        channels: Vec<Arc<str>>,
        sent_at: Instant,
    },
    Release {
        channel: Arc<str>,
    },
}

/// What the lease store said to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// This core holds the lease at `epoch` (new, or its own still valid).
    Ours { epoch: u64, sent_at: Instant },
    /// Another core holds it; edges subscribe at `relay_addr`, clients go to `http_url`.
    Elsewhere { relay_addr: String, http_url: String },
    /// The store cannot be reached.
    Unreachable,
}

/// How long an edge waits before asking again for a channel nobody can serve yet.
const RETRY_UNOWNED_MS: u32 = 250;
const RETRY_UNREACHABLE_MS: u32 = 1000;
const RETRY_HANDED_OVER_MS: u32 = 50;
/// An owned channel without subscribers keeps its lease this long (clients placed here
/// are on their way to their edges), then it is released.
const EMPTY_CHANNEL_GRACE: Duration = Duration::from_secs(20);

/// Reasons an edge's input was refused; counted, exported as metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    MalformedDatagram,
    UnknownChannel,
    NotSubscribed,
    SpeakerNotOwned,
    TooManySpeakers,
    TooManyChannels,
    UnexpectedMessage,
    MalformedControl,
    BadAuth,
    BadVersion,
    QueueFull,
    ControlFlood,
    Panic,
    /// Media for a channel whose lease this core can no longer confirm.
    NotOwner,
    /// Media that waited in the core's input queue past the age budget.
    Stale,
}

impl Refusal {
    pub const ALL: [Refusal; 15] = [
        Refusal::MalformedDatagram,
        Refusal::UnknownChannel,
        Refusal::NotSubscribed,
        Refusal::SpeakerNotOwned,
        Refusal::TooManySpeakers,
        Refusal::TooManyChannels,
        Refusal::UnexpectedMessage,
        Refusal::MalformedControl,
        Refusal::BadAuth,
        Refusal::BadVersion,
        Refusal::QueueFull,
        Refusal::ControlFlood,
        Refusal::Panic,
        Refusal::NotOwner,
        Refusal::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MalformedDatagram => "malformed_datagram",
            Refusal::UnknownChannel => "unknown_channel",
            Refusal::NotSubscribed => "not_subscribed",
            Refusal::SpeakerNotOwned => "speaker_not_owned",
            Refusal::TooManySpeakers => "too_many_speakers",
            Refusal::TooManyChannels => "too_many_channels",
            Refusal::UnexpectedMessage => "unexpected_message",
            Refusal::MalformedControl => "malformed_control",
            Refusal::BadAuth => "bad_auth",
            Refusal::BadVersion => "bad_version",
            Refusal::QueueFull => "queue_full",
            Refusal::ControlFlood => "control_flood",
            Refusal::Panic => "panic",
            Refusal::NotOwner => "not_owner",
            Refusal::Stale => "stale",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CoreCounters {
    refused: HashMap<Refusal, u64>,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams not sent because an edge's send buffer was full.
    pub datagrams_dropped: u64,
    pub selection_changes: u64,
    /// Second copies of uplinked packets dropped (repair copies whose original arrived).
    pub duplicates_in: u64,
    /// Edge links closed because the edge kept sending malformed input.
    pub links_closed_misbehaving: u64,
    /// Leases taken (new or re-taken after the store lost them), and channels given up
    /// because the lease was lost or could not be confirmed in time.
    pub leases_acquired: u64,
    pub leases_lost: u64,
    /// Edges sent to the owning core.
    pub redirects: u64,
    /// Fleet mode: the lease store answered the last renewal.
    pub lease_store_reachable: bool,
    /// From a datagram's read off an edge link to its last copy handed to quinn.
    pub forwarding: node_kit::histogram::InNode,
}

impl CoreCounters {
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused.get(&r).copied().unwrap_or(0)
    }
}

struct EdgeState {
    id: String,
    /// This link's part of the speaker ids the edge assigns.
    number: u16,
    channels: Vec<u32>,
    /// Malformed input the edge may still send before its link is closed.
    misbehaviour: TokenBucket,
    /// What the edge's uplink loses (duplicate filter and counts; reported to the edge).
    uplink: LinkLoss,
    /// Whether datagrams to this edge go with a repair copy (from the edge's reports).
    repair: RepairSwitch,
    /// Repair copies sent to this edge.
    copies_sent: u64,
}

/// How one edge link fares, for the operator.
#[derive(Clone, Debug)]
pub struct LinkView {
    pub edge: EdgeKey,
    pub edge_id: String,
    /// What this core received from the edge.
    pub uplink: LossCounts,
    /// The loss before repair the edge last reported for what it receives from us.
    pub downlink_loss_permille: u16,
    pub repair_on: bool,
    pub repair_activations: u64,
    pub copies_sent: u64,
}

/// How often each side reports the loss it sees on a link.
pub const QUALITY_INTERVAL: Duration = Duration::from_secs(1);

/// Malformed messages or datagrams an edge may send at once, and per second after that,
/// before its link is closed: one bad input is dropped, a stream of them is not.
const MISBEHAVIOUR_BURST: u32 = 100;
const MISBEHAVIOUR_PER_SEC: u32 = 10;

struct Speaker {
    edge: EdgeKey,
    participant: Arc<str>,
    last_packet: Instant,
}

struct Channel {
    name: Arc<str>,
    /// The lease epoch this core holds the channel at (the edges' fencing token).
    epoch: u64,
    /// Served until then unless a renewal confirms the lease (fleet mode).
    serve_until: Option<Instant>,
    /// Since when the channel has had no subscriber (fleet mode: released after a grace).
    empty_since: Option<Instant>,
    /// Subscribed edges and their listener counts.
    subscribers: HashMap<EdgeKey, u32>,
    speakers: HashMap<u32, Speaker>,
    selector: ActiveSpeakers<u32>,
    holders: Vec<Option<u32>>,
    /// Counts selection changes; sent with selections and stamped into datagrams.
    selection: u32,
}

/// What an operator sees of a channel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChannelSummary {
    pub name: String,
    pub id: u32,
    pub edges: usize,
    pub listeners: u64,
    pub speakers: usize,
    pub selected: Vec<Option<u32>>,
    /// The lease epoch this core holds the channel at.
    pub epoch: u64,
}

/// A speaker as operators see it: the SFU's id for it (the CSRC listeners get).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SpeakerDetail {
    pub id: u32,
    pub participant: String,
    pub edge: String,
    pub slot: Option<usize>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ChannelDetail {
    pub name: String,
    pub id: u32,
    pub speakers: Vec<SpeakerDetail>,
    /// (edge id, listeners there).
    pub edges: Vec<(String, u32)>,
}

const TICK: Duration = Duration::from_millis(50);

pub struct Core {
    config: CoreConfig,
    /// Stamped copies and repair copies of datagrams, held by the links' queues until sent.
    tx: media::buf::TxArena,
    edges: HashMap<EdgeKey, EdgeState>,
    channels: HashMap<u32, Channel>,
    by_name: HashMap<Arc<str>, u32>,
    next_channel_id: u32,
    outputs: VecDeque<CoreOutput>,
    next_tick: Instant,
    counters: CoreCounters,
    directory: Directory,
    /// Channels being acquired (fleet mode), with the edges waiting to subscribe.
    acquiring: HashMap<Arc<str>, Vec<(EdgeKey, u32)>>,
    next_renew: Instant,
    renew_in_flight: bool,
    last_renew_sent: Option<Instant>,
    /// The last renewal could not reach the store (an outage, not a lost lease).
    store_unreachable: bool,
    /// Shutting down: no channel is taken any more.
    handing_over: bool,
    next_quality: Instant,
}

impl Core {
    pub fn new(config: CoreConfig, now: Instant) -> Self {
        Core {
            tx: Default::default(),
            config: config.clone(),
            edges: HashMap::new(),
            channels: HashMap::new(),
            by_name: HashMap::new(),
            next_channel_id: 1,
            outputs: VecDeque::new(),
            next_tick: now + TICK,
            directory: Directory::new(config.region.clone()),
            acquiring: HashMap::new(),
            next_renew: now,
            renew_in_flight: false,
            last_renew_sent: None,
            store_unreachable: false,
            handing_over: false,
            next_quality: now + QUALITY_INTERVAL,
            counters: CoreCounters { lease_store_reachable: true, ..Default::default() },
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// Counts a refusal the shell made (bad auth, bad version, malformed control).
    pub fn refuse(&mut self, r: Refusal) {
        trace!(reason = r.as_str(), "refused");
        *self.counters.refused.entry(r).or_default() += 1;
    }

    /// Counts datagrams the shell dropped on their way to an edge (waited past the age
    /// budget behind a slow link, or refused by QUIC).
    /// Time one datagram took through this core (measured by the shell).
    pub fn observe_forwarding(&mut self, took: std::time::Duration) {
        self.counters.forwarding.0.observe(took.as_secs_f64());
    }

    pub fn count_send_drops(&mut self, n: u64) {
        self.counters.datagrams_dropped += n;
    }

    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// An authenticated edge; returns its edge number for speaker ids, or `None` when
    /// every number is taken.
    pub fn edge_joined(&mut self, edge: EdgeKey, info: EdgeInfo, now: Instant) -> Option<u16> {
        let taken: std::collections::HashSet<u16> = self.edges.values().map(|e| e.number).collect();
        let number = (1..=speaker::MAX_EDGE_NUMBER).find(|n| !taken.contains(n))?;
        info!(edge, id = ?info.id, url = ?info.signalling_url, region = ?info.region, capacity = info.capacity, number, "edge joined");
        let misbehaviour = TokenBucket::new(MISBEHAVIOUR_PER_SEC, MISBEHAVIOUR_BURST, now);
        self.edges.insert(
            edge,
            EdgeState {
                id: info.id.clone(),
                number,
                channels: Vec::new(),
                misbehaviour,
                uplink: LinkLoss::default(),
                repair: RepairSwitch::default(),
                copies_sent: 0,
            },
        );
        self.directory.edge_joined(edge, info);
        Some(number)
    }

    /// Where the next client of a channel goes (see [`Directory::place`]). In a fleet,
    /// only the channel's owner places: an unowned channel is acquired first
    /// ([`PlaceError::Pending`]; the shell asks again with the store's answer).
    pub fn place(&mut self, req: &PlaceRequest, now: Instant) -> Result<Placed, PlaceError> {
        if self.config.fleet.is_some() {
            match self.by_name.get(req.channel.as_str()) {
                Some(id) if self.serving(*id, now) => {}
                Some(_) => return Err(PlaceError::Unavailable),
                None if self.handing_over => return Err(PlaceError::Unavailable),
                None => {
                    self.acquire(req.channel.as_str().into(), None);
                    return Err(PlaceError::Pending);
                }
            }
        }
        self.directory.place(req, now)
    }

    /// Starts acquiring a channel's lease (once), with an edge waiting to subscribe.
    fn acquire(&mut self, channel: Arc<str>, waiter: Option<(EdgeKey, u32)>) {
        let waiting = match self.acquiring.entry(channel.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.outputs.push_back(CoreOutput::Lease(LeaseCommand::Acquire { channel }));
                e.insert(Vec::new())
            }
        };
        if let Some((edge, listeners)) = waiter {
            match waiting.iter_mut().find(|(e, _)| *e == edge) {
                Some(w) => w.1 = listeners,
                None => waiting.push((edge, listeners)),
            }
        }
    }

    /// Whether this core may serve the channel now: a lease confirmed on its own clock, or
    /// (fleet) a store outage this core rides out while its renewals keep their schedule:
    /// nobody can take a lease from an unreachable store either.
    fn serving(&self, channel_id: u32, now: Instant) -> bool {
        let Some(ch) = self.channels.get(&channel_id) else { return false };
        match ch.serve_until {
            None => true,
            Some(until) if now < until => true,
            Some(_) => self.riding_out_store_outage(now),
        }
    }

    fn riding_out_store_outage(&self, now: Instant) -> bool {
        let Some(fleet) = &self.config.fleet else { return true };
        self.store_unreachable
            && self.last_renew_sent.is_some_and(|t| now.saturating_duration_since(t) <= 2 * fleet.renew_every)
    }

    /// The store's answer to an acquire (see [`LeaseCommand::Acquire`]).
    pub fn lease_answer(&mut self, channel: &str, answer: LeaseAnswer, now: Instant) {
        let waiting = self.acquiring.remove(channel).unwrap_or_default();
        let name: Arc<str> = channel.into();
        match answer {
            LeaseAnswer::Ours { epoch, sent_at } => {
                let serve_until = self.config.fleet.as_ref().map(|f| sent_at + f.serve_for());
                let id = match self.by_name.get(channel).copied() {
                    Some(id) => {
                        self.confirm(id, epoch, serve_until);
                        id
                    }
                    None => {
                        self.counters.leases_acquired += 1;
                        info!(channel = %name, epoch, "channel lease acquired");
                        self.create_channel(name, epoch, serve_until, now)
                    }
                };
                for (edge, listeners) in waiting {
                    self.subscribe_owned(edge, id, listeners, now);
                }
            }
            LeaseAnswer::Elsewhere { relay_addr, .. } => {
                if let Some(id) = self.by_name.get(channel).copied() {
                    self.lose_channel(id, Some(&relay_addr), "another core holds the lease");
                }
                let own = self.config.fleet.as_ref().is_some_and(|f| f.relay_addr == relay_addr);
                for (edge, _) in waiting {
                    // Our own address: a previous run of this core still holds the lease
                    // until it expires.
                    let message = if own {
                        Message::Unavailable { channel: channel.to_owned(), retry_ms: RETRY_UNOWNED_MS }
                    } else {
                        self.counters.redirects += 1;
                        Message::Redirect { channel: channel.to_owned(), core: relay_addr.clone() }
                    };
                    self.outputs.push_back(CoreOutput::Control { edge, message });
                }
            }
            LeaseAnswer::Unreachable => {
                for (edge, _) in waiting {
                    let message = Message::Unavailable { channel: channel.to_owned(), retry_ms: RETRY_UNREACHABLE_MS };
                    self.outputs.push_back(CoreOutput::Control { edge, message });
                }
            }
        }
    }

    /// A lease (re)confirmed at `epoch`: a new epoch (the store had lost the lease and it
    /// was taken again) is announced to the channel's edges, which take the higher one.
    fn confirm(&mut self, id: u32, epoch: u64, serve_until: Option<Instant>) {
        let Some(ch) = self.channels.get_mut(&id) else { return };
        ch.serve_until = match (ch.serve_until, serve_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (_, b) => b,
        };
        if epoch != ch.epoch {
            info!(channel = %ch.name, from = ch.epoch, to = epoch, "channel lease taken again at a new epoch");
            self.counters.leases_acquired += 1;
            ch.epoch = epoch;
            for &edge in ch.subscribers.keys() {
                let message = Message::Subscribed { channel: ch.name.to_string(), channel_id: id, epoch };
                self.outputs.push_back(CoreOutput::Control { edge, message });
            }
        }
    }

    /// The store's answer to a renewal sent at `sent_at`: per channel the epoch it is
    /// held at now, or `None` where another core holds it; `None` in all when the store
    /// could not be reached.
    pub fn leases_renewed(&mut self, sent_at: Instant, result: Option<Vec<(Arc<str>, Option<u64>)>>, now: Instant) {
        self.renew_in_flight = false;
        let Some(result) = result else {
            if !self.store_unreachable {
                warn!("lease store unreachable: serving the channels this core has, taking no new ones");
            }
            self.store_unreachable = true;
            self.counters.lease_store_reachable = false;
            return;
        };
        if self.store_unreachable {
            info!("lease store reachable again");
        }
        self.store_unreachable = false;
        self.counters.lease_store_reachable = true;
        let serve_until = self.config.fleet.as_ref().map(|f| sent_at + f.serve_for());
        for (name, held) in result {
            let Some(id) = self.by_name.get(&name).copied() else { continue };
            match held {
                Some(epoch) => self.confirm(id, epoch, serve_until),
                None => self.lose_channel(id, None, "lease lost"),
            }
        }
        let _ = now;
    }

    /// Stops serving a channel this core no longer owns: its edges are sent to the new
    /// owner (or told to ask again), and its state goes.
    fn lose_channel(&mut self, id: u32, owner: Option<&str>, why: &'static str) {
        let Some(ch) = self.channels.remove(&id) else { return };
        self.by_name.remove(&ch.name);
        self.counters.leases_lost += 1;
        warn!(channel = %ch.name, epoch = ch.epoch, edges = ch.subscribers.len(), why, "stopped serving a channel");
        for &edge in ch.subscribers.keys() {
            if let Some(state) = self.edges.get_mut(&edge) {
                state.channels.retain(|&c| c != id);
            }
            self.directory.channel_left(edge, &ch.name);
            let message = match owner {
                Some(core) => {
                    self.counters.redirects += 1;
                    Message::Redirect { channel: ch.name.to_string(), core: core.to_owned() }
                }
                None => Message::Unavailable { channel: ch.name.to_string(), retry_ms: RETRY_UNOWNED_MS },
            };
            self.outputs.push_back(CoreOutput::Control { edge, message });
        }
    }

    /// Shutting down (fleet): gives every channel up at once, releasing its lease, so
    /// another core takes it now rather than when the lease expires; edges ask again.
    pub fn hand_over(&mut self) {
        self.handing_over = true;
        let ids: Vec<u32> = self.channels.keys().copied().collect();
        for id in ids {
            let Some(ch) = self.channels.get(&id) else { continue };
            for &edge in ch.subscribers.keys() {
                let message = Message::Unavailable { channel: ch.name.to_string(), retry_ms: RETRY_HANDED_OVER_MS };
                self.outputs.push_back(CoreOutput::Control { edge, message });
            }
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.subscribers.clear();
            }
            self.close_channel(id);
        }
        info!("channels handed over");
    }

    /// Ends the sessions of `participant` in `channel` on every edge serving it here;
    /// false if this core does not serve the channel.
    pub fn kick(&mut self, channel: &str, participant: &str) -> bool {
        let Some(ch) = self.by_name.get(channel).and_then(|id| self.channels.get(id)) else { return false };
        info!(channel, participant = ?participant, edges = ch.subscribers.len(), "kick");
        for &edge in ch.subscribers.keys() {
            let message = Message::Kick { channel: channel.to_owned(), participant: participant.to_owned() };
            self.outputs.push_back(CoreOutput::Control { edge, message });
        }
        true
    }

    /// Stops (or resumes) placing clients on an edge; a drain also tells the edge to end
    /// its sessions within `deadline`. False if there is no such edge.
    pub fn set_draining(&mut self, edge_id: &str, drain: Option<Duration>) -> bool {
        let keys = self.directory.set_draining(edge_id, drain.is_some());
        for &key in &keys {
            if let Some(deadline) = drain {
                let deadline_ms = deadline.as_millis().min(u128::from(u32::MAX)) as u32;
                self.outputs.push_back(CoreOutput::Control { edge: key, message: Message::Drain { deadline_ms } });
            }
            info!(edge = key, id = ?edge_id, draining = drain.is_some(), "edge placement state changed");
        }
        !keys.is_empty()
    }

    /// Whether `speaker` is an id `edge` may use (it carries the edge's number).
    fn owns(&self, edge: EdgeKey, speaker: u32) -> bool {
        self.edges.get(&edge).is_some_and(|e| speaker::edge_of(speaker) == e.number)
    }

    /// Counts a malformed input from `edge`; an edge that keeps sending them loses its link.
    pub fn misbehaved(&mut self, edge: EdgeKey, reason: Refusal, now: Instant) {
        self.refuse(reason);
        let Some(state) = self.edges.get_mut(&edge) else { return };
        if state.misbehaviour.take(1, now) {
            return;
        }
        static CLOSES: node_kit::throttle::Throttle = node_kit::throttle::Throttle::new();
        if let Some(suppressed) = CLOSES.allow(10) {
            warn!(edge, id = ?state.id, reason = reason.as_str(), suppressed, "edge keeps sending malformed input; closing its link");
        }
        self.counters.links_closed_misbehaving += 1;
        self.outputs.push_back(CoreOutput::Close { edge, reason: "misbehaving: too much malformed input" });
        self.edge_left(edge, now);
    }

    /// Runs `f` on the core for one input from `edge`. A panic inside (a bug reached by
    /// that input) is contained: counted as the edge's misbehaviour, and the core goes on.
    pub fn contain(&mut self, edge: EdgeKey, now: Instant, f: impl FnOnce(&mut Core)) {
        let core = &mut *self;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(core))).is_err() {
            error!(edge, "panic while handling an edge's input; input dropped");
            self.misbehaved(edge, Refusal::Panic, now);
        }
    }

    /// The edge's connection is gone: its subscriptions and speakers go with it.
    pub fn edge_left(&mut self, edge: EdgeKey, now: Instant) {
        self.directory.edge_left(edge);
        let Some(state) = self.edges.remove(&edge) else { return };
        info!(edge, id = %state.id, "edge left");
        for channel_id in state.channels {
            self.unsubscribe(edge, channel_id, now);
        }
    }

    pub fn handle_control(&mut self, edge: EdgeKey, message: Message, now: Instant) {
        if !self.edges.contains_key(&edge) {
            return;
        }
        match message {
            Message::Subscribe { channel, listeners } => self.subscribe(edge, &channel, listeners, now),
            Message::Unsubscribe { channel_id } => self.unsubscribe(edge, channel_id, now),
            Message::LinkQuality { lost_permille } => {
                if let Some(e) = self.edges.get_mut(&edge).filter(|_| self.config.relay_repair) {
                    let was_on = e.repair.is_on();
                    e.repair.on_report(lost_permille, now);
                    if e.repair.is_on() != was_on {
                        info!(edge_id = %e.id, lost_permille, repair = e.repair.is_on(), "repair copies to the edge");
                    }
                }
            }
            Message::Load { channel_id, listeners, .. } => {
                let Some(ch) = self.channels.get_mut(&channel_id) else {
                    return self.refuse(Refusal::NotSubscribed);
                };
                match ch.subscribers.get_mut(&edge) {
                    Some(l) => {
                        *l = listeners;
                        self.directory.listeners(edge, &ch.name, listeners);
                    }
                    None => self.refuse(Refusal::NotSubscribed),
                }
            }
            Message::SpeakerInfo { channel_id, speaker, participant } => {
                if !self.owns(edge, speaker) {
                    return self.misbehaved(edge, Refusal::SpeakerNotOwned, now);
                }
                let Some(ch) = self.channels.get_mut(&channel_id) else {
                    return self.refuse(Refusal::UnknownChannel);
                };
                match ch.speakers.get_mut(&speaker) {
                    Some(s) => s.participant = participant.into(),
                    None => {
                        if !ch.subscribers.contains_key(&edge) {
                            return self.refuse(Refusal::NotSubscribed);
                        }
                        if ch.speakers.len() >= self.config.max_speakers_per_channel {
                            return self.refuse(Refusal::TooManySpeakers);
                        }
                        ch.speakers
                            .insert(speaker, Speaker { edge, participant: participant.into(), last_packet: now });
                        self.directory.publisher_arrived(edge, &ch.name);
                    }
                }
            }
            Message::Goodbye { reason } => {
                debug!(edge, reason = ?reason, "edge says goodbye");
                self.outputs.push_back(CoreOutput::Close { edge, reason: "goodbye" });
                self.edge_left(edge, now);
            }
            Message::Drain { .. } => {
                debug!(edge, "edge is draining");
                self.directory.set_draining_key(edge, true);
            }
            _ => self.misbehaved(edge, Refusal::UnexpectedMessage, now),
        }
    }

    fn subscribe(&mut self, edge: EdgeKey, name: &str, listeners: u32, now: Instant) {
        if !relay_proto::valid_channel_name(name) {
            return self.misbehaved(edge, Refusal::MalformedControl, now);
        }
        if !self.edges.contains_key(&edge) {
            return;
        }
        if let Some(&id) = self.by_name.get(name) {
            if self.serving(id, now) {
                return self.subscribe_owned(edge, id, listeners, now);
            }
            // The lease lapsed; the next tick gives the channel up.
            let message = Message::Unavailable { channel: name.to_owned(), retry_ms: RETRY_UNOWNED_MS };
            return self.outputs.push_back(CoreOutput::Control { edge, message });
        }
        if self.handing_over {
            let message = Message::Unavailable { channel: name.to_owned(), retry_ms: RETRY_HANDED_OVER_MS };
            return self.outputs.push_back(CoreOutput::Control { edge, message });
        }
        if self.config.fleet.is_none() {
            let id = self.create_channel(name.into(), self.config.local_epoch, None, now);
            return self.subscribe_owned(edge, id, listeners, now);
        }
        self.acquire(name.into(), Some((edge, listeners)));
    }

    fn create_channel(&mut self, name: Arc<str>, epoch: u64, serve_until: Option<Instant>, now: Instant) -> u32 {
        let id = self.next_channel_id;
        self.next_channel_id = self.next_channel_id.wrapping_add(1).max(1);
        debug!(channel = %name, id, epoch, "channel created");
        self.by_name.insert(name.clone(), id);
        self.channels.insert(
            id,
            Channel {
                name,
                epoch,
                serve_until,
                empty_since: Some(now),
                subscribers: HashMap::new(),
                speakers: HashMap::new(),
                selector: ActiveSpeakers::new(self.config.selector.clone()),
                holders: vec![None; self.config.selector.slots],
                selection: 1,
            },
        );
        id
    }

    fn subscribe_owned(&mut self, edge: EdgeKey, id: u32, listeners: u32, _now: Instant) {
        let Some(state) = self.edges.get_mut(&edge) else { return };
        if !state.channels.contains(&id) {
            if state.channels.len() >= self.config.max_channels_per_edge {
                return self.refuse(Refusal::TooManyChannels);
            }
            state.channels.push(id);
        }
        let Some(ch) = self.channels.get_mut(&id) else { return };
        ch.subscribers.insert(edge, listeners);
        ch.empty_since = None;
        self.directory.listeners(edge, &ch.name, listeners);
        self.outputs.push_back(CoreOutput::Control {
            edge,
            message: Message::Subscribed { channel: ch.name.to_string(), channel_id: id, epoch: ch.epoch },
        });
        self.outputs.push_back(CoreOutput::Control { edge, message: selection_message(id, ch) });
    }

    fn unsubscribe(&mut self, edge: EdgeKey, channel_id: u32, now: Instant) {
        if let Some(state) = self.edges.get_mut(&edge) {
            state.channels.retain(|&c| c != channel_id);
        }
        let Some(ch) = self.channels.get_mut(&channel_id) else { return };
        ch.subscribers.remove(&edge);
        self.directory.channel_left(edge, &ch.name);
        let gone: Vec<u32> = ch.speakers.iter().filter(|(_, s)| s.edge == edge).map(|(&k, _)| k).collect();
        for ssrc in gone {
            ch.speakers.remove(&ssrc);
            ch.selector.remove(&ssrc);
        }
        if !ch.subscribers.is_empty() {
            self.reselect(channel_id, now);
        } else if self.config.fleet.is_some() {
            // The lease is kept a while: an edge may resubscribe, clients may be on their way.
            ch.empty_since = Some(now);
        } else {
            self.close_channel(channel_id);
        }
    }

    fn close_channel(&mut self, channel_id: u32) {
        let Some(ch) = self.channels.remove(&channel_id) else { return };
        self.by_name.remove(&ch.name);
        debug!(channel = %ch.name, "channel closed");
        if self.config.fleet.is_some() {
            self.outputs.push_back(CoreOutput::Lease(LeaseCommand::Release { channel: ch.name }));
        }
    }

    pub fn handle_datagram(&mut self, edge: EdgeKey, data: Bytes, now: Instant) {
        if let Some(seq) = relay_proto::datagram::heartbeat_seq(&data) {
            if let Some(e) = self.edges.get_mut(&edge) {
                let (channel, speaker) = relay_proto::datagram::HEARTBEAT_STREAM;
                e.uplink.on_datagram(channel, speaker, seq, false, now);
            }
            return;
        }
        let header = match MediaHeader::parse(&data) {
            Ok(h) => h,
            Err(_) => return self.misbehaved(edge, Refusal::MalformedDatagram, now),
        };
        if !self.owns(edge, header.speaker) {
            return self.misbehaved(edge, Refusal::SpeakerNotOwned, now);
        }
        if !self.serving(header.channel_id, now) {
            let known = self.channels.contains_key(&header.channel_id);
            return self.refuse(if known { Refusal::NotOwner } else { Refusal::UnknownChannel });
        }
        let Some(ch) = self.channels.get_mut(&header.channel_id) else { return };
        if !ch.subscribers.contains_key(&edge) {
            return self.refuse(Refusal::NotSubscribed);
        }
        let copy = relay_proto::datagram::is_copy(&data);
        if let Some(e) = self.edges.get_mut(&edge) {
            if !e.uplink.on_datagram(header.channel_id, header.speaker, header.sequence, copy, now) {
                self.counters.duplicates_in += 1;
                return;
            }
        }
        match ch.speakers.get_mut(&header.speaker) {
            Some(s) => s.last_packet = now,
            None => {
                if ch.speakers.len() >= self.config.max_speakers_per_channel {
                    return self.refuse(Refusal::TooManySpeakers);
                }
                ch.speakers.insert(header.speaker, Speaker { edge, participant: "".into(), last_packet: now });
            }
        }
        self.counters.datagrams_in += 1;
        ch.selector.on_level(header.speaker, AudioLevel { level: header.level, voice: header.voice }, now);
        let changed = ch.selector.update(now);
        if changed {
            self.reselect(header.channel_id, now);
        }
        let Some(ch) = self.channels.get(&header.channel_id) else { return };
        let Some(slot) = ch.holders.iter().position(|h| *h == Some(header.speaker)) else {
            return;
        };
        // The slot and selection go with the packet, so edges forward it on arrival even
        // before the selection message (written in place: the datagram is ours alone).
        let data = match data.try_into_mut() {
            Ok(mut unique) => {
                relay_proto::datagram::stamp_slot_in_place(&mut unique, slot as u8, ch.selection);
                unique.freeze()
            }
            // Part of a buffer still shared: stamp a copy, written without allocating.
            Err(shared) => {
                self.tx.copy_of(&shared, |d| relay_proto::datagram::stamp_slot_in_place(d, slot as u8, ch.selection))
            }
        };
        // One payload for every edge with listeners, the speaker's own included; a lossy
        // link's edge gets a repair copy too (one copy shared by all of them).
        let mut copy: Option<Bytes> = None;
        for (&target, &listeners) in &ch.subscribers {
            if listeners > 0 {
                self.counters.datagrams_out += 1;
                self.outputs.push_back(CoreOutput::Datagram { edge: target, data: data.clone() });
                if let Some(e) = self.edges.get_mut(&target).filter(|e| e.repair.is_on()) {
                    let copy = copy
                        .get_or_insert_with(|| self.tx.copy_of(&data, relay_proto::datagram::set_copy_mark))
                        .clone();
                    e.copies_sent += 1;
                    self.outputs.push_back(CoreOutput::Datagram { edge: target, data: copy });
                }
            }
        }
    }

    /// Every `QUALITY_INTERVAL`: tells each edge what its uplink lost before repair.
    fn report_quality(&mut self, now: Instant) {
        if now < self.next_quality {
            return;
        }
        self.next_quality = now + QUALITY_INTERVAL;
        for (&edge, e) in self.edges.iter_mut() {
            e.uplink.sweep(now);
            let interval = e.uplink.take_interval();
            if interval.received + interval.lost > 0 {
                let message = Message::LinkQuality { lost_permille: interval.raw_loss_permille() };
                self.outputs.push_back(CoreOutput::Control { edge, message });
            }
        }
    }

    /// Each edge link's loss and repair.
    pub fn links(&self) -> Vec<LinkView> {
        self.edges
            .iter()
            .map(|(&edge, e)| LinkView {
                edge,
                edge_id: e.id.clone(),
                uplink: e.uplink.counts(),
                downlink_loss_permille: e.repair.reported_permille,
                repair_on: e.repair.is_on(),
                repair_activations: e.repair.activations,
                copies_sent: e.copies_sent,
            })
            .collect()
    }

    /// Publishes the channel's selection to its edges if it changed.
    fn reselect(&mut self, channel_id: u32, _now: Instant) {
        let Some(ch) = self.channels.get_mut(&channel_id) else { return };
        let holders: Vec<Option<u32>> = ch.selector.slots().collect();
        if holders == ch.holders {
            return;
        }
        debug!(channel = %ch.name, from = ?ch.holders, to = ?holders, "selection changed");
        ch.holders = holders;
        ch.selection = ch.selection.wrapping_add(1).max(1);
        self.counters.selection_changes += 1;
        let message = selection_message(channel_id, ch);
        for &edge in ch.subscribers.keys() {
            self.outputs.push_back(CoreOutput::Control { edge, message: message.clone() });
        }
    }

    /// Puts outputs the shell took out back in front (in order).
    pub fn requeue(&mut self, outputs: VecDeque<CoreOutput>) {
        for o in outputs.into_iter().rev() {
            self.outputs.push_front(o);
        }
    }

    pub fn poll_output(&mut self) -> Option<CoreOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.keep_leases(now);
        self.report_quality(now);
        let timeout = self.config.speaker_timeout;
        let ids: Vec<u32> = self.channels.keys().copied().collect();
        for id in ids {
            let Some(ch) = self.channels.get_mut(&id) else { continue };
            let stale: Vec<u32> = ch
                .speakers
                .iter()
                .filter(|(_, s)| now.saturating_duration_since(s.last_packet) > timeout)
                .map(|(&k, _)| k)
                .collect();
            for ssrc in stale {
                ch.speakers.remove(&ssrc);
                ch.selector.remove(&ssrc);
            }
            ch.selector.update(now);
            self.reselect(id, now);
        }
    }

    /// Fleet mode: renews the leases on schedule, gives up channels whose lease could not
    /// be confirmed in time (this core's own clock decides, before the store's expiry),
    /// and releases channels left empty past their grace.
    fn keep_leases(&mut self, now: Instant) {
        let Some(fleet) = self.config.fleet.clone() else { return };
        let stuck = self.last_renew_sent.is_some_and(|t| now.saturating_duration_since(t) > fleet.lease_ttl);
        if now >= self.next_renew && (!self.renew_in_flight || stuck) {
            self.next_renew = now + fleet.renew_every;
            self.renew_in_flight = true;
            self.last_renew_sent = Some(now);
            let channels = self.by_name.keys().cloned().collect();
            self.outputs.push_back(CoreOutput::Lease(LeaseCommand::Renew { channels, sent_at: now }));
        }
        let lapsed: Vec<u32> = self.channels.keys().copied().filter(|&id| !self.serving(id, now)).collect();
        for id in lapsed {
            self.lose_channel(id, None, "lease not confirmed in time");
        }
        let empty: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.empty_since.is_some_and(|t| now.saturating_duration_since(t) > EMPTY_CHANNEL_GRACE))
            .map(|(&id, _)| id)
            .collect();
        for id in empty {
            self.close_channel(id);
        }
    }

    /// Whether `addr` is this core's own relay address (fleet mode).
    pub fn is_own_relay_addr(&self, addr: &str) -> bool {
        self.config.fleet.as_ref().is_some_and(|f| f.relay_addr == addr)
    }

    /// Whether the lease store answered the last renewal (fleet mode; always true alone).
    pub fn store_reachable(&self) -> bool {
        !self.store_unreachable
    }

    pub fn channels(&self) -> Vec<ChannelSummary> {
        let mut out: Vec<ChannelSummary> = self
            .channels
            .iter()
            .map(|(&id, ch)| ChannelSummary {
                name: ch.name.to_string(),
                id,
                edges: ch.subscribers.len(),
                listeners: ch.subscribers.values().map(|&l| u64::from(l)).sum(),
                speakers: ch.speakers.len(),
                selected: ch.holders.clone(),
                epoch: ch.epoch,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One channel's speakers (id, participant, edge, slot) and edges, for operators.
    pub fn channel_detail(&self, name: &str) -> Option<ChannelDetail> {
        let id = *self.by_name.get(name)?;
        let ch = self.channels.get(&id)?;
        let edge_id = |key: &EdgeKey| self.edges.get(key).map(|e| e.id.clone()).unwrap_or_default();
        let mut speakers: Vec<SpeakerDetail> = ch
            .speakers
            .iter()
            .map(|(&speaker, s)| SpeakerDetail {
                id: speaker,
                participant: s.participant.to_string(),
                edge: edge_id(&s.edge),
                slot: ch.holders.iter().position(|h| *h == Some(speaker)),
            })
            .collect();
        speakers.sort_by_key(|s| s.id);
        let mut edges: Vec<(String, u32)> = ch.subscribers.iter().map(|(k, &l)| (edge_id(k), l)).collect();
        edges.sort();
        Some(ChannelDetail { name: name.to_owned(), id, speakers, edges })
    }

    /// Edges with their URL, region, capacity, load and state, for operators.
    pub fn edges(&self) -> Vec<EdgeView> {
        self.directory.views()
    }
}

fn selection_message(channel_id: u32, ch: &Channel) -> Message {
    Message::Selection {
        channel_id,
        selection: ch.selection,
        slots: ch
            .holders
            .iter()
            .map(|h| {
                h.map(|speaker| SlotHolder {
                    speaker,
                    participant: ch.speakers.get(&speaker).map(|s| s.participant.to_string()).unwrap_or_default(),
                })
            })
            .collect(),
    }
}
