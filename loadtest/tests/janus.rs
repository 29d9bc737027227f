//! The load tester's Janus client against a real Janus (Debian's, installed by
//! `scripts/setup-test-deps.sh`), as `benches/janus_compare.py` uses it: a publisher and
//! listeners in an audio-only VideoRoom room, with ICE, DTLS and SRTP; the listeners hear
//! every packet.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Janus(Child);

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Janus with only its HTTP transport (on loopback) and the VideoRoom plugin.
fn start_janus(dir: &std::path::Path, port: u16) -> Janus {
    let lib = loadtest::janus::DEBIAN_LIB;
    assert!(std::path::Path::new(lib).exists(), "janus is not installed: run scripts/setup-test-deps.sh");
    let config = loadtest::janus::write_config(dir, port, None).expect("janus configuration written");
    let log = std::fs::File::create(dir.join("janus.log")).unwrap();
    let child = Command::new("janus")
        .arg("-C")
        .arg(config)
        .arg("-F")
        .arg(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("janus runs");
    Janus(child)
}

/// Janus answers its HTTP API.
fn wait_ready(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "janus did not open its HTTP port");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_load_tester_drives_a_real_janus_videoroom_and_its_listeners_hear() {
    let dir = std::env::temp_dir().join(format!("janus-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let _janus = start_janus(&dir, port);
    wait_ready(port);
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "--janus", &format!("http://127.0.0.1:{port}"), "--listeners", "3", "--speakers", "2"])
        .args(["--duration", "3s", "--ramp", "10", "--max-loss", "0%", "--quiet", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.join("janus.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "loadtest failed:\n{stdout}\n{}\njanus:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["listeners_joined"], 3, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["packets_lost"], 0, "{report}");
    // Each listener subscribed to both publishers: 2 streams of 50 packets a second for 3+ s.
    assert!(report["packets_received"].as_u64().unwrap() >= 3 * 2 * 100, "{report}");
    assert!(report["latency"]["count"].as_u64().unwrap() >= 3 * 2 * 100, "every packet timed: {report}");
    let _ = std::fs::remove_dir_all(&dir);
}
