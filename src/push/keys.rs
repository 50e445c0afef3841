//! The VAPID key pair (RFC 8292): an ECDSA P-256 key whose public half
//! browsers bind their push subscriptions to (`applicationServerKey`), and
//! whose private half signs the `Authorization: vapid` header of every push.
//!
//! The private key is kept as a PKCS#8 PEM file (`herald push keygen`),
//! the form `openssl` and other tools read; the public key is served as the
//! base64url uncompressed point (65 bytes), the form `pushManager.subscribe`
//! takes.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};

/// Why a key file could not be written or used. Names the file; never
/// shows key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the VAPID key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a P-256 private key in PKCS#8 PEM (`herald push keygen --out FILE` writes one): {reason}"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} already exists; remove it first or choose another path (a key in use must not be overwritten: every browser subscription is bound to it)"
    )]
    Exists { path: PathBuf },
    #[error("cannot write the VAPID key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no random source: {0}")]
    Random(String),
}

/// A node's VAPID key pair.
#[derive(Clone)]
pub struct VapidKeys {
    secret: SecretKey,
    /// The public key as served: base64url of the uncompressed point.
    public_base64: String,
}

impl std::fmt::Debug for VapidKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKeys(public {})", self.public_base64)
    }
}

impl VapidKeys {
    /// A new random key pair.
    pub fn generate() -> Result<VapidKeys, KeyError> {
        // A random 32-byte string is a valid P-256 scalar unless it is zero
        // or not below the group order: a chance of about 2^-32 per try.
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
            if let Ok(secret) = SecretKey::from_slice(&bytes) {
                return Ok(Self::from_secret(secret));
            }
        }
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn load(path: &Path) -> Result<VapidKeys, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secret = SecretKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: SecretKey) -> VapidKeys {
        let point = secret.public_key().to_encoded_point(false);
        VapidKeys {
            public_base64: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            secret,
        }
    }

    /// Writes the private key to a new file readable by its owner only
    /// (mode 0600); refuses to replace an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => KeyError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyError::Write {
                path: path.to_owned(),
                source,
            })
    }

    /// The public key as `pushManager.subscribe` takes it: base64url (no
    /// padding) of the 65-byte uncompressed point.
    pub fn public_key_base64(&self) -> &str {
        &self.public_base64
    }

    /// The private key, for signing VAPID headers.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_key_reads_back_to_the_same_public_key() {
        let dir = std::env::temp_dir().join(format!("herald-vapid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vapid.pem");
        let _ = std::fs::remove_file(&path);
        let keys = VapidKeys::generate().unwrap();
        keys.write_new(&path).unwrap();
        let loaded = VapidKeys::load(&path).unwrap();
        assert_eq!(loaded.public_key_base64(), keys.public_key_base64());
        let point = URL_SAFE_NO_PAD.decode(keys.public_key_base64()).unwrap();
        assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten.
        let e = VapidKeys::generate().unwrap().write_new(&path).unwrap_err();
        assert!(matches!(e, KeyError::Exists { .. }), "{e}");
        assert_eq!(
            VapidKeys::load(&path).unwrap().public_key_base64(),
            keys.public_key_base64()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_key_files_name_the_file() {
        let missing = Path::new("/nonexistent/vapid.pem");
        let e = VapidKeys::load(missing).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vapid.pem"), "{e}");
        let path =
            std::env::temp_dir().join(format!("herald-vapid-bad-{}.pem", std::process::id()));
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = VapidKeys::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::Invalid { .. }), "{e}");
        assert!(!format!("{e:?}").contains("AAAA"));
        std::fs::remove_file(&path).unwrap();
    }
}
