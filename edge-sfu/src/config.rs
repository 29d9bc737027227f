//! Edge configuration: defaults that work on loopback, a TOML file, `SFU_` environment
//! variables and flags; a flag or variable wins over the file, the file over defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use node_kit::http::HttpLimits;
use node_kit::{Secret, SecretText};

use crate::edge::EdgeConfig;

/// Media workers one edge runs, at most.
pub const MAX_WORKERS: usize = 64;

/// Media workers for a `--workers` value: 0 means one per core the process may use.
pub fn workers_or_cores(workers: usize) -> usize {
    match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// CPU numbers, from a list such as `0-3,8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses `0-3,8` (ranges and single CPUs, comma-separated) into CPU numbers, in order.
pub fn parse_cpu_list(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let number = |n: &str| {
            let max = rustix::thread::CpuSet::MAX_CPU;
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|&c| c < max)
                .ok_or_else(|| format!("{n:?} is not a CPU number below {max}"))
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(format!("range {first}-{last} runs backwards"));
        }
        if last - first >= MAX_WORKERS * 4 {
            return Err(format!("range {first}-{last} is longer than any edge needs"));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    Ok(CpuList(cpus))
}

/// Refuses CPUs this process may not run on (a typo, or a container's limit).
pub fn check_cpus_available(cpus: &[usize]) -> anyhow::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let allowed = rustix::thread::sched_getaffinity(None).context("reading this process's CPUs")?;
    for &cpu in cpus {
        anyhow::ensure!(allowed.is_set(cpu), "--media-cpus: CPU {cpu} is not one this process may run on");
    }
    Ok(())
}

/// The region of an edge or core that names none.
pub const DEFAULT_REGION: &str = "local";

