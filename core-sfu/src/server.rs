//! The core's async shell: a QUIC server for edges and one task owning the [`Core`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use node_kit::bucket::TokenBucket;
use relay_proto::auth::{self, Side};
use relay_proto::control::{FrameReader, Message};
use relay_proto::endpoint::{read_message, send_message, ReadError, TlsIdentity};
use relay_proto::health::LinkHealth;
use relay_proto::queue::MEDIA_AGE_BUDGET;
use relay_proto::sender::{sleep_until_some, Backlog, DatagramSender};
use relay_proto::PROTOCOL_VERSION;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::core::{
    ChannelDetail, ChannelSummary, Core, CoreConfig, CoreCounters, CoreOutput, EdgeInfo, EdgeKey, EdgeView,
    LeaseAnswer, LeaseCommand, PlaceError, PlaceRequest, Placed, Refusal,
};
use crate::lease_store::{Holder, LeaseStore};

/// Placement requests waiting for a channel's lease to be settled, at most.
const MAX_PLACEMENTS_WAITING: usize = 4096;

/// Where a client goes.
#[derive(Debug)]
pub enum PlaceOutcome {
    Edge(Placed),
    /// Another core owns the channel: the client asks there (its public URL).
    OtherCore(String),
    Failed(PlaceError),
}

const COMMAND_QUEUE: usize = 16 * 1024;
/// Control messages queued per edge before the edge is dropped as too slow.
const CONTROL_QUEUE: usize = 1024;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Control messages an edge may send at once (a reconnecting edge resubscribes every
/// channel it serves) and per second after that; more closes its link.
const CONTROL_BURST: u32 = 20_000;
const CONTROL_PER_SEC: u32 = 2_000;

enum Command {
    /// An authenticated edge; the reply is its edge number, or `None` if the core is full.
    Joined {
        edge: EdgeKey,
        conn: quinn::Connection,
        control: mpsc::Sender<Message>,
        hello: EdgeInfo,
        number: oneshot::Sender<Option<u16>>,
    },
    Left {
        edge: EdgeKey,
    },
    Control {
        edge: EdgeKey,
        message: Message,
    },
    Datagram {
        edge: EdgeKey,
        data: Bytes,
        /// When it came off the link: media that waited in this queue past the age budget
        /// is dropped.
        at: Instant,
    },
    Refused {
        reason: Refusal,
    },
    /// A control frame that did not decode (skipped; counts against the edge).
    Malformed {
        edge: EdgeKey,
    },
    Channels {
        reply: oneshot::Sender<Vec<ChannelSummary>>,
    },
    Channel {
        name: String,
        reply: oneshot::Sender<Option<ChannelDetail>>,
    },
    Stats {
        reply: oneshot::Sender<(CoreCounters, usize)>,
    },
    /// Each edge link's health.
    Links {
        reply: oneshot::Sender<Vec<LinkHealth>>,
    },
    Edges {
        reply: oneshot::Sender<Vec<EdgeView>>,
    },
    Place {
        request: PlaceRequest,
        reply: oneshot::Sender<PlaceOutcome>,
    },
    Kick {
        channel: String,
        participant: String,
        reply: oneshot::Sender<bool>,
    },
    LeaseAnswer {
        channel: Arc<str>,
        answer: LeaseAnswer,
    },
    Renewed {
        sent_at: Instant,
        result: Option<Vec<(Arc<str>, Option<u64>)>>,
    },
    /// Shutting down: release every lease (awaited) and tell the edges.
    HandOver {
        reply: oneshot::Sender<()>,
    },
    /// `deadline`: drain (stop placing, end sessions by then); `None`: undrain.
    Drain {
        edge_id: String,
        deadline: Option<Duration>,
        reply: oneshot::Sender<bool>,
    },
}

#[derive(Clone)]
pub struct CoreHandle {
    commands: mpsc::Sender<Command>,
    pub quic_addr: SocketAddr,
}

impl CoreHandle {
    /// Commands (media from links among them) waiting for the node's task.
    pub fn input_queue_depth(&self) -> usize {
        self.commands.max_capacity() - self.commands.capacity()
    }

    pub async fn channels(&self) -> Option<Vec<ChannelSummary>> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Channels { reply }).await.ok()?;
        rx.await.ok()
    }

    pub async fn channel(&self, name: String) -> Option<Option<ChannelDetail>> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Channel { name, reply }).await.ok()?;
        rx.await.ok()
    }

    pub async fn place(&self, request: PlaceRequest) -> Option<PlaceOutcome> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Place { request, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Before a graceful exit: releases this core's leases so other cores take its
    /// channels at once; returns when the store has answered (or timed out).
    pub async fn hand_over(&self) {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::HandOver { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends a participant's sessions in a channel this core serves; false if it does not.
    pub async fn kick(&self, channel: String, participant: String) -> Option<bool> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Kick { channel, participant, reply }).await.ok()?;
        rx.await.ok()
    }

    /// Drains (with a deadline) or undrains (`None`) an edge; false if it is unknown.
    pub async fn drain(&self, edge_id: String, deadline: Option<Duration>) -> Option<bool> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Drain { edge_id, deadline, reply }).await.ok()?;
        rx.await.ok()
    }

    pub async fn edges(&self) -> Option<Vec<EdgeView>> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Edges { reply }).await.ok()?;
        rx.await.ok()
    }

    pub async fn stats(&self) -> Option<(CoreCounters, usize)> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Stats { reply }).await.ok()?;
        rx.await.ok()
    }

    /// How each edge link fares.
    pub async fn links(&self) -> Option<Vec<LinkHealth>> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Links { reply }).await.ok()?;
        rx.await.ok()
    }
}

