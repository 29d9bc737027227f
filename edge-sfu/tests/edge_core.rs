//! The edge core on a virtual clock: real STUN checks and real SRTP from fake clients,
//! no sockets. Forwarding, slot continuity, caps, bad input and timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_sfu::edge::{
    AdmitError, DropReason, Edge, EdgeConfig, LinkId, NewSession, Output, PublishParams, SessionId, SlotParams,
};
use media::ice::{binding_request, parse_binding_success};
use media::rtcp_report::{self, Feedback, ReceiveStats};
use media::rtp_header::{AudioLevel, OutHeader, RtpView};
use media::srtp::{ProtectionProfile, SrtpKeys, SrtpSession};
use media::Ssrc;
use relay_proto::control::{Message, SlotHolder};
use relay_proto::datagram::MediaHeader;

/// Allocations this thread made while running `f` (the test binary's allocator counts
/// them, per thread: `allocation-counter`).
fn allocations_in(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

const PT: u8 = 111;
const LEVEL_EXT: u8 = 1;
const LOUD: AudioLevel = AudioLevel { level: 20, voice: true };

struct Client {
    addr: SocketAddr,
    id: SessionId,
    server_ufrag: String,
    server_pwd: String,
    client_ufrag: String,
    srtp: SrtpSession,
    ssrc: Ssrc,
    seq: u16,
    ts: u32,
    slots: Vec<Ssrc>,
}

/// An RTP packet a fake client received, decrypted.
#[derive(Clone, Debug)]
struct Seen {
    ssrc: Ssrc,
    seq: u16,
    ts: u32,
    csrcs: Vec<Ssrc>,
}

struct Net {
    edge: Edge,
    now: Instant,
    port: u16,
    /// Everything the edge sent, by destination, not yet read.
    inbox: Vec<(SocketAddr, Bytes)>,
    closed: Vec<SessionId>,
    dtls: Vec<(SessionId, Bytes)>,
    relay: Vec<Message>,
    /// Control messages with the core link they went to.
    relay_on: Vec<(LinkId, Message)>,
    uplink: Vec<Bytes>,
    /// Links the edge asked the shell to open (redirects to owning cores).
    opened: Vec<(LinkId, String)>,
    /// The configured core.
    core: LinkId,
    /// Links whose core is alive: they get heartbeats as time advances.
    beating: Vec<LinkId>,
    next_heartbeat: Instant,
    heartbeat_seq: u16,
}

impl Net {
    fn new(config: EdgeConfig) -> Net {
        let now = Instant::now();
        let mut edge = Edge::new(config, now, Duration::from_secs(1_800_000_000));
        let core = edge.add_core("core-a:4433".into());
        Net {
            edge,
            relay_on: Vec::new(),
            opened: Vec::new(),
            core,
            beating: vec![core],
            next_heartbeat: now,
            heartbeat_seq: 0,
            now,
            port: 10_000,
            inbox: Vec::new(),
            closed: Vec::new(),
            dtls: Vec::new(),
            relay: Vec::new(),
            uplink: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.edge.poll_output() {
            match o {
                Output::Transmit { to, data } => self.inbox.push((to, data)),
                Output::Closed { session, .. } => self.closed.push(session),
                Output::Dtls { session, data } => self.dtls.push((session, data)),
                Output::Relay { link, message } => {
                    self.relay.push(message.clone());
                    self.relay_on.push((link, message));
                }
                Output::Uplink { data, .. } => self.uplink.push(data),
                Output::OpenLink { link, addr } => self.opened.push((link, addr)),
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let next = self.edge.poll_timeout().min(end).max(self.now + Duration::from_millis(1));
            self.now = next.min(end);
            // Live cores send heartbeats every 100 ms.
            if self.now >= self.next_heartbeat {
                self.next_heartbeat = self.now + relay_proto::datagram::HEARTBEAT_INTERVAL;
                self.heartbeat_seq = self.heartbeat_seq.wrapping_add(1);
                for &link in &self.beating {
                    let beat = relay_proto::datagram::heartbeat(self.heartbeat_seq);
                    self.edge.handle_relay_datagram(link, &beat, self.now);
                }
            }
            self.edge.handle_timeout(self.now);
            self.drain();
        }
    }

    fn send(&mut self, from: SocketAddr, data: &[u8]) {
        self.edge.handle_datagram(self.now, from, data);
        self.drain();
    }

    fn try_join(&mut self, channel: &str, name: &str, publish: bool, slots: usize) -> Result<Client, AdmitError> {
        let (client, keys) = self.join_pending(channel, name, publish, slots)?;
        self.edge.dtls_established(client.id, &keys, self.now);
        self.drain();
        Ok(client)
    }

    /// A session that passed its ICE check but has not finished DTLS; and its server keys.
    fn join_pending(
        &mut self,
        channel: &str,
        name: &str,
        publish: bool,
        slots: usize,
    ) -> Result<(Client, SrtpKeys), AdmitError> {
        self.port += 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (server_ufrag, server_pwd) = media::ice::random_credentials();
        let (client_ufrag, _) = media::ice::random_credentials();
        let slots: Vec<Ssrc> = (0..slots).map(|i| Ssrc(u32::from(self.port) * 16 + i as u32)).collect();
        let id = self.edge.add_session(
            NewSession {
                channel: Arc::from(channel),
                participant: Arc::from(name),
                local_ufrag: server_ufrag.clone(),
                local_pwd: server_pwd.clone(),
                remote_ufrag: client_ufrag.clone(),
                publish: publish.then_some(PublishParams { payload_type: PT, audio_level_ext: Some(LEVEL_EXT) }),
                slots: slots
                    .iter()
                    .map(|&ssrc| SlotParams {
                        ssrc,
                        payload_type: PT,
                        audio_level_ext: Some(LEVEL_EXT),
                        csrc_level_ext: None,
                    })
                    .collect(),
                rtcp_ssrc: Ssrc(1),
                client_ip: None,
            },
            self.now,
        )?;
        let material: Vec<u8> = (0..56).map(|_| rand::random()).collect();
        let keys =
            |is_client| SrtpKeys { profile: ProtectionProfile::AeadAes128Gcm, material: material.clone(), is_client };
        let client = Client {
            addr,
            id,
            server_ufrag,
            server_pwd,
            client_ufrag,
            srtp: SrtpSession::new(&keys(true)).unwrap(),
            ssrc: Ssrc(u32::from(self.port) * 1000),
            seq: 65_500,
            ts: 1234,
            slots,
        };
        self.ice_check(&client);
        Ok((client, keys(false)))
    }

    fn join(&mut self, channel: &str, name: &str, publish: bool, slots: usize) -> Client {
        self.try_join(channel, name, publish, slots).unwrap()
    }

    fn ice_check(&mut self, c: &Client) {
        let (req, tid) = binding_request(&c.server_ufrag, &c.client_ufrag, &c.server_pwd).unwrap();
        self.send(c.addr, &req);
        let resp = self.take_for(c.addr).pop().expect("binding response");
        assert_eq!(parse_binding_success(&resp, &tid, &c.server_pwd).unwrap(), c.addr);
    }

    fn speak(&mut self, c: &mut Client, level: AudioLevel) {
        let protected = self.packet(c, level);
        self.send(c.addr, &protected);
    }

    /// The client's next SRTP packet.
    fn packet(&mut self, c: &mut Client, level: AudioLevel) -> Bytes {
        self.packet_with(c, Some(level))
    }

    /// The client's next SRTP packet, with or without an RFC 6464 level.
    fn packet_with(&mut self, c: &mut Client, level: Option<AudioLevel>) -> Bytes {
        let mut buf = Vec::new();
        OutHeader {
            payload_type: PT,
            marker: false,
            sequence: c.seq,
            timestamp: c.ts,
            ssrc: c.ssrc,
            csrc: None,
            audio_level: level.map(|l| (LEVEL_EXT, l)),
            csrc_level: None,
        }
        .write(&[0xfc, 0xff, 0xfe], &mut buf);
        c.seq = c.seq.wrapping_add(1);
        c.ts = c.ts.wrapping_add(960);
        c.srtp.protect_rtp(&buf).unwrap()
    }

    /// The speaker id the edge gave `name` in `channel` (the CSRC listeners get).
    fn id_of(&self, channel: &str, name: &str) -> Ssrc {
        let view = self.edge.channel_view(channel).expect("channel exists");
        let s = view.speakers.iter().find(|s| s.participant == name).unwrap_or_else(|| panic!("{name}: {view:?}"));
        Ssrc(s.id)
    }

    fn take_for(&mut self, addr: SocketAddr) -> Vec<Bytes> {
        let (mine, rest) = std::mem::take(&mut self.inbox).into_iter().partition(|(to, _)| *to == addr);
        self.inbox = rest;
        mine.into_iter().map(|(_, d)| d).collect()
    }

    /// Decrypts what `c` received: RTP as (ssrc, seq, ts, csrcs), RTCP feedback separately.
    fn received(&mut self, c: &mut Client) -> (Vec<Seen>, Vec<Feedback>) {
        let mut rtp = Vec::new();
        let mut rtcp = Vec::new();
        for d in self.take_for(c.addr) {
            match media::classify(&d) {
                media::PacketKind::Rtp => {
                    let plain = c.srtp.unprotect_rtp(&d).expect("edge RTP decrypts");
                    let v = RtpView::parse(&plain).unwrap();
                    assert_eq!(v.payload_type, PT);
                    rtp.push(Seen { ssrc: v.ssrc, seq: v.sequence, ts: v.timestamp, csrcs: v.csrcs().collect() });
                }
                media::PacketKind::Rtcp => {
                    let plain = c.srtp.unprotect_rtcp(&d).expect("edge RTCP decrypts");
                    rtcp.extend(rtcp_report::parse_feedback(&plain).unwrap());
                }
                other => panic!("unexpected {other:?} to a connected client"),
            }
        }
        (rtp, rtcp)
    }

    /// `n` packet intervals of 20 ms in which each of `speakers` sends one packet.
    fn talk(&mut self, speakers: &mut [&mut Client], levels: &[AudioLevel], n: usize) {
        for _ in 0..n {
            for (c, &l) in speakers.iter_mut().zip(levels) {
                self.speak(c, l);
            }
            self.advance(Duration::from_millis(20));
        }
    }
}

fn assert_continuous(packets: &[Seen]) {
    for w in packets.windows(2) {
        assert_eq!(w[1].ssrc, w[0].ssrc, "one slot, one SSRC");
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence continuous: {:?} -> {:?}", w[0], w[1]);
        let dt = w[1].ts.wrapping_sub(w[0].ts);
        assert!((960..48_000 * 10).contains(&dt), "timestamp moves forward: {:?} -> {:?}", w[0], w[1]);
    }
}

#[test]
fn speaker_reaches_every_listener_but_not_itself() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 3);
    let mut bob = net.join("lobby", "bob", false, 3);
    let mut carol = net.join("lobby", "carol", false, 3);
    let mut other = net.join("elsewhere", "dan", false, 3);
    net.talk(&mut [&mut alice], &[LOUD], 50);
    let alice_id = net.id_of("lobby", "alice");
    assert_ne!(alice_id, alice.ssrc, "the SFU names the speaker, not the client");
    for listener in [&mut bob, &mut carol] {
        let (rtp, _) = net.received(listener);
        // Selection needs a few packets of speech; after that every packet arrives.
        assert!(rtp.len() >= 45, "{} packets", rtp.len());
        assert!(rtp.iter().all(|p| p.ssrc == listener.slots[0] && p.csrcs == vec![alice_id]));
        assert_continuous(&rtp);
    }
    assert!(net.received(&mut alice).0.is_empty(), "alice hears herself");
    assert!(net.received(&mut other).0.is_empty(), "audio leaked to another channel");
}

#[test]
fn slot_stays_continuous_when_the_speaker_changes() {
    let mut net = Net::new(EdgeConfig { slots: 1, ..Default::default() });
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", true, 0);
    let mut listener = net.join("lobby", "listener", false, 1);
    net.talk(&mut [&mut alice, &mut bob], &[LOUD, AudioLevel::SILENCE], 100);
    // Alice stops (DTX: nothing sent); Bob starts.
    net.talk(&mut [&mut bob], &[LOUD], 150);
    let (rtp, _) = net.received(&mut listener);
    let speakers: Vec<Ssrc> = rtp.iter().map(|p| p.csrcs[0]).collect();
    let (alice_id, bob_id) = (net.id_of("lobby", "alice"), net.id_of("lobby", "bob"));
    let switch = speakers.iter().position(|&s| s == bob_id).expect("bob was forwarded");
    assert!(switch > 0 && speakers[..switch].iter().all(|&s| s == alice_id));
    assert!(speakers[switch..].iter().all(|&s| s == bob_id));
    assert_continuous(&rtp);
    // The timestamp gap at the switch follows the silence (at least a frame).
    assert!(rtp[switch].ts.wrapping_sub(rtp[switch - 1].ts) >= 960);
}

#[test]
fn channel_listener_cap_is_enforced_per_channel() {
    let mut net = Net::new(EdgeConfig { max_listeners_per_channel: 2, ..Default::default() });
    net.join("lobby", "l1", false, 3);
    net.join("lobby", "l2", false, 3);
    assert_eq!(net.try_join("lobby", "l3", false, 3).err(), Some(AdmitError::ChannelFull));
    assert_eq!(net.edge.admit("lobby", true, None), Err(AdmitError::ChannelFull));
    // A publish-only speaker is not a listener; other channels have their own cap.
    net.join("lobby", "speaker", true, 0);
    net.join("other", "l4", false, 3);
}

#[test]
fn dtls_only_reaches_a_session_from_its_checked_address() {
    let mut net = Net::new(EdgeConfig::default());
    let alice = net.join("lobby", "alice", false, 1);
    // A handshake record: epoch 0, one fragment (a Certificate) of a 4-byte message.
    let hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 11, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 3, 3, 0, 0];
    let spoofer: SocketAddr = "127.0.0.1:6666".parse().unwrap();
    net.send(spoofer, &hello);
    assert!(net.dtls.is_empty(), "spoofed DTLS reached a session");
    assert_eq!(net.edge.counters().dropped(DropReason::UnknownSource), 1);
    net.send(alice.addr, &hello);
    assert_eq!(net.dtls.len(), 1);
    assert_eq!(net.dtls[0].0, alice.id);
}

