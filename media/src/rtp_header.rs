//! A zero-copy view of incoming RTP headers and a writer for the headers we send.
//! Parsing never panics on network bytes; writing never allocates beyond the output buffer.

use crate::Ssrc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtpError {
    #[error("RTP packet shorter than its header")]
    Truncated,
    #[error("RTP version is not 2")]
    BadVersion,
    #[error("RTP padding larger than the payload")]
    BadPadding,
    #[error("RTP header extension element overruns the extension block")]
    BadExtension,
}

/// RFC 6464 level: `level` is -dBov in 0..=127 (0 loudest, 127 silence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLevel {
    pub level: u8,
    pub voice: bool,
}

impl AudioLevel {
    pub const SILENCE: AudioLevel = AudioLevel { level: 127, voice: false };

    fn from_byte(b: u8) -> Self {
        AudioLevel { level: b & 0x7f, voice: b & 0x80 != 0 }
    }

    pub fn to_byte(self) -> u8 {
        (self.level & 0x7f) | if self.voice { 0x80 } else { 0 }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RtpView<'a> {
    buf: &'a [u8],
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: Ssrc,
    csrc_count: usize,
    /// (profile, start, end) of the extension data.
    extension: Option<(u16, usize, usize)>,
    payload_start: usize,
    payload_end: usize,
}

impl<'a> RtpView<'a> {
    /// Parses a plaintext RTP packet: header, every extension element, padding.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        Self::parse_inner(buf, true)
    }

    /// Parses the clear header of an SRTP packet, before authentication: the same bounds
    /// checks, but padding is not interpreted (its count byte is encrypted).
    pub fn parse_protected(buf: &'a [u8]) -> Result<Self, RtpError> {
        Self::parse_inner(buf, false)
    }

    fn parse_inner(buf: &'a [u8], with_padding: bool) -> Result<Self, RtpError> {
        if buf.len() < 12 {
            return Err(RtpError::Truncated);
        }
        if buf[0] >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let padding = with_padding && buf[0] & 0x20 != 0;
        let has_extension = buf[0] & 0x10 != 0;
        let csrc_count = usize::from(buf[0] & 0x0f);
        let mut offset = 12 + 4 * csrc_count;
        if buf.len() < offset {
            return Err(RtpError::Truncated);
        }
        let mut extension = None;
        if has_extension {
            let header = buf.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
            let profile = u16::from_be_bytes([header[0], header[1]]);
            let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let start = offset + 4;
            let end = start + 4 * words;
            let data = buf.get(start..end).ok_or(RtpError::Truncated)?;
            if !extension_elements_fit(profile, data) {
                return Err(RtpError::BadExtension);
            }
            extension = Some((profile, start, end));
            offset = end;
        }
        let mut payload_end = buf.len();
        if padding {
            let pad = usize::from(*buf.last().ok_or(RtpError::Truncated)?);
            if pad == 0 || payload_end - offset < pad {
                return Err(RtpError::BadPadding);
            }
            payload_end -= pad;
        }
        Ok(RtpView {
            buf,
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: Ssrc(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]])),
            csrc_count,
            extension,
            payload_start: offset,
            payload_end,
        })
    }

    /// Bytes of the header: fixed part, CSRCs and extension block.
    pub fn header_len(&self) -> usize {
        self.payload_start
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_start..self.payload_end]
    }

    pub fn payload_range(&self) -> std::ops::Range<usize> {
        self.payload_start..self.payload_end
    }

    pub fn csrcs(&self) -> impl Iterator<Item = Ssrc> + 'a {
        let buf = self.buf;
        (0..self.csrc_count).map(move |i| {
            let o = 12 + 4 * i;
            Ssrc(u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]))
        })
    }

    /// The data of header extension `id`, one-byte (RFC 8285 0xBEDE) or two-byte form.
    pub fn extension(&self, id: u8) -> Option<&'a [u8]> {
        let (profile, start, end) = self.extension?;
        let mut found = None;
        walk_extension(profile, &self.buf[start..end], |ext_id, value| {
            if ext_id == id && found.is_none() {
                found = Some(value);
            }
        });
        found
    }

    pub fn audio_level(&self, id: u8) -> Option<AudioLevel> {
        self.extension(id).and_then(|v| v.first()).map(|&b| AudioLevel::from_byte(b))
    }
}

