//! The trust a publisher needs: a detached OpenPGP signature over each
//! manifest, verification of the signature already in the feed (so a
//! re-run does not re-sign), and the public keyring nodes install.

use std::fmt;

/// Signs and verifies manifests. The private key never leaves the
/// implementation; errors must not quote it.
pub trait ManifestSigner {
    /// A detached OpenPGP signature over `data` (`SHA256SUMS.gpg`) that
    /// `gpg --verify` accepts with [`ManifestSigner::public_keyring`].
    fn sign_detached(&self, data: &[u8]) -> Result<Vec<u8>, SignError>;

    /// Whether `signature` is a good signature over `data` by this key.
    fn verify_detached(&self, data: &[u8], signature: &[u8]) -> bool;

    /// The binary (non-armoured) public keyring for
    /// `/etc/systemd/import-pubring.gpg`.
    fn public_keyring(&self) -> Vec<u8>;
}

/// Signing failed.
#[derive(Debug)]
pub struct SignError(pub String);

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signing failed: {}", self.0)
    }
}

impl std::error::Error for SignError {}

/// [`ManifestSigner`] with the project's OpenPGP key
/// ([`signing::openpgp`]): signatures `gpg --verify` and
/// systemd-sysupdate accept.
pub struct OpenPgpSigner {
    key: signing::openpgp::OpenPgpSecretKey,
    keyring: Vec<u8>,
}

impl fmt::Debug for OpenPgpSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenPgpSigner")
            .field("fingerprint", &self.key.fingerprint())
            .finish()
    }
}

impl OpenPgpSigner {
    pub fn new(key: signing::openpgp::OpenPgpSecretKey) -> Result<OpenPgpSigner, SignError> {
        let keyring = key.public_keyring().map_err(|e| SignError(e.to_string()))?;
        Ok(OpenPgpSigner { key, keyring })
    }

    /// Loads the armored secret key written by `bakery keygen`.
    pub fn load(path: &std::path::Path) -> Result<OpenPgpSigner, SignError> {
        let key =
            signing::openpgp::OpenPgpSecretKey::load(path).map_err(|e| SignError(e.to_string()))?;
        OpenPgpSigner::new(key)
    }

    pub fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }
}

impl ManifestSigner for OpenPgpSigner {
    fn sign_detached(&self, data: &[u8]) -> Result<Vec<u8>, SignError> {
        self.key
            .sign_detached(data)
            .map_err(|e| SignError(e.to_string()))
    }

    fn verify_detached(&self, data: &[u8], signature: &[u8]) -> bool {
        signing::openpgp::verify_detached(&self.keyring, data, signature).is_ok_and(|v| {
            v.primary_fingerprint
                .eq_ignore_ascii_case(&self.key.fingerprint())
        })
    }

    fn public_keyring(&self) -> Vec<u8> {
        self.keyring.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openpgp_signer_round_trip() {
        let key = signing::openpgp::OpenPgpSecretKey::generate(
            "Test Feed <feed@example.org>",
            signing::openpgp::Algorithm::Ed25519,
        )
        .unwrap();
        let s = OpenPgpSigner::new(key).unwrap();
        let sig = s.sign_detached(b"data\n").unwrap();
        assert!(s.verify_detached(b"data\n", &sig));
        assert!(!s.verify_detached(b"data!\n", &sig));
        let other = OpenPgpSigner::new(
            signing::openpgp::OpenPgpSecretKey::generate(
                "Other <o@example.org>",
                signing::openpgp::Algorithm::Ed25519,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!other.verify_detached(b"data\n", &sig));
        assert!(!format!("{s:?}").contains("PRIVATE"));
    }
}
