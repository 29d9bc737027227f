//! What a link loses and repairs, counted by the receiver per media stream (a channel's
//! speaker), and the sender's switch for repair copies. Sans-IO.
//!
//! Each stream keeps a 64-packet window of the sequence numbers it has seen: the first
//! copy of a packet passes, any other is a duplicate; a repair copy that fills a hole is
//! a repair; a hole that leaves the window unfilled is a loss. A jump of more than
//! `MAX_GAP` packets is a pause in forwarding (the speaker left the selection), not loss.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const WINDOW: u64 = 64;
/// A hole this many packets behind the newest counts as lost (long past any repair copy
/// or reordering), so a report a second later already shows it.
const LOSS_AFTER: u64 = 16;
/// A forward jump larger than this restarts the stream instead of counting loss.
pub const MAX_GAP: u64 = 10;
/// A stream nobody sent for this long is forgotten.
const IDLE: Duration = Duration::from_secs(5);
/// Streams tracked per link at most (a link carries a few per channel).
const MAX_STREAMS: usize = 16 * 1024;

/// Counts of one link's receiving side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounts {
    /// Packets that arrived (first copies).
    pub received: u64,
    /// Packets never seen.
    pub lost: u64,
    /// Packets whose original was lost and whose repair copy arrived.
    pub repaired: u64,
    /// Second copies dropped.
    pub duplicates: u64,
}

impl LossCounts {
    /// Loss before repair, per thousand packets expected.
    pub fn raw_loss_permille(&self) -> u16 {
        let expected = self.received + self.lost;
        if expected == 0 {
            return 0;
        }
        ((self.lost + self.repaired) * 1000 / expected).min(1000) as u16
    }

    fn since(&self, earlier: &LossCounts) -> LossCounts {
        LossCounts {
            received: self.received - earlier.received,
            lost: self.lost - earlier.lost,
            repaired: self.repaired - earlier.repaired,
            duplicates: self.duplicates - earlier.duplicates,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    highest: u64,
    /// Bit i: packet `highest - i` arrived.
    seen: u64,
    /// How many of the window's positions belong to this stream (it may be younger).
    span: u64,
    last: Instant,
}

/// `seq` extended to 64 bits: the value nearest `highest` (kept at or above 2^16, so a
/// step back across the wrap never underflows).
pub(crate) fn extend(highest: u64, seq: u16) -> u64 {
    let base = highest & !0xffff;
    let candidate = base | u64::from(seq);
    [candidate.wrapping_sub(1 << 16), candidate, candidate + (1 << 16)]
        .into_iter()
        .filter(|&c| c >= (1 << 16))
        .min_by_key(|&c| c.abs_diff(highest))
        .unwrap_or(candidate)
}

/// The receiving side of one link: duplicate filter and loss counts.
#[derive(Debug, Default)]
pub struct LinkLoss {
    streams: HashMap<(u32, u32), Stream>,
    counts: LossCounts,
    reported: LossCounts,
}

impl LinkLoss {
    /// Records a datagram of stream (`channel_id`, `speaker`); false if this packet was
    /// seen already (drop it).
    pub fn on_datagram(&mut self, channel_id: u32, speaker: u32, seq: u16, copy: bool, now: Instant) -> bool {
        let key = (channel_id, speaker);
        let Some(s) = self.streams.get_mut(&key) else {
            if self.streams.len() >= MAX_STREAMS {
                self.sweep(now);
            }
            if self.streams.len() < MAX_STREAMS {
                let highest = (1 << 16) | u64::from(seq);
                self.streams.insert(key, Stream { highest, seen: 1, span: 1, last: now });
            }
            self.counts.received += 1;
            return true;
        };
        s.last = now;
        let ext = extend(s.highest, seq);
        if ext > s.highest {
            let shift = ext - s.highest;
            if shift > MAX_GAP {
                // A pause in forwarding: what the window still misses is lost, then anew.
                self.counts.lost += missing(s.seen, s.span);
                *s = Stream { highest: ext, seen: 1, span: 1, last: now };
            } else {
                // Positions passing `LOSS_AFTER` unfilled are lost.
                for pos in LOSS_AFTER.saturating_sub(shift)..LOSS_AFTER {
                    if pos < s.span && s.seen & (1 << pos) == 0 {
                        self.counts.lost += 1;
                    }
                }
                s.seen = (s.seen << shift) | 1;
                s.span = (s.span + shift).min(WINDOW);
                s.highest = ext;
                if copy {
                    // Its original (and those before it since `highest`) did not come first.
                    self.counts.repaired += 1;
                }
            }
            self.counts.received += 1;
            return true;
        }
        let back = s.highest - ext;
        if back >= s.span {
            // Older than the window (or than the stream): too late to be of use.
            self.counts.duplicates += 1;
            return false;
        }
        let bit = 1u64 << back;
        if s.seen & bit != 0 {
            self.counts.duplicates += 1;
            return false;
        }
        s.seen |= bit;
        self.counts.received += 1;
        if back >= LOSS_AFTER {
            // Counted as lost already; it came after all.
            self.counts.lost = self.counts.lost.saturating_sub(1);
        }
        if copy {
            self.counts.repaired += 1;
        }
        true
    }

    /// Forgets streams idle for a while (their unfilled holes count as lost).
    pub fn sweep(&mut self, now: Instant) {
        let lost = &mut self.counts.lost;
        self.streams.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last) < IDLE;
            if !keep {
                *lost += missing(s.seen, s.span);
            }
            keep
        });
    }

    /// Forgets every stream (a new connection numbers channels anew), keeping the counts.
    pub fn reset_streams(&mut self) {
        self.streams.clear();
    }

    pub fn counts(&self) -> LossCounts {
        self.counts
    }

    /// The counts since the previous call (what a quality report covers).
    pub fn take_interval(&mut self) -> LossCounts {
        let delta = self.counts.since(&self.reported);
        self.reported = self.counts;
        delta
    }
}

