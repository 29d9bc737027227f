//! The core's selection and fan-out on a virtual clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use core_sfu::core::{Core, CoreConfig, CoreOutput, EdgeInfo, EdgeKey, Refusal};
use relay_proto::control::Message;
use relay_proto::datagram::MediaHeader;
use relay_proto::speaker;

const LOUD: u8 = 20;

fn info(edge: EdgeKey) -> EdgeInfo {
    EdgeInfo {
        id: format!("edge-{edge}"),
        signalling_url: format!("http://edge-{edge}"),
        region: "local".into(),
        capacity: 25,
        max_sessions: 1000,
    }
}
const SOFT: u8 = 50;
const SILENT: u8 = 127;

struct Sim {
    core: Core,
    now: Instant,
    channel_ids: HashMap<EdgeKey, u32>,
    datagrams: Vec<(EdgeKey, Bytes)>,
    selections: Vec<(EdgeKey, Vec<Option<u32>>)>,
    seq: HashMap<u32, u16>,
    /// Each edge's number from the core: the high bits of its speaker ids.
    numbers: HashMap<EdgeKey, u16>,
    last_selection_number: Option<u32>,
}

impl Sim {
    fn new() -> Sim {
        let now = Instant::now();
        Sim {
            core: Core::new(CoreConfig::default(), now),
            now,
            channel_ids: HashMap::new(),
            datagrams: vec![],
            selections: vec![],
            seq: HashMap::new(),
            numbers: HashMap::new(),
            last_selection_number: None,
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                CoreOutput::Datagram { edge, data } => self.datagrams.push((edge, data)),
                CoreOutput::Control { edge, message: Message::Subscribed { channel_id, .. } } => {
                    self.channel_ids.insert(edge, channel_id);
                }
                CoreOutput::Control { edge, message: Message::Selection { slots, selection, .. } } => {
                    self.last_selection_number = Some(selection);
                    // Tests name speakers by their per-edge number.
                    let locals = slots.iter().map(|s| s.as_ref().map(|h| speaker::local_of(h.speaker))).collect();
                    self.selections.push((edge, locals));
                }
                _ => {}
            }
        }
    }

    fn edge(&mut self, edge: EdgeKey, listeners: u32) {
        let number = self.core.edge_joined(edge, info(edge), self.now);
        self.numbers.insert(edge, number.expect("a free edge number"));
        self.core.handle_control(edge, Message::Subscribe { channel: "lobby".into(), listeners }, self.now);
        self.drain();
    }

    /// A datagram from speaker `local` on `edge`, with the id the edge would give it.
    fn datagram(&mut self, edge: EdgeKey, local: u32, level: u8) -> Bytes {
        let speaker = speaker::id(self.numbers[&edge], local);
        self.datagram_as(edge, speaker, level)
    }

    fn datagram_as(&mut self, edge: EdgeKey, speaker: u32, level: u8) -> Bytes {
        let seq = self.seq.entry(speaker).or_default();
        *seq = seq.wrapping_add(1);
        let h = MediaHeader {
            channel_id: self.channel_ids[&edge],
            speaker,
            sequence: *seq,
            timestamp: u32::from(*seq) * 960,
            level,
            voice: level < SILENT,
            marker: false,
            slot: None,
            selection: 0,
        };
        let mut out = BytesMut::new();
        h.encode(b"opus-frame", &mut out);
        out.freeze()
    }

    /// `ms` of 20 ms packets from each (edge, speaker, level).
    fn talk(&mut self, ms: u64, speakers: &[(EdgeKey, u32, u8)]) {
        for _ in 0..ms / 20 {
            self.now += Duration::from_millis(20);
            for &(edge, ssrc, level) in speakers {
                let d = self.datagram(edge, ssrc, level);
                self.core.handle_datagram(edge, d, self.now);
            }
            self.core.handle_timeout(self.now);
            self.drain();
        }
    }

    fn forwarded_speakers(&mut self, to: EdgeKey) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .datagrams
            .iter()
            .filter(|(e, _)| *e == to)
            .map(|(_, d)| speaker::local_of(MediaHeader::parse(d).unwrap().speaker))
            .collect();
        v.sort();
        v.dedup();
        self.datagrams.clear();
        v
    }

    fn selected(&self) -> Vec<u32> {
        let mut v: Vec<u32> =
            self.selections.last().map(|(_, s)| s.iter().flatten().copied().collect()).unwrap_or_default();
        v.sort();
        v
    }
}