#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "SFU_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address for signalling, the demo page and health (default 127.0.0.1:8080).
    #[arg(long, env = "SFU_HTTP")]
    pub http: Option<SocketAddr>,
    /// UDP address for client media (default 127.0.0.1:3478); with several workers, worker
    /// k takes the port after it k times (a port of 0: any free port for each).
    #[arg(long, env = "SFU_UDP")]
    pub udp: Option<SocketAddr>,
    /// Media workers, each a thread's worth of forwarding with its own UDP port and core
    /// links; 0 = one per available core (default 1).
    #[arg(long, env = "SFU_WORKERS")]
    pub workers: Option<usize>,
    /// CPUs to pin the media workers' threads to, as `0-3,8`: worker k on the k-th of
    /// them, round robin (default: not pinned). Only where the edge owns these CPUs.
    #[arg(long, env = "SFU_MEDIA_CPUS", value_parser = parse_cpu_list)]
    pub media_cpus: Option<CpuList>,
    /// Address put in ICE candidates (default: the UDP address, or 127.0.0.1 if unspecified).
    #[arg(long, env = "SFU_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// Secret for HS256 join tokens, 32 bytes or more (required unless --dev).
    #[arg(long, env = "SFU_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<SecretText>,
    /// Bearer token for operator endpoints (/channels detail), 32 bytes or more.
    #[arg(long, env = "SFU_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretText>,
    /// Local development: serve /demo/token, and make a random token secret if none is
    /// given. Loopback addresses only; never in production.
    #[arg(long, env = "SFU_DEV")]
    pub dev: bool,
    /// Sessions that have not finished ICE and DTLS, at most (default 256).
    #[arg(long, env = "SFU_MAX_PENDING_SESSIONS")]
    pub max_pending_sessions: Option<usize>,
    /// Sessions one participant (token `sub`) holds in a channel; a new one replaces the
    /// oldest (default 3).
    #[arg(long, env = "SFU_MAX_SESSIONS_PER_PARTICIPANT")]
    pub max_sessions_per_participant: Option<usize>,
    /// Offers a second from one client address (IPv6: one /64), with a burst of 4x (default 5).
    #[arg(long, env = "SFU_OFFERS_PER_SEC_PER_IP")]
    pub offers_per_sec_per_ip: Option<u32>,
    /// Open HTTP connections, at most (default 1024).
    #[arg(long, env = "SFU_MAX_HTTP_CONNECTIONS")]
    pub max_http_connections: Option<usize>,
    /// Listeners one channel may have on this edge (default 25).
    #[arg(long, env = "SFU_MAX_LISTENERS_PER_CHANNEL")]
    pub max_listeners_per_channel: Option<usize>,
    /// Audio slots per listener (default 3).
    #[arg(long, env = "SFU_SLOTS")]
    pub slots: Option<usize>,
    /// Send repair copies of media on a core link that reports loss (default true).
    #[arg(long, env = "SFU_RELAY_REPAIR")]
    pub relay_repair: Option<bool>,
    /// Sessions this edge accepts in all (default 5000).
    #[arg(long, env = "SFU_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Access-Control-Allow-Origin for signalling (default *).
    #[arg(long, env = "SFU_CORS_ALLOW_ORIGIN")]
    pub cors_allow_origin: Option<String>,
    /// PEM file with the DTLS private key and certificate (default: generated at start).
    #[arg(long, env = "SFU_DTLS_CERT")]
    pub dtls_cert: Option<PathBuf>,
    /// The core's QUIC address, HOST:PORT: run in cascade mode (default: standalone). A
    /// fleet's cores, comma-separated: the edge links to each and asks the first that is
    /// up for a new channel, which sends it to the channel's owner.
    #[arg(long, env = "SFU_CORE")]
    pub core: Option<String>,
    /// Shared secret of the cluster, proven to the core (required with --core).
    #[arg(long, env = "SFU_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<SecretText>,
    /// This edge's id at the core (default: edge-<UDP address>).
    #[arg(long, env = "SFU_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Signalling URL clients use for this edge (default: http://<HTTP address>).
    #[arg(long, env = "SFU_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// This edge's region, for the core's placement (default "local").
    #[arg(long, env = "SFU_REGION")]
    pub region: Option<String>,
    /// The core's placement URL (http://core:8070): clients this edge cannot take (full,
    /// draining) are sent back there to be placed elsewhere.
    #[arg(long, env = "SFU_CORE_URL")]
    pub core_url: Option<String>,
    /// On SIGTERM (or a drain from the core), how long sessions may stay (default 10m).
    #[arg(long, env = "SFU_DRAIN_DEADLINE", value_parser = humantime::parse_duration)]
    pub drain_deadline: Option<Duration>,
    /// How long a session's DTLS connection is kept after its handshake (to answer
    /// retransmitted flights and notice close_notify) before it is let go (default 60s).
    #[arg(long, env = "SFU_DTLS_LINGER", value_parser = humantime::parse_duration)]
    pub dtls_linger: Option<Duration>,
    /// PEM CA certificate to verify the core's QUIC certificate (default: the core is
    /// authenticated by its cluster-secret proof alone).
    #[arg(long, env = "SFU_CORE_CA")]
    pub core_ca: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    workers: Option<usize>,
    media_cpus: Option<String>,
    public_ip: Option<IpAddr>,
    token_secret: Option<SecretText>,
    admin_token: Option<SecretText>,
    dev: Option<bool>,
    max_pending_sessions: Option<usize>,
    max_sessions_per_participant: Option<usize>,
    offers_per_sec_per_ip: Option<u32>,
    max_http_connections: Option<usize>,
    max_listeners_per_channel: Option<usize>,
    slots: Option<usize>,
    relay_repair: Option<bool>,
    max_sessions: Option<usize>,
    cors_allow_origin: Option<String>,
    dtls_cert: Option<PathBuf>,
    core: Option<String>,
    cluster_secret: Option<SecretText>,
    edge_id: Option<String>,
    public_url: Option<String>,
    region: Option<String>,
    core_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    drain_deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    dtls_linger: Option<Duration>,
    core_ca: Option<PathBuf>,
}

