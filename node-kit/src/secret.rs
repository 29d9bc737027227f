//! Shared secrets (token, cluster, admin): at least 32 bytes, never in `Debug` output.

use std::sync::Arc;

/// The shortest secret a node accepts.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name} is {len} bytes; it must be at least {MIN_SECRET_LEN} (for example `openssl rand -hex 32`)")]
pub struct SecretError {
    pub name: &'static str,
    pub len: usize,
}

/// A secret value; `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Accepts `value` as the secret called `name` if it is long enough.
    pub fn new(name: &'static str, value: impl AsRef<[u8]>) -> Result<Secret, SecretError> {
        let value = value.as_ref();
        if value.len() < MIN_SECRET_LEN {
            return Err(SecretError { name, len: value.len() });
        }
        Ok(Secret(value.into()))
    }

    /// A value kept out of logs that is not a key (a URL with a password in it): any
    /// non-empty length.
    pub fn new_any(name: &'static str, value: impl AsRef<[u8]>) -> Result<Secret, SecretError> {
        let value = value.as_ref();
        if value.is_empty() {
            return Err(SecretError { name, len: 0 });
        }
        Ok(Secret(value.into()))
    }

    /// A random secret, for development runs only.
    pub fn random() -> Secret {
        Secret(rand::random::<[u8; MIN_SECRET_LEN]>().to_vec().into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

/// A secret as read from a flag, variable or config file, before it is checked: prints
/// as `SecretText(redacted)` so parsed arguments can be logged safely.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretText(s.to_owned()))
    }
}

impl From<&str> for SecretText {
    fn from(s: &str) -> Self {
        SecretText(s.to_owned())
    }
}

impl From<String> for SecretText {
    fn from(s: String) -> Self {
        SecretText(s)
    }
}

impl AsRef<[u8]> for SecretText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(redacted)")
    }
}

/// A secret from the file that `{var}_FILE` names (a mounted Kubernetes or Docker
/// secret), without its trailing newline; `None` when the variable is not set.
pub fn from_file_var(var: &str) -> Result<Option<SecretText>, String> {
    from_file_var_in(var, |k| std::env::var_os(k))
}

fn from_file_var_in(var: &str, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Option<SecretText>, String> {
    let name = format!("{var}_FILE");
    let Some(path) = env(&name) else { return Ok(None) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{name}: reading {}: {e}", std::path::Path::new(&path).display()))?;
    Ok(Some(SecretText(text.trim_end_matches(['\r', '\n']).to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_the_file_its_file_variable_names() {
        let path = std::env::temp_dir().join(format!("sfu-secret-{}", std::process::id()));
        std::fs::write(&path, "a secret of at least thirty-two bytes\n").unwrap();
        let env = |k: &str| (k == "SFU_TOKEN_SECRET_FILE").then(|| path.clone().into_os_string());
        let s = from_file_var_in("SFU_TOKEN_SECRET", env).unwrap().unwrap();
        assert_eq!(s.as_ref(), b"a secret of at least thirty-two bytes");
        assert!(from_file_var_in("SFU_ADMIN_TOKEN", env).unwrap().is_none());
        std::fs::remove_file(&path).unwrap();
        let err = from_file_var_in("SFU_TOKEN_SECRET", env).unwrap_err();
        assert!(err.starts_with("SFU_TOKEN_SECRET_FILE: reading"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused_and_none_prints() {
        assert_eq!(Secret::new("token secret", ""), Err(SecretError { name: "token secret", len: 0 }));
        assert!(Secret::new("token secret", [7u8; 31]).is_err());
        let s = Secret::new("token secret", "0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(32 bytes, redacted)");
        let e = Secret::new("cluster secret", "short").unwrap_err().to_string();
        assert!(e.contains("cluster secret is 5 bytes") && !e.contains("short"), "{e}");
        assert_ne!(Secret::random(), Secret::random());
        let text: SecretText = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(format!("{:?}", Some(text.clone())), "Some(SecretText(redacted))");
        assert!(Secret::new("token secret", text).is_ok());
    }
}
