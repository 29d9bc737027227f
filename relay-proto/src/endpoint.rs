//! quinn endpoints for both ends: TLS 1.3 with ring, our ALPN, transport settings that
//! ride out a loss burst of a couple of seconds, and stateless resets keyed by the cluster
//! secret so that a core restarted on the same address ends its old links at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Sha256;

pub const ALPN: &[u8] = b"sfu-relay/1";
/// Keep-alives every 250 ms and a 3 s idle timeout: a link survives a loss burst of a
/// couple of seconds (the edge serves its own speakers meanwhile, seeing the core's
/// heartbeats stop), and a dead peer is seen within 3 s, about when its leases expire.
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(3000);
/// Datagrams queued for sending per connection before the oldest are dropped.
pub const DATAGRAM_SEND_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("quic: {0}")]
    Quic(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The core's certificate chain and key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity { certs: self.certs.clone(), key: self.key.clone_key() }
    }
}

impl TlsIdentity {
    /// A self-signed certificate for local runs; edges authenticate the core by its
    /// cluster-secret proof instead.
    pub fn self_signed(names: Vec<String>) -> Result<Self, EndpointError> {
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| EndpointError::Certificate(e.to_string()))?;
        Ok(TlsIdentity {
            certs: vec![ck.cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()).into(),
        })
    }

    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, EndpointError> {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| EndpointError::Certificate(format!("{}: {e}", cert.display())))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| EndpointError::Certificate(format!("{}: {e}", key.display())))?;
        Ok(TlsIdentity { certs, key })
    }
}

/// The congestion window below which loss never throttles a link: what speakers say is
/// sent at the rate they say it (a link's media is a few hundred kbit/s per channel), so
/// random loss on a long path does not turn into queueing delay and dropped audio. Above
/// it (bulk control traffic), Cubic decides as usual.
pub const MEDIA_WINDOW_FLOOR: u64 = 512 * 1024;

struct FloorController {
    inner: Box<dyn quinn::congestion::Controller>,
}

impl quinn::congestion::Controller for FloorController {
    fn on_sent(&mut self, now: std::time::Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(&mut self, now: std::time::Instant, in_flight: u64, app_limited: bool, largest: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest)
    }

    fn on_congestion_event(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        self.inner.window().max(MEDIA_WINDOW_FLOOR)
    }

    fn clone_box(&self) -> Box<dyn quinn::congestion::Controller> {
        Box::new(FloorController { inner: self.inner.clone_box() })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(MEDIA_WINDOW_FLOOR)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

struct FloorFactory(Arc<quinn::congestion::CubicConfig>);

impl quinn::congestion::ControllerFactory for FloorFactory {
    fn build(self: Arc<Self>, now: std::time::Instant, current_mtu: u16) -> Box<dyn quinn::congestion::Controller> {
        Box::new(FloorController { inner: self.0.clone().build(now, current_mtu) })
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    transport_with_floor(true)
}

/// Our transport settings; without the window floor only in tests (a link whose
/// congestion controller holds media back).
pub(crate) fn transport_with_floor(floor: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if floor {
        t.congestion_controller_factory(Arc::new(FloorFactory(Arc::new(quinn::congestion::CubicConfig::default()))));
    }
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("3 s is a valid idle timeout")));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    t.datagram_receive_buffer_size(Some(1024 * 1024));
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(1u32.into());
    Arc::new(t)
}

/// The key for stateless resets, derived from the cluster secret: every incarnation of a
/// core signs the same reset tokens, so one that restarts answers its predecessor's edges
/// with a reset they accept and they reconnect at once instead of waiting out the idle
/// timeout. The tokens reveal nothing of the secret (HMAC over a derived key).
#[derive(Clone)]
pub struct ResetKey([u8; 32]);

impl ResetKey {
    pub fn from_cluster_secret(secret: &[u8]) -> Self {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
        m.update(b"sfu-relay stateless reset key");
        ResetKey(m.finalize().into_bytes().into())
    }

    fn derived(&self, label: &[u8]) -> ResetKey {
        ResetKey(self.mac(label).finalize().into_bytes().into())
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(data);
        m
    }
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(<redacted>)")
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&self.mac(data).finalize().into_bytes());
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        self.mac(data).verify_slice(signature).map_err(|_| quinn::crypto::CryptoError)
    }
}

