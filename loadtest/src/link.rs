//! A link emulator in user space (this kernel has no `netem`): a UDP relay between a
//! client and a server (an edge and its core, or a client and an edge) that loses,
//! delays, jitters, reorders, duplicates and rate-limits datagrams, per direction, from
//! a seeded generator, with settings that can change while it runs.
//!
//! [`LinkModel`] is the sans-IO impairment of one direction (datagrams in with an
//! `Instant`, datagrams out when due); [`LinkEmulator`] is the tokio relay around two.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// How one direction of a link treats datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkParams {
    /// Chance each datagram is lost (0..1), outside loss bursts.
    pub loss: f64,
    /// Chance a datagram starts a loss burst (Gilbert-Elliott: in a burst all are lost).
    pub burst_start: f64,
    /// Mean burst length in datagrams (at least 1).
    pub burst_len: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each datagram's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// Whether jitter may reorder datagrams; otherwise each leaves no earlier than the last.
    pub reorder: bool,
    /// Chance a datagram is sent twice.
    pub duplicate: f64,
    /// Link rate in bits per second (0: unlimited); datagrams queue behind it.
    pub rate_bps: u64,
    /// The most a datagram may wait in the rate queue before it is dropped (a router's buffer).
    pub queue_limit: Duration,
    /// Everything is lost (a link outage), while true.
    pub down: bool,
}

impl LinkParams {
    /// Nothing to emulate: the queue limit and burst length matter only with a rate or
    /// bursts.
    pub fn is_clean(&self) -> bool {
        *self == LinkParams { queue_limit: self.queue_limit, burst_len: self.burst_len, ..Default::default() }
    }
}

/// What happened to datagrams on one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub received: u64,
    /// Bytes of the datagrams that entered (what the link carried, before loss).
    pub received_bytes: u64,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Dropped because they would have waited longer than the queue limit.
    pub overflowed: u64,
}

/// One direction's impairment, on an explicit clock.
pub struct LinkModel {
    params: LinkParams,
    rng: StdRng,
    in_burst: bool,
    /// When the rate-limited link is free again.
    link_free: Instant,
    /// The latest departure so far (without reordering, none leaves before it).
    last_departure: Instant,
    /// Datagrams by departure time (and arrival order for ties).
    queue: BinaryHeap<Reverse<(Instant, u64, Bytes)>>,
    order: u64,
    pub counters: LinkCounters,
}

impl LinkModel {
    pub fn new(params: LinkParams, seed: u64, now: Instant) -> Self {
        LinkModel {
            params,
            rng: StdRng::seed_from_u64(seed),
            in_burst: false,
            link_free: now,
            last_departure: now,
            queue: BinaryHeap::new(),
            order: 0,
            counters: LinkCounters::default(),
        }
    }

    pub fn params(&self) -> LinkParams {
        self.params
    }

    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    /// A datagram enters the link at `now`.
    pub fn push(&mut self, data: Bytes, now: Instant) {
        self.counters.received += 1;
        self.counters.received_bytes += data.len() as u64;
        let p = self.params;
        if p.down || self.lost() {
            self.counters.lost += 1;
            return;
        }
        let copies = if p.duplicate > 0.0 && self.rng.random_bool(p.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
        for copy in 0..copies {
            // The rate limit serialises datagrams; a full buffer drops at the tail.
            let mut start = now;
            if p.rate_bps > 0 {
                let free = self.link_free.max(now);
                if p.queue_limit > Duration::ZERO && free.saturating_duration_since(now) > p.queue_limit {
                    self.counters.overflowed += 1;
                    continue;
                }
                let on_wire = Duration::from_secs_f64(data.len() as f64 * 8.0 / p.rate_bps as f64);
                self.link_free = free + on_wire;
                start = self.link_free;
            }
            let mut departure = start + p.delay;
            if p.jitter > Duration::ZERO {
                let j = p.jitter.as_secs_f64();
                let offset = self.rng.random_range(-j..=j);
                departure = if offset >= 0.0 {
                    departure + Duration::from_secs_f64(offset)
                } else {
                    departure.checked_sub(Duration::from_secs_f64(-offset)).unwrap_or(departure).max(start)
                };
            }
            if !p.reorder {
                departure = departure.max(self.last_departure);
            }
            self.last_departure = self.last_departure.max(departure);
            if copy == 1 {
                self.counters.duplicated += 1;
            }
            self.order += 1;
            self.queue.push(Reverse((departure, self.order, data.clone())));
        }
    }

    fn lost(&mut self) -> bool {
        let p = self.params;
        if self.in_burst {
            // Leave the burst with chance 1/len per datagram.
            if self.rng.random_bool((1.0 / p.burst_len.max(1.0)).clamp(0.0, 1.0)) {
                self.in_burst = false;
            } else {
                return true;
            }
        }
        if p.burst_start > 0.0 && self.rng.random_bool(p.burst_start.clamp(0.0, 1.0)) {
            self.in_burst = true;
            return true;
        }
        p.loss > 0.0 && self.rng.random_bool(p.loss.clamp(0.0, 1.0))
    }

    /// The next datagram due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        let Reverse((at, _, _)) = self.queue.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((_, _, data)) = self.queue.pop()?;
        self.counters.sent += 1;
        Some(data)
    }

