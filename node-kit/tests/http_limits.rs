//! The hardened HTTP server over real sockets: half-sent requests are cut off, the
//! connection cap holds, and a well-behaved client is served throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::Router;
use node_kit::http::{serve, HttpLimits, HttpStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(limits: HttpLimits) -> (SocketAddr, Arc<HttpStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }))
        .route("/echo", post(|body: String| async move { body }));
    let stats = Arc::new(HttpStats::default());
    tokio::spawn(serve(listener, app, limits, stats.clone()));
    (addr, stats)
}

/// Reads until the server closes the connection; what it sent before closing.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    // The outer bound only keeps a broken server from hanging the test.
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await.expect("server closed");
    String::from_utf8_lossy(&out).into_owned()
}

async fn get_peer(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    read_to_close(&mut s).await
}

#[tokio::test]
async fn half_sent_headers_and_bodies_are_cut_off() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let (addr, stats) = start(limits).await;
    let mut slow_headers = TcpStream::connect(addr).await.unwrap();
    slow_headers.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(get_peer(addr).await.ends_with("127.0.0.1"), "served while others stall");
    assert_eq!(read_to_close(&mut slow_headers).await, "", "no reply to a request whose headers never ended");
    assert!(read_to_close(&mut slow_body).await.starts_with("HTTP/1.1 408"), "a body that never ends times out");
    assert_eq!(read_to_close(&mut idle).await, "");
    assert!(stats.timeouts() >= 2, "{}", stats.timeouts());
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_room_comes_back() {
    let limits = HttpLimits {
        max_connections: 4,
        max_connections_per_ip: 64,
        header_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let (addr, stats) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(s);
    }
    while stats.open() < 4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(get_peer(addr).await, "", "a fifth connection is closed unanswered");
    assert_eq!(stats.refused(), 1);
    drop(held.pop());
    while stats.open() > 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(get_peer(addr).await.contains("200 OK"));
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let limits = HttpLimits {
        max_connections: 100,
        max_connections_per_ip: 3,
        header_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let (addr, stats) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(s);
    }
    while stats.open() < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(get_peer(addr).await, "", "a fourth from the same address is closed");
    // Another address is served.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock.connect(addr).await.unwrap();
    other.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut other).await.ends_with("127.0.0.2"));
}