/// Binds the QUIC endpoint and starts accepting edges.
pub fn start(
    config: CoreConfig,
    quic: std::net::UdpSocket,
    identity: TlsIdentity,
    cluster_secret: Vec<u8>,
    store: Option<Arc<LeaseStore>>,
) -> anyhow::Result<(CoreHandle, JoinHandle<()>)> {
    let reset = relay_proto::endpoint::ResetKey::from_cluster_secret(&cluster_secret);
    let endpoint = relay_proto::endpoint::server_on(quic, identity, reset)?;
    let quic_addr = endpoint.local_addr()?;
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let core_id = config.core_id.clone();
    let slots = config.selector.slots as u8;
    anyhow::ensure!(config.fleet.is_some() == store.is_some(), "a fleet core needs its lease store, and only it");
    let core = Core::new(config, Instant::now());
    let core_task = tokio::spawn(run_core(core, rx, commands.clone(), store));
    let accept_commands = commands.clone();
    let secret = Arc::new(cluster_secret);
    let accept_task = tokio::spawn(async move {
        let mut next_key: EdgeKey = 1;
        while let Some(incoming) = endpoint.accept().await {
            let edge = next_key;
            next_key += 1;
            let commands = accept_commands.clone();
            let secret = secret.clone();
            let core_id = core_id.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => serve_edge(edge, conn, commands, &secret, &core_id, slots).await,
                    Err(e) => debug!(error = %e, "edge handshake failed"),
                }
            });
        }
    });
    let task = tokio::spawn(async move {
        let _ = core_task.await;
        accept_task.abort();
    });
    Ok((CoreHandle { commands, quic_addr }, task))
}