/// Walks the elements of an RFC 8285 extension block, calling `f(id, value)` for each;
/// false if an element overruns the block. Other profiles (RFC 3550 generic) are opaque.
fn walk_extension<'a>(profile: u16, data: &'a [u8], mut f: impl FnMut(u8, &'a [u8])) -> bool {
    let mut i = 0;
    if profile == 0xBEDE {
        while i < data.len() {
            let b = data[i];
            if b == 0 {
                i += 1;
                continue;
            }
            let id = b >> 4;
            if id == 15 {
                // RFC 8285: processing of the whole block stops at id 15.
                return true;
            }
            let len = usize::from(b & 0x0f) + 1;
            let Some(value) = data.get(i + 1..i + 1 + len) else { return false };
            f(id, value);
            i += 1 + len;
        }
    } else if profile & 0xfff0 == 0x1000 {
        while i < data.len() {
            let id = data[i];
            if id == 0 {
                i += 1;
                continue;
            }
            let Some(&len) = data.get(i + 1) else { return false };
            let len = usize::from(len);
            let Some(value) = data.get(i + 2..i + 2 + len) else { return false };
            f(id, value);
            i += 2 + len;
        }
    }
    true
}

fn extension_elements_fit(profile: u16, data: &[u8]) -> bool {
    walk_extension(profile, data, |_, _| {})
}

/// The header of a packet we send to a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: Ssrc,
    /// The speaker, named in the CSRC list.
    pub csrc: Option<Ssrc>,
    /// (extension id, level) for RFC 6464.
    pub audio_level: Option<(u8, AudioLevel)>,
    /// (extension id, level) for RFC 6465, about `csrc`.
    pub csrc_level: Option<(u8, u8)>,
}

