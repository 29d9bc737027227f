//! SRTP and SRTCP unprotect: raw bytes against unknown keys, and arbitrary plaintext
//! protected with the session's keys, so what comes out of authentication (the RTP
//! header view, the RTCP parser) is fuzzed too. Decryption must give back the plaintext.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use media::rtcp_report::parse_feedback;
use media::rtp_header::RtpView;
use media::srtp::{ProtectionProfile, SrtpError, SrtpSession};
use sfu_fuzz::keys;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw { gcm: bool, rtcp: bool, packets: Vec<Vec<u8>> },
    Keyed { gcm: bool, packets: Vec<(bool, Vec<u8>)> },
}

/// First byte 0-3: the rest is one packet (bit 0: RTCP, bit 1: AEAD), raw against the
/// session's keys (seeds: captured SRTP and SRTCP) and also protected as plaintext
/// (seeds: real RTP headers, RTCP compounds); otherwise the rest describes an `Input`.
fn input(data: &[u8]) -> Option<Input> {
    let (&mode, rest) = data.split_first()?;
    if mode < 4 {
        let (rtcp, gcm) = (mode & 1 == 1, mode & 2 == 2);
        return Some(Input::Keyed { gcm, packets: vec![(rtcp, rest.to_vec())] });
    }
    Input::arbitrary(&mut Unstructured::new(rest)).ok()
}

fn sessions(gcm: bool) -> (SrtpSession, SrtpSession) {
    let p = if gcm { ProtectionProfile::AeadAes128Gcm } else { ProtectionProfile::Aes128CmHmacSha1_80 };
    (SrtpSession::new(&keys(p, true)).unwrap(), SrtpSession::new(&keys(p, false)).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else { return };
    let mut out = Vec::new();
    if let Some((&mode, rest)) = data.split_first().filter(|(m, _)| **m < 4) {
        let (_, mut server) = sessions(mode & 2 == 2);
        let _ = if mode & 1 == 1 { server.unprotect_rtcp_into(rest, &mut out) } else { server.unprotect_rtp_into(rest, &mut out) };
    }
    match input {
        Input::Raw { gcm, rtcp, packets } => {
            let (_, mut server) = sessions(gcm);
            for p in packets {
                if rtcp {
                    let _ = server.unprotect_rtcp_into(&p, &mut out);
                } else {
                    let _ = server.unprotect_rtp_into(&p, &mut out);
                }
            }
        }
        Input::Keyed { gcm, packets } => {
            let (mut client, mut server) = sessions(gcm);
            for (rtcp, plain) in packets {
                let mut buf = plain.clone();
                if rtcp {
                    if client.protect_rtcp_in_place(&mut buf).is_ok() {
                        // Only the cap on a session's SSRCs may refuse our own SRTCP.
                        match server.unprotect_rtcp_into(&buf, &mut out) {
                            Ok(()) => {
                                assert_eq!(out, plain);
                                let _ = parse_feedback(&out);
                            }
                            Err(e) => assert_eq!(e, SrtpError::TooManySsrcs),
                        }
                    }
                } else if client.protect_rtp_in_place(&mut buf).is_ok() {
                    // A replayed sequence number is refused; anything else decrypts.
                    if server.unprotect_rtp_into(&buf, &mut out).is_ok() {
                        assert_eq!(out, plain);
                        if let Ok(v) = RtpView::parse(&out) {
                            let _ = (v.audio_level(1), v.csrcs().count(), v.payload().len());
                        }
                    }
                }
            }
        }
    }
});
