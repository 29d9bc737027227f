//! RTCP: RFC 3550 receive statistics and reports, sender reports, SDES, BYE, and the
//! parsing of what peers send us (SR, RR, NACK, BYE).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtcp::goodbye::Goodbye;
use rtcp::packet::Packet;
use rtcp::receiver_report::ReceiverReport;
use rtcp::sender_report::SenderReport;
use rtcp::source_description::{SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem};

pub use rtcp::reception_report::ReceptionReport;

use crate::slot::SeqExtender;
use crate::{Ssrc, OPUS_CLOCK_RATE};

/// Seconds from 1900 (NTP epoch) to 1970 (Unix epoch).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Maps `Instant`s to 64-bit NTP time from one (Instant, Unix time) pair given at start.
#[derive(Clone, Copy, Debug)]
pub struct NtpClock {
    base: Instant,
    base_unix: Duration,
}

impl NtpClock {
    pub fn new(base: Instant, base_unix: Duration) -> Self {
        NtpClock { base, base_unix }
    }

    pub fn ntp(&self, now: Instant) -> u64 {
        let t = self.base_unix + now.saturating_duration_since(self.base);
        let secs = t.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(t.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }
}

/// The middle 32 bits of an NTP time, as LSR and DLSR use.
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// RFC 3550 statistics of one incoming stream.
#[derive(Clone, Debug)]
pub struct ReceiveStats {
    pub ssrc: Ssrc,
    clock_base: Instant,
    ext: SeqExtender,
    base_ext: Option<u64>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units, scaled as RFC 3550 A.8 keeps it.
    jitter: f64,
    /// The previous packet's arrival (in timestamp units) and RTP timestamp.
    last_arrival: Option<(i64, u32)>,
    last_sr: Option<(u32, Instant)>,
}

impl ReceiveStats {
    pub fn new(ssrc: Ssrc, clock_base: Instant) -> Self {
        ReceiveStats {
            ssrc,
            clock_base,
            ext: SeqExtender::default(),
            base_ext: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_arrival: None,
            last_sr: None,
        }
    }

    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival: Instant) {
        let ext = self.ext.extend(seq);
        let base = *self.base_ext.get_or_insert(ext);
        if ext < base {
            self.base_ext = Some(ext);
        }
        self.received += 1;
        let arrival_units = (arrival.saturating_duration_since(self.clock_base).as_micros() as u64
            * u64::from(OPUS_CLOCK_RATE)
            / 1_000_000) as i64;
        if let Some((last_arrival, last_ts)) = self.last_arrival {
            // D(i,j) = (Rj - Ri) - (Sj - Si), with the timestamp difference taken modulo
            // 2^32 (signed), so a timestamp wrap is not a jump of the sender's clock.
            let sent = i64::from(rtp_ts.wrapping_sub(last_ts) as i32);
            let d = ((arrival_units - last_arrival) - sent).unsigned_abs() as f64;
            // Timestamps far apart (a new talk spurt after DTX) still count, as RFC 3550 does.
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_arrival = Some((arrival_units, rtp_ts));
    }

    pub fn on_sender_report(&mut self, ntp: u64, now: Instant) {
        self.last_sr = Some((ntp_middle(ntp), now));
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn expected(&self) -> u64 {
        match (self.base_ext, self.ext.highest()) {
            (Some(b), Some(h)) => h - b + 1,
            _ => 0,
        }
    }

    /// Cumulative lost packets (negative with duplicates, as RFC 3550 allows).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter / f64::from(OPUS_CLOCK_RATE))
    }

    /// A report block for this stream; advances the "since last report" interval.
    pub fn report_block(&mut self, now: Instant) -> ReceptionReport {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8).checked_div(expected_interval).map_or(0, |f| f.min(255) as u8);
        let (lsr, delay) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                (lsr, (d.as_micros() as u64 * 65536 / 1_000_000) as u32)
            }
            None => (0, 0),
        };
        ReceptionReport {
            ssrc: self.ssrc.0,
            fraction_lost,
            total_lost: self.lost().clamp(0, 0x7f_ffff) as u32,
            // Our extender starts at cycle 1; RFC 3550 counts cycles from 0.
            last_sequence_number: self.ext.highest().map_or(0, |h| h - (1 << 16)) as u32,
            jitter: self.jitter as u32,
            last_sender_report: lsr,
            delay,
        }
    }
}

/// Round-trip time from a report block about a stream we send (RFC 3550 6.4.1).
pub fn round_trip_time(block: &ReceptionReport, now_ntp: u64) -> Option<Duration> {
    if block.last_sender_report == 0 {
        return None;
    }
    let rtt = ntp_middle(now_ntp).wrapping_sub(block.last_sender_report).wrapping_sub(block.delay);
    // Anything over a minute is a clock or report error.
    (rtt < 60 * 65536).then(|| Duration::from_micros(u64::from(rtt) * 1_000_000 / 65536))
}

