//! Listeners' receiving, batched. After its handshake a listener's socket and measuring
//! state ([`Listening`]) move to a receive thread, which reads each of its sockets in turn
//! every [`SWEEP_EVERY`] with `recvmmsg`, and times each datagram by the kernel's arrival
//! stamp (`SO_TIMESTAMPNS`). No socket is in an epoll set: on loopback the sender's CPU
//! pays for waking whoever watches the receiving socket, once per datagram, so watching
//! would charge the SFU under test for the generator's wake-ups. The listener's task waits
//! for its stop, then takes its state and report back.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use media::srtp::SrtpSession;
use nix::sys::socket::{recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage};
use nix::sys::time::TimeSpec;
use tokio::sync::oneshot;

use crate::client::{ClientReport, Heard, Listening, Shared};

/// Datagrams read per `recvmmsg`; a listener gets six every 40 ms.
const BATCH: usize = 8;
/// How often a receive thread reads each of its sockets. Arrival times come from the
/// kernel, so the sweep's pace does not show in the latency; a longer sweep reads more
/// datagrams per call.
const SWEEP_EVERY: Duration = Duration::from_millis(40);
/// How often a receive thread looks for due consent checks and live counts.
const TICK: Duration = Duration::from_millis(50);

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
    let mut entries: HashMap<u64, Entry> = HashMap::new();
    let mut buffers = [[0u8; 2048]; BATCH];
    let mut reader = Reader::new();
    let mut ended = Vec::new();
    let mut next_tick = Instant::now();
    let mut open = true;
    while open || !entries.is_empty() {
        let sweep_started = Instant::now();
        loop {
            match commands.try_recv() {
                Ok(Command::Add { id, listener, shared, done }) => {
                    match setsockopt(listener.socket.as_raw_fd(), sockopt::ReceiveTimestampns, &true) {
                        Ok(()) => {
                            entries.insert(id, Entry { listener, shared, done });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "receive thread: no arrival stamps on a listener's socket");
                            // Given back at once: its task sees it end.
                            let _ = done.send(listener);
                        }
                    }
                }
                Ok(Command::Stop(id)) => end(&mut entries, id),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        for (&id, e) in entries.iter_mut() {
            if reader.drain(e, &mut buffers) == Heard::Ended {
                ended.push(id);
            }
        }
        for id in ended.drain(..) {
            end(&mut entries, id);
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
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
        // Behind (more sockets than one sweep's time reads): at once.
        if let Some(rest) = (sweep_started + SWEEP_EVERY).checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
    }
}

/// `recvmmsg`'s headers, with room for each datagram's arrival stamp.
struct Reader {
    headers: MultiHeaders<SockaddrStorage>,
}

impl Reader {
    fn new() -> Reader {
        Reader { headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec))) }
    }

    /// Reads all that one socket holds, a batch per call.
    fn drain(&mut self, e: &mut Entry, buffers: &mut [[u8; 2048]; BATCH]) -> Heard {
        loop {
            let mut received = [(0usize, None::<TimeSpec>); BATCH];
            let mut count = 0;
            let mut unstamped = false;
            {
                let slices = buffers.each_mut().map(|b| [std::io::IoSliceMut::new(&mut b[..])]);
                let fd = e.listener.socket.as_raw_fd();
                let Ok(results) = recvmmsg(fd, &mut self.headers, slices.iter(), MsgFlags::MSG_DONTWAIT, None) else {
                    return Heard::Counted;
                };
                for (slot, r) in received.iter_mut().zip(results) {
                    let stamp = r.cmsgs().find_map(|c| match c {
                        ControlMessageOwned::ScmTimestampns(t) => Some(t),
                        _ => None,
                    });
                    unstamped |= stamp.is_none();
                    *slot = (r.bytes, stamp);
                    count += 1;
                }
            }
            if unstamped {
                // The kernel shrinks a header's control length to what it wrote, and
                // `recvmmsg` reuses headers as they are: a datagram without a stamp
                // would leave no room for the next one's.
                *self = Reader::new();
            }
            let (now, wall) = (Instant::now(), SystemTime::now());
            let l = &mut *e.listener;
            for (buffer, &(length, stamp)) in buffers.iter().zip(&received).take(count) {
                let arrived = stamp.map_or(now, |t| arrival(t, now, wall));
                let socket = &l.socket;
                let send = |reply: &[u8]| {
                    let _ = socket.send(reply);
                };
                let heard =
                    l.listening.on_datagram(&buffer[..length], arrived, &mut l.srtp, &e.shared, &mut l.report, send);
                if heard == Heard::Ended {
                    return Heard::Ended;
                }
            }
            if count < BATCH {
                return Heard::Counted;
            }
        }
    }
}

/// A kernel arrival stamp (wall clock) as an `Instant`, by its distance from `wall`,
/// read at `now`.
fn arrival(stamp: TimeSpec, now: Instant, wall: SystemTime) -> Instant {
    let stamp = Duration::new(stamp.tv_sec().max(0) as u64, stamp.tv_nsec().clamp(0, 999_999_999) as u32);
    let wall = wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    now.checked_sub(wall.saturating_sub(stamp)).unwrap_or(now)
}

/// Takes a listener out and gives it back to its task.
fn end(entries: &mut HashMap<u64, Entry>, id: u64) {
    if let Some(e) = entries.remove(&id) {
        let _ = e.done.send(e.listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_is_as_far_before_now_as_the_stamp_before_the_wall_clock() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let since_epoch = wall.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let earlier = since_epoch - Duration::from_millis(7);
        let stamp = TimeSpec::new(earlier.as_secs() as _, earlier.subsec_nanos() as _);
        assert_eq!(now - arrival(stamp, now, wall), Duration::from_millis(7));
        // A stamp after the wall clock was read (it arrived meanwhile) is now.
        let later = since_epoch + Duration::from_millis(3);
        assert_eq!(arrival(TimeSpec::new(later.as_secs() as _, later.subsec_nanos() as _), now, wall), now);
    }
}
