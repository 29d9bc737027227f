//! The core<->edge relay protocol over QUIC: control messages on one bidirectional
//! stream ([`control`]), media as QUIC datagrams ([`datagram`]), a cluster-secret proof
//! bound to the TLS session ([`auth`]), and the quinn set-up both ends share ([`endpoint`]).
//!
//! The codecs are sans-IO and never panic on network bytes.

pub mod auth;
pub mod control;
pub mod datagram;
pub mod endpoint;
pub mod speaker;

/// The protocol version this build speaks (2: SFU-assigned speaker ids).
pub const PROTOCOL_VERSION: u16 = 2;
