//! Our WebRTC parts, assembled from the webrtc-rs protocol crates: SDP offer/answer,
//! an ICE-lite responder, DTLS-SRTP set-up, RTP rewriting for listener slots, RTCP
//! reports and statistics, and active-speaker selection.
//!
//! Everything except [`dtls`] is sans-IO: plain state fed with bytes and an `Instant`.

pub mod buf;
pub mod demux;
pub mod dtls;
pub mod dtls_filter;
pub mod ice;
pub mod rtcp_report;
pub mod rtp_header;
pub mod sdp_offer;
pub mod slot;
pub mod speakers;
pub mod srtp;

pub use demux::{classify, PacketKind};

/// An RTP synchronisation source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

impl std::fmt::Display for Ssrc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Largest UDP datagram the edge accepts or sends on the client side.
pub const MAX_DATAGRAM: usize = 1500;

/// Opus RTP clock rate.
pub const OPUS_CLOCK_RATE: u32 = 48_000;

/// RFC 6464 client-to-mixer audio level.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// RFC 6465 mixer-to-client (CSRC) audio levels.
pub const CSRC_AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:csrc-audio-level";