/// Authenticates one edge, then relays its control messages and datagrams to the core task.
async fn serve_edge(
    edge: EdgeKey,
    conn: quinn::Connection,
    commands: mpsc::Sender<Command>,
    secret: &[u8],
    core_id: &str,
    slots: u8,
) {
    let remote = conn.remote_address();
    let refuse = |reason: Refusal| {
        let commands = commands.clone();
        async move {
            let _ = commands.send(Command::Refused { reason }).await;
        }
    };
    let Some(binding) = auth::session_binding(&conn) else { return };
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await else {
        debug!(%remote, "edge opened no control stream");
        return;
    };
    let mut reader = FrameReader::default();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut recv, &mut reader)).await {
        Ok(Ok(Some(Message::Hello { version, edge_id, signalling_url, capacity, proof, region, max_sessions }))) => {
            if version != PROTOCOL_VERSION {
                refuse(Refusal::BadVersion).await;
                let reason = format!("unsupported protocol version {version}; this core speaks {PROTOCOL_VERSION}");
                warn!(%remote, edge_id = ?edge_id, version, "edge refused: protocol version");
                reject(&conn, &mut send, reason).await;
                return;
            }
            if !auth::verify(secret, Side::Edge, &binding, &edge_id, &proof) {
                refuse(Refusal::BadAuth).await;
                warn!(%remote, edge_id = ?edge_id, "edge refused: bad cluster secret");
                reject(&conn, &mut send, "bad cluster secret".to_owned()).await;
                return;
            }
            let info = EdgeInfo { id: edge_id, signalling_url, region, capacity, max_sessions };
            if let Err(why) = check_edge_info(&info) {
                refuse(Refusal::MalformedControl).await;
                warn!(%remote, edge_id = ?info.id, why, "edge refused: hello");
                reject(&conn, &mut send, format!("hello refused: {why}")).await;
                return;
            }
            info
        }
        Ok(Ok(Some(_))) => {
            refuse(Refusal::UnexpectedMessage).await;
            reject(&conn, &mut send, "the first message must be hello".to_owned()).await;
            return;
        }
        Ok(Err(ReadError::Decode(e))) => {
            refuse(Refusal::MalformedControl).await;
            reject(&conn, &mut send, format!("malformed hello: {e}")).await;
            return;
        }
        _ => return,
    };
    let (control, mut control_rx) = mpsc::channel::<Message>(CONTROL_QUEUE);
    let edge_id = hello.id.clone();
    let (number_tx, number_rx) = oneshot::channel();
    let joined = Command::Joined { edge, conn: conn.clone(), control, hello, number: number_tx };
    if commands.send(joined).await.is_err() {
        return;
    }
    let Ok(Some(edge_number)) = number_rx.await else {
        warn!(%remote, edge_id = ?edge_id, "edge refused: no edge number left");
        reject(&conn, &mut send, "this core serves as many edges as it can".to_owned()).await;
        let _ = commands.send(Command::Left { edge }).await;
        return;
    };
    let welcome = Message::Welcome {
        core_id: core_id.to_owned(),
        slots,
        edge_number,
        proof: auth::proof(secret, Side::Core, &binding, core_id),
    };
    if send_message(&mut send, &welcome).await.is_err() {
        let _ = commands.send(Command::Left { edge }).await;
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = control_rx.recv().await {
            if send_message(&mut send, &m).await.is_err() {
                break;
            }
        }
    });
    info!(edge, %remote, edge_id = ?edge_id, edge_number, "edge authenticated");
    let mut control_budget = TokenBucket::new(CONTROL_PER_SEC, CONTROL_BURST, Instant::now());
    loop {
        tokio::select! {
            m = read_message(&mut recv, &mut reader) => match m {
                Ok(Some(message)) => {
                    if !control_budget.take(1, Instant::now()) {
                        refuse(Refusal::ControlFlood).await;
                        static FLOODS: node_kit::throttle::Throttle = node_kit::throttle::Throttle::new();
                        if let Some(suppressed) = FLOODS.allow(10) {
                            warn!(edge, suppressed, "edge floods its control stream; closing");
                        }
                        conn.close(4u32.into(), b"control flood");
                        break;
                    }
                    if commands.send(Command::Control { edge, message }).await.is_err() { break; }
                }
                Ok(None) => break,
                Err(ReadError::Decode(e)) if e.is_fatal() => {
                    refuse(Refusal::MalformedControl).await;
                    warn!(edge, error = %e, "control stream framing lost; closing");
                    conn.close(1u32.into(), b"malformed control frame");
                    break;
                }
                Err(ReadError::Decode(e)) => {
                    debug!(edge, error = %e, "malformed control message skipped");
                    if commands.send(Command::Malformed { edge }).await.is_err() { break; }
                }
                Err(ReadError::Stream(_)) => break,
            },
            d = conn.read_datagram() => match d {
                Ok(data) => {
                    // Media never waits: a full queue drops the datagram.
                    if commands.try_send(Command::Datagram { edge, data, at: Instant::now() }).is_err() {
                        refuse(Refusal::QueueFull).await;
                    }
                }
                Err(_) => break,
            },
        }
    }
    writer.abort();
    let _ = commands.send(Command::Left { edge }).await;
}

