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
