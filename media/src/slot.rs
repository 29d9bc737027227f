//! Listener slots: one continuous outgoing stream per slot, whatever speaker feeds it.
//!
//! When a slot's source changes (another speaker, or the same one after a pause in
//! selection) the sequence continues at last+1 and the timestamp advances by the wall
//! time since the last packet sent, so receivers see one stream with a gap, never a
//! jump back or a burst of "loss".

use std::time::{Duration, Instant};

use crate::{Ssrc, OPUS_CLOCK_RATE};

/// 16-bit RTP sequence numbers extended to 64 bits so wrap-around is never a special case.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqExtender {
    highest: Option<u64>,
}

impl SeqExtender {
    /// Extends `seq` to the value nearest the highest seen, and records it if newer.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.highest {
            None => (1 << 16) + u64::from(seq),
            Some(h) => nearest(h, seq),
        };
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

fn nearest(reference: u64, seq: u16) -> u64 {
    let base = reference & !0xffff;
    let candidate = base | u64::from(seq);
    let dist = |c: u64| c.abs_diff(reference);
    [candidate.wrapping_sub(1 << 16), candidate, candidate + (1 << 16)]
        .into_iter()
        .filter(|&c| c >= (1 << 16) || c == candidate)
        .min_by_key(|&c| dist(c))
        .unwrap_or(candidate)
}

/// A sequence jump within one source larger than this restarts the mapping.
const MAX_SEQ_JUMP: u64 = 3000;
/// Timestamp advance at a source switch when less wall time has passed (one 20 ms frame).
const MIN_SWITCH_ADVANCE: u32 = 960;

/// Packets of one source seen within this many of the newest are recognised as copies.
const DUPLICATE_WINDOW: u64 = 64;

#[derive(Clone, Copy, Debug)]
struct Mapping {
    source: Ssrc,
    seq_offset: u16,
    ts_offset: u32,
    first_ext: u64,
    ext: SeqExtender,
    /// Bit i: the packet `highest - i` was sent. A packet can reach a slot twice (the
    /// edge's own speakers come both directly and back from the core; a lossy link may
    /// duplicate, and repair resends): the second copy is dropped.
    sent: u64,
}

impl Mapping {
    /// Records `ext` as sent; false if it was sent already.
    fn mark(&mut self, ext: u64, before: Option<u64>) -> bool {
        match before {
            Some(h) if ext > h => {
                let shift = ext - h;
                self.sent = if shift >= DUPLICATE_WINDOW { 0 } else { self.sent << shift };
                self.sent |= 1;
                true
            }
            Some(h) if h - ext < DUPLICATE_WINDOW => {
                let bit = 1u64 << (h - ext);
                let fresh = self.sent & bit == 0;
                self.sent |= bit;
                fresh
            }
            // Older than the window: too late to matter for a copy; let it through.
            Some(_) => true,
            None => {
                self.sent = 1;
                true
            }
        }
    }
}

/// The rewriting state of one outgoing slot stream for one listener.
#[derive(Clone, Debug)]
pub struct SlotRewriter {
    pub ssrc: Ssrc,
    last_seq: u16,
    last_ts: u32,
    last_sent: Option<Instant>,
    mapping: Option<Mapping>,
    pub packets_sent: u32,
    pub octets_sent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub sequence: u16,
    pub timestamp: u32,
}

impl SlotRewriter {
    pub fn new(ssrc: Ssrc, initial_seq: u16, initial_ts: u32) -> Self {
        SlotRewriter {
            ssrc,
            last_seq: initial_seq.wrapping_sub(1),
            last_ts: initial_ts.wrapping_sub(MIN_SWITCH_ADVANCE),
            last_sent: None,
            mapping: None,
            packets_sent: 0,
            octets_sent: 0,
        }
    }

    /// The speaker currently mapped onto this slot, if any.
    pub fn source(&self) -> Option<Ssrc> {
        self.mapping.map(|m| m.source)
    }

    /// The last (timestamp, send time) for sender reports.
    pub fn last_sent(&self) -> Option<(u32, Instant)> {
        self.last_sent.map(|t| (self.last_ts, t))
    }

    /// Forgets the current source; its next packet (or another's) starts a new mapping.
    pub fn detach(&mut self) {
        self.mapping = None;
    }