#[test]
fn bad_input_is_counted_and_dropped_without_harming_others() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 1);
    let stranger: SocketAddr = "127.0.0.1:7777".parse().unwrap();

    net.send(stranger, &vec![0x80; 1501]);
    assert_eq!(net.edge.counters().dropped(DropReason::Oversize), 1);
    net.send(stranger, &[70, 1, 2]);
    assert_eq!(net.edge.counters().dropped(DropReason::UnknownKind), 1);
    net.send(stranger, &[0, 1, 0, 4, 1, 2]);
    assert_eq!(net.edge.counters().dropped(DropReason::StunMalformed), 1);
    let (req, _) = binding_request("nosuchufrag", "x", "passwordpasswordpassword").unwrap();
    net.send(stranger, &req);
    assert_eq!(net.edge.counters().dropped(DropReason::StunUnknownUfrag), 1);
    let (req, _) = binding_request(&alice.server_ufrag, &alice.client_ufrag, "wrongpasswordwrongpasswo").unwrap();
    net.send(stranger, &req);
    assert_eq!(net.edge.counters().dropped(DropReason::StunBadCredentials), 1);
    assert!(net.take_for(stranger).is_empty(), "a bad check got an answer");
    net.send(stranger, &[0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(net.edge.counters().dropped(DropReason::UnknownSource), 1);
    // From alice's checked address: forged SRTP and SRTCP.
    net.send(alice.addr, &[0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    net.send(alice.addr, &[[0x80, 200, 0, 1, 0, 0, 0, 1].as_slice(), &[9; 32]].concat());
    assert_eq!(net.edge.counters().dropped(DropReason::SrtpAuth), 2);
    // Authentic SRTCP that is not valid RTCP.
    let junk = alice.srtp.protect_rtcp(&[0x80, 200, 0, 2, 0, 0, 0, 1, 1, 2, 3, 4]).unwrap();
    net.send(alice.addr, &junk);
    assert_eq!(net.edge.counters().dropped(DropReason::RtcpMalformed), 1);
    // Bob is a listener: his RTP is refused, counted.
    net.speak(&mut bob, LOUD);
    assert_eq!(net.edge.counters().dropped(DropReason::NotPublishing), 1);

    // And alice still reaches bob.
    net.talk(&mut [&mut alice], &[LOUD], 20);
    let (rtp, _) = net.received(&mut bob);
    let alice_id = net.id_of("lobby", "alice");
    assert!(rtp.len() >= 15 && rtp.iter().all(|p| p.csrcs == vec![alice_id]));
}

#[test]
fn rtp_before_dtls_is_dropped() {
    let mut net = Net::new(EdgeConfig::default());
    let id = net
        .edge
        .add_session(
            NewSession {
                channel: Arc::from("lobby"),
                participant: Arc::from("x"),
                local_ufrag: "srvufrag".into(),
                local_pwd: "serverpasswordserverpass".into(),
                remote_ufrag: "cli1".into(),
                publish: Some(PublishParams { payload_type: PT, audio_level_ext: None }),
                slots: vec![],
                rtcp_ssrc: Ssrc(1),
                client_ip: None,
            },
            net.now,
        )
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let (req, _) = binding_request("srvufrag", "cli1", "serverpasswordserverpass").unwrap();
    net.send(addr, &req);
    net.send(addr, &[0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3]);
    assert_eq!(net.edge.counters().dropped(DropReason::NotConnected), 1);
    // Never connects: closed after the connect timeout.
    net.advance(EdgeConfig::default().connect_timeout + Duration::from_secs(1));
    assert_eq!(net.closed, vec![id]);
}

#[test]
fn reports_flow_both_ways_and_silent_sessions_time_out() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 1);
    net.talk(&mut [&mut alice], &[LOUD], 60);
    let (rtp, rtcp) = net.received(&mut bob);
    // Bob got a sender report for his slot counting what was sent.
    let sr = rtcp.iter().find(|f| matches!(f, Feedback::SenderReport { ssrc, .. } if *ssrc == bob.slots[0]));
    assert!(sr.is_some(), "no SR for the slot: {rtcp:?}");
    // Alice got a receiver report about her stream with no loss.
    let (_, alice_rtcp) = net.received(&mut alice);
    let block = alice_rtcp.iter().find_map(|f| match f {
        Feedback::Report(b) if b.ssrc == alice.ssrc.0 => Some(b.clone()),
        _ => None,
    });
    let block = block.expect("receiver report about alice");
    assert_eq!(block.total_lost, 0);

    // Bob reports back: the edge learns his loss and the round-trip time.
    let mut stats = ReceiveStats::new(bob.slots[0], net.now);
    for p in &rtp {
        stats.on_packet(p.seq, p.ts, net.now);
    }
    if let Some(Feedback::SenderReport { ntp, .. }) = sr {
        stats.on_sender_report(*ntp, net.now);
    }
    let rr = rtcp_report::receiver_report(Ssrc(99), vec![stats.report_block(net.now)], "bob").unwrap();
    let protected = bob.srtp.protect_rtcp(&rr).unwrap();
    net.send(bob.addr, &protected);
    let link = net.edge.link_stats(bob.id).unwrap();
    assert!(link.rtt.is_some(), "{link:?}");

    // Everyone goes quiet: sessions end after the idle timeout, with a BYE.
    net.advance(EdgeConfig::default().idle_timeout + Duration::from_secs(2));
    let mut closed = net.closed.clone();
    closed.sort();
    assert_eq!(closed, vec![alice.id, bob.id]);
    let (_, rtcp) = net.received(&mut bob);
    assert!(rtcp.contains(&Feedback::Bye(bob.slots[0])), "{rtcp:?}");
    assert_eq!(net.edge.session_count(), 0);
}

fn core_datagram(channel_id: u32, speaker: u32, sequence: u16) -> Bytes {
    let mut out = bytes::BytesMut::new();
    MediaHeader {
        channel_id,
        speaker,
        sequence,
        timestamp: u32::from(sequence) * 960,
        level: 20,
        voice: true,
        marker: false,
        slot: None,
        selection: 0,
    }
    .encode(b"opus", &mut out);
    out.freeze()
}

#[test]
fn cascade_edge_uplinks_its_speakers_and_plays_the_cores_selection() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let mut alice = net.join("lobby", "alice", true, 3);
    let mut bob = net.join("lobby", "bob", false, 3);
    assert!(matches!(&net.relay[0], Message::Subscribe { channel, .. } if channel == "lobby"), "{:?}", net.relay);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    net.drain();
    assert!(net.relay.contains(&Message::Load { channel_id: 7, listeners: 2, speakers: 0 }), "{:?}", net.relay);

    net.talk(&mut [&mut alice], &[LOUD], 30);
    assert!(net.uplink.len() >= 25, "alice is uplinked: {}", net.uplink.len());
    let h = MediaHeader::parse(net.uplink.last().unwrap()).unwrap();
    let alice_id = net.id_of("lobby", "alice");
    assert_eq!(relay_proto::speaker::edge_of(alice_id.0), 5, "speaker ids carry the edge number the core gave");
    assert_eq!((h.channel_id, h.speaker, h.level), (7, alice_id.0, LOUD.level));
    assert!(net.received(&mut bob).0.is_empty(), "in cascade the core decides what bob hears");
    assert!(net.relay.iter().any(
        |m| matches!(m, Message::SpeakerInfo { speaker, participant, .. } if *speaker == alice_id.0 && participant == "alice")
    ));

    // The core selects a remote speaker and alice; both reach bob, alice never herself.
    let remote = 555u32;
    let holder = |speaker: u32, name: &str| Some(SlotHolder { speaker, participant: name.into() });
    net.edge.handle_relay_control(
        net.core,
        Message::Selection {
            channel_id: 7,
            selection: 1,
            slots: vec![holder(remote, "zoe"), holder(alice_id.0, "alice"), None],
        },
        net.now,
    );
    for seq in 0..20 {
        net.edge.handle_relay_datagram(net.core, &core_datagram(7, remote, seq), net.now);
        net.edge.handle_relay_datagram(net.core, &core_datagram(7, alice_id.0, seq), net.now);
        net.advance(Duration::from_millis(20));
    }
    let (rtp, _) = net.received(&mut bob);
    let on_slot = |slot: usize| rtp.iter().filter(|p| p.ssrc == bob.slots[slot]).collect::<Vec<_>>();
    assert_eq!(on_slot(0).len(), 20);
    let on_slot_zero_last = on_slot(0).last().unwrap().seq;
    assert!(on_slot(0).iter().all(|p| p.csrcs == vec![Ssrc(remote)]));
    assert_eq!(on_slot(1).len(), 20);
    assert!(on_slot(1).iter().all(|p| p.csrcs == vec![alice_id]));
    let (alice_rtp, _) = net.received(&mut alice);
    assert!(alice_rtp.iter().all(|p| p.csrcs == vec![Ssrc(remote)]), "alice hears only zoe");
    assert_eq!(alice_rtp.len(), 20);
    let view = net.edge.channel_view("lobby").unwrap();
    assert!(view.speakers.iter().any(|s| s.participant == "zoe" && s.slot == Some(0)), "{view:?}");

    // Bad datagrams from the core are counted and dropped.
    net.edge.handle_relay_datagram(net.core, &Bytes::from_static(b"\x40junk"), net.now);
    net.edge.handle_relay_datagram(net.core, &core_datagram(99, remote, 1), net.now);
    net.edge.handle_relay_datagram(net.core, &core_datagram(7, 4242, 1), net.now);
    assert_eq!(net.edge.counters().dropped(DropReason::RelayMalformed), 1);
    assert_eq!(net.edge.counters().dropped(DropReason::RelayUnknownChannel), 1);
    assert_eq!(net.edge.counters().dropped(DropReason::RelayNotSelected), 1);

    // The link drops and returns: the edge subscribes again; listeners were never touched.
    net.relay.clear();
    net.edge.relay_disconnected(net.core, net.now);
    net.edge.relay_connected(net.core, 6, net.now);
    net.drain();
    assert!(
        matches!(&net.relay[..], [Message::Subscribe { channel, listeners: 2 }] if channel == "lobby"),
        "{:?}",
        net.relay
    );
    assert_eq!(net.edge.session_count(), 2);
    // The new core already selected the same speaker: bob's slot still continues at +1.
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 8, epoch: 1 },
        net.now,
    );
    net.edge.handle_relay_control(
        net.core,
        Message::Selection { channel_id: 8, selection: 1, slots: vec![holder(remote, "zoe")] },
        net.now,
    );
    net.edge.handle_relay_datagram(net.core, &core_datagram(8, remote, 500), net.now);
    net.drain();
    let (rtp, _) = net.received(&mut bob);
    assert_eq!(rtp.len(), 1);
    assert_eq!(rtp[0].seq, on_slot_zero_last.wrapping_add(1), "slot 0 continues across the core restart");
}

