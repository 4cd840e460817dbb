//! The cluster secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Key material shared by the directors and context servers of one cluster.
#[derive(Clone)]
pub struct ClusterSecret {
    key: Vec<u8>,
    development: bool,
}

/// The key used when none is configured. Public by construction, so a
/// cluster using it refuses to listen anywhere but loopback.
const DEVELOPMENT_KEY: &[u8] = b"elko-development-secret-do-not-use-in-production";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why the secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read cluster secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster secret from {origin} is {len} bytes; use at least {MIN_SECRET_LEN} (e.g. `head -c 32 /dev/urandom | base64`)")]
    TooShort { origin: String, len: usize },
    #[error("refusing to bind {addr} with the development cluster secret: set a secret (--secret-file or ELKO_SECRET) or bind a loopback address")]
    DevelopmentSecretOffLoopback { addr: SocketAddr },
}

impl ClusterSecret {
    /// A secret from raw bytes.
    pub fn from_bytes(key: impl Into<Vec<u8>>, origin: &str) -> Result<Self, SecretError> {
        let key = key.into();
        if key.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                origin: origin.to_string(),
                len: key.len(),
            });
        }
        Ok(ClusterSecret {
            key,
            development: false,
        })
    }

    /// Read a secret file (surrounding whitespace is ignored).
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let raw = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let trimmed = raw.trim_ascii();
        Self::from_bytes(trimmed.to_vec(), &path.display().to_string())
    }

    /// The built-in development secret.
    pub fn development() -> Self {
        ClusterSecret {
            key: DEVELOPMENT_KEY.to_vec(),
            development: true,
        }
    }

    /// Resolve the secret the usual way: a file if given, else the value of
    /// `ELKO_SECRET` if set, else the development secret.
    pub fn resolve(file: Option<&Path>, env_value: Option<&str>) -> Result<Self, SecretError> {
        match (file, env_value) {
            (Some(p), _) => Self::from_file(p),
            (None, Some(v)) if !v.is_empty() => {
                Self::from_bytes(v.as_bytes().to_vec(), "ELKO_SECRET")
            }
            _ => Ok(Self::development()),
        }
    }

    /// True for the built-in development secret.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Refuse a non-loopback address under the development secret.
    pub fn check_bind(&self, addr: SocketAddr) -> Result<(), SecretError> {
        if self.development && !addr.ip().is_loopback() {
            return Err(SecretError::DevelopmentSecretOffLoopback { addr });
        }
        Ok(())
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecret")
            .field("len", &self.key.len())
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_secret_is_loopback_only() {
        let s = ClusterSecret::development();
        assert!(s
            .check_bind("127.0.0.1:7700".parse().expect("addr"))
            .is_ok());
        assert!(s.check_bind("[::1]:7700".parse().expect("addr")).is_ok());
        assert!(matches!(
            s.check_bind("0.0.0.0:7700".parse().expect("addr")),
            Err(SecretError::DevelopmentSecretOffLoopback { .. })
        ));
        let real = ClusterSecret::from_bytes(vec![7; 32], "test").expect("long enough");
        assert!(real
            .check_bind("0.0.0.0:7700".parse().expect("addr"))
            .is_ok());
    }

    #[test]
    fn short_secret_refused() {
        assert!(matches!(
            ClusterSecret::from_bytes(b"short".to_vec(), "x"),
            Err(SecretError::TooShort { len: 5, .. })
        ));
    }

    #[test]
    fn resolve_order() {
        assert!(ClusterSecret::resolve(None, None)
            .expect("dev")
            .is_development());
        assert!(!ClusterSecret::resolve(None, Some("0123456789abcdef0123"))
            .expect("env")
            .is_development());
        assert!(ClusterSecret::resolve(Some(Path::new("/nonexistent/elko")), None).is_err());
    }
}