fn sdes(ssrc: Ssrc, cname: &str) -> Box<dyn Packet + Send + Sync> {
    Box::new(SourceDescription {
        chunks: vec![SourceDescriptionChunk {
            source: ssrc.0,
            items: vec![SourceDescriptionItem {
                sdes_type: SdesType::SdesCname,
                text: Bytes::copy_from_slice(cname.as_bytes()),
            }],
        }],
    })
}

/// What a sender report says about one stream we send.
#[derive(Clone, Copy, Debug)]
pub struct SenderInfo {
    pub ssrc: Ssrc,
    pub ntp: u64,
    pub rtp_time: u32,
    pub packets: u32,
    pub octets: u32,
}

/// SR + SDES for one sending stream, with report blocks (at most 31).
pub fn sender_report(info: SenderInfo, blocks: Vec<ReceptionReport>, cname: &str) -> Option<Bytes> {
    let packets: [Box<dyn Packet + Send + Sync>; 2] = [
        Box::new(SenderReport {
            ssrc: info.ssrc.0,
            ntp_time: info.ntp,
            rtp_time: info.rtp_time,
            packet_count: info.packets,
            octet_count: info.octets,
            reports: blocks.into_iter().take(31).collect(),
            profile_extensions: Bytes::new(),
        }),
        sdes(info.ssrc, cname),
    ];
    rtcp::packet::marshal(&packets).ok()
}

/// RR + SDES from a stream of ours that is not sending.
pub fn receiver_report(ssrc: Ssrc, blocks: Vec<ReceptionReport>, cname: &str) -> Option<Bytes> {
    let packets: [Box<dyn Packet + Send + Sync>; 2] = [
        Box::new(ReceiverReport {
            ssrc: ssrc.0,
            reports: blocks.into_iter().take(31).collect(),
            profile_extensions: Bytes::new(),
        }),
        sdes(ssrc, cname),
    ];
    rtcp::packet::marshal(&packets).ok()
}

/// BYE for streams that end; a compound packet must start with a report, so an
/// empty RR from the first source leads.
pub fn bye(sources: &[Ssrc], cname: &str) -> Option<Bytes> {
    let first = *sources.first()?;
    let packets: [Box<dyn Packet + Send + Sync>; 3] = [
        Box::new(ReceiverReport { ssrc: first.0, reports: vec![], profile_extensions: Bytes::new() }),
        sdes(first, cname),
        Box::new(Goodbye { sources: sources.iter().take(31).map(|s| s.0).collect(), reason: Bytes::new() }),
    ];
    rtcp::packet::marshal(&packets).ok()
}

/// What we act on in RTCP from a peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Feedback {
    SenderReport { ssrc: Ssrc, ntp: u64 },
    Report(ReceptionReport),
    Nack { media_ssrc: Ssrc, lost: u32 },
    Bye(Ssrc),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpError {
    #[error("malformed RTCP: {0}")]
    Malformed(String),
}

/// Parses a (decrypted) compound RTCP packet with our own bounds-checked reader; unknown
/// packet types are skipped. No library parser sees peer bytes.
pub fn parse_feedback(buf: &[u8]) -> Result<Vec<Feedback>, RtcpError> {
    let malformed = |what: &str| RtcpError::Malformed(what.to_owned());
    if buf.is_empty() {
        return Err(malformed("empty packet"));
    }
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let header = rest.get(..4).ok_or_else(|| malformed("truncated header"))?;
        if header[0] >> 6 != 2 {
            return Err(malformed("version is not 2"));
        }
        let count = usize::from(header[0] & 0x1f);
        let padded = header[0] & 0x20 != 0;
        let pt = header[1];
        let size = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        let packet = rest.get(..size).ok_or_else(|| malformed("length beyond the packet"))?;
        rest = &rest[size..];
        let mut body = &packet[4..];
        if padded {
            // Only the last packet of a compound may be padded.
            let pad = usize::from(*packet.last().unwrap_or(&0));
            if !rest.is_empty() || pad == 0 || pad > body.len() {
                return Err(malformed("bad padding"));
            }
            body = &body[..body.len() - pad];
        }
        let u32_at = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        match pt {
            200 => {
                if body.len() < 24 + 24 * count {
                    return Err(malformed("sender report shorter than its count"));
                }
                let ntp = (u64::from(u32_at(body, 4)) << 32) | u64::from(u32_at(body, 8));
                out.push(Feedback::SenderReport { ssrc: Ssrc(u32_at(body, 0)), ntp });
                out.extend(body[24..24 + 24 * count].chunks_exact(24).map(|b| Feedback::Report(report_block(b))));
            }
            201 => {
                if body.len() < 4 + 24 * count {
                    return Err(malformed("receiver report shorter than its count"));
                }
                out.extend(body[4..4 + 24 * count].chunks_exact(24).map(|b| Feedback::Report(report_block(b))));
            }
            203 => {
                if body.len() < 4 * count {
                    return Err(malformed("BYE shorter than its count"));
                }
                out.extend(body[..4 * count].chunks_exact(4).map(|b| Feedback::Bye(Ssrc(u32_at(b, 0)))));
            }
            // Generic NACK (RFC 4585 6.2.1): FMT 1 of transport-layer feedback.
            205 if count == 1 => {
                if body.len() < 8 {
                    return Err(malformed("NACK without its SSRCs"));
                }
                let lost = body[8..].chunks_exact(4).map(|n| 1 + u16::from_be_bytes([n[2], n[3]]).count_ones()).sum();
                out.push(Feedback::Nack { media_ssrc: Ssrc(u32_at(body, 4)), lost });
            }
            192..=223 => {}
            _ => return Err(malformed("not an RTCP packet type")),
        }
    }
    Ok(out)
}

