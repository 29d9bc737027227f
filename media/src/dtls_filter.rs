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
    /// A ClientHello that is fragmented or whose fields overrun it.
    ClientHello,
}

impl DtlsReject {
    pub fn as_str(self) -> &'static str {
        match self {
            DtlsReject::Malformed => "malformed",
            DtlsReject::ApplicationData => "application_data",
            DtlsReject::Epoch => "epoch",
            DtlsReject::Fragment => "fragment",
            DtlsReject::MessageType => "message_type",
            DtlsReject::ClientHello => "client_hello",
        }
    }
}

/// What a datagram that passed carries, for the caller's budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DtlsShape {
    pub records: usize,
    pub fragments: usize,
    /// It carries part of a ClientHello: hold it until [`HelloAssembly`] has the whole
    /// message checked.
    pub partial_hello: bool,
}

/// One plaintext handshake fragment.
#[derive(Clone, Copy, Debug)]
pub struct Fragment<'a> {
    pub msg_type: u8,
    pub seq: u16,
    pub length: usize,
    pub offset: usize,
    pub data: &'a [u8],
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
            (HANDSHAKE, 0) => {
                if body.is_empty() {
                    return Err(DtlsReject::Fragment);
                }
                for f in fragments(body) {
                    let f = f?;
                    check_fragment(&f)?;
                    shape.fragments += 1;
                    shape.partial_hello |= f.msg_type == CLIENT_HELLO && f.data.len() != f.length;
                }
            }
            // Encrypted: a Finished or an alert, which only the library can read.
            (HANDSHAKE | ALERT, 1) if (1..=MAX_EPOCH1_RECORD).contains(&len) => shape.fragments += 1,
            _ => return Err(DtlsReject::Malformed),
        }
    }
    Ok(shape)
}

const CLIENT_HELLO: u8 = 1;

/// The plaintext handshake fragments of one record body, in order.
fn fragments(mut body: &[u8]) -> impl Iterator<Item = Result<Fragment<'_>, DtlsReject>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        let Some(h) = body.get(..12) else {
            body = &[];
            return Some(Err(DtlsReject::Malformed));
        };
        let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        let (length, offset, frag_len) = (u24(&h[1..4]), u24(&h[6..9]), u24(&h[9..12]));
        let Some(data) = body.get(12..12 + frag_len) else {
            body = &[];
            return Some(Err(DtlsReject::Malformed));
        };
        let f = Fragment { msg_type: h[0], seq: u16::from_be_bytes([h[4], h[5]]), length, offset, data };
        body = &body[12 + frag_len..];
        Some(Ok(f))
    })
}

/// A fragment a client may send: non-empty, inside its message, of a client's type; a
/// whole ClientHello must read in bounds.
fn check_fragment(f: &Fragment<'_>) -> Result<(), DtlsReject> {
    // ClientHello, Certificate, CertificateVerify, ClientKeyExchange.
    if !matches!(f.msg_type, CLIENT_HELLO | 11 | 15 | 16) {
        return Err(DtlsReject::MessageType);
    }
    if f.data.is_empty() || f.length > MAX_HANDSHAKE_MESSAGE || f.offset + f.data.len() > f.length {
        return Err(DtlsReject::Fragment);
    }
    if f.msg_type == CLIENT_HELLO && f.data.len() == f.length && !client_hello_fits(f.data) {
        return Err(DtlsReject::ClientHello);
    }
    Ok(())
}

/// The ClientHello fragments of a datagram that passed [`inspect`].
pub fn hello_fragments(datagram: &[u8]) -> Vec<Fragment<'_>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while let Some(header) = rest.get(..13) {
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let Some(body) = rest.get(13..13 + len) else { break };
        if header[0] == HANDSHAKE && header[3..5] == [0, 0] {
            out.extend(fragments(body).flatten().filter(|f| f.msg_type == CLIENT_HELLO));
        }
        rest = &rest[13 + len..];
    }
    out
}

