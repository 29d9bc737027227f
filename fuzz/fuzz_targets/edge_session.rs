//! The edge's state machine driven by an arbitrary sequence of inputs from connected
//! sessions: RTP and RTCP encrypted with the sessions' real keys (so they pass SRTP and
//! reach forwarding, selection and reports), raw datagrams, STUN checks, DTLS, time, and
//! messages and datagrams from the core.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use media::srtp::ProtectionProfile;
use relay_proto::control::FrameReader;
use sfu_fuzz::{EdgeHarness, LEVEL_EXT, PT};

#[derive(Arbitrary, Debug)]
struct Rtp {
    client: u8,
    other_pt: Option<u8>,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u8,
    csrcs: Vec<u32>,
    /// (profile selector, extension block) or the audio level alone.
    ext: Option<(u8, Vec<u8>)>,
    level: Option<u8>,
    payload: Vec<u8>,
    padding: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Raw { client: u8, bytes: Vec<u8> },
    Stranger { port: u16, bytes: Vec<u8> },
    Rtp(Rtp),
    Rtcp { client: u8, compound: Vec<(u8, u8, Vec<u8>)> },
    Stun { client: u8, right_password: bool },
    Advance(u16),
    RelayControl(Vec<u8>),
    RelayDatagram(Vec<u8>),
    Remove(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    gcm: bool,
    cascade: bool,
    ops: Vec<Op>,
}

fn rtp_plaintext(r: &Rtp) -> Vec<u8> {
    let csrcs = &r.csrcs[..r.csrcs.len().min(15)];
    let mut p = vec![0x80 | csrcs.len() as u8, r.other_pt.unwrap_or(PT) & 0x7f | if r.marker { 0x80 } else { 0 }];
    p.extend_from_slice(&r.seq.to_be_bytes());
    p.extend_from_slice(&r.ts.to_be_bytes());
    p.extend_from_slice(&(0x5000 + u32::from(r.ssrc % 4)).to_be_bytes());
    for c in csrcs {
        p.extend_from_slice(&c.to_be_bytes());
    }
    let block = match (&r.ext, r.level) {
        (Some((profile, data)), _) => {
            let profile = match profile % 3 {
                0 => 0xBEDEu16,
                1 => 0x1000,
                _ => 0x0001,
            };
            let mut data = data.clone();
            data.truncate(64);
            while data.len() % 4 != 0 {
                data.push(0);
            }
            Some((profile, data))
        }
        (None, Some(level)) => Some((0xBEDE, vec![LEVEL_EXT << 4, level, 0, 0])),
        (None, None) => None,
    };
    if let Some((profile, data)) = block {
        p[0] |= 0x10;
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
        p.extend_from_slice(&data);
    }
    p.extend_from_slice(&r.payload[..r.payload.len().min(1200)]);
    if r.padding > 0 {
        p[0] |= 0x20;
        p.extend(std::iter::repeat_n(0, usize::from(r.padding) - 1));
        p.push(r.padding);
    }
    p
}

fuzz_target!(|input: Input| {
    let profile = if input.gcm { ProtectionProfile::AeadAes128Gcm } else { ProtectionProfile::Aes128CmHmacSha1_80 };
    let mut h = EdgeHarness::new(profile, input.cascade);
    let n = h.clients.len();
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Raw { client, bytes } => {
                let from = h.clients[usize::from(client) % n].addr;
                h.edge.handle_datagram(h.now, from, &bytes);
            }
            Op::Stranger { port, bytes } => {
                h.edge.handle_datagram(h.now, std::net::SocketAddr::from(([127, 0, 0, 3], port)), &bytes);
            }
            Op::Rtp(r) => {
                let c = &mut h.clients[usize::from(r.client) % n];
                let mut packet = rtp_plaintext(&r);
                if c.srtp.protect_rtp_in_place(&mut packet).is_err() {
                    // Not even a header: send it as it is.
                    packet = rtp_plaintext(&r);
                }
                let from = c.addr;
                h.edge.handle_datagram(h.now, from, &packet);
            }
            Op::Rtcp { client, compound } => {
                let mut packet = Vec::new();
                for (pt, count, mut body) in compound.into_iter().take(8) {
                    body.truncate(256);
                    while body.len() % 4 != 0 {
                        body.push(0);
                    }
                    packet.push(0x80 | (count & 0x1f));
                    packet.push(192 + pt % 32);
                    packet.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
                    packet.extend_from_slice(&body);
                }
                let c = &mut h.clients[usize::from(client) % n];
                if c.srtp.protect_rtcp_in_place(&mut packet).is_ok() {
                    let from = c.addr;
                    h.edge.handle_datagram(h.now, from, &packet);
                }
            }
            Op::Stun { client, right_password } => {
                let c = &h.clients[usize::from(client) % n];
                let pwd = if right_password { c.server_pwd.clone() } else { "x".repeat(24) };
                if let Ok((check, _)) = media::ice::binding_request(&c.server_ufrag, &c.client_ufrag, &pwd) {
                    h.edge.handle_datagram(h.now, c.addr, &check);
                }
            }
            Op::Advance(ms) => h.advance(ms % 5000),
            Op::RelayControl(bytes) => {
                let mut reader = FrameReader::default();
                reader.push(&bytes);
                while let Ok(Some(m)) = reader.next_message() {
                    h.edge.handle_relay_control(h.core, m, h.now);
                }
            }
            Op::RelayDatagram(bytes) => h.edge.handle_relay_datagram(h.core, &bytes::Bytes::from(bytes), h.now),
            Op::Remove(client) => {
                let id = h.clients[usize::from(client) % n].id;
                h.edge.remove_session(id, edge_sfu::edge::CloseReason::Deleted);
            }
        }
        h.drain();
    }
    let _ = h.edge.channel_view("lobby");
});
