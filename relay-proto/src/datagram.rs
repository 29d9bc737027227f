//! Media datagrams: a 20-byte header and one Opus payload.
//!
//! ```text
//! 0      ver(2) marker(1) voice(1) slot(4, 15 = none)
//! 1      copy(1) audio level, -dBov 0..=127 (7)
//! 2..6   channel id (core-assigned)
//! 6..10  speaker id (SFU-assigned, see `speaker`)
//! 10..12 RTP sequence number
//! 12..16 RTP timestamp
//! 16..20 selection number: the channel's selection the slot belongs to
//! 20..   payload
//! ```
//! An edge uplinks without a slot; the core stamps the slot and its selection number
//! into the header ([`stamp_slot`], in place) and forwards the one `Bytes` to every edge,
//! so an edge can forward a newly selected speaker's first packet on arrival, before the
//! selection message on the control stream.
//!
//! On a lossy link the sender may send each datagram twice, the second time marked as a
//! copy ([`mark_copy`]): the receiver keeps the first that arrives and counts a copy that
//! filled a hole as a repair.

use bytes::{BufMut, Bytes, BytesMut};

pub const HEADER_LEN: usize = 20;
/// Each end's heartbeat on a link, ten times a second: a zero byte and a 16-bit sequence
/// number. An edge that hears none for a few of them knows its link stalls, long before
/// QUIC would call it dead, and serves its own speakers meanwhile; both ends count the
/// ones lost, so a link's loss is known (and repair on) before any media flows on it.
pub const HEARTBEAT_LEN: usize = 3;
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// The stream heartbeats are counted as in a link's loss (no channel has id 0).
pub const HEARTBEAT_STREAM: (u32, u32) = (0, 0);

pub fn heartbeat(seq: u16) -> Bytes {
    let [hi, lo] = seq.to_be_bytes();
    Bytes::copy_from_slice(&[0, hi, lo])
}

/// The heartbeat's sequence number, if `d` is one.
pub fn heartbeat_seq(d: &[u8]) -> Option<u16> {
    (d.len() == HEARTBEAT_LEN && d[0] == 0).then(|| u16::from_be_bytes([d[1], d[2]]))
}

