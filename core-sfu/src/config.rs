//! Core configuration: defaults for loopback, a TOML file, `SFU_` variables and flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use node_kit::http::HttpLimits;
use node_kit::{Secret, SecretText};

use crate::core::CoreConfig;

#[derive(Clone, Debug, Default, clap::Args)]
pub struct CoreArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "SFU_CONFIG")]
    pub config: Option<PathBuf>,
    /// QUIC address edges connect to (default 127.0.0.1:4433).
    #[arg(long, env = "SFU_QUIC")]
    pub quic: Option<SocketAddr>,
    /// HTTP address for operators: /healthz, /channels (default 127.0.0.1:8070).
    #[arg(long, env = "SFU_HTTP")]
    pub http: Option<SocketAddr>,
    /// Shared secret edges prove they know, 32 bytes or more (required).
    #[arg(long, env = "SFU_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<SecretText>,
    /// Bearer token for the operator endpoints (/channels, /edges), 32 bytes or more;
    /// without one they are off.
    #[arg(long, env = "SFU_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretText>,
    /// Active speakers forwarded per channel (default 3).
    #[arg(long, env = "SFU_SLOTS")]
    pub slots: Option<usize>,
    /// Send repair copies of media on a core link that reports loss (default true).
    #[arg(long, env = "SFU_RELAY_REPAIR")]
    pub relay_repair: Option<bool>,
    /// This core's id in logs and welcomes (default "core").
    #[arg(long, env = "SFU_CORE_ID")]
    pub core_id: Option<String>,
    /// PEM certificate chain for QUIC (default: self-signed).
    #[arg(long, env = "SFU_QUIC_CERT")]
    pub quic_cert: Option<PathBuf>,
    /// PEM private key for QUIC.
    #[arg(long, env = "SFU_QUIC_KEY")]
    pub quic_key: Option<PathBuf>,
    /// This core's region: where clients that name none are placed first (default "local").
    #[arg(long, env = "SFU_REGION")]
    pub region: Option<String>,
    /// Placement requests a second from one address (IPv6: one /64), burst 4x (default 5).
    #[arg(long, env = "SFU_OFFERS_PER_SEC_PER_IP")]
    pub offers_per_sec_per_ip: Option<u32>,
    /// How long a drained edge's sessions may stay, unless the request names a deadline
    /// (e.g. 10m, the default).
    #[arg(long, env = "SFU_DRAIN_DEADLINE", value_parser = humantime::parse_duration)]
    pub drain_deadline: Option<std::time::Duration>,
    /// Access-Control-Allow-Origin for placement (default *).
    #[arg(long, env = "SFU_CORS_ALLOW_ORIGIN")]
    pub cors_allow_origin: Option<String>,
    /// The edges' join-token secret, so operators can mint tokens (`POST /v1/tokens`).
    #[arg(long, env = "SFU_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<SecretText>,
    /// Share channels with other cores through leases in this Redis (e.g.
    /// redis://10.0.0.5:6379/0); without it this core owns every channel it is asked for.
    #[arg(long, env = "SFU_REDIS", hide_env_values = true)]
    pub redis: Option<SecretText>,
    /// Prefix of this fleet's keys in Redis (default "sfu").
    #[arg(long, env = "SFU_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// host:port edges reach this core's QUIC endpoint at (default: the --quic address,
    /// which must then be a specific IP).
    #[arg(long, env = "SFU_RELAY_ADDR")]
    pub relay_addr: Option<String>,
    /// URL clients reach this core's HTTP at, for placement redirects between cores
    /// (default http://<--http address>).
    #[arg(long, env = "SFU_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Lease lifetime in Redis (default 3s); renewed every third of it.
    #[arg(long, env = "SFU_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<std::time::Duration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    quic: Option<SocketAddr>,
    http: Option<SocketAddr>,
    cluster_secret: Option<SecretText>,
    admin_token: Option<SecretText>,
    slots: Option<usize>,
    relay_repair: Option<bool>,
    core_id: Option<String>,
    quic_cert: Option<PathBuf>,
    quic_key: Option<PathBuf>,
    region: Option<String>,
    offers_per_sec_per_ip: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    drain_deadline: Option<std::time::Duration>,
    cors_allow_origin: Option<String>,
    token_secret: Option<SecretText>,
    redis: Option<SecretText>,
    redis_prefix: Option<String>,
    relay_addr: Option<String>,
    public_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    lease_ttl: Option<std::time::Duration>,
}

#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub cluster_secret: Secret,
    pub admin_token: Option<Secret>,
    pub http_limits: HttpLimits,
    pub quic_cert: Option<PathBuf>,
    pub quic_key: Option<PathBuf>,
    pub core: CoreConfig,
    pub offers_per_sec_per_ip: u32,
    pub drain_deadline: std::time::Duration,
    pub cors_allow_origin: String,
    pub token_secret: Option<Secret>,
    pub fleet: Option<FleetSettings>,
}

