//! Relay media datagrams, into a core with two subscribed edges and into a cascade edge.
#![no_main]

use bytes::Bytes;
use core_sfu::core::{Core, CoreConfig};
use libfuzzer_sys::fuzz_target;
use media::srtp::ProtectionProfile;
use relay_proto::control::Message;
use relay_proto::datagram::MediaHeader;
use sfu_fuzz::EdgeHarness;

// The input is one datagram (seeds: datagrams as edges send them), fed from both edges.
fuzz_target!(|data: &[u8]| {
    let datagrams = [data.to_vec(), data.to_vec()];
    let now = std::time::Instant::now();
    let mut core = Core::new(CoreConfig::default(), now);
    for edge in 1..=2 {
        let info = core_sfu::core::EdgeInfo {
            id: format!("e{edge}"),
            signalling_url: format!("http://e{edge}"),
            region: "local".into(),
            capacity: 25,
            max_sessions: 5000,
        };
        core.edge_joined(edge, info, now);
        core.handle_control(edge, Message::Subscribe { channel: "lobby".into(), listeners: 1 }, now);
    }
    let mut edge = EdgeHarness::new(ProtectionProfile::AeadAes128Gcm, true);
    for (i, d) in datagrams.into_iter().enumerate() {
        let d = Bytes::from(d);
        let _ = MediaHeader::decode(&d);
        core.handle_datagram(1 + (i as u64 % 2), d.clone(), now);
        edge.edge.handle_relay_datagram(edge.core, &d, edge.now);
    }
    while core.poll_output().is_some() {}
    edge.drain();
});
