//! A real core on loopback QUIC, fed bad input by hand-driven edges.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use core_sfu::core::Refusal;
use core_sfu::{CoreSettings, RunningCore};
use relay_proto::auth::{self, Side};
use relay_proto::control::{FrameReader, Message};
use relay_proto::datagram::MediaHeader;
use relay_proto::endpoint::{self, read_message, send_message, Trust};

const SECRET: &str = "core-test-secret-of-32-bytes-or-more";

async fn core() -> RunningCore {
    let mut s = CoreSettings::local(node_kit::Secret::new("cluster secret", SECRET).unwrap());
    s.quic = "127.0.0.1:0".parse().unwrap();
    s.http = "127.0.0.1:0".parse().unwrap();
    core_sfu::start(s).await.unwrap()
}

struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
    binding: [u8; 32],
    _endpoint: quinn::Endpoint,
}

async fn connect(core: &RunningCore) -> Link {
    let ep = endpoint::client("127.0.0.1:0".parse().unwrap(), Trust::ClusterSecretOnly).unwrap();
    let conn = ep.connect(core.handle.quic_addr, "localhost").unwrap().await.unwrap();
    let binding = auth::session_binding(&conn).unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    Link { conn, send, recv, reader: FrameReader::default(), binding, _endpoint: ep }
}

fn hello(link: &Link, secret: &str, version: u16) -> Message {
    Message::Hello {
        version,
        edge_id: "e1".into(),
        signalling_url: "http://e1".into(),
        capacity: 25,
        proof: auth::proof(secret.as_bytes(), Side::Edge, &link.binding, "e1"),
        region: "local".into(),
        max_sessions: 100,
    }
}

/// The core's next message, past its periodic link-quality reports.
async fn reply(link: &mut Link) -> Option<Message> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), read_message(&mut link.recv, &mut link.reader))
            .await
            .expect("core answers")
            .ok()
            .flatten();
        if !matches!(m, Some(Message::LinkQuality { .. })) {
            return m;
        }
    }
}

