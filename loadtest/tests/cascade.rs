//! The cascade with real WebRTC clients (aiortc): a core and edges on loopback, each on
//! its own runtime with real UDP and QUIC. Assertions are about audio that arrived.

#[path = "../../tests/support/interop.rs"]
mod interop;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_sfu::token::{unix_now, Claims, Role, TokenKeys};
use interop::{client, heard_tracks, run_python, u64s};
use loadtest::cluster::{ClusterSpec, LocalCluster};
use serde_json::{json, Value};

fn token(cluster: &LocalCluster, role: Role, sub: &str) -> String {
    TokenKeys::new(cluster.spec.token_secret.as_bytes()).sign(&Claims {
        sub: sub.into(),
        channel: "lobby".into(),
        role,
        exp: unix_now() + 600,
    })
}

fn base(cluster: &LocalCluster, edge: usize) -> String {
    format!("http://{}", cluster.edges[edge].http_addr)
}

/// A speaker that also listens on `slots - 1` more tracks.
fn speaker(cluster: &LocalCluster, edge: usize, name: &str, tone: f64, schedule: Value, amplitude: u32) -> Value {
    json!({"name": name, "base": base(cluster, edge), "path": "/join/lobby", "token": token(cluster, Role::Speaker, name),
           "tone": tone, "schedule": schedule, "amplitude": amplitude, "recv_tracks": cluster.spec.slots - 1})
}

fn listener(cluster: &LocalCluster, edge: usize, name: &str) -> Value {
    json!({"name": name, "base": base(cluster, edge), "path": "/whep/lobby", "token": token(cluster, Role::Listener, name),
           "recv_tracks": cluster.spec.slots, "start_delay": 0.3})
}

/// (time since the clients started, sorted SSRCs the core selected).
type Samples = Vec<(Duration, Vec<u64>)>;

