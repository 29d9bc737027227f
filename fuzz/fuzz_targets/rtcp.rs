//! Compound RTCP from peers: raw bytes, and compounds assembled with correct lengths so
//! the parser reaches every packet type's body.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use media::rtcp_report::{parse_feedback, protected_header_fits};

// First byte even: the rest is a compound packet as is (seeds: SR, RR, SDES, BYE and
// NACK as WebRTC stacks send them); odd: the rest lists packets to assemble.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = match mode % 2 {
        0 => rest.to_vec(),
        _ => {
            let Ok(packets) = Vec::<(u8, u8, bool, Vec<u8>)>::arbitrary(&mut Unstructured::new(rest)) else { return };
            let mut out = Vec::new();
            let n = packets.len();
            for (i, (pt, count, pad, mut body)) in packets.into_iter().enumerate() {
                body.truncate(1020);
                while body.len() % 4 != 0 {
                    body.push(0);
                }
                let padded = pad && i + 1 == n && !body.is_empty();
                if padded {
                    let last = body.len() - 1;
                    body[last] = (body.len() % 256) as u8;
                }
                out.push(0x80 | if padded { 0x20 } else { 0 } | (count & 0x1f));
                out.push(192 + pt % 32);
                out.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
                out.extend_from_slice(&body);
            }
            out
        }
    };
    let _ = parse_feedback(&bytes);
    let _ = protected_header_fits(&bytes, 14);
});