#[test]
fn a_session_that_lost_its_address_does_not_take_the_new_owners_mapping_with_it() {
    let mut net = Net::new(EdgeConfig::default());
    let bob = net.join("lobby", "bob", false, 1);
    // Carol's client reuses Bob's address (a restarted client behind the same port).
    let mut carol = net.join("lobby", "carol", true, 1);
    carol.addr = bob.addr;
    net.ice_check(&carol);
    net.edge.remove_session(bob.id, edge_sfu::edge::CloseReason::Deleted);
    net.drain();
    // What Carol sends from the shared address still reaches her session.
    let before = net.edge.counters().rtp_in;
    net.speak(&mut carol, LOUD);
    assert_eq!(net.edge.counters().dropped(DropReason::UnknownSource), 0);
    assert_eq!(net.edge.counters().rtp_in, before + 1);
}

/// A short RTP header whose extension element claims more bytes than the block holds.
fn overrunning_extension(profile: u16, element: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x90, PT, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
    p.extend_from_slice(&profile.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&element);
    p
}

#[test]
fn malformed_rtp_from_a_connected_session_never_reaches_srtp_and_others_keep_hearing() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 1);
    let mallory = net.join("lobby", "mallory", true, 1);
    let eve = net.join("lobby", "eve", false, 1);
    let hostile = [
        overrunning_extension(0xBEDE, [0x1f, 1, 2, 3]),
        overrunning_extension(0x1000, [1, 200, 0, 0]),
        overrunning_extension(0x1000, [0, 0, 0, 1]),
        // Fifteen CSRCs announced, none present.
        vec![0x8f, PT, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3, 4],
    ];
    for p in &hostile {
        net.send(mallory.addr, p);
        net.send(eve.addr, p);
    }
    assert_eq!(net.edge.counters().dropped(DropReason::RtpMalformed), hostile.len() as u64);
    assert_eq!(
        net.edge.counters().dropped(DropReason::NotPublishing),
        hostile.len() as u64,
        "a listener's RTP is refused first"
    );
    net.talk(&mut [&mut alice], &[LOUD], 20);
    let (rtp, _) = net.received(&mut bob);
    let alice_id = net.id_of("lobby", "alice");
    assert!(rtp.len() >= 15 && rtp.iter().all(|p| p.csrcs == vec![alice_id]), "{}", rtp.len());
}

