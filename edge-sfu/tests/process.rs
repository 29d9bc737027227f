//! The edge binary's lifecycle: SIGTERM drains (not ready, no new sessions), sessions
//! end at the drain deadline, then the process exits cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use media::sdp_offer::{build_offer, OfferParams};

/// The `http=` address from the edge's "edge started" log line (ANSI colours stripped).
fn started_http(line: &str) -> Option<String> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    if !plain.contains("edge started") {
        return None;
    }
    plain.split_whitespace().find_map(|f| f.strip_prefix("http=")).map(str::to_owned)
}

/// One HTTP/1.1 request: the status and the body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: edge\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

fn offer() -> String {
    let fingerprint = [7u8; 32];
    build_offer(&OfferParams {
        ice_ufrag: "abcd",
        ice_pwd: "abcdefghijklmnopqrstuvwx",
        fingerprint: &fingerprint,
        send_ssrc: None,
        receive_sections: 1,
    })
}

/// The edge binary in development mode on loopback with `drain_deadline` and `env`: the
/// process, its HTTP address, and its log (read to the end, so it never blocks on a full
/// pipe).
fn start_edge(
    drain_deadline: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, String, std::thread::JoinHandle<Vec<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-sfu"))
        .args(["--dev", "--http", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--drain-deadline", drain_deadline])
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines.by_ref().map_while(Result::ok).find_map(|l| started_http(&l)).expect("the edge starts");
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    (child, addr, log)
}

/// A listener token of channel `lobby` from the edge's demo endpoint.
fn demo_token(addr: &str, name: &str) -> String {
    let (_, body) = http(addr, "GET", &format!("/demo/token?channel=lobby&name={name}&role=listener"), None, "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[test]
fn sigterm_drains_then_the_edge_exits_at_its_deadline() {
    let (mut child, addr, log) = start_edge("2s", &[]);
    let post = |name: &str| http(&addr, "POST", "/whep/lobby", Some(&demo_token(&addr, name)), &offer()).0;
    let readyz = || {
        let (status, body) = http(&addr, "GET", "/readyz", None, "");
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default())
    };
    assert_eq!(readyz().0, 200);
    assert_eq!(post("alice"), 201, "a session before the drain");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let since = Instant::now();
    let (status, body) = loop {
        let (status, body) = readyz();
        if status == 503 || since.elapsed() > Duration::from_secs(30) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "not ready while draining: {body}");
    assert_eq!((body["draining"].as_bool(), body["sessions"].as_u64()), (Some(true), Some(1)), "{body}");
    assert_eq!(post("bob"), 503, "no new session while draining");
    // The session ends at the deadline and the process exits by itself, cleanly.
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("drained"), "{log}");
    // Written to a pipe (as to a file or a journal): plain text, no colour codes.
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log that is not a terminal: {log}");
}

const ADMIN_TOKEN: &str = "an-operators-admin-token-of-40-bytes-long";

/// `edge-sfu drain` (the preStop hook) with this edge's HTTP address and `admin` token.
fn drain_command(addr: &str, admin: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-sfu"))
        .args(["drain", "--http", addr, "--drain-deadline", "2s"])
        .env("SFU_ADMIN_TOKEN", admin)
        // As in a pod, the hook sees the edge's whole environment.
        .env("SFU_TOKEN_SECRET", "the-edge-token-secret-of-forty-bytes-long")
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn the_drain_command_drains_the_running_edge_and_waits_for_its_sessions() {
    let (mut child, addr, log) = start_edge("10m", &[("SFU_ADMIN_TOKEN", ADMIN_TOKEN)]);
    assert_eq!(http(&addr, "POST", "/whep/lobby", Some(&demo_token(&addr, "alice")), &offer()).0, 201);

    // A wrong admin token drains nothing.
    let refused = drain_command(&addr, "not-the-admin-token-but-forty-bytes-long");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    assert_eq!(http(&addr, "GET", "/readyz", None, "").0, 200);

    // The command's deadline (2 s) is the edge's for this drain: the session that never
    // connects ends then, and the command returns once it has.
    let drained = drain_command(&addr, ADMIN_TOKEN);
    assert!(drained.status.success(), "{drained:?}");
    assert!(String::from_utf8_lossy(&drained.stderr).contains("no sessions left"), "{drained:?}");
    let (status, body) = http(&addr, "GET", "/readyz", None, "");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["draining"].as_bool(), body["sessions"].as_u64()), (503, Some(true), Some(0)));
    let (_, metrics) = http(&addr, "GET", "/metrics", None, "");
    let drained_line =
        metrics.lines().find(|l| l.starts_with("sfu_edge_sessions_closed_total") && l.contains("drained"));
    assert!(drained_line.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
    assert!(child.try_wait().unwrap().is_none(), "a drain leaves the process running");

    // Then SIGTERM (what the kubelet sends after the hook) finds nothing to wait for.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("drain requested by an operator"), "{log}");
}
