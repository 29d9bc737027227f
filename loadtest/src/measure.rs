//! Measurement maths, free of I/O: send-time stamps in the payload, per-stream loss,
//! duplicates and reordering over extended sequence numbers, and RFC 3550 jitter.

use std::time::{Duration, Instant};

use media::rtcp_report::ReceiveStats;
use media::slot::SeqExtender;
use media::Ssrc;

/// A valid Opus packet: TOC 0xF8 (CELT fullband 20 ms, mono, one frame) and a silent frame.
/// The SFU forwards payloads unchanged, so the stamp after it arrives intact.
pub const OPUS_FRAME: [u8; 3] = [0xF8, 0xFF, 0xFE];
const MAGIC: [u8; 4] = *b"SFUL";
/// Bytes the stamp takes after the Opus frame.
pub const STAMP_LEN: usize = MAGIC.len() + 8;

/// Writes an Opus frame, the stamp (µs since the run's epoch), and zero padding up to `size`.
/// Also carries when the packet's talk spurt began (`spurt_us`), so a listener can tell a
/// spurt's first packet from a later one whatever slot or speaker id it arrives under.
pub fn stamped_payload(send_us: u64, spurt_us: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&OPUS_FRAME);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&send_us.to_be_bytes());
    out.extend_from_slice(&spurt_us.to_be_bytes());
    if out.len() < size {
        out.resize(size, 0);
    }
}

/// The send time carried by a payload, if it has one.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(&OPUS_FRAME)?.strip_prefix(&MAGIC)?;
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

/// When the talk spurt of a stamped payload began.
pub fn read_spurt(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(&OPUS_FRAME)?.strip_prefix(&MAGIC)?;
    Some(u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?))
}

/// Microseconds since the run's epoch; every client of a run shares one epoch.
pub fn micros_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_micros() as u64
}

/// One-way latency from a stamp and the arrival time, both relative to the epoch.
pub fn latency(send_us: u64, arrival_us: u64) -> Duration {
    Duration::from_micros(arrival_us.saturating_sub(send_us))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    Late,
    Duplicate,
    /// Older than the reorder window; counted, not judged.
    TooOld,
}

/// What one received stream (a listener's slot) saw.
#[derive(Clone, Debug)]
pub struct StreamStats {
    rtp: ReceiveStats,
    ext: SeqExtender,
    first: Option<u64>,
    /// Bit i: extended sequence `highest - i` was received.
    seen: u128,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl StreamStats {
    pub fn new(ssrc: Ssrc, epoch: Instant) -> Self {
        StreamStats {
            rtp: ReceiveStats::new(ssrc, epoch),
            ext: SeqExtender::default(),
            first: None,
            seen: 0,
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
        }
    }

    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival: Instant) -> Arrival {
        let before = self.ext.highest();
        let ext = self.ext.extend(seq);
        let first = *self.first.get_or_insert(ext);
        if ext < first {
            self.first = Some(ext);
        }
        let class = match before {
            None => {
                self.seen = 1;
                Arrival::InOrder
            }
            Some(h) if ext > h => {
                let shift = ext - h;
                self.seen = if shift >= 128 { 1 } else { (self.seen << shift) | 1 };
                Arrival::InOrder
            }
            Some(h) => {
                let age = h - ext;
                if age >= 128 {
                    Arrival::TooOld
                } else if self.seen & (1 << age) != 0 {
                    Arrival::Duplicate
                } else {
                    self.seen |= 1 << age;
                    Arrival::Late
                }
            }
        };
        match class {
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::Late => {
                self.out_of_order += 1;
                self.unique += 1;
            }
            Arrival::InOrder | Arrival::TooOld => self.unique += 1,
        }
        if class != Arrival::Duplicate {
            self.rtp.on_packet(seq, rtp_ts, arrival);
        }
        class
    }

    /// Packets the sequence numbers say were sent.
    pub fn expected(&self) -> u64 {
        match (self.first, self.ext.highest()) {
            (Some(f), Some(h)) => h - f + 1,
            _ => 0,
        }
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }

    /// RFC 3550 interarrival jitter.
    pub fn jitter(&self) -> Duration {
        self.rtp.jitter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_and_give_latency() {
        let mut p = Vec::new();
        stamped_payload(1_000, 400, 80, &mut p);
        assert_eq!(p.len(), 80);
        assert_eq!(&p[..3], &OPUS_FRAME);
        assert_eq!((read_stamp(&p), read_spurt(&p)), (Some(1_000), Some(400)));
        assert_eq!(latency(1_000, 26_000), Duration::from_millis(25));
        assert_eq!(latency(5_000, 4_000), Duration::ZERO, "clock skew never goes negative");
        assert_eq!(read_stamp(&OPUS_FRAME), None);
        assert_eq!(read_stamp(&[0xF8, 0xFF, 0xFE, b'S', b'F', b'U', b'L', 1, 2]), None);
        assert_eq!(read_stamp(b"opus"), None);
        let epoch = Instant::now();
        assert_eq!(micros_since(epoch, epoch + Duration::from_millis(3)), 3_000);
    }

    #[test]
    fn loss_counts_across_sequence_wrap_around() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(Ssrc(1), t0);
        let mut i = 0u32;
        for seq in (65_530u16..=65_535).chain(0..10) {
            i += 1;
            if seq == 65_533 || seq == 0 || seq == 7 {
                continue;
            }
            assert_eq!(s.on_packet(seq, 960 * i, t0 + Duration::from_millis(20 * u64::from(i))), Arrival::InOrder);
        }
        assert_eq!(s.expected(), 16);
        assert_eq!(s.lost(), 3);
    }

    #[test]
    fn duplicates_and_reordering_are_told_apart() {
        let t0 = Instant::now();
        let mut s = StreamStats::new(Ssrc(1), t0);
        assert_eq!(s.on_packet(10, 0, t0), Arrival::InOrder);
        assert_eq!(s.on_packet(12, 0, t0), Arrival::InOrder);
        assert_eq!(s.on_packet(11, 0, t0), Arrival::Late);
        assert_eq!(s.on_packet(11, 0, t0), Arrival::Duplicate);
        assert_eq!(s.on_packet(12, 0, t0), Arrival::Duplicate);
        assert_eq!((s.unique, s.duplicates, s.out_of_order, s.lost()), (3, 2, 1, 0));
        // A late packet from before the first is not loss either.
        assert_eq!(s.on_packet(9, 0, t0), Arrival::Late);
        assert_eq!((s.expected(), s.lost()), (4, 0));
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let t0 = Instant::now();
        let mut steady = StreamStats::new(Ssrc(1), t0);
        let mut wobbly = StreamStats::new(Ssrc(2), t0);
        for i in 0..200u32 {
            let sent = Duration::from_millis(20 * u64::from(i));
            steady.on_packet(i as u16, 960 * i, t0 + sent + Duration::from_millis(30));
            // Transit alternates 30 ms and 40 ms: |D| = 10 ms every packet, so J -> 10 ms.
            let transit = if i % 2 == 0 { 30 } else { 40 };
            wobbly.on_packet(i as u16, 960 * i, t0 + sent + Duration::from_millis(transit));
        }
        assert_eq!(steady.jitter(), Duration::ZERO);
        let j = wobbly.jitter();
        assert!(j > Duration::from_micros(9_900) && j <= Duration::from_millis(10), "{j:?}");
    }
}