pub const MAX_PAYLOAD: usize = 1200;
const VERSION: u8 = 3;
/// Slots a datagram can name (four bits, the last value meaning none).
pub const MAX_SLOTS: usize = 15;
const NO_SLOT: u8 = 0x0f;
const COPY: u8 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaHeader {
    pub channel_id: u32,
    pub speaker: u32,
    pub sequence: u16,
    pub timestamp: u32,
    /// RFC 6464 level, -dBov.
    pub level: u8,
    pub voice: bool,
    pub marker: bool,
    /// The slot the core forwards it on (`None` from an edge).
    pub slot: Option<u8>,
    /// The channel's selection number that slot belongs to (0 from an edge).
    pub selection: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatagramError {
    #[error("datagram shorter than its header")]
    Truncated,
    #[error("unknown datagram version {0}")]
    Version(u8),
    #[error("payload of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("empty payload")]
    Empty,
}

impl MediaHeader {
    /// Appends header and payload to `out`.
    pub fn encode(&self, payload: &[u8], out: &mut BytesMut) {
        out.reserve(HEADER_LEN + payload.len());
        let slot = self.slot.map_or(NO_SLOT, |s| s.min(NO_SLOT - 1));
        out.put_u8(VERSION << 6 | u8::from(self.marker) << 5 | u8::from(self.voice) << 4 | slot);
        out.put_u8(self.level & 0x7f);
        out.put_u32(self.channel_id);
        out.put_u32(self.speaker);
        out.put_u16(self.sequence);
        out.put_u32(self.timestamp);
        out.put_u32(self.selection);
        out.put_slice(payload);
    }

    /// Splits a datagram into its header and a zero-copy slice of the payload.
    pub fn decode(datagram: &Bytes) -> Result<(MediaHeader, Bytes), DatagramError> {
        let h = Self::parse(datagram)?;
        Ok((h, datagram.slice(HEADER_LEN..)))
    }

    /// Parses and validates the header only.
    pub fn parse(d: &[u8]) -> Result<MediaHeader, DatagramError> {
        if d.len() < HEADER_LEN {
            return Err(DatagramError::Truncated);
        }
        let version = d[0] >> 6;
        if version != VERSION {
            return Err(DatagramError::Version(version));
        }
        let payload = d.len() - HEADER_LEN;
        if payload == 0 {
            return Err(DatagramError::Empty);
        }
        if payload > MAX_PAYLOAD {
            return Err(DatagramError::TooLarge(payload));
        }
        Ok(MediaHeader {
            marker: d[0] & 0x20 != 0,
            voice: d[0] & 0x10 != 0,
            level: d[1] & 0x7f,
            channel_id: u32::from_be_bytes([d[2], d[3], d[4], d[5]]),
            speaker: u32::from_be_bytes([d[6], d[7], d[8], d[9]]),
            sequence: u16::from_be_bytes([d[10], d[11]]),
            timestamp: u32::from_be_bytes([d[12], d[13], d[14], d[15]]),
            slot: Some(d[0] & 0x0f).filter(|&s| s != NO_SLOT),
            selection: u32::from_be_bytes([d[16], d[17], d[18], d[19]]),
        })
    }
}

/// Writes the slot and selection number into a datagram's header (and clears its copy
/// mark: what the core forwards is an original on the next link): in place when this is
/// the only reference to it (as a datagram just read is), else into a copy.
pub fn stamp_slot(datagram: Bytes, slot: u8, selection: u32) -> Bytes {
    let mut d = datagram.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    stamp_slot_in_place(&mut d, slot, selection);
    d.freeze()
}

/// Writes the slot and selection number into a datagram in place (and clears the copy
/// mark: what the core sends on is its own original).
pub fn stamp_slot_in_place(d: &mut [u8], slot: u8, selection: u32) {
    if d.len() >= HEADER_LEN {
        d[0] = (d[0] & 0xf0) | slot.min(NO_SLOT - 1);
        d[1] &= !COPY;
        d[16..20].copy_from_slice(&selection.to_be_bytes());
    }
}

/// The repair copy of a datagram: the same bytes with the copy mark set.
pub fn mark_copy(datagram: &[u8]) -> Bytes {
    let mut d = BytesMut::from(datagram);
    set_copy_mark(&mut d);
    d.freeze()
}

/// Sets the copy mark on a datagram written in place.
pub fn set_copy_mark(datagram: &mut [u8]) {
    if datagram.len() > 1 {
        datagram[1] |= COPY;
    }
}

/// Whether a datagram is a repair copy.
pub fn is_copy(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[1] & COPY != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(channel_id: u32, speaker: u32, sequence: u16, timestamp: u32, level in 0u8..128,
                       voice: bool, marker: bool, slot in proptest::option::of(0u8..15), selection: u32,
                       payload in proptest::collection::vec(any::<u8>(), 1..MAX_PAYLOAD)) {
            let h = MediaHeader { channel_id, speaker, sequence, timestamp, level, voice, marker, slot, selection };
            let mut out = BytesMut::new();
            h.encode(&payload, &mut out);
            let (back, p) = MediaHeader::decode(&out.freeze()).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(&p[..], &payload[..]);
            // Stamping a slot changes only the slot and the selection number.
            let stamped = stamp_slot(out_bytes(&h, &payload), 7, selection.wrapping_add(1));
            let (s, p2) = MediaHeader::decode(&stamped).unwrap();
            prop_assert_eq!(s, MediaHeader { slot: Some(7), selection: selection.wrapping_add(1), ..h });
            prop_assert_eq!(&p2[..], &payload[..]);
            // A copy reads the same, is marked, and loses the mark when the core stamps it.
            let copy = mark_copy(&out_bytes(&h, &payload));
            prop_assert!(is_copy(&copy) && !is_copy(&out_bytes(&h, &payload)));
            prop_assert_eq!(MediaHeader::parse(&copy).unwrap(), h);
            prop_assert!(!is_copy(&stamp_slot(copy, 3, 1)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = MediaHeader::decode(&Bytes::from(bytes));
        }
    }

    fn out_bytes(h: &MediaHeader, payload: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        h.encode(payload, &mut out);
        out.freeze()
    }

    #[test]
    fn malformed_datagrams_are_rejected() {
        let h = MediaHeader {
            channel_id: 1,
            speaker: 2,
            sequence: 3,
            timestamp: 4,
            level: 5,
            voice: true,
            marker: false,
            slot: None,
            selection: 0,
        };
        let mut out = BytesMut::new();
        h.encode(b"opus", &mut out);
        let good = out.freeze();
        for cut in 0..HEADER_LEN {
            assert_eq!(MediaHeader::parse(&good[..cut]), Err(DatagramError::Truncated));
        }
        assert_eq!(MediaHeader::parse(&good[..HEADER_LEN]), Err(DatagramError::Empty));
        let mut v1 = good.to_vec();
        v1[0] = (v1[0] & 0x3f) | 1 << 6;
        assert_eq!(MediaHeader::parse(&v1), Err(DatagramError::Version(1)));
        let mut big = BytesMut::new();
        h.encode(&[0u8; MAX_PAYLOAD + 1], &mut big);
        assert_eq!(MediaHeader::parse(&big), Err(DatagramError::TooLarge(MAX_PAYLOAD + 1)));
    }
}
