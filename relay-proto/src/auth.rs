//! Cluster-secret proofs bound to the QUIC/TLS session.
//!
//! Each side proves it knows the shared secret with an HMAC over keying material exported
//! from this connection's TLS session, so a proof cannot be replayed on another
//! connection or relayed by a man in the middle, even when certificates are self-signed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-sfu-relay-auth";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Edge,
    Core,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Edge => b"edge",
            Side::Core => b"core",
        }
    }
}

/// 32 bytes of keying material unique to this connection.
pub fn session_binding(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"").ok()?;
    Some(out)
}

fn mac(secret: &[u8], side: Side, binding: &[u8; 32], id: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(side.label());
    m.update(binding);
    m.update(id.as_bytes());
    m
}

pub fn proof(secret: &[u8], side: Side, binding: &[u8; 32], id: &str) -> [u8; 32] {
    mac(secret, side, binding, id).finalize().into_bytes().into()
}

/// Constant-time check of a peer's proof.
pub fn verify(secret: &[u8], side: Side, binding: &[u8; 32], id: &str, proof: &[u8; 32]) -> bool {
    mac(secret, side, binding, id).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_side_session_and_id() {
        let b = [7u8; 32];
        let p = proof(b"s3cret", Side::Edge, &b, "edge-1");
        assert!(verify(b"s3cret", Side::Edge, &b, "edge-1", &p));
        assert!(!verify(b"wrong", Side::Edge, &b, "edge-1", &p));
        assert!(!verify(b"s3cret", Side::Core, &b, "edge-1", &p));
        assert!(!verify(b"s3cret", Side::Edge, &[8u8; 32], "edge-1", &p));
        assert!(!verify(b"s3cret", Side::Edge, &b, "edge-2", &p));
    }
}