    /// When the next datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// Both directions' settings, shared with the relay task.
#[derive(Clone)]
pub struct LinkControl {
    inner: Arc<Mutex<Directions>>,
}

struct Directions {
    /// Client to server, and server to client.
    up: LinkParams,
    down: LinkParams,
    counters: (LinkCounters, LinkCounters),
    version: u64,
}

impl LinkControl {
    /// Changes both directions (takes effect for datagrams that arrive from now on).
    pub fn set(&self, up: LinkParams, down: LinkParams) {
        let mut d = self.inner.lock().expect("link control");
        d.up = up;
        d.down = down;
        d.version += 1;
    }

    pub fn set_both(&self, params: LinkParams) {
        self.set(params, params);
    }

    /// What each direction did so far: (client to server, server to client).
    pub fn counters(&self) -> (LinkCounters, LinkCounters) {
        self.inner.lock().expect("link control").counters
    }
}

/// A running relay: clients send to `addr`, the relay forwards to its target.
pub struct LinkEmulator {
    pub addr: SocketAddr,
    pub control: LinkControl,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The most datagrams in flight per direction; beyond, new ones are dropped.
const MAX_IN_FLIGHT: usize = 100_000;

impl LinkEmulator {
    /// Relays the first client that sends to the returned address to `target` (one
    /// client per emulator: an edge's core link, or one WebRTC client's media).
    pub async fn start(target: SocketAddr, up: LinkParams, down: LinkParams, seed: u64) -> std::io::Result<Self> {
        let outside = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let inside = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        inside.connect(target).await?;
        let addr = outside.local_addr()?;
        let control = LinkControl {
            inner: Arc::new(Mutex::new(Directions { up, down, counters: Default::default(), version: 0 })),
        };
        let task = tokio::spawn(relay(outside, inside, control.clone(), seed));
        Ok(LinkEmulator { addr, control, task })
    }
}

async fn relay(outside: UdpSocket, inside: UdpSocket, control: LinkControl, seed: u64) {
    let now = Instant::now();
    let (up0, down0) = {
        let d = control.inner.lock().expect("link control");
        (d.up, d.down)
    };
    let mut up = LinkModel::new(up0, seed, now);
    let mut down = LinkModel::new(down0, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1), now);
    let mut version = 0;
    let mut client: Option<SocketAddr> = None;
    let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        let due = [up.next_due(), down.next_due()].into_iter().flatten().min();
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut arrived_up = None;
        let mut arrived_down = None;
        tokio::select! {
            r = outside.recv_from(&mut a) => {
                if let Ok((n, from)) = r {
                    client.get_or_insert(from);
                    if client == Some(from) {
                        arrived_up = Some(Bytes::copy_from_slice(&a[..n]));
                    }
                }
            }
            r = inside.recv(&mut b) => {
                if let Ok(n) = r {
                    arrived_down = Some(Bytes::copy_from_slice(&b[..n]));
                }
            }
            _ = sleep => {}
        }
        let now = Instant::now();
        let mut d = control.inner.lock().expect("link control");
        if d.version != version {
            version = d.version;
            up.set_params(d.up);
            down.set_params(d.down);
        }
        if let Some(data) = arrived_up.filter(|_| up.queue.len() < MAX_IN_FLIGHT) {
            up.push(data, now);
        }
        if let Some(data) = arrived_down.filter(|_| down.queue.len() < MAX_IN_FLIGHT) {
            down.push(data, now);
        }
        while let Some(data) = up.pop_due(now) {
            let _ = inside.try_send(&data);
        }
        if let Some(to) = client {
            while let Some(data) = down.pop_due(now) {
                let _ = outside.try_send_to(&data, to);
            }
        }
        d.counters = (up.counters, down.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_with_no_impairment_is_clean_whatever_its_burst_length_and_buffer() {
        let clean = LinkParams { burst_len: 5.0, queue_limit: Duration::from_millis(100), ..Default::default() };
        assert!(clean.is_clean());
        assert!(!LinkParams { loss: 0.01, ..clean }.is_clean());
        assert!(!LinkParams { burst_start: 0.01, ..clean }.is_clean());
        assert!(!LinkParams { rate_bps: 1000, ..clean }.is_clean());
    }

    fn run(params: LinkParams, packets: usize, gap: Duration) -> (Vec<(u32, Duration)>, LinkCounters) {
        let t0 = Instant::now();
        let mut m = LinkModel::new(params, 7, t0);
        let mut out = Vec::new();
        let end = t0 + gap * packets as u32 + Duration::from_secs(5);
        let mut now = t0;
        let mut next = 0usize;
        while now < end {
            while next < packets && t0 + gap * next as u32 <= now {
                m.push(Bytes::copy_from_slice(&(next as u32).to_be_bytes()), t0 + gap * next as u32);
                next += 1;
            }
            while let Some(d) = m.pop_due(now) {
                let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                out.push((n, now - (t0 + gap * n)));
            }
            now += Duration::from_millis(1);
        }
        (out, m.counters)
    }

    #[test]
    fn a_clean_link_delivers_everything_in_order_at_once() {
        let (out, c) = run(LinkParams::default(), 100, Duration::from_millis(20));
        assert_eq!(out.len(), 100);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(out.iter().all(|(_, d)| *d < Duration::from_millis(1)));
        assert_eq!((c.received, c.sent, c.lost), (100, 100, 0));
    }

    #[test]
    fn loss_delay_and_jitter_are_as_set_and_seeded() {
        let p = LinkParams {
            loss: 0.05,
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(10),
            ..Default::default()
        };
        let (out, c) = run(p, 4000, Duration::from_millis(5));
        let lost = 4000 - out.len();
        assert!((120..=280).contains(&lost), "about 5 % lost: {lost}");
        assert_eq!(c.lost as usize, lost);
        assert!(out.iter().all(|(_, d)| *d >= Duration::from_millis(30) && *d <= Duration::from_millis(52)));
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "no reordering unless asked");
        assert_eq!(run(p, 4000, Duration::from_millis(5)).0, out, "the same seed, the same link");
    }