#[test]
fn fans_out_one_payload_to_every_edge_with_listeners() {
    let mut sim = Sim::new();
    sim.edge(1, 2);
    sim.edge(2, 0);
    sim.edge(3, 5);
    sim.talk(400, &[(1, 100, LOUD)]);
    let mut by_edge: HashMap<EdgeKey, Vec<Bytes>> = HashMap::new();
    for (e, d) in sim.datagrams.drain(..) {
        by_edge.entry(e).or_default().push(d);
    }
    assert!(!by_edge.contains_key(&2), "an edge without listeners got media");
    let (own, far) = (&by_edge[&1], &by_edge[&3]);
    assert!(own.len() >= 15, "the speaker's own edge gets the stream for its other listeners");
    assert_eq!(own.len(), far.len());
    // The same buffer, not a copy per edge.
    assert_eq!(own.last().unwrap().as_ptr(), far.last().unwrap().as_ptr());
    let h = MediaHeader::parse(far.last().unwrap()).unwrap();
    assert_eq!(h.speaker, speaker::id(sim.numbers[&1], 100));
    // Stamped with its slot and the selection it belongs to, as the selection message says.
    let selection = sim.last_selection_number.expect("a selection was sent");
    assert_eq!((h.slot, h.selection), (Some(0), selection));
}