#[test]
fn a_sender_over_its_rate_is_held_to_it_and_listeners_keep_hearing() {
    let mut net = Net::new(EdgeConfig::default());
    let mut flooder = net.join("lobby", "flooder", true, 0);
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 3);
    let rate = EdgeConfig::default().limits.packets_per_sec as u64;
    let seconds = 5;
    for _ in 0..seconds * 50 {
        // Ten packets per 20 ms: ten times an Opus sender.
        for _ in 0..10 {
            net.speak(&mut flooder, LOUD);
        }
        net.speak(&mut alice, LOUD);
        net.advance(Duration::from_millis(20));
    }
    let limited = net.edge.counters().dropped(DropReason::RateLimited);
    let flooded = seconds * 500;
    assert!(limited >= flooded - (seconds + 1) * rate, "{limited} of {flooded} dropped");
    let (rtp, _) = net.received(&mut bob);
    let alice_id = net.id_of("lobby", "alice");
    let from_alice = rtp.iter().filter(|p| p.csrcs == vec![alice_id]).count() as u64;
    assert!(from_alice >= seconds * 50 - 10, "alice lost packets to the flood: {from_alice}");
}

fn dtls_record(content_type: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
    let mut r = vec![content_type, 0xfe, 0xfd];
    r.extend_from_slice(&epoch.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

#[test]
fn dtls_before_the_handshake_is_filtered_and_held_to_an_allowance() {
    let mut net = Net::new(EdgeConfig::default());
    let (pending, _) = net.join_pending("lobby", "mallory", false, 1).unwrap();
    // Records a client cannot send yet: later epochs, application data, empty fragments.
    for epoch in [2u16, 3, 0x7fff] {
        net.send(pending.addr, &dtls_record(22, epoch, &[0; 64]));
    }
    net.send(pending.addr, &dtls_record(23, 1, &[0; 64]));
    net.send(pending.addr, &dtls_record(22, 0, &[1, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(net.edge.counters().dropped(DropReason::DtlsRejected), 5);
    assert!(net.dtls.is_empty());
    // Tiny but well-formed fragments, a thousand of them, spread over time: only the
    // handshake allowance reaches the DTLS task, whatever the pace.
    for i in 0..1000u32 {
        let fragment = [11, 0, 0, 100, 0, 0, 0, 0, (i % 99) as u8, 0, 0, 1, 0xaa];
        net.send(pending.addr, &dtls_record(22, 0, &fragment));
        net.advance(Duration::from_millis(5));
    }
    let limits = EdgeConfig::default().limits;
    assert_eq!(net.dtls.len(), limits.handshake_records);
    assert!(net.edge.counters().dropped(DropReason::DtlsOverBudget) >= 900);
}

#[test]
fn a_panic_while_handling_one_input_closes_that_session_only() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 1);
    let mallory = net.join("lobby", "mallory", true, 1);
    // As if a library parser panicked on a datagram from mallory's address.
    net.edge.contain(Some(mallory.addr), "datagram", |_| panic!("library bug"));
    net.drain();
    assert_eq!(net.closed, vec![mallory.id]);
    assert_eq!(net.edge.counters().panics, 1);
    // From an address no session owns: counted, nothing closed.
    net.edge.contain(Some("127.0.0.1:9".parse().unwrap()), "datagram", |_| panic!("library bug"));
    net.drain();
    assert_eq!((net.closed.len(), net.edge.counters().panics), (1, 2));
    net.talk(&mut [&mut alice], &[LOUD], 20);
    let (rtp, _) = net.received(&mut bob);
    let alice_id = net.id_of("lobby", "alice");
    assert!(rtp.len() >= 15 && rtp.iter().all(|p| p.csrcs == vec![alice_id]), "{}", rtp.len());
    assert_eq!(net.edge.session_count(), 2);
}

#[test]
fn reusing_another_speakers_ssrc_silences_nobody() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut mallory = net.join("lobby", "mallory", true, 0);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.talk(&mut [&mut alice], &[LOUD], 20);
    let _ = net.received(&mut bob);
    // Mallory's client sends on alice's SSRC, quietly and then loudly.
    mallory.ssrc = alice.ssrc;
    net.talk(&mut [&mut alice, &mut mallory], &[LOUD, AudioLevel::SILENCE], 50);
    net.talk(&mut [&mut alice, &mut mallory], &[LOUD, LOUD], 50);
    let (alice_id, mallory_id) = (net.id_of("lobby", "alice"), net.id_of("lobby", "mallory"));
    assert_ne!(alice_id, mallory_id);
    let (rtp, _) = net.received(&mut bob);
    let from = |id: Ssrc| rtp.iter().filter(|p| p.csrcs == vec![id]).count();
    assert_eq!(from(alice_id), 100, "every packet of alice's still arrives, as hers");
    assert!(from(mallory_id) >= 40, "mallory is heard as herself once loud: {}", from(mallory_id));
    let alice_slot: Vec<&Seen> = rtp.iter().filter(|p| p.csrcs == vec![alice_id]).collect();
    assert!(alice_slot.iter().all(|p| p.ssrc == alice_slot[0].ssrc), "alice keeps her slot");
}

#[test]
fn publishers_without_levels_yield_their_slots_to_real_speakers() {
    let mut net = Net::new(EdgeConfig::default());
    let mut mute: Vec<Client> = (0..3).map(|i| net.join("lobby", &format!("nolevel-{i}"), true, 0)).collect();
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 3);
    let soft = AudioLevel { level: 45, voice: true };
    // Three publishers that never send a level fill the three slots...
    for _ in 0..50 {
        for c in mute.iter_mut() {
            let p = net.packet_with(c, None);
            net.send(c.addr, &p);
        }
        net.advance(Duration::from_millis(20));
    }
    // ...and go on sending while alice speaks softly, for 3 s.
    for _ in 0..150 {
        for c in mute.iter_mut() {
            let p = net.packet_with(c, None);
            net.send(c.addr, &p);
        }
        net.speak(&mut alice, soft);
        net.advance(Duration::from_millis(20));
    }
    let alice_id = net.id_of("lobby", "alice");
    let (rtp, _) = net.received(&mut bob);
    let heard = rtp.iter().filter(|p| p.csrcs == vec![alice_id]).count();
    // The minimum hold (1 s) passes, then alice takes a slot and keeps it.
    assert!(heard >= 90, "alice heard for {heard} of 150 packets");
}

/// A ClientHello body: version, random, no session id or cookie, one suite, null
/// compression, then `extensions` as the extensions block.
fn client_hello(extensions: &[u8]) -> Vec<u8> {
    let mut b = vec![0xfe, 0xfd];
    b.extend_from_slice(&[7; 32]);
    b.extend_from_slice(&[0, 0, 0, 2, 0xc0, 0x2b, 1, 0]);
    b.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    b.extend_from_slice(extensions);
    b
}

/// The body split into two handshake fragments, each in its own record and datagram.
fn hello_in_two(body: &[u8]) -> [Vec<u8>; 2] {
    let fragment = |offset: usize, data: &[u8]| {
        let u24 = |v: usize| [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        let mut f = vec![1];
        f.extend_from_slice(&u24(body.len()));
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&u24(offset));
        f.extend_from_slice(&u24(data.len()));
        f.extend_from_slice(data);
        dtls_record(22, 0, &f)
    };
    [fragment(0, &body[..30]), fragment(30, &body[30..])]
}

#[test]
fn a_fragmented_client_hello_reaches_the_dtls_library_only_whole_and_checked() {
    let mut net = Net::new(EdgeConfig::default());
    let (pending, _) = net.join_pending("lobby", "p", false, 1).unwrap();
    // An extension header cut short at the end of its block, split over two datagrams:
    // webrtc-dtls 0.12 indexes past its buffer on it (found by fuzzing).
    let [a, b] = hello_in_two(&client_hello(&[0, 0x0e, 0, 1, 7, 0, 0x17]));
    net.send(pending.addr, &a);
    assert!(net.dtls.is_empty(), "the first part is held");
    net.send(pending.addr, &b);
    assert!(net.dtls.is_empty(), "neither part reaches the library");
    assert_eq!(net.edge.counters().dropped(DropReason::DtlsRejected), 1);
    // A good one, parts out of order: both released, in the order they came.
    let [a, b] = hello_in_two(&client_hello(&[0, 0x0e, 0, 5, 0, 2, 0, 7, 0]));
    net.send(pending.addr, &b);
    assert!(net.dtls.is_empty());
    net.send(pending.addr, &a);
    let released: Vec<&[u8]> = net.dtls.iter().map(|(_, d)| &d[..]).collect();
    assert_eq!(released, vec![&b[..], &a[..]]);
}

#[test]
fn a_draining_edge_takes_nobody_new_and_ends_the_rest_at_its_deadline() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 1, net.now);
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    net.relay.clear();
    assert!(net.edge.is_ready());
    net.edge.drain(net.now + Duration::from_secs(5), net.now);
    net.drain();
    assert!(!net.edge.is_ready() && net.edge.is_draining());
    assert!(
        net.relay.iter().any(|m| matches!(m, Message::Drain { deadline_ms: 5000 })),
        "the core is told: {:?}",
        net.relay
    );
    assert_eq!(net.try_join("lobby", "carol", false, 3).err(), Some(AdmitError::Draining));
    // Until the deadline the sessions go on: alice is uplinked, bob hears the core.
    net.edge.handle_relay_control(
        net.core,
        Message::Selection {
            selection: 1,
            channel_id: 7,
            slots: vec![Some(SlotHolder { speaker: 9 << 20, participant: "zoe".into() })],
        },
        net.now,
    );
    for seq in 0..100 {
        net.speak(&mut alice, LOUD);
        net.edge.handle_relay_datagram(net.core, &core_datagram(7, 9 << 20, seq), net.now);
        net.advance(Duration::from_millis(20));
    }
    assert_eq!(net.received(&mut bob).0.len(), 100, "every packet until the deadline");
    assert!(!net.uplink.is_empty());
    assert_eq!(net.edge.session_count(), 2);
    // Then they end, each with a BYE.
    net.advance(Duration::from_secs(4));
    assert_eq!(net.edge.session_count(), 0);
    let (_, rtcp) = net.received(&mut bob);
    assert!(rtcp.contains(&Feedback::Bye(bob.slots[0])), "{rtcp:?}");
}

