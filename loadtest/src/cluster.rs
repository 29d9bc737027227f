//! A core and edges on loopback, each node on its own thread and tokio runtime with real
//! UDP and QUIC sockets, so one node can be stopped like a crashed process and started
//! again while the others run on.

use node_kit::Secret;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use core_sfu::server::CoreHandle;
use core_sfu::CoreSettings;
use edge_sfu::config::CascadeSettings;
use edge_sfu::workers::Workers;
use edge_sfu::Settings;
use tokio::sync::oneshot;

/// A node running on its own runtime; dropping it stops the node abruptly.
pub struct Node<H> {
    pub http_addr: SocketAddr,
    pub handle: H,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl<H> Node<H> {
    /// Stops the node without any goodbye: its sockets close, its peers time out.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<H> Drop for Node<H> {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn spawn_node<H, F, Fut>(name: String, start: F) -> anyhow::Result<Node<H>>
where
    H: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<(SocketAddr, H)>>,
{
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name(name.clone()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            match start().await {
                Ok(started) => {
                    let _ = ready_tx.send(Ok(started));
                    let _ = stop_rx.await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        // Abrupt: tasks are dropped, sockets closed, nothing is said to peers.
        runtime.shutdown_background();
    })?;
    let (http_addr, handle) =
        ready_rx.recv().context("node thread ended")?.with_context(|| format!("starting {name}"))?;
    Ok(Node { http_addr, handle, stop: Some(stop), thread: Some(thread) })
}

pub struct CoreNode {
    pub node: Node<CoreHandle>,
    pub quic_addr: SocketAddr,
}

pub fn start_core(settings: CoreSettings) -> anyhow::Result<CoreNode> {
    let node = spawn_node("core".into(), move || async move {
        let core = core_sfu::start(settings).await?;
        Ok((core.http_addr, core.handle))
    })?;
    let quic_addr = node.handle.quic_addr;
    Ok(CoreNode { node, quic_addr })
}

pub fn start_edge(name: String, settings: Settings) -> anyhow::Result<Node<Workers>> {
    spawn_node(name, move || async move {
        let edge = edge_sfu::start(settings).await?;
        Ok((edge.http_addr, edge.handle))
    })
}

/// What a local cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub edges: usize,
    pub slots: usize,
    pub max_listeners_per_channel: usize,
    /// Ports to bind; 0 picks free ones.
    pub core_quic_port: u16,
    pub first_http_port: u16,
    pub first_udp_port: u16,
    /// Join-token secret shared by every edge.
    pub token_secret: String,
    /// Edges hand out demo tokens (local use only).
    pub demo_tokens: bool,
    pub cluster_secret: String,
    /// Bearer token for the core's operator endpoints.
    pub admin_token: String,
    /// Cores; more than one share channels through `redis`.
    pub cores: usize,
    /// The Redis URL cores lease channels in (needed for several cores).
    pub redis: Option<String>,
    /// First core's HTTP port (the others follow); 0 picks free ones.
    pub core_http_port: u16,
    /// Media workers on each edge.
    pub edge_workers: usize,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            edges: 3,
            slots: 3,
            max_listeners_per_channel: 25,
            core_quic_port: 0,
            first_http_port: 0,
            first_udp_port: 0,
            token_secret: format!("{:032x}", rand::random::<u128>()),
            demo_tokens: true,
            cluster_secret: format!("{:032x}", rand::random::<u128>()),
            admin_token: format!("{:032x}", rand::random::<u128>()),
            cores: 1,
            redis: None,
            core_http_port: 0,
            edge_workers: 1,
        }
    }
}

pub struct LocalCluster {
    pub spec: ClusterSpec,
    /// The first core.
    pub core: Option<CoreNode>,
    /// The other cores of a fleet.
    pub more_cores: Vec<CoreNode>,
    pub edges: Vec<Node<Workers>>,
}

fn port(first: u16, i: usize) -> u16 {
    if first == 0 {
        0
    } else {
        first + i as u16
    }
}

