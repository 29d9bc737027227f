//! The async shell: one task owns the UDP socket and the [`Edge`] core; DTLS handshakes
//! run as tasks; signalling talks to the core through a bounded command channel.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use media::dtls::{self, DatagramSink, DtlsIdentity, DTLS_QUEUE};
use media::srtp::SrtpKeys;
use relay_proto::auth::{self, Side};
use relay_proto::control::{FrameReader, Message};
use relay_proto::endpoint::{read_message, send_message, ReadError, Trust};
use relay_proto::health::LinkHealth;
use relay_proto::queue::MEDIA_AGE_BUDGET;
use relay_proto::sender::{sleep_until_some, Backlog, DatagramSender};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::edge::{
    AdmitError, ChannelView, CloseReason, Counters, DropReason, Edge, EdgeConfig, LinkId, NewSession, Output, SessionId,
};

const COMMAND_QUEUE: usize = 4096;
/// A media worker's thread is named this and its UDP port.
pub const MEDIA_THREAD: &str = "media-";
/// Datagrams read per wake-up before outputs are flushed.
const RECV_BATCH: usize = 64;

enum Command {
    AddSession {
        new: NewSession,
        resource: String,
        peer_fingerprint: [u8; 32],
        reply: oneshot::Sender<Result<SessionId, AdmitError>>,
    },
    RemoveSession {
        resource: String,
        reply: oneshot::Sender<bool>,
    },
    DtlsSend {
        id: SessionId,
        data: Bytes,
    },
    DtlsDone {
        id: SessionId,
        keys: SrtpKeys,
    },
    DtlsEnded {
        id: SessionId,
        reason: CloseReason,
    },
    /// The DTLS connection was kept its linger after the handshake and let go.
    DtlsRetired {
        id: SessionId,
    },
    /// The handshake task panicked (contained; the session ends).
    DtlsPanicked {
        id: SessionId,
    },
    ChannelView {
        name: String,
        reply: oneshot::Sender<Option<ChannelView>>,
    },
    Stats {
        reply: oneshot::Sender<(Counters, usize)>,
    },
    /// Each core link's health.
    Links {
        reply: oneshot::Sender<Vec<LinkHealth>>,
    },
    /// Drain: no new sessions; those left end after `deadline`.
    Drain {
        deadline: Duration,
    },
    Ready {
        reply: oneshot::Sender<Readiness>,
    },
    RelayUp {
        link: LinkId,
        relay: RelayLink,
        edge_number: u16,
    },
    RelayDown {
        link: LinkId,
    },
    RelayControl {
        link: LinkId,
        message: Message,
    },
    RelayDatagram {
        link: LinkId,
        data: Bytes,
        /// When it came off the link: media that waited in this queue past the age budget
        /// is dropped.
        at: Instant,
    },
    /// A control message from the core that did not decode.
    RelayMalformed,
}

/// How an edge reaches its cores.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `host:port` of each configured core's QUIC endpoint, resolved at every connect.
    pub cores: Vec<String>,
    pub cluster_secret: Vec<u8>,
    pub edge_id: String,
    pub signalling_url: String,
    pub capacity: u32,
    /// Sessions this edge takes in all, and its region, for the core's placement.
    pub max_sessions: u32,
    pub region: String,
    pub trust: Trust,
    /// Slots each listener gets here: the core must select as many.
    pub slots: usize,
}

/// The live link to the core, as the edge task uses it.
struct RelayLink {
    conn: quinn::Connection,
    control: mpsc::Sender<Message>,
    /// Uplink media and heartbeats, through a queue bounded by age.
    media: DatagramSender,
    heartbeat_seq: u16,
}

const RELAY_CONTROL_QUEUE: usize = 4096;
const RELAY_MIN_BACKOFF: Duration = Duration::from_millis(100);
const RELAY_MAX_BACKOFF: Duration = Duration::from_secs(2);
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the edge takes new sessions, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub draining: bool,
    pub sessions: usize,
}

