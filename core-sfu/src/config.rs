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
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    quic: Option<SocketAddr>,
    http: Option<SocketAddr>,
    cluster_secret: Option<SecretText>,
    admin_token: Option<SecretText>,
    slots: Option<usize>,
    core_id: Option<String>,
    quic_cert: Option<PathBuf>,
    quic_key: Option<PathBuf>,
    region: Option<String>,
    offers_per_sec_per_ip: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    drain_deadline: Option<std::time::Duration>,
    cors_allow_origin: Option<String>,
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
        let secret = args.cluster_secret.clone().or(file.cluster_secret).context(
            "no cluster secret: set SFU_CLUSTER_SECRET, --cluster-secret or cluster_secret in the config file",
        )?;
        let mut s = CoreSettings::local(Secret::new("the cluster secret (SFU_CLUSTER_SECRET)", secret)?);
        s.admin_token = args
            .admin_token
            .clone()
            .or(file.admin_token)
            .map(|t| Secret::new("the admin token (SFU_ADMIN_TOKEN)", t))
            .transpose()?;
        s.quic = args.quic.or(file.quic).unwrap_or(s.quic);
        s.http = args.http.or(file.http).unwrap_or(s.http);
        s.quic_cert = args.quic_cert.clone().or(file.quic_cert);
        s.quic_key = args.quic_key.clone().or(file.quic_key);
        s.core.selector.slots = args.slots.or(file.slots).unwrap_or(s.core.selector.slots);
        anyhow::ensure!((1..=16).contains(&s.core.selector.slots), "slots must be 1..=16");
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
        Ok(s)
    }
}
