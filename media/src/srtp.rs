//! SRTP and SRTCP (RFC 3711, RFC 7714) for one session, keyed from DTLS exported material.
//!
//! Our own transform over the RustCrypto AES, AES-GCM and HMAC-SHA1 crates, for two
//! reasons. Nothing here parses a packet beyond the bounds-checked RTP header view
//! before the tag is verified, and no per-SSRC state exists before a packet of that
//! SSRC authenticated: a flood of forged SSRCs costs one tag check each and no memory.
//! And it works in place, in the caller's buffer. `webrtc-srtp` stays the reference:
//! tests check both produce the same bytes for both profiles.
//!
//! Replay windows move only on packets that authenticated; SRTCP must be encrypted (E
//! set), as every WebRTC stack sends it.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::buf::PacketBuf;
use crate::rtp_header::RtpView;

/// Incoming SSRCs tracked per session; packets of further SSRCs are refused.
pub const MAX_INBOUND_SSRCS: usize = 8;
/// Outgoing SSRCs per session (listener slots and the report SSRC).
pub const MAX_OUTBOUND_SSRCS: usize = 32;

/// The SRTP protection profiles WebRTC negotiates over DTLS (RFC 5764, RFC 7714).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectionProfile {
    Aes128CmHmacSha1_80,
    AeadAes128Gcm,
}

impl ProtectionProfile {
    pub fn key_len(self) -> usize {
        16
    }

    pub fn salt_len(self) -> usize {
        match self {
            ProtectionProfile::Aes128CmHmacSha1_80 => 14,
            ProtectionProfile::AeadAes128Gcm => 12,
        }
    }

    /// Bytes an SRTP packet carries after the payload.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            ProtectionProfile::Aes128CmHmacSha1_80 => 10,
            ProtectionProfile::AeadAes128Gcm => 16,
        }
    }

    /// Bytes an SRTCP packet carries after the payload: tag and E||index.
    pub fn rtcp_trailer_len(self) -> usize {
        self.rtp_tag_len() + 4
    }
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SrtpError {
    #[error("keying material has the wrong length")]
    KeyLength,
    #[error("authentication failed")]
    Auth,
    #[error("SRTCP packet is not encrypted (E flag clear)")]
    UnencryptedRtcp,
    #[error("replayed or stale packet")]
    Replay,
    #[error("packet too short or its header is malformed")]
    Malformed,
    #[error("too many SSRCs")]
    TooManySsrcs,
}

/// A 128-packet anti-replay window over 64-bit indices.
#[derive(Clone, Copy, Debug, Default)]
struct ReplayWindow {
    highest: Option<u64>,
    /// Bit i set: index `highest - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    fn is_fresh(&self, index: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if index > h => true,
            Some(h) => {
                let age = h - index;
                age < 128 && self.seen & (1 << age) == 0
            }
        }
    }

    fn record(&mut self, index: u64) {
        match self.highest {
            Some(h) if index <= h => self.seen |= 1 << (h - index),
            Some(h) => {
                let shift = index - h;
                self.seen = if shift >= 128 { 1 } else { (self.seen << shift) | 1 };
                self.highest = Some(index);
            }
            None => {
                self.highest = Some(index);
                self.seen = 1;
            }
        }
    }
}

/// A small map from SSRC to per-stream state; linear search over a handful of entries.
struct Streams<T> {
    entries: Vec<(u32, T)>,
    cap: usize,
}

impl<T> Streams<T> {
    fn new(cap: usize) -> Self {
        Streams { entries: Vec::new(), cap }
    }

    fn get(&self, ssrc: u32) -> Option<&T> {
        self.entries.iter().find(|(s, _)| *s == ssrc).map(|(_, t)| t)
    }

    fn has_room(&self) -> bool {
        self.entries.len() < self.cap
    }

    fn get_or_insert(&mut self, ssrc: u32, make: impl FnOnce() -> T) -> Result<&mut T, SrtpError> {
        match self.entries.iter().position(|(s, _)| *s == ssrc) {
            Some(i) => Ok(&mut self.entries[i].1),
            None if self.has_room() => {
                self.entries.push((ssrc, make()));
                Ok(&mut self.entries.last_mut().expect("just pushed").1)
            }
            None => Err(SrtpError::TooManySsrcs),
        }
    }
}

/// Receive state of one authenticated RTP stream: highest 48-bit index and replay window.
#[derive(Default)]
struct RxStream {
    highest: u64,
    window: ReplayWindow,
}

