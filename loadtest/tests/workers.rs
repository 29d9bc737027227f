//! An edge with two media workers, with real clients (ICE, DTLS, SRTP) over loopback:
//! standalone, a channel's sessions share a worker and each channel's listeners hear
//! their own speaker; under a core, the core places listeners of one channel on both
//! workers, all hear, and draining the edge by its id drains both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use loadtest::client::{self, ClientReport, ClientSpec, Role, RunningClient, Shared};
use loadtest::cluster::{ClusterSpec, LocalCluster};
use media::dtls::DtlsIdentity;

const TOKEN_SECRET: &str = "workers-test-token-secret-of-32-bytes";

fn spec(secret: &str, base_url: &str, channel: &str, name: &str, speaker: bool) -> ClientSpec {
    let token = TokenKeys::new(secret.as_bytes()).sign(&Claims {
        sub: name.into(),
        channel: channel.into(),
        role: if speaker { TokenRole::Speaker } else { TokenRole::Listener },
        exp: unix_now() + 600,
    });
    let role = if speaker { client::steady_speaker() } else { Role::Listener { slots: 3 } };
    ClientSpec { name: name.into(), edge: 0, base_url: base_url.into(), channel: channel.into(), token, role }
}

/// The client heard audio and lost at most 1 % of it.
fn heard(r: &ClientReport) {
    assert!(r.error.is_none(), "{}: {:?}", r.name, r.error);
    let expected: u64 = r.streams.iter().map(|s| s.expected).sum();
    let lost: u64 = r.streams.iter().map(|s| s.lost).sum();
    assert!(expected >= 50 && lost * 100 <= expected, "{}: {lost} of {expected} lost", r.name);
}

/// The speakers' ids a listener heard (CSRCs).
fn speakers_heard(r: &ClientReport) -> Vec<u32> {
    let mut ids: Vec<u32> = r.speaker_gaps.keys().copied().collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_each_channel_lives_on_one_worker_and_its_listeners_hear_its_speaker() {
    let settings = edge_sfu::Settings {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        token_secret: Some(node_kit::Secret::new("token secret", TOKEN_SECRET).unwrap()),
        workers: 2,
        ..Default::default()
    };
    let edge = edge_sfu::start(settings).await.unwrap();
    assert_eq!(edge.handle.len(), 2);
    let base = format!("http://{}", edge.http_addr);
    let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
    let mut clients = Vec::new();
    for channel in ["a", "b"] {
        clients.push((
            channel,
            RunningClient::spawn(spec(TOKEN_SECRET, &base, channel, &format!("{channel}-speaker"), true), &shared),
        ));
        for i in 0..3 {
            let name = format!("{channel}-listener-{i}");
            clients.push((channel, RunningClient::spawn(spec(TOKEN_SECRET, &base, channel, &name, false), &shared)));
        }
    }
    tokio::time::timeout(Duration::from_secs(60), shared.wait_joined(8)).await.expect("joined").unwrap();
    // Listen for a while (the clients count every packet).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut addr_of: Vec<(&str, SocketAddr)> = Vec::new();
    let mut heard_in: Vec<(&str, Vec<u32>)> = Vec::new();
    for (channel, c) in clients {
        let r = c.stop().await;
        addr_of.push((channel, r.media_addr.expect("answered")));
        if r.name.contains("listener") {
            heard(&r);
            heard_in.push((channel, speakers_heard(&r)));
        }
    }
    let worker = |ch: &str| {
        let mut addrs: Vec<SocketAddr> = addr_of.iter().filter(|(c, _)| *c == ch).map(|(_, a)| *a).collect();
        addrs.dedup();
        assert_eq!(addrs.len(), 1, "channel {ch}'s sessions on one worker: {addrs:?}");
        addrs[0]
    };
    assert_ne!(worker("a"), worker("b"), "the second channel went to the idle worker");
    // Each channel's listeners heard one speaker, the same (each worker numbers its own
    // speakers, so ids alone do not tell the channels apart: the media addresses do).
    for ch in ["a", "b"] {
        let ids: Vec<&Vec<u32>> = heard_in.iter().filter(|(c, _)| *c == ch).map(|(_, ids)| ids).collect();
        assert!(ids.iter().all(|i| i.len() == 1 && *i == ids[0]), "{ch}: {ids:?}");
    }
    let (counters, sessions) = edge.handle.stats().await.unwrap();
    assert_eq!(sessions, 0, "every session ended");
    assert!(counters.rtp_out > 0 && counters.sessions_opened == 8, "{counters:?}");
}

/// The edges (here: workers) the core's directory lists.
async fn core_edges(http: &reqwest::Client, core: &str, admin_token: &str) -> Vec<serde_json::Value> {
    let edges: serde_json::Value =
        http.get(format!("{core}/v1/edges")).bearer_auth(admin_token).send().await.unwrap().json().await.unwrap();
    edges.as_array().expect("a list of edges").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_core_one_channel_spreads_over_the_workers_and_the_edge_drains_as_one() {
    let cluster = LocalCluster::start(ClusterSpec {
        edges: 1,
        edge_workers: 2,
        max_listeners_per_channel: 4,
        demo_tokens: false,
        ..Default::default()
    })
    .unwrap();
    let secret = cluster.spec.token_secret.clone();
    let core = format!("http://{}", cluster.core.as_ref().unwrap().node.http_addr);
    let edge = format!("http://{}", cluster.edges[0].http_addr);
    // Both workers link to the core before anyone is placed.
    let http = reqwest::Client::new();
    let both_linked = async {
        loop {
            let edges = core_edges(&http, &core, &cluster.spec.admin_token).await;
            if edges.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), both_linked).await.expect("both workers linked");
    let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
    let speaker = RunningClient::spawn(spec(&secret, &edge, "lobby", "speaker", true), &shared);
    let mut listeners = Vec::new();
    for i in 0..4 {
        listeners.push(RunningClient::spawn(spec(&secret, &core, "lobby", &format!("listener-{i}"), false), &shared));
        // One at a time, so each placement sees the last one's worker fill.
        tokio::time::timeout(Duration::from_secs(60), shared.wait_joined(i as u64 + 2)).await.expect("joined").unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let drained = http
        .post(format!("{core}/v1/edges/edge-1/drain?deadline_s=600"))
        .bearer_auth(&cluster.spec.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200, "the edge's id drains its workers");
    let both_draining = async {
        loop {
            let r = cluster.edges[0].handle.readiness().await.unwrap();
            let edges = core_edges(&http, &core, &cluster.spec.admin_token).await;
            let all = edges.iter().all(|e| e["state"] == "draining");
            if r.draining && all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), both_draining).await.expect("both workers drain");

    let mut addrs = Vec::new();
    for l in listeners {
        let r = l.stop().await;
        heard(&r);
        assert_eq!(speakers_heard(&r).len(), 1, "{}: {:?}", r.name, speakers_heard(&r));
        addrs.push(r.media_addr.expect("answered"));
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 2, "the core placed the channel's listeners on both workers");
    let s = speaker.stop().await;
    assert!(s.error.is_none(), "{:?}", s.error);
}
