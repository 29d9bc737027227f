//! Shared set-up for the edge's integration tests: a real edge on loopback, tokens,
//! and the interop clients (aiortc, Chromium) installed by scripts/setup-test-deps.sh.
#![allow(dead_code)]

use edge_sfu::token::{unix_now, Claims, Role, TokenKeys};
use edge_sfu::{RunningEdge, Settings};

pub const SECRET: &str = "interop-test-secret-of-32-bytes-or-more";

pub async fn start_edge(tweak: impl FnOnce(&mut Settings)) -> RunningEdge {
    let mut settings = Settings {
        http: "127.0.0.1:0".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
        token_secret: Some(node_kit::Secret::new("token secret", SECRET).unwrap()),
        ..Settings::default()
    };
    tweak(&mut settings);
    edge_sfu::start(settings).await.expect("edge starts")
}

pub fn token(channel: &str, role: Role, sub: &str) -> String {
    TokenKeys::new(SECRET.as_bytes()).sign(&Claims {
        sub: sub.into(),
        channel: channel.into(),
        role,
        exp: unix_now() + 600,
    })
}

#[path = "../../../tests/support/interop.rs"]
mod interop;
pub use interop::*;
