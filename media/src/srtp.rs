//! SRTP/SRTCP contexts for one session, keyed from DTLS exported material.
//!
//! Replay protection is ours, not the library's: webrtc-util's detector initialises its
//! window from the first packet it *checks*, before authentication, so one forged packet
//! with a far-off index can make every genuine packet look stale. Our windows move only
//! on packets that authenticated. And webrtc-srtp's AES-CM SRTCP path returns packets
//! whose E flag is clear without checking their tag, so SRTCP must have E set here (every
//! WebRTC stack encrypts SRTCP).

use std::collections::HashMap;

use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_no_replay_protection, srtp_no_replay_protection};
pub use webrtc_srtp::protection_profile::ProtectionProfile;

use crate::slot::SeqExtender;

/// Incoming SSRCs tracked per session; packets of further SSRCs are refused.
pub const MAX_INBOUND_SSRCS: usize = 16;

/// A 128-packet anti-replay window over 64-bit indices.
#[derive(Clone, Copy, Debug, Default)]
struct ReplayWindow {
    highest: Option<u64>,
    /// Bit i set: index `highest - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    /// Records `index` if new and inside the window; false for a replay or a stale index.
    fn accept(&mut self, index: u64) -> bool {
        let Some(h) = self.highest else {
            self.highest = Some(index);
            self.seen = 1;
            return true;
        };
        if index > h {
            let shift = index - h;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = Some(index);
            return true;
        }
        let age = h - index;
        if age >= 128 || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

#[derive(Default)]
struct InboundState {
    rtp: HashMap<u32, (SeqExtender, ReplayWindow)>,
    rtcp: HashMap<u32, ReplayWindow>,
}

/// RFC 5764 keying material: client key, server key, client salt, server salt.
#[derive(Clone)]
pub struct SrtpKeys {
    pub profile: ProtectionProfile,
    pub material: Vec<u8>,
    /// Whether we were the DTLS client (decides which half is ours).
    pub is_client: bool,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys").field("profile", &self.profile).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    #[error("keying material has the wrong length")]
    KeyLength,
    #[error("srtp: {0}")]
    Crypto(#[from] webrtc_srtp::Error),
    #[error("SRTCP packet is not encrypted (E flag clear)")]
    UnencryptedRtcp,
    #[error("replayed or stale packet")]
    Replay,
    #[error("packet too short")]
    Truncated,
    #[error("too many incoming SSRCs")]
    TooManySsrcs,
}

pub struct SrtpSession {
    inbound: Context,
    outbound: Context,
    replay: InboundState,
    pub profile: ProtectionProfile,
}

impl SrtpSession {
    pub fn new(keys: &SrtpKeys) -> Result<Self, SrtpError> {
        let (k, s) = (keys.profile.key_len(), keys.profile.salt_len());
        if keys.material.len() != 2 * (k + s) {
            return Err(SrtpError::KeyLength);
        }
        let m = &keys.material;
        let (client_key, rest) = m.split_at(k);
        let (server_key, rest) = rest.split_at(k);
        let (client_salt, server_salt) = rest.split_at(s);
        let ((lk, ls), (rk, rs)) = if keys.is_client {
            ((client_key, client_salt), (server_key, server_salt))
        } else {
            ((server_key, server_salt), (client_key, client_salt))
        };
        let outbound = Context::new(lk, ls, keys.profile, None, None)?;
        let inbound = Context::new(
            rk,
            rs,
            keys.profile,
            Some(srtp_no_replay_protection()),
            Some(srtcp_no_replay_protection()),
        )?;
        Ok(SrtpSession { inbound, outbound, replay: InboundState::default(), profile: keys.profile })
    }

    /// Where the SRTCP index sits: last 4 bytes for AEAD, before the 10-byte tag for AES-CM.
    /// The E flag and the 31-bit index of an SRTCP packet.
    fn srtcp_index(&self, cipher: &[u8]) -> Option<(bool, u64)> {
        let tag = match self.profile {
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm => 0,
            _ => self.profile.rtcp_auth_tag_len(),
        };
        let end = cipher.len().checked_sub(tag)?;
        let start = end.checked_sub(4)?;
        (start >= 8).then_some(())?;
        let raw = u32::from_be_bytes(cipher[start..end].try_into().ok()?);
        Some((raw & 0x8000_0000 != 0, u64::from(raw & 0x7fff_ffff)))
    }

    pub fn protect_rtp(&mut self, plain: &[u8]) -> Result<Bytes, SrtpError> {
        Ok(self.outbound.encrypt_rtp(plain)?)
    }

    pub fn unprotect_rtp(&mut self, cipher: &[u8]) -> Result<Bytes, SrtpError> {
        if cipher.len() < 12 {
            return Err(SrtpError::Truncated);
        }
        let ssrc = u32::from_be_bytes([cipher[8], cipher[9], cipher[10], cipher[11]]);
        let seq = u16::from_be_bytes([cipher[2], cipher[3]]);
        let known = self.replay.rtp.len();
        if known >= MAX_INBOUND_SSRCS && !self.replay.rtp.contains_key(&ssrc) {
            return Err(SrtpError::TooManySsrcs);
        }
        let plain = self.inbound.decrypt_rtp(cipher)?;
        let (ext, window) = self.replay.rtp.entry(ssrc).or_default();
        let index = ext.extend(seq);
        if !window.accept(index) {
            return Err(SrtpError::Replay);
        }
        Ok(plain)
    }

    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Result<Bytes, SrtpError> {
        Ok(self.outbound.encrypt_rtcp(plain)?)
    }

    pub fn unprotect_rtcp(&mut self, cipher: &[u8]) -> Result<Bytes, SrtpError> {
        let (encrypted, index) = self.srtcp_index(cipher).ok_or(SrtpError::Truncated)?;
        if !encrypted {
            return Err(SrtpError::UnencryptedRtcp);
        }
        let ssrc = u32::from_be_bytes([cipher[4], cipher[5], cipher[6], cipher[7]]);
        if self.replay.rtcp.len() >= MAX_INBOUND_SSRCS && !self.replay.rtcp.contains_key(&ssrc) {
            return Err(SrtpError::TooManySsrcs);
        }
        let plain = self.inbound.decrypt_rtcp(cipher)?;
        if !self.replay.rtcp.entry(ssrc).or_default().accept(index) {
            return Err(SrtpError::Replay);
        }
        Ok(plain)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn pair(profile: ProtectionProfile) -> (SrtpSession, SrtpSession) {
        let len = 2 * (profile.key_len() + profile.salt_len());
        let material: Vec<u8> = (0..len as u8).collect();
        let k = |is_client| SrtpKeys { profile, material: material.clone(), is_client };
        (SrtpSession::new(&k(true)).unwrap(), SrtpSession::new(&k(false)).unwrap())
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3, 4];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p
    }

    const SR: [u8; 28] = [0x80, 200, 0, 6, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn forged_first_packets_do_not_block_the_genuine_stream() {
        for profile in [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80] {
            let (mut client, mut server) = pair(profile);
            // Forgeries with the stream's SSRC and far-off indices, before anything genuine.
            let mut forged_rtp = rtp(40_000);
            forged_rtp.extend_from_slice(&[0u8; 16]);
            assert!(server.unprotect_rtp(&forged_rtp).is_err());
            for index in [[0x89, 0, 0, 0], [0x09, 0, 0, 0]] {
                // The index word where each profile reads it, with E set and clear.
                let mut forged = SR.to_vec();
                if matches!(profile, ProtectionProfile::AeadAes128Gcm) {
                    forged.extend_from_slice(&[0x55; 16]);
                    forged.extend_from_slice(&index);
                } else {
                    forged.extend_from_slice(&index);
                    forged.extend_from_slice(&[0x55; 10]);
                }
                assert!(server.unprotect_rtcp(&forged).is_err(), "{profile:?} accepted a forged SRTCP packet");
            }
            for seq in 1..5u16 {
                let p = client.protect_rtp(&rtp(seq)).unwrap();
                assert_eq!(&server.unprotect_rtp(&p).unwrap()[..], &rtp(seq)[..], "{profile:?}");
            }
            let p = client.protect_rtcp(&SR).unwrap();
            assert_eq!(&server.unprotect_rtcp(&p).unwrap()[..], &SR[..], "{profile:?}");
        }
    }

    #[test]
    fn replays_are_refused_and_reordering_is_not() {
        let (mut client, mut server) = pair(ProtectionProfile::AeadAes128Gcm);
        let packets: Vec<Bytes> = (65_530..=65_535u16).chain(0..4).map(|s| client.protect_rtp(&rtp(s)).unwrap()).collect();
        assert!(server.unprotect_rtp(&packets[1]).is_ok());
        assert!(server.unprotect_rtp(&packets[0]).is_ok(), "reordered packet within the window");
        assert!(matches!(server.unprotect_rtp(&packets[1]), Err(SrtpError::Replay)));
        for p in &packets[2..] {
            assert!(server.unprotect_rtp(p).is_ok(), "across the wrap");
        }
        assert!(matches!(server.unprotect_rtp(&packets[9]), Err(SrtpError::Replay)));
        let r = client.protect_rtcp(&SR).unwrap();
        assert!(server.unprotect_rtcp(&r).is_ok());
        assert!(matches!(server.unprotect_rtcp(&r), Err(SrtpError::Replay)));
        assert!(matches!(server.unprotect_rtcp(&r[..6]), Err(SrtpError::Truncated)));
    }

    #[test]
    fn window_rejects_stale_and_duplicate_indices() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1000));
        assert!(w.accept(1001));
        assert!(!w.accept(1001));
        assert!(w.accept(900));
        assert!(!w.accept(1001 - 128));
        assert!(w.accept(5000));
        assert!(!w.accept(1001));
    }
}
