//! What `/metrics` says, from a core and edges carrying real traffic: Prometheus's own
//! checker (`promtool check metrics`, Debian's `prometheus` package, installed by
//! `scripts/setup-test-deps.sh`) finds nothing to fault, every series has a help line,
//! and every series is one the catalogue and the README's table know.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use loadtest::client::{self, Role, Shared};
use media::dtls::DtlsIdentity;

mod support;
use support::{secret, spawn_core, spawn_edge_with};

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

/// The samples of `name` whose labels include `label` (`key="value"`), summed; there must
/// be one.
fn sample(body: &str, name: &str, label: &str) -> f64 {
    loadtest::forwarding::series_sum(body, name, label).unwrap_or_else(|| panic!("no {name} with {label} in:\n{body}"))
}

/// Offers the edge at `http` must refuse, each for a reason of its own.
async fn refused_offers(http: std::net::SocketAddr, token_secret: &str) {
    let token = |channel: &str| {
        TokenKeys::new(token_secret.as_bytes()).sign(&Claims {
            sub: "refused".into(),
            channel: channel.into(),
            role: TokenRole::Listener,
            exp: unix_now() + 600,
        })
    };
    let client = reqwest::Client::new();
    let url = format!("http://{http}/whep/metrics");
    let offer = |token: Option<String>, content_type: &str, body: &str| {
        let mut r = client.post(&url).header("content-type", content_type).body(body.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let statuses = [
        offer(None, "application/sdp", "v=0").await.unwrap().status().as_u16(),
        offer(Some(token("elsewhere")), "application/sdp", "v=0").await.unwrap().status().as_u16(),
        offer(Some(token("metrics")), "text/plain", "v=0").await.unwrap().status().as_u16(),
        offer(Some(token("metrics")), "application/sdp", "v=0").await.unwrap().status().as_u16(),
    ];
    assert_eq!(statuses, [401, 403, 415, 400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_exposes_metrics_that_promtool_accepts_and_the_readme_lists() {
    let (cluster, token_secret) = (secret('c'), secret('t'));
    let core = spawn_core(&cluster, &[]).await;
    let mut edges = Vec::new();
    // DTLS connections are let go a second after each handshake; sessions go on.
    let linger = ["--dtls-linger", "1s"];
    for i in 1..=2 {
        edges.push(spawn_edge_with(i, &core.other.to_string(), &core, &cluster, &token_secret, &linger).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    refused_offers(edges[0].http, &token_secret).await;
    let placement = reqwest::Client::new().post(format!("http://{}/whep/no!such!channel", core.http)).send().await;
    assert_eq!(placement.unwrap().status().as_u16(), 400);
    let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
    let join = |edge, name: &str, role| support::join(&shared, &token_secret, &edges, "metrics", edge, name, role);
    let clients = vec![
        join(0, "speaker", client::steady_speaker()),
        join(0, "near", Role::Listener { slots: 3 }),
        join(1, "far", Role::Listener { slots: 3 }),
    ];
    tokio::time::timeout(Duration::from_secs(60), shared.wait_joined(3)).await.expect("joins").unwrap();
    // Past a link-quality report, so every per-link series has been set, and past the
    // DTLS linger.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut seen = BTreeSet::new();
    let mut bodies = Vec::new();
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
        // Media went through every node (speaker on edge 0, listeners on both), and each
        // measured its time inside.
        let forward = if role == "core" { "sfu_core_forward_seconds_count" } else { "sfu_edge_forward_seconds_count" };
        assert!(sample(&body, forward, "node=") > 0.0, "{role}: {forward} is 0");
        bodies.push(body);
    }
    for (reason, n) in
        [("unauthorized", 1.0), ("forbidden", 1.0), ("not_sdp", 1.0), ("bad_offer", 1.0), ("edge_full", 0.0)]
    {
        let refused = sample(&bodies[1], "sfu_edge_join_refusals_total", &format!("reason=\"{reason}\""));
        assert_eq!(refused, n, "edge-1's refusals for {reason}");
    }
    // Every session's DTLS connection was let go (2 sessions on edge 1, 1 on edge 2).
    assert_eq!(sample(&bodies[1], "sfu_edge_dtls_retired_total", "node="), 2.0);
    assert_eq!(sample(&bodies[2], "sfu_edge_dtls_retired_total", "node="), 1.0);
    for s in node_kit::metrics_catalogue::SERIES {
        assert!(readme.contains(&format!("`{}", s.name)), "the README's metrics table does not list {}", s.name);
    }
    // Listeners' reports and the joins are measured.
    assert!(seen.contains("sfu_edge_listener_loss_ratio_bucket") && seen.contains("sfu_edge_join_seconds_count"));
    // The link series are on both ends of a live link.
    assert!(seen.contains("sfu_relay_link_rtt_seconds") && seen.contains("sfu_relay_link_datagrams_received_total"));
    let mut heard = Vec::new();
    for c in clients {
        let report = c.stop().await;
        if report.listener {
            heard.push(report.streams.iter().map(|s| s.expected - s.lost).sum::<u64>());
        }
    }
    // Audio went on after the DTLS connections were let go (at 1 s): 3 s and more of
    // 50 packets a second, where a stop at the linger would leave about 50.
    assert!(heard.len() == 2 && heard.iter().all(|&n| n >= 100), "packets heard: {heard:?}");
    // Each client's DELETE ended its session, and was counted as such where it was.
    for (edge, n) in [(0, 2.0), (1, 1.0)] {
        let body = get(&format!("http://{}/metrics", edges[edge].http)).await;
        assert_eq!(sample(&body, "sfu_edge_sessions_closed_total", "reason=\"deleted\""), n, "edge {edge}");
        assert_eq!(sample(&body, "sfu_edge_sessions_closed_total", "reason=\"idle_timeout\""), 0.0, "edge {edge}");
        assert_eq!(sample(&body, "sfu_edge_sessions", "node="), 0.0, "edge {edge}");
    }
}