/// What an authenticated edge says of itself must be fit to hand to clients: a printable
/// id, an http(s) URL without whitespace (it goes into `Location` headers), a region name.
fn check_edge_info(info: &EdgeInfo) -> Result<(), &'static str> {
    let printable = |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic());
    if !crate::http::valid_edge_id(&info.id) {
        return Err("edge id must be 1-128 characters of A-Z a-z 0-9 - _ . :");
    }
    let url = &info.signalling_url;
    if !printable(url) || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("signalling URL must be an http(s) URL of 1-128 printable characters");
    }
    if !relay_proto::valid_channel_name(&info.region) {
        return Err("region must be 1-64 characters of A-Z a-z 0-9 - _ .");
    }
    Ok(())
}

async fn reject(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: String) {
    let _ = send_message(send, &Message::Reject { reason }).await;
    let _ = send.finish();
    // Give the reject a moment to leave before closing.
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(2u32.into(), b"rejected");
}

struct EdgeLink {
    conn: quinn::Connection,
    control: mpsc::Sender<Message>,
    /// Media and heartbeats to the edge, through a queue bounded by age.
    media: DatagramSender,
    heartbeat_seq: u16,
}

/// Sends one datagram on a link, counting what its queue dropped and noting a backlog.
fn send_media(
    core: &mut Core,
    backlog: &mut Backlog<EdgeKey>,
    edge: EdgeKey,
    link: &mut EdgeLink,
    now: Instant,
    data: Bytes,
) {
    let before = link.media.dropped();
    link.media.send(now, data);
    let dropped = link.media.dropped() - before;
    if dropped > 0 {
        core.count_send_drops(dropped);
        let total = core.counters().datagrams_dropped;
        if total.is_power_of_two() {
            debug!(edge, total, "datagrams to a slow edge dropped");
        }
    }
    backlog.note(edge, &mut link.media);
}

type PlacementWaiters = std::collections::HashMap<Arc<str>, Vec<(PlaceRequest, oneshot::Sender<PlaceOutcome>)>>;

/// Runs one lease-store operation off the core task; its answer comes back as a command.
fn run_lease_command(store: &Arc<LeaseStore>, command: LeaseCommand, to_core: &mpsc::Sender<Command>) {
    let (store, to_core) = (store.clone(), to_core.clone());
    tokio::spawn(async move {
        match command {
            LeaseCommand::Acquire { channel } => {
                let sent_at = Instant::now();
                let answer = match store.acquire(&channel).await {
                    Ok(Holder::Us { epoch }) => LeaseAnswer::Ours { epoch, sent_at },
                    Ok(Holder::Other { relay_addr, http_url }) => LeaseAnswer::Elsewhere { relay_addr, http_url },
                    Err(e) => {
                        debug!(channel = %channel, error = %e, "lease acquire failed");
                        LeaseAnswer::Unreachable
                    }
                };
                let _ = to_core.send(Command::LeaseAnswer { channel, answer }).await;
            }
            LeaseCommand::Renew { channels, sent_at } => {
                let result = match store.renew(&channels).await {
                    Ok(epochs) => Some(channels.into_iter().zip(epochs).collect()),
                    Err(e) => {
                        debug!(error = %e, "lease renewal failed");
                        None
                    }
                };
                let _ = to_core.send(Command::Renewed { sent_at, result }).await;
            }
            LeaseCommand::Release { channel } => {
                if let Err(e) = store.release(&channel).await {
                    debug!(channel = %channel, error = %e, "lease release failed; it expires");
                }
            }
        }
    });
}

