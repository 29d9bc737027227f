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
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            }
        })
    }
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
        let keys = TokenKeys::new(b"secret");
        let t = keys.sign(&claims(unix_now() + 60));
        assert_eq!(keys.verify(&t).unwrap(), claims(unix_now() + 60));
        assert!(matches!(TokenKeys::new(b"other").verify(&t), Err(TokenError::Invalid(_))));
        let old = keys.sign(&claims(unix_now() - 3600));
        assert!(matches!(keys.verify(&old), Err(TokenError::Expired)));
        assert!(matches!(keys.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        // alg=none must not be accepted.
        let none = format!("{}.{}.", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", t.split('.').nth(1).unwrap());
        assert!(keys.verify(&none).is_err());
    }
}