/// A worker's load as signalling reads it without asking the worker's task: its sessions
/// in all and per channel, counted when signalling adds one and when the task ends one,
/// and its readiness as of the task's last turn.
#[derive(Debug, Default)]
pub struct WorkerGauge {
    sessions: AtomicUsize,
    ready: AtomicBool,
    /// The core's datagrams refused because the worker's command queue was full (counted
    /// by the link's task, folded into the worker's drops when it reports).
    relay_queue_full: AtomicU64,
    channels: std::sync::Mutex<HashMap<Arc<str>, ChannelCount>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct ChannelCount {
    members: usize,
    listeners: usize,
}

impl WorkerGauge {
    fn load(&self, channel: &str, max_listeners: usize) -> WorkerLoad {
        let count = self.channels.lock().expect("worker gauge").get(channel).copied().unwrap_or_default();
        WorkerLoad {
            channel_members: count.members,
            channel_room: count.listeners < max_listeners,
            sessions: self.sessions.load(Ordering::Relaxed),
            ready: self.ready.load(Ordering::Relaxed),
        }
    }

    fn reserve(&self, channel: &Arc<str>, listens: bool) {
        let mut channels = self.channels.lock().expect("worker gauge");
        let count = channels.entry(channel.clone()).or_default();
        count.members += 1;
        count.listeners += usize::from(listens);
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    fn release(&self, channel: &str, listens: bool) {
        let mut channels = self.channels.lock().expect("worker gauge");
        if let Some(count) = channels.get_mut(channel) {
            count.members = count.members.saturating_sub(1);
            count.listeners = count.listeners.saturating_sub(usize::from(listens));
            if count.members == 0 {
                channels.remove(channel);
            }
            self.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One worker as signalling weighs it for a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Sessions of the channel already here.
    pub channel_members: usize,
    /// Whether the channel may take another listener here.
    pub channel_room: bool,
    pub sessions: usize,
    pub ready: bool,
}

/// A cheap, cloneable handle to a running edge (one worker of it).
#[derive(Clone)]
pub struct EdgeHandle {
    commands: mpsc::Sender<Command>,
    gauge: Arc<WorkerGauge>,
    identity: DtlsIdentity,
    pub udp_addr: SocketAddr,
    pub candidate: SocketAddr,
    pub config: Arc<EdgeConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("edge is shutting down")]
    Gone,
}

impl EdgeHandle {
    /// Commands (media from links among them) waiting for the node's task.
    pub fn input_queue_depth(&self) -> usize {
        self.commands.max_capacity() - self.commands.capacity()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, HandleError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| HandleError::Gone)?;
        rx.await.map_err(|_| HandleError::Gone)
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        self.identity.fingerprint()
    }

    /// Adds a session [`Self::reserve`] counted.
    pub async fn submit(
        &self,
        new: NewSession,
        resource: String,
        peer_fingerprint: [u8; 32],
    ) -> Result<Result<SessionId, AdmitError>, HandleError> {
        let (channel, listens) = (new.channel.clone(), !new.slots.is_empty());
        let result = self.ask(|reply| Command::AddSession { new, resource, peer_fingerprint, reply }).await;
        // A refusal the task takes back itself (even if this request is gone by then).
        if result.is_err() {
            self.gauge.release(&channel, listens);
        }
        result
    }

    pub async fn remove_session(&self, resource: String) -> Result<bool, HandleError> {
        self.ask(|reply| Command::RemoveSession { resource, reply }).await
    }

    pub async fn channel_view(&self, name: String) -> Result<Option<ChannelView>, HandleError> {
        self.ask(|reply| Command::ChannelView { name, reply }).await
    }

    pub async fn stats(&self) -> Result<(Counters, usize), HandleError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// How each core link fares.
    pub async fn links(&self) -> Result<Vec<LinkHealth>, HandleError> {
        self.ask(|reply| Command::Links { reply }).await
    }

    /// Stops taking sessions; those left end after `deadline`.
    pub async fn drain(&self, deadline: Duration) -> Result<(), HandleError> {
        self.commands.send(Command::Drain { deadline }).await.map_err(|_| HandleError::Gone)
    }

    pub async fn readiness(&self) -> Result<Readiness, HandleError> {
        self.ask(|reply| Command::Ready { reply }).await
    }

    /// What placing a session of `channel` here would join, without asking the task.
    pub fn load(&self, channel: &str) -> WorkerLoad {
        self.gauge.load(channel, self.config.max_listeners_per_channel)
    }

    /// Counts a session about to be added (placement sees it at once); [`Self::submit`]
    /// then adds it, and takes the count back if it is refused.
    pub fn reserve(&self, new: &NewSession) {
        self.gauge.reserve(&new.channel, !new.slots.is_empty());
    }
}

struct DtlsTask {
    input: mpsc::Sender<Bytes>,
    task: JoinHandle<()>,
}

struct Shell {
    edge: Edge,
    /// Registered for readability only: a socket that also waits for writability has
    /// its epoll entry (and a parked runtime thread) woken as each sent datagram's
    /// buffer is freed, once per packet. Sends go straight to the socket; a full send
    /// buffer is counted as a send error, as before.
    socket: AsyncFd<std::net::UdpSocket>,
    identity: DtlsIdentity,
    handshake_timeout: Duration,
    /// The node's shared runtime, where DTLS handshakes run (off the media thread).
    control: tokio::runtime::Handle,
    commands: mpsc::Sender<Command>,
    dtls: HashMap<SessionId, DtlsTask>,
    resources: HashMap<String, SessionId>,
    resource_of: HashMap<SessionId, String>,
    send_errors: u64,
    last_send_warning: Option<Instant>,
    relays: HashMap<LinkId, RelayLink>,
    relay_config: Option<Arc<RelayConfig>>,
    /// Links with uplink datagrams waiting for quinn, or repair copies for their time.
    backlog: Backlog<LinkId>,
    /// When the media handled in this turn was read (the earliest, for a batch).
    forwarding: Option<Instant>,
    gauge: Arc<WorkerGauge>,
    /// Each session's channel and whether it listens, for the gauge when it ends.
    placed: HashMap<SessionId, (Arc<str>, bool)>,
}

/// Starts the edge task on a bound UDP socket (and the core link in cascade mode).
pub fn start(
    config: EdgeConfig,
    socket: UdpSocket,
    candidate_for: impl Fn(SocketAddr) -> SocketAddr,
    identity: DtlsIdentity,
    handshake_timeout: Duration,
    relay: Option<RelayConfig>,
    cpu: Option<usize>,
) -> std::io::Result<(EdgeHandle, JoinHandle<()>)> {
    let udp_addr = socket.local_addr()?;
    let socket = socket.into_std()?;
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let now = Instant::now();
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let gauge = Arc::new(WorkerGauge::default());
    gauge.ready.store(!config.cascade, Ordering::Relaxed);
    let handle = EdgeHandle {
        commands: commands.clone(),
        gauge: gauge.clone(),
        identity: identity.clone(),
        udp_addr,
        candidate: candidate_for(udp_addr),
        config: Arc::new(config.clone()),
    };
    let mut edge = Edge::new(config, now, unix);
    let relay_config = relay.map(Arc::new);
    let seeds: Vec<(LinkId, String)> = relay_config
        .iter()
        .flat_map(|r| r.cores.iter())
        .map(|addr| (edge.add_core(addr.clone()), addr.clone()))
        .collect();
    let (link_commands, link_gauge) = (handle.commands.clone(), gauge.clone());
    let control = tokio::runtime::Handle::current();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let socket = {
        // Watched by the worker's own runtime. Deprecated for any `AsRawFd`, whose
        // descriptor might close under the registration; a `std::net::UdpSocket` owns its
        // descriptor until the `AsyncFd` drops it.
        let _inside = runtime.enter();
        #[allow(deprecated)]
        AsyncFd::with_interest(socket, Interest::READABLE)?
    };
    // The thread ends when the worker does, or when the returned task is dropped with
    // the node's runtime.
    let (ended, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name(format!("{MEDIA_THREAD}{}", udp_addr.port())).spawn(move || {
        if let Some(cpu) = cpu {
            let mut only = rustix::thread::CpuSet::new();
            only.set(cpu);
            match rustix::thread::sched_setaffinity(None, &only) {
                Ok(()) => info!(worker = %udp_addr, cpu, "media worker pinned"),
                Err(e) => warn!(worker = %udp_addr, cpu, error = %e, "media worker not pinned"),
            }
        }
        runtime.block_on(async move {
            let shell = Shell {
                edge,
                socket,
                identity,
                handshake_timeout,
                control,
                commands,
                dtls: HashMap::new(),
                resources: HashMap::new(),
                resource_of: HashMap::new(),
                send_errors: 0,
                last_send_warning: None,
                relays: HashMap::new(),
                relay_config: relay_config.clone(),
                backlog: Backlog::default(),
                forwarding: None,
                gauge,
                placed: HashMap::new(),
            };
            if let Some(config) = relay_config {
                for (link, addr) in seeds {
                    tokio::spawn(relay_link(config.clone(), addr, link, link_commands.clone(), link_gauge.clone()));
                }
            }
            tokio::select! {
                _ = shell.run(rx) => {}
                _ = stopped => {}
            }
        });
        drop(ended);
    })?;
    let task = tokio::spawn(async move {
        let _stop = stop;
        let _ = ended_rx.await;
    });
    Ok((handle, task))
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 2048];
        let mut heartbeat = tokio::time::interval(relay_proto::datagram::HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = tokio::time::Instant::from_std(self.edge.poll_timeout());
            let flush_at = self.backlog.wake_at().map(tokio::time::Instant::from_std);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                ready = self.socket.readable() => {
                    let Ok(mut ready) = ready else {
                        // Only when the runtime's I/O driver is gone, at shutdown.
                        warn!("udp socket no longer watched: media worker stopping");
                        break;
                    };
                    let now = Instant::now();
                    self.forwarding = Some(now);
                    for _ in 0..RECV_BATCH {
                        match ready.get_inner().recv_from(&mut buf) {
                            Ok((n, from)) => {
                                let data = &buf[..n];
                                self.edge.contain(Some(from), "datagram", |e| e.handle_datagram(now, from, data));
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                ready.clear_ready();
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.edge.handle_timeout(Instant::now()),
                _ = heartbeat.tick(), if !self.relays.is_empty() => {
                    // The core counts these to know what this link loses before media flows.
                    let now = Instant::now();
                    for (&link, relay) in self.relays.iter_mut() {
                        relay.heartbeat_seq = relay.heartbeat_seq.wrapping_add(1);
                        relay.media.send(now, relay_proto::datagram::heartbeat(relay.heartbeat_seq));
                        self.backlog.note(link, &mut relay.media);
                    }
                }
                _ = sleep_until_some(flush_at) => {
                    let edge = &mut self.edge;
                    self.backlog.flush(Instant::now(), &mut self.relays, |r| &mut r.media, |_, n| {
                        edge.count_drops(DropReason::UplinkQueue, n)
                    });
                }
            }
            self.flush();
        }
        for (_, t) in self.dtls.drain() {
            t.task.abort();
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::AddSession { new, resource, peer_fingerprint, reply } => {
                let placed = (new.channel.clone(), !new.slots.is_empty());
                let result = self.edge.add_session(new, now);
                if result.is_err() {
                    self.gauge.release(&placed.0, placed.1);
                }
                if let Ok(id) = result {
                    self.placed.insert(id, placed);
                    self.resources.insert(resource.clone(), id);
                    self.resource_of.insert(id, resource);
                    self.spawn_dtls(id, peer_fingerprint);
                }
                let _ = reply.send(result);
            }
            Command::RemoveSession { resource, reply } => {
                let found = self.resources.get(&resource).copied();
                if let Some(id) = found {
                    self.edge.remove_session(id, CloseReason::Deleted);
                }
                let _ = reply.send(found.is_some());
            }
            Command::DtlsSend { id, data } => self.edge.send_dtls(id, data),
            Command::DtlsDone { id, keys } => self.edge.dtls_established(id, &keys, now),
            Command::DtlsEnded { id, reason } => self.edge.remove_session(id, reason),
            Command::DtlsPanicked { id } => self.edge.session_panicked(id, "dtls handshake"),
            Command::DtlsRetired { id } => {
                self.dtls.remove(&id);
                self.edge.dtls_retired(id);
            }
            Command::ChannelView { name, reply } => {
                let _ = reply.send(self.edge.channel_view(&name));
            }
            Command::Drain { deadline } => self.edge.drain(now + deadline, now),
            Command::Ready { reply } => {
                let _ = reply.send(Readiness {
                    ready: self.edge.is_ready(),
                    draining: self.edge.is_draining(),
                    sessions: self.edge.session_count(),
                });
            }
            Command::Links { reply } => {
                let links = self
                    .edge
                    .core_links()
                    .into_iter()
                    .map(|v| {
                        let relay = self.relays.get(&v.link);
                        let quic = relay.map(|r| r.conn.stats());
                        LinkHealth {
                            peer: v.core,
                            up: v.up,
                            stalled: v.stalled,
                            rtt: relay.map(|r| r.conn.rtt()),
                            quic_packets_sent: quic.as_ref().map_or(0, |q| q.path.sent_packets),
                            quic_packets_lost: quic.as_ref().map_or(0, |q| q.path.lost_packets),
                            received: v.downlink,
                            sent: relay.map(|r| r.media.stats()).unwrap_or_default(),
                            queue_age: relay.map_or(Duration::ZERO, |r| r.media.queue_age(now)),
                            queue_len: relay.map_or(0, |r| r.media.queue_len()),
                            peer_reported_loss_permille: v.uplink_loss_permille,
                            repair_on: v.repair_on,
                            repair_activations: v.repair_activations,
                            repair_copies_sent: v.copies_sent,
                            reconnects: v.reconnects,
                        }
                    })
                    .collect();
                let _ = reply.send(links);
            }
            Command::Stats { reply } => {
                let refused = self.gauge.relay_queue_full.swap(0, Ordering::Relaxed);
                self.edge.count_drops(DropReason::RelayQueueFull, refused);
                let _ = reply.send((self.edge.counters().clone(), self.edge.session_count()));
            }
            Command::RelayUp { link, relay, edge_number } => {
                self.relays.insert(link, relay);
                self.edge.relay_connected(link, edge_number, now);
            }
            Command::RelayDown { link } => {
                self.relays.remove(&link);
                self.edge.relay_disconnected(link, now);
            }
            Command::RelayMalformed => self.edge.count_drop(DropReason::RelayMalformed),
            Command::RelayControl { link, message } => {
                self.edge.contain(None, "relay control", |e| e.handle_relay_control(link, message, now))
            }
            Command::RelayDatagram { link, data, at } => {
                if now.saturating_duration_since(at) > MEDIA_AGE_BUDGET {
                    self.edge.count_drop(DropReason::RelayStale);
                } else {
                    self.edge.contain(None, "relay datagram", |e| e.handle_relay_datagram(link, &data, now));
                    self.forwarding = Some(at);
                }
            }
        }
    }

    fn spawn_dtls(&mut self, id: SessionId, peer_fingerprint: [u8; 32]) {
        let (input, rx) = mpsc::channel(DTLS_QUEUE);
        let commands = self.commands.clone();
        let sink_commands = commands.clone();
        let sink: DatagramSink = Arc::new(move |data| {
            let _ = sink_commands.try_send(Command::DtlsSend { id, data });
        });
        let identity = self.identity.clone();
        let timeout = self.handshake_timeout;
        let linger = self.edge.config().dtls_linger;
        let placeholder = SocketAddr::from(([0, 0, 0, 0], 0));
        let handshake = async move {
            match dtls::handshake(&identity, false, rx, sink, placeholder, peer_fingerprint, timeout).await {
                Ok(established) => {
                    let _ = commands.send(Command::DtlsDone { id, keys: established.keys }).await;
                    // Keep the connection a while to answer retransmitted flights (a
                    // close_notify meanwhile ends the session), then let it go.
                    let mut buf = vec![0u8; 1500];
                    let read_until_closed = async { while established.conn.read(&mut buf, None).await.is_ok() {} };
                    let command = match tokio::time::timeout(linger, read_until_closed).await {
                        Ok(()) => Command::DtlsEnded { id, reason: CloseReason::DtlsClosed },
                        Err(_) => Command::DtlsRetired { id },
                    };
                    let _ = commands.send(command).await;
                }
                Err(e) => {
                    debug!(session = id, error = %e, "dtls failed");
                    let _ = commands.send(Command::DtlsEnded { id, reason: CloseReason::DtlsFailed }).await;
                }
            }
        };
        let task = self.control.spawn(contain_handshake(id, self.commands.clone(), handshake));
        self.dtls.insert(id, DtlsTask { input, task });
    }

    fn flush(&mut self) {
        let mut forwarded = false;
        while let Some(out) = self.edge.poll_output() {
            match out {
                Output::Transmit { to, data } => {
                    forwarded = true;
                    if let Err(e) = self.socket.get_ref().send_to(&data, to) {
                        self.send_errors += 1;
                        self.edge.count_send_error();
                        let now = Instant::now();
                        if self.last_send_warning.is_none_or(|t| now - t > Duration::from_secs(5)) {
                            self.last_send_warning = Some(now);
                            warn!(error = %e, total = self.send_errors, "udp send failed");
                        }
                    }
                }
                Output::Dtls { session, data } => {
                    if let Some(t) = self.dtls.get(&session) {
                        if t.input.try_send(data).is_err() {
                            self.edge.count_drop(DropReason::DtlsQueueFull);
                        }
                    }
                }
                Output::Relay { link, message } => {
                    if let Some(relay) = self.relays.get(&link) {
                        if relay.control.try_send(message).is_err() {
                            warn!(link, "core link backlog: reconnecting");
                            relay.conn.close(1u32.into(), b"control backlog");
                        }
                    }
                }
                Output::Uplink { link, data } => match self.relays.get_mut(&link) {
                    Some(relay) => {
                        forwarded = true;
                        let before = relay.media.dropped();
                        relay.media.send(Instant::now(), data);
                        let dropped = relay.media.dropped() - before;
                        self.edge.count_drops(DropReason::UplinkQueue, dropped);
                        self.backlog.note(link, &mut relay.media);
                    }
                    None => self.edge.count_drop(DropReason::UplinkQueue),
                },
                Output::OpenLink { link, addr } => {
                    if let Some(config) = &self.relay_config {
                        info!(link, core = %addr, "linking to a channel's owning core");
                        tokio::spawn(relay_link(config.clone(), addr, link, self.commands.clone(), self.gauge.clone()));
                    }
                }
                Output::Closed { session, .. } => {
                    if let Some((channel, listens)) = self.placed.remove(&session) {
                        self.gauge.release(&channel, listens);
                    }
                    if let Some(t) = self.dtls.remove(&session) {
                        t.task.abort();
                    }
                    if let Some(resource) = self.resource_of.remove(&session) {
                        self.resources.remove(&resource);
                    }
                }
            }
        }
        if let (true, Some(at)) = (forwarded, self.forwarding.take()) {
            self.edge.observe_forwarding(at.elapsed());
        }
        self.gauge.ready.store(self.edge.is_ready(), Ordering::Relaxed);
    }
}

/// Keeps a link to the core: connect, authenticate both ways, relay, and on loss retry
/// with backoff. Listeners stay connected to the edge throughout.
async fn relay_link(
    config: Arc<RelayConfig>,
    core: String,
    link: LinkId,
    commands: mpsc::Sender<Command>,
    gauge: Arc<WorkerGauge>,
) {
    let mut backoff = RELAY_MIN_BACKOFF;
    let mut endpoint: Option<quinn::Endpoint> = None;
    let mut last_warning: Option<Instant> = None;
    while !commands.is_closed() {
        match connect_core(&config, &core, &mut endpoint).await {
            Ok(connected) => {
                info!(%core, core_id = ?connected.4, "connected to core");
                backoff = RELAY_MIN_BACKOFF;
                pump(connected, link, &commands, &gauge).await;
                if commands.send(Command::RelayDown { link }).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let now = Instant::now();
                if last_warning.is_none_or(|t| now - t > Duration::from_secs(10)) {
                    last_warning = Some(now);
                    warn!(%core, error = %e, "cannot reach the core; retrying");
                }
            }
        }
        let jitter = Duration::from_millis(u64::from(rand::random::<u8>() % 50));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(RELAY_MAX_BACKOFF);
    }
}

/// A link to the core: connection, control stream, the core's id and this edge's number.
type Connected = (quinn::Connection, quinn::SendStream, quinn::RecvStream, FrameReader, String, u16);

async fn connect_core(
    config: &RelayConfig,
    core: &str,
    endpoint: &mut Option<quinn::Endpoint>,
) -> anyhow::Result<Connected> {
    let addr =
        tokio::net::lookup_host(core).await?.next().ok_or_else(|| anyhow::anyhow!("{core} resolves to no address"))?;
    if endpoint.is_none() {
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        *endpoint = Some(relay_proto::endpoint::client(bind, config.trust.clone())?);
    }
    let endpoint = endpoint.as_ref().expect("set above");
    let host = core.rsplit_once(':').map_or(core, |(h, _)| h);
    let server_name = host.trim_start_matches('[').trim_end_matches(']');
    let conn = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, endpoint.connect(addr, server_name)?)
        .await
        .map_err(|_| anyhow::anyhow!("QUIC handshake timed out"))??;
    let binding = auth::session_binding(&conn).ok_or_else(|| anyhow::anyhow!("no TLS exporter"))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Message::Hello {
        version: relay_proto::PROTOCOL_VERSION,
        edge_id: config.edge_id.clone(),
        signalling_url: config.signalling_url.clone(),
        capacity: config.capacity,
        proof: auth::proof(&config.cluster_secret, Side::Edge, &binding, &config.edge_id),
        region: config.region.clone(),
        max_sessions: config.max_sessions,
    };
    send_message(&mut send, &hello).await?;
    let mut reader = FrameReader::default();
    let reply = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, read_message(&mut recv, &mut reader))
        .await
        .map_err(|_| anyhow::anyhow!("core sent no welcome"))??;
    match reply {
        Some(Message::Welcome { core_id, proof, edge_number, slots }) => {
            anyhow::ensure!(
                usize::from(slots) == config.slots,
                "core {core_id:?} selects {slots} speakers per channel and this edge gives listeners {} slots: \
                 configure both with the same --slots",
                config.slots
            );
            anyhow::ensure!(
                (1..=relay_proto::speaker::MAX_EDGE_NUMBER).contains(&edge_number),
                "core {core_id:?} gave edge number {edge_number}, outside 1..={}",
                relay_proto::speaker::MAX_EDGE_NUMBER
            );
            if !auth::verify(&config.cluster_secret, Side::Core, &binding, &core_id, &proof) {
                conn.close(2u32.into(), b"core failed authentication");
                anyhow::bail!("core {core_id} did not prove the cluster secret");
            }
            Ok((conn, send, recv, reader, core_id, edge_number))
        }
        Some(Message::Reject { reason }) => anyhow::bail!("core refused this edge: {reason}"),
        other => anyhow::bail!("unexpected first message from the core: {other:?}"),
    }
}

/// Relays one connection until it ends.
async fn pump(connected: Connected, link: LinkId, commands: &mpsc::Sender<Command>, gauge: &WorkerGauge) {
    let (conn, mut send, mut recv, mut reader, _, edge_number) = connected;
    let (control, mut control_rx) = mpsc::channel::<Message>(RELAY_CONTROL_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = control_rx.recv().await {
            if send_message(&mut send, &m).await.is_err() {
                break;
            }
        }
    });
    let relay = RelayLink { conn: conn.clone(), control, media: DatagramSender::new(conn.clone()), heartbeat_seq: 0 };
    if commands.send(Command::RelayUp { link, relay, edge_number }).await.is_err() {
        writer.abort();
        return;
    }
    loop {
        tokio::select! {
            m = read_message(&mut recv, &mut reader) => match m {
                Ok(Some(message)) => {
                    if commands.send(Command::RelayControl { link, message }).await.is_err() { break; }
                }
                Ok(None) => break,
                Err(ReadError::Decode(e)) if !e.is_fatal() => {
                    // One bad message is skipped; the stream stays in step.
                    debug!(error = %e, "malformed control message from the core skipped");
                    if commands.send(Command::RelayMalformed).await.is_err() { break; }
                }
                Err(e) => {
                    warn!(error = %e, "core link failed");
                    conn.close(1u32.into(), b"malformed control frame");
                    break;
                }
            },
            d = conn.read_datagram() => match d {
                // Media never waits: a full queue drops the datagram.
                Ok(data) => {
                    if commands.try_send(Command::RelayDatagram { link, data, at: Instant::now() }).is_err() {
                        gauge.relay_queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "core link closed");
                    break;
                }
            },
        }
    }
    writer.abort();
}

/// Runs one session's handshake task; a panic inside it (a DTLS library bug) ends that
/// handshake and its session only.
async fn contain_handshake(id: SessionId, commands: mpsc::Sender<Command>, handshake: impl Future<Output = ()>) {
    use futures_util::FutureExt;
    if std::panic::AssertUnwindSafe(handshake).catch_unwind().await.is_err() {
        let _ = commands.send(Command::DtlsPanicked { id }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handshake_ends_its_own_session_only() {
        let (tx, mut rx) = mpsc::channel(8);
        let panicking = tokio::spawn(contain_handshake(1, tx.clone(), async { panic!("library bug") }));
        let fine = tokio::spawn(contain_handshake(2, tx.clone(), async {}));
        let waiting = tokio::spawn(contain_handshake(3, tx, std::future::pending()));
        panicking.await.expect("the task itself does not fail");
        fine.await.unwrap();
        assert!(matches!(rx.recv().await, Some(Command::DtlsPanicked { id: 1 })));
        assert!(rx.try_recv().is_err(), "nothing about the other handshakes");
        assert!(!waiting.is_finished(), "the third handshake goes on");
        waiting.abort();
    }

    /// The thread named `name` in this process, if it runs.
    fn thread_named(name: &str) -> Option<std::path::PathBuf> {
        std::fs::read_dir("/proc/self/task")
            .ok()?
            .filter_map(|t| t.ok().map(|t| t.path()))
            .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name))
    }

    #[test]
    fn a_media_worker_runs_on_its_own_thread_pinned_as_asked_until_its_runtime_ends() {
        let allowed = rustix::thread::sched_getaffinity(None).unwrap();
        let cpu = (0..rustix::thread::CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let name = runtime.block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = socket.local_addr().unwrap().port();
            let identity = DtlsIdentity::generate().unwrap();
            let (handle, _task) =
                start(EdgeConfig::default(), socket, |a| a, identity, Duration::from_secs(5), None, Some(cpu)).unwrap();
            // The worker answers from its own thread.
            let (reply, answer) = tokio::sync::oneshot::channel();
            handle.commands.send(Command::Stats { reply }).await.unwrap();
            answer.await.unwrap();
            format!("{MEDIA_THREAD}{port}")
        });
        let thread = thread_named(&name).expect("the media worker's thread runs");
        let status = std::fs::read_to_string(thread.join("status")).unwrap();
        let pinned_to = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap();
        assert_eq!(pinned_to.trim(), cpu.to_string(), "pinned to CPU {cpu}: {status}");
        // Its thread ends with the node's runtime.
        drop(runtime);
        for _ in 0..500 {
            if thread_named(&name).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{name} still runs after its node's runtime ended");
    }
}
