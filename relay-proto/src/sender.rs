//! Sending media datagrams on one link without building a backlog: our own age-bounded
//! queue in front of quinn's datagram buffer, handing quinn more only while it keeps up.
//!
//! quinn sends datagrams first in, first out, as its congestion controller allows, and
//! its buffer has no notion of age: sized in bytes, it holds seconds of audio behind a
//! slow link. So the link keeps what quinn has not sent yet in view (quinn's free buffer
//! space tells how many of the bytes handed over are still there) and stops handing over
//! once the oldest of them has waited `QUINN_MAX_WAIT`; meanwhile datagrams wait here,
//! where anything older than `MEDIA_AGE_BUDGET` is dropped and counted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::queue::{AgedQueue, MEDIA_AGE_BUDGET};

/// How long the oldest datagram inside quinn may have waited before we stop handing it
/// more (quinn then holds at most what arrived in this time).
pub const QUINN_MAX_WAIT: Duration = Duration::from_millis(10);
/// Our queue's byte cap per link (far above what 60 ms of a busy link needs).
pub const QUEUE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// quinn's bookkeeping per queued datagram.
const QUINN_OVERHEAD: usize = std::mem::size_of::<Bytes>();
/// How long after its original a repair copy is sent: never in the same QUIC packet
/// (quinn packs datagrams queued together into one, which a loss takes whole), and
/// apart in time, so a loss burst shorter than this spares one of the two.
pub const REPAIR_SPACING: Duration = Duration::from_millis(5);
/// Repair copies waiting for their time, at most (older ones are dropped).
const MAX_WAITING_COPIES: usize = 4096;
/// How soon a link with datagrams waiting in its queue is offered to quinn again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(5);

/// Counters of one link's sending side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    pub sent: u64,
    pub dropped_stale: u64,
    pub dropped_full: u64,
    /// quinn refused it (too large for the path, or the link is closing).
    pub refused: u64,
    /// The longest a datagram waited in our queue before quinn took it.
    pub max_wait: Duration,
}

/// The sending side of one link's media.
#[derive(Debug)]
pub struct DatagramSender {
    conn: quinn::Connection,
    queue: AgedQueue,
    /// Free buffer space quinn reports with nothing queued.
    empty_space: usize,
    /// What we handed quinn and it may not have sent yet: (when, bytes it takes there).
    handed: VecDeque<(Instant, usize)>,
    handed_bytes: usize,
    /// Repair copies and when they are due.
    copies: VecDeque<(Instant, Bytes)>,
    sent: u64,
    refused: u64,
    max_wait: Duration,
    last_flush: Instant,
    /// On its shell's `Backlog` list.
    listed: bool,
}