/// RFC 3711 appendix A: the index nearest the highest seen (the ROC guess).
fn guess_index(highest: Option<u64>, seq: u16) -> u64 {
    let Some(h) = highest else { return u64::from(seq) };
    let roc = h >> 16;
    let candidate = (roc << 16) | u64::from(seq);
    let options = [candidate.checked_sub(1 << 16), Some(candidate), Some(candidate + (1 << 16))];
    options.into_iter().flatten().min_by_key(|c| c.abs_diff(h)).unwrap_or(candidate)
}

struct TxStream {
    roc: u32,
    last_seq: u16,
}

type HmacSha1 = Hmac<Sha1>;

/// Session keys of one direction, for RTP and RTCP (one per session: size does not matter).
#[allow(clippy::large_enum_variant)]
enum Keys {
    Cm { rtp: CmKeys, rtcp: CmKeys },
    Gcm { rtp: GcmKeys, rtcp: GcmKeys },
}

struct CmKeys {
    cipher: Aes128,
    salt: [u8; 14],
    auth: HmacSha1,
}

struct GcmKeys {
    cipher: Aes128Gcm,
    salt: [u8; 12],
}

const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// RFC 3711 4.3.3 AES-CM key derivation with a key derivation rate of 0.
fn derive(master: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut x = [0u8; 16];
    x[..master_salt.len()].copy_from_slice(master_salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let mut b = block.into();
        master.encrypt_block(&mut b);
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

impl Keys {
    fn new(profile: ProtectionProfile, key: &[u8], salt: &[u8]) -> Keys {
        let master = Aes128::new(key.into());
        match profile {
            ProtectionProfile::Aes128CmHmacSha1_80 => {
                let cm = |key_label, auth_label, salt_label| {
                    let (mut k, mut a, mut s) = ([0u8; 16], [0u8; 20], [0u8; 14]);
                    derive(&master, salt, key_label, &mut k);
                    derive(&master, salt, auth_label, &mut a);
                    derive(&master, salt, salt_label, &mut s);
                    CmKeys {
                        cipher: Aes128::new(&k.into()),
                        salt: s,
                        auth: <HmacSha1 as Mac>::new_from_slice(&a).expect("HMAC takes any key length"),
                    }
                };
                Keys::Cm {
                    rtp: cm(LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT),
                    rtcp: cm(LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
                }
            }
            ProtectionProfile::AeadAes128Gcm => {
                let gcm = |key_label, salt_label| {
                    let (mut k, mut s) = ([0u8; 16], [0u8; 12]);
                    derive(&master, salt, key_label, &mut k);
                    derive(&master, salt, salt_label, &mut s);
                    GcmKeys { cipher: Aes128Gcm::new(&k.into()), salt: s }
                };
                Keys::Gcm { rtp: gcm(LABEL_RTP_KEY, LABEL_RTP_SALT), rtcp: gcm(LABEL_RTCP_KEY, LABEL_RTCP_SALT) }
            }
        }
    }
}

impl CmKeys {
    /// AES-CM keystream XOR (RFC 3711 4.1.1): IV = salt ^ SSRC ^ 48-bit index, all shifted by 16.
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        let base = u128::from_be_bytes(iv);
        const BATCH: usize = 8;
        let mut blocks = [aes::Block::default(); BATCH];
        for (batch_no, chunk) in data.chunks_mut(16 * BATCH).enumerate() {
            let n = chunk.len().div_ceil(16);
            for (j, block) in blocks[..n].iter_mut().enumerate() {
                let counter = base.wrapping_add((batch_no * BATCH + j) as u128);
                *block = counter.to_be_bytes().into();
            }
            self.cipher.encrypt_blocks(&mut blocks[..n]);
            for (d, k) in chunk.iter_mut().zip(blocks.iter().flat_map(|b| b.iter())) {
                *d ^= k;
            }
        }
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = self.auth.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.auth.clone();
        for p in parts {
            mac.update(p);
        }
        mac.verify_truncated_left(tag).is_ok()
    }
}

impl GcmKeys {
    fn iv(&self, ssrc: u32, high: u32, low: u32, low_len: usize) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        if low_len == 2 {
            // RTP: ROC (4) || SEQ (2).
            iv[6..10].copy_from_slice(&high.to_be_bytes());
            iv[10..12].copy_from_slice(&(low as u16).to_be_bytes());
        } else {
            // RTCP: 00 00 || 0 || 31-bit index.
            iv[8..12].copy_from_slice(&low.to_be_bytes());
        }
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        iv
    }
}

pub struct SrtpSession {
    profile: ProtectionProfile,
    tx: Keys,
    rx: Keys,
    tx_rtp: Streams<TxStream>,
    tx_rtcp: Streams<u32>,
    rx_rtp: Streams<RxStream>,
    rx_rtcp: Streams<ReplayWindow>,
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
        Ok(SrtpSession {
            profile: keys.profile,
            tx: Keys::new(keys.profile, lk, ls),
            rx: Keys::new(keys.profile, rk, rs),
            tx_rtp: Streams::new(MAX_OUTBOUND_SSRCS),
            tx_rtcp: Streams::new(MAX_OUTBOUND_SSRCS),
            rx_rtp: Streams::new(MAX_INBOUND_SSRCS),
            rx_rtcp: Streams::new(MAX_INBOUND_SSRCS),
        })
    }

    pub fn profile(&self) -> ProtectionProfile {
        self.profile
    }

    /// Encrypts the RTP packet in `buf` in place and appends the tag.
    pub fn protect_rtp_in_place(&mut self, buf: &mut impl PacketBuf) -> Result<(), SrtpError> {
        let view = RtpView::parse_protected(buf.as_ref()).map_err(|_| SrtpError::Malformed)?;
        let (ssrc, seq, header_len) = (view.ssrc.0, view.sequence, view.header_len());
        let stream = self.tx_rtp.get_or_insert(ssrc, || TxStream { roc: 0, last_seq: seq })?;
        if seq < stream.last_seq && stream.last_seq - seq > 0x8000 {
            stream.roc = stream.roc.wrapping_add(1);
        }
        if seq.wrapping_sub(stream.last_seq) < 0x8000 {
            stream.last_seq = seq;
        }
        let roc = stream.roc;
        match &self.tx {
            Keys::Cm { rtp, .. } => {
                let index = (u64::from(roc) << 16) | u64::from(seq);
                rtp.apply_keystream(ssrc, index, &mut buf.as_mut()[header_len..]);
                let tag = rtp.tag(&[buf.as_ref(), &roc.to_be_bytes()]);
                buf.append(&tag[..10]);
            }
            Keys::Gcm { rtp, .. } => {
                let iv = rtp.iv(ssrc, roc, u32::from(seq), 2);
                let (header, payload) = buf.as_mut().split_at_mut(header_len);
                let tag = rtp
                    .cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&iv), header, payload)
                    .map_err(|_| SrtpError::Malformed)?;
                buf.append(&tag);
            }
        }
        Ok(())
    }

    pub fn protect_rtp(&mut self, plain: &[u8]) -> Result<Bytes, SrtpError> {
        let mut buf = Vec::with_capacity(plain.len() + self.profile.rtp_tag_len());
        buf.extend_from_slice(plain);
        self.protect_rtp_in_place(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Authenticates and decrypts `cipher` into `out` (cleared first). Per-SSRC state is
    /// created only for a packet that authenticated.
    pub fn unprotect_rtp_into(&mut self, cipher: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let tag_len = self.profile.rtp_tag_len();
        let body_len = cipher.len().checked_sub(tag_len).ok_or(SrtpError::Malformed)?;
        let (body, tag) = cipher.split_at(body_len);
        let view = RtpView::parse_protected(body).map_err(|_| SrtpError::Malformed)?;
        let (ssrc, seq, header_len) = (view.ssrc.0, view.sequence, view.header_len());
        let known = self.rx_rtp.get(ssrc);
        if known.is_none() && !self.rx_rtp.has_room() {
            return Err(SrtpError::TooManySsrcs);
        }
        let index = guess_index(known.map(|s| s.highest), seq);
        if known.is_some_and(|s| !s.window.is_fresh(index)) {
            return Err(SrtpError::Replay);
        }
        let roc = (index >> 16) as u32;
        out.clear();
        out.extend_from_slice(body);
        match &self.rx {
            Keys::Cm { rtp, .. } => {
                if !rtp.verify(&[body, &roc.to_be_bytes()], tag) {
                    return Err(SrtpError::Auth);
                }
                rtp.apply_keystream(ssrc, index, &mut out[header_len..]);
            }
            Keys::Gcm { rtp, .. } => {
                let iv = rtp.iv(ssrc, roc, u32::from(seq), 2);
                let (header, payload) = out.split_at_mut(header_len);
                rtp.cipher
                    .decrypt_in_place_detached(Nonce::from_slice(&iv), header, payload, Tag::from_slice(tag))
                    .map_err(|_| SrtpError::Auth)?;
            }
        }
        let stream = self.rx_rtp.get_or_insert(ssrc, RxStream::default)?;
        stream.window.record(index);
        stream.highest = stream.highest.max(index);
        Ok(())
    }

    pub fn unprotect_rtp(&mut self, cipher: &[u8]) -> Result<Bytes, SrtpError> {
        let mut out = Vec::with_capacity(cipher.len());
        self.unprotect_rtp_into(cipher, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// Encrypts a compound RTCP packet in place and appends E||index and the tag.
    pub fn protect_rtcp_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), SrtpError> {
        if buf.len() < 8 {
            return Err(SrtpError::Malformed);
        }
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let counter = self.tx_rtcp.get_or_insert(ssrc, || 0)?;
        *counter = (*counter + 1) & 0x7fff_ffff;
        let index = *counter;
        let e_index = (index | 0x8000_0000).to_be_bytes();
        match &self.tx {
            Keys::Cm { rtcp, .. } => {
                rtcp.apply_keystream(ssrc, u64::from(index), &mut buf[8..]);
                buf.extend_from_slice(&e_index);
                let tag = rtcp.tag(&[buf]);
                buf.extend_from_slice(&tag[..10]);
            }
            Keys::Gcm { rtcp, .. } => {
                let iv = rtcp.iv(ssrc, 0, index, 4);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&e_index);
                let tag = rtcp
                    .cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut buf[8..])
                    .map_err(|_| SrtpError::Malformed)?;
                buf.extend_from_slice(&tag);
                buf.extend_from_slice(&e_index);
            }
        }
        Ok(())
    }

    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Result<Bytes, SrtpError> {
        let mut buf = Vec::with_capacity(plain.len() + self.profile.rtcp_trailer_len());
        buf.extend_from_slice(plain);
        self.protect_rtcp_in_place(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Authenticates and decrypts an SRTCP packet into `out` (the compound RTCP packet).
    pub fn unprotect_rtcp_into(&mut self, cipher: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        let tag_len = self.profile.rtp_tag_len();
        if cipher.len() < 8 + self.profile.rtcp_trailer_len() {
            return Err(SrtpError::Malformed);
        }
        let ssrc = u32::from_be_bytes([cipher[4], cipher[5], cipher[6], cipher[7]]);
        // Where E||index sits: last 4 bytes for AEAD, before the tag for AES-CM.
        let (body_end, e_index_at) = match self.profile {
            ProtectionProfile::AeadAes128Gcm => (cipher.len() - 4 - tag_len, cipher.len() - 4),
            ProtectionProfile::Aes128CmHmacSha1_80 => (cipher.len() - 4 - tag_len, cipher.len() - 4 - tag_len),
        };
        let e_index: [u8; 4] = cipher[e_index_at..e_index_at + 4].try_into().map_err(|_| SrtpError::Malformed)?;
        let raw = u32::from_be_bytes(e_index);
        if raw & 0x8000_0000 == 0 {
            return Err(SrtpError::UnencryptedRtcp);
        }
        let index = raw & 0x7fff_ffff;
        let known = self.rx_rtcp.get(ssrc);
        if known.is_none() && !self.rx_rtcp.has_room() {
            return Err(SrtpError::TooManySsrcs);
        }
        if known.is_some_and(|w| !w.is_fresh(u64::from(index))) {
            return Err(SrtpError::Replay);
        }
        out.clear();
        out.extend_from_slice(&cipher[..body_end]);
        match &self.rx {
            Keys::Cm { rtcp, .. } => {
                let (authenticated, tag) = cipher.split_at(cipher.len() - tag_len);
                if !rtcp.verify(&[authenticated], tag) {
                    return Err(SrtpError::Auth);
                }
                rtcp.apply_keystream(ssrc, u64::from(index), &mut out[8..]);
            }
            Keys::Gcm { rtcp, .. } => {
                let iv = rtcp.iv(ssrc, 0, index, 4);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&cipher[..8]);
                aad[8..].copy_from_slice(&e_index);
                let tag = &cipher[body_end..body_end + tag_len];
                rtcp.cipher
                    .decrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut out[8..], Tag::from_slice(tag))
                    .map_err(|_| SrtpError::Auth)?;
            }
        }
        self.rx_rtcp.get_or_insert(ssrc, ReplayWindow::default)?.record(u64::from(index));
        Ok(())
    }

    pub fn unprotect_rtcp(&mut self, cipher: &[u8]) -> Result<Bytes, SrtpError> {
        let mut out = Vec::with_capacity(cipher.len());
        self.unprotect_rtcp_into(cipher, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// Incoming SSRCs with state (each authenticated at least once).
    pub fn inbound_ssrcs(&self) -> usize {
        self.rx_rtp.entries.len() + self.rx_rtcp.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::protection_profile::ProtectionProfile as Reference;

    const PROFILES: [ProtectionProfile; 2] = [ProtectionProfile::AeadAes128Gcm, ProtectionProfile::Aes128CmHmacSha1_80];

    fn material(profile: ProtectionProfile) -> Vec<u8> {
        let len = 2 * (profile.key_len() + profile.salt_len());
        (0..len as u8).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect()
    }

    fn pair(profile: ProtectionProfile) -> (SrtpSession, SrtpSession) {
        let m = material(profile);
        let k = |is_client| SrtpKeys { profile, material: m.clone(), is_client };
        (SrtpSession::new(&k(true)).unwrap(), SrtpSession::new(&k(false)).unwrap())
    }

    /// webrtc-srtp contexts for the client's sending side and the server's receiving side.
    fn reference(profile: ProtectionProfile) -> (Context, Context) {
        let m = material(profile);
        let (k, s) = (profile.key_len(), profile.salt_len());
        let (client_key, client_salt) = (&m[..k], &m[2 * k..2 * k + s]);
        let p = match profile {
            ProtectionProfile::AeadAes128Gcm => Reference::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80 => Reference::Aes128CmHmacSha1_80,
        };
        (
            Context::new(client_key, client_salt, p, None, None).unwrap(),
            Context::new(client_key, client_salt, p, None, None).unwrap(),
        )
    }

    fn rtp(seq: u16, ssrc: u32, with_ext: bool) -> Vec<u8> {
        let mut p = vec![0x80, 111, 0, 0, 0, 0, 3, 0xc0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        if with_ext {
            p[0] |= 0x10;
            p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0x9e, 0, 0]);
        }
        p.extend((0..80u8).map(|i| i ^ seq as u8));
        p
    }

    fn sr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..20u8).map(|i| i * 3));
        p
    }

    #[test]
    fn same_bytes_as_webrtc_srtp_for_both_profiles() {
        for profile in PROFILES {
            let (mut ours, mut server) = pair(profile);
            let (mut theirs, mut their_server) = reference(profile);
            // Across a sequence wrap (ROC 0 -> 1), with and without header extensions.
            for (i, seq) in (65_530..=65_535u16).chain(0..6).enumerate() {
                let plain = rtp(seq, 0x1234_5678, i % 2 == 0);
                let a = ours.protect_rtp(&plain).unwrap();
                let b = theirs.encrypt_rtp(&plain).unwrap();
                assert_eq!(&a[..], &b[..], "{profile:?} RTP seq {seq}");
                assert_eq!(&server.unprotect_rtp(&b).unwrap()[..], &plain[..], "{profile:?}");
                assert_eq!(&their_server.decrypt_rtp(&a).unwrap()[..], &plain[..], "{profile:?}");
            }
            for _ in 0..3 {
                let plain = sr(0x0bad_cafe);
                let a = ours.protect_rtcp(&plain).unwrap();
                let b = theirs.encrypt_rtcp(&plain).unwrap();
                assert_eq!(&a[..], &b[..], "{profile:?} RTCP");
                assert_eq!(&server.unprotect_rtcp(&a).unwrap()[..], &plain[..], "{profile:?}");
                assert_eq!(&their_server.decrypt_rtcp(&a).unwrap()[..], &plain[..], "{profile:?}");
            }
        }
    }

    #[test]
    fn forged_packets_leave_no_state_and_do_not_block_the_genuine_stream() {
        for profile in PROFILES {
            let (mut client, mut server) = pair(profile);
            // Forgeries with the stream's SSRC and far-off indices, and with many random SSRCs.
            let mut forged = rtp(40_000, 7, false);
            forged.extend_from_slice(&[0u8; 16]);
            assert_eq!(server.unprotect_rtp(&forged), Err(SrtpError::Auth));
            for ssrc in 0..1000u32 {
                let mut f = rtp(1, ssrc, true);
                f.extend_from_slice(&[0u8; 16]);
                assert_eq!(server.unprotect_rtp(&f), Err(SrtpError::Auth));
            }
            for index in [[0x89, 0, 0, 0], [0x09, 0, 0, 0]] {
                let mut f = sr(7);
                if profile == ProtectionProfile::AeadAes128Gcm {
                    f.extend_from_slice(&[0x55; 16]);
                    f.extend_from_slice(&index);
                } else {
                    f.extend_from_slice(&index);
                    f.extend_from_slice(&[0x55; 10]);
                }
                assert!(server.unprotect_rtcp(&f).is_err(), "{profile:?} accepted a forged SRTCP packet");
            }
            assert_eq!(server.inbound_ssrcs(), 0, "forgeries created state");
            for seq in 1..5u16 {
                let p = client.protect_rtp(&rtp(seq, 7, false)).unwrap();
                assert_eq!(&server.unprotect_rtp(&p).unwrap()[..], &rtp(seq, 7, false)[..], "{profile:?}");
            }
            let p = client.protect_rtcp(&sr(7)).unwrap();
            assert_eq!(&server.unprotect_rtcp(&p).unwrap()[..], &sr(7)[..], "{profile:?}");
            assert_eq!(server.inbound_ssrcs(), 2);
        }
    }

    #[test]
    fn replays_are_refused_and_reordering_is_not() {
        for profile in PROFILES {
            let (mut client, mut server) = pair(profile);
            let packets: Vec<Bytes> =
                (65_530..=65_535u16).chain(0..4).map(|s| client.protect_rtp(&rtp(s, 7, false)).unwrap()).collect();
            assert!(server.unprotect_rtp(&packets[1]).is_ok());
            assert!(server.unprotect_rtp(&packets[0]).is_ok(), "reordered packet within the window");
            assert_eq!(server.unprotect_rtp(&packets[1]), Err(SrtpError::Replay));
            for p in &packets[2..] {
                assert!(server.unprotect_rtp(p).is_ok(), "across the wrap");
            }
            assert_eq!(server.unprotect_rtp(&packets[9]), Err(SrtpError::Replay));
            let r = client.protect_rtcp(&sr(7)).unwrap();
            assert!(server.unprotect_rtcp(&r).is_ok());
            assert_eq!(server.unprotect_rtcp(&r), Err(SrtpError::Replay));
            assert_eq!(server.unprotect_rtcp(&r[..6]), Err(SrtpError::Malformed));
            // A tampered byte anywhere fails authentication.
            let p = client.protect_rtp(&rtp(10, 7, false)).unwrap();
            for i in 0..p.len() {
                let mut t = p.to_vec();
                t[i] ^= 0x01;
                assert!(server.unprotect_rtp(&t).is_err(), "{profile:?} byte {i}");
            }
        }
    }

    #[test]
    fn inbound_ssrcs_are_capped() {
        let (mut client, mut server) = pair(ProtectionProfile::AeadAes128Gcm);
        for ssrc in 0..MAX_INBOUND_SSRCS as u32 {
            let p = client.protect_rtp(&rtp(1, ssrc, false)).unwrap();
            assert!(server.unprotect_rtp(&p).is_ok());
        }
        let p = client.protect_rtp(&rtp(1, 999, false)).unwrap();
        assert_eq!(server.unprotect_rtp(&p), Err(SrtpError::TooManySsrcs));
    }

    #[test]
    fn window_rejects_stale_and_duplicate_indices() {
        let mut w = ReplayWindow::default();
        for (index, fresh) in
            [(1000, true), (1001, true), (1001, false), (900, true), (1001 - 128, false), (5000, true), (1001, false)]
        {
            assert_eq!(w.is_fresh(index), fresh, "{index}");
            if fresh {
                w.record(index);
            }
        }
    }

    #[test]
    fn index_guess_follows_the_roll_over() {
        assert_eq!(guess_index(None, 65_535), 65_535);
        assert_eq!(guess_index(Some(65_535), 2), 65_538);
        assert_eq!(guess_index(Some(65_538), 65_534), 65_534);
        assert_eq!(guess_index(Some(5), 65_530), 65_530, "no index below zero");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), rtcp in proptest::bool::ANY) {
            let (_, mut server) = pair(ProtectionProfile::Aes128CmHmacSha1_80);
            let mut out = Vec::new();
            if rtcp {
                let _ = server.unprotect_rtcp_into(&bytes, &mut out);
            } else {
                let _ = server.unprotect_rtp_into(&bytes, &mut out);
            }
        }
    }
}
