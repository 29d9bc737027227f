//! Several cores sharing channels through a real Redis (Debian's `redis-server`, started
//! by the test on a loopback port), cores and edges as real processes, and real clients
//! (ICE, DTLS, SRTP) in this one: failover after SIGKILL, a paused owner (SIGSTOP), and
//! a Redis outage. Leases: 3 s in Redis, renewed every second (the defaults).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use loadtest::client::{self, ClientReport, ClientSpec, Role, RunningClient, Shared};
use loadtest::procs::{spawn_exe, NodeProcess};
use media::dtls::DtlsIdentity;
use tokio::process::{Child, Command};

const CHANNEL: &str = "fleet";

fn secret(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (scripts/setup-test-deps.sh installs it)");
        let up = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), up).await.expect("redis-server listens");
        Redis { port, child: Some(child) }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

fn signal(process: &NodeProcess, name: &str) {
    let pid = process.pid().expect("running").to_string();
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

struct Fleet {
    redis: Redis,
    cores: Vec<NodeProcess>,
    edges: Vec<NodeProcess>,
    token_secret: String,
    admin: String,
    http: reqwest::Client,
}

impl Fleet {
    /// `cores` cores on one Redis; each edge links to every core, its own list rotated so
    /// the edges ask different cores first.
    async fn start(cores: usize, edges: usize) -> Fleet {
        let exe = std::path::Path::new(env!("CARGO_BIN_EXE_loadtest"));
        let redis = Redis::start(free_port()).await;
        let (cluster, token_secret, admin) = (secret('c'), secret('t'), secret('a'));
        let mut core_nodes = Vec::new();
        for i in 1..=cores {
            let args = [
                "core",
                "--cluster-secret",
                &cluster,
                "--slots",
                "3",
                "--redis",
                &redis.url(),
                "--admin-token",
                &admin,
                "--core-id",
                &format!("core-{i}"),
            ];
            core_nodes.push(spawn_exe(exe, &format!("core-{i}"), &args.map(String::from)).await.unwrap());
        }
        let quic: Vec<String> = core_nodes.iter().map(|c| c.other.to_string()).collect();
        let mut edge_nodes = Vec::new();
        for i in 0..edges {
            let list: Vec<&str> = (0..cores).map(|k| quic[(i + k) % cores].as_str()).collect();
            let args = [
                "edge",
                "--core",
                &list.join(","),
                "--core-url",
                &format!("http://{}", core_nodes[i % cores].http),
                "--cluster-secret",
                &cluster,
                "--token-secret",
                &token_secret,
                "--max-listeners",
                "25",
                "--slots",
                "3",
                "--id",
                &format!("edge-{}", i + 1),
            ];
            edge_nodes.push(spawn_exe(exe, &format!("edge-{}", i + 1), &args.map(String::from)).await.unwrap());
        }
        let fleet =
            Fleet { redis, cores: core_nodes, edges: edge_nodes, token_secret, admin, http: reqwest::Client::new() };
        for e in &fleet.edges {
            let ready = async {
                while fleet.get(&format!("http://{}/readyz", e.http)).await.0 != 200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), ready).await.expect("every edge gets ready");
        }
        fleet
    }

    async fn get(&self, url: &str) -> (u16, String) {
        match self.http.get(url).bearer_auth(&self.admin).timeout(Duration::from_secs(2)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// The cores (index, epoch) that serve the channel now, of those that answer.
    async fn owners(&self, skip: Option<usize>) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for (i, core) in self.cores.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let (status, body) = self.get(&format!("http://{}/v1/channels", core.http)).await;
            if status != 200 {
                continue;
            }
            let channels: serde_json::Value = serde_json::from_str(&body).unwrap();
            for c in channels.as_array().unwrap() {
                if c["name"] == CHANNEL {
                    out.push((i, c["epoch"].as_u64().unwrap()));
                }
            }
        }
        out
    }

    /// Waits until exactly one core (other than `skip`) serves the channel; its index and epoch.
    async fn owner(&self, skip: Option<usize>) -> (usize, u64) {
        let found = async {
            loop {
                if let [one] = self.owners(skip).await[..] {
                    return one;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), found).await.expect("one core owns the channel")
    }

    async fn core_counter(&self, core: usize, name: &str) -> u64 {
        let (_, body) = self.get(&format!("http://{}/metrics", self.cores[core].http)).await;
        loadtest::forwarding::series_sum(&body, name, "")
            .unwrap_or_else(|| panic!("{name} in the metrics of core {core}")) as u64
    }

    fn client(&self, shared: &Arc<Shared>, edge: usize, name: &str, speaker: bool) -> RunningClient {
        let token = TokenKeys::new(self.token_secret.as_bytes()).sign(&Claims {
            sub: name.into(),
            channel: CHANNEL.into(),
            role: if speaker { TokenRole::Speaker } else { TokenRole::Listener },
            exp: unix_now() + 600,
        });
        let role = if speaker { client::steady_speaker() } else { Role::Listener { slots: 3 } };
        let base_url = format!("http://{}", self.edges[edge].http);
        RunningClient::spawn(
            ClientSpec { name: name.into(), edge, base_url, channel: CHANNEL.into(), token, role },
            shared,
        )
    }

    /// A speaker on the first edge and `per_edge` listeners on every edge, all hearing.
    async fn channel(&self, per_edge: usize) -> (Arc<Shared>, RunningClient, Vec<RunningClient>) {
        let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
        let speaker = self.client(&shared, 0, "speaker", true);
        let mut listeners = Vec::new();
        for e in 0..self.edges.len() {
            for l in 0..per_edge {
                listeners.push(self.client(&shared, e, &format!("listener-{e}-{l}"), false));
            }
        }
        let all = 1 + listeners.len() as u64;
        tokio::time::timeout(Duration::from_secs(60), shared.wait_joined(all)).await.expect("joins").unwrap();
        (shared, speaker, listeners)
    }
}

/// Prints a measurement and keeps it in `target/tmp/fleet-report.txt`, which the test
/// command shows after the tests (cargo hides a passing test's output).
fn report(line: String) {
    use std::io::Write;
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

async fn stop_all(listeners: Vec<RunningClient>) -> Vec<ClientReport> {
    let mut out = Vec::new();
    for l in listeners {
        out.push(l.stop().await);
    }
    out
}

/// Every listener heard audio after `since` + `after`, had no gap of `max_gap` or more,
/// and lost no packet of its slots; the longest gap, reported.
fn assert_heard_through(reports: &[ClientReport], since: Instant, after: Duration, max_gap: Duration) -> Duration {
    let mut longest = Duration::ZERO;
    for r in reports {
        assert!(r.error.is_none(), "{}: {:?}", r.name, r.error);
        let last = r.last_packet_at.unwrap_or_else(|| panic!("{}: no audio at all", r.name));
        assert!(last > since + after, "{}: no audio {after:?} after the event", r.name);
        assert!(r.max_gap < max_gap, "{}: audio stopped for {:?}", r.name, r.max_gap);
        let lost: u64 = r.streams.iter().map(|s| s.lost).sum();
        let duplicates: u64 = r.streams.iter().map(|s| s.duplicates).sum();
        assert_eq!((lost, duplicates), (0, 0), "{}: slots stay continuous", r.name);
        longest = longest.max(r.max_gap);
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owning_core_dies_and_listeners_hear_again_without_rejoining() {
    let fleet = Fleet::start(3, 4).await;
    let (_shared, speaker, listeners) = fleet.channel(2).await;
    let (owner, epoch) = fleet.owner(None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    signal(&fleet.cores[owner], "KILL");
    let killed = Instant::now();
    let (new_owner, new_epoch) = fleet.owner(Some(owner)).await;
    assert_ne!(new_owner, owner);
    assert!(new_epoch > epoch, "a new lease has a higher epoch: {epoch} then {new_epoch}");
    // Audio for a while on the new owner, then the reports.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reports = stop_all(listeners).await;
    let gap = assert_heard_through(&reports, killed, Duration::from_secs(3), Duration::from_secs(5));
    report(format!(
        "failover: core-{} SIGKILLed, core-{} took the channel; longest silence at a listener {} ms (8 listeners on 4 edges, lease 3 s)",
        owner + 1,
        new_owner + 1,
        gap.as_millis()
    ));
    assert!(speaker.stop().await.error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_never_feeds_listeners_beside_the_new_one() {
    let fleet = Fleet::start(2, 2).await;
    let (_shared, speaker, listeners) = fleet.channel(2).await;
    let (owner, epoch) = fleet.owner(None).await;

    signal(&fleet.cores[owner], "STOP");
    let paused = Instant::now();
    let (new_owner, new_epoch) = fleet.owner(Some(owner)).await;
    assert!(new_epoch > epoch);
    // Past the paused owner's lease by far, then it runs again.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed())).await;
    signal(&fleet.cores[owner], "CONT");
    // On its own clock its lease is over: it gives the channel up at once, and the one
    // owner is the new one.
    let (serving, _) = fleet.owner(None).await;
    assert_eq!(serving, new_owner, "two cores serve the channel");
    let sent = fleet.core_counter(owner, "sfu_core_datagrams_out_total").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.core_counter(owner, "sfu_core_datagrams_out_total").await,
        sent,
        "the old owner sends media again"
    );
    assert_eq!(fleet.owners(None).await, vec![(new_owner, new_epoch)]);
    let reports = stop_all(listeners).await;
    let gap = assert_heard_through(&reports, paused, Duration::from_secs(6), Duration::from_secs(6));
    report(format!("paused owner (SIGSTOP 5 s): longest silence at a listener {} ms", gap.as_millis()));
    assert!(speaker.stop().await.error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_flows_on_while_redis_is_down_and_new_channels_wait_for_it() {
    let mut fleet = Fleet::start(2, 2).await;
    let (_shared, speaker, listeners) = fleet.channel(2).await;
    let (owner, epoch) = fleet.owner(None).await;

    fleet.redis.kill().await;
    let down = Instant::now();
    let new_channel = |core: usize| format!("http://{}/whep/another", fleet.cores[core].http);
    let placement = |url: String| async move {
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(url)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    // Twice the lease lifetime without Redis.
    while down.elapsed() < Duration::from_secs(6) {
        for node in fleet.cores.iter().chain(&fleet.edges) {
            assert_eq!(fleet.get(&format!("http://{}/healthz", node.http)).await.0, 200, "{} unhealthy", node.name);
            assert_eq!(fleet.get(&format!("http://{}/readyz", node.http)).await.0, 200, "{} not ready", node.name);
        }
        let (status, body) = placement(new_channel(1 - owner)).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("Redis"), "a clear error: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(fleet.owners(None).await, vec![(owner, epoch)], "the owner kept its channel");

    // Redis is back (empty): new channels are placed again, and the owner takes its
    // channel's lease again at a higher epoch, which its edges accept without a gap.
    fleet.redis = Redis::start(fleet.redis.port).await;
    let placed = async {
        while placement(new_channel(1 - owner)).await.0 != 307 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), placed).await.expect("placement works again");
    let retaken = async {
        loop {
            if let [(core, e)] = fleet.owners(None).await[..] {
                if e > epoch {
                    return core;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let core = tokio::time::timeout(Duration::from_secs(30), retaken).await.expect("the lease is taken again");
    assert_eq!(core, owner);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reports = stop_all(listeners).await;
    let gap = assert_heard_through(&reports, down, Duration::from_secs(7), Duration::from_secs(2));
    report(format!(
        "redis outage of {} ms: longest silence at a listener {} ms",
        down.elapsed().as_millis(),
        gap.as_millis()
    ));
    assert!(speaker.stop().await.error.is_none());
}
