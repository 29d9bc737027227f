//! Shared set-up for the edge's integration tests: a real edge on loopback, tokens,
//! and the interop clients (aiortc, Chromium) installed by scripts/setup-test-deps.sh.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use edge_sfu::token::{unix_now, Claims, Role, TokenKeys};
use edge_sfu::{RunningEdge, Settings};
use tokio::io::AsyncWriteExt;

pub const SECRET: &str = "interop-test-secret";

pub async fn start_edge(tweak: impl FnOnce(&mut Settings)) -> RunningEdge {
    let mut settings = Settings {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        token_secret: Some(SECRET.to_owned()),
        ..Settings::default()
    };
    tweak(&mut settings);
    edge_sfu::start(settings).await.expect("edge starts")
}

pub fn token(channel: &str, role: Role, sub: &str) -> String {
    TokenKeys::new(SECRET.as_bytes()).sign(&Claims {
        sub: sub.into(),
        channel: channel.into(),
        role,
        exp: unix_now() + 600,
    })
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The venv Python with aiortc; a missing one fails the test with how to fix it.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SFU_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-venv/bin/python"));
    assert!(
        path.exists(),
        "interop client Python not found at {}: run scripts/setup-test-deps.sh (the README's test command does)",
        path.display()
    );
    path
}

/// Runs a Python helper from tests/interop with `spec` on stdin; returns its JSON output.
pub async fn run_python(script: &str, spec: serde_json::Value, limit: Duration) -> serde_json::Value {
    let mut child = tokio::process::Command::new(python())
        .arg(workspace_root().join("tests/interop").join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(spec.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {limit:?}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stderr}"))
}