#[test]
fn a_channel_follows_its_owning_core_and_older_owners_are_fenced_by_epoch() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 1, net.now);
    let mut alice = net.join("lobby", "alice", true, 0);
    let mut bob = net.join("lobby", "bob", false, 3);
    assert!(matches!(&net.relay_on[..], [(l, Message::Subscribe { .. })] if *l == net.core), "{:?}", net.relay_on);

    // The first core sends the edge to the owner: a new link, then the Subscribe there.
    net.edge.handle_relay_control(
        net.core,
        Message::Redirect { channel: "lobby".into(), core: "core-b:4433".into() },
        net.now,
    );
    net.drain();
    let [(owner, addr)] = &net.opened[..] else { panic!("one link opened: {:?}", net.opened) };
    let (owner, addr) = (*owner, addr.clone());
    assert_eq!(addr, "core-b:4433");
    net.relay_on.clear();
    net.edge.relay_connected(owner, 7, net.now);
    net.drain();
    assert!(matches!(&net.relay_on[..], [(l, Message::Subscribe { .. })] if *l == owner), "{:?}", net.relay_on);
    net.edge.handle_relay_control(
        owner,
        Message::Subscribed { channel: "lobby".into(), channel_id: 3, epoch: 10 },
        net.now,
    );
    net.drain();
    // alice's speaker id carries this edge's number at the owner, and goes up to it.
    net.talk(&mut [&mut alice], &[LOUD], 5);
    let h = MediaHeader::parse(net.uplink.last().expect("uplinked")).unwrap();
    assert_eq!((h.channel_id, relay_proto::speaker::edge_of(h.speaker)), (3, 7));

    // An older owner (a paused core that woke up) is refused, and its media dropped.
    net.relay_on.clear();
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 9, epoch: 5 },
        net.now,
    );
    net.drain();
    assert_eq!(net.edge.counters().stale_epoch, 1);
    assert!(net.relay_on.contains(&(net.core, Message::Unsubscribe { channel_id: 9 })), "{:?}", net.relay_on);
    let zoe = 9 << 20 | 1;
    let holder = |speaker: u32| vec![Some(SlotHolder { speaker, participant: "zoe".into() })];
    net.edge.handle_relay_control(
        net.core,
        Message::Selection { channel_id: 9, selection: 1, slots: holder(zoe) },
        net.now,
    );
    net.edge.handle_relay_datagram(net.core, &core_datagram(9, zoe, 1), net.now);
    net.drain();
    assert!(net.received(&mut bob).0.is_empty(), "the fenced owner reached a listener");
    assert_eq!(net.edge.counters().dropped(DropReason::RelayUnknownChannel), 2);
    // The owner's media plays.
    net.edge.handle_relay_control(
        owner,
        Message::Selection { channel_id: 3, selection: 1, slots: holder(zoe) },
        net.now,
    );
    for seq in 0..5 {
        net.edge.handle_relay_datagram(owner, &core_datagram(3, zoe, seq), net.now);
    }
    net.drain();
    assert_eq!(net.received(&mut bob).0.len(), 5);
    // The owner takes its lease again at a higher epoch (its store lost it): same stream.
    net.edge.handle_relay_control(
        owner,
        Message::Subscribed { channel: "lobby".into(), channel_id: 3, epoch: 11 },
        net.now,
    );
    net.edge.handle_relay_datagram(owner, &core_datagram(3, zoe, 5), net.now);
    net.drain();
    assert_eq!(net.received(&mut bob).0.len(), 1, "no gap when the epoch rises on the same link");

    // A kick counts only from the channel's core; it ends bob's session with BYE.
    net.edge.handle_relay_control(
        net.core,
        Message::Kick { channel: "lobby".into(), participant: "bob".into() },
        net.now,
    );
    assert_eq!(net.edge.session_count(), 2);
    net.edge.handle_relay_control(owner, Message::Kick { channel: "lobby".into(), participant: "bob".into() }, net.now);
    net.drain();
    assert_eq!(net.edge.session_count(), 1);
    assert!(net.received(&mut bob).1.iter().any(|f| matches!(f, Feedback::Bye(_))));

    // The owner's link drops: the edge asks its first core again, which has nobody yet
    // (the dead owner's lease has not expired) and says when to ask again.
    net.relay_on.clear();
    net.edge.relay_disconnected(owner, net.now);
    net.drain();
    assert!(matches!(&net.relay_on[..], [(l, Message::Subscribe { .. })] if *l == net.core), "{:?}", net.relay_on);
    net.relay_on.clear();
    net.edge.handle_relay_control(net.core, Message::Unavailable { channel: "lobby".into(), retry_ms: 200 }, net.now);
    net.advance(Duration::from_millis(150));
    assert!(net.relay_on.is_empty(), "{:?}", net.relay_on);
    net.advance(Duration::from_millis(150));
    assert!(matches!(&net.relay_on[..], [(l, Message::Subscribe { .. })] if *l == net.core), "{:?}", net.relay_on);
    // A redirect to the owner whose link is down: ask again shortly, not wait for it.
    net.relay_on.clear();
    net.edge.handle_relay_control(
        net.core,
        Message::Redirect { channel: "lobby".into(), core: "core-b:4433".into() },
        net.now,
    );
    net.advance(Duration::from_millis(300));
    assert!(net.opened.len() == 1, "the link exists already: {:?}", net.opened);
    assert!(matches!(&net.relay_on[..], [(l, Message::Subscribe { .. })] if *l == net.core), "{:?}", net.relay_on);
}

