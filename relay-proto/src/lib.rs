//! The core<->edge relay protocol over QUIC: control messages on one bidirectional
//! stream ([`control`]), media as QUIC datagrams ([`datagram`]), a cluster-secret proof
//! bound to the TLS session ([`auth`]), and the quinn set-up both ends share ([`endpoint`]).
//!
//! The codecs are sans-IO and never panic on network bytes.

pub mod auth;
pub mod control;
pub mod datagram;
pub mod endpoint;
pub mod health;
pub mod loss;
pub mod queue;
pub mod reorder;
pub mod sender;
pub mod speaker;

/// The protocol version this build speaks (2: SFU-assigned speaker ids; 3: the edge's
/// region and session capacity in its hello; 4: lease epochs in `Subscribed`, redirects
/// to the owning core, kicks; 5: slots and selection numbers in datagrams and selections;
/// 6: link quality reports and repair copies of datagrams).
pub const PROTOCOL_VERSION: u16 = 6;

/// A channel name: 1-64 characters of `A-Z a-z 0-9 - _ .` (what clients put in URLs and
/// what nodes log).
pub fn valid_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
