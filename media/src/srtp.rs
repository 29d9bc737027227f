//! SRTP/SRTCP contexts for one session, keyed from DTLS exported material.

use bytes::Bytes;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
pub use webrtc_srtp::protection_profile::ProtectionProfile;

const REPLAY_WINDOW: usize = 256;

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
}

pub struct SrtpSession {
    inbound: Context,
    outbound: Context,
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
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )?;
        Ok(SrtpSession { inbound, outbound, profile: keys.profile })
    }

    pub fn protect_rtp(&mut self, plain: &[u8]) -> Result<Bytes, SrtpError> {
        Ok(self.outbound.encrypt_rtp(plain)?)
    }

    pub fn unprotect_rtp(&mut self, cipher: &[u8]) -> Result<Bytes, SrtpError> {
        Ok(self.inbound.decrypt_rtp(cipher)?)
    }

    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Result<Bytes, SrtpError> {
        Ok(self.outbound.encrypt_rtcp(plain)?)
    }

    pub fn unprotect_rtcp(&mut self, cipher: &[u8]) -> Result<Bytes, SrtpError> {
        Ok(self.inbound.decrypt_rtcp(cipher)?)
    }
}