/// Where the core is and how to prove ourselves to it.
#[derive(Clone, Debug)]
pub struct CascadeSettings {
    pub core: String,
    pub cluster_secret: Secret,
    pub edge_id: Option<String>,
    pub public_url: Option<String>,
    pub core_ca: Option<PathBuf>,
    /// The region the core places by.
    pub region: String,
    /// Where clients this edge cannot take go back to be placed.
    pub core_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub http: SocketAddr,
    pub udp: SocketAddr,
    /// Media workers (at least 1), on consecutive UDP ports from `udp`.
    pub workers: usize,
    /// CPUs the media workers' threads are pinned to, round robin (empty: not pinned).
    pub media_cpus: Vec<usize>,
    pub public_ip: Option<IpAddr>,
    /// `None` only with `dev`: a random secret is made at start.
    pub token_secret: Option<Secret>,
    pub admin_token: Option<Secret>,
    /// Local development: demo tokens, random token secret; loopback only.
    pub dev: bool,
    pub cors_allow_origin: String,
    pub dtls_cert: Option<PathBuf>,
    pub offers_per_sec_per_ip: u32,
    pub http_limits: HttpLimits,
    /// On SIGTERM, how long sessions may stay before the edge ends them and exits.
    pub drain_deadline: Duration,
    pub edge: EdgeConfig,
    pub handshake_timeout: Duration,
    /// `Some`: cascade mode under a core.
    pub cascade: Option<CascadeSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            udp: SocketAddr::from(([127, 0, 0, 1], 3478)),
            workers: 1,
            media_cpus: Vec::new(),
            public_ip: None,
            token_secret: None,
            admin_token: None,
            dev: false,
            cors_allow_origin: "*".to_owned(),
            dtls_cert: None,
            offers_per_sec_per_ip: 5,
            http_limits: HttpLimits::default(),
            drain_deadline: Duration::from_secs(600),
            edge: EdgeConfig::default(),
            handshake_timeout: media::dtls::DEFAULT_HANDSHAKE_TIMEOUT,
            cascade: None,
        }
    }
}

