//! What the process-level tests share: a core and edges as `loadtest node` processes,
//! and clients joined with tokens signed here.
#![allow(dead_code)] // each test file uses a part

use std::sync::Arc;

use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use loadtest::client::{ClientSpec, Role, RunningClient, Shared};
use loadtest::procs::{spawn_exe, NodeProcess};

pub fn secret(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn exe() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_loadtest"))
}

/// A core with 3 slots; `extra` arguments after those.
pub async fn spawn_core(cluster: &str, extra: &[&str]) -> NodeProcess {
    let mut args: Vec<String> = ["core", "--cluster-secret", cluster, "--slots", "3"].map(String::from).to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn_exe(exe(), "core", &args).await.unwrap()
}

/// Edge `edge-{i}` (25 listeners a channel, 3 slots) linked to the core at `core_quic`.
pub async fn spawn_edge(i: usize, core_quic: &str, core: &NodeProcess, cluster: &str, tokens: &str) -> NodeProcess {
    spawn_edge_with(i, core_quic, core, cluster, tokens, &[]).await
}

/// [`spawn_edge`] with `extra` arguments after the others.
pub async fn spawn_edge_with(
    i: usize,
    core_quic: &str,
    core: &NodeProcess,
    cluster: &str,
    tokens: &str,
    extra: &[&str],
) -> NodeProcess {
    let args = [
        "edge",
        "--core",
        core_quic,
        "--core-url",
        &format!("http://{}", core.http),
        "--cluster-secret",
        cluster,
        "--token-secret",
        tokens,
        "--max-listeners",
        "25",
        "--slots",
        "3",
        "--id",
        &format!("edge-{i}"),
    ];
    let args: Vec<String> = args.iter().chain(extra).map(|a| a.to_string()).collect();
    spawn_exe(exe(), &format!("edge-{i}"), &args).await.unwrap()
}

/// A client of `channel` on `edges[edge]`, with a token signed with `tokens`.
pub fn join(
    shared: &Arc<Shared>,
    tokens: &str,
    edges: &[NodeProcess],
    channel: &str,
    edge: usize,
    name: &str,
    role: Role,
) -> RunningClient {
    let speaker = matches!(role, Role::Speaker(_));
    let token = TokenKeys::new(tokens.as_bytes()).sign(&Claims {
        sub: name.into(),
        channel: channel.into(),
        role: if speaker { TokenRole::Speaker } else { TokenRole::Listener },
        exp: unix_now() + 600,
    });
    let base_url = format!("http://{}", edges[edge].http);
    RunningClient::spawn(ClientSpec { name: name.into(), edge, base_url, channel: channel.into(), token, role }, shared)
}
