//! ICE-lite: answer STUN binding requests that carry the session's credentials.
//! Client side helpers build checks for the load tester and tests.

use std::net::SocketAddr;

use stun::agent::TransactionId;
use stun::attributes::{ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_USERNAME, ATTR_USE_CANDIDATE};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IceError {
    #[error("not a STUN message")]
    NotStun,
    #[error("not a binding request")]
    NotBindingRequest,
    #[error("binding request has no USERNAME")]
    NoUsername,
    #[error("USERNAME is not local:remote")]
    BadUsername,
    #[error("MESSAGE-INTEGRITY missing or wrong")]
    BadIntegrity,
    #[error("FINGERPRINT wrong")]
    BadFingerprint,
    #[error("could not build STUN message: {0}")]
    Build(String),
}

/// A parsed binding request whose credentials are not checked yet.
pub struct BindingRequest {
    msg: Message,
    /// Our ufrag, the part before the colon; used to find the session.
    pub local_ufrag: String,
    pub remote_ufrag: String,
    pub use_candidate: bool,
}

impl BindingRequest {
    pub fn parse(buf: &[u8]) -> Result<Self, IceError> {
        if !stun::message::is_message(buf) {
            return Err(IceError::NotStun);
        }
        let mut msg = Message::new();
        msg.unmarshal_binary(buf).map_err(|_| IceError::NotStun)?;
        if msg.typ != BINDING_REQUEST {
            return Err(IceError::NotBindingRequest);
        }
        let username = TextAttribute::get_from_as(&msg, ATTR_USERNAME).map_err(|_| IceError::NoUsername)?;
        let (local, remote) = username.text.split_once(':').ok_or(IceError::BadUsername)?;
        let (local_ufrag, remote_ufrag) = (local.to_owned(), remote.to_owned());
        let use_candidate = msg.contains(ATTR_USE_CANDIDATE);
        Ok(BindingRequest { msg, local_ufrag, remote_ufrag, use_candidate })
    }

    /// Checks integrity with our password and the fingerprint, and builds the
    /// success response naming the address the request came from.
    pub fn respond(mut self, local_pwd: &str, from: SocketAddr) -> Result<Vec<u8>, IceError> {
        MessageIntegrity::new_short_term_integrity(local_pwd.to_owned())
            .check(&mut self.msg)
            .map_err(|_| IceError::BadIntegrity)?;
        if self.msg.contains(stun::attributes::ATTR_FINGERPRINT) {
            FINGERPRINT.check(&self.msg).map_err(|_| IceError::BadFingerprint)?;
        }
        let mut out = Message::new();
        let setters: [Box<dyn Setter>; 5] = [
            Box::new(BINDING_SUCCESS),
            Box::new(TransactionId(self.msg.transaction_id.0)),
            Box::new(XorMappedAddress { ip: from.ip(), port: from.port() }),
            Box::new(MessageIntegrity::new_short_term_integrity(local_pwd.to_owned())),
            Box::new(FINGERPRINT),
        ];
        out.build(&setters).map_err(|e| IceError::Build(e.to_string()))?;
        Ok(out.raw)
    }
}

/// Client side: a binding request from `client_ufrag` to a server with `server_ufrag`/`server_pwd`.
pub fn binding_request(
    server_ufrag: &str,
    client_ufrag: &str,
    server_pwd: &str,
) -> Result<(Vec<u8>, [u8; 12]), IceError> {
    binding_request_as(server_ufrag, client_ufrag, server_pwd, true)
}

/// A binding request as the controlling agent (nominating the pair) or the controlled one.
pub fn binding_request_as(
    server_ufrag: &str,
    client_ufrag: &str,
    server_pwd: &str,
    controlling: bool,
) -> Result<(Vec<u8>, [u8; 12]), IceError> {
    let mut msg = Message::new();
    let tie_breaker = rand::random::<u64>().to_be_bytes();
    let role: Box<dyn Setter> = if controlling {
        Box::new(RawAttr(ATTR_ICE_CONTROLLING, tie_breaker.to_vec()))
    } else {
        Box::new(RawAttr(ATTR_ICE_CONTROLLED, tie_breaker.to_vec()))
    };
    let nominate: Box<dyn Setter> =
        if controlling { Box::new(RawAttr(ATTR_USE_CANDIDATE, Vec::new())) } else { Box::new(NoAttr) };
    let setters: [Box<dyn Setter>; 7] = [
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, format!("{server_ufrag}:{client_ufrag}"))),
        role,
        nominate,
        Box::new(MessageIntegrity::new_short_term_integrity(server_pwd.to_owned())),
        Box::new(FINGERPRINT),
    ];
    msg.build(&setters).map_err(|e| IceError::Build(e.to_string()))?;
    Ok((msg.raw, msg.transaction_id.0))
}