#[test]
fn top_three_of_four_and_the_slots_follow_who_talks() {
    let mut sim = Sim::new();
    sim.edge(1, 1);
    sim.edge(2, 1);
    sim.edge(3, 1);
    sim.talk(2000, &[(1, 11, LOUD), (1, 12, LOUD), (2, 21, LOUD), (3, 31, SOFT)]);
    assert_eq!(sim.selected(), vec![11, 12, 21]);
    assert_eq!(sim.forwarded_speakers(3), vec![11, 12, 21], "the quietest is not forwarded");
    // 31 gets loud and 12 goes silent (DTX: stops sending).
    let before = sim.core.counters().selection_changes;
    sim.talk(300, &[(1, 11, LOUD), (2, 21, LOUD), (3, 31, LOUD)]);
    assert!(sim.core.counters().selection_changes > before);
    assert_eq!(sim.selected(), vec![11, 21, 31], "31 takes 12's slot within 300 ms");
    sim.datagrams.clear();
    sim.talk(200, &[(1, 11, LOUD), (2, 21, LOUD), (3, 31, LOUD)]);
    assert_eq!(sim.forwarded_speakers(1), vec![11, 21, 31]);
    // Every edge was told the same selection.
    let last: Vec<_> = sim.selections.iter().rev().take(3).map(|(_, s)| s.clone()).collect();
    assert!(last.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn bad_datagrams_are_refused_and_counted() {
    let mut sim = Sim::new();
    sim.edge(1, 1);
    sim.edge(2, 1);
    sim.numbers.insert(9, sim.core.edge_joined(9, info(9), sim.now).unwrap());
    let good = sim.datagram(1, 100, LOUD);
    sim.core.handle_datagram(1, good.clone(), sim.now);
    sim.core.handle_datagram(1, Bytes::from_static(&[0x40, 1, 2]), sim.now);
    assert_eq!(sim.core.counters().refused(Refusal::MalformedDatagram), 1);
    let unsubscribed = sim.datagram_as(1, speaker::id(sim.numbers[&9], 1), LOUD);
    sim.core.handle_datagram(9, unsubscribed, sim.now);
    assert_eq!(sim.core.counters().refused(Refusal::NotSubscribed), 1);
    let mut other_channel = good.to_vec();
    other_channel[2..6].copy_from_slice(&77u32.to_be_bytes());
    sim.core.handle_datagram(1, Bytes::from(other_channel), sim.now);
    assert_eq!(sim.core.counters().refused(Refusal::UnknownChannel), 1);
    // Edge 2 sends with an id of edge 1's: refused, never forwarded, and no name taken.
    sim.drain();
    sim.datagrams.clear();
    let stolen = sim.datagram_as(2, speaker::id(sim.numbers[&1], 100), LOUD);
    sim.core.handle_datagram(2, stolen, sim.now);
    assert_eq!(sim.core.counters().refused(Refusal::SpeakerNotOwned), 1);
    let info = Message::SpeakerInfo {
        channel_id: sim.channel_ids[&2],
        speaker: speaker::id(sim.numbers[&1], 100),
        participant: "impostor".into(),
    };
    sim.core.handle_control(2, info, sim.now);
    assert_eq!(sim.core.counters().refused(Refusal::SpeakerNotOwned), 2);
    sim.drain();
    assert!(sim.datagrams.is_empty());
    let detail = sim.core.channel_detail("lobby").unwrap();
    assert!(detail.speakers.iter().all(|s| s.participant != "impostor"), "{detail:?}");
    sim.core.handle_control(
        1,
        Message::Welcome { core_id: "x".into(), slots: 3, edge_number: 1, proof: [0; 32] },
        sim.now,
    );
    assert_eq!(sim.core.counters().refused(Refusal::UnexpectedMessage), 1);
}

#[test]
fn an_edge_leaving_frees_its_speakers_slots() {
    let mut sim = Sim::new();
    sim.edge(1, 1);
    sim.edge(2, 1);
    sim.talk(1000, &[(1, 100, LOUD), (2, 200, LOUD)]);
    assert_eq!(sim.selected(), vec![100, 200]);
    sim.core.edge_left(1, sim.now);
    sim.drain();
    assert_eq!(sim.selected(), vec![200]);
    assert_eq!(sim.selections.last().unwrap().0, 2, "the remaining edge is told");
    assert_eq!(sim.core.channels()[0].edges, 1);
    sim.core.edge_left(2, sim.now);
    assert!(sim.core.channels().is_empty(), "a channel without edges is closed");
}

#[test]
fn channel_names_from_edges_are_checked() {
    let mut sim = Sim::new();
    sim.edge(1, 1);
    for bad in ["", "lob\u{1b}[2Jby", "../etc", &"x".repeat(65)] {
        sim.core.handle_control(1, Message::Subscribe { channel: bad.to_owned(), listeners: 1 }, sim.now);
    }
    assert_eq!(sim.core.counters().refused(Refusal::MalformedControl), 4);
    assert_eq!(sim.core.channels().len(), 1, "only lobby");
}

mod fleet {
    use super::*;
    use core_sfu::core::{FleetConfig, LeaseAnswer, LeaseCommand};
    use std::sync::Arc;

    /// How a test's lease store answers renewals.
    #[derive(Clone, Copy, PartialEq)]
    enum Store {
        Keeps,
        Silent,
        Unreachable,
        Lost,
    }

    struct FleetSim {
        core: Core,
        now: Instant,
        store: Store,
        control: Vec<(EdgeKey, Message)>,
        leases: Vec<LeaseCommand>,
    }

    impl FleetSim {
        fn new() -> Self {
            let now = Instant::now();
            let fleet = FleetConfig {
                relay_addr: "core-a:4433".into(),
                lease_ttl: Duration::from_secs(3),
                renew_every: Duration::from_secs(1),
            };
            let mut core = Core::new(CoreConfig { fleet: Some(fleet), ..Default::default() }, now);
            for edge in [1, 2] {
                core.edge_joined(edge, info(edge), now);
            }
            FleetSim { core, now, store: Store::Keeps, control: vec![], leases: vec![] }
        }

        fn drain(&mut self) {
            while let Some(o) = self.core.poll_output() {
                match o {
                    CoreOutput::Control { edge, message } => self.control.push((edge, message)),
                    CoreOutput::Lease(LeaseCommand::Renew { channels, sent_at }) => {
                        let now = self.now;
                        let answer = |held: Option<u64>| Some(channels.iter().map(|c| (c.clone(), held)).collect());
                        match self.store {
                            Store::Keeps => self.core.leases_renewed(sent_at, answer(Some(42)), now),
                            Store::Lost => self.core.leases_renewed(sent_at, answer(None), now),
                            Store::Unreachable => self.core.leases_renewed(sent_at, None, now),
                            Store::Silent => {}
                        }
                    }
                    CoreOutput::Lease(other) => self.leases.push(other),
                    _ => {}
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(50);
                self.core.handle_timeout(self.now);
                self.drain();
            }
        }

        fn subscribe(&mut self, edge: EdgeKey, channel: &str) {
            self.core.handle_control(edge, Message::Subscribe { channel: channel.into(), listeners: 3 }, self.now);
            self.drain();
        }

        fn serves(&self, channel: &str) -> bool {
            self.core.channels().iter().any(|c| c.name == channel)
        }

        fn uplink(&mut self, edge: EdgeKey) {
            let mut out = BytesMut::new();
            let header = MediaHeader {
                channel_id: 1,
                speaker: speaker::id(edge as u16, 1),
                sequence: 1,
                timestamp: 960,
                level: LOUD,
                voice: true,
                marker: false,
                slot: None,
                selection: 0,
            };
            header.encode(b"opus", &mut out);
            self.core.handle_datagram(edge, out.freeze(), self.now);
        }
    }

    #[test]
    fn a_channel_is_served_once_acquired_and_edges_of_others_are_redirected() {
        let mut sim = FleetSim::new();
        sim.subscribe(1, "lobby");
        sim.subscribe(2, "lobby");
        assert_eq!(sim.leases, vec![LeaseCommand::Acquire { channel: Arc::from("lobby") }], "one acquire");
        assert!(sim.control.is_empty(), "nothing before the store answers: {:?}", sim.control);
        sim.core.lease_answer("lobby", LeaseAnswer::Ours { epoch: 42, sent_at: sim.now }, sim.now);
        sim.drain();
        for edge in [1, 2] {
            assert!(sim.control.iter().any(|(e, m)| *e == edge
                && matches!(m, Message::Subscribed { epoch: 42, channel, .. } if channel == "lobby")));
        }
        sim.subscribe(1, "other");
        let elsewhere = LeaseAnswer::Elsewhere { relay_addr: "core-b:4433".into(), http_url: "http://core-b".into() };
        sim.core.lease_answer("other", elsewhere, sim.now);
        sim.drain();
        assert_eq!(
            sim.control.last().unwrap(),
            &(1, Message::Redirect { channel: "other".into(), core: "core-b:4433".into() })
        );
        assert!(!sim.serves("other"));
        // The store does not answer: on its own clock the core stops before the lease
        // could expire in the store (3 s), tells its edges to ask again, refuses media.
        sim.advance(Duration::from_secs(5));
        assert!(sim.serves("lobby"), "renewed leases keep the channel");
        sim.store = Store::Silent;
        sim.control.clear();
        // The last renewal was answered at most 1 s ago and confirms 2 s from when it left.
        sim.advance(Duration::from_millis(900));
        assert!(sim.serves("lobby"), "within its confirmed time");
        sim.advance(Duration::from_millis(1200));
        assert!(!sim.serves("lobby"), "past its confirmed time");
        let asked_again = |e: EdgeKey| (e, Message::Unavailable { channel: "lobby".into(), retry_ms: 250 });
        assert!(sim.control.contains(&asked_again(1)) && sim.control.contains(&asked_again(2)), "{:?}", sim.control);
        sim.uplink(1);
        assert_eq!(sim.core.counters().datagrams_in, 0);
    }

    #[test]
    fn a_store_outage_keeps_channels_and_takes_no_new_ones() {
        let mut sim = FleetSim::new();
        sim.subscribe(1, "lobby");
        sim.core.lease_answer("lobby", LeaseAnswer::Ours { epoch: 42, sent_at: sim.now }, sim.now);
        sim.drain();
        sim.store = Store::Unreachable;
        sim.advance(Duration::from_secs(10));
        assert!(sim.serves("lobby"), "nobody can take the lease from an unreachable store either");
        assert!(!sim.core.store_reachable());
        sim.uplink(1);
        assert_eq!(sim.core.counters().datagrams_in, 1, "media flows");
        sim.subscribe(2, "new");
        sim.core.lease_answer("new", LeaseAnswer::Unreachable, sim.now);
        sim.drain();
        assert_eq!(sim.control.last().unwrap(), &(2, Message::Unavailable { channel: "new".into(), retry_ms: 1000 }));
        // The store is back and another core holds the lease: the channel is given up.
        sim.store = Store::Lost;
        sim.control.clear();
        sim.advance(Duration::from_secs(2));
        assert!(!sim.serves("lobby"));
        assert!(sim.control.contains(&(1, Message::Unavailable { channel: "lobby".into(), retry_ms: 250 })));
        assert_eq!(sim.core.counters().leases_lost, 1);
    }

    #[test]
    fn a_stopping_core_releases_its_leases_and_sends_its_edges_elsewhere() {
        let mut sim = FleetSim::new();
        sim.subscribe(1, "lobby");
        sim.core.lease_answer("lobby", LeaseAnswer::Ours { epoch: 42, sent_at: sim.now }, sim.now);
        sim.drain();
        sim.control.clear();
        sim.leases.clear();
        sim.core.hand_over();
        sim.drain();
        assert_eq!(sim.leases, vec![LeaseCommand::Release { channel: Arc::from("lobby") }]);
        assert_eq!(sim.control, vec![(1, Message::Unavailable { channel: "lobby".into(), retry_ms: 50 })]);
        assert!(!sim.serves("lobby"));
        // Nothing is taken any more.
        sim.control.clear();
        sim.leases.clear();
        sim.subscribe(2, "lobby");
        assert!(sim.leases.is_empty());
        assert_eq!(sim.control, vec![(2, Message::Unavailable { channel: "lobby".into(), retry_ms: 50 })]);
    }
}

#[test]
fn a_lossy_edge_gets_repair_copies_and_copies_from_edges_count_once() {
    let mut sim = Sim::new();
    sim.edge(1, 1);
    sim.edge(2, 1);
    sim.edge(3, 1);
    sim.talk(1000, &[(1, 1, LOUD)]);
    sim.datagrams.clear();

    // Edge 2 reports 5 % loss on what it receives: it alone gets a copy of each datagram.
    sim.core.handle_control(2, Message::LinkQuality { lost_permille: 50 }, sim.now);
    sim.talk(200, &[(1, 1, LOUD)]);
    let to = |edge: EdgeKey| sim.datagrams.iter().filter(|(e, _)| *e == edge).cloned().collect::<Vec<_>>();
    let (two, three) = (to(2), to(3));
    assert_eq!((two.len(), three.len()), (20, 10));
    assert_eq!(two.iter().filter(|(_, d)| relay_proto::datagram::is_copy(d)).count(), 10);
    assert!(three.iter().all(|(_, d)| !relay_proto::datagram::is_copy(d)));
    for pair in two.chunks(2) {
        assert_eq!(MediaHeader::parse(&pair[0].1).unwrap(), MediaHeader::parse(&pair[1].1).unwrap());
    }
    let link = sim.core.links().into_iter().find(|l| l.edge == 2).unwrap();
    assert!(link.repair_on && link.copies_sent == 10 && link.downlink_loss_permille == 50, "{link:?}");
    sim.datagrams.clear();

    // Edge 1 uplinks each packet twice (the second marked as a copy), and every fifth
    // original is lost on the way: each packet is forwarded once, and the core tells
    // edge 1 its uplink loses about 20 % before repair.
    let out_before = sim.core.counters().datagrams_out;
    for i in 0..50 {
        sim.now += Duration::from_millis(20);
        let d = sim.datagram(1, 1, LOUD);
        if i % 5 != 0 {
            sim.core.handle_datagram(1, d.clone(), sim.now);
        }
        sim.core.handle_datagram(1, relay_proto::datagram::mark_copy(&d), sim.now);
        sim.core.handle_timeout(sim.now);
    }
    assert_eq!(sim.core.counters().datagrams_out - out_before, 150, "50 packets to 3 edges");
    assert_eq!(sim.core.counters().duplicates_in, 40);
    let mut reports = Vec::new();
    while let Some(o) = sim.core.poll_output() {
        if let CoreOutput::Control { edge: 1, message: Message::LinkQuality { lost_permille } } = o {
            reports.push(lost_permille);
        }
    }
    // The last report covers this second (and a little clean traffic before it).
    assert!(reports.last().is_some_and(|&p| (150..=200).contains(&p)), "{reports:?}");
    let link = sim.core.links().into_iter().find(|l| l.edge == 1).unwrap();
    assert_eq!((link.uplink.repaired, link.uplink.duplicates), (10, 40), "{link:?}");
}

#[test]
fn fan_out_allocates_nothing_per_datagram_in_steady_state() {
    const EDGES: EdgeKey = 40;
    const PACKETS: u64 = 500;
    let mut sim = Sim::new();
    for edge in 1..=EDGES {
        sim.edge(edge, 25);
    }
    // Some links report loss: they get repair copies as well.
    for edge in 1..=4 {
        sim.core.handle_control(edge, Message::LinkQuality { lost_permille: 50 }, sim.now);
    }
    sim.drain();
    // Datagrams as quinn hands them over: half the only handle on their buffer (stamped
    // in place), half slices of a receive buffer other datagrams share (stamped on a copy).
    let mut shared = BytesMut::with_capacity(64 * 1024);
    let datagrams: Vec<Bytes> = (0..2 * PACKETS)
        .map(|i| {
            let d = sim.datagram(1, 1, LOUD);
            if i % 2 == 0 {
                shared.extend_from_slice(&d);
                shared.split().freeze()
            } else {
                let mut own = BytesMut::with_capacity(d.len());
                own.extend_from_slice(&d);
                own.split().freeze()
            }
        })
        .collect();
    let mut datagrams = datagrams.into_iter();
    let mut now = sim.now;
    let mut feed = |core: &mut Core, d: Bytes| {
        now += Duration::from_millis(20);
        core.handle_datagram(1, d, now);
        while core.poll_output().is_some() {}
    };
    for d in datagrams.by_ref().take(PACKETS as usize) {
        feed(&mut sim.core, d);
    }
    let out_before = sim.core.counters().datagrams_out;
    let allocations = allocation_counter::measure(|| {
        for d in datagrams {
            feed(&mut sim.core, d);
        }
    })
    .count_total;
    assert_eq!(sim.core.counters().datagrams_out - out_before, PACKETS * EDGES);
    assert_eq!(allocations, 0, "{PACKETS} datagrams fanned out to {EDGES} edges");
}
