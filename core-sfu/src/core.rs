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
        }
    }
}

#[derive(Debug)]
pub enum CoreOutput {
    Control { edge: EdgeKey, message: Message },
    Datagram { edge: EdgeKey, data: Bytes },
    Close { edge: EdgeKey, reason: &'static str },
}

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
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
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
    /// Edge links closed because the edge kept sending malformed input.
    pub links_closed_misbehaving: u64,
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
}

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
    /// Subscribed edges and their listener counts.
    subscribers: HashMap<EdgeKey, u32>,
    speakers: HashMap<u32, Speaker>,
    selector: ActiveSpeakers<u32>,
    holders: Vec<Option<u32>>,
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
    edges: HashMap<EdgeKey, EdgeState>,
    channels: HashMap<u32, Channel>,
    by_name: HashMap<Arc<str>, u32>,
    next_channel_id: u32,
    outputs: VecDeque<CoreOutput>,
    next_tick: Instant,
    counters: CoreCounters,
    directory: Directory,
}

impl Core {
    pub fn new(config: CoreConfig, now: Instant) -> Self {
        Core {
            config: config.clone(),
            edges: HashMap::new(),
            channels: HashMap::new(),
            by_name: HashMap::new(),
            next_channel_id: 1,
            outputs: VecDeque::new(),
            next_tick: now + TICK,
            counters: CoreCounters::default(),
            directory: Directory::new(config.region.clone()),
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

    /// Counts a datagram the shell could not hand to a slow edge.
    pub fn count_send_drop(&mut self) {
        self.counters.datagrams_dropped += 1;
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
        self.edges.insert(edge, EdgeState { id: info.id.clone(), number, channels: Vec::new(), misbehaviour });
        self.directory.edge_joined(edge, info);
        Some(number)
    }

    /// Where the next client of a channel goes (see [`Directory::place`]).
    pub fn place(&mut self, req: &PlaceRequest, now: Instant) -> Result<Placed, PlaceError> {
        self.directory.place(req, now)
    }

    /// Stops (or resumes) placing clients on an edge; a drain also tells the edge to end
    /// its sessions within `deadline`. False if there is no such edge.
    pub fn set_draining(&mut self, edge_id: &str, drain: Option<Duration>) -> bool {
        let Some(key) = self.directory.set_draining(edge_id, drain.is_some()) else { return false };
        if let Some(deadline) = drain {
            let deadline_ms = deadline.as_millis().min(u128::from(u32::MAX)) as u32;
            self.outputs.push_back(CoreOutput::Control { edge: key, message: Message::Drain { deadline_ms } });
        }
        info!(edge = key, id = ?edge_id, draining = drain.is_some(), "edge placement state changed");
        true
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
        let Some(state) = self.edges.get_mut(&edge) else { return };
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = self.next_channel_id;
                self.next_channel_id = self.next_channel_id.wrapping_add(1).max(1);
                let name: Arc<str> = name.into();
                debug!(channel = %name, id, "channel created");
                self.by_name.insert(name.clone(), id);
                self.channels.insert(
                    id,
                    Channel {
                        name,
                        subscribers: HashMap::new(),
                        speakers: HashMap::new(),
                        selector: ActiveSpeakers::new(self.config.selector.clone()),
                        holders: vec![None; self.config.selector.slots],
                    },
                );
                id
            }
        };
        if !state.channels.contains(&id) {
            if state.channels.len() >= self.config.max_channels_per_edge {
                return self.refuse(Refusal::TooManyChannels);
            }
            state.channels.push(id);
        }
        let ch = self.channels.get_mut(&id).expect("channel just found or made");
        ch.subscribers.insert(edge, listeners);
        self.directory.listeners(edge, &ch.name, listeners);
        self.outputs.push_back(CoreOutput::Control {
            edge,
            message: Message::Subscribed { channel: name.to_owned(), channel_id: id },
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
        if ch.subscribers.is_empty() {
            let ch = self.channels.remove(&channel_id).expect("present above");
            self.by_name.remove(&ch.name);
            debug!(channel = %ch.name, "channel closed");
        } else {
            self.reselect(channel_id, now);
        }
    }

    pub fn handle_datagram(&mut self, edge: EdgeKey, data: Bytes, now: Instant) {
        let header = match MediaHeader::parse(&data) {
            Ok(h) => h,
            Err(_) => return self.misbehaved(edge, Refusal::MalformedDatagram, now),
        };
        if !self.owns(edge, header.speaker) {
            return self.misbehaved(edge, Refusal::SpeakerNotOwned, now);
        }
        let Some(ch) = self.channels.get_mut(&header.channel_id) else {
            return self.refuse(Refusal::UnknownChannel);
        };
        if !ch.subscribers.contains_key(&edge) {
            return self.refuse(Refusal::NotSubscribed);
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
        if !ch.holders.contains(&Some(header.speaker)) {
            return;
        }
        // One payload for every edge with listeners, the speaker's own included.
        for (&target, &listeners) in &ch.subscribers {
            if listeners > 0 {
                self.counters.datagrams_out += 1;
                self.outputs.push_back(CoreOutput::Datagram { edge: target, data: data.clone() });
            }
        }
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
        self.counters.selection_changes += 1;
        let message = selection_message(channel_id, ch);
        for &edge in ch.subscribers.keys() {
            self.outputs.push_back(CoreOutput::Control { edge, message: message.clone() });
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