impl Settings {
    pub fn resolve(args: &RunArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Settings::default();
        let token_secret = args
            .token_secret
            .clone()
            .or(node_kit::secret::from_file_var("SFU_TOKEN_SECRET").map_err(anyhow::Error::msg)?)
            .or(file.token_secret)
            .map(|t| Secret::new("the token secret (SFU_TOKEN_SECRET)", t))
            .transpose()?;
        let admin_token = args
            .admin_token
            .clone()
            .or(node_kit::secret::from_file_var("SFU_ADMIN_TOKEN").map_err(anyhow::Error::msg)?)
            .or(file.admin_token)
            .map(|t| Secret::new("the admin token (SFU_ADMIN_TOKEN)", t))
            .transpose()?;
        let mut edge = d.edge.clone();
        edge.max_listeners_per_channel =
            args.max_listeners_per_channel.or(file.max_listeners_per_channel).unwrap_or(edge.max_listeners_per_channel);
        edge.slots = args.slots.or(file.slots).unwrap_or(edge.slots);
        edge.relay_repair = args.relay_repair.or(file.relay_repair).unwrap_or(true);
        edge.dtls_linger = args.dtls_linger.or(file.dtls_linger).unwrap_or(edge.dtls_linger);
        edge.max_sessions = args.max_sessions.or(file.max_sessions).unwrap_or(edge.max_sessions);
        edge.max_pending_sessions =
            args.max_pending_sessions.or(file.max_pending_sessions).unwrap_or(edge.max_pending_sessions);
        edge.max_sessions_per_participant = args
            .max_sessions_per_participant
            .or(file.max_sessions_per_participant)
            .unwrap_or(edge.max_sessions_per_participant);
        anyhow::ensure!((1..=relay_proto::datagram::MAX_SLOTS).contains(&edge.slots), "slots must be 1..=15");
        anyhow::ensure!(
            (1..=relay_proto::speaker::MAX_LOCAL as usize).contains(&edge.max_sessions),
            "max_sessions must be 1..={}",
            relay_proto::speaker::MAX_LOCAL
        );
        anyhow::ensure!(edge.max_listeners_per_channel >= 1, "max_listeners_per_channel must be at least 1");
        anyhow::ensure!(edge.max_pending_sessions >= 1, "max_pending_sessions must be at least 1");
        anyhow::ensure!(edge.max_sessions_per_participant >= 1, "max_sessions_per_participant must be at least 1");
        let cascade = match args.core.clone().or(file.core) {
            Some(core) => {
                let cluster_secret = args
                    .cluster_secret
                    .clone()
                    .or(node_kit::secret::from_file_var("SFU_CLUSTER_SECRET").map_err(anyhow::Error::msg)?)
                    .or(file.cluster_secret)
                    .context(
                        "cascade mode (--core) needs the cluster secret: set SFU_CLUSTER_SECRET or --cluster-secret",
                    )?;
                anyhow::ensure!(
                    !core.is_empty() && core.split(',').all(|c| c.trim().contains(':')),
                    "--core must be HOST:PORT, or several comma-separated, got {core:?}"
                );
                let region = args.region.clone().or(file.region).unwrap_or_else(|| DEFAULT_REGION.to_owned());
                anyhow::ensure!(
                    relay_proto::valid_channel_name(&region),
                    "--region must be 1-64 characters of A-Z a-z 0-9 - _ ."
                );
                let (core_url, public_url) =
                    (args.core_url.clone().or(file.core_url), args.public_url.clone().or(file.public_url));
                let http_url = |u: &Option<String>| {
                    u.as_deref().is_none_or(|u| u.starts_with("http://") || u.starts_with("https://"))
                };
                anyhow::ensure!(http_url(&core_url), "--core-url must be an http(s) URL");
                anyhow::ensure!(http_url(&public_url), "--public-url must be an http(s) URL");
                edge.cascade = true;
                Some(CascadeSettings {
                    core,
                    cluster_secret: Secret::new("the cluster secret (SFU_CLUSTER_SECRET)", cluster_secret)?,
                    edge_id: args.edge_id.clone().or(file.edge_id),
                    public_url,
                    core_ca: args.core_ca.clone().or(file.core_ca),
                    region,
                    core_url,
                })
            }
            None => None,
        };
        let mut http_limits = d.http_limits;
        http_limits.max_connections =
            args.max_http_connections.or(file.max_http_connections).unwrap_or(http_limits.max_connections);
        let udp = args.udp.or(file.udp).unwrap_or(d.udp);
        let workers = workers_or_cores(args.workers.or(file.workers).unwrap_or(d.workers));
        anyhow::ensure!(workers <= MAX_WORKERS, "--workers: at most {MAX_WORKERS}");
        anyhow::ensure!(
            udp.port() == 0 || usize::from(udp.port()) + workers - 1 <= usize::from(u16::MAX),
            "--udp port {} leaves no room for {workers} workers' ports",
            udp.port()
        );
        let media_cpus = match (&args.media_cpus, &file.media_cpus) {
            (Some(list), _) => list.0.clone(),
            (None, Some(text)) => parse_cpu_list(text).map_err(|e| anyhow::anyhow!("media_cpus: {e}"))?.0,
            (None, None) => Vec::new(),
        };
        check_cpus_available(&media_cpus)?;
        let settings = Settings {
            http: args.http.or(file.http).unwrap_or(d.http),
            udp,
            workers,
            media_cpus,
            public_ip: args.public_ip.or(file.public_ip),
            token_secret,
            admin_token,
            dev: args.dev || file.dev.unwrap_or(false),
            cors_allow_origin: args.cors_allow_origin.clone().or(file.cors_allow_origin).unwrap_or(d.cors_allow_origin),
            dtls_cert: args.dtls_cert.clone().or(file.dtls_cert),
            offers_per_sec_per_ip: args
                .offers_per_sec_per_ip
                .or(file.offers_per_sec_per_ip)
                .unwrap_or(d.offers_per_sec_per_ip),
            http_limits,
            drain_deadline: args.drain_deadline.or(file.drain_deadline).unwrap_or(d.drain_deadline),
            edge,
            handshake_timeout: d.handshake_timeout,
            cascade,
        };
        settings.check_safe()?;
        Ok(settings)
    }