/// Client side: checks a binding success response and returns the mapped address.
pub fn parse_binding_success(buf: &[u8], transaction: &[u8; 12], server_pwd: &str) -> Result<SocketAddr, IceError> {
    let mut msg = Message::new();
    msg.unmarshal_binary(buf).map_err(|_| IceError::NotStun)?;
    if msg.typ != BINDING_SUCCESS || &msg.transaction_id.0 != transaction {
        return Err(IceError::NotBindingRequest);
    }
    MessageIntegrity::new_short_term_integrity(server_pwd.to_owned())
        .check(&mut msg)
        .map_err(|_| IceError::BadIntegrity)?;
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&msg).map_err(|_| IceError::NotStun)?;
    Ok(SocketAddr::new(mapped.ip, mapped.port))
}

struct NoAttr;

impl Setter for NoAttr {
    fn add_to(&self, _: &mut Message) -> Result<(), stun::Error> {
        Ok(())
    }
}

struct RawAttr(stun::attributes::AttrType, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

/// Random ICE credentials: (ufrag of 8, pwd of 24) alphanumeric characters.
pub fn random_credentials() -> (String, String) {
    use rand::distr::{Alphanumeric, SampleString};
    let mut rng = rand::rng();
    (Alphanumeric.sample_string(&mut rng, 8), Alphanumeric.sample_string(&mut rng, 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PWD: &str = "serverpasswordserverpass";

    #[test]
    fn answers_a_valid_check_with_the_mapped_address() {
        let (req, tid) = binding_request("srv1", "cli1", PWD).unwrap();
        let parsed = BindingRequest::parse(&req).unwrap();
        assert_eq!(parsed.local_ufrag, "srv1");
        assert_eq!(parsed.remote_ufrag, "cli1");
        assert!(parsed.use_candidate);
        let from: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let resp = parsed.respond(PWD, from).unwrap();
        assert_eq!(parse_binding_success(&resp, &tid, PWD).unwrap(), from);
    }

    #[test]
    fn wrong_password_is_refused() {
        let (req, _) = binding_request("srv1", "cli1", "wrongpasswordwrongpassw").unwrap();
        let parsed = BindingRequest::parse(&req).unwrap();
        assert_eq!(parsed.respond(PWD, "127.0.0.1:1".parse().unwrap()).err(), Some(IceError::BadIntegrity));
    }

    #[test]
    fn hostile_bytes_are_errors() {
        assert_eq!(BindingRequest::parse(&[]).err(), Some(IceError::NotStun));
        assert_eq!(BindingRequest::parse(&[0, 1, 0, 0]).err(), Some(IceError::NotStun));
        let (mut req, _) = binding_request("srv1", "cli1", PWD).unwrap();
        // Corrupt the fingerprint: integrity is checked first, so flip the last byte
        // and expect either integrity or fingerprint failure, never success.
        let n = req.len();
        req[n - 1] ^= 0xff;
        let parsed = BindingRequest::parse(&req).unwrap();
        assert!(parsed.respond(PWD, "127.0.0.1:1".parse().unwrap()).is_err());
        // Truncations never panic.
        let (req, _) = binding_request("srv1", "cli1", PWD).unwrap();
        for cut in 0..req.len() {
            if let Ok(p) = BindingRequest::parse(&req[..cut]) {
                assert!(p.respond(PWD, "127.0.0.1:1".parse().unwrap()).is_err());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(p) = BindingRequest::parse(&bytes) {
                let _ = p.respond(PWD, "127.0.0.1:1".parse().unwrap());
            }
        }
    }
}
