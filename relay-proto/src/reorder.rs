//! Puts each media stream of a link back in sequence order before it reaches listeners.
//! Sans-IO.
//!
//! A packet that follows a hole waits up to `HOLD` for the hole to fill (a late packet
//! or its repair copy); then the hole is given up and whatever waits goes on in order. A
//! packet from before a given-up hole is too late and is dropped: listeners never get a
//! stream that goes backwards. In order with no hole, nothing waits.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::loss::extend;

/// How long a packet waits for a hole before it (the repair copy's spacing, plus jitter).
pub const HOLD: Duration = Duration::from_millis(30);
/// Packets held per stream at most; more give the hole up at once.
const MAX_HELD: usize = 8;
/// A forward jump larger than this restarts the stream (a pause in forwarding).
const MAX_GAP: u64 = crate::loss::MAX_GAP;
/// A stream nobody sent for this long is forgotten.
const IDLE: Duration = Duration::from_secs(5);
const MAX_STREAMS: usize = 16 * 1024;

#[derive(Debug)]
struct Stream<T> {
    /// The extended sequence number due next.
    next: u64,
    held: BTreeMap<u64, T>,
    /// When the oldest held packet stops waiting.
    deadline: Option<Instant>,
    last: Instant,
}

/// Counts of what the stage did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderCounts {
    /// Packets that waited for a hole.
    pub held: u64,
    /// Holes given up (their packets never came in time).
    pub gaps_skipped: u64,
    /// Packets dropped for coming after their place was given up.
    pub late: u64,
}

#[derive(Debug)]
pub struct Reorder<T> {
    streams: HashMap<(u32, u32), Stream<T>>,
    pub counts: ReorderCounts,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder { streams: HashMap::new(), counts: ReorderCounts::default() }
    }
}

impl<T> Reorder<T> {
    /// A packet of `stream` arrives; what may go on now is appended to `out`, in order.
    pub fn push(&mut self, stream: (u32, u32), seq: u16, item: T, now: Instant, out: &mut Vec<T>) {
        if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_STREAMS {
            self.sweep(now, out);
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            if self.streams.len() < MAX_STREAMS {
                let next = (1 << 16 | u64::from(seq)) + 1;
                self.streams.insert(stream, Stream { next, held: BTreeMap::new(), deadline: None, last: now });
            }
            out.push(item);
            return;
        };
        s.last = now;
        let ext = extend(s.next, seq);
        if ext < s.next {
            self.counts.late += 1;
            return;
        }
        if ext - s.next > MAX_GAP {
            // A pause in forwarding, not a hole: what waits goes on, then this.
            out.extend(std::mem::take(&mut s.held).into_values());
            s.deadline = None;
            s.next = ext + 1;
            out.push(item);
            return;
        }
        if ext == s.next {
            out.push(item);
            s.next += 1;
            Self::release_run(s, out);
            return;
        }
        // After a hole: wait for it.
        if s.held.insert(ext, item).is_none() {
            self.counts.held += 1;
        }
        s.deadline.get_or_insert(now + HOLD);
        if s.held.len() > MAX_HELD {
            self.counts.gaps_skipped += 1;
            Self::skip_hole(s, now, out);
        }
    }

    /// Gives up holes whose wait is over; what may go on is appended to `out`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<T>) {
        for s in self.streams.values_mut() {
            while s.deadline.is_some_and(|d| d <= now) {
                self.counts.gaps_skipped += 1;
                Self::skip_hole(s, now, out);
            }
        }
    }

    /// The earliest time a held packet stops waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.streams.values().filter_map(|s| s.deadline).min()
    }

    /// Forgets idle streams (letting what they hold go on).
    pub fn sweep(&mut self, now: Instant, out: &mut Vec<T>) {
        self.streams.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last) < IDLE;
            if !keep {
                out.extend(std::mem::take(&mut s.held).into_values());
            }
            keep
        });
    }

    /// Drops every stream and what it holds (the link is gone).
    pub fn clear(&mut self) {
        self.streams.clear();
    }

    /// Packets from `next` on that are here go on.
    fn release_run(s: &mut Stream<T>, out: &mut Vec<T>) {
        while let Some(item) = s.held.remove(&s.next) {
            out.push(item);
            s.next += 1;
        }
        if s.held.is_empty() {
            s.deadline = None;
        }
    }

    /// The first hole is given up: the next held packet goes on, and its run.
    fn skip_hole(s: &mut Stream<T>, now: Instant, out: &mut Vec<T>) {
        let Some((&first, _)) = s.held.iter().next() else {
            s.deadline = None;
            return;
        };
        s.next = first;
        Self::release_run(s, out);
        if !s.held.is_empty() {
            s.deadline = Some(now + HOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: (u32, u32) = (1, 7);

    #[test]
    fn in_order_goes_straight_through_and_a_hole_is_waited_for() {
        let t = Instant::now();
        let mut r = Reorder::default();
        let mut out = Vec::new();
        for seq in [10u16, 11, 13, 14] {
            r.push(K, seq, seq, t, &mut out);
        }
        assert_eq!(out, [10, 11], "13 and 14 wait for 12");
        r.push(K, 12, 12, t + Duration::from_millis(5), &mut out);
        assert_eq!(out, [10, 11, 12, 13, 14]);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.counts.held, 2);
    }

    #[test]
    fn a_hole_that_never_fills_is_given_up_and_its_packet_is_then_too_late() {
        let t = Instant::now();
        let mut r = Reorder::default();
        let mut out = Vec::new();
        for seq in [65534u16, 0, 1] {
            r.push(K, seq, seq, t, &mut out);
        }
        assert_eq!(out, [65534]);
        assert_eq!(r.next_deadline(), Some(t + HOLD));
        r.poll(t + HOLD - Duration::from_millis(1), &mut out);
        assert_eq!(out, [65534]);
        r.poll(t + HOLD, &mut out);
        assert_eq!(out, [65534, 0, 1]);
        r.push(K, 65535, 65535, t + HOLD, &mut out);
        assert_eq!(out, [65534, 0, 1], "never backwards");
        assert_eq!((r.counts.gaps_skipped, r.counts.late), (1, 1));
    }

    #[test]
    fn a_pause_in_forwarding_is_not_a_hole_and_streams_are_apart() {
        let t = Instant::now();
        let mut r = Reorder::default();
        let mut out = Vec::new();
        r.push(K, 100, 100, t, &mut out);
        r.push(K, 900, 900, t, &mut out);
        r.push((2, 7), 5, 5, t, &mut out);
        r.push(K, 901, 901, t, &mut out);
        assert_eq!(out, [100, 900, 5, 901]);
        assert_eq!(r.next_deadline(), None);
    }

    proptest! {
        #[test]
        fn whatever_the_arrival_order_the_output_only_moves_forward(
            arrivals in proptest::collection::vec((0u16..40, 0u64..50), 0..200)
        ) {
            let t = Instant::now();
            let mut r = Reorder::default();
            let mut out = Vec::new();
            let mut elapsed = 0;
            for (seq, wait) in arrivals {
                elapsed += wait;
                let now = t + Duration::from_millis(elapsed);
                r.poll(now, &mut out);
                r.push(K, seq, seq, now, &mut out);
            }
            r.poll(t + Duration::from_secs(3600), &mut out);
            for w in out.windows(2) {
                prop_assert!(w[0] < w[1], "{:?}", out);
            }
        }
    }
}