/// A server endpoint for the core.
pub fn server(addr: SocketAddr, identity: TlsIdentity, reset: ResetKey) -> Result<quinn::Endpoint, EndpointError> {
    server_on(std::net::UdpSocket::bind(addr)?, identity, reset)
}

/// A server endpoint for the core on a socket bound already.
pub fn server_on(
    socket: std::net::UdpSocket,
    identity: TlsIdentity,
    reset: ResetKey,
) -> Result<quinn::Endpoint, EndpointError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    let runtime = quinn::default_runtime().ok_or_else(|| EndpointError::Quic("no async runtime".into()))?;
    // Connection ids are checked against a keyed hash before a reset is considered, so
    // every incarnation needs the same key for those too.
    let cid_key = u64::from_le_bytes(reset.0[..8].try_into().expect("8 bytes"));
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset.derived(b"reset tokens")));
    endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime)?)
}

/// How an edge checks the core's certificate.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Verify against these roots (certificates from config).
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate: the core is authenticated by its cluster-secret proof.
    ClusterSecretOnly,
}

/// A client endpoint for an edge.
pub fn client(bind: SocketAddr, trust: Trust) -> Result<quinn::Endpoint, EndpointError> {
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config(trust, true)?);
    Ok(endpoint)
}

pub(crate) fn client_config(trust: Trust, floor: bool) -> Result<quinn::ClientConfig, EndpointError> {
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        Trust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots.add(c)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::ClusterSecretOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_with_floor(floor));
    Ok(config)
}

/// Accepts any certificate but still checks the handshake signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Writes framed control messages to a QUIC stream.
pub async fn send_message(
    stream: &mut quinn::SendStream,
    message: &crate::control::Message,
) -> Result<(), quinn::WriteError> {
    let mut buf = bytes::BytesMut::new();
    message.encode(&mut buf);
    stream.write_all(&buf).await
}

