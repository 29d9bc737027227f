//! Join tokens: HS256 JWTs naming participant, channel, role and expiry.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May publish (WHIP), listen (WHEP) and join (both).
    Speaker,
    /// May only listen.
    Listener,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub channel: String,
    pub role: Role,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Longest token accepted; a real one is a few hundred bytes.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        TokenKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map(|d| d.claims).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
        if !valid_participant(&claims.sub) {
            return Err(TokenError::Invalid(format!(
                "sub must be 1-{MAX_PARTICIPANT_LEN} bytes without control characters"
            )));
        }
        if !relay_proto::valid_channel_name(&claims.channel) {
            return Err(TokenError::Invalid("channel is not a valid channel name".into()));
        }
        Ok(claims)
    }
}

/// Longest participant id (`sub`) a token may carry, in bytes.
pub const MAX_PARTICIPANT_LEN: usize = 128;

/// A participant id: 1-128 bytes of UTF-8 without control characters (it is shown to
/// other participants and written to logs).
pub fn valid_participant(sub: &str) -> bool {
    (1..=MAX_PARTICIPANT_LEN).contains(&sub.len()) && !sub.chars().any(char::is_control)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { sub: "alice".into(), channel: "lobby".into(), role: Role::Listener, exp }
    }

    #[test]
    fn signed_tokens_verify_and_forged_or_expired_do_not() {
        let keys = TokenKeys::new(b"a token secret of 32 bytes or more");
        // One reading of the clock: two could fall on either side of a second.
        let exp = unix_now() + 60;
        let t = keys.sign(&claims(exp));
        assert_eq!(keys.verify(&t).unwrap(), claims(exp));
        assert!(matches!(TokenKeys::new(b"other").verify(&t), Err(TokenError::Invalid(_))));
        let old = keys.sign(&claims(unix_now() - 3600));
        assert!(matches!(keys.verify(&old), Err(TokenError::Expired)));
        assert!(matches!(keys.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        // alg=none must not be accepted.
        let none = format!("{}.{}.", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", t.split('.').nth(1).unwrap());
        assert!(keys.verify(&none).is_err());
        // Participant ids are bounded and printable; channels are channel names.
        for sub in ["".to_owned(), "x".repeat(MAX_PARTICIPANT_LEN + 1), "bob\u{1b}[31m".to_owned()] {
            let t = keys.sign(&Claims { sub, ..claims(unix_now() + 60) });
            assert!(matches!(keys.verify(&t), Err(TokenError::Invalid(_))));
        }
        let t = keys.sign(&Claims { channel: "../etc".into(), ..claims(unix_now() + 60) });
        assert!(keys.verify(&t).is_err());
        assert!(keys.verify(&"a".repeat(5000)).is_err());
    }
}
