//! A real Prometheus (Debian's package, installed by `scripts/setup-test-deps.sh`)
//! scrapes a core and two edges carrying a speaker and two listeners; through its HTTP
//! API: every target is up, every `sfu_` series carries `node` and `role`, and the
//! packet counters it stored match what the clients sent and received.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use loadtest::client::{self, Role, Shared};
use loadtest::procs::NodeProcess;
use media::dtls::DtlsIdentity;

mod support;
use support::{free_port, secret, spawn_core, spawn_edge};

struct Prometheus {
    url: String,
    _child: tokio::process::Child,
    dir: std::path::PathBuf,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    async fn start(core: &NodeProcess, edges: &[NodeProcess]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("sfu-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let edge_targets: Vec<String> = edges.iter().map(|e| format!("'{}'", e.http)).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sfu-core\n    static_configs:\n      - targets: ['{}']\n  - job_name: sfu-edge\n    static_configs:\n      - targets: [{}]\n",
            core.http,
            edge_targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs (scripts/setup-test-deps.sh installs Debian's prometheus package)");
        let p =
            Prometheus { url: format!("http://127.0.0.1:{port}"), _child: child, dir, http: reqwest::Client::new() };
        let ready = async {
            while !p.http.get(format!("{}/-/ready", p.url)).send().await.is_ok_and(|r| r.status() == 200) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ready).await.expect("prometheus gets ready");
        p
    }

    async fn api(&self, path: &str) -> serde_json::Value {
        let body = self.http.get(format!("{}{path}", self.url)).send().await.unwrap().text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"].clone()
    }

    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let q: String = url_encode(promql);
        self.api(&format!("/api/v1/query?query={q}")).await["result"].as_array().unwrap().clone()
    }

    /// The one value of a query that yields one series.
    async fn value(&self, promql: &str) -> f64 {
        let r = self.query(promql).await;
        assert_eq!(r.len(), 1, "{promql}: {r:?}");
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_node_and_its_counters_match_the_traffic() {
    let (cluster, token_secret) = (secret('c'), secret('t'));
    let core = spawn_core(&cluster, &["--core-id", "core-1"]).await;
    let mut edges = Vec::new();
    for i in 1..=2 {
        edges.push(spawn_edge(i, &core.other.to_string(), &core, &cluster, &token_secret).await);
    }
    let prometheus = Prometheus::start(&core, &edges).await;
    let all_up = async {
        loop {
            let targets = prometheus.api("/api/v1/targets").await;
            let active = targets["activeTargets"].as_array().unwrap().clone();
            if active.len() == 3 && active.iter().all(|t| t["health"] == "up") {
                return active;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let targets = tokio::time::timeout(Duration::from_secs(60), all_up).await.expect("every target up");
    assert_eq!(targets.len(), 3);

    let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
    let join = |edge, name: &str, role| support::join(&shared, &token_secret, &edges, "scraped", edge, name, role);
    let speaker = join(0, "speaker", client::steady_speaker());
    let listeners = vec![join(0, "near", Role::Listener { slots: 3 }), join(1, "far", Role::Listener { slots: 3 })];
    tokio::time::timeout(Duration::from_secs(60), shared.wait_joined(3)).await.expect("joins").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // While the speaker talks: about 50 packets a second in at its edge.
    let rate = prometheus.value("sum(rate(sfu_edge_rtp_in_total[4s]))").await;
    assert!((35.0..=65.0).contains(&rate), "rtp in at {rate}/s for one speaker at 50/s");
    let listeners_now = prometheus.value("sum(sfu_edge_sessions{role=\"edge\"})").await;
    assert_eq!(listeners_now, 3.0, "a speaker and two listeners");
    let joins = prometheus.value("sum(sfu_http_responses_total{role=\"edge\",status=\"201\"})").await;
    assert_eq!(joins, 3.0, "three offers answered 201 Created");

    // Stop, let Prometheus scrape the final counts, and compare with the clients.
    let sent = speaker.stop().await.packets_sent;
    let mut received = 0u64;
    for l in listeners {
        let r = l.stop().await;
        received += r.streams.iter().map(|s| s.expected - s.lost).sum::<u64>();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rtp_in = prometheus.value("sum(sfu_edge_rtp_in_total)").await as u64;
    let rtp_out = prometheus.value("sum(sfu_edge_rtp_out_total)").await as u64;
    assert!(rtp_in <= sent && rtp_in + 5 >= sent, "the edge counted {rtp_in} of {sent} sent");
    assert!(rtp_out >= received && rtp_out <= received + 10, "the edges counted {rtp_out}, listeners got {received}");
    assert!(rtp_out >= 2 * sent - 20, "two listeners heard {rtp_out} of 2 x {sent}");
    let uplinked = prometheus.value("sum(sfu_edge_uplink_out_total)").await;
    let core_in = prometheus.value("sum(sfu_core_datagrams_in_total)").await;
    assert!(uplinked >= core_in && uplinked - core_in <= 5.0, "uplinked {uplinked}, the core got {core_in}");

    // Every sfu_ series carries node and role, and the job's labels.
    let series = prometheus.query("{__name__=~\"sfu_.+\"}").await;
    assert!(series.len() > 50, "{}", series.len());
    for s in &series {
        let m = &s["metric"];
        let role = m["role"].as_str().unwrap_or_else(|| panic!("no role: {m}"));
        assert!(m["node"].is_string(), "no node: {m}");
        assert_eq!(m["job"].as_str().unwrap(), format!("sfu-{role}"), "{m}");
    }
}