/// Several cores sharing channels through Redis.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// The Redis URL (may carry a password, so it is kept as a secret).
    pub redis: Secret,
    pub redis_prefix: String,
    /// Where edges reach this core; `None`: the bound QUIC address.
    pub relay_addr: Option<String>,
    /// Where clients reach this core; `None`: the bound HTTP address.
    pub public_url: Option<String>,
    pub lease_ttl: std::time::Duration,
}

/// Lease lifetime by default: three renewals of a second each. A dead core's channels
/// move after at most this (the edges' 3 s link timeout overlaps it).
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3);

impl FleetSettings {
    pub fn new(redis: Secret) -> Self {
        FleetSettings {
            redis,
            redis_prefix: "sfu".to_owned(),
            relay_addr: None,
            public_url: None,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// How long a drained edge's sessions may stay by default.
pub const DEFAULT_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

impl CoreSettings {
    /// Loopback defaults with the given secret.
    pub fn local(cluster_secret: Secret) -> Self {
        CoreSettings {
            quic: SocketAddr::from(([127, 0, 0, 1], 4433)),
            http: SocketAddr::from(([127, 0, 0, 1], 8070)),
            cluster_secret,
            admin_token: None,
            http_limits: HttpLimits::default(),
            quic_cert: None,
            quic_key: None,
            core: CoreConfig::default(),
            offers_per_sec_per_ip: 5,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
            cors_allow_origin: "*".to_owned(),
            token_secret: None,
            fleet: None,
        }
    }

    pub fn resolve(args: &CoreArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let from_file = |var| node_kit::secret::from_file_var(var).map_err(anyhow::Error::msg);
        let secret = args.cluster_secret.clone().or(from_file("SFU_CLUSTER_SECRET")?).or(file.cluster_secret).context(
            "no cluster secret: set SFU_CLUSTER_SECRET, --cluster-secret or cluster_secret in the config file",
        )?;
        let mut s = CoreSettings::local(Secret::new("the cluster secret (SFU_CLUSTER_SECRET)", secret)?);
        s.admin_token = args
            .admin_token
            .clone()
            .or(from_file("SFU_ADMIN_TOKEN")?)
            .or(file.admin_token)
            .map(|t| Secret::new("the admin token (SFU_ADMIN_TOKEN)", t))
            .transpose()?;
        s.quic = args.quic.or(file.quic).unwrap_or(s.quic);
        s.http = args.http.or(file.http).unwrap_or(s.http);
        s.quic_cert = args.quic_cert.clone().or(file.quic_cert);
        s.quic_key = args.quic_key.clone().or(file.quic_key);
        s.core.selector.slots = args.slots.or(file.slots).unwrap_or(s.core.selector.slots);
        s.core.relay_repair = args.relay_repair.or(file.relay_repair).unwrap_or(true);
        anyhow::ensure!(
            (1..=relay_proto::datagram::MAX_SLOTS).contains(&s.core.selector.slots),
            "slots must be 1..=15"
        );
        s.core.core_id = args.core_id.clone().or(file.core_id).unwrap_or(s.core.core_id);
        s.core.region = args.region.clone().or(file.region).unwrap_or(s.core.region);
        anyhow::ensure!(
            relay_proto::valid_channel_name(&s.core.region),
            "region must be 1-64 characters of A-Z a-z 0-9 - _ ."
        );
        s.offers_per_sec_per_ip =
            args.offers_per_sec_per_ip.or(file.offers_per_sec_per_ip).unwrap_or(s.offers_per_sec_per_ip);
        s.drain_deadline = args.drain_deadline.or(file.drain_deadline).unwrap_or(s.drain_deadline);
        s.cors_allow_origin = args.cors_allow_origin.clone().or(file.cors_allow_origin).unwrap_or(s.cors_allow_origin);
        s.token_secret = args
            .token_secret
            .clone()
            .or(from_file("SFU_TOKEN_SECRET")?)
            .or(file.token_secret)
            .map(|t| Secret::new("the token secret (SFU_TOKEN_SECRET)", t))
            .transpose()?;
        if let Some(redis) = args.redis.clone().or(from_file("SFU_REDIS")?).or(file.redis) {
            let redis = Secret::new_any("the Redis URL (SFU_REDIS)", redis)?;
            let mut fleet = FleetSettings::new(redis);
            fleet.redis_prefix = args.redis_prefix.clone().or(file.redis_prefix).unwrap_or(fleet.redis_prefix);
            fleet.relay_addr = args.relay_addr.clone().or(file.relay_addr);
            fleet.public_url = args.public_url.clone().or(file.public_url);
            fleet.lease_ttl = args.lease_ttl.or(file.lease_ttl).unwrap_or(fleet.lease_ttl);
            anyhow::ensure!(
                fleet.lease_ttl >= std::time::Duration::from_millis(600),
                "lease_ttl must be 600ms or more"
            );
            s.fleet = Some(fleet);
        }
        Ok(s)
    }
}
