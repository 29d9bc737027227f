//! SDP offer parsing and answer building for audio-only, bundled, ICE-lite sessions.

use std::fmt::Write as _;
use std::io::Cursor;
use std::net::SocketAddr;

use sdp::description::media::MediaDescription;
use sdp::description::session::SessionDescription;

use crate::{Ssrc, AUDIO_LEVEL_URI, CSRC_AUDIO_LEVEL_URI};

/// Offers larger than this are refused before parsing.
pub const MAX_OFFER_LEN: usize = 64 * 1024;
/// More m-lines than this are refused.
pub const MAX_MEDIA_SECTIONS: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SdpError {
    #[error("offer is larger than {MAX_OFFER_LEN} bytes")]
    TooLarge,
    #[error("offer is not valid SDP: {0}")]
    Unparseable(String),
    #[error("offer has more than {MAX_MEDIA_SECTIONS} media sections")]
    TooManyMedia,
    #[error("offer has no audio media section")]
    NoAudio,
    #[error("offer does not include the Opus codec (opus/48000/2)")]
    NoOpus,
    #[error("offer has no DTLS fingerprint (a=fingerprint)")]
    NoFingerprint,
    #[error("unsupported DTLS fingerprint: {0} (sha-256 is required)")]
    BadFingerprint(String),
    #[error("offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")]
    NoIceCredentials,
    #[error("offer does not use rtcp-mux (a=rtcp-mux)")]
    NoRtcpMux,
    #[error("offer asks the server to be DTLS client (a=setup:passive); offer actpass or active")]
    BadSetup,
    #[error("offer is not UDP/TLS/RTP/SAVPF")]
    BadProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether the offerer (the client) sends media on this section.
    pub fn client_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    /// Whether the offerer (the client) receives media on this section.
    pub fn client_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One audio section of an offer we can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedAudio {
    pub opus_pt: u8,
    pub opus_fmtp: Option<String>,
    pub audio_level_ext: Option<u8>,
    pub csrc_level_ext: Option<u8>,
    pub direction: Direction,
    /// The offerer's sending SSRC, when signalled.
    pub ssrc: Option<Ssrc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedMedia {
    pub kind: String,
    pub mid: String,
    pub protocol: String,
    pub formats: Vec<String>,
    /// `None` for a section we cannot use (not audio, or audio without Opus).
    pub audio: Option<OfferedAudio>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// SHA-256 of the client's DTLS certificate.
    pub fingerprint: [u8; 32],
    pub media: Vec<OfferedMedia>,
    pub bundle: Vec<String>,
}

impl Offer {
    pub fn parse(text: &str) -> Result<Offer, SdpError> {
        let session = unmarshal_bounded(text)?;
        if session.media_descriptions.len() > MAX_MEDIA_SECTIONS {
            return Err(SdpError::TooManyMedia);
        }
        let bundle = session
            .attribute("group")
            .and_then(|g| g.strip_prefix("BUNDLE"))
            .map(|mids| mids.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();

        let mut media = Vec::with_capacity(session.media_descriptions.len());
        let mut saw_audio = false;
        let mut credentials = None;
        let mut fingerprint = None;
        let mut rtcp_mux = false;
        let mut first_error = None;
        for (index, m) in session.media_descriptions.iter().enumerate() {
            let mid = m.attribute("mid").flatten().map(str::to_owned).unwrap_or_else(|| index.to_string());
            let protocol = m.media_name.protos.join("/");
            let is_audio = m.media_name.media == "audio";
            saw_audio |= is_audio;
            let audio = if is_audio && m.media_name.port.value != 0 {
                match parse_audio(m) {
                    Ok(a) => {
                        if protocol != "UDP/TLS/RTP/SAVPF" {
                            first_error.get_or_insert(SdpError::BadProtocol);
                            None
                        } else {
                            if credentials.is_none() {
                                credentials = ice_credentials(m, &session);
                            }
                            if fingerprint.is_none() {
                                fingerprint = Some(dtls_fingerprint(m, &session));
                            }
                            if setup_role(m, &session) == Some("passive") {
                                return Err(SdpError::BadSetup);
                            }
                            rtcp_mux |= m.attribute("rtcp-mux").is_some();
                            Some(a)
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                        None
                    }
                }
            } else {
                None
            };
            media.push(OfferedMedia {
                kind: m.media_name.media.clone(),
                mid,
                protocol,
                formats: m.media_name.formats.clone(),
                audio,
            });
        }
        if !saw_audio {
            return Err(SdpError::NoAudio);
        }
        if !media.iter().any(|m| m.audio.is_some()) {
            return Err(first_error.unwrap_or(SdpError::NoAudio));
        }
        let fingerprint = fingerprint.ok_or(SdpError::NoFingerprint)??;
        let (ice_ufrag, ice_pwd) = credentials.ok_or(SdpError::NoIceCredentials)?;
        if !rtcp_mux {
            return Err(SdpError::NoRtcpMux);
        }
        Ok(Offer { ice_ufrag, ice_pwd, fingerprint, media, bundle })
    }
}

/// Parses SDP of at most [`MAX_OFFER_LEN`] bytes.
fn unmarshal_bounded(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_OFFER_LEN {
        return Err(SdpError::TooLarge);
    }
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes())).map_err(|e| SdpError::Unparseable(e.to_string()))
}

fn parse_audio(m: &MediaDescription) -> Result<OfferedAudio, SdpError> {
    let mut opus_pt = None;
    for value in attribute_values(m, "rtpmap") {
        let Some((pt, codec)) = value.split_once(' ') else {
            continue;
        };
        if codec.to_ascii_lowercase().starts_with("opus/48000") {
            if let Ok(pt) = pt.parse::<u8>() {
                if pt < 128 && m.media_name.formats.iter().any(|f| f == &pt.to_string()) {
                    opus_pt = Some(pt);
                    break;
                }
            }
        }
    }
    let opus_pt = opus_pt.ok_or(SdpError::NoOpus)?;
    let opus_fmtp = attribute_values(m, "fmtp")
        .filter_map(|v| v.split_once(' '))
        .find(|(pt, _)| pt.parse::<u8>() == Ok(opus_pt))
        .map(|(_, params)| params.to_owned());
    let extmap = |uri: &str| {
        attribute_values(m, "extmap").find_map(|v| {
            let mut parts = v.split_whitespace();
            let id = parts.next()?.split('/').next()?.parse::<u8>().ok()?;
            (parts.next()? == uri && (1..=14).contains(&id)).then_some(id)
        })
    };
    let direction = if m.attribute("sendonly").is_some() {
        Direction::SendOnly
    } else if m.attribute("recvonly").is_some() {
        Direction::RecvOnly
    } else if m.attribute("inactive").is_some() {
        Direction::Inactive
    } else {
        Direction::SendRecv
    };
    let ssrc =
        attribute_values(m, "ssrc").filter_map(|v| v.split_whitespace().next()?.parse::<u32>().ok()).next().map(Ssrc);
    Ok(OfferedAudio {
        opus_pt,
        opus_fmtp,
        audio_level_ext: extmap(AUDIO_LEVEL_URI),
        csrc_level_ext: extmap(CSRC_AUDIO_LEVEL_URI),
        direction,
        ssrc,
    })
}

fn attribute_values<'a>(m: &'a MediaDescription, key: &'a str) -> impl Iterator<Item = &'a str> {
    m.attributes.iter().filter(move |a| a.key == key).filter_map(|a| a.value.as_deref())
}

fn media_or_session<'a>(m: &'a MediaDescription, s: &'a SessionDescription, key: &str) -> Option<&'a str> {
    m.attribute(key).flatten().or_else(|| s.attribute(key).map(String::as_str))
}

fn ice_credentials(m: &MediaDescription, s: &SessionDescription) -> Option<(String, String)> {
    let ufrag = media_or_session(m, s, "ice-ufrag")?.trim();
    let pwd = media_or_session(m, s, "ice-pwd")?.trim();
    // RFC 8839: ufrag 4..=256 and pwd 22..=256 ice-chars.
    let ice_chars = |v: &str| v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    let ok = (4..=256).contains(&ufrag.len()) && (22..=256).contains(&pwd.len()) && ice_chars(ufrag) && ice_chars(pwd);
    ok.then(|| (ufrag.to_owned(), pwd.to_owned()))
}

fn dtls_fingerprint(m: &MediaDescription, s: &SessionDescription) -> Result<[u8; 32], SdpError> {
    let value = media_or_session(m, s, "fingerprint").ok_or(SdpError::NoFingerprint)?;
    let (alg, hex) = value.trim().split_once(' ').ok_or(SdpError::NoFingerprint)?;
    if !alg.eq_ignore_ascii_case("sha-256") {
        return Err(SdpError::BadFingerprint(alg.chars().take(32).collect()));
    }
    parse_fingerprint_hex(hex).ok_or_else(|| SdpError::BadFingerprint("malformed sha-256".into()))
}

fn parse_fingerprint_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let mut parts = hex.trim().split(':');
    for byte in out.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `AB:CD:...` form of a SHA-256 fingerprint, as SDP writes it.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    let mut s = String::with_capacity(32 * 3);
    for (i, b) in fp.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

fn setup_role<'a>(m: &'a MediaDescription, s: &'a SessionDescription) -> Option<&'a str> {
    media_or_session(m, s, "setup").map(str::trim)
}

/// What the answer does with one offered media section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaAnswer {
    /// Port 0: not used.
    Reject,
    /// The client sends, we receive.
    Receive,
    /// We send on this SSRC, the client receives.
    Send(Ssrc),
    /// Both directions; we send on this SSRC.
    SendReceive(Ssrc),
}

pub struct AnswerParams<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    pub fingerprint: &'a [u8; 32],
    pub candidates: &'a [SocketAddr],
    pub cname: &'a str,
    pub session_id: u64,
}

