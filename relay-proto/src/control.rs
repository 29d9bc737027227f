//! Control messages: `u32` big-endian length, a type byte, then the body. Strings are
//! `u16` length + UTF-8. Every length is bounded; decoding never panics.

use bytes::{Buf, BufMut, BytesMut};

/// Largest control frame accepted (type + body).
pub const MAX_FRAME: usize = 64 * 1024;
pub const MAX_STRING: usize = 1024;
pub const MAX_SLOTS: usize = 16;

/// A speaker holding a slot: its SFU speaker id (see [`crate::speaker`]) and participant id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotHolder {
    pub speaker: u32,
    pub participant: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Edge -> core, first message: who the edge is, where clients reach it, how many
    /// listeners it takes per channel (`capacity`) and sessions in all, and its region.
    Hello {
        version: u16,
        edge_id: String,
        signalling_url: String,
        capacity: u32,
        proof: [u8; 32],
        region: String,
        max_sessions: u32,
    },
    /// Core -> edge: accepted. `edge_number` is this edge's part of every speaker id it
    /// assigns ([`crate::speaker`]).
    Welcome {
        core_id: String,
        slots: u8,
        edge_number: u16,
        proof: [u8; 32],
    },
    /// Core -> edge: refused; the core closes the connection.
    Reject {
        reason: String,
    },
    /// Edge -> core: the edge has participants of `channel`.
    Subscribe {
        channel: String,
        listeners: u32,
    },
    /// Core -> edge: the id media datagrams of `channel` carry, and the epoch of the
    /// core's lease on it. An edge takes a channel's media only from the highest epoch
    /// it has seen, so an old owner is fenced off.
    Subscribed {
        channel: String,
        channel_id: u32,
        epoch: u64,
    },
    /// Core -> edge: another core owns `channel`; subscribe there (`host:port` of its
    /// relay endpoint). Also sent for a subscribed channel this core no longer owns.
    Redirect {
        channel: String,
        core: String,
    },
    /// Core -> edge: no core can serve `channel` now (its owner is being replaced, or
    /// the directory is unreachable); ask again after `retry_ms`.
    Unavailable {
        channel: String,
        retry_ms: u32,
    },
    /// Core -> edge: end the sessions of `participant` in `channel` (an operator's kick).
    Kick {
        channel: String,
        participant: String,
    },
    Unsubscribe {
        channel_id: u32,
    },
    /// Either way, every second: of the media datagrams this side expected from the other
    /// in the last interval, how many per thousand arrived only as a repair copy or not at
    /// all (the loss before repair). The other side sends repair copies while it is high.
    LinkQuality {
        lost_permille: u16,
    },
    /// Edge -> core: counts per channel.
    Load {
        channel_id: u32,
        listeners: u32,
        speakers: u32,
    },
    /// Edge -> core: who a speaker is, for listeners' displays.
    SpeakerInfo {
        channel_id: u32,
        speaker: u32,
        participant: String,
    },
    /// Core -> edge: who holds which slot now, as of the channel's selection number
    /// `selection` (datagrams carry the same number, so the newer of the two wins).
    Selection {
        channel_id: u32,
        selection: u32,
        slots: Vec<Option<SlotHolder>>,
    },
    /// Either way: take no new listeners; end within `deadline_ms`.
    Drain {
        deadline_ms: u32,
    },
    Goodbye {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("message truncated")]
    Truncated,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("string is not UTF-8 or too long")]
    BadString,
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("too many slots")]
    TooManySlots,
    #[error("empty frame")]
    Empty,
}

impl DecodeError {
    /// Whether the stream's framing is lost (the frame could not be skipped): the only
    /// error after which the connection cannot go on.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecodeError::TooLarge(_))
    }
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REJECT: u8 = 3;
    pub const SUBSCRIBE: u8 = 4;
    pub const SUBSCRIBED: u8 = 5;
    pub const UNSUBSCRIBE: u8 = 6;
    pub const LOAD: u8 = 7;
    pub const SPEAKER_INFO: u8 = 8;
    pub const SELECTION: u8 = 9;
    pub const DRAIN: u8 = 10;
    pub const GOODBYE: u8 = 11;
    pub const REDIRECT: u8 = 12;
    pub const UNAVAILABLE: u8 = 13;
    pub const KICK: u8 = 14;
    pub const LINK_QUALITY: u8 = 15;
}

