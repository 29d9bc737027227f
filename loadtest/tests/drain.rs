//! Draining an edge through the core's operator API, with real clients (ICE, DTLS, SRTP)
//! on a core and two edges over loopback: nobody new is placed there, the listeners it
//! has keep hearing until the deadline, and then the edge ends their sessions with BYE.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use loadtest::client::{self, ClientSpec, Role, RunningClient, Shared};
use loadtest::cluster::{ClusterSpec, LocalCluster};
use media::dtls::DtlsIdentity;

fn start(shared: &Arc<Shared>, cluster: &LocalCluster, base_url: String, name: &str, speaker: bool) -> RunningClient {
    let token = TokenKeys::new(cluster.spec.token_secret.as_bytes()).sign(&Claims {
        sub: name.into(),
        channel: "lobby".into(),
        role: if speaker { TokenRole::Speaker } else { TokenRole::Listener },
        exp: unix_now() + 600,
    });
    let role = if speaker { client::steady_speaker() } else { Role::Listener { slots: cluster.spec.slots } };
    let spec = ClientSpec { name: name.into(), edge: 0, base_url, channel: "lobby".into(), token, role };
    RunningClient::spawn(spec, shared)
}

async fn joined(shared: &Shared, n: u64) {
    shared.wait_joined(n).await.expect("every client joins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_edge_takes_nobody_new_and_its_listeners_hear_until_the_deadline() {
    let cluster =
        LocalCluster::start(ClusterSpec { edges: 2, slots: 1, demo_tokens: false, ..Default::default() }).unwrap();
    let core = format!("http://{}", cluster.core.as_ref().unwrap().node.http_addr);
    let edge = |i: usize| format!("http://{}", cluster.edges[i].http_addr);
    let shared = Arc::new(Shared::new(DtlsIdentity::generate().unwrap(), true).unwrap());
    let speaker = start(&shared, &cluster, edge(1), "speaker", true);
    let on_edge_1: Vec<RunningClient> =
        (0..3).map(|i| start(&shared, &cluster, edge(0), &format!("listener-{i}"), false)).collect();
    tokio::time::timeout(Duration::from_secs(60), joined(&shared, 4)).await.expect("everyone joined");

    let http = reqwest::Client::new();
    let drained = http
        .post(format!("{core}/v1/edges/edge-1/drain?deadline_s=3"))
        .bearer_auth(&cluster.spec.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let drain_requested = Instant::now();
    // The edge learns it drains over the relay; then it is not ready any more.
    let readyz = format!("{}/readyz", edge(0));
    let not_ready = async {
        while http.get(&readyz).send().await.unwrap().status() != 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), not_ready).await.expect("the edge stopped being ready");

    // A newcomer through the core lands on the other edge and hears the speaker.
    let newcomer = start(&shared, &cluster, core.clone(), "newcomer", false);
    tokio::time::timeout(Duration::from_secs(60), joined(&shared, 5)).await.expect("the newcomer joined");

    // The drained edge's listeners hear on until the deadline, then the edge says BYE.
    for c in on_edge_1 {
        let r = tokio::time::timeout(Duration::from_secs(60), c.finished()).await.expect("ended by the edge");
        assert!(r.error.is_none(), "{}: {:?}", r.name, r.error);
        assert!(r.ended_by_edge, "{}: the session was not ended with BYE", r.name);
        let last = r.last_packet_at.expect("heard audio");
        assert!(last > drain_requested + Duration::from_secs(1), "{}: audio stopped when the drain began", r.name);
        let lost: u64 = r.streams.iter().map(|s| s.lost).sum();
        let expected: u64 = r.streams.iter().map(|s| s.expected).sum();
        assert!(expected >= 100 && lost * 100 <= expected, "{}: {lost} of {expected} lost", r.name);
    }
    let readiness = cluster.edges[0].handle.readiness().await.unwrap();
    assert!(readiness.draining && readiness.sessions == 0, "{readiness:?}");

    let newcomer = newcomer.stop().await;
    assert!(newcomer.error.is_none(), "{:?}", newcomer.error);
    assert_eq!(newcomer.edge_url.as_deref(), Some(edge(1).as_str()), "placed on the drained edge");
    assert!(newcomer.join_time.is_some() && !newcomer.ended_by_edge);
    assert!(speaker.stop().await.error.is_none());
}