async fn run_core(
    mut core: Core,
    mut commands: mpsc::Receiver<Command>,
    to_core: mpsc::Sender<Command>,
    store: Option<Arc<LeaseStore>>,
) {
    let mut links: std::collections::HashMap<EdgeKey, EdgeLink> = std::collections::HashMap::new();
    let mut placing: PlacementWaiters = Default::default();
    let mut waiting = 0usize;
    let mut heartbeat = tokio::time::interval(relay_proto::datagram::HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backlog: Backlog<EdgeKey> = Backlog::default();
    // When the datagram handled in this turn came off its link.
    let mut forwarding: Option<Instant> = None;
    loop {
        let deadline = tokio::time::Instant::from_std(core.poll_timeout());
        let flush_at = backlog.wake_at().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = heartbeat.tick() => {
                // From the core task itself: an edge hears them only while this task runs.
                let now = Instant::now();
                for (&edge, link) in links.iter_mut() {
                    link.heartbeat_seq = link.heartbeat_seq.wrapping_add(1);
                    let beat = relay_proto::datagram::heartbeat(link.heartbeat_seq);
                    send_media(&mut core, &mut backlog, edge, link, now, beat);
                }
            }
            _ = sleep_until_some(flush_at) => {
                backlog.flush(Instant::now(), &mut links, |l| &mut l.media, |_, n| core.count_send_drops(n));
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let now = Instant::now();
                match cmd {
                    Command::Joined { edge, conn, control, hello, number } => {
                        let n = core.edge_joined(edge, hello, now);
                        if n.is_some() {
                            let media = DatagramSender::new(conn.clone());
                            links.insert(edge, EdgeLink { conn, control, media, heartbeat_seq: 0 });
                        }
                        let _ = number.send(n);
                    }
                    Command::Left { edge } => {
                        links.remove(&edge);
                        core.edge_left(edge, now);
                    }
                    Command::Control { edge, message } => core.contain(edge, now, |c| c.handle_control(edge, message, now)),
                    Command::Datagram { edge, data, at } => {
                        if now.saturating_duration_since(at) > MEDIA_AGE_BUDGET {
                            core.refuse(Refusal::Stale);
                        } else {
                            core.contain(edge, now, |c| c.handle_datagram(edge, data, now));
                            forwarding = Some(at);
                        }
                    }
                    Command::Refused { reason } => core.refuse(reason),
                    Command::Malformed { edge } => core.misbehaved(edge, Refusal::MalformedControl, now),
                    Command::Channels { reply } => { let _ = reply.send(core.channels()); }
                    Command::Channel { name, reply } => { let _ = reply.send(core.channel_detail(&name)); }
                    Command::Links { reply } => {
                        let health = core
                            .links()
                            .into_iter()
                            .map(|v| {
                                let link = links.get(&v.edge);
                                let quic = link.map(|l| l.conn.stats());
                                LinkHealth {
                                    peer: v.edge_id,
                                    up: link.is_some(),
                                    stalled: false,
                                    rtt: link.map(|l| l.conn.rtt()),
                                    quic_packets_sent: quic.as_ref().map_or(0, |q| q.path.sent_packets),
                                    quic_packets_lost: quic.as_ref().map_or(0, |q| q.path.lost_packets),
                                    received: v.uplink,
                                    sent: link.map(|l| l.media.stats()).unwrap_or_default(),
                                    queue_age: link.map_or(Duration::ZERO, |l| l.media.queue_age(now)),
                                    queue_len: link.map_or(0, |l| l.media.queue_len()),
                                    peer_reported_loss_permille: v.downlink_loss_permille,
                                    repair_on: v.repair_on,
                                    repair_activations: v.repair_activations,
                                    repair_copies_sent: v.copies_sent,
                                    reconnects: 0,
                                }
                            })
                            .collect();
                        let _ = reply.send(health);
                    }
                    Command::Stats { reply } => { let _ = reply.send((core.counters().clone(), core.edge_count())); }
                    Command::Edges { reply } => { let _ = reply.send(core.edges()); }
                    Command::Place { request, reply } => match core.place(&request, now) {
                        Ok(placed) => { let _ = reply.send(PlaceOutcome::Edge(placed)); }
                        Err(PlaceError::Pending) if waiting < MAX_PLACEMENTS_WAITING => {
                            waiting += 1;
                            placing.entry(request.channel.as_str().into()).or_default().push((request, reply));
                        }
                        Err(PlaceError::Pending) => { let _ = reply.send(PlaceOutcome::Failed(PlaceError::Unavailable)); }
                        Err(e) => { let _ = reply.send(PlaceOutcome::Failed(e)); }
                    },
                    Command::Kick { channel, participant, reply } => { let _ = reply.send(core.kick(&channel, &participant)); }
                    Command::LeaseAnswer { channel, answer } => {
                        let elsewhere = match &answer {
                            LeaseAnswer::Elsewhere { relay_addr, http_url } => Some((relay_addr.clone(), http_url.clone())),
                            _ => None,
                        };
                        let unreachable = answer == LeaseAnswer::Unreachable;
                        core.lease_answer(&channel, answer, now);
                        for (request, reply) in placing.remove(&channel).unwrap_or_default() {
                            waiting -= 1;
                            let outcome = match &elsewhere {
                                // A previous run of this core holds it until it expires.
                                Some((relay, _)) if core.is_own_relay_addr(relay) => PlaceOutcome::Failed(PlaceError::Unavailable),
                                Some((_, url)) => PlaceOutcome::OtherCore(url.clone()),
                                None if unreachable => PlaceOutcome::Failed(PlaceError::StoreUnreachable),
                                None => match core.place(&request, now) {
                                    Ok(placed) => PlaceOutcome::Edge(placed),
                                    Err(PlaceError::Pending) => PlaceOutcome::Failed(PlaceError::Unavailable),
                                    Err(e) => PlaceOutcome::Failed(e),
                                },
                            };
                            let _ = reply.send(outcome);
                        }
                    }
                    Command::Renewed { sent_at, result } => core.leases_renewed(sent_at, result, now),
                    Command::HandOver { reply } => {
                        core.hand_over();
                        let mut releases = Vec::new();
                        let mut rest = std::collections::VecDeque::new();
                        while let Some(out) = core.poll_output() {
                            match (out, &store) {
                                (CoreOutput::Lease(LeaseCommand::Release { channel }), Some(store)) => {
                                    let store = store.clone();
                                    releases.push(async move { store.release(&channel).await });
                                }
                                (other, _) => rest.push_back(other),
                            }
                        }
                        core.requeue(rest);
                        let released = futures_util::future::join_all(releases).await;
                        let failed = released.iter().filter(|r| r.is_err()).count();
                        info!(released = released.len() - failed, failed, "leases released");
                        let _ = reply.send(());
                    }
                    Command::Drain { edge_id, deadline, reply } => { let _ = reply.send(core.set_draining(&edge_id, deadline)); }
                }
            }
            _ = tokio::time::sleep_until(deadline) => core.handle_timeout(Instant::now()),
        }
        let mut forwarded = false;
        while let Some(out) = core.poll_output() {
            match out {
                CoreOutput::Datagram { edge, data } => {
                    if let Some(link) = links.get_mut(&edge) {
                        send_media(&mut core, &mut backlog, edge, link, Instant::now(), data);
                        forwarded = true;
                    }
                }
                CoreOutput::Control { edge, message } => {
                    if let Some(link) = links.get(&edge) {
                        if link.control.try_send(message).is_err() {
                            warn!(edge, "edge does not read its control stream; closing");
                            link.conn.close(3u32.into(), b"control stream backlog");
                        }
                    }
                }
                CoreOutput::Close { edge, reason } => {
                    if let Some(link) = links.remove(&edge) {
                        link.conn.close(0u32.into(), reason.as_bytes());
                    }
                }
                CoreOutput::Lease(command) => match &store {
                    Some(store) => run_lease_command(store, command, &to_core),
                    None => error!(?command, "lease command without a lease store"),
                },
            }
        }
        if let (true, Some(at)) = (forwarded, forwarding.take()) {
            core.observe_forwarding(at.elapsed());
        }
    }
}