/// A datagram as the core forwards it: with the slot and the selection it belongs to.
fn slotted_datagram(channel_id: u32, speaker: u32, sequence: u16, slot: u8, selection: u32) -> Bytes {
    relay_proto::datagram::stamp_slot(core_datagram(channel_id, speaker, sequence), slot, selection)
}

#[test]
fn a_new_speakers_first_packet_plays_before_the_selection_message_arrives() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 1, net.now);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    let (zoe, yan, xi) = (9 << 20 | 1, 9 << 20 | 2, 9 << 20 | 3);
    let holder = |speaker: u32, name: &str| Some(SlotHolder { speaker, participant: name.into() });
    net.edge.handle_relay_control(
        net.core,
        Message::Selection { channel_id: 7, selection: 1, slots: vec![holder(zoe, "zoe")] },
        net.now,
    );
    for seq in 0..3 {
        net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, zoe, seq, 0, 1), net.now);
    }
    net.drain();
    assert_eq!(net.received(&mut bob).0.len(), 3);

    // yan is selected: the datagram (selection 2) overtakes the selection message.
    net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, yan, 100, 1, 2), net.now);
    net.drain();
    let (rtp, _) = net.received(&mut bob);
    assert_eq!(rtp.len(), 1, "the onset is not clipped");
    assert_eq!((rtp[0].ssrc, rtp[0].csrcs.clone()), (bob.slots[1], vec![Ssrc(yan)]));
    // The selection message follows (names only); an older one changes nothing.
    let two = vec![holder(zoe, "zoe"), holder(yan, "yan")];
    net.edge.handle_relay_control(net.core, Message::Selection { channel_id: 7, selection: 2, slots: two }, net.now);
    net.edge.handle_relay_control(
        net.core,
        Message::Selection { channel_id: 7, selection: 1, slots: vec![holder(zoe, "zoe")] },
        net.now,
    );
    net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, yan, 101, 1, 2), net.now);
    net.drain();
    let (rtp, _) = net.received(&mut bob);
    assert_eq!(rtp.len(), 1);
    let yan_seq = rtp[0].seq;
    let view = net.edge.channel_view("lobby").unwrap();
    assert!(view.speakers.iter().any(|s| s.participant == "yan" && s.slot == Some(1)), "{view:?}");

    // xi takes yan's slot (selection 3): yan's packets still in flight are not played,
    // and bob's slot stays one continuous stream.
    net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, xi, 500, 1, 3), net.now);
    net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, yan, 102, 1, 2), net.now);
    net.drain();
    let (rtp, _) = net.received(&mut bob);
    assert_eq!(rtp.len(), 1, "{rtp:?}");
    assert_eq!((rtp[0].csrcs.clone(), rtp[0].seq), (vec![Ssrc(xi)], yan_seq.wrapping_add(1)));
    assert_eq!(net.edge.counters().dropped(DropReason::RelayNotSelected), 1);
}

