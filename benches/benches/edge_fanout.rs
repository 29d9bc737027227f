//! The edge's per-listener work for one packet: slot rewrite, header write, SRTP protect,
//! as the edge does it: in place, in its transmit arena, nothing allocated.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use media::buf::TxArena;
use media::rtp_header::{AudioLevel, OutHeader};
use media::slot::SlotRewriter;
use media::srtp::{ProtectionProfile, SrtpKeys, SrtpSession};
use media::Ssrc;

fn per_listener(c: &mut Criterion) {
    const LISTENERS: usize = 25;
    let payload = [0x5au8; 80];
    let mut g = c.benchmark_group("edge");
    g.throughput(Throughput::Elements(LISTENERS as u64));
    for profile in [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80] {
        let len = 2 * (profile.key_len() + profile.salt_len());
        let mut listeners: Vec<(SlotRewriter, SrtpSession)> = (0..LISTENERS)
            .map(|i| {
                let keys = SrtpKeys { profile, material: vec![i as u8; len], is_client: false };
                (SlotRewriter::new(Ssrc(i as u32 + 1), 0, 0), SrtpSession::new(&keys).unwrap())
            })
            .collect();
        let mut arena = TxArena::default();
        let mut now = Instant::now();
        let mut seq = 0u16;
        g.bench_function(format!("one_packet_to_25_listeners_{profile:?}"), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                now += Duration::from_millis(20);
                let mut bytes = 0;
                for (slot, srtp) in &mut listeners {
                    let out = slot.rewrite(Ssrc(99), seq, u32::from(seq) * 960, payload.len(), now).unwrap();
                    OutHeader {
                        payload_type: 111,
                        marker: false,
                        sequence: out.sequence,
                        timestamp: out.timestamp,
                        ssrc: slot.ssrc,
                        csrc: Some(Ssrc(99)),
                        audio_level: Some((1, AudioLevel { level: 20, voice: true })),
                        csrc_level: None,
                    }
                    .write(&payload, arena.start());
                    srtp.protect_rtp_in_place(arena.current()).unwrap();
                    // Sent and dropped, as the shell does.
                    bytes += arena.finish().len();
                }
                black_box(bytes)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, per_listener);
criterion_main!(benches);
