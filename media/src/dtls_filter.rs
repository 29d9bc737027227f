//! A bounds-checked look at DTLS records before they reach the DTLS library.
//!
//! The library queues records of later epochs without limit during a handshake and
//! reassembles fragments whose cap counts only data bytes, so zero-length or tiny
//! fragments cost it CPU without ever filling a buffer. We pass only what a DTLS 1.2
//! client can legitimately send a WebRTC server, and tell the caller how many records
//! and handshake fragments a datagram carries so it can keep a budget.

/// Largest handshake message a client sends (a self-signed certificate is ~0.5-1 KiB).
pub const MAX_HANDSHAKE_MESSAGE: usize = 8 * 1024;
/// Largest record of epoch 1 before the handshake finished (an encrypted Finished).
const MAX_EPOCH1_RECORD: usize = 512;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// Why a DTLS datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsReject {
    /// Not a sequence of well-formed records.
    Malformed,
    /// Application data: WebRTC voice carries none over DTLS here.
    ApplicationData,
    /// A record of an epoch a client cannot have reached yet.
    Epoch,
    /// A handshake fragment that is empty, out of its message or oversized.
    Fragment,
    /// A handshake message type a client does not send in plaintext.
    MessageType,
}

impl DtlsReject {
    pub fn as_str(self) -> &'static str {
        match self {
            DtlsReject::Malformed => "malformed",
            DtlsReject::ApplicationData => "application_data",
            DtlsReject::Epoch => "epoch",
            DtlsReject::Fragment => "fragment",
            DtlsReject::MessageType => "message_type",
        }
    }
}

/// What a datagram that passed carries, for the caller's budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DtlsShape {
    pub records: usize,
    pub fragments: usize,
}

/// Checks every record of a datagram from a client. Before the handshake completed,
/// only epoch 0 and an epoch 1 Finished or alert can be legitimate.
pub fn inspect(datagram: &[u8]) -> Result<DtlsShape, DtlsReject> {
    let mut shape = DtlsShape::default();
    let mut rest = datagram;
    if rest.is_empty() {
        return Err(DtlsReject::Malformed);
    }
    while !rest.is_empty() {
        let header = rest.get(..13).ok_or(DtlsReject::Malformed)?;
        let content_type = header[0];
        if header[1] != 0xfe {
            return Err(DtlsReject::Malformed);
        }
        let epoch = u16::from_be_bytes([header[3], header[4]]);
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let body = rest.get(13..13 + len).ok_or(DtlsReject::Malformed)?;
        rest = &rest[13 + len..];
        shape.records += 1;
        match (content_type, epoch) {
            (APPLICATION_DATA, _) => return Err(DtlsReject::ApplicationData),
            (_, 2..) => return Err(DtlsReject::Epoch),
            (CHANGE_CIPHER_SPEC, 0) if body == [1] => {}
            (ALERT, 0) if body.len() == 2 => {}
            (HANDSHAKE, 0) => shape.fragments += check_fragments(body)?,
            // Encrypted: a Finished or an alert, which only the library can read.
            (HANDSHAKE | ALERT, 1) if (1..=MAX_EPOCH1_RECORD).contains(&len) => shape.fragments += 1,
            _ => return Err(DtlsReject::Malformed),
        }
    }
    Ok(shape)
}

/// Plaintext handshake fragments in one record: each non-empty, inside its message,
/// of a type a client sends. Returns how many.
fn check_fragments(mut body: &[u8]) -> Result<usize, DtlsReject> {
    if body.is_empty() {
        return Err(DtlsReject::Fragment);
    }
    let mut n = 0;
    while !body.is_empty() {
        let h = body.get(..12).ok_or(DtlsReject::Malformed)?;
        let msg_type = h[0];
        let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        let (length, offset, frag_len) = (u24(&h[1..4]), u24(&h[6..9]), u24(&h[9..12]));
        // ClientHello, Certificate, CertificateVerify, ClientKeyExchange.
        if !matches!(msg_type, 1 | 11 | 15 | 16) {
            return Err(DtlsReject::MessageType);
        }
        if frag_len == 0 || length > MAX_HANDSHAKE_MESSAGE || offset + frag_len > length {
            return Err(DtlsReject::Fragment);
        }
        body = body.get(12 + frag_len..).ok_or(DtlsReject::Malformed)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn fragment(msg_type: u8, length: usize, offset: usize, data: &[u8]) -> Vec<u8> {
        let u24 = |v: usize| [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        let mut f = vec![msg_type];
        f.extend_from_slice(&u24(length));
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&u24(offset));
        f.extend_from_slice(&u24(data.len()));
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn a_client_flight_passes() {
        let hello = record(HANDSHAKE, 0, &fragment(1, 100, 0, &[7; 100]));
        assert_eq!(inspect(&hello), Ok(DtlsShape { records: 1, fragments: 1 }));
        let mut flight =
            record(HANDSHAKE, 0, &[fragment(11, 300, 0, &[1; 300]), fragment(16, 65, 0, &[2; 65])].concat());
        flight.extend(record(CHANGE_CIPHER_SPEC, 0, &[1]));
        flight.extend(record(HANDSHAKE, 1, &[9; 48]));
        assert_eq!(inspect(&flight), Ok(DtlsShape { records: 3, fragments: 3 }));
        assert!(inspect(&record(ALERT, 1, &[3; 26])).is_ok());
    }

    #[test]
    fn what_a_client_cannot_send_is_refused() {
        assert_eq!(inspect(&record(APPLICATION_DATA, 1, &[0; 40])), Err(DtlsReject::ApplicationData));
        assert_eq!(inspect(&record(HANDSHAKE, 2, &[0; 40])), Err(DtlsReject::Epoch));
        assert_eq!(inspect(&record(HANDSHAKE, 0x7fff, &[0; 40])), Err(DtlsReject::Epoch));
        assert_eq!(inspect(&record(HANDSHAKE, 1, &[0; 2000])), Err(DtlsReject::Malformed));
        // Empty, out-of-range and oversized fragments; server-only message types.
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(1, 100, 0, &[]))), Err(DtlsReject::Fragment));
        assert_eq!(inspect(&record(HANDSHAKE, 0, &[])), Err(DtlsReject::Fragment));
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(1, 100, 99, &[1, 2]))), Err(DtlsReject::Fragment));
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(11, 1 << 20, 0, &[1]))), Err(DtlsReject::Fragment));
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(2, 10, 0, &[1; 10]))), Err(DtlsReject::MessageType));
        // Records that overrun the datagram, bad versions, junk after a record.
        let mut cut = record(HANDSHAKE, 0, &fragment(1, 100, 0, &[7; 100]));
        cut.truncate(50);
        assert_eq!(inspect(&cut), Err(DtlsReject::Malformed));
        let mut v = record(ALERT, 0, &[1, 0]);
        v[1] = 3;
        assert_eq!(inspect(&v), Err(DtlsReject::Malformed));
        let mut junk = record(ALERT, 0, &[1, 0]);
        junk.push(22);
        assert_eq!(inspect(&junk), Err(DtlsReject::Malformed));
        assert_eq!(inspect(&record(CHANGE_CIPHER_SPEC, 0, &[1, 1])), Err(DtlsReject::Malformed));
        // Many tiny fragments in one record are counted, each.
        let tiny: Vec<u8> = (0..50).flat_map(|i| fragment(1, 100, i, &[0])).collect();
        assert_eq!(inspect(&record(HANDSHAKE, 0, &tiny)), Ok(DtlsShape { records: 1, fragments: 50 }));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = inspect(&bytes);
        }
    }
}
