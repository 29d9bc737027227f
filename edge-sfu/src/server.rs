//! The async shell: one task owns the UDP socket and the [`Edge`] core; DTLS handshakes
//! run as tasks; signalling talks to the core through a bounded command channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use media::dtls::{self, DatagramSink, DtlsIdentity, DTLS_QUEUE};
use media::srtp::SrtpKeys;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::edge::{AdmitError, ChannelView, Counters, Drop, Edge, EdgeConfig, NewSession, Output, SessionId};

const COMMAND_QUEUE: usize = 4096;
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
        reason: &'static str,
    },
    ChannelView {
        name: String,
        reply: oneshot::Sender<Option<ChannelView>>,
    },
    Stats {
        reply: oneshot::Sender<(Counters, usize)>,
    },
}

/// A cheap, cloneable handle to a running edge.
#[derive(Clone)]
pub struct EdgeHandle {
    commands: mpsc::Sender<Command>,
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
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, HandleError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| HandleError::Gone)?;
        rx.await.map_err(|_| HandleError::Gone)
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        self.identity.fingerprint()
    }

    pub async fn add_session(
        &self,
        new: NewSession,
        resource: String,
        peer_fingerprint: [u8; 32],
    ) -> Result<Result<SessionId, AdmitError>, HandleError> {
        self.ask(|reply| Command::AddSession { new, resource, peer_fingerprint, reply }).await
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
}

struct DtlsTask {
    input: mpsc::Sender<Bytes>,
    task: JoinHandle<()>,
}

struct Shell {
    edge: Edge,
    socket: UdpSocket,
    identity: DtlsIdentity,
    handshake_timeout: Duration,
    commands: mpsc::Sender<Command>,
    dtls: HashMap<SessionId, DtlsTask>,
    resources: HashMap<String, SessionId>,
    resource_of: HashMap<SessionId, String>,
    send_errors: u64,
    last_send_warning: Option<Instant>,
}

/// Binds the UDP socket and starts the edge task.
pub async fn start(
    config: EdgeConfig,
    udp: SocketAddr,
    candidate_for: impl Fn(SocketAddr) -> SocketAddr,
    identity: DtlsIdentity,
    handshake_timeout: Duration,
) -> std::io::Result<(EdgeHandle, JoinHandle<()>)> {
    let socket = UdpSocket::bind(udp).await?;
    let udp_addr = socket.local_addr()?;
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let now = Instant::now();
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let handle = EdgeHandle {
        commands: commands.clone(),
        identity: identity.clone(),
        udp_addr,
        candidate: candidate_for(udp_addr),
        config: Arc::new(config.clone()),
    };
    let shell = Shell {
        edge: Edge::new(config, now, unix),
        socket,
        identity,
        handshake_timeout,
        commands,
        dtls: HashMap::new(),
        resources: HashMap::new(),
        resource_of: HashMap::new(),
        send_errors: 0,
        last_send_warning: None,
    };
    Ok((handle, tokio::spawn(shell.run(rx))))
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = tokio::time::Instant::from_std(self.edge.poll_timeout());
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                r = self.socket.recv_from(&mut buf) => {
                    let now = Instant::now();
                    if let Ok((n, from)) = r {
                        self.edge.handle_datagram(now, from, &buf[..n]);
                    }
                    for _ in 1..RECV_BATCH {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.edge.handle_datagram(now, from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.edge.handle_timeout(Instant::now()),
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
                let result = self.edge.add_session(new, now);
                if let Ok(id) = result {
                    self.resources.insert(resource.clone(), id);
                    self.resource_of.insert(id, resource);
                    self.spawn_dtls(id, peer_fingerprint);
                }
                let _ = reply.send(result);
            }
            Command::RemoveSession { resource, reply } => {
                let found = self.resources.get(&resource).copied();
                if let Some(id) = found {
                    self.edge.remove_session(id, "deleted");
                }
                let _ = reply.send(found.is_some());
            }
            Command::DtlsSend { id, data } => self.edge.send_dtls(id, data),
            Command::DtlsDone { id, keys } => self.edge.dtls_established(id, &keys, now),
            Command::DtlsEnded { id, reason } => self.edge.remove_session(id, reason),
            Command::ChannelView { name, reply } => {
                let _ = reply.send(self.edge.channel_view(&name));
            }
            Command::Stats { reply } => {
                let _ = reply.send((self.edge.counters().clone(), self.edge.session_count()));
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
        let placeholder = SocketAddr::from(([0, 0, 0, 0], 0));
        let task = tokio::spawn(async move {
            match dtls::handshake(&identity, false, rx, sink, placeholder, peer_fingerprint, timeout).await {
                Ok(established) => {
                    let _ = commands.send(Command::DtlsDone { id, keys: established.keys }).await;
                    // Keep the connection to answer retransmitted flights; a close_notify ends it.
                    let mut buf = vec![0u8; 1500];
                    while established.conn.read(&mut buf, None).await.is_ok() {}
                    let _ = commands.send(Command::DtlsEnded { id, reason: "dtls_closed" }).await;
                }
                Err(e) => {
                    debug!(session = id, error = %e, "dtls failed");
                    let _ = commands.send(Command::DtlsEnded { id, reason: "dtls_failed" }).await;
                }
            }
        });
        self.dtls.insert(id, DtlsTask { input, task });
    }

    fn flush(&mut self) {
        while let Some(out) = self.edge.poll_output() {
            match out {
                Output::Transmit { to, data } => {
                    if let Err(e) = self.socket.try_send_to(&data, to) {
                        self.send_errors += 1;
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
                            self.edge.count_drop(Drop::DtlsQueueFull);
                        }
                    }
                }
                Output::Closed { session, .. } => {
                    if let Some(t) = self.dtls.remove(&session) {
                        t.task.abort();
                    }
                    if let Some(resource) = self.resource_of.remove(&session) {
                        self.resources.remove(&resource);
                    }
                }
            }
        }
    }
}