    #[test]
    fn reordering_duplicates_bursts_and_outages() {
        let p = LinkParams { jitter: Duration::from_millis(30), reorder: true, duplicate: 0.1, ..Default::default() };
        let (out, c) = run(p, 1000, Duration::from_millis(5));
        assert!(out.windows(2).any(|w| w[0].0 > w[1].0), "some datagrams overtake others");
        assert!((50..=150).contains(&c.duplicated), "{c:?}");
        assert_eq!(out.len() as u64, 1000 + c.duplicated);

        let bursty = LinkParams { burst_start: 0.01, burst_len: 10.0, ..Default::default() };
        let (out, _) = run(bursty, 10_000, Duration::from_millis(1));
        let got: std::collections::HashSet<u32> = out.iter().map(|(n, _)| *n).collect();
        let mut runs = Vec::new();
        let mut current = 0;
        for n in 0..10_000u32 {
            if got.contains(&n) {
                if current > 0 {
                    runs.push(current);
                }
                current = 0;
            } else {
                current += 1;
            }
        }
        let mean = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
        assert!((6.0..=14.0).contains(&mean), "bursts of about 10: {mean}");

        let (out, c) = run(LinkParams { down: true, ..Default::default() }, 100, Duration::from_millis(1));
        assert!(out.is_empty() && c.lost == 100);
    }

    #[test]
    fn a_rate_limit_queues_then_drops_past_the_buffer() {
        // 200-byte datagrams every 5 ms are 320 kbit/s; the link carries 160 kbit/s.
        let p = LinkParams { rate_bps: 160_000, queue_limit: Duration::from_millis(100), ..Default::default() };
        let t0 = Instant::now();
        let mut m = LinkModel::new(p, 1, t0);
        for i in 0..400u32 {
            m.push(Bytes::from(vec![0u8; 200]), t0 + Duration::from_millis(5 * u64::from(i)));
        }
        let c = m.counters;
        assert!((180..=220).contains(&c.overflowed), "about half dropped: {c:?}");
        // Nothing waits longer than the buffer allows (10 ms per datagram on the wire).
        let last = m.queue.iter().map(|Reverse((at, _, _))| *at).max().unwrap();
        assert!(last <= t0 + Duration::from_millis(5 * 399) + Duration::from_millis(111));
    }

    #[tokio::test]
    async fn the_relay_carries_both_ways_and_obeys_changes() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let link = LinkEmulator::start(server.local_addr().unwrap(), LinkParams::default(), LinkParams::default(), 3)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", link.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, relay) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", relay).await.unwrap();
        let (n, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], link.addr));
        link.control.set_both(LinkParams { down: true, ..Default::default() });
        client.send_to(b"lost", link.addr).await.unwrap();
        let nothing = tokio::time::timeout(Duration::from_millis(200), server.recv_from(&mut buf)).await;
        assert!(nothing.is_err(), "a down link carries nothing");
        assert_eq!(link.control.counters().0.lost, 1);
    }
}
