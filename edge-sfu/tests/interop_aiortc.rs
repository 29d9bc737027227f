//! Real WebRTC clients (aiortc) against a real edge: two speakers and two listeners.
//! Every assertion is about audio that arrived: from whom, decoded, in order.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, heard_tracks, run_python, start_edge, token};
use edge_sfu::edge::DropReason;
use edge_sfu::token::Role;
use serde_json::{json, Value};

const ALICE_TONE: f64 = 440.0;
const DAVE_TONE: f64 = 660.0;

/// Asserts one received slot carries exactly one speaker, decoded, in order; returns the speaker's id.
fn assert_clean_slot(who: &str, track: &Value, tones: &HashMap<u64, f64>) -> u64 {
    let csrcs = track["csrcs"].as_array().unwrap();
    assert_eq!(csrcs.len(), 1, "{who}: one speaker per slot: {track}");
    let speaker = csrcs[0].as_u64().unwrap();
    let tone = *tones.get(&speaker).unwrap_or_else(|| panic!("{who}: CSRC {speaker} is no speaker: {track}"));
    let freq = track["freq"].as_f64().unwrap_or_else(|| panic!("{who}: too little audio decoded: {track}"));
    assert!((freq - tone).abs() < 15.0, "{who}: decoded {freq} Hz, speaker sends {tone} Hz: {track}");
    assert!(track["rms"].as_f64().unwrap() > 1000.0, "{who}: decoded audio is silent: {track}");
    assert!(track["packets"].as_u64().unwrap() >= 50, "{who}: too few packets: {track}");
    assert!(track["frames"].as_u64().unwrap() >= 50, "{who}: too few decoded frames: {track}");
    assert_eq!(track["seq_gaps"], 0, "{who}: sequence gaps on loopback: {track}");
    assert_eq!(track["seq_backwards"], 0, "{who}: sequence went backwards: {track}");
    speaker
}

async fn two_speakers_two_listeners(srtp: &str, openssl_profile: &str) {
    let edge = start_edge(|_| {}).await;
    let base = format!("http://{}", edge.http_addr);
    let spec = json!({
        "base": base,
        "duration": 5,
        "srtp": srtp,
        "clients": [
            {"name": "alice", "path": "/join/lobby", "token": token("lobby", Role::Speaker, "alice"),
             "tone": ALICE_TONE, "recv_tracks": 2},
            {"name": "dave", "path": "/whip/lobby", "token": token("lobby", Role::Speaker, "dave"),
             "tone": DAVE_TONE, "send_direction": "sendonly"},
            {"name": "bob", "path": "/whep/lobby", "token": token("lobby", Role::Listener, "bob"), "recv_tracks": 3},
            {"name": "carol", "path": "/whep/lobby", "token": token("lobby", Role::Listener, "carol"),
             "recv_tracks": 3, "start_delay": 0.5},
        ]
    });
    let report = run_python("aiortc_clients.py", spec, Duration::from_secs(90)).await;

    for name in ["alice", "dave", "bob", "carol"] {
        let c = client(&report, name);
        assert_eq!(c["status"], 201, "{name}: {c}");
        assert_eq!(c["srtp_profile"], openssl_profile, "{name}: {c}");
        assert_eq!(c["delete_status"], 200, "{name}: DELETE of the session: {c}");
    }
    // Listeners see the SFU's speaker ids as CSRCs, never a client's own SSRC.
    let id = |name| {
        let c = client(&report, name);
        let id = c["speaker_id"].as_u64().unwrap_or_else(|| panic!("{name} has no speaker id: {c}"));
        assert_ne!(Some(id), c["send_ssrc"].as_u64(), "{name}: the SFU names speakers, not their clients");
        id
    };
    let (alice_id, dave_id) = (id("alice"), id("dave"));
    let tones = HashMap::from([(alice_id, ALICE_TONE), (dave_id, DAVE_TONE)]);

    for name in ["bob", "carol"] {
        let heard = heard_tracks(client(&report, name));
        assert_eq!(heard.len(), 2, "{name} should hear both speakers: {report}");
        let mut speakers: Vec<u64> = heard.iter().map(|t| assert_clean_slot(name, t, &tones)).collect();
        speakers.sort();
        let mut expected = vec![alice_id, dave_id];
        expected.sort();
        assert_eq!(speakers, expected, "{name}: each speaker on its own slot");
    }
    // Alice talks and listens: she hears Dave, never herself.
    let alice_heard = heard_tracks(client(&report, "alice"));
    assert_eq!(alice_heard.len(), 1, "alice hears only dave: {report}");
    assert_eq!(assert_clean_slot("alice", alice_heard[0], &tones), dave_id);

    let (counters, sessions) = edge.handle.stats().await.unwrap();
    assert_eq!(sessions, 0, "every session ended by DELETE");
    assert_eq!(counters.dropped(DropReason::SrtpAuth), 0);
    assert!(counters.rtp_in > 0 && counters.rtp_out > counters.rtp_in);
    assert!(counters.rtcp_in > 0, "clients' RTCP reports were received and decrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_aead_aes_128_gcm() {
    two_speakers_two_listeners("gcm", "SRTP_AEAD_AES_128_GCM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_aes_cm_128_hmac_sha1_80() {
    two_speakers_two_listeners("cm", "SRTP_AES128_CM_SHA1_80").await;
}