/// The core's selection for "lobby", sampled every 100 ms while the clients run.
struct SelectionLog {
    seen: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl SelectionLog {
    fn start(cluster: &LocalCluster) -> Self {
        let handle = cluster.core.as_ref().unwrap().node.handle.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        let start = std::time::Instant::now();
        let task = tokio::spawn(async move {
            loop {
                if let Some(channels) = handle.channels().await {
                    if let Some(c) = channels.iter().find(|c| c.name == "lobby") {
                        let s = sorted(c.selected.iter().flatten().map(|&x| u64::from(x)).collect());
                        out.lock().unwrap().push((start.elapsed(), s));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        SelectionLog { seen, task }
    }

    fn stop(self) -> Samples {
        self.task.abort();
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

/// The selection at `secs` into the run (before clients start leaving at the end).
fn selected_at(samples: &Samples, secs: f64) -> &[u64] {
    let t = Duration::from_secs_f64(secs);
    &samples.iter().rev().find(|(at, _)| *at <= t).expect("a sample by then").1
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}

/// The speaker id the SFU gave `name` (the CSRC listeners see).
fn speaker_id(report: &Value, name: &str) -> u64 {
    client(report, name)["speaker_id"].as_u64().unwrap_or_else(|| panic!("{name} has no speaker id: {report}"))
}

fn assert_tone(who: &str, track: &Value, tone: f64) {
    let freq = track["freq"].as_f64().unwrap_or_else(|| panic!("{who}: too little audio decoded: {track}"));
    assert!((freq - tone).abs() < 15.0, "{who}: decoded {freq} Hz, expected {tone} Hz: {track}");
    assert!(track["rms"].as_f64().unwrap() > 1000.0, "{who}: silent: {track}");
}

fn assert_in_order(who: &str, track: &Value) {
    assert_eq!(track["seq_gaps"], 0, "{who}: sequence gaps: {track}");
    assert_eq!(track["seq_backwards"], 0, "{who}: sequence went backwards: {track}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speakers_on_two_edges_reach_listeners_on_three_with_continuous_slots() {
    let cluster =
        LocalCluster::start(ClusterSpec { edges: 3, slots: 2, demo_tokens: false, ..Default::default() }).unwrap();
    let selections = SelectionLog::start(&cluster);
    // s1 talks throughout; s3 (edge 2) stops at 3 s and s2 starts at 4 s: slot B changes hands.
    let spec = json!({
        "base": base(&cluster, 0),
        "duration": 8,
        "clients": [
            speaker(&cluster, 0, "s1", 440.0, json!([[0, 60]]), 12000),
            speaker(&cluster, 0, "s2", 660.0, json!([[4, 60]]), 12000),
            speaker(&cluster, 1, "s3", 880.0, json!([[0, 3]]), 12000),
            listener(&cluster, 0, "l1"),
            listener(&cluster, 1, "l2"),
            listener(&cluster, 2, "l3"),
        ]
    });
    let report = run_python("aiortc_clients.py", spec, Duration::from_secs(120)).await;
    let selections = selections.stop();
    for c in report["clients"].as_array().unwrap() {
        assert_eq!(c["status"], 201, "{c}");
    }
    let (s1, s2, s3) = (speaker_id(&report, "s1"), speaker_id(&report, "s2"), speaker_id(&report, "s3"));
    let tones = HashMap::from([(s1, 440.0), (s2, 660.0), (s3, 880.0)]);

    // What the core selected: first s1 and s3, in the end s1 and s2.
    assert!(selections.iter().any(|(_, s)| *s == sorted(vec![s1, s3])), "{selections:?}");
    assert_eq!(selected_at(&selections, 7.0), sorted(vec![s1, s2]), "{selections:?}");

    for name in ["l1", "l2", "l3"] {
        let heard = heard_tracks(client(&report, name));
        assert_eq!(heard.len(), 2, "{name} hears two slots: {report}");
        let mut all: HashSet<u64> = HashSet::new();
        for t in &heard {
            assert_in_order(name, t);
            let order = u64s(&t["csrc_order"]);
            all.extend(&order);
            // Each slot ends on a speaker of the core's final selection, and sounds like them.
            let last = u64s(&t["last_second_csrcs"]);
            assert_eq!(last.len(), 1, "{name}: {t}");
            assert!(last[0] == s1 || last[0] == s2, "{name}: {t}");
            assert_tone(name, t, tones[&last[0]]);
        }
        assert_eq!(all, HashSet::from([s1, s2, s3]), "{name} hears exactly the selected speakers");
        // The slot that changed hands: s3 then s2, one continuous stream.
        assert!(heard.iter().any(|t| u64s(&t["csrc_order"]) == vec![s3, s2]), "{name}: no s3 -> s2 handover: {report}");
    }
    // Speakers hear the others, never themselves.
    for (name, own) in [("s1", s1), ("s2", s2), ("s3", s3)] {
        for t in heard_tracks(client(&report, name)) {
            assert!(!u64s(&t["csrcs"]).contains(&own), "{name} heard itself: {t}");
            assert_in_order(name, t);
        }
    }
    let s1_heard: HashSet<u64> = heard_tracks(client(&report, "s1")).iter().flat_map(|t| u64s(&t["csrcs"])).collect();
    assert_eq!(s1_heard, HashSet::from([s2, s3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quietest_of_four_is_not_forwarded_until_it_is_loud() {
    let cluster =
        LocalCluster::start(ClusterSpec { edges: 3, slots: 3, demo_tokens: false, ..Default::default() }).unwrap();
    let selections = SelectionLog::start(&cluster);
    // q whispers for 4 s then talks loudly; s3 goes silent at 4 s.
    let spec = json!({
        "base": base(&cluster, 0),
        "duration": 8,
        "clients": [
            speaker(&cluster, 0, "s1", 440.0, json!([[0, 60]]), 12000),
            speaker(&cluster, 0, "s2", 550.0, json!([[0, 60]]), 12000),
            speaker(&cluster, 1, "s3", 660.0, json!([[0, 4]]), 12000),
            json!({"name": "q", "base": base(&cluster, 1), "path": "/whip/lobby", "token": token(&cluster, Role::Speaker, "q"),
                   "tone": 880.0, "schedule": [[0, 60]], "amplitude": 12000, "send_direction": "sendonly", "quiet_until": 4, "quiet_amplitude": 60}),
            listener(&cluster, 2, "l3"),
        ]
    });
    let report = run_python("aiortc_clients.py", spec, Duration::from_secs(120)).await;
    let selections = selections.stop();
    let (s1, s2, s3, q) =
        (speaker_id(&report, "s1"), speaker_id(&report, "s2"), speaker_id(&report, "s3"), speaker_id(&report, "q"));
    // While q whispers, the three loud speakers hold the slots and q is never selected.
    let before: Vec<_> = selections.iter().filter(|(t, _)| *t < Duration::from_millis(3800)).collect();
    assert!(before.iter().any(|(_, s)| *s == sorted(vec![s1, s2, s3])), "{selections:?}");
    assert!(before.iter().all(|(_, s)| !s.contains(&q)), "the quietest was selected: {selections:?}");
    assert_eq!(selected_at(&selections, 7.0), sorted(vec![s1, s2, q]), "{selections:?}");

    let heard = heard_tracks(client(&report, "l3"));
    assert_eq!(heard.len(), 3, "{report}");
    let handover = heard.iter().find(|t| u64s(&t["csrc_order"]).contains(&q)).expect("q was forwarded once loud");
    assert_eq!(u64s(&handover["csrc_order"]), vec![s3, q], "q took s3's slot: {handover}");
    assert_in_order("l3", handover);
    assert_tone("l3", handover, 880.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_hear_again_after_the_core_restarts() {
    let mut cluster =
        LocalCluster::start(ClusterSpec { edges: 2, slots: 3, demo_tokens: false, ..Default::default() }).unwrap();
    let spec = json!({
        "base": base(&cluster, 0),
        "duration": 10,
        "clients": [
            speaker(&cluster, 0, "s1", 440.0, json!([[0, 60]]), 12000),
            listener(&cluster, 1, "l2"),
        ]
    });
    let clients = tokio::spawn(run_python("aiortc_clients.py", spec, Duration::from_secs(120)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let addr = tokio::task::block_in_place(|| cluster.kill_core()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| cluster.restart_core(addr)).unwrap();
    let report = clients.await.unwrap();

    let s1 = speaker_id(&report, "s1");
    let l2 = client(&report, "l2");
    assert_eq!(l2["status"], 201);
    let heard = heard_tracks(l2);
    assert_eq!(heard.len(), 1, "{report}");
    let t = heard[0];
    let gap = t["max_gap_ms"].as_f64().unwrap();
    // The core was down for a second: there was a gap, it was short, and audio came back
    // on the same session (one offer per client, no new SDP exchange).
    assert!(gap >= 500.0, "no outage seen ({gap} ms): did the core really stop? {t}");
    assert!(gap < 3000.0, "audio gap of {gap} ms after the core restart: {t}");
    assert_eq!(u64s(&t["last_second_csrcs"]), vec![s1], "audio resumed: {t}");
    assert_in_order("l2", t);
    assert_tone("l2", t, 440.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_on_two_edges_join_through_the_core_and_hear_each_other() {
    // As the README's main job runs it: demo tokens from each edge's own page, and the
    // page's offers placed by the core, which sends both to the edge serving the channel.
    let cluster = LocalCluster::start(ClusterSpec { edges: 3, ..Default::default() }).unwrap();
    let spec = json!({"base": base(&cluster, 0), "listen_base": base(&cluster, 2), "channel": "lobby", "duration": 4});
    let report = run_python("chromium_demo.py", spec, Duration::from_secs(120)).await;
    let (talker, listener) = (&report["talker"], &report["listener"]);
    assert_eq!(talker["state"], "connected", "{report}");
    assert_eq!(listener["state"], "connected", "{report}");
    let talker_ssrc = talker["outbound"][0]["ssrc"].as_u64().expect("talker sends");
    let heard: Vec<&Value> =
        listener["inbound"].as_array().unwrap().iter().filter(|s| s["packetsReceived"].as_u64().unwrap() > 0).collect();
    assert_eq!(heard.len(), 1, "{report}");
    assert!(heard[0]["totalAudioEnergy"].as_f64().unwrap() > 0.0, "{report}");
    let csrcs: Vec<u64> = listener["csrcs"].as_array().unwrap().iter().map(|c| c["source"].as_u64().unwrap()).collect();
    assert_eq!(csrcs.len(), 1, "{report}");
    assert_ne!(csrcs[0], talker_ssrc, "the SFU names speakers, not their clients: {report}");
    // The page names the speaker, learnt from the edge the core placed it on.
    assert_eq!(listener["hearing"], json!(["alice"]), "{report}");
    let edges = cluster.edge_urls();
    for who in [talker, listener] {
        let edge = format!("{}/", who["edge"].as_str().unwrap());
        assert!(edges.contains(&edge), "placed on an edge of the cluster: {report}");
        assert!(who["session"].as_str().unwrap().starts_with(&edge), "its session URL is on that edge: {report}");
    }
    // Placement packs a channel: the listener went where the talker is, not to edge 3.
    assert_eq!(talker["edge"], listener["edge"], "{report}");
}