/// Writes a string, truncated to at most `MAX_STRING` bytes at a character boundary so
/// the receiver always gets valid UTF-8.
fn put_str(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bytes32(&mut self) -> Result<[u8; 32], DecodeError> {
        self.need(32)?;
        let mut out = [0u8; 32];
        self.0.copy_to_slice(&mut out);
        Ok(out)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > MAX_STRING {
            return Err(DecodeError::BadString);
        }
        self.need(len)?;
        let s = std::str::from_utf8(&self.0[..len]).map_err(|_| DecodeError::BadString)?.to_owned();
        self.0.advance(len);
        Ok(s)
    }
}

impl Message {
    /// Appends the framed message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Message::Hello { version, edge_id, signalling_url, capacity, proof, region, max_sessions } => {
                out.put_u8(tag::HELLO);
                out.put_u16(*version);
                put_str(out, edge_id);
                put_str(out, signalling_url);
                out.put_u32(*capacity);
                out.put_slice(proof);
                // After the proof, so an older edge's hello still decodes to its version.
                put_str(out, region);
                out.put_u32(*max_sessions);
            }
            Message::Welcome { core_id, slots, edge_number, proof } => {
                out.put_u8(tag::WELCOME);
                put_str(out, core_id);
                out.put_u8(*slots);
                out.put_u16(*edge_number);
                out.put_slice(proof);
            }
            Message::Reject { reason } => {
                out.put_u8(tag::REJECT);
                put_str(out, reason);
            }
            Message::Subscribe { channel, listeners } => {
                out.put_u8(tag::SUBSCRIBE);
                put_str(out, channel);
                out.put_u32(*listeners);
            }
            Message::Subscribed { channel, channel_id, epoch } => {
                out.put_u8(tag::SUBSCRIBED);
                put_str(out, channel);
                out.put_u32(*channel_id);
                out.put_u64(*epoch);
            }
            Message::Redirect { channel, core } => {
                out.put_u8(tag::REDIRECT);
                put_str(out, channel);
                put_str(out, core);
            }
            Message::Unavailable { channel, retry_ms } => {
                out.put_u8(tag::UNAVAILABLE);
                put_str(out, channel);
                out.put_u32(*retry_ms);
            }
            Message::Kick { channel, participant } => {
                out.put_u8(tag::KICK);
                put_str(out, channel);
                put_str(out, participant);
            }
            Message::Unsubscribe { channel_id } => {
                out.put_u8(tag::UNSUBSCRIBE);
                out.put_u32(*channel_id);
            }
            Message::LinkQuality { lost_permille } => {
                out.put_u8(tag::LINK_QUALITY);
                out.put_u16(*lost_permille);
            }
            Message::Load { channel_id, listeners, speakers } => {
                out.put_u8(tag::LOAD);
                out.put_u32(*channel_id);
                out.put_u32(*listeners);
                out.put_u32(*speakers);
            }
            Message::SpeakerInfo { channel_id, speaker, participant } => {
                out.put_u8(tag::SPEAKER_INFO);
                out.put_u32(*channel_id);
                out.put_u32(*speaker);
                put_str(out, participant);
            }
            Message::Selection { channel_id, selection, slots } => {
                out.put_u8(tag::SELECTION);
                out.put_u32(*channel_id);
                out.put_u32(*selection);
                let slots = &slots[..slots.len().min(MAX_SLOTS)];
                out.put_u8(slots.len() as u8);
                for slot in slots {
                    match slot {
                        Some(h) => {
                            out.put_u8(1);
                            out.put_u32(h.speaker);
                            put_str(out, &h.participant);
                        }
                        None => out.put_u8(0),
                    }
                }
            }
            Message::Drain { deadline_ms } => {
                out.put_u8(tag::DRAIN);
                out.put_u32(*deadline_ms);
            }
            Message::Goodbye { reason } => {
                out.put_u8(tag::GOODBYE);
                put_str(out, reason);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one frame body (type byte and fields, without the length prefix).
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader(frame);
        let t = r.u8().map_err(|_| DecodeError::Empty)?;
        let m = match t {
            tag::HELLO => {
                let (version, edge_id, signalling_url, capacity, proof) =
                    (r.u16()?, r.string()?, r.string()?, r.u32()?, r.bytes32()?);
                // Versions before 3 end here; the core then refuses them by version.
                let (region, max_sessions) =
                    if version < 3 && r.0.is_empty() { (String::new(), 0) } else { (r.string()?, r.u32()?) };
                Message::Hello { version, edge_id, signalling_url, capacity, proof, region, max_sessions }
            }
            tag::WELCOME => {
                Message::Welcome { core_id: r.string()?, slots: r.u8()?, edge_number: r.u16()?, proof: r.bytes32()? }
            }
            tag::REJECT => Message::Reject { reason: r.string()? },
            tag::SUBSCRIBE => Message::Subscribe { channel: r.string()?, listeners: r.u32()? },
            tag::SUBSCRIBED => Message::Subscribed { channel: r.string()?, channel_id: r.u32()?, epoch: r.u64()? },
            tag::REDIRECT => Message::Redirect { channel: r.string()?, core: r.string()? },
            tag::UNAVAILABLE => Message::Unavailable { channel: r.string()?, retry_ms: r.u32()? },
            tag::KICK => Message::Kick { channel: r.string()?, participant: r.string()? },
            tag::UNSUBSCRIBE => Message::Unsubscribe { channel_id: r.u32()? },
            tag::LINK_QUALITY => Message::LinkQuality { lost_permille: r.u16()? },
            tag::LOAD => Message::Load { channel_id: r.u32()?, listeners: r.u32()?, speakers: r.u32()? },
            tag::SPEAKER_INFO => {
                Message::SpeakerInfo { channel_id: r.u32()?, speaker: r.u32()?, participant: r.string()? }
            }
            tag::SELECTION => {
                let (channel_id, selection) = (r.u32()?, r.u32()?);
                let n = usize::from(r.u8()?);
                if n > MAX_SLOTS {
                    return Err(DecodeError::TooManySlots);
                }
                let mut slots = Vec::with_capacity(n);
                for _ in 0..n {
                    slots.push(match r.u8()? {
                        0 => None,
                        _ => Some(SlotHolder { speaker: r.u32()?, participant: r.string()? }),
                    });
                }
                Message::Selection { channel_id, selection, slots }
            }
            tag::DRAIN => Message::Drain { deadline_ms: r.u32()? },
            tag::GOODBYE => Message::Goodbye { reason: r.string()? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing(r.0.len()));
        }
        Ok(m)
    }
}