/// What to do with a datagram carrying part of a ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloStep {
    /// Keep it: the message is not whole yet.
    Hold,
    /// The message is whole and checked: pass what was held, and this.
    Release,
    /// A fragment of a message already checked (a retransmission): pass it.
    Pass,
    /// The whole message does not read in bounds: drop what was held, and this.
    Reject,
}

/// Reassembles a fragmented ClientHello (Chromium fragments its post-quantum ClientHello
/// over two datagrams) so it is checked whole before the DTLS library reads any of it.
/// Bounded by [`MAX_HANDSHAKE_MESSAGE`].
#[derive(Debug, Default)]
pub struct HelloAssembly {
    seq: u16,
    data: Vec<u8>,
    have: Vec<bool>,
    checked: Option<u16>,
}

impl HelloAssembly {
    pub fn add(&mut self, f: &Fragment<'_>) -> HelloStep {
        if self.checked == Some(f.seq) {
            return HelloStep::Pass;
        }
        if self.data.len() != f.length || self.seq != f.seq {
            self.seq = f.seq;
            self.data = vec![0; f.length];
            self.have = vec![false; f.length];
        }
        let range = f.offset..f.offset + f.data.len();
        let (Some(dst), Some(have)) = (self.data.get_mut(range.clone()), self.have.get_mut(range)) else {
            return HelloStep::Reject;
        };
        dst.copy_from_slice(f.data);
        have.fill(true);
        if !self.have.iter().all(|&h| h) {
            return HelloStep::Hold;
        }
        let fits = client_hello_fits(&self.data);
        *self = HelloAssembly { checked: fits.then_some(self.seq).or(self.checked), ..Default::default() };
        if fits {
            HelloStep::Release
        } else {
            HelloStep::Reject
        }
    }
}

