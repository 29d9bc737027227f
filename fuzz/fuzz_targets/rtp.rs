//! The RTP header view and the header writer: any bytes parse or fail cleanly, every
//! extension lookup stays in bounds, and headers we write read back the same.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use media::rtp_header::{AudioLevel, OutHeader, RtpView};
use media::slot::SlotRewriter;
use media::Ssrc;

#[derive(Arbitrary, Debug)]
struct Written {
    pt: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    csrc: Option<u32>,
    level: Option<(u8, u8)>,
    csrc_level: Option<(u8, u8)>,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Rest {
    written: Written,
    /// (speaker, sequence, timestamp, payload length, ms since the last) through one slot.
    rewrites: Vec<(u8, u16, u32, u16, u16)>,
}

// The whole input is parsed as an RTP packet (seeds: captured SRTP packets, whose
// headers are in the clear); the same bytes also describe a header to write and a
// sequence of packets through one listener slot.
fuzz_target!(|data: &[u8]| {
    for parsed in [RtpView::parse(data), RtpView::parse_protected(data)] {
        if let Ok(v) = parsed {
            for id in 0..=255u8 {
                let _ = v.extension(id);
            }
            let _ = (v.csrcs().count(), v.payload().len(), v.header_len());
        }
    }
    let Ok(input) = Rest::arbitrary(&mut Unstructured::new(data)) else { return };
    let w = input.written;
    let header = OutHeader {
        payload_type: w.pt & 0x7f,
        marker: w.marker,
        sequence: w.sequence,
        timestamp: w.timestamp,
        ssrc: Ssrc(w.ssrc),
        csrc: w.csrc.map(Ssrc),
        audio_level: w.level.map(|(id, l)| (1 + id % 14, AudioLevel { level: l & 0x7f, voice: l & 0x80 != 0 })),
        csrc_level: w.csrc_level.map(|(id, l)| (1 + id % 14, l & 0x7f)),
    };
    let mut out = Vec::new();
    header.write(&w.payload, &mut out);
    let v = RtpView::parse(&out).expect("what we write parses");
    assert_eq!((v.sequence, v.timestamp, v.ssrc, v.marker), (header.sequence, header.timestamp, header.ssrc, header.marker));
    assert_eq!(v.payload(), &w.payload[..]);
    if let Some((id, level)) = header.audio_level {
        assert_eq!(v.audio_level(id), Some(level));
    }
    let mut slot = SlotRewriter::new(Ssrc(1), 100, 1000);
    let mut now = std::time::Instant::now();
    for (speaker, seq, ts, len, dt) in input.rewrites {
        now += std::time::Duration::from_millis(u64::from(dt));
        let _ = slot.rewrite(Ssrc(u32::from(speaker % 4)), seq, ts, usize::from(len), now);
        if speaker == 255 {
            slot.detach();
        }
    }
});
