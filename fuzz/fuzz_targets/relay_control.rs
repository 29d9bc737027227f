//! Relay control streams: any bytes, pushed in arbitrary pieces, split into frames and
//! decoded; whatever decodes encodes back to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relay_proto::control::{FrameReader, Message};

// First byte: how the stream is cut into reads; the rest is the stream (seeds: the
// messages of a real edge-core session).
fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let _ = Message::decode(stream);
    let mut reader = FrameReader::default();
    let mut rest = stream;
    let pieces = [cut, cut.rotate_left(3), cut ^ 0x55];
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (usize::from(*sizes.next().unwrap_or(&255)) + 1).min(rest.len());
        reader.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match reader.next_message() {
                Ok(Some(m)) => {
                    let mut again = BytesMut::new();
                    m.encode(&mut again);
                    let mut check = FrameReader::default();
                    check.push(&again);
                    assert_eq!(check.next_message(), Ok(Some(m)));
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});
