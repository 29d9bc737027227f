//! Shared set-up for the fuzz targets: an edge core with connected sessions whose keys
//! the fuzzer knows, so generated packets pass ICE and SRTP and reach the code behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sfu::edge::{Edge, EdgeConfig, LinkId, NewSession, PublishParams, SessionId, SlotParams};
use media::srtp::{ProtectionProfile, SrtpKeys, SrtpSession};
use media::Ssrc;

pub const PT: u8 = 111;
pub const LEVEL_EXT: u8 = 1;
pub const CSRC_LEVEL_EXT: u8 = 3;

/// A client of the harness edge: its address, ICE credentials and SRTP keys.
pub struct Client {
    pub addr: SocketAddr,
    pub id: SessionId,
    pub server_ufrag: String,
    pub server_pwd: String,
    pub client_ufrag: String,
    pub srtp: SrtpSession,
}

pub struct EdgeHarness {
    pub edge: Edge,
    pub now: Instant,
    /// A publisher that also listens, a listener, and a pending session (ICE done, no DTLS).
    pub clients: Vec<Client>,
    /// The core link (cascade mode), subscribed to the channel as id 7.
    pub core: LinkId,
}

pub fn keys(profile: ProtectionProfile, is_client: bool) -> SrtpKeys {
    let len = 2 * (profile.key_len() + profile.salt_len());
    SrtpKeys { profile, material: (0..len as u8).map(|b| b.wrapping_mul(31).wrapping_add(7)).collect(), is_client }
}

impl EdgeHarness {
    pub fn new(profile: ProtectionProfile, cascade: bool) -> Self {
        let now = Instant::now();
        let config = EdgeConfig { cascade, ..Default::default() };
        let mut edge = Edge::new(config, now, Duration::from_secs(1_800_000_000));
        let core = edge.add_core("core:4433".into());
        let mut h = EdgeHarness { edge, now, clients: vec![], core };
        if cascade {
            h.edge.relay_connected(core, 3, now);
        }
        for (i, (publish, slots, connect)) in
            [(true, 2, true), (false, 3, true), (true, 1, false)].into_iter().enumerate()
        {
            let c = h.join(i as u16, publish, slots, connect, profile);
            h.clients.push(c);
        }
        if cascade {
            h.edge.handle_relay_control(
                core,
                relay_proto::control::Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
                now,
            );
        }
        h.drain();
        h
    }

    fn join(&mut self, i: u16, publish: bool, slots: usize, connect: bool, profile: ProtectionProfile) -> Client {
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + i));
        let (server_ufrag, server_pwd) = (format!("srv{i}ufrg"), format!("serverpassword{i:010}"));
        let client_ufrag = format!("cli{i}");
        let id = self
            .edge
            .add_session(
                NewSession {
                    channel: Arc::from("lobby"),
                    participant: Arc::from(format!("p{i}")),
                    local_ufrag: server_ufrag.clone(),
                    local_pwd: server_pwd.clone(),
                    remote_ufrag: client_ufrag.clone(),
                    publish: publish.then_some(PublishParams { payload_type: PT, audio_level_ext: Some(LEVEL_EXT) }),
                    slots: (0..slots)
                        .map(|s| SlotParams {
                            ssrc: Ssrc(1000 + u32::from(i) * 10 + s as u32),
                            payload_type: PT,
                            audio_level_ext: Some(LEVEL_EXT),
                            csrc_level_ext: Some(CSRC_LEVEL_EXT),
                        })
                        .collect(),
                    rtcp_ssrc: Ssrc(9),
                    client_ip: None,
                },
                self.now,
            )
            .expect("room for the harness sessions");
        let (check, _) = media::ice::binding_request(&server_ufrag, &client_ufrag, &server_pwd).expect("check");
        self.edge.handle_datagram(self.now, addr, &check);
        if connect {
            self.edge.dtls_established(id, &keys(profile, false), self.now);
        }
        let srtp = SrtpSession::new(&keys(profile, true)).expect("keys");
        Client { addr, id, server_ufrag, server_pwd, client_ufrag, srtp }
    }

    /// Drains the edge's outputs (what it would send), touching each so nothing is lazily skipped.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(o) = self.edge.poll_output() {
            if let edge_sfu::edge::Output::Transmit { data, .. } = o {
                n += data.len();
            }
        }
        n
    }

    pub fn advance(&mut self, ms: u16) {
        self.now += Duration::from_millis(u64::from(ms));
        self.edge.handle_timeout(self.now);
        self.drain();
    }
}