    /// Refuses settings that would be unsafe on the internet: no token secret outside
    /// `dev`, `dev` or a missing public IP on a non-loopback address.
    pub fn check_safe(&self) -> anyhow::Result<()> {
        let exposed = !self.http.ip().is_loopback() || !self.udp.ip().is_loopback();
        if exposed {
            anyhow::ensure!(
                !self.dev,
                "--dev (demo tokens for anyone) is for loopback addresses only; this edge binds {} and {}",
                self.http,
                self.udp
            );
            anyhow::ensure!(
                self.public_ip.is_some(),
                "an edge on a non-loopback address needs --public-ip (SFU_PUBLIC_IP): the address clients reach"
            );
        }
        anyhow::ensure!(
            self.token_secret.is_some() || self.dev,
            "no token secret: set SFU_TOKEN_SECRET (32+ bytes), or run with --dev on loopback for a local demo"
        );
        Ok(())
    }

    /// The address clients are told to send media to.
    pub fn candidate(&self, bound: SocketAddr) -> SocketAddr {
        let ip = self.public_ip.unwrap_or(if bound.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            bound.ip()
        });
        SocketAddr::new(ip, bound.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_ranges_and_single_cpus() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), CpuList(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list(" 5 ").unwrap(), CpuList(vec![5]));
        for bad in ["", "a", "3-1", "0,0", "0-2,1", "-1", "99999999", "0-100000"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
        // A CPU the process may not use is refused at start.
        assert!(check_cpus_available(&[rustix::thread::CpuSet::MAX_CPU - 1]).is_err());
        assert!(check_cpus_available(&[]).is_ok());
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("edge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(&path, "http = \"127.0.0.2:9000\"\nslots = 2\nmax_listeners_per_channel = 10\n").unwrap();
        let args = RunArgs { config: Some(path.clone()), slots: Some(4), dev: true, ..Default::default() };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.http, "127.0.0.2:9000".parse().unwrap());
        assert_eq!(s.edge.slots, 4);
        assert_eq!(s.edge.max_listeners_per_channel, 10);
        assert!(s.dev);
        std::fs::write(&path, "htp = 1\n").unwrap();
        let err = Settings::resolve(&args).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_settings_are_refused_at_start() {
        let secret = "0123456789abcdef0123456789abcdef".to_owned();
        let err = |args: RunArgs| format!("{:#}", Settings::resolve(&args).unwrap_err());
        assert!(err(RunArgs::default()).contains("no token secret"));
        for short in ["", "short-secret"] {
            let e = err(RunArgs { token_secret: Some(short.into()), ..Default::default() });
            assert!(e.contains("at least 32") && !e.contains("short-secret"), "{e}");
        }
        let e = err(RunArgs {
            token_secret: Some(secret.clone().into()),
            admin_token: Some("x".into()),
            ..Default::default()
        });
        assert!(e.contains("admin token"), "{e}");
        let public = |dev| RunArgs {
            udp: Some("0.0.0.0:3478".parse().unwrap()),
            token_secret: Some(secret.clone().into()),
            dev,
            ..Default::default()
        };
        assert!(err(public(false)).contains("--public-ip"));
        assert!(err(public(true)).contains("loopback"));
        let ok = RunArgs { public_ip: Some("203.0.113.1".parse().unwrap()), ..public(false) };
        let s = Settings::resolve(&ok).unwrap();
        let ok = ok.clone();
        assert!(!s.dev);
        assert!(!format!("{s:?}").contains(&secret), "a secret in Debug output");
        assert!(!format!("{ok:?}").contains(&secret), "a secret in the arguments' Debug output");
        let e = err(RunArgs { core: Some("core:4433".into()), cluster_secret: Some("too-short".into()), ..ok });
        assert!(e.contains("cluster secret"), "{e}");
    }
}