impl OutHeader {
    /// Writes header and payload to `out` (cleared first).
    pub fn write(&self, payload: &[u8], out: &mut impl crate::buf::PacketBuf) {
        out.clear();
        let has_ext = self.audio_level.is_some() || self.csrc_level.is_some();
        let cc = u8::from(self.csrc.is_some());
        let mut fixed = [0u8; 16];
        fixed[0] = 0x80 | if has_ext { 0x10 } else { 0 } | cc;
        fixed[1] = if self.marker { 0x80 } else { 0 } | (self.payload_type & 0x7f);
        fixed[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        fixed[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        fixed[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
        let mut n = 12;
        if let Some(csrc) = self.csrc {
            fixed[12..16].copy_from_slice(&csrc.0.to_be_bytes());
            n = 16;
        }
        out.append(&fixed[..n]);
        if has_ext {
            // One-byte-header extension (RFC 8285): at most two elements, one word each
            // with padding.
            let mut ext = [0u8; 12];
            ext[..2].copy_from_slice(&[0xBE, 0xDE]);
            let mut len = 4;
            if let Some((id, level)) = self.audio_level {
                ext[len..len + 2].copy_from_slice(&[(id & 0x0f) << 4, level.to_byte()]);
                len += 2;
            }
            if let Some((id, level)) = self.csrc_level {
                ext[len..len + 2].copy_from_slice(&[(id & 0x0f) << 4, level & 0x7f]);
                len += 2;
            }
            let padded = 4 + (len - 4).div_ceil(4) * 4;
            let words = ((padded - 4) / 4) as u16;
            ext[2..4].copy_from_slice(&words.to_be_bytes());
            out.append(&ext[..padded]);
        }
        out.append(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn sample(level: Option<AudioLevel>) -> Vec<u8> {
        let mut out = Vec::new();
        OutHeader {
            payload_type: 111,
            marker: true,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: Ssrc(42),
            csrc: Some(Ssrc(7)),
            audio_level: level.map(|l| (1, l)),
            csrc_level: Some((3, 33)),
        }
        .write(b"opus", &mut out);
        out
    }

    #[test]
    fn writes_what_the_rtp_crate_reads() {
        let level = AudioLevel { level: 30, voice: true };
        let raw = sample(Some(level));
        let mut b = bytes::Bytes::from(raw.clone());
        let pkt = <rtp::packet::Packet as webrtc_util_rtp::Unmarshal>::unmarshal(&mut b).unwrap();
        assert_eq!(pkt.header.sequence_number, 65535);
        assert_eq!(pkt.header.timestamp, 0xdead_beef);
        assert_eq!(pkt.header.ssrc, 42);
        assert_eq!(pkt.header.csrc, vec![7]);
        assert!(pkt.header.marker);
        assert_eq!(pkt.header.get_extension(1).unwrap().chunk(), &[level.to_byte()]);
        assert_eq!(pkt.header.get_extension(3).unwrap().chunk(), &[33]);
        assert_eq!(&pkt.payload[..], b"opus");

        let view = RtpView::parse(&raw).unwrap();
        assert_eq!(view.audio_level(1), Some(level));
        assert_eq!(view.csrcs().collect::<Vec<_>>(), vec![Ssrc(7)]);
        assert_eq!(view.payload(), b"opus");
        assert!(view.marker);
    }

    #[test]
    fn reads_what_the_rtp_crate_writes() {
        let mut header = rtp::header::Header {
            version: 2,
            payload_type: 111,
            sequence_number: 9,
            timestamp: 960,
            ssrc: 5,
            ..Default::default()
        };
        header.set_extension(4, bytes::Bytes::from_static(&[0x80 | 45])).unwrap();
        let pkt = rtp::packet::Packet { header, payload: bytes::Bytes::from_static(b"xyz") };
        let raw = webrtc_util_rtp::Marshal::marshal(&pkt).unwrap();
        let view = RtpView::parse(&raw).unwrap();
        assert_eq!(view.sequence, 9);
        assert_eq!(view.audio_level(4), Some(AudioLevel { level: 45, voice: true }));
        assert_eq!(view.audio_level(1), None);
        assert_eq!(view.payload(), b"xyz");
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert_eq!(RtpView::parse(&[0x80; 11]).err(), Some(RtpError::Truncated));
        assert_eq!(RtpView::parse(&[0x40; 12]).err(), Some(RtpError::BadVersion));
        let mut cc15 = vec![0x8f; 12];
        cc15[1] = 111;
        assert_eq!(RtpView::parse(&cc15).err(), Some(RtpError::Truncated));
        let mut ext = sample(Some(AudioLevel::SILENCE));
        ext[18] = 0xff; // extension length beyond the packet
        assert_eq!(RtpView::parse(&ext).err(), Some(RtpError::Truncated));
        let mut pad = sample(None);
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert_eq!(RtpView::parse(&pad).err(), Some(RtpError::BadPadding));
        // The same packet before decryption: the padding count is ciphertext, not checked.
        assert!(RtpView::parse_protected(&pad).is_ok());
    }

    /// A short header whose extension elements claim more bytes than the block holds:
    /// the packet that made a library parser panic before SRTP authentication.
    fn overrunning_element(profile: u16, element: &[u8]) -> Vec<u8> {
        let mut p = vec![0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        let mut block = element.to_vec();
        block.resize(4, 0);
        p.extend_from_slice(&block);
        p
    }

    #[test]
    fn extension_elements_must_fit_their_block() {
        // One-byte form: id 1, length 16, in a 4-byte block.
        let one = overrunning_element(0xBEDE, &[0x1f, 1, 2, 3]);
        assert_eq!(RtpView::parse(&one).err(), Some(RtpError::BadExtension));
        assert_eq!(RtpView::parse_protected(&one).err(), Some(RtpError::BadExtension));
        // Two-byte form: id 1, length 200; and a length byte past the block.
        let two = overrunning_element(0x1000, &[1, 200, 0, 0]);
        assert_eq!(RtpView::parse(&two).err(), Some(RtpError::BadExtension));
        let cut = overrunning_element(0x1000, &[0, 0, 0, 1]);
        assert_eq!(RtpView::parse(&cut).err(), Some(RtpError::BadExtension));
        // Id 15 ends processing (RFC 8285); padding bytes are skipped; generic profiles are opaque.
        assert!(RtpView::parse(&overrunning_element(0xBEDE, &[0xff, 0, 0, 0])).is_ok());
        let padded = overrunning_element(0xBEDE, &[0, 0, 0x10, 0x85]);
        assert_eq!(RtpView::parse(&padded).unwrap().audio_level(1), Some(AudioLevel { level: 5, voice: true }));
        assert!(RtpView::parse(&overrunning_element(0x1234, &[0xff, 0xff, 0xff, 0xff])).is_ok());
    }

    proptest::proptest! {
        /// Whatever our bounds checks let through, the webrtc-rs header parser can read
        /// without panicking: our check is at least as strict as that parser needs.
        #[test]
        fn accepted_headers_are_safe_for_the_rtp_crate(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..48),
            profile in proptest::sample::select(vec![0xBEDEu16, 0x1000, 0x1003, 0x0001]),
            words in 0u16..6,
            cc in 0u8..3,
        ) {
            let mut p = vec![0x90 | cc, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
            p.extend(std::iter::repeat_n(0u8, 4 * usize::from(cc)));
            p.extend_from_slice(&profile.to_be_bytes());
            p.extend_from_slice(&words.to_be_bytes());
            p.extend_from_slice(&body);
            if RtpView::parse_protected(&p).is_ok() {
                let mut b = bytes::Bytes::from(p);
                let parsed = std::panic::catch_unwind(move || {
                    <rtp::header::Header as webrtc_util_rtp::Unmarshal>::unmarshal(&mut b).is_ok()
                });
                proptest::prop_assert!(parsed.is_ok(), "accepted a header the rtp crate panics on");
            }
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64), id in 0u8..16) {
            let mut bytes = bytes;
            if let Some(b) = bytes.first_mut() { *b = 0x90 | (*b & 0x2f); }
            if let Ok(v) = RtpView::parse(&bytes) {
                let _ = v.audio_level(id);
                let _ = v.csrcs().count();
                let _ = v.payload();
            }
        }
    }
}
