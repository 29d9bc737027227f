//! STUN on the edge's UDP port: raw bytes, and binding requests with a known session's
//! ufrag and a valid MESSAGE-INTEGRITY, then mutated, so the integrity and fingerprint
//! checks and the response path run.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use media::ice::{binding_request, BindingRequest};
use media::srtp::ProtectionProfile;
use sfu_fuzz::EdgeHarness;

/// A binding request for a harness session, then damaged.
#[derive(Arbitrary, Debug)]
struct Check {
    client: u8,
    right_password: bool,
    flips: Vec<(u16, u8)>,
    cut: Option<u16>,
    tail: Vec<u8>,
    from_port: u16,
}

// First byte even: the rest is a raw datagram (seeds: real checks from Chromium and
// aiortc); odd: the rest describes a `Check`.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut h = EdgeHarness::new(ProtectionProfile::AeadAes128Gcm, false);
    let (packet, from) = match mode % 2 {
        0 => (rest.to_vec(), h.clients[0].addr),
        _ => {
            let Ok(Check { client, right_password, flips, cut, tail, from_port }) =
                Check::arbitrary(&mut Unstructured::new(rest))
            else {
                return;
            };
            let c = &h.clients[usize::from(client) % h.clients.len()];
            let pwd = if right_password { c.server_pwd.clone() } else { "wrongpasswordwrongpasswo".to_owned() };
            let Ok((mut p, _)) = binding_request(&c.server_ufrag, &c.client_ufrag, &pwd) else { return };
            for (at, x) in flips {
                let i = usize::from(at) % p.len();
                p[i] ^= x;
            }
            if let Some(cut) = cut {
                p.truncate(usize::from(cut) % (p.len() + 1));
            }
            p.extend_from_slice(&tail);
            (p, std::net::SocketAddr::from(([127, 0, 0, 2], from_port)))
        }
    };
    if let Ok(req) = BindingRequest::parse(&packet) {
        let _ = req.respond("serverpassword0000000000", from);
    }
    h.edge.handle_datagram(h.now, from, &packet);
    h.drain();
});