/// Checks the clear part of an SRTCP packet: version 2 and a first packet that ends
/// before the `trailer` (E||index and tag).
pub fn protected_header_fits(buf: &[u8], trailer: usize) -> bool {
    let Some(h) = buf.get(..8) else { return false };
    let first = 4 * (usize::from(u16::from_be_bytes([h[2], h[3]])) + 1);
    h[0] >> 6 == 2 && buf.len() >= trailer + first
}

/// One 24-byte report block (RFC 3550 6.4.1).
fn report_block(b: &[u8]) -> ReceptionReport {
    let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    ReceptionReport {
        ssrc: u32_at(0),
        fraction_lost: b[4],
        total_lost: u32::from_be_bytes([0, b[5], b[6], b[7]]),
        last_sequence_number: u32_at(8),
        jitter: u32_at(12),
        last_sender_report: u32_at(16),
        delay: u32_at(20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_across_wrap_around() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(Ssrc(1), t0);
        for (i, seq) in (65530u16..=65535).chain(0..10).enumerate() {
            if seq == 2 || seq == 65533 {
                continue; // lost
            }
            s.on_packet(seq, 960 * i as u32, t0 + Duration::from_millis(20 * i as u64));
        }
        assert_eq!(s.expected(), 16);
        assert_eq!(s.lost(), 2);
        let block = s.report_block(t0);
        assert_eq!(block.total_lost, 2);
        assert_eq!(block.fraction_lost, (2 * 256 / 16) as u8);
        assert_eq!(block.last_sequence_number, (1 << 16) + 9);
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing_and_grows_with_variance() {
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(Ssrc(1), t0);
        for i in 0..50u32 {
            s.on_packet(i as u16, 960 * i, t0 + Duration::from_millis(20 * u64::from(i)));
        }
        assert_eq!(s.jitter(), Duration::ZERO);
        for i in 50..100u32 {
            let wobble = if i % 2 == 0 { 5 } else { 0 };
            s.on_packet(i as u16, 960 * i, t0 + Duration::from_millis(20 * u64::from(i) + wobble));
        }
        let j = s.jitter();
        assert!(j > Duration::from_millis(3) && j < Duration::from_millis(6), "{j:?}");
    }

    #[test]
    fn jitter_stays_zero_across_a_timestamp_wrap() {
        // A stream whose 32-bit RTP timestamp wraps half-way, paced perfectly: the wrap is
        // not a jump of the sender's clock (it once read as 481 s of jitter).
        let t0 = Instant::now();
        let mut s = ReceiveStats::new(Ssrc(1), t0);
        let first = u32::MAX - 960 * 25;
        for i in 0..50u32 {
            s.on_packet(i as u16, first.wrapping_add(960 * i), t0 + Duration::from_millis(20 * u64::from(i)));
        }
        assert_eq!(s.jitter(), Duration::ZERO);
        // And a wobble across the wrap reads as the wobble.
        let mut w = ReceiveStats::new(Ssrc(2), t0);
        for i in 0..50u32 {
            let wobble = if i % 2 == 0 { 5 } else { 0 };
            w.on_packet(i as u16, first.wrapping_add(960 * i), t0 + Duration::from_millis(20 * u64::from(i) + wobble));
        }
        let j = w.jitter();
        assert!(j > Duration::from_millis(3) && j < Duration::from_millis(6), "{j:?}");
    }

    #[test]
    fn reports_round_trip_and_give_rtt() {
        let t0 = Instant::now();
        let clock = NtpClock::new(t0, Duration::from_secs(1_700_000_000));
        let info = SenderInfo { ssrc: Ssrc(7), ntp: clock.ntp(t0), rtp_time: 1, packets: 2, octets: 3 };
        let sr = sender_report(info, vec![], "sfu").unwrap();
        let fb = parse_feedback(&sr).unwrap();
        assert_eq!(fb, vec![Feedback::SenderReport { ssrc: Ssrc(7), ntp: info.ntp }]);

        // The peer receives our SR at t0, answers 100 ms later; we get it at t0 + 150 ms.
        let mut peer = ReceiveStats::new(Ssrc(7), t0);
        peer.on_packet(1, 0, t0);
        peer.on_sender_report(info.ntp, t0);
        let block = peer.report_block(t0 + Duration::from_millis(100));
        let rr = receiver_report(Ssrc(9), vec![block], "peer").unwrap();
        let Feedback::Report(got) = &parse_feedback(&rr).unwrap()[0] else { panic!("no report") };
        let rtt = round_trip_time(got, clock.ntp(t0 + Duration::from_millis(150))).unwrap();
        assert!(rtt.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1), "{rtt:?}");

        let b = bye(&[Ssrc(7), Ssrc(8)], "sfu").unwrap();
        let fb = parse_feedback(&b).unwrap();
        assert!(fb.contains(&Feedback::Bye(Ssrc(8))));
    }

    #[test]
    fn malformed_rtcp_is_an_error() {
        assert!(parse_feedback(&[]).is_err());
        assert!(parse_feedback(&[0x80, 200, 0xff, 0xff, 0, 0, 0, 1]).is_err());
        let sr = sender_report(SenderInfo { ssrc: Ssrc(1), ntp: 0, rtp_time: 0, packets: 0, octets: 0 }, vec![], "x")
            .unwrap();
        for cut in 1..sr.len() {
            let _ = parse_feedback(&sr[..cut]);
        }
    }

    #[test]
    fn nacks_byes_and_padding_parse_as_the_rtcp_crate_writes_them() {
        use rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 2,
            nacks: vec![NackPair { packet_id: 10, lost_packets: 0b101 }, NackPair { packet_id: 40, lost_packets: 0 }],
        };
        let raw = rtcp::packet::marshal(&[Box::new(nack) as Box<dyn Packet + Send + Sync>]).unwrap();
        assert_eq!(parse_feedback(&raw).unwrap(), vec![Feedback::Nack { media_ssrc: Ssrc(2), lost: 4 }]);
        // A padded last packet: an RR with no blocks and 4 bytes of padding.
        let padded = [0xa0, 201, 0, 2, 0, 0, 0, 9, 0, 0, 0, 4];
        assert_eq!(parse_feedback(&padded).unwrap(), vec![]);
        let mut bad_pad = padded;
        bad_pad[11] = 9;
        assert!(parse_feedback(&bad_pad).is_err());
        // A report count larger than the packet holds.
        assert!(parse_feedback(&[0x81, 201, 0, 1, 0, 0, 0, 9]).is_err());
        assert!(parse_feedback(&[0x82, 203, 0, 1, 0, 0, 0, 9]).is_err());
    }

    proptest::proptest! {
        /// Reports the rtcp crate writes read back exactly, blocks and all.
        #[test]
        fn reads_what_the_rtcp_crate_writes(ssrc: u32, ntp: u64, blocks in proptest::collection::vec(
            (proptest::num::u32::ANY, proptest::num::u8::ANY, 0u32..0x80_0000, proptest::num::u32::ANY), 0..5)) {
            let blocks: Vec<ReceptionReport> = blocks.into_iter().map(|(ssrc, fraction_lost, total_lost, jitter)| ReceptionReport {
                ssrc, fraction_lost, total_lost, last_sequence_number: jitter ^ 7, jitter, last_sender_report: 3, delay: 4,
            }).collect();
            let info = SenderInfo { ssrc: Ssrc(ssrc), ntp, rtp_time: 1, packets: 2, octets: 3 };
            let raw = sender_report(info, blocks.clone(), "cname").unwrap();
            let mut expected = vec![Feedback::SenderReport { ssrc: Ssrc(ssrc), ntp }];
            expected.extend(blocks.into_iter().map(Feedback::Report));
            proptest::prop_assert_eq!(parse_feedback(&raw).unwrap(), expected);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut bytes = bytes;
            if bytes.len() > 1 { bytes[0] = 0x80 | (bytes[0] & 0x3f); bytes[1] = 200 + bytes[1] % 8; }
            let _ = parse_feedback(&bytes);
        }
    }
}
