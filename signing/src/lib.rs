//! Trust: dm-verity hash trees (veritysetup-compatible), root-hash PKCS#7
//! signatures, the DDI layout, OpenPGP detached signatures for manifests,
//! and key and certificate handling.
//!
//! The pieces, in the order an image is sealed:
//!
//! - [`verity`]: the dm-verity hash tree with superblock, byte-identical to
//!   `veritysetup format`, and a parallel user-space verifier; [`RootHash`].
//! - [`keys`]: loading a signing key and its certificate (file or environment),
//!   and `keygen`.
//! - [`pkcs7`]: detached PKCS#7 signatures over the root hash and their check
//!   against `verity.d` certificate directories.
//! - [`ddi`]: the Discoverable Disk Image (GPT with root, root-verity and
//!   root-verity-sig partitions): writer and reader.
//! - [`sidecar`]: the bare-image form (`NAME.verity`, `NAME.roothash`,
//!   `NAME.roothash.p7s`): writer and reader.
//! - [`seal`]: one call that writes the published files in the chosen
//!   format (`ddi`, `sidecar`, `bare`) and lists them.
//!
//! The readers and verifiers ([`ddi::read_ddi`], [`sidecar::read_sidecar`],
//! [`verity::verify_tree`], [`pkcs7::verify_root_hash`]) are what the node
//! runtime uses; they depend on nothing from the build side.

pub mod ddi;
mod gpt;
pub mod keys;
pub mod openpgp;
pub mod pkcs7;
pub mod seal;
pub mod sidecar;
pub mod verity;

pub use ddi::{read_ddi, write_ddi, DdiError, DdiLayout, SealedDdi};
pub use keys::{keygen, KeyError, KeySource, SigningKey};
pub use pkcs7::{sign_root_hash, verify_root_hash, Pkcs7Error, RootHashSignature, TrustedCerts};
pub use seal::{seal, SealFormat, SealRequest, Sealed};
pub use verity::{build_tree, verify_tree, RootHash, VerityError, VerityParams, VerityTree};