/// Builds the answer; `decisions` has one entry per offered media section, in order.
pub fn build_answer(offer: &Offer, params: &AnswerParams<'_>, decisions: &[MediaAnswer]) -> String {
    debug_assert_eq!(offer.media.len(), decisions.len());
    let accepted: Vec<&str> = offer
        .media
        .iter()
        .zip(decisions)
        .filter(|(m, d)| **d != MediaAnswer::Reject && m.audio.is_some())
        .map(|(m, _)| m.mid.as_str())
        .collect();
    let fingerprint = format_fingerprint(params.fingerprint);
    let mut s = String::with_capacity(1024 + 768 * offer.media.len());
    let _ = write!(s, "v=0\r\no=- {} 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n", params.session_id);
    if !accepted.is_empty() {
        let _ = write!(s, "a=group:BUNDLE {}\r\n", accepted.join(" "));
    }
    s.push_str("a=msid-semantic: WMS *\r\n");
    for (m, decision) in offer.media.iter().zip(decisions) {
        let (Some(audio), false) = (&m.audio, *decision == MediaAnswer::Reject) else {
            let formats = if m.formats.is_empty() { "0".to_owned() } else { m.formats.join(" ") };
            let proto = if m.protocol.is_empty() { "UDP/TLS/RTP/SAVPF" } else { &m.protocol };
            let _ = write!(
                s,
                "m={} 0 {} {}\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=inactive\r\n",
                m.kind, proto, formats, m.mid
            );
            continue;
        };
        let pt = audio.opus_pt;
        let _ = write!(
            s,
            "m=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=mid:{}\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:sha-256 {}\r\n\
             a=setup:passive\r\na=rtcp-mux\r\na=rtcp-rsize\r\n",
            m.mid, params.ice_ufrag, params.ice_pwd, fingerprint
        );
        let direction = match decision {
            MediaAnswer::Receive => "recvonly",
            MediaAnswer::Send(_) => "sendonly",
            MediaAnswer::SendReceive(_) => "sendrecv",
            MediaAnswer::Reject => unreachable!("rejected sections are written above"),
        };
        let _ = write!(s, "a={direction}\r\na=rtpmap:{pt} opus/48000/2\r\n");
        let _ = write!(s, "a=fmtp:{pt} minptime=10;useinbandfec=1\r\n");
        if let Some(id) = audio.audio_level_ext {
            let _ = write!(s, "a=extmap:{id} {AUDIO_LEVEL_URI}\r\n");
        }
        if let Some(id) = audio.csrc_level_ext {
            let _ = write!(s, "a=extmap:{id} {CSRC_AUDIO_LEVEL_URI}\r\n");
        }
        if let MediaAnswer::Send(ssrc) | MediaAnswer::SendReceive(ssrc) = decision {
            let stream = params.cname;
            let _ = write!(
                s,
                "a=msid:{stream} slot-{mid}\r\na=ssrc:{ssrc} cname:{cname}\r\na=ssrc:{ssrc} msid:{stream} slot-{mid}\r\n",
                mid = m.mid,
                ssrc = ssrc.0,
                cname = params.cname,
            );
        }
        for (i, addr) in params.candidates.iter().enumerate() {
            let _ = write!(
                s,
                "a=candidate:{} 1 udp {} {} {} typ host\r\n",
                i + 1,
                2_130_706_431u32 - i as u32,
                addr.ip(),
                addr.port()
            );
        }
        s.push_str("a=end-of-candidates\r\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CHROME_LIKE_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:0123456789abcdefghijklmn\r\n\
a=fingerprint:sha-256 00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1A:1B:1C:1D:1E:1F\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=ssrc:12345 cname:x\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=mid:1\r\n\
a=setup:actpass\r\n\
a=rtcp-mux\r\n\
a=recvonly\r\n\
a=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn parses_a_browser_offer() {
        let offer = Offer::parse(CHROME_LIKE_OFFER).unwrap();
        assert_eq!(offer.ice_ufrag, "abcd");
        assert_eq!(offer.fingerprint[31], 0x1f);
        assert_eq!(offer.bundle, vec!["0", "1"]);
        let a0 = offer.media[0].audio.as_ref().unwrap();
        assert_eq!(a0.opus_pt, 111);
        assert_eq!(a0.audio_level_ext, Some(1));
        assert_eq!(a0.direction, Direction::SendRecv);
        assert_eq!(a0.ssrc, Some(Ssrc(12345)));
        let a1 = offer.media[1].audio.as_ref().unwrap();
        assert_eq!(a1.direction, Direction::RecvOnly);
        assert_eq!(a1.audio_level_ext, None);
    }

    #[test]
    fn answer_names_what_we_send_and_our_credentials() {
        let offer = Offer::parse(CHROME_LIKE_OFFER).unwrap();
        let fp = [0xabu8; 32];
        let cands = ["127.0.0.1:4000".parse().unwrap()];
        let answer = build_answer(
            &offer,
            &AnswerParams {
                ice_ufrag: "srvu",
                ice_pwd: "serverpasswordserverpass",
                fingerprint: &fp,
                candidates: &cands,
                cname: "sfu",
                session_id: 7,
            },
            &[MediaAnswer::SendReceive(Ssrc(99)), MediaAnswer::Send(Ssrc(100))],
        );
        assert!(answer.contains("a=ice-lite"));
        assert!(answer.contains("a=group:BUNDLE 0 1"));
        assert!(answer.contains("a=setup:passive"));
        assert!(answer.contains("a=ssrc:99 cname:sfu"));
        assert!(answer.contains("a=ssrc:100 cname:sfu"));
        assert!(answer.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host"));
        assert!(answer.contains("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
        // Our answer must itself be parseable SDP.
        SessionDescription::unmarshal(&mut Cursor::new(answer.as_bytes())).unwrap();
    }

    #[test]
    fn rejects_what_it_cannot_serve_with_a_reason() {
        let no_opus = CHROME_LIKE_OFFER.replace("opus/48000/2", "G722/8000");
        assert_eq!(Offer::parse(&no_opus), Err(SdpError::NoOpus));
        let no_fp: String =
            CHROME_LIKE_OFFER.lines().filter(|l| !l.starts_with("a=fingerprint")).map(|l| format!("{l}\r\n")).collect();
        assert_eq!(Offer::parse(&no_fp), Err(SdpError::NoFingerprint));
        let no_mux = CHROME_LIKE_OFFER.replace("a=rtcp-mux\r\n", "");
        assert_eq!(Offer::parse(&no_mux), Err(SdpError::NoRtcpMux));
        let no_ice = CHROME_LIKE_OFFER.replace("a=ice-pwd:0123456789abcdefghijklmn\r\n", "");
        assert_eq!(Offer::parse(&no_ice), Err(SdpError::NoIceCredentials));
        let sha1 = CHROME_LIKE_OFFER.replace("sha-256", "sha-1");
        assert!(matches!(Offer::parse(&sha1), Err(SdpError::BadFingerprint(_))));
        let passive = CHROME_LIKE_OFFER.replace("a=setup:actpass", "a=setup:passive");
        assert_eq!(Offer::parse(&passive), Err(SdpError::BadSetup));
        let video_only = CHROME_LIKE_OFFER.replace("m=audio", "m=video");
        assert_eq!(Offer::parse(&video_only), Err(SdpError::NoAudio));
        assert!(matches!(Offer::parse("hello"), Err(SdpError::Unparseable(_))));
        assert_eq!(Offer::parse(&"a".repeat(MAX_OFFER_LEN + 1)), Err(SdpError::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,400}") {
            let _ = Offer::parse(&s);
        }

        #[test]
        fn never_panics_on_mutated_offers(cut in 0usize..900, junk in "[ -~]{0,20}") {
            let mut s = CHROME_LIKE_OFFER.to_owned();
            let cut = cut.min(s.len());
            s.insert_str(cut, &junk);
            let _ = Offer::parse(&s);
            let _ = Offer::parse(&CHROME_LIKE_OFFER[..cut]);
        }
    }
}

/// Client side: what an offer asks for.
pub struct OfferParams<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    pub fingerprint: &'a [u8; 32],
    /// Our sending SSRC on the first section, if we publish.
    pub send_ssrc: Option<Ssrc>,
    /// Sections we receive on (after the sending one, if any).
    pub receive_sections: usize,
}

pub const OFFER_OPUS_PT: u8 = 111;
pub const OFFER_AUDIO_LEVEL_EXT: u8 = 1;

/// Client side: a bundled, audio-only offer as a WebRTC client would make it.
pub fn build_offer(p: &OfferParams<'_>) -> String {
    let sections = usize::from(p.send_ssrc.is_some()) + p.receive_sections;
    let mids: Vec<String> = (0..sections).map(|i| i.to_string()).collect();
    let mut s = format!(
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n",
        rand::random::<u64>() >> 1,
        mids.join(" ")
    );
    let fingerprint = format_fingerprint(p.fingerprint);
    for (i, mid) in mids.iter().enumerate() {
        let sending = i == 0 && p.send_ssrc.is_some();
        let _ = write!(
            s,
            "m=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n\
             a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=rtcp-mux\r\na={}\r\n\
             a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} minptime=10;useinbandfec=1\r\na=extmap:{ext} {AUDIO_LEVEL_URI}\r\n",
            p.ice_ufrag,
            p.ice_pwd,
            if sending { "sendonly" } else { "recvonly" },
            pt = OFFER_OPUS_PT,
            ext = OFFER_AUDIO_LEVEL_EXT,
        );
        if let (true, Some(ssrc)) = (sending, p.send_ssrc) {
            let _ = write!(s, "a=ssrc:{} cname:loadtest\r\n", ssrc.0);
        }
    }
    s
}

/// Client side: what we need from the server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    pub fingerprint: [u8; 32],
    pub candidates: Vec<SocketAddr>,
    /// The server's sending SSRC per section it sends on, in section order.
    pub slot_ssrcs: Vec<Ssrc>,
}

impl Answer {
    pub fn parse(text: &str) -> Result<Answer, SdpError> {
        let session = unmarshal_bounded(text)?;
        let first =
            session.media_descriptions.iter().find(|m| m.media_name.port.value != 0).ok_or(SdpError::NoAudio)?;
        let (ice_ufrag, ice_pwd) = ice_credentials(first, &session).ok_or(SdpError::NoIceCredentials)?;
        let fingerprint = dtls_fingerprint(first, &session)?;
        let mut candidates = Vec::new();
        let mut slot_ssrcs = Vec::new();
        for m in session.media_descriptions.iter().filter(|m| m.media_name.port.value != 0) {
            for c in attribute_values(m, "candidate") {
                let f: Vec<&str> = c.split_whitespace().collect();
                if f.len() >= 8 && f[2].eq_ignore_ascii_case("udp") && f[7] == "host" {
                    if let (Ok(ip), Ok(port)) = (f[4].parse::<std::net::IpAddr>(), f[5].parse::<u16>()) {
                        let addr = SocketAddr::new(ip, port);
                        if !candidates.contains(&addr) {
                            candidates.push(addr);
                        }
                    }
                }
            }
            if let Some(ssrc) =
                attribute_values(m, "ssrc").filter_map(|v| v.split_whitespace().next()?.parse().ok()).next()
            {
                slot_ssrcs.push(Ssrc(ssrc));
            }
        }
        Ok(Answer { ice_ufrag, ice_pwd, fingerprint, candidates, slot_ssrcs })
    }
}

#[cfg(test)]
mod client_tests {
    use super::*;

    #[test]
    fn our_offer_is_accepted_and_our_answer_understood() {
        let fp = [7u8; 32];
        let text = build_offer(&OfferParams {
            ice_ufrag: "cliufrag",
            ice_pwd: "clientpasswordclientpass",
            fingerprint: &fp,
            send_ssrc: Some(Ssrc(42)),
            receive_sections: 2,
        });
        let offer = Offer::parse(&text).unwrap();
        assert_eq!(offer.media.len(), 3);
        assert_eq!(offer.media[0].audio.as_ref().unwrap().direction, Direction::SendOnly);
        assert_eq!(offer.media[0].audio.as_ref().unwrap().ssrc, Some(Ssrc(42)));
        assert_eq!(offer.media[2].audio.as_ref().unwrap().direction, Direction::RecvOnly);
        let cands = ["127.0.0.1:4000".parse().unwrap()];
        let answer = build_answer(
            &offer,
            &AnswerParams {
                ice_ufrag: "srvu",
                ice_pwd: "serverpasswordserverpass",
                fingerprint: &[9; 32],
                candidates: &cands,
                cname: "sfu",
                session_id: 1,
            },
            &[MediaAnswer::Receive, MediaAnswer::Send(Ssrc(5)), MediaAnswer::Send(Ssrc(6))],
        );
        let a = Answer::parse(&answer).unwrap();
        assert_eq!((a.ice_ufrag.as_str(), a.ice_pwd.as_str()), ("srvu", "serverpasswordserverpass"));
        assert_eq!(a.fingerprint, [9; 32]);
        assert_eq!(a.candidates, cands.to_vec());
        assert_eq!(a.slot_ssrcs, vec![Ssrc(5), Ssrc(6)]);
        assert!(Answer::parse("v=0\r\n").is_err());
    }
}
