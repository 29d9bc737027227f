use anyhow::Context;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use loadtest::client::TalkPattern;
use loadtest::cluster::{ClusterSpec, LocalCluster};
use loadtest::procs::{self, ProcSampler};
use loadtest::report::Report;
use loadtest::scenario::{self, Scenario, Tokens};

/// jemalloc, as the node binaries: this binary runs a local cluster's nodes too, so they
/// allocate as in production (benches/RESULTS.md, "Memory per listener and the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Local clusters and load tests for the cascading SFU.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a core and several edges on loopback and print each edge's demo page.
    Cluster {
        /// Number of edges.
        #[arg(long, default_value_t = 3)]
        edges: usize,
        /// Active speakers per channel.
        #[arg(long, default_value_t = 3)]
        slots: usize,
        /// First edge's HTTP port; the others follow.
        #[arg(long, default_value_t = 8081)]
        http_port: u16,
        /// First edge's UDP media port; the others follow.
        #[arg(long, default_value_t = 3479)]
        udp_port: u16,
        /// The first core's QUIC port; the others follow.
        #[arg(long, default_value_t = 4433)]
        quic_port: u16,
        /// The first core's HTTP port (placement, operator API); the others follow.
        #[arg(long, default_value_t = 8070)]
        core_http_port: u16,
        /// Number of cores; more than one needs --redis.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Share channels between the cores through leases in Redis: a URL, or nothing to
        /// start a local redis-server on a free loopback port.
        #[arg(long, num_args = 0..=1, default_missing_value = "local")]
        redis: Option<String>,
    },
    /// Start a core and edges as processes on loopback, then load them.
    Local {
        /// Number of edges.
        #[arg(long, default_value_t = 4)]
        edges: usize,
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Load a running deployment.
    Run {
        /// The core's HTTP URL; its /edges lists the edges to use.
        #[arg(long, required_unless_present_any = ["edge", "janus"])]
        core: Option<String>,
        /// An edge's signalling URL (repeat for several) instead of --core.
        #[arg(long)]
        edge: Vec<String>,
        /// Join-token secret of the deployment (default: ask edges for demo tokens).
        #[arg(long, env = "SFU_TOKEN_SECRET", hide_env_values = true)]
        token_secret: Option<String>,
        /// The core's admin token, to list its edges with --core.
        #[arg(long, env = "SFU_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Load a Janus (its HTTP API's base URL, e.g. http://127.0.0.1:8088) instead:
        /// clients join a VideoRoom room, created audio-only if missing.
        #[arg(long, conflicts_with_all = ["core", "edge"])]
        janus: Option<String>,
        #[arg(long, default_value_t = 1234)]
        janus_room: u64,
        /// Sample this process (the server under test) for the report's CPU and memory;
        /// repeat for a server of several processes (named server-1, server-2, ...).
        #[arg(long)]
        watch_pid: Vec<u32>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Writes a minimal Janus configuration into DIR (its HTTP transport on
    /// 127.0.0.1:PORT and the VideoRoom plugin, nothing else) and prints the path for
    /// `janus -C`; `benches/janus_compare.py` starts Janus with it.
    JanusConfig {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        port: u16,
        /// Shared event loops instead of Janus's thread per handle.
        #[arg(long)]
        event_loops: Option<u32>,
    },
    /// An SFU node for `local` (internal).
    #[command(hide = true)]
    Node {
        #[command(subcommand)]
        node: Node,
    },
}

#[derive(Subcommand)]
enum Node {
    Core {
        #[arg(long)]
        cluster_secret: String,
        #[arg(long)]
        slots: usize,
        /// Share channels with other cores through this Redis.
        #[arg(long)]
        redis: Option<String>,
        #[arg(long)]
        admin_token: Option<String>,
        #[arg(long)]
        token_secret: Option<String>,
        #[arg(long)]
        core_id: Option<String>,
        #[arg(long, value_parser = humantime::parse_duration)]
        lease_ttl: Option<Duration>,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        relay_repair: bool,
    },
    Edge {
        #[arg(long)]
        core: String,
        #[arg(long)]
        core_url: String,
        #[arg(long)]
        cluster_secret: String,
        #[arg(long)]
        token_secret: String,
        #[arg(long)]
        max_listeners: usize,
        #[arg(long)]
        slots: usize,
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        relay_repair: bool,
        /// How long each session's DTLS connection is kept after its handshake.
        #[arg(long, value_parser = humantime::parse_duration)]
        dtls_linger: Option<Duration>,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Pin media worker k's thread to the k-th of these CPUs.
        #[arg(long, value_parser = edge_sfu::config::parse_cpu_list)]
        media_cpus: Option<edge_sfu::config::CpuList>,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Listeners to join.
    #[arg(long, default_value_t = 100)]
    listeners: usize,
    /// Speakers to join (first).
    #[arg(long, default_value_t = 3)]
    speakers: usize,
    /// Steady phase after the last listener joined (e.g. 20s, 5m).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Listener joins per second.
    #[arg(long, default_value_t = 50.0)]
    ramp: f64,
    /// Listeners leaving and rejoining per second in the steady phase.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Audio slots per listener.
    #[arg(long, default_value_t = 3)]
    slots: usize,
    /// How speakers talk.
    #[arg(long, value_enum, default_value_t = TalkPattern::Steady)]
    pattern: TalkPattern,
    /// Turn length for --pattern turn-taking.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    turn: Duration,
    /// Opus payload bytes per 20 ms packet (80 is about 32 kbit/s).
    #[arg(long, default_value_t = 80)]
    payload: usize,
    #[arg(long, default_value = "load")]
    channel: String,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Draw latency percentiles over time and loss per edge as SVG.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Fail (exit 1) when loss is above this, e.g. 0.5%.
    #[arg(long, value_parser = parse_percent)]
    max_loss: Option<f64>,
    /// Fail (exit 1) when p99 end-to-end latency is above this, e.g. 50ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_p99: Option<Duration>,
    /// No live progress display.
    #[arg(long)]
    quiet: bool,
    /// Attack the first edge (or the core) through the steady phase (`local` only).
    #[arg(long, value_enum)]
    attack: Option<loadtest::attack::AttackKind>,
    /// Attack packets, requests or connections a second (default: per attack).
    #[arg(long)]
    attack_rate: Option<u32>,
    /// Join every client through the core's placement (it redirects each to an edge).
    #[arg(long)]
    via_core: bool,
    /// Listeners decrypt (and time) one audio packet in this many, plus each talk
    /// spurt's first and each speaker change; loss, order, jitter and gaps come from
    /// every packet's clear header. Keeps the load generator from being the bottleneck.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    decrypt_every: u64,
    /// Listeners join, then never read again: measures what the SFU can send without
    /// the generator receiving it (loss and latency are then not measured; `local`
    /// reports the edges' forwarded packets per second instead).
    #[arg(long)]
    deaf_listeners: bool,
    /// Threads listeners receive in once connected, each waiting on its share of the
    /// sockets with one epoll and reading each with `recvmmsg`; 0: one per core. With
    /// `--task-per-listener`, each listener receives on its own task instead.
    #[arg(long, default_value_t = 0)]
    receive_threads: usize,
    #[arg(long)]
    task_per_listener: bool,
}

/// Impairment of every core-edge link, both ways (`local` only), through a user-space
/// link emulator in front of the core.
#[derive(Args, Clone, Debug, Default)]
struct LinkArgs {
    /// Random loss on each core-edge link, each way, e.g. 5%.
    #[arg(long, value_parser = parse_percent)]
    link_loss: Option<f64>,
    /// One-way delay on each core-edge link, e.g. 40ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    link_delay: Option<Duration>,
    /// Delay variation either way, e.g. 10ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    link_jitter: Option<Duration>,
    /// Let jitter reorder datagrams.
    #[arg(long)]
    link_reorder: bool,
    /// Chance a datagram starts a loss burst of about 5, e.g. 1%.
    #[arg(long, value_parser = parse_percent)]
    link_burst: Option<f64>,
    /// Link rate each way in kbit/s (a 100 ms buffer behind it).
    #[arg(long)]
    link_rate_kbps: Option<u64>,
    /// Turn the relay's loss repair off on every node (to measure what it saves).
    #[arg(long)]
    no_relay_repair: bool,
    /// Every edge keeps a session's DTLS connection this long after its handshake
    /// (default: the edge's 60 s), e.g. to see the memory it frees within a short run.
    #[arg(long, value_parser = humantime::parse_duration)]
    dtls_linger: Option<Duration>,
    /// Media workers on every edge (each its own thread of work and UDP port); 0: one per
    /// core.
    #[arg(long, default_value_t = 1)]
    edge_workers: usize,
    /// Pin every edge's threads to these CPUs (`taskset` list, e.g. 1 or 0-1).
    #[arg(long)]
    pin_edges: Option<String>,
    /// Pin every edge's media worker k to the k-th of these CPUs (the edge's
    /// `--media-cpus`); `--pin-edges` then pins only the edge's other threads.
    #[arg(long, value_parser = edge_sfu::config::parse_cpu_list)]
    edge_media_cpus: Option<edge_sfu::config::CpuList>,
    /// Pin the core and the load generator to these CPUs.
    #[arg(long)]
    pin_others: Option<String>,
}

impl LinkArgs {
    fn params(&self) -> Option<loadtest::link::LinkParams> {
        let p = loadtest::link::LinkParams {
            loss: self.link_loss.unwrap_or(0.0) / 100.0,
            burst_start: self.link_burst.unwrap_or(0.0) / 100.0,
            burst_len: 5.0,
            delay: self.link_delay.unwrap_or_default(),
            jitter: self.link_jitter.unwrap_or_default(),
            reorder: self.link_reorder,
            duplicate: 0.0,
            rate_bps: self.link_rate_kbps.unwrap_or(0) * 1000,
            queue_limit: Duration::from_millis(100),
            down: false,
        };
        (!p.is_clean()).then_some(p)
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 =
        s.trim().trim_end_matches('%').trim().parse().map_err(|_| format!("{s:?} is not a percentage like 0.5%"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0% and 100%"))
    }
}

impl LoadArgs {
    fn scenario(&self, edges: Vec<String>, tokens: Tokens) -> Scenario {
        Scenario {
            edges,
            channel: self.channel.clone(),
            listeners: self.listeners,
            speakers: self.speakers,
            slots: self.slots,
            duration: self.duration,
            ramp: self.ramp,
            churn: self.churn,
            pattern: self.pattern,
            turn: self.turn,
            payload_size: self.payload.clamp(loadtest::measure::OPUS_FRAME.len() + loadtest::measure::STAMP_LEN, 1000),
            tokens,
            progress: !self.quiet,
            attack: None,
            via_core: None,
            decrypt_every: self.decrypt_every,
            deaf: self.deaf_listeners,
            janus_room: None,
            receive_threads: match self.task_per_listener {
                true => None,
                false => Some(edge_sfu::config::workers_or_cores(self.receive_threads)),
            },
        }
    }

    /// Prints the report, writes JSON, and turns missed thresholds into the exit code.
    fn finish(&self, report: &Report) -> anyhow::Result<()> {
        println!("{report}");
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
        }
        if let Some(path) = &self.plot {
            loadtest::plot::write_svg(report, path)?;
        }
        let missed = report.check(self.max_loss, self.max_p99);
        for m in &missed {
            eprintln!("threshold missed: {m}");
        }
        if !missed.is_empty() {
            std::process::exit(1);
        }
        Ok(())
    }
}

fn random_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn main() -> anyhow::Result<()> {
    node_kit::logging::init("info,webrtc_dtls=error,webrtc_srtp=error");
    match Cli::parse().command {
        Command::Cluster { edges, slots, http_port, udp_port, quic_port, core_http_port, cores, redis } => cluster(
            ClusterSpec {
                edges,
                slots,
                core_quic_port: quic_port,
                first_http_port: http_port,
                first_udp_port: udp_port,
                core_http_port,
                cores,
                ..ClusterSpec::default()
            },
            redis,
        ),
        Command::Local { edges, link, load } => tokio::runtime::Runtime::new()?.block_on(local(edges, link, load)),
        Command::Run { core, edge, token_secret, admin_token, janus, janus_room, watch_pid, load } => {
            let target = match janus {
                Some(url) => Target::Janus { url, room: janus_room },
                None => Target::Sfu { core, edge, token_secret, admin_token },
            };
            tokio::runtime::Runtime::new()?.block_on(run(target, watch_pid, load))
        }
        Command::JanusConfig { dir, port, event_loops } => {
            let path = loadtest::janus::write_config(&dir, port, event_loops)
                .with_context(|| format!("writing a Janus configuration into {}", dir.display()))?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Node { node } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(node.threads())
            .enable_all()
            .build()?
            .block_on(node_main(node)),
    }
}

impl Node {
    /// Runtime threads: one, or one per media worker of an edge (with one worker pinned
    /// to one CPU, a second thread there for signalling cut forwarding from about 240 K
    /// to 150 K packets per CPU-second).
    fn threads(&self) -> usize {
        match self {
            Node::Edge { workers, .. } => edge_sfu::config::workers_or_cores(*workers),
            _ => 1,
        }
    }
}

async fn local(edges: usize, link: LinkArgs, load: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(edges >= 1, "at least one edge");
    let (cluster_secret, token_secret) = (random_secret(), random_secret());
    let slots = load.slots.to_string();
    let repair = (!link.no_relay_repair).to_string();
    let core = procs::spawn(
        "core",
        &[
            "core".into(),
            "--cluster-secret".into(),
            cluster_secret.clone(),
            "--slots".into(),
            slots.clone(),
            "--relay-repair".into(),
            repair.clone(),
        ],
    )
    .await?;
    let per_edge = load.listeners.div_ceil(edges).max(25).to_string();
    let mut nodes = Vec::new();
    // Each edge reaches the core through its own emulated link, when one is asked for.
    let mut links = Vec::new();
    for i in 1..=edges {
        let core_addr = match link.params() {
            Some(p) => {
                let emulator = loadtest::link::LinkEmulator::start(core.other, p, p, i as u64).await?;
                let addr = emulator.addr;
                links.push(emulator);
                addr
            }
            None => core.other,
        };
        let args = [
            "edge",
            "--core",
            &core_addr.to_string(),
            "--core-url",
            &format!("http://{}", core.http),
            "--cluster-secret",
            &cluster_secret,
            "--token-secret",
            &token_secret,
            "--max-listeners",
            &per_edge,
            "--slots",
            &slots,
            "--relay-repair",
            &repair,
            "--id",
            &format!("edge-{i}"),
            "--workers",
            &link.edge_workers.to_string(),
        ];
        let mut args: Vec<String> = args.map(String::from).to_vec();
        if let Some(linger) = link.dtls_linger {
            args.extend(["--dtls-linger".to_owned(), format!("{}ms", linger.as_millis())]);
        }
        if let Some(cpus) = &link.edge_media_cpus {
            let list: Vec<String> = cpus.0.iter().map(usize::to_string).collect();
            args.extend(["--media-cpus".to_owned(), list.join(",")]);
        }
        nodes.push(procs::spawn(&format!("edge-{i}"), &args).await?);
    }
    if let Some(cpus) = &link.pin_edges {
        for n in &nodes {
            let media_pinned = link.edge_media_cpus.is_some();
            procs::pin_threads(n.pid(), cpus, |name| {
                !(media_pinned && name.starts_with(edge_sfu::server::MEDIA_THREAD))
            })?;
        }
    }
    if let Some(cpus) = &link.pin_others {
        procs::pin(core.pid(), cpus)?;
        procs::pin(Some(std::process::id()), cpus)?;
    }
    let urls = nodes.iter().map(|n| format!("http://{}", n.http)).collect();
    let mut watched: Vec<(String, u32)> = vec![("core".into(), core.pid().unwrap_or(0))];
    watched.extend(nodes.iter().map(|n| (n.name.clone(), n.pid().unwrap_or(0))));
    watched.push((procs::LOAD_GENERATOR.into(), std::process::id()));
    // Give every edge its core link before the first offer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut scenario = load.scenario(urls, Tokens::Secret(token_secret.clone()));
    scenario.via_core = load.via_core.then(|| format!("http://{}", core.http));
    scenario.attack = load.attack.map(|kind| loadtest::attack::AttackPlan {
        kind,
        rate: load.attack_rate.unwrap_or(kind.default_rate()),
        edge_url: format!("http://{}", nodes[0].http),
        edge_udp: nodes[0].other,
        channel: load.channel.clone(),
        token_secret: token_secret.clone(),
        relay: Some((core.other, cluster_secret.clone())),
        metrics_urls: vec![format!("http://{}/metrics", nodes[0].http), format!("http://{}/metrics", core.http)],
    });
    if let Some(p) = link.params() {
        eprintln!(
            "core-edge links: {:.1} % loss, {} ms ± {} ms{}{}",
            p.loss * 100.0,
            p.delay.as_millis(),
            p.jitter.as_millis(),
            if p.reorder { ", reordering" } else { "" },
            if p.rate_bps > 0 { format!(", {} kbit/s", p.rate_bps / 1000) } else { String::new() }
        );
    }
    let edge_metrics: Vec<String> = nodes.iter().map(|n| format!("http://{}/metrics", n.http)).collect();
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = tokio::spawn(loadtest::forwarding::sample(edge_metrics.clone(), samples.clone()));
    let kernel_before = loadtest::forwarding::kernel_udp_errors();
    let mut report = scenario::run(scenario, Some(ProcSampler::new(watched))).await?;
    sampler.abort();
    let samples = samples.lock().expect("samples").clone();
    // Over the whole steady phase: during the ramp the edges also spend CPU on handshakes,
    // and a saturated edge answers /metrics late, so short windows have uneven lengths.
    report.edge_forwarding = loadtest::forwarding::over_steady_phase(&samples, report.steady_window, FORWARDING_WINDOW);
    let mut node_metrics = edge_metrics;
    node_metrics.push(format!("http://{}/metrics", core.http));
    report.drops = loadtest::forwarding::drops(&node_metrics).await;
    if let (Some(before), Some(after)) = (kernel_before, loadtest::forwarding::kernel_udp_errors()) {
        loadtest::forwarding::add_kernel_delta(&before, &after, &mut report.drops);
    }
    if !links.is_empty() {
        let (mut up, mut down) = (loadtest::link::LinkCounters::default(), loadtest::link::LinkCounters::default());
        for l in &links {
            let (u, d) = l.control.counters();
            (up.received, up.received_bytes) = (up.received + u.received, up.received_bytes + u.received_bytes);
            (down.received, down.received_bytes) = (down.received + d.received, down.received_bytes + d.received_bytes);
        }
        eprintln!(
            "core-edge links carried: edges to core {} datagrams, {} kB; core to edges {} datagrams, {} kB (QUIC payloads)",
            up.received,
            up.received_bytes / 1000,
            down.received,
            down.received_bytes / 1000
        );
    }
    drop(links);
    drop(nodes);
    drop(core);
    load.finish(&report)
}

/// The window the edges' forwarding rate is reported over when the run has no steady
/// phase to measure it over (its best in the run).
const FORWARDING_WINDOW: usize = 5;

/// What `run` loads.
enum Target {
    Sfu { core: Option<String>, edge: Vec<String>, token_secret: Option<String>, admin_token: Option<String> },
    Janus { url: String, room: u64 },
}

async fn run(target: Target, watch_pids: Vec<u32>, load: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(load.attack.is_none(), "--attack runs against a local cluster (loadtest local)");
    let sampler = (!watch_pids.is_empty()).then(|| {
        let mut watched: Vec<(String, u32)> = match watch_pids[..] {
            [pid] => vec![("server".into(), pid)],
            _ => watch_pids.iter().enumerate().map(|(k, &pid)| (format!("server-{}", k + 1), pid)).collect(),
        };
        watched.push((procs::LOAD_GENERATOR.into(), std::process::id()));
        ProcSampler::new(watched)
    });
    let scenario = match target {
        Target::Sfu { core, edge, token_secret, admin_token } => {
            let core_url = core.clone();
            let edges = match core {
                Some(core) => {
                    let url = format!("{}/edges", core.trim_end_matches('/'));
                    let admin =
                        admin_token.context("listing the core's edges needs its admin token (--admin-token)")?;
                    let body = reqwest::Client::new()
                        .get(&url)
                        .bearer_auth(admin)
                        .send()
                        .await?
                        .error_for_status()?
                        .text()
                        .await?;
                    let list: Vec<serde_json::Value> = serde_json::from_str(&body)?;
                    list.iter().filter_map(|e| e["url"].as_str().map(str::to_owned)).collect()
                }
                None => edge,
            };
            anyhow::ensure!(!edges.is_empty(), "the deployment lists no edges");
            let tokens = token_secret.map_or(Tokens::Demo, Tokens::Secret);
            let mut scenario = load.scenario(edges, tokens);
            if load.via_core {
                scenario.via_core = Some(core_url.context("--via-core needs --core")?);
            }
            scenario
        }
        Target::Janus { url, room } => {
            anyhow::ensure!(!load.via_core, "--via-core is for our core");
            loadtest::janus::create_room(&reqwest::Client::new(), &url, room, load.speakers)
                .await
                .with_context(|| format!("creating room {room} on the Janus at {url}"))?;
            // Janus checks no tokens; the scenario signs throwaway ones.
            let mut scenario = load.scenario(vec![url], Tokens::Secret(random_secret()));
            scenario.janus_room = Some(room);
            scenario
        }
    };
    let report = scenario::run(scenario, sampler).await?;
    load.finish(&report)
}

async fn node_main(node: Node) -> anyhow::Result<()> {
    match node {
        Node::Core { cluster_secret, slots, redis, admin_token, token_secret, core_id, lease_ttl, relay_repair } => {
            let mut s = core_sfu::CoreSettings::local(node_kit::Secret::new("cluster secret", cluster_secret)?);
            s.quic = "127.0.0.1:0".parse()?;
            s.http = "127.0.0.1:0".parse()?;
            s.core.selector.slots = slots;
            s.core.relay_repair = relay_repair;
            s.admin_token = admin_token.map(|t| node_kit::Secret::new("admin token", t)).transpose()?;
            s.token_secret = token_secret.map(|t| node_kit::Secret::new("token secret", t)).transpose()?;
            if let Some(id) = core_id {
                s.core.core_id = id;
            }
            if let Some(redis) = redis {
                let mut fleet = core_sfu::config::FleetSettings::new(node_kit::Secret::new_any("redis", redis)?);
                fleet.lease_ttl = lease_ttl.unwrap_or(fleet.lease_ttl);
                s.fleet = Some(fleet);
            }
            let core = core_sfu::start(s).await?;
            procs::announce_ready(core.http_addr, "quic", core.handle.quic_addr);
            let _ = core.quic_task.await;
        }
        Node::Edge {
            core,
            core_url,
            cluster_secret,
            token_secret,
            max_listeners,
            slots,
            id,
            relay_repair,
            dtls_linger,
            workers,
            media_cpus,
        } => {
            let mut s = edge_sfu::Settings {
                http: "127.0.0.1:0".parse()?,
                udp: "127.0.0.1:0".parse()?,
                token_secret: Some(node_kit::Secret::new("token secret", token_secret)?),
                cascade: Some(edge_sfu::config::CascadeSettings {
                    core,
                    cluster_secret: node_kit::Secret::new("cluster secret", cluster_secret)?,
                    edge_id: Some(id),
                    public_url: None,
                    core_ca: None,
                    region: edge_sfu::config::DEFAULT_REGION.to_owned(),
                    core_url: Some(core_url),
                }),
                workers: edge_sfu::config::workers_or_cores(workers),
                ..edge_sfu::Settings::default()
            };
            s.edge.cascade = true;
            s.edge.slots = slots;
            s.edge.relay_repair = relay_repair;
            s.edge.dtls_linger = dtls_linger.unwrap_or(s.edge.dtls_linger);
            s.edge.max_listeners_per_channel = max_listeners;
            s.edge.max_sessions = max_listeners * 4 + 100;
            if let Some(cpus) = media_cpus {
                edge_sfu::config::check_cpus_available(&cpus.0)?;
                s.media_cpus = cpus.0;
            }
            let edge = edge_sfu::start(s).await?;
            procs::announce_ready(edge.http_addr, "udp", edge.handle.udp_addr());
            let _ = edge.udp_task.await;
        }
    }
    Ok(())
}

/// A redis-server on a free loopback port for a local fleet; stopped when dropped.
struct LocalRedis(std::process::Child);

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn local_redis() -> anyhow::Result<(LocalRedis, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting redis-server (scripts/run-demo.sh installs it when --redis is given)")?;
    let redis = LocalRedis(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "redis-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, format!("redis://127.0.0.1:{port}")))
}

fn cluster(mut spec: ClusterSpec, redis: Option<String>) -> anyhow::Result<()> {
    anyhow::ensure!(spec.edges >= 1, "at least one edge");
    let mut _local_redis = None;
    spec.redis = match redis.as_deref() {
        Some("local") => {
            let (child, url) = local_redis()?;
            _local_redis = Some(child);
            Some(url)
        }
        other => other.map(str::to_owned),
    };
    anyhow::ensure!(spec.cores == 1 || spec.redis.is_some(), "several cores share channels through Redis: add --redis");
    let cluster = LocalCluster::start(spec)?;
    let edges = cluster.spec.edges;
    match &cluster.spec.redis {
        Some(url) => {
            println!("Local fleet: {} cores sharing channels through {url}, and {edges} edges.", cluster.spec.cores)
        }
        None => println!("Local cascade: a core and {edges} edges."),
    }
    for (i, url) in cluster.core_urls().iter().enumerate() {
        println!("  core {}: {url} (placement: POST {url}/whep/CHANNEL)", i + 1);
    }
    for (i, url) in cluster.edge_urls().iter().enumerate() {
        println!("  edge {}: {url}", i + 1);
    }
    println!(
        "Operator API: curl -H 'Authorization: Bearer {}' {}/v1/channels",
        cluster.spec.admin_token,
        cluster.core_urls()[0]
    );
    println!("Talk on one edge's page and listen on another's: the core places both. Ctrl-C stops the cluster.");
    let (tx, rx) = std::sync::mpsc::channel();
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        signals.block_on(async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        let _ = tx.send(());
    });
    let _ = rx.recv();
    drop(cluster);
    Ok(())
}
