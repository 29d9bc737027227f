//! Headless Chromium on the demo page: one tab talks with a fake microphone playing a
//! tone, one listens. The demo's own demo-token flow is used (no secret configured).

mod common;

use std::time::Duration;

use common::{run_python, start_edge};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_listener_hears_chromium_talker_on_the_demo_page() {
    let edge = start_edge(|s| {
        s.token_secret = None;
        s.dev = true;
    })
    .await;
    let spec = json!({"base": format!("http://{}", edge.http_addr), "channel": "chromium-demo", "duration": 4});
    let report = run_python("chromium_demo.py", spec, Duration::from_secs(120)).await;
    let talker = &report["talker"];
    let listener = &report["listener"];
    assert_eq!(talker["state"], "connected", "{report}");
    assert_eq!(listener["state"], "connected", "{report}");

    let talker_ssrc = talker["outbound"][0]["ssrc"].as_u64().expect("talker sends audio");
    assert!(talker["outbound"][0]["packetsSent"].as_u64().unwrap() > 0, "{report}");
    // The talker hears nobody: nobody gets their own voice back.
    assert!(
        talker["inbound"].as_array().unwrap().iter().all(|s| s["packetsReceived"] == 0),
        "talker received audio while alone: {report}"
    );

    let inbound = listener["inbound"].as_array().unwrap();
    let heard: Vec<_> = inbound.iter().filter(|s| s["packetsReceived"].as_u64().unwrap() > 0).collect();
    assert_eq!(heard.len(), 1, "listener hears one slot: {report}");
    assert!(heard[0]["totalAudioEnergy"].as_f64().unwrap() > 0.0, "listener's audio is silent: {report}");
    let csrcs: Vec<u64> = listener["csrcs"].as_array().unwrap().iter().map(|c| c["source"].as_u64().unwrap()).collect();
    assert_eq!(csrcs.len(), 1, "getContributingSources() names one talker: {report}");
    assert_ne!(csrcs[0], talker_ssrc, "the SFU names speakers, not their clients: {report}");
    // The page tells the person who is talking and whom they hear.
    assert_eq!(listener["hearing"], json!(["alice"]), "{report}");
    assert!(
        listener["speakers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["speaking"] == true && s["text"].as_str().unwrap().starts_with("alice")),
        "{report}"
    );
}