/// Unfilled positions of a window not yet counted as lost (those under `LOSS_AFTER`).
fn missing(seen: u64, span: u64) -> u64 {
    let open = span.min(LOSS_AFTER);
    let mask = (1u64 << open) - 1;
    u64::from((!seen & mask).count_ones())
}

/// Reported loss at or above which the sender adds repair copies.
pub const REPAIR_ON_PERMILLE: u16 = 10;
/// Reported loss below which, for `REPAIR_OFF_AFTER`, the sender stops.
pub const REPAIR_OFF_PERMILLE: u16 = 3;
pub const REPAIR_OFF_AFTER: Duration = Duration::from_secs(10);

/// The sending side's decision to send a repair copy of every media datagram, from the
/// receiver's reports: on at once when loss is reported, off after a quiet while.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairSwitch {
    on: bool,
    quiet_since: Option<Instant>,
    /// The last loss the receiver reported, per thousand.
    pub reported_permille: u16,
    /// Times repair was turned on.
    pub activations: u64,
}

impl RepairSwitch {
    pub fn on_report(&mut self, lost_permille: u16, now: Instant) {
        self.reported_permille = lost_permille;
        if lost_permille >= REPAIR_ON_PERMILLE {
            if !self.on {
                self.activations += 1;
            }
            self.on = true;
            self.quiet_since = None;
        } else if lost_permille < REPAIR_OFF_PERMILLE {
            let since = *self.quiet_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= REPAIR_OFF_AFTER {
                self.on = false;
            }
        } else {
            self.quiet_since = None;
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Off, as on a new connection (the count of activations stays).
    pub fn reset(&mut self) {
        *self = RepairSwitch { activations: self.activations, ..Default::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn holes_become_losses_and_copies_that_fill_them_repairs() {
        let t = Instant::now();
        let mut l = LinkLoss::default();
        // 0..100 with 10, 20, 30 lost; 20's copy arrives, and every copy of the rest is a duplicate.
        for seq in 0u16..100 {
            if ![10, 20, 30].contains(&seq) {
                assert!(l.on_datagram(1, 7, seq, false, t));
            }
            let copy_passes = l.on_datagram(1, 7, seq, true, t);
            assert_eq!(copy_passes, [10, 30].contains(&seq) || seq == 20, "{seq}");
        }
        let c = l.counts();
        assert_eq!((c.received, c.repaired), (100, 3));
        assert_eq!(c.duplicates, 97);
        assert_eq!(l.take_interval().raw_loss_permille(), 30);
        assert_eq!(l.take_interval(), LossCounts::default());
    }

    #[test]
    fn unrepaired_holes_count_once_they_leave_the_window_or_the_stream_pauses() {
        let t = Instant::now();
        let mut l = LinkLoss::default();
        for seq in (0u16..200).filter(|s| s % 10 != 5) {
            l.on_datagram(1, 7, seq, false, t);
        }
        // 20 holes; those in the last 16 packets are still open.
        assert_eq!(l.counts().lost, 18);
        // A pause in selection (a jump of 500) is no loss, but closes the open holes.
        l.on_datagram(1, 7, 700, false, t);
        assert_eq!(l.counts().lost, 20);
        // A late packet fills a hole in time; one from before the window is refused.
        l.on_datagram(1, 7, 702, false, t);
        assert!(l.on_datagram(1, 7, 701, false, t));
        assert!(!l.on_datagram(1, 7, 600, false, t));
        assert_eq!(l.counts().lost, 20);
    }

    #[test]
    fn streams_are_apart_and_wrap_and_idle_ones_are_forgotten() {
        let t = Instant::now();
        let mut l = LinkLoss::default();
        for seq in [65534u16, 65535, 0, 1] {
            assert!(l.on_datagram(1, 7, seq, false, t));
            assert!(l.on_datagram(2, 7, seq, false, t), "another channel's stream");
        }
        assert!(!l.on_datagram(1, 7, 65535, false, t));
        assert_eq!(l.counts().lost, 0);
        l.sweep(t + Duration::from_secs(6));
        assert!(l.on_datagram(1, 7, 65535, false, t), "a forgotten stream starts anew");
    }

    #[test]
    fn repair_turns_on_at_reported_loss_and_off_after_a_quiet_while() {
        let t = Instant::now();
        let mut r = RepairSwitch::default();
        r.on_report(0, t);
        assert!(!r.is_on());
        r.on_report(50, t);
        assert!(r.is_on());
        // Reported loss with repair on is the loss before repair: it stays high while the
        // link is bad; once it is low for long enough, copies stop.
        for s in 1..10 {
            r.on_report(1, t + Duration::from_secs(s));
            assert!(r.is_on());
        }
        r.on_report(1, t + Duration::from_secs(11));
        assert!(!r.is_on());
        assert_eq!(r.activations, 1);
    }

    proptest! {
        #[test]
        fn any_arrival_order_passes_each_packet_once(seqs in proptest::collection::vec(0u16..80, 0..400)) {
            let t = Instant::now();
            let mut l = LinkLoss::default();
            let mut passed = std::collections::HashSet::new();
            for s in seqs {
                if l.on_datagram(3, 4, s, s % 2 == 0, t) {
                    prop_assert!(passed.insert(s), "{} passed twice", s);
                }
            }
        }
    }
}
