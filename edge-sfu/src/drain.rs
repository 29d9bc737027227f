//! `edge-sfu drain`: asks the edge running on this machine to drain, through its HTTP
//! port and admin token, and waits until its sessions have gone or the deadline passed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::Settings;

const POLL: Duration = Duration::from_secs(1);
/// Past the deadline, the edge needs a moment to end the sessions left.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The address to reach an HTTP listener bound to `bound` from this machine.
fn local_address(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

pub async fn drain_running_edge(settings: &Settings) -> anyhow::Result<()> {
    let admin =
        settings.admin_token.as_ref().context("no admin token: set SFU_ADMIN_TOKEN (or SFU_ADMIN_TOKEN_FILE)")?;
    let base = format!("http://{}", local_address(settings.http));
    let deadline = settings.drain_deadline;
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let response = client
        .post(format!("{base}/admin/drain?deadline_s={}", deadline.as_secs()))
        .bearer_auth(String::from_utf8_lossy(admin.expose()))
        .send()
        .await
        .with_context(|| format!("no edge answers at {base}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::ACCEPTED {
        let said = response.text().await.unwrap_or_default();
        anyhow::bail!("the edge at {base} refused the drain: {status} {}", said.trim().escape_debug());
    }
    info!(edge = %base, deadline_s = deadline.as_secs(), "draining");
    let until = tokio::time::Instant::now() + deadline + DEADLINE_MARGIN;
    loop {
        let sessions = match client.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|v| v["sessions"].as_u64()),
            // Gone: nothing left to wait for.
            Err(_) => Some(0),
        };
        match sessions {
            Some(0) => {
                info!("drained: no sessions left");
                return Ok(());
            }
            Some(n) => info!(sessions = n, "waiting for sessions to leave"),
            None => info!("the edge's /readyz did not answer as expected; waiting"),
        }
        if tokio::time::Instant::now() >= until {
            info!("past the drain deadline; leaving the rest to the edge's own shutdown");
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
