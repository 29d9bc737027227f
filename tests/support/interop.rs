//! Runs the interop clients in tests/interop (installed by scripts/setup-test-deps.sh)
//! from any crate's integration tests: `#[path = "../../tests/support/interop.rs"] mod interop;`
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

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
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stderr}"))
}

/// One client's report by name.
pub fn client<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["clients"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

/// The tracks of a client that received packets.
pub fn heard_tracks(c: &serde_json::Value) -> Vec<&serde_json::Value> {
    c["tracks"].as_array().unwrap().iter().filter(|t| t["packets"].as_u64().unwrap() > 0).collect()
}

pub fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}
