//! What `/metrics` says, from a core and edges carrying real traffic: Prometheus's own
//! checker (`promtool check metrics`, Debian's `prometheus` package, installed by
//! `scripts/setup-test-deps.sh`) finds nothing to fault, every series has a help line,
//! and every series is one the catalogue and the README's table know.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use loadtest::client::{self, Role, Shared};
use media::dtls::DtlsIdentity;

mod support;
use support::{secret, spawn_core, spawn_edge};

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn promtool_check(body: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup-test-deps.sh installs Debian's prometheus package)");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && said.trim().is_empty(), said)
}

/// The metric names of an exposition, and those with a HELP line.
fn names(body: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut series = BTreeSet::new();
    let mut help = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.insert(rest.split(' ').next().unwrap().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            series.insert(line.split(['{', ' ']).next().unwrap().to_owned());
        }
    }
    (series, help)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_exposes_metrics_that_promtool_accepts_and_the_readme_lists() {
    let (cluster, token_secret) = (secret('c'), secret('t'));
    let core = spawn_core(&cluster, &[]).await;
    let mut edges = Vec::new();
    for i in 1..=2 {
        edges.push(spawn_edge(i, &core.other.to_string(), &core, &cluster, &token_secret).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
    let join = |edge, name: &str, role| support::join(&shared, &token_secret, &edges, "metrics", edge, name, role);
    let clients = vec![
        join(0, "speaker", client::steady_speaker()),
        join(0, "near", Role::Listener { slots: 3 }),
        join(1, "far", Role::Listener { slots: 3 }),
    ];
    tokio::time::timeout(Duration::from_secs(60), shared.wait_joined(3)).await.expect("joins").unwrap();
    // Past a link-quality report, so every per-link series has been set.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut seen = BTreeSet::new();
    let nodes = [("core", core.http)].into_iter().chain(edges.iter().map(|e| ("edge", e.http)));
    for (role, http) in nodes {
        let body = get(&format!("http://{http}/metrics")).await;
        let (ok, said) = promtool_check(&body);
        assert!(ok, "promtool check metrics on the {role}'s /metrics:\n{said}");
        let (series, help) = names(&body);
        assert!(series.len() > 10, "{role}: {body}");
        for name in &series {
            assert!(name.starts_with("sfu_"), "{role}: {name} lacks the sfu_ prefix");
            let known = node_kit::metrics_catalogue::find(name);
            let known = known.unwrap_or_else(|| panic!("{role}: {name} is not in the catalogue"));
            // (A histogram's HELP line names the histogram, not its _bucket, _sum, _count.)
            assert!(help.contains(known.name), "{role}: {name} has no HELP line");
        }
        for line in body.lines().filter(|l| l.starts_with("sfu_")) {
            assert!(line.contains(&format!("role=\"{role}\"")) && line.contains("node=\""), "{role}: {line}");
        }
        seen.extend(series);
    }
    for s in node_kit::metrics_catalogue::SERIES {
        assert!(readme.contains(&format!("`{}", s.name)), "the README's metrics table does not list {}", s.name);
    }
    // Listeners' reports and the joins are measured.
    assert!(seen.contains("sfu_edge_listener_loss_ratio_bucket") && seen.contains("sfu_edge_join_seconds_count"));
    // The link series are on both ends of a live link.
    assert!(seen.contains("sfu_relay_link_rtt_seconds") && seen.contains("sfu_relay_link_datagrams_received_total"));
    for c in clients {
        drop(c.stop().await);
    }
}
