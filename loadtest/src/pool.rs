//! Listeners' receiving, batched. After its handshake a listener's socket and measuring
//! state ([`Listening`]) move to a receive thread, which waits on all of its sockets
//! with one epoll and reads each ready socket with one `recvmmsg`: no task, wake-up and
//! pair of `recv` calls (the second one empty) per datagram. The listener's task waits
//! for its stop, then takes its state and report back.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use media::srtp::SrtpSession;
use nix::sys::epoll::{epoll_create1, epoll_ctl, epoll_wait, EpollCreateFlags, EpollEvent, EpollFlags, EpollOp};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::sync::oneshot;

use crate::client::{ClientReport, Heard, Listening, Shared};

/// Datagrams read per `recvmmsg`; a listener gets a few per 20 ms.
const BATCH: usize = 8;
/// A receive thread looks for datagrams this often, rather than sleeping in `epoll_wait`
/// until one arrives: each look then finds many sockets ready, and the generator's CPU
/// per datagram fell by about a quarter against waking per datagram. Latency is
/// overstated by up to this much.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// What moves to a receive thread and back.
pub(crate) struct PooledListener {
    pub socket: UdpSocket,
    pub srtp: SrtpSession,
    pub listening: Listening,
    pub report: ClientReport,
}

enum Command {
    Add { id: u64, listener: Box<PooledListener>, shared: Arc<Shared>, done: oneshot::Sender<Box<PooledListener>> },
    Stop(u64),
}

/// Receive threads for a run's listeners; each listener goes to the next in turn.
pub struct ReceivePool {
    threads: Vec<mpsc::Sender<Command>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

/// A listener in a receive thread: stop it to have its state back.
pub(crate) struct Receiving {
    id: u64,
    thread: usize,
    done: oneshot::Receiver<Box<PooledListener>>,
}

impl ReceivePool {
    pub fn new(threads: usize) -> std::io::Result<ReceivePool> {
        let threads = (0..threads.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                std::thread::Builder::new().name(format!("receive-{i}")).spawn(move || receive(rx))?;
                Ok(tx)
            })
            .collect::<std::io::Result<_>>()?;
        Ok(ReceivePool { threads, next: AtomicUsize::new(0), ids: AtomicU64::new(0) })
    }

    /// Hands `listener` to a receive thread until [`ReceivePool::stop`] or until the edge
    /// ends the session.
    pub(crate) fn add(&self, listener: PooledListener, shared: Arc<Shared>) -> anyhow::Result<Receiving> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let thread = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        let (done_tx, done) = oneshot::channel();
        let command = Command::Add { id, listener: Box::new(listener), shared, done: done_tx };
        self.send(thread, command)?;
        Ok(Receiving { id, thread, done })
    }

    /// Waits until `stop` fires (then stops the listener) or the edge ends the session;
    /// gives the listener back.
    pub(crate) async fn until(
        &self,
        mut r: Receiving,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Box<PooledListener>> {
        tokio::select! {
            back = &mut r.done => return Ok(back?),
            _ = stop.changed() => {}
        }
        self.send(r.thread, Command::Stop(r.id))?;
        Ok(r.done.await?)
    }

    fn send(&self, thread: usize, command: Command) -> anyhow::Result<()> {
        self.threads[thread].send(command).map_err(|_| anyhow::anyhow!("receive thread {thread} has stopped"))
    }
}

struct Entry {
    listener: Box<PooledListener>,
    shared: Arc<Shared>,
    done: oneshot::Sender<Box<PooledListener>>,
}

/// One receive thread: until every sender is gone and no listener is left.
fn receive(commands: mpsc::Receiver<Command>) {
    let epoll = match epoll_create1(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "receive thread: no epoll");
            return;
        }
    };
    let mut entries: HashMap<u64, Entry> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buffers = [[0u8; 2048]; BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut next_time = Instant::now();
    let mut open = true;
    while open || !entries.is_empty() {
        loop {
            match commands.try_recv() {
                Ok(Command::Add { id, listener, shared, done }) => {
                    let fd = listener.socket.as_raw_fd();
                    let mut event = EpollEvent::new(EpollFlags::EPOLLIN, id);
                    if epoll_ctl(epoll, EpollOp::EpollCtlAdd, fd, &mut event).is_ok() {
                        entries.insert(id, Entry { listener, shared, done });
                    } else {
                        // Given back at once: its task sees it end.
                        let _ = done.send(listener);
                    }
                }
                Ok(Command::Stop(id)) => end(epoll, &mut entries, id),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let ready = epoll_wait(epoll, &mut events, 0).unwrap_or(0);
        let now = Instant::now();
        for event in &events[..ready] {
            let id = event.data();
            let Some(e) = entries.get_mut(&id) else { continue };
            if read(e, &mut buffers, &mut headers, now) == Heard::Ended {
                end(epoll, &mut entries, id);
            }
        }
        if ready < events.len() {
            std::thread::sleep(POLL_EVERY);
        }
        if now >= next_time {
            next_time = now + Duration::from_millis(50);
            for e in entries.values_mut() {
                let l = &mut *e.listener;
                if now < l.listening.deadline() {
                    continue;
                }
                if let Ok(Some(consent)) = l.listening.on_time(now, &e.shared, &mut l.report) {
                    let _ = l.socket.send(&consent);
                }
            }
        }
    }
    let _ = nix::unistd::close(epoll);
}

/// Reads what one ready socket holds, a batch per call (level-triggered: what is left
/// is reported again).
fn read(
    e: &mut Entry,
    buffers: &mut [[u8; 2048]; BATCH],
    headers: &mut MultiHeaders<SockaddrStorage>,
    now: Instant,
) -> Heard {
    let fd: RawFd = e.listener.socket.as_raw_fd();
    let mut lengths = [0usize; BATCH];
    let count = {
        let slices = buffers.each_mut().map(|b| [std::io::IoSliceMut::new(&mut b[..])]);
        match recvmmsg(fd, headers, slices.iter(), MsgFlags::MSG_DONTWAIT, None) {
            Ok(results) => {
                let mut n = 0;
                for (length, r) in lengths.iter_mut().zip(results) {
                    *length = r.bytes;
                    n += 1;
                }
                n
            }
            Err(_) => 0,
        }
    };
    let l = &mut *e.listener;
    for (buffer, &length) in buffers.iter().zip(&lengths).take(count) {
        let socket = &l.socket;
        let send = |reply: &[u8]| {
            let _ = socket.send(reply);
        };
        let heard = l.listening.on_datagram(&buffer[..length], now, &mut l.srtp, &e.shared, &mut l.report, send);
        if heard == Heard::Ended {
            return Heard::Ended;
        }
    }
    Heard::Counted
}

/// Takes a listener out and gives it back to its task.
fn end(epoll: RawFd, entries: &mut HashMap<u64, Entry>, id: u64) {
    if let Some(e) = entries.remove(&id) {
        let _ = epoll_ctl(epoll, EpollOp::EpollCtlDel, e.listener.socket.as_raw_fd(), None);
        let _ = e.done.send(e.listener);
    }
}
