//! SDP offers as clients post them (seeds: real Chromium, Firefox and aiortc offers),
//! through parsing and, when accepted, answer building.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::sdp_offer::{build_answer, AnswerParams, MediaAnswer, Offer};
use media::Ssrc;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(offer) = Offer::parse(&text) else { return };
    let decisions: Vec<MediaAnswer> = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| match (&m.audio, i % 3) {
            (None, _) => MediaAnswer::Reject,
            (Some(_), 0) => MediaAnswer::SendReceive(Ssrc(i as u32 + 1)),
            (Some(_), 1) => MediaAnswer::Send(Ssrc(i as u32 + 1)),
            (Some(_), _) => MediaAnswer::Receive,
        })
        .collect();
    let candidates = ["127.0.0.1:3478".parse().unwrap()];
    let answer = build_answer(
        &offer,
        &AnswerParams {
            ice_ufrag: "ufrag123",
            ice_pwd: "passwordpasswordpassword",
            fingerprint: &[7; 32],
            candidates: &candidates,
            cname: "sfu",
            session_id: 1,
        },
        &decisions,
    );
    assert!(answer.starts_with("v=0"));
});
