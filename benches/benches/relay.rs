//! Relay datagram codec and the core's fan-out of one packet to 400 edges (10,000
//! listeners at 25 per edge).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use core_sfu::core::{Core, CoreConfig, CoreOutput};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay_proto::control::Message;
use relay_proto::datagram::MediaHeader;

const OPUS_FRAME: [u8; 80] = [0x5a; 80];

fn header(channel_id: u32, sequence: u16) -> MediaHeader {
    MediaHeader {
        channel_id,
        speaker: 42,
        sequence,
        timestamp: u32::from(sequence) * 960,
        level: 20,
        voice: true,
        marker: false,
        slot: None,
        selection: 0,
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("datagram");
    g.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(2048);
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(header(1, 7)).encode(black_box(&OPUS_FRAME), &mut buf);
            black_box(buf.len())
        })
    });
    let mut one = BytesMut::new();
    header(1, 7).encode(&OPUS_FRAME, &mut one);
    let datagram = one.freeze();
    g.bench_function("decode", |b| b.iter(|| MediaHeader::decode(black_box(&datagram)).unwrap()));
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    const EDGES: u64 = 400;
    let mut now = Instant::now();
    let mut core = Core::new(CoreConfig::default(), now);
    for e in 1..=EDGES {
        let info = core_sfu::core::EdgeInfo {
            id: format!("edge-{e}"),
            signalling_url: format!("http://edge-{e}"),
            region: "local".into(),
            capacity: 25,
            max_sessions: 5000,
        };
        core.edge_joined(e, info, now);
        core.handle_control(e, Message::Subscribe { channel: "big".into(), listeners: 25 }, now);
    }
    let mut channel_id = 0;
    while let Some(o) = core.poll_output() {
        if let CoreOutput::Control { message: Message::Subscribed { channel_id: id, .. }, .. } = o {
            channel_id = id;
        }
    }
    let datagram = |seq: u16| {
        let mut b = BytesMut::new();
        header(channel_id, seq).encode(&OPUS_FRAME, &mut b);
        b.freeze()
    };
    // Speak until selected.
    let mut seq = 0u16;
    for _ in 0..50 {
        seq += 1;
        now += Duration::from_millis(20);
        core.handle_datagram(1, datagram(seq), now);
        while core.poll_output().is_some() {}
    }
    let packets: Vec<Bytes> = (0..1024).map(|i| datagram(seq.wrapping_add(i))).collect();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(EDGES));
    let mut i = 0;
    g.bench_function("fan_out_one_packet_to_400_edges", |b| {
        b.iter(|| {
            i = (i + 1) % packets.len();
            now += Duration::from_millis(20);
            core.handle_datagram(1, packets[i].clone(), now);
            let mut sent = 0;
            while let Some(o) = core.poll_output() {
                if let CoreOutput::Datagram { data, .. } = o {
                    sent += data.len();
                }
            }
            assert_eq!(sent, EDGES as usize * packets[i].len());
            black_box(sent)
        })
    });
    g.finish();
}

criterion_group!(benches, codec, fan_out);
criterion_main!(benches);