impl DatagramSender {
    /// A sender for a connection on which nothing has been sent yet.
    pub fn new(conn: quinn::Connection) -> Self {
        let empty_space = conn.datagram_send_buffer_space();
        DatagramSender {
            conn,
            queue: AgedQueue::new(MEDIA_AGE_BUDGET, QUEUE_MAX_BYTES),
            empty_space,
            handed: VecDeque::new(),
            handed_bytes: 0,
            copies: VecDeque::new(),
            sent: 0,
            refused: 0,
            max_wait: Duration::ZERO,
            last_flush: Instant::now(),
            listed: false,
        }
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Queues `data` and sends what quinn can take now; a repair copy (marked as one)
    /// waits `REPAIR_SPACING` first.
    pub fn send(&mut self, now: Instant, data: Bytes) {
        if crate::datagram::is_copy(&data) {
            return self.send_copy(now, data);
        }
        self.queue.push(now, data);
        self.flush(now);
    }

    /// Queues a repair copy to go `REPAIR_SPACING` after now.
    fn send_copy(&mut self, now: Instant, copy: Bytes) {
        if self.copies.len() >= MAX_WAITING_COPIES {
            self.copies.pop_front();
            self.refused += 1;
        }
        self.copies.push_back((now + REPAIR_SPACING, copy));
    }

    /// Hands quinn what it can take; call again later while `backlog()` is true.
    pub fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        while self.copies.front().is_some_and(|(due, _)| *due <= now) {
            let (due, copy) = self.copies.pop_front().expect("front exists");
            self.queue.push(due, copy);
        }
        let held = self.empty_space.saturating_sub(self.conn.datagram_send_buffer_space());
        // quinn sends in order: of what we handed it, only the newest `held` bytes remain.
        while self.handed_bytes > held {
            let Some((_, n)) = self.handed.pop_front() else { break };
            self.handed_bytes -= n;
        }
        loop {
            if self.handed.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > QUINN_MAX_WAIT) {
                // quinn is not keeping up (congestion): what comes next waits here.
                self.queue.expire(now);
                return;
            }
            let Some((data, waited)) = self.queue.pop(now) else { return };
            let n = data.len() + QUINN_OVERHEAD;
            match self.conn.send_datagram(data) {
                Ok(()) => {
                    self.sent += 1;
                    self.max_wait = self.max_wait.max(waited);
                    self.handed.push_back((now, n));
                    self.handed_bytes += n;
                }
                Err(_) => self.refused += 1,
            }
        }
    }

    /// Everything dropped so far, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped_stale + self.queue.dropped_full + self.refused
    }

    /// Datagrams wait in our queue, or copies for their time (flush again soon).
    pub fn backlog(&self) -> bool {
        !self.queue.is_empty() || !self.copies.is_empty()
    }

    /// When this link should be flushed again, if anything waits.
    pub fn wake_at(&self) -> Option<Instant> {
        let retry = (!self.queue.is_empty()).then(|| self.last_flush + RETRY_INTERVAL);
        let copy = self.copies.front().map(|(due, _)| *due);
        match (retry, copy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long the oldest datagram in our queue has waited.
    pub fn queue_age(&self, now: Instant) -> Duration {
        self.queue.oldest_age(now)
    }

    /// Datagrams waiting in our queue, repair copies included.
    pub fn queue_len(&self) -> usize {
        self.queue.len() + self.copies.len()
    }

    pub fn stats(&self) -> SendStats {
        SendStats {
            sent: self.sent,
            dropped_stale: self.queue.dropped_stale,
            dropped_full: self.queue.dropped_full,
            refused: self.refused,
            max_wait: self.max_wait,
        }
    }
}

/// The links of a shell whose senders need flushing later, and when the first is due.
#[derive(Debug)]
pub struct Backlog<K> {
    keys: Vec<K>,
    wake: Option<Instant>,
}

impl<K> Default for Backlog<K> {
    fn default() -> Self {
        Backlog { keys: Vec::new(), wake: None }
    }
}

impl<K: Copy + Eq + std::hash::Hash> Backlog<K> {
    /// Call after sending on `sender`: lists it if something waits.
    pub fn note(&mut self, key: K, sender: &mut DatagramSender) {
        let Some(w) = sender.wake_at() else { return };
        self.wake = Some(self.wake.map_or(w, |x| x.min(w)));
        if !sender.listed {
            sender.listed = true;
            self.keys.push(key);
        }
    }

    /// When to call `flush` next.
    pub fn wake_at(&self) -> Option<Instant> {
        self.wake
    }

    /// Flushes every listed link still in `links`; `on_drops` hears what each dropped.
    pub fn flush<L>(
        &mut self,
        now: Instant,
        links: &mut std::collections::HashMap<K, L>,
        media: impl Fn(&mut L) -> &mut DatagramSender,
        mut on_drops: impl FnMut(K, u64),
    ) {
        let mut wake: Option<Instant> = None;
        self.keys.retain(|k| {
            let Some(sender) = links.get_mut(k).map(&media) else { return false };
            let before = sender.dropped();
            sender.flush(now);
            on_drops(*k, sender.dropped() - before);
            match sender.wake_at() {
                Some(w) => {
                    wake = Some(wake.map_or(w, |x| x.min(w)));
                    true
                }
                None => {
                    sender.listed = false;
                    false
                }
            }
        });
        self.wake = wake;
    }
}

/// Sleeps until `at`, or forever without one (a `select!` branch for `Backlog::wake_at`).
pub async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tests::forwarder;
    use crate::endpoint::{client, server, ResetKey, TlsIdentity, Trust, DATAGRAM_SEND_BUFFER};

    #[tokio::test]
    async fn a_link_that_stops_carrying_builds_no_backlog_and_resumes_with_fresh_audio() {
        let core = server(
            "127.0.0.1:0".parse().unwrap(),
            TlsIdentity::self_signed(vec!["core".into()]).unwrap(),
            ResetKey::from_cluster_secret(b"a cluster secret of at least 32 bytes"),
        )
        .unwrap();
        let core_addr = core.local_addr().unwrap();
        let (path, rx) = tokio::sync::watch::channel(Some(core_addr));
        let front = forwarder(rx).await;
        let accept = tokio::spawn(async move {
            let conn = core.accept().await.unwrap().await.unwrap();
            (core, conn)
        });
        let edge = client("127.0.0.1:0".parse().unwrap(), Trust::ClusterSecretOnly).unwrap();
        // A congestion controller that holds media back once the path fails (ours has a
        // floor and keeps sending): what waits must wait here, bounded by age.
        let config = crate::endpoint::client_config(Trust::ClusterSecretOnly, false).unwrap();
        let conn = edge.connect_with(config, front, "core").unwrap().await.unwrap();
        let (_core, receiver) = accept.await.unwrap();
        let mut sender = DatagramSender::new(conn.clone());
        let numbered = |n: u32| Bytes::from([n.to_be_bytes().as_slice(), &[0u8; 96]].concat());
        let number = |d: &Bytes| u32::from_be_bytes(d[..4].try_into().unwrap());

        // 20 ms audio of 3 speakers: 150 datagrams a second, first on a working path.
        let mut n = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..25 {
            tick.tick().await;
            for _ in 0..3 {
                sender.send(Instant::now(), numbered(n));
                n += 1;
            }
        }
        let mut last_heard = 0;
        while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), receiver.read_datagram()).await {
            last_heard = number(&d);
        }
        assert_eq!(last_heard, n - 1, "all arrived on the working path");
        assert_eq!(sender.stats().dropped_stale, 0);

        // The path carries nothing for 2 s: what waits is dropped by age, quinn holds
        // only what it was given while it still seemed to keep up.
        path.send(None).unwrap();
        for _ in 0..100 {
            tick.tick().await;
            for _ in 0..3 {
                sender.send(Instant::now(), numbered(n));
                n += 1;
            }
            sender.flush(Instant::now());
        }
        let stats = sender.stats();
        assert!(stats.dropped_stale > 100, "{stats:?}");
        assert!(sender.queue_age(Instant::now()) <= crate::queue::MEDIA_AGE_BUDGET);
        let in_quinn = DATAGRAM_SEND_BUFFER - conn.datagram_send_buffer_space();
        assert!(in_quinn < 16 * 1024, "quinn holds {in_quinn} bytes: a backlog");

        // The path is back: what arrives is what was said just now, not seconds ago.
        path.send(Some(core_addr)).unwrap();
        let resumed_at = n;
        for _ in 0..50 {
            tick.tick().await;
            for _ in 0..3 {
                sender.send(Instant::now(), numbered(n));
                n += 1;
            }
            sender.flush(Instant::now());
        }
        let mut heard_after = Vec::new();
        while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(300), receiver.read_datagram()).await {
            heard_after.push(number(&d));
        }
        let stale: Vec<_> = heard_after.iter().filter(|&&k| k < resumed_at.saturating_sub(60)).collect();
        assert!(stale.len() < 40, "old audio delivered after the outage: {} of {}", stale.len(), heard_after.len());
        assert!(heard_after.iter().any(|&k| k == n - 1), "the newest arrived");
    }
}
