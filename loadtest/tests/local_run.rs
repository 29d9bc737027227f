//! `loadtest local` end to end, in a short form: real processes, real sockets, real
//! crypto; the report must show every listener receiving, without loss.

use std::process::Command;

/// One load test at a time: each starts a core, edges and a load generator, and two of
/// them on 2 cores would starve each other (media older than 60 ms is dropped as stale).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn short_local_run_meets_its_thresholds() {
    let _one = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let svg = dir.join("report.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["local", "--edges", "2", "--listeners", "20", "--speakers", "3", "--duration", "3s", "--ramp", "40"])
        .args(["--max-loss", "0%", "--quiet", "--churn", "2", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("end-to-end latency"), "the table is printed: {stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["listeners_joined"], 20, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["packets_lost"], 0, "{report}");
    // 20 listeners hear 3 speakers for 3+ s: thousands of stamped packets measured.
    assert!(report["latency"]["count"].as_u64().unwrap() > 20 * 3 * 100, "{report}");
    assert!(report["packets_expected"].as_u64().unwrap() >= report["latency"]["count"].as_u64().unwrap());
    assert!(report["packets_sent"].as_u64().unwrap() >= 3 * 150, "3 speakers for 3+ s: {report}");
    let edges = report["per_edge"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    assert!(edges.iter().all(|e| e["listeners"] == 10), "{report}");
    let procs: Vec<&str> =
        report["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(procs, vec!["core", "edge-1", "edge-2", "loadtest"]);
    assert!(report["processes"][1]["rss_max_mb"].as_f64().unwrap() > 1.0);
    // The steady phase alone: its length, what listeners heard (20 listeners, 3 streams
    // of 50 packets a second; counts are flushed each second, so within half either
    // way), and each process's CPU over it.
    let steady = &report["steady"];
    assert!(steady["seconds"].as_f64().unwrap() >= 3.0, "{report}");
    let heard = steady["packets_per_s"].as_f64().unwrap();
    assert!((1500.0..4500.0).contains(&heard), "{heard} packets/s: {report}");
    let steady_procs: Vec<&str> =
        steady["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(steady_procs, procs);
    assert!(steady["processes"][3]["cpu_cores"].as_f64().unwrap() > 0.0, "the generator worked: {report}");
    // Churned listeners left and rejoined; each still counts once, and nothing was lost.
    assert!(report["churned"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["sfu_rss_end_mb"].as_f64().unwrap() > 1.0, "{report}");
    // Honest clients gave the nodes nothing to refuse as forged or malformed.
    let drops = report["drops"].as_object().expect("the nodes' drops are reported");
    for reason in ["srtp_auth", "srtp_replay", "rtp_malformed", "rtcp_malformed", "stun_bad_credentials"] {
        assert!(!drops.contains_key(&format!("edge {reason}")), "{reason}: {report}");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("Loss per edge") && plot.contains("<polyline"), "not a plot");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missed_thresholds_fail_the_run() {
    let _one = one_at_a_time();
    // No loss is possible below 0 %, but a 1 µs p99 cannot be met: exit 1 with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "local",
            "--edges",
            "1",
            "--listeners",
            "3",
            "--speakers",
            "1",
            "--duration",
            "1s",
            "--max-p99",
            "1us",
            "--quiet",
        ])
        .output()
        .expect("loadtest runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("threshold missed: p99 latency"), "{stderr}");
}

#[test]
fn five_hundred_joins_at_once_through_the_core_fill_edges_to_their_cap() {
    let _one = one_at_a_time();
    // 500 listeners ask the core at once; placement counts its own recent redirects, so
    // no edge goes over its 25 for the channel and nobody is refused while room remains.
    let dir = std::env::temp_dir().join(format!("loadtest-placement-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["local", "--edges", "25", "--listeners", "500", "--speakers", "1", "--via-core"])
        .args(["--ramp", "500", "--duration", "3s", "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["failed"], 0, "nobody refused: {report}");
    assert_eq!(report["listeners_joined"], 500, "every listener heard the speaker: {report}");
    let per_edge: Vec<u64> =
        report["per_edge"].as_array().unwrap().iter().map(|e| e["listeners"].as_u64().unwrap()).collect();
    assert_eq!(per_edge.len(), 25, "{report}");
    assert!(per_edge.iter().all(|&n| n <= 25), "an edge over its cap: {per_edge:?}");
    assert_eq!(per_edge.iter().sum::<u64>(), 500, "{per_edge:?}");
    // Packed: an edge serving the channel fills before another is opened.
    assert_eq!(per_edge.iter().filter(|&&n| n == 25).count(), 20, "{per_edge:?}");
    // Audio, not only joins: a stamped packet stream measured at every listener (at
    // least 20 packets each of the 150 a 3 s window holds: a busy machine joins slowly
    // and the speaker may start late).
    assert!(report["latency"]["count"].as_u64().unwrap() >= 500 * 20, "{report}");
    assert!(report["loss_percent"].as_f64().unwrap() < 5.0, "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sampling_load_generator_counts_every_packet_and_times_a_sample() {
    let _one = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("loadtest-sample-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["local", "--edges", "2", "--listeners", "10", "--speakers", "3", "--duration", "3s", "--ramp", "20"])
        .args(["--pattern", "turn-taking", "--turn", "500ms", "--decrypt-every", "10", "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("loadtest runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let n = |key: &str| report[key].as_u64().unwrap_or_else(|| panic!("{key}: {report}"));
    // Every packet is counted from its clear header ...
    assert_eq!(n("packets_received"), n("packets_expected") - n("packets_lost"), "{report}");
    assert!(n("packets_received") > 10 * 100, "{report}");
    // ... a tenth of them decrypted and timed, plus each turn's first packets.
    let (decrypted, received) = (n("packets_decrypted"), n("packets_received"));
    assert!(decrypted * 10 >= received && decrypted * 3 < received, "{decrypted} of {received}");
    assert_eq!(report["latency"]["count"].as_u64().unwrap(), decrypted, "each decrypted packet is timed");
    // Turns are still seen: the first packet of each talk spurt is marked and decrypted.
    assert!(report["speaker_switch"]["count"].as_u64().unwrap() >= 10 * 3, "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}