    /// Maps a packet of `source` onto this slot, or `None` if it must be dropped (older
    /// than the start of the current mapping, or a copy of a packet sent already).
    pub fn rewrite(&mut self, source: Ssrc, seq: u16, ts: u32, payload_len: usize, now: Instant) -> Option<Rewritten> {
        let continuing = match &mut self.mapping {
            Some(m) if m.source == source => {
                let before = m.ext.highest().unwrap_or(0);
                let ext = nearest(before, seq);
                if ext.abs_diff(before) > MAX_SEQ_JUMP {
                    false
                } else if ext < m.first_ext {
                    return None;
                } else {
                    true
                }
            }
            _ => false,
        };
        if !continuing {
            let advance = self.last_sent.map_or(MIN_SWITCH_ADVANCE, |t| {
                let elapsed = now.saturating_duration_since(t).min(Duration::from_secs(3600));
                let samples = elapsed.as_micros() as u64 * u64::from(OPUS_CLOCK_RATE) / 1_000_000;
                (samples as u32).max(MIN_SWITCH_ADVANCE)
            });
            let out_seq = self.last_seq.wrapping_add(1);
            let out_ts = self.last_ts.wrapping_add(advance);
            let mut ext = SeqExtender::default();
            let first_ext = ext.extend(seq);
            self.mapping = Some(Mapping {
                source,
                seq_offset: out_seq.wrapping_sub(seq),
                ts_offset: out_ts.wrapping_sub(ts),
                first_ext,
                ext,
                sent: 0,
            });
        }
        let m = self.mapping.as_mut()?;
        let before = if continuing { m.ext.highest() } else { None };
        let ext = m.ext.extend(seq);
        if !m.mark(ext, before) {
            return None;
        }
        let out = Rewritten { sequence: seq.wrapping_add(m.seq_offset), timestamp: ts.wrapping_add(m.ts_offset) };
        if !continuing || before.is_none_or(|h| ext > h) {
            self.last_seq = out.sequence;
            self.last_ts = out.timestamp;
            self.last_sent = Some(now);
        }
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(payload_len as u32);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extender_handles_wrap_and_reorder() {
        let mut e = SeqExtender::default();
        let a = e.extend(65534);
        let b = e.extend(65535);
        let c = e.extend(0);
        let d = e.extend(65533); // late
        let f = e.extend(1);
        assert_eq!(b, a + 1);
        assert_eq!(c, a + 2);
        assert_eq!(d, a - 1);
        assert_eq!(f, a + 3);
        assert_eq!(e.highest(), Some(f));
    }

    fn feed(slot: &mut SlotRewriter, src: u32, seqs: std::ops::Range<u32>, ts0: u32, t0: Instant) -> Vec<Rewritten> {
        seqs.map(|i| {
            let seq = (i & 0xffff) as u16;
            let now = t0 + Duration::from_millis(20 * u64::from(i));
            slot.rewrite(Ssrc(src), seq, ts0.wrapping_add(960 * i), 100, now).unwrap()
        })
        .collect()
    }

    #[test]
    fn slot_stays_continuous_across_speaker_switch() {
        let t0 = Instant::now();
        let mut slot = SlotRewriter::new(Ssrc(1000), 500, 10_000);
        let a = feed(&mut slot, 1, 65530..65540, 7, t0); // wraps inside speaker 1
        assert_eq!(a[0].sequence, 500);
        for w in a.windows(2) {
            assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1));
            assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(960));
        }
        // Speaker 2 takes the slot 1 s later with unrelated seq/ts.
        let t1 = t0 + Duration::from_millis(20 * 65540 + 1000);
        let b = slot.rewrite(Ssrc(2), 17, 123_456, 100, t1).unwrap();
        assert_eq!(b.sequence, a.last().unwrap().sequence.wrapping_add(1));
        let gap = b.timestamp.wrapping_sub(a.last().unwrap().timestamp);
        assert!((48_000..=50_000).contains(&gap), "timestamp gap {gap} should follow wall time");
        let c = slot.rewrite(Ssrc(2), 18, 123_456 + 960, 100, t1).unwrap();
        assert_eq!(c.sequence, b.sequence.wrapping_add(1));
        assert_eq!(c.timestamp, b.timestamp.wrapping_add(960));
    }

    #[test]
    fn late_packets_from_before_a_switch_are_dropped() {
        let t0 = Instant::now();
        let mut slot = SlotRewriter::new(Ssrc(1), 0, 0);
        assert!(slot.rewrite(Ssrc(5), 100, 0, 10, t0).is_some());
        assert!(slot.rewrite(Ssrc(5), 99, 0, 10, t0).is_none());
        // Reordered packets after the start are forwarded at their place.
        assert!(slot.rewrite(Ssrc(5), 102, 1920, 10, t0).is_some());
        let late = slot.rewrite(Ssrc(5), 101, 960, 10, t0).unwrap();
        assert_eq!(late.sequence, 1);
    }

    #[test]
    fn a_second_copy_of_a_packet_is_dropped_wherever_it_falls() {
        let t0 = Instant::now();
        let mut slot = SlotRewriter::new(Ssrc(1), 0, 0);
        let first = slot.rewrite(Ssrc(5), 65534, 0, 10, t0).unwrap();
        assert!(slot.rewrite(Ssrc(5), 65534, 0, 10, t0).is_none(), "copy of the newest");
        // Across the sequence wrap, with a hole that a late packet fills once.
        for seq in [65535u16, 1, 2] {
            assert!(slot.rewrite(Ssrc(5), seq, 0, 10, t0).is_some());
        }
        let filled = slot.rewrite(Ssrc(5), 0, 0, 10, t0).unwrap();
        assert_eq!(filled.sequence, first.sequence.wrapping_add(2));
        assert!(slot.rewrite(Ssrc(5), 0, 0, 10, t0).is_none(), "copy of a late packet");
        assert!(slot.rewrite(Ssrc(5), 65535, 0, 10, t0).is_none(), "copy of an older one");
        // Far ahead: the window slides past; every packet in it is new once.
        for seq in 100u16..300 {
            assert!(slot.rewrite(Ssrc(5), seq, 0, 10, t0).is_some(), "{seq}");
        }
        assert!(slot.rewrite(Ssrc(5), 299 - 63, 0, 10, t0).is_none());
        assert_eq!(slot.packets_sent, 205);
    }

    #[test]
    fn same_speaker_after_detach_resumes_without_a_sequence_gap() {
        let t0 = Instant::now();
        let mut slot = SlotRewriter::new(Ssrc(1), 0, 0);
        let first = feed(&mut slot, 9, 0..5, 0, t0);
        slot.detach();
        // The speaker kept sending while detached (seq advanced by 200).
        let later = t0 + Duration::from_secs(5);
        let r = slot.rewrite(Ssrc(9), 205, 205 * 960, 10, later).unwrap();
        assert_eq!(r.sequence, first.last().unwrap().sequence + 1);
    }
}