/// Polls (at most 30 s, so a busy machine does not fail it) until `check` holds on the core's (counters, edges); returns the
/// last reading. Counts reach the core task through its queue, after the input was seen.
async fn eventually(
    core: &RunningCore,
    check: impl Fn(&core_sfu::core::CoreCounters, usize) -> bool,
) -> (core_sfu::core::CoreCounters, usize) {
    for _ in 0..1500 {
        let (c, edges) = core.handle.stats().await.unwrap();
        if check(&c, edges) {
            return (c, edges);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    core.handle.stats().await.unwrap()
}

async fn wait_refused(core: &RunningCore, r: Refusal, n: u64) -> u64 {
    eventually(core, |c, _| c.refused(r) >= n).await.0.refused(r)
}

#[tokio::test]
async fn a_wrong_cluster_secret_is_refused() {
    let core = core().await;
    let mut link = connect(&core).await;
    let m = hello(&link, "not-the-secret", relay_proto::PROTOCOL_VERSION);
    send_message(&mut link.send, &m).await.unwrap();
    assert_eq!(reply(&mut link).await, Some(Message::Reject { reason: "bad cluster secret".into() }));
    assert_eq!(wait_refused(&core, Refusal::BadAuth, 1).await, 1);
    // The connection is closed: nothing more gets through.
    tokio::time::timeout(Duration::from_secs(5), link.conn.closed()).await.expect("closed");
    assert_eq!(core.handle.stats().await.unwrap().1, 0, "no edge joined");
    // Operators see it on /metrics.
    let metrics = http_get(core.http_addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains(r#"sfu_core_refused_total{node="core",role="core",reason="bad_auth"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"sfu_core_edges{node="core",role="core"} 0"#), "{metrics}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: core\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn an_unknown_version_gets_a_clear_reject() {
    let core = core().await;
    let mut link = connect(&core).await;
    let m = hello(&link, SECRET, 99);
    send_message(&mut link.send, &m).await.unwrap();
    let Some(Message::Reject { reason }) = reply(&mut link).await else { panic!("expected a reject") };
    assert!(reason.contains("unsupported protocol version 99"), "{reason}");
    assert_eq!(wait_refused(&core, Refusal::BadVersion, 1).await, 1);
}

#[tokio::test]
async fn the_first_message_must_be_hello() {
    let core = core().await;
    let mut link = connect(&core).await;
    send_message(&mut link.send, &Message::Subscribe { channel: "lobby".into(), listeners: 1 }).await.unwrap();
    let Some(Message::Reject { reason }) = reply(&mut link).await else { panic!("expected a reject") };
    assert!(reason.contains("hello"), "{reason}");
    assert_eq!(wait_refused(&core, Refusal::UnexpectedMessage, 1).await, 1);
}

/// A welcomed edge subscribed to "lobby"; returns the link and the channel id, and a
/// speaker id of this edge's.
async fn subscribed(core: &RunningCore) -> (Link, u32, u32) {
    let mut link = connect(core).await;
    let m = hello(&link, SECRET, relay_proto::PROTOCOL_VERSION);
    send_message(&mut link.send, &m).await.unwrap();
    let Some(Message::Welcome { edge_number, .. }) = reply(&mut link).await else { panic!("expected welcome") };
    send_message(&mut link.send, &Message::Subscribe { channel: "lobby".into(), listeners: 1 }).await.unwrap();
    let Some(Message::Subscribed { channel_id, .. }) = reply(&mut link).await else { panic!("expected subscribed") };
    let Some(Message::Selection { .. }) = reply(&mut link).await else { panic!("expected the selection") };
    (link, channel_id, relay_proto::speaker::id(edge_number, 7))
}

fn datagram(channel_id: u32, speaker: u32) -> Bytes {
    let mut out = BytesMut::new();
    MediaHeader {
        channel_id,
        speaker,
        sequence: 1,
        timestamp: 1,
        level: 10,
        voice: true,
        marker: false,
        slot: None,
        selection: 0,
    }
    .encode(b"opus", &mut out);
    out.freeze()
}

/// The reason the core gave when it closed the link.
async fn close_reason(link: &Link) -> String {
    match tokio::time::timeout(Duration::from_secs(10), link.conn.closed()).await.expect("the core closes the link") {
        quinn::ConnectionError::ApplicationClosed(c) => String::from_utf8_lossy(&c.reason).into_owned(),
        other => format!("{other}"),
    }
}

#[tokio::test]
async fn one_bad_message_or_datagram_is_counted_and_dropped_and_the_link_stays() {
    let core = core().await;
    let (mut link, channel_id, speaker) = subscribed(&core).await;

    // Datagrams: garbage, a bad version, and one for a channel we never subscribed to.
    link.conn.send_datagram(Bytes::from_static(b"garbage")).unwrap();
    link.conn.send_datagram(Bytes::from_static(&[0x40; 40])).unwrap();
    link.conn.send_datagram(datagram(channel_id + 100, speaker)).unwrap();
    assert_eq!(wait_refused(&core, Refusal::MalformedDatagram, 2).await, 2);
    assert_eq!(wait_refused(&core, Refusal::UnknownChannel, 1).await, 1);
    // A good datagram still counts: the link works despite the garbage.
    link.conn.send_datagram(datagram(channel_id, speaker)).unwrap();
    assert_eq!(eventually(&core, |c, _| c.datagrams_in >= 1).await.0.datagrams_in, 1);

    // A control frame of an unknown type, and one cut short: each skipped and counted.
    link.send.write_all(&[0, 0, 0, 2, 0xee, 0]).await.unwrap();
    link.send.write_all(&[0, 0, 0, 3, 4, 0, 9]).await.unwrap();
    assert_eq!(wait_refused(&core, Refusal::MalformedControl, 2).await, 2);
    // The stream stays in step: the next message is understood.
    send_message(&mut link.send, &Message::Subscribe { channel: "second".into(), listeners: 1 }).await.unwrap();
    // (The good datagram selected its speaker: that selection may come first.)
    let mut next = reply(&mut link).await;
    while matches!(next, Some(Message::Selection { .. })) {
        next = reply(&mut link).await;
    }
    assert!(matches!(&next, Some(Message::Subscribed { channel, .. }) if channel == "second"), "{next:?}");
    assert_eq!(eventually(&core, |_, edges| edges == 1).await.1, 1, "the edge is still there");
}

#[tokio::test]
async fn a_peer_that_keeps_sending_garbage_is_closed_with_a_reason() {
    let core = core().await;
    let (link, _, _) = subscribed(&core).await;
    let (honest, channel_id, speaker) = subscribed(&core).await;
    for i in 0..5000u32 {
        // Datagrams may be dropped on the way; enough of them arrive.
        let _ = link.conn.send_datagram(Bytes::from(vec![0x40; 20 + (i % 50) as usize]));
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(close_reason(&link).await.contains("malformed"), "closed for its garbage");
    assert_eq!(eventually(&core, |c, _| c.links_closed_misbehaving == 1).await.0.links_closed_misbehaving, 1);
    // The other edge was not touched.
    honest.conn.send_datagram(datagram(channel_id, speaker)).unwrap();
    assert!(eventually(&core, |c, _| c.datagrams_in >= 1).await.0.datagrams_in >= 1);
    assert_eq!(eventually(&core, |_, edges| edges == 1).await.1, 1);
}

#[tokio::test]
async fn a_control_flood_closes_the_link_with_a_reason() {
    let core = core().await;
    let (mut link, channel_id, _) = subscribed(&core).await;
    let mut frames = BytesMut::new();
    for _ in 0..1000 {
        Message::Load { channel_id, listeners: 1, speakers: 0 }.encode(&mut frames);
    }
    let reason = async {
        for _ in 0..100 {
            if link.send.write_all(&frames).await.is_err() {
                break;
            }
        }
    };
    reason.await;
    assert!(close_reason(&link).await.contains("control flood"));
    assert_eq!(wait_refused(&core, Refusal::ControlFlood, 1).await, 1);
}

#[tokio::test]
async fn a_frame_longer_than_the_limit_ends_the_link() {
    let core = core().await;
    let (mut link, _, _) = subscribed(&core).await;
    link.send.write_all(&(relay_proto::control::MAX_FRAME as u32 + 1).to_be_bytes()).await.unwrap();
    assert!(close_reason(&link).await.contains("malformed control frame"));
    assert_eq!(eventually(&core, |_, edges| edges == 0).await.1, 0, "the edge is gone");
    assert!(core.handle.channels().await.unwrap().is_empty(), "its channel closed with it");
}

/// A raw HTTP/1.1 request to the core's HTTP port: the status code and the whole reply.
async fn http(core: &RunningCore, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_body(core, method, path, token, "").await
}

async fn http_body(core: &RunningCore, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(core.http_addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let length = body.len();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: core\r\n{auth}Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    (out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
}

async fn get_status(core: &RunningCore, path: &str, token: Option<&str>) -> u16 {
    http(core, "GET", path, token).await.0
}

#[tokio::test]
async fn operator_endpoints_answer_only_to_the_admin_token() {
    const ADMIN: &str = "core-test-admin-token-of-32-bytes-or-more";
    let without = core().await;
    assert_eq!(get_status(&without, "/channels", Some(ADMIN)).await, 401, "off without a configured token");
    let mut s = CoreSettings::local(node_kit::Secret::new("cluster secret", SECRET).unwrap());
    s.quic = "127.0.0.1:0".parse().unwrap();
    s.http = "127.0.0.1:0".parse().unwrap();
    s.admin_token = Some(node_kit::Secret::new("admin token", ADMIN).unwrap());
    let core = core_sfu::start(s).await.unwrap();
    for path in ["/channels", "/edges", "/channels/lobby", "/v1/channels", "/v1/edges", "/v1/channels/lobby"] {
        assert_eq!(get_status(&core, path, None).await, 401, "{path}");
        assert_eq!(get_status(&core, path, Some("not-the-admin-token-but-32-bytes-long!")).await, 401, "{path}");
    }
    for path in
        ["/v1/edges/e1/drain", "/v1/edges/e1/undrain", "/v1/channels/lobby/participants/alice/kick", "/v1/tokens"]
    {
        assert_eq!(http(&core, "POST", path, None).await.0, 401, "{path}");
        assert_eq!(http(&core, "POST", path, Some("not-the-admin-token-but-32-bytes-long!")).await.0, 401, "{path}");
    }
    assert_eq!(get_status(&core, "/channels", Some(ADMIN)).await, 200);
    assert_eq!(get_status(&core, "/edges", Some(ADMIN)).await, 200);
    assert_eq!(get_status(&core, "/channels/lobby", Some(ADMIN)).await, 404, "no such channel yet");
    assert_eq!(get_status(&core, "/healthz", None).await, 200);
    assert_eq!(get_status(&core, "/metrics", None).await, 200);
}

#[tokio::test]
async fn placement_redirects_to_an_edge_and_drain_stops_it() {
    const ADMIN: &str = "core-test-admin-token-of-32-bytes-or-more";
    let mut s = CoreSettings::local(node_kit::Secret::new("cluster secret", SECRET).unwrap());
    s.quic = "127.0.0.1:0".parse().unwrap();
    s.http = "127.0.0.1:0".parse().unwrap();
    s.admin_token = Some(node_kit::Secret::new("admin token", ADMIN).unwrap());
    let core = core_sfu::start(s).await.unwrap();
    let (mut edge, _, _) = subscribed(&core).await;
    // The edge's signalling URL, the same path, and the join token in the URL.
    let (status, body) = http(&core, "POST", "/whep/lobby", Some("eyJhbGciOi.eyJzdWIi.c2ln")).await;
    assert_eq!(status, 307, "{body}");
    assert!(body.contains("location: http://e1/whep/lobby?access_token=eyJhbGciOi.eyJzdWIi.c2ln"), "{body}");
    let (status, body) = http(&core, "POST", "/whip/bad%20name", None).await;
    assert_eq!(status, 400, "{body}");
    // Drained: no placement there, and the edge is told its deadline.
    let (status, body) = http(&core, "POST", "/v1/edges/e1/drain?deadline_s=30", Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(matches!(reply(&mut edge).await, Some(Message::Drain { deadline_ms: 30_000 })));
    assert_eq!(http(&core, "POST", "/whep/lobby", None).await.0, 503);
    assert_eq!(http(&core, "POST", "/v1/edges/nosuch/drain", Some(ADMIN)).await.0, 404);
    assert_eq!(http(&core, "POST", "/v1/edges/e1/undrain", Some(ADMIN)).await.0, 200);
    assert_eq!(http(&core, "POST", "/whep/lobby", None).await.0, 307);
    // A client the edge sent back (it refused it) is not placed there again.
    assert_eq!(http(&core, "POST", "/whep/lobby?exclude=e1", None).await.0, 503);
}

#[tokio::test]
async fn operators_mint_join_tokens_and_kick_participants() {
    const ADMIN: &str = "core-test-admin-token-of-32-bytes-or-more";
    const TOKENS: &str = "core-test-token-secret-of-32-bytes-or-more";
    let mut s = CoreSettings::local(node_kit::Secret::new("cluster secret", SECRET).unwrap());
    s.quic = "127.0.0.1:0".parse().unwrap();
    s.http = "127.0.0.1:0".parse().unwrap();
    s.admin_token = Some(node_kit::Secret::new("admin token", ADMIN).unwrap());
    s.token_secret = Some(node_kit::Secret::new("token secret", TOKENS).unwrap());
    let core = core_sfu::start(s).await.unwrap();
    let request = r#"{"channel":"lobby","participant":"alice","role":"speaker","ttl_s":600}"#;
    let (status, answer) = http_body(&core, "POST", "/v1/tokens", Some(ADMIN), request).await;
    assert_eq!(status, 200, "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let claims = node_kit::token::TokenKeys::new(TOKENS.as_bytes()).verify(body["token"].as_str().unwrap()).unwrap();
    assert_eq!((claims.sub.as_str(), claims.channel.as_str()), ("alice", "lobby"));
    assert_eq!(claims.role, node_kit::token::Role::Speaker);
    for bad in [
        r#"{"channel":"../x","participant":"alice","role":"speaker"}"#,
        r#"{"channel":"lobby","participant":"alice","role":"admin"}"#,
        r#"{"channel":"lobby","participant":"alice","role":"listener","ttl_s":999999}"#,
        "not json",
    ] {
        assert_eq!(http_body(&core, "POST", "/v1/tokens", Some(ADMIN), bad).await.0, 400, "{bad}");
    }
    // A kick goes to every edge serving the channel; the edges end those sessions.
    let (mut edge, _, _) = subscribed(&core).await;
    let (status, answer) = http(&core, "POST", "/v1/channels/lobby/participants/alice/kick", Some(ADMIN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(reply(&mut edge).await, Some(Message::Kick { channel: "lobby".into(), participant: "alice".into() }));
    assert_eq!(http(&core, "POST", "/v1/channels/nosuch/participants/alice/kick", Some(ADMIN)).await.0, 404);
}