#[test]
fn through_a_core_link_blip_the_edges_own_speakers_stay_audible_and_slots_continue() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let mut alice = net.join("lobby", "alice", true, 3);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    net.talk(&mut [&mut alice], &[LOUD], 5);
    let alice_id = net.id_of("lobby", "alice").0;
    let zoe = 9 << 20 | 1;
    let holder = |speaker: u32, name: &str| Some(SlotHolder { speaker, participant: name.into() });
    let both = vec![holder(zoe, "zoe"), holder(alice_id, "alice"), None];
    net.edge.handle_relay_control(net.core, Message::Selection { channel_id: 7, selection: 1, slots: both }, net.now);
    let _ = net.received(&mut bob);

    // The core forwards zoe and returns alice's packets; alice's own reach bob directly
    // first, and the core's copies that follow are not played twice.
    let mut zoe_seq = 0u16;
    let mut heard = Vec::new();
    for _ in 0..20 {
        let alice_seq = alice.seq;
        net.speak(&mut alice, LOUD);
        net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, zoe, zoe_seq, 0, 1), net.now);
        net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, alice_id, alice_seq, 1, 1), net.now);
        zoe_seq += 1;
        net.advance(Duration::from_millis(20));
        heard.extend(net.received(&mut bob).0);
    }
    let slots = bob.slots.clone();
    let on = |heard: &[Seen], slot: usize| heard.iter().filter(|p| p.ssrc == slots[slot]).cloned().collect::<Vec<_>>();
    assert_eq!((on(&heard, 0).len(), on(&heard, 1).len()), (20, 20), "{heard:?}");

    // Two seconds of silence from the core: no heartbeat, no media. Alice stays audible
    // to bob throughout, in the same slot.
    net.beating.clear();
    for _ in 0..100 {
        net.speak(&mut alice, LOUD);
        net.advance(Duration::from_millis(20));
        heard.extend(net.received(&mut bob).0);
    }
    assert_eq!(net.edge.counters().link_stalls, 1);
    assert_eq!(on(&heard, 1).len(), 120, "alice was heard all along");
    assert_continuous(&on(&heard, 1));
    assert!(net.uplink.len() >= 120, "alice is still offered to the core");

    // The core is back (zoe talked on meanwhile): both slots continue without a jump.
    net.beating.push(net.core);
    zoe_seq += 100;
    for _ in 0..10 {
        net.speak(&mut alice, LOUD);
        net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, zoe, zoe_seq, 0, 1), net.now);
        zoe_seq += 1;
        net.advance(Duration::from_millis(20));
        heard.extend(net.received(&mut bob).0);
    }
    assert_eq!(on(&heard, 0).len(), 30, "zoe is heard again");
    assert_continuous(&on(&heard, 0));
    assert_eq!(on(&heard, 1).len(), 130);
    assert_continuous(&on(&heard, 1));
    assert_eq!(net.edge.counters().link_stalls, 1);
}

#[test]
fn on_a_lossy_link_the_edge_uplinks_copies_and_plays_each_core_packet_once() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let mut alice = net.join("lobby", "alice", true, 3);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    net.talk(&mut [&mut alice], &[LOUD], 5);
    assert!(net.uplink.iter().all(|d| !relay_proto::datagram::is_copy(d)));

    // The core reports 3 % loss on alice's uplink: each uplink goes twice, once marked.
    net.edge.handle_relay_control(net.core, Message::LinkQuality { lost_permille: 30 }, net.now);
    net.uplink.clear();
    net.talk(&mut [&mut alice], &[LOUD], 10);
    assert_eq!(net.uplink.len(), 20);
    assert_eq!(net.uplink.iter().filter(|d| relay_proto::datagram::is_copy(d)).count(), 10);

    // The core sends zoe twice per packet, and some originals are lost: bob hears each
    // packet once, in order, and the edge reports the loss it saw before repair.
    let zoe = 9 << 20 | 1;
    let holder = |speaker: u32, name: &str| Some(SlotHolder { speaker, participant: name.into() });
    net.edge.handle_relay_control(
        net.core,
        Message::Selection { channel_id: 7, selection: 1, slots: vec![holder(zoe, "zoe"), None, None] },
        net.now,
    );
    let _ = net.received(&mut bob);
    net.relay.clear();
    let mut heard = Vec::new();
    for seq in 0..100u16 {
        let d = slotted_datagram(7, zoe, seq, 0, 1);
        if seq % 10 != 3 {
            net.edge.handle_relay_datagram(net.core, &d, net.now);
        }
        net.edge.handle_relay_datagram(net.core, &relay_proto::datagram::mark_copy(&d), net.now);
        net.advance(Duration::from_millis(20));
        heard.extend(net.received(&mut bob).0);
    }
    assert_eq!(heard.len(), 100);
    assert_continuous(&heard);
    assert_eq!(net.edge.counters().relay_duplicates, 90);
    let reports: Vec<u16> = net
        .relay
        .iter()
        .filter_map(|m| match m {
            Message::LinkQuality { lost_permille } => Some(*lost_permille),
            _ => None,
        })
        .collect();
    assert!(!reports.is_empty() && reports.iter().all(|&p| (80..=120).contains(&p)), "{reports:?}");
    let link = &net.edge.core_links()[0];
    assert_eq!((link.downlink.repaired, link.downlink.lost), (10, 0), "{link:?}");
    assert!(link.repair_on && link.copies_sent == 10, "{link:?}");
}

#[test]
fn a_reordering_link_still_gives_listeners_each_slot_in_sequence_order() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    let zoe = 9 << 20 | 1;
    // Pairs swapped (1 0 3 2 ...), and packet 41 never comes; 41 turns up long after.
    let mut order: Vec<u16> = (0..60u16).map(|s| s ^ 1).filter(|&s| s != 41).collect();
    order.push(41);
    let mut heard = Vec::new();
    for seq in order {
        net.edge.handle_relay_datagram(net.core, &slotted_datagram(7, zoe, seq, 0, 1), net.now);
        net.advance(Duration::from_millis(10));
        heard.extend(net.received(&mut bob).0);
    }
    net.advance(Duration::from_millis(100));
    heard.extend(net.received(&mut bob).0);
    // Packet 0 comes after 1, which started the stream: too late, as is 41.
    assert_eq!(heard.len(), 58, "all but the two that came too late");
    for w in heard.windows(2) {
        let step = w[1].seq.wrapping_sub(w[0].seq);
        assert!(step == 1 || step == 2, "in order, one hole: {:?} -> {:?}", w[0], w[1]);
    }
    let link = &net.edge.core_links()[0];
    // (0 is refused as older than its stream already; 41 after its hole was given up.)
    assert_eq!((link.reorder.gaps_skipped, link.reorder.late), (1, 1), "{link:?}");
}