/// Whether a ClientHello body reads in bounds the way the DTLS library reads it: version,
/// random, an empty session id (the library reads no id bytes), cookie, cipher suites,
/// compression methods, and extensions whose headers and data stay inside their block.
fn client_hello_fits(body: &[u8]) -> bool {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let head = b.get(..n)?;
        *b = &b[n..];
        Some(head)
    }
    fn u16_of(x: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([x[0], x[1]]))
    }
    fn fits(mut b: &[u8]) -> Option<()> {
        take(&mut b, 34)?;
        (take(&mut b, 1)? == [0]).then_some(())?;
        let cookie = usize::from(take(&mut b, 1)?[0]);
        take(&mut b, cookie)?;
        let suites = u16_of(take(&mut b, 2)?);
        suites.is_multiple_of(2).then_some(())?;
        take(&mut b, suites)?;
        let methods = usize::from(take(&mut b, 1)?[0]);
        take(&mut b, methods)?;
        let len = u16_of(take(&mut b, 2)?);
        let mut extensions = take(&mut b, len)?;
        while !extensions.is_empty() {
            let header = take(&mut extensions, 4)?;
            take(&mut extensions, u16_of(&header[2..]))?;
        }
        Some(())
    }
    fits(body).is_some()
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

    /// A minimal well-formed ClientHello body: version, random, no session id, no
    /// cookie, one suite, null compression, one extension.
    fn hello_body(extensions: &[u8]) -> Vec<u8> {
        let mut b = vec![0xfe, 0xfd];
        b.extend_from_slice(&[7; 32]);
        b.extend_from_slice(&[0, 0, 0, 2, 0xc0, 0x2b, 1, 0]);
        b.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        b.extend_from_slice(extensions);
        b
    }

    #[test]
    fn a_client_flight_passes() {
        let body = hello_body(&[0, 0x0e, 0, 5, 0, 2, 0, 7, 0]);
        let hello = record(HANDSHAKE, 0, &fragment(1, body.len(), 0, &body));
        assert_eq!(inspect(&hello), Ok(DtlsShape { records: 1, fragments: 1, partial_hello: false }));
        let mut flight =
            record(HANDSHAKE, 0, &[fragment(11, 300, 0, &[1; 300]), fragment(16, 65, 0, &[2; 65])].concat());
        flight.extend(record(CHANGE_CIPHER_SPEC, 0, &[1]));
        flight.extend(record(HANDSHAKE, 1, &[9; 48]));
        assert_eq!(inspect(&flight), Ok(DtlsShape { records: 3, fragments: 3, partial_hello: false }));
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
        let tiny: Vec<u8> = (0..50).flat_map(|i| fragment(11, 100, i, &[0])).collect();
        assert_eq!(
            inspect(&record(HANDSHAKE, 0, &tiny)),
            Ok(DtlsShape { records: 1, fragments: 50, partial_hello: false })
        );
    }

    #[test]
    fn client_hellos_are_checked_whole_before_the_library_reads_them() {
        // Real ClientHellos captured from Chromium and aiortc pass.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dtls_records");
        let mut real = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let d = std::fs::read(entry.unwrap().path()).unwrap();
            if d.len() > 25 && d[0] == HANDSHAKE && d[13] == 1 {
                let shape = inspect(&d).unwrap_or_else(|e| panic!("a real ClientHello was refused ({e:?}): {d:02x?}"));
                // Whole ones were checked here; Chromium's is in two parts, checked when whole.
                let whole = hello_fragments(&d).iter().all(|f| f.data.len() == f.length);
                assert_eq!(shape.partial_hello, !whole);
                real += 1;
            }
        }
        assert!(real >= 10, "{real}");
        // An extension header cut short at the end of its block: webrtc-dtls 0.12 indexes
        // past its buffer on this (found by the dtls_handshake fuzz target).
        let mut cut = hello_body(&[0, 0x0e, 0, 1, 7, 0, 0x17]);
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(1, cut.len(), 0, &cut))), Err(DtlsReject::ClientHello));
        cut = hello_body(&[0, 0x0e, 0, 9, 7]);
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(1, cut.len(), 0, &cut))), Err(DtlsReject::ClientHello));
        // A session id (the library reads none), an odd suite length, a fragmented hello.
        let mut sid = hello_body(&[]);
        sid[34] = 1;
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(1, sid.len(), 0, &sid))), Err(DtlsReject::ClientHello));
        let mut odd = hello_body(&[]);
        odd[37] = 3;
        assert_eq!(inspect(&record(HANDSHAKE, 0, &fragment(1, odd.len(), 0, &odd))), Err(DtlsReject::ClientHello));
    }

    #[test]
    fn a_fragmented_client_hello_is_held_until_it_is_whole_and_checked() {
        let parts = |body: &[u8]| {
            let (a, b) = body.split_at(30);
            [
                record(HANDSHAKE, 0, &fragment(1, body.len(), 0, a)),
                record(HANDSHAKE, 0, &fragment(1, body.len(), 30, b)),
            ]
        };
        let good = hello_body(&[0, 0x0e, 0, 5, 0, 2, 0, 7, 0]);
        let mut assembly = HelloAssembly::default();
        let step = |assembly: &mut HelloAssembly, d: &[u8]| {
            let shape = inspect(d).unwrap();
            assert!(shape.partial_hello);
            hello_fragments(d).iter().map(|f| assembly.add(f)).last().unwrap()
        };
        let [first, second] = parts(&good);
        assert_eq!(step(&mut assembly, &second), HelloStep::Hold, "out of order");
        assert_eq!(step(&mut assembly, &first), HelloStep::Release);
        assert_eq!(step(&mut assembly, &second), HelloStep::Pass, "a retransmission");
        // The panic the fuzzer found, split over two datagrams: refused when whole.
        let cut = hello_body(&[0, 0x0e, 0, 1, 7, 0, 0x17]);
        let mut assembly = HelloAssembly::default();
        let [first, second] = parts(&cut);
        assert_eq!(step(&mut assembly, &first), HelloStep::Hold);
        assert_eq!(step(&mut assembly, &second), HelloStep::Reject);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = inspect(&bytes);
        }
    }
}
