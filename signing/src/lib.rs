//! Trust: dm-verity hash trees (veritysetup-compatible), root-hash PKCS#7
//! signatures, the DDI layout, OpenPGP detached signatures for manifests,
//! and key and certificate handling.