/// Splits a byte stream into frames: push what the stream gave, pop messages.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or an error that
    /// ends the stream (the length is bounded before anything is buffered for it).
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(DecodeError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let frame = self.buf.split_to(len);
        Message::decode(&frame).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _.:/-]{0,40}"
    }

    proptest! {
        /// Any string, however long and whatever its characters, encodes to a frame that
        /// decodes (truncated to a prefix at a character boundary).
        #[test]
        fn any_participant_name_survives_the_codec(name in ".{0,1100}") {
            let m = Message::SpeakerInfo { channel_id: 1, speaker: 2, participant: name.clone() };
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            let mut reader = FrameReader::default();
            reader.push(&buf);
            match reader.next_message() {
                Ok(Some(Message::SpeakerInfo { participant, .. })) => prop_assert!(name.starts_with(&participant)),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let holder =
            (any::<u32>(), arb_string()).prop_map(|(speaker, participant)| SlotHolder { speaker, participant });
        prop_oneof![
            (3u16.., arb_string(), arb_string(), any::<u32>(), any::<[u8; 32]>(), arb_string(), any::<u32>()).prop_map(
                |(version, edge_id, signalling_url, capacity, proof, region, max_sessions)| Message::Hello {
                    version,
                    edge_id,
                    signalling_url,
                    capacity,
                    proof,
                    region,
                    max_sessions
                }
            ),
            (arb_string(), any::<u8>(), any::<u16>(), any::<[u8; 32]>()).prop_map(
                |(core_id, slots, edge_number, proof)| Message::Welcome { core_id, slots, edge_number, proof }
            ),
            arb_string().prop_map(|reason| Message::Reject { reason }),
            (arb_string(), any::<u32>()).prop_map(|(channel, listeners)| Message::Subscribe { channel, listeners }),
            (arb_string(), any::<u32>(), any::<u64>()).prop_map(|(channel, channel_id, epoch)| Message::Subscribed {
                channel,
                channel_id,
                epoch
            }),
            (arb_string(), arb_string()).prop_map(|(channel, core)| Message::Redirect { channel, core }),
            (arb_string(), any::<u32>()).prop_map(|(channel, retry_ms)| Message::Unavailable { channel, retry_ms }),
            (arb_string(), arb_string()).prop_map(|(channel, participant)| Message::Kick { channel, participant }),
            any::<u32>().prop_map(|channel_id| Message::Unsubscribe { channel_id }),
            any::<u16>().prop_map(|lost_permille| Message::LinkQuality { lost_permille }),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(channel_id, listeners, speakers)| Message::Load {
                channel_id,
                listeners,
                speakers
            }),
            (any::<u32>(), any::<u32>(), arb_string()).prop_map(|(channel_id, speaker, participant)| {
                Message::SpeakerInfo { channel_id, speaker, participant }
            }),
            (any::<u32>(), proptest::collection::vec(proptest::option::of(holder), 0..MAX_SLOTS)).prop_map(
                |(channel_id, slots)| Message::Selection { channel_id, selection: channel_id ^ 0x5555, slots }
            ),
            any::<u32>().prop_map(|deadline_ms| Message::Drain { deadline_ms }),
            arb_string().prop_map(|reason| Message::Goodbye { reason }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in arb_message()) {
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            let mut reader = FrameReader::default();
            // Fed one byte at a time, as a stream may deliver it.
            for b in buf.iter() {
                prop_assert_eq!(reader.next_message(), Ok(None));
                reader.push(&[*b]);
            }
            prop_assert_eq!(reader.next_message(), Ok(Some(m)));
            prop_assert_eq!(reader.next_message(), Ok(None));
        }

        #[test]
        fn truncated_frames_are_rejected(m in arb_message(), cut in 1usize..200) {
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            let body = &buf[4..];
            let cut = cut.min(body.len());
            if cut < body.len() {
                prop_assert!(Message::decode(&body[..cut]).is_err());
            }
        }

        #[test]
        fn corrupted_frames_never_panic(m in arb_message(), at in any::<usize>(), byte in any::<u8>()) {
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            let i = at % buf.len();
            buf[i] = byte;
            let mut reader = FrameReader::default();
            reader.push(&buf);
            let _ = reader.next_message();
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
        }
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        // 1023 ASCII bytes then a 4-byte character straddling the limit.
        let participant = format!("{}\u{1F600}tail", "a".repeat(MAX_STRING - 1));
        let m = Message::SpeakerInfo { channel_id: 1, speaker: 2, participant };
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        let mut reader = FrameReader::default();
        reader.push(&buf);
        match reader.next_message() {
            Ok(Some(Message::SpeakerInfo { participant, .. })) => assert_eq!(participant, "a".repeat(MAX_STRING - 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_frame_is_skipped_and_the_next_one_reads() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 2, 200, 1]);
        Message::Drain { deadline_ms: 5 }.encode(&mut buf);
        let mut reader = FrameReader::default();
        reader.push(&buf);
        let err = reader.next_message().unwrap_err();
        assert!(!err.is_fatal());
        assert_eq!(reader.next_message(), Ok(Some(Message::Drain { deadline_ms: 5 })));
        assert!(DecodeError::TooLarge(MAX_FRAME + 1).is_fatal());
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut reader = FrameReader::default();
        reader.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert_eq!(reader.next_message(), Err(DecodeError::TooLarge(MAX_FRAME + 1)));
        assert_eq!(Message::decode(&[200]), Err(DecodeError::UnknownType(200)));
        assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Message::decode(&[tag::DRAIN, 0, 0, 0, 1, 9]), Err(DecodeError::Trailing(1)));
        assert_eq!(Message::decode(&[tag::REJECT, 0, 2, 0xff, 0xfe]), Err(DecodeError::BadString));
        assert_eq!(Message::decode(&[tag::SELECTION, 0, 0, 0, 1, 0, 0, 0, 9, 17]), Err(DecodeError::TooManySlots));
    }
}