#[test]
fn when_the_core_selects_a_local_speaker_its_listeners_get_every_packet_since_in_order() {
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let mut alice = net.join("lobby", "alice", true, 3);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    // alice starts talking; the core selects her on her first uplinked packet, and that
    // packet comes back (stamped) after she has sent four more.
    net.uplink.clear();
    while net.uplink.len() < 5 {
        net.talk(&mut [&mut alice], &[LOUD], 1);
    }
    let alice_id = net.id_of("lobby", "alice").0;
    let uplinked: Vec<u16> = net.uplink.iter().map(|d| MediaHeader::parse(d).unwrap().sequence).collect();
    assert!(net.received(&mut bob).0.is_empty(), "not selected yet");
    let back = |seq| slotted_datagram(7, alice_id, seq, 0, 1);
    net.edge.handle_relay_datagram(net.core, &back(uplinked[0]), net.now);
    net.drain();
    let (caught_up, _) = net.received(&mut bob);
    assert_eq!(caught_up.len(), 5, "everything since the selecting packet, at once");
    // She goes on directly; the core's copies of what bob has are not sent again.
    net.talk(&mut [&mut alice], &[LOUD], 3);
    for &seq in &uplinked[1..] {
        net.edge.handle_relay_datagram(net.core, &back(seq), net.now);
    }
    net.drain();
    let (direct, _) = net.received(&mut bob);
    let all: Vec<Seen> = caught_up.into_iter().chain(direct).collect();
    assert_eq!(all.len(), 8);
    assert_continuous(&all);
}

/// Hands every output to nobody, as a shell that has sent it.
fn send_and_forget(edge: &mut Edge) {
    while edge.poll_output().is_some() {}
}

#[test]
fn forwarding_allocates_nothing_per_packet_in_steady_state() {
    const LISTENERS: usize = 20;
    const PACKETS: u64 = 500;

    // A publisher on this edge, to its listeners (standalone).
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 3);
    let _listeners: Vec<Client> = (0..LISTENERS).map(|i| net.join("lobby", &format!("l{i}"), false, 3)).collect();
    let packets: Vec<Bytes> = (0..2 * PACKETS).map(|_| net.packet(&mut alice, LOUD)).collect();
    let (warm_up, measured) = packets.split_at(PACKETS as usize);
    let mut now = net.now;
    for p in warm_up {
        now += Duration::from_millis(20);
        net.edge.handle_datagram(now, alice.addr, p);
        send_and_forget(&mut net.edge);
    }
    let sent_before = net.edge.counters().rtp_out;
    let allocations = allocations_in(|| {
        for p in measured {
            now += Duration::from_millis(20);
            net.edge.handle_datagram(now, alice.addr, p);
            send_and_forget(&mut net.edge);
        }
    });
    assert_eq!(net.edge.counters().rtp_out - sent_before, PACKETS * LISTENERS as u64, "every packet was forwarded");
    assert_eq!(allocations, 0, "receive, unprotect, rewrite, protect and send of {PACKETS} packets");

    // The core's datagrams, to this edge's listeners (cascade).
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let _listeners: Vec<Client> = (0..LISTENERS).map(|i| net.join("lobby", &format!("l{i}"), false, 3)).collect();
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    let zoe = 9 << 20 | 1;
    let holders = vec![Some(SlotHolder { speaker: zoe, participant: "zoe".into() }), None, None];
    net.edge.handle_relay_control(
        net.core,
        Message::Selection { channel_id: 7, selection: 1, slots: holders },
        net.now,
    );
    // As quinn hands them over: slices of a shared receive buffer (a `Bytes` made from a
    // `Vec` would allocate on its first clone instead).
    let mut received = bytes::BytesMut::new();
    let datagrams: Vec<Bytes> = (0..2 * PACKETS as u16)
        .map(|seq| {
            received.extend_from_slice(&slotted_datagram(7, zoe, seq, 0, 1));
            received.split().freeze()
        })
        .collect();
    let (warm_up, measured) = datagrams.split_at(PACKETS as usize);
    let mut now = net.now;
    for d in warm_up {
        now += Duration::from_millis(20);
        net.edge.handle_relay_datagram(net.core, d, now);
        send_and_forget(&mut net.edge);
    }
    let sent_before = net.edge.counters().rtp_out;
    let allocations = allocations_in(|| {
        for d in measured {
            now += Duration::from_millis(20);
            net.edge.handle_relay_datagram(net.core, d, now);
            send_and_forget(&mut net.edge);
        }
    });
    assert_eq!(net.edge.counters().rtp_out - sent_before, PACKETS * LISTENERS as u64, "every datagram was forwarded");
    assert_eq!(allocations, 0, "{PACKETS} core datagrams to {LISTENERS} listeners");

    // A publisher in cascade: uplinked (with repair copies), kept for catch-up, and played
    // to this edge's listeners directly.
    let mut net = Net::new(EdgeConfig { cascade: true, ..Default::default() });
    net.edge.relay_connected(net.core, 5, net.now);
    let mut alice = net.join("lobby", "alice", true, 3);
    let _listeners: Vec<Client> = (0..LISTENERS).map(|i| net.join("lobby", &format!("l{i}"), false, 3)).collect();
    net.edge.handle_relay_control(
        net.core,
        Message::Subscribed { channel: "lobby".into(), channel_id: 7, epoch: 1 },
        net.now,
    );
    net.edge.handle_relay_control(net.core, Message::LinkQuality { lost_permille: 30 }, net.now);
    let packets: Vec<Bytes> = (0..2 * PACKETS).map(|_| net.packet(&mut alice, LOUD)).collect();
    let (warm_up, measured) = packets.split_at(PACKETS as usize);
    let mut now = net.now;
    for (i, p) in warm_up.iter().enumerate() {
        now += Duration::from_millis(20);
        net.edge.handle_datagram(now, alice.addr, p);
        if i == 0 {
            // The core selects her.
            let alice_id = net.id_of("lobby", "alice").0;
            let holders = vec![Some(SlotHolder { speaker: alice_id, participant: "alice".into() }), None, None];
            let selection = Message::Selection { channel_id: 7, selection: 1, slots: holders };
            net.edge.handle_relay_control(net.core, selection, now);
        }
        send_and_forget(&mut net.edge);
    }
    let (sent_before, uplinked_before) = (net.edge.counters().rtp_out, net.edge.counters().uplink_out);
    let allocations = allocations_in(|| {
        for p in measured {
            now += Duration::from_millis(20);
            net.edge.handle_datagram(now, alice.addr, p);
            send_and_forget(&mut net.edge);
        }
    });
    assert_eq!(net.edge.counters().rtp_out - sent_before, PACKETS * LISTENERS as u64);
    assert_eq!(net.edge.counters().uplink_out - uplinked_before, PACKETS);
    assert!(net.edge.core_links()[0].copies_sent >= PACKETS, "repair copies went too");
    assert_eq!(allocations, 0, "{PACKETS} packets of a cascade publisher");
}

#[test]
fn after_its_dtls_connection_is_let_go_a_session_still_forwards_and_late_dtls_is_dropped() {
    let mut net = Net::new(EdgeConfig::default());
    let mut alice = net.join("lobby", "alice", true, 3);
    let mut bob = net.join("lobby", "bob", false, 3);
    net.edge.dtls_retired(alice.id);
    net.edge.dtls_retired(bob.id);
    assert_eq!(net.edge.counters().dtls_retired, 2);

    // A DTLS record (an alert, epoch 1) from bob goes nowhere and is counted.
    net.dtls.clear();
    net.send(bob.addr, &dtls_record(21, 1, &[0; 24]));
    assert!(net.dtls.is_empty(), "nothing reaches a DTLS task that is gone");
    assert_eq!(net.edge.counters().dropped(DropReason::DtlsLate), 1);

    // Media is SRTP: it goes on.
    net.talk(&mut [&mut alice], &[LOUD], 20);
    let (heard, _) = net.received(&mut bob);
    assert!(heard.len() >= 19, "bob hears alice: {}", heard.len());
    assert_continuous(&heard);
}
