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
    }
}

async fn reply(link: &mut Link) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(5), read_message(&mut link.recv, &mut link.reader))
        .await
        .expect("core answers")
        .ok()
        .flatten()
}

/// Polls (at most 2 s) until `check` holds on the core's (counters, edges); returns the
/// last reading. Counts reach the core task through its queue, after the input was seen.
async fn eventually(
    core: &RunningCore,
    check: impl Fn(&core_sfu::core::CoreCounters, usize) -> bool,
) -> (core_sfu::core::CoreCounters, usize) {
    for _ in 0..100 {
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

#[tokio::test]
async fn malformed_control_and_datagrams_are_counted_and_the_edge_dropped() {
    let core = core().await;
    let mut link = connect(&core).await;
    let m = hello(&link, SECRET, relay_proto::PROTOCOL_VERSION);
    send_message(&mut link.send, &m).await.unwrap();
    assert!(matches!(reply(&mut link).await, Some(Message::Welcome { .. })));
    send_message(&mut link.send, &Message::Subscribe { channel: "lobby".into(), listeners: 1 }).await.unwrap();
    let Some(Message::Subscribed { channel_id, .. }) = reply(&mut link).await else { panic!("expected subscribed") };

    // Datagrams: garbage, a bad version, and one for a channel we never subscribed to.
    link.conn.send_datagram(Bytes::from_static(b"garbage")).unwrap();
    link.conn.send_datagram(Bytes::from_static(&[0xc0; 40])).unwrap();
    let mut other = BytesMut::new();
    MediaHeader {
        channel_id: channel_id + 100,
        speaker: 1,
        sequence: 1,
        timestamp: 1,
        level: 10,
        voice: true,
        marker: false,
    }
    .encode(b"opus", &mut other);
    link.conn.send_datagram(other.freeze()).unwrap();
    assert_eq!(wait_refused(&core, Refusal::MalformedDatagram, 2).await, 2);
    assert_eq!(wait_refused(&core, Refusal::UnknownChannel, 1).await, 1);
    // A good datagram still counts: the link works despite the garbage.
    let mut good = BytesMut::new();
    MediaHeader { channel_id, speaker: 7, sequence: 1, timestamp: 1, level: 10, voice: true, marker: false }
        .encode(b"opus", &mut good);
    link.conn.send_datagram(good.freeze()).unwrap();
    assert_eq!(eventually(&core, |c, _| c.datagrams_in >= 1).await.0.datagrams_in, 1);

    // A control frame with an unknown type: the framing is lost, the edge is dropped.
    link.send.write_all(&[0, 0, 0, 2, 0xee, 0]).await.unwrap();
    assert_eq!(wait_refused(&core, Refusal::MalformedControl, 1).await, 1);
    tokio::time::timeout(Duration::from_secs(5), link.conn.closed()).await.expect("closed");
    assert_eq!(eventually(&core, |_, edges| edges == 0).await.1, 0, "the edge is gone");
    assert!(core.handle.channels().await.unwrap().is_empty(), "its channel closed with it");
}