impl LocalCluster {
    pub fn start(spec: ClusterSpec) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(spec.cores >= 1, "at least one core");
        anyhow::ensure!(spec.cores == 1 || spec.redis.is_some(), "several cores share channels through Redis");
        let mut cores = Vec::with_capacity(spec.cores);
        for i in 0..spec.cores {
            let mut settings = Self::core_settings(&spec, port(spec.core_quic_port, i))?;
            settings.http = SocketAddr::from(([127, 0, 0, 1], port(spec.core_http_port, i)));
            settings.core.core_id = format!("core-{}", i + 1);
            cores.push(start_core(settings)?);
        }
        let quic: Vec<String> = cores.iter().map(|c| c.quic_addr.to_string()).collect();
        let mut edges = Vec::with_capacity(spec.edges);
        for i in 0..spec.edges {
            // Each edge links to every core, asking a different one first.
            let list: Vec<&str> = (0..quic.len()).map(|k| quic[(i + k) % quic.len()].as_str()).collect();
            let core = &cores[i % cores.len()];
            let mut s = Settings {
                http: SocketAddr::from(([127, 0, 0, 1], port(spec.first_http_port, i))),
                udp: SocketAddr::from(([127, 0, 0, 1], port(spec.first_udp_port, i))),
                token_secret: Some(Secret::new("token secret", &spec.token_secret)?),
                dev: spec.demo_tokens,
                cascade: Some(CascadeSettings {
                    core: list.join(","),
                    cluster_secret: Secret::new("cluster secret", &spec.cluster_secret)?,
                    edge_id: Some(format!("edge-{}", i + 1)),
                    public_url: None,
                    core_ca: None,
                    region: edge_sfu::config::DEFAULT_REGION.to_owned(),
                    core_url: Some(format!("http://{}", core.node.http_addr)),
                }),
                workers: spec.edge_workers.max(1),
                ..Settings::default()
            };
            s.edge.cascade = true;
            s.edge.slots = spec.slots;
            s.edge.max_listeners_per_channel = spec.max_listeners_per_channel;
            edges.push(start_edge(format!("edge-{}", i + 1), s)?);
        }
        let mut cores = cores.into_iter();
        let core = cores.next();
        Ok(LocalCluster { spec, core, more_cores: cores.collect(), edges })
    }

    fn core_settings(spec: &ClusterSpec, quic_port: u16) -> anyhow::Result<CoreSettings> {
        let mut s = CoreSettings::local(Secret::new("cluster secret", &spec.cluster_secret)?);
        s.admin_token = Some(Secret::new("admin token", &spec.admin_token)?);
        s.quic = SocketAddr::from(([127, 0, 0, 1], quic_port));
        s.http = SocketAddr::from(([127, 0, 0, 1], 0));
        s.core.selector.slots = spec.slots;
        s.token_secret = Some(Secret::new("token secret", &spec.token_secret)?);
        if let Some(redis) = &spec.redis {
            s.fleet = Some(core_sfu::config::FleetSettings::new(Secret::new_any("redis", redis)?));
        }
        Ok(s)
    }

    /// Every core's HTTP URL (placement and the operator API).
    pub fn core_urls(&self) -> Vec<String> {
        self.core.iter().chain(&self.more_cores).map(|c| format!("http://{}", c.node.http_addr)).collect()
    }

    pub fn core_quic_addr(&self) -> Option<SocketAddr> {
        self.core.as_ref().map(|c| c.quic_addr)
    }

    /// Stops the core abruptly (like a crash); edges keep their listeners.
    pub fn kill_core(&mut self) -> Option<SocketAddr> {
        let core = self.core.take()?;
        let addr = core.quic_addr;
        core.node.kill();
        Some(addr)
    }

    /// Starts a core again on the same QUIC address.
    pub fn restart_core(&mut self, quic_addr: SocketAddr) -> anyhow::Result<()> {
        self.core = Some(start_core(Self::core_settings(&self.spec, quic_addr.port())?)?);
        Ok(())
    }

    pub fn edge_urls(&self) -> Vec<String> {
        self.edges.iter().map(|e| format!("http://{}/", e.http_addr)).collect()
    }
}