/// Reads the next control message; `Ok(None)` when the stream finished cleanly.
pub async fn read_message(
    stream: &mut quinn::RecvStream,
    reader: &mut crate::control::FrameReader,
) -> Result<Option<crate::control::Message>, ReadError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = reader.next_message()? {
            return Ok(Some(m));
        }
        match stream.read(&mut buf).await? {
            Some(n) => reader.push(&buf[..n]),
            None => return Ok(None),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("malformed control message: {0}")]
    Decode(#[from] crate::control::DecodeError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::{self, Side};
    use crate::control::{FrameReader, Message};

    #[tokio::test]
    async fn edge_and_core_talk_over_real_quic_with_bound_proofs() {
        let core = server(
            "127.0.0.1:0".parse().unwrap(),
            TlsIdentity::self_signed(vec!["core".into()]).unwrap(),
            ResetKey::from_cluster_secret(b"secret"),
        )
        .unwrap();
        let core_addr = core.local_addr().unwrap();
        let edge = client("127.0.0.1:0".parse().unwrap(), Trust::ClusterSecretOnly).unwrap();
        let server_task = tokio::spawn(async move {
            let conn = core.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut reader = FrameReader::default();
            let hello = read_message(&mut recv, &mut reader).await.unwrap().unwrap();
            let binding = auth::session_binding(&conn).unwrap();
            let Message::Hello { edge_id, proof, .. } = hello else { panic!("expected hello") };
            assert!(auth::verify(b"secret", Side::Edge, &binding, &edge_id, &proof));
            let reply = Message::Welcome {
                core_id: "c".into(),
                slots: 3,
                edge_number: 1,
                proof: auth::proof(b"secret", Side::Core, &binding, "c"),
            };
            send_message(&mut send, &reply).await.unwrap();
            let d = conn.read_datagram().await.unwrap();
            assert_eq!(&d[..], b"media");
            conn.closed().await;
        });
        let conn = edge.connect(core_addr, "core").unwrap().await.unwrap();
        let binding = auth::session_binding(&conn).unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello {
            version: crate::PROTOCOL_VERSION,
            edge_id: "e1".into(),
            signalling_url: "http://e1".into(),
            capacity: 25,
            proof: auth::proof(b"secret", Side::Edge, &binding, "e1"),
            region: "local".into(),
            max_sessions: 5000,
        };
        send_message(&mut send, &hello).await.unwrap();
        let Some(Message::Welcome { core_id, proof, .. }) =
            read_message(&mut recv, &mut FrameReader::default()).await.unwrap()
        else {
            panic!("expected welcome")
        };
        assert!(auth::verify(b"secret", Side::Core, &binding, &core_id, &proof));
        conn.send_datagram(bytes::Bytes::from_static(b"media")).unwrap();
        // Closing lets the core's `closed()` resolve.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(0u32.into(), b"done");
        server_task.await.unwrap();
    }

    /// Forwards between one client and whichever server `target` names (nothing while it
    /// names none), the way an address looks to an edge when the core behind it restarts
    /// or the path fails.
    pub(crate) async fn forwarder(target: tokio::sync::watch::Receiver<Option<SocketAddr>>) -> SocketAddr {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        client = Some(from);
                        let to = *target.borrow();
                        if let Some(to) = to {
                            let _ = back.send_to(&a[..n], to).await;
                        }
                    }
                    Ok((n, from)) = back.recv_from(&mut b) => {
                        let current = *target.borrow();
                        if let (Some(c), true) = (client, Some(from) == current) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_restarted_core_resets_its_predecessors_links_at_once() {
        let identity = TlsIdentity::self_signed(vec!["core".into()]).unwrap();
        let secret = b"a cluster secret of at least 32 bytes";
        let first =
            server("127.0.0.1:0".parse().unwrap(), identity.clone(), ResetKey::from_cluster_secret(secret)).unwrap();
        let (target, rx) = tokio::sync::watch::channel(Some(first.local_addr().unwrap()));
        let front = forwarder(rx).await;
        let accept = tokio::spawn(async move {
            let conn = first.accept().await.unwrap().await.unwrap();
            (first, conn)
        });
        let edge = client("127.0.0.1:0".parse().unwrap(), Trust::ClusterSecretOnly).unwrap();
        let conn = edge.connect(front, "core").unwrap().await.unwrap();
        let (_first, _old) = accept.await.unwrap();

        // The old core goes silent (nothing it sends reaches the edge any more) and a new
        // one with the same cluster secret answers at the same address.
        let second = server("127.0.0.1:0".parse().unwrap(), identity, ResetKey::from_cluster_secret(secret)).unwrap();
        target.send(Some(second.local_addr().unwrap())).unwrap();
        let _ = conn.send_datagram(bytes::Bytes::from_static(b"media"));
        assert_eq!(conn.closed().await, quinn::ConnectionError::Reset, "the edge waited for its idle timeout");
    }

    #[tokio::test]
    async fn a_core_with_another_secret_cannot_reset_links() {
        let identity = TlsIdentity::self_signed(vec!["core".into()]).unwrap();
        let first = server(
            "127.0.0.1:0".parse().unwrap(),
            identity.clone(),
            ResetKey::from_cluster_secret(b"a cluster secret of at least 32 bytes"),
        )
        .unwrap();
        let (target, rx) = tokio::sync::watch::channel(Some(first.local_addr().unwrap()));
        let front = forwarder(rx).await;
        let accept = tokio::spawn(async move {
            let conn = first.accept().await.unwrap().await.unwrap();
            (first, conn)
        });
        let edge = client("127.0.0.1:0".parse().unwrap(), Trust::ClusterSecretOnly).unwrap();
        let conn = edge.connect(front, "core").unwrap().await.unwrap();
        let (_first, _old) = accept.await.unwrap();
        let stranger = server(
            "127.0.0.1:0".parse().unwrap(),
            identity,
            ResetKey::from_cluster_secret(b"another secret, also at least 32 bytes"),
        )
        .unwrap();
        target.send(Some(stranger.local_addr().unwrap())).unwrap();
        let _ = conn.send_datagram(bytes::Bytes::from_static(b"media"));
        assert_eq!(conn.closed().await, quinn::ConnectionError::TimedOut);
    }
}
