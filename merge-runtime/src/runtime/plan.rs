//! The merge plan, without side effects: whether a command may start
//! (already merged, nothing changed), whether an image passes the policy
//! and its extension-release fits the host, which images are merged in
//! which stack order and which are refused and why ([`Refusal`], typed,
//! with the [`Stage`] it was refused at). Staging gathers the facts (opens
//! and mounts the images); this module only decides.

use std::cmp::Ordering;
use std::io;

use sysupdate::extension::{wants_manager_reload, ImageName, OsRelease};

use crate::image::{OpenError, Stage};
use crate::release::{self, HostRelease, Mismatch};
use crate::verify::{self, Policy, TrustDecision, VerifyError, VerityMaterial};

use super::state::{Current, MergeState};

/// Why one image is not merged (the others go on).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not readable as an image, or its verity material does not fit.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The node's policy does not accept what the image carries.
    #[error(transparent)]
    Policy(VerifyError),
    /// Its root-hash signature is invalid or untrusted.
    #[error(transparent)]
    Signature(VerifyError),
    /// Its data does not match the root hash (at activation).
    #[error(transparent)]
    Verity(VerifyError),
    /// Loop device, bind mount or filesystem mount failed.
    #[error("{context}")]
    Mount {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: the data is not a squashfs, erofs or ext4 filesystem")]
    NotAFilesystem { what: String },
    #[error("looking for extension-release in {what}")]
    ReleaseLookup {
        what: String,
        #[source]
        source: io::Error,
    },
    /// No usable extension-release, or one that does not fit the host.
    #[error(transparent)]
    Release(#[from] Mismatch),
}

impl Refusal {
    /// The step the image was refused at (recorded in reports).
    pub fn stage(&self) -> Stage {
        match self {
            Refusal::Open(e) => e.stage(),
            Refusal::Policy(_) => Stage::Policy,
            Refusal::Signature(_) => Stage::Signature,
            Refusal::Verity(_) => Stage::Verity,
            Refusal::Mount { .. } => Stage::Mount,
            Refusal::NotAFilesystem { .. } => Stage::Format,
            Refusal::ReleaseLookup { .. } | Refusal::Release(Mismatch::NoRelease { .. }) => {
                Stage::Release
            }
            Refusal::Release(_) => Stage::Compatibility,
        }
    }

    /// The reason as recorded in reports: the message and its causes.
    pub fn reason(&self) -> String {
        crate::chain::text(self)
    }
}

/// The policy (and, when signed, the signature) before anything of the
/// image is mounted. `material` is `None` for a directory image or an
/// image without verity data.
pub fn admit_policy(
    policy: Policy,
    material: Option<&VerityMaterial>,
    what: &str,
    trusted: impl FnOnce() -> Result<signing::pkcs7::TrustedCerts, signing::pkcs7::Pkcs7Error>,
) -> Result<TrustDecision, Refusal> {
    verify::decide(policy, material, what, trusted).map_err(|e| match e {
        VerifyError::Signature { .. } => Refusal::Signature(e),
        e => Refusal::Policy(e),
    })
}

/// The extension-release check of a mounted image: `found` is its
/// extension-release (or why there is none), `contains_os_release` whether
/// it carries `usr/lib/os-release`. `force` skips the check. Returns
/// whether the image asks for a service-manager reload.
pub fn admit_release(
    found: Result<&OsRelease, &str>,
    contains_os_release: bool,
    host: &HostRelease,
    force: bool,
) -> Result<bool, Refusal> {
    if !force {
        if contains_os_release {
            return Err(Mismatch::ContainsOsRelease.into());
        }
        let file = found.map_err(|detail| Mismatch::NoRelease {
            detail: detail.to_string(),
        })?;
        release::validate(file, host)?;
    }
    Ok(found.is_ok_and(wants_manager_reload))
}

/// Stack order: UAPI version order of the names, lowest first (the
/// highest ends up on top of the overlay).
pub fn stack_order(a: &ImageName, b: &ImageName) -> Ordering {
    sysupdate::version::compare(a.as_str(), b.as_str()).then_with(|| a.as_str().cmp(b.as_str()))
}

/// Which images are merged, in stack order, and which are refused.
#[derive(Debug)]
pub struct Plan<T> {
    /// Lowest first.
    pub merge: Vec<(ImageName, T)>,
    /// In the order given.
    pub refused: Vec<(ImageName, Refusal)>,
}

impl<T> Plan<T> {
    /// Sorts the outcome of each image's checks into a plan.
    pub fn new(results: impl IntoIterator<Item = (ImageName, Result<T, Refusal>)>) -> Plan<T> {
        let mut merge = Vec::new();
        let mut refused = Vec::new();
        for (name, r) in results {
            match r {
                Ok(t) => merge.push((name, t)),
                Err(e) => refused.push((name, e)),
            }
        }
        merge.sort_by(|a, b| stack_order(&a.0, &b.0));
        Plan { merge, refused }
    }

    /// Names of the merged images, lowest first.
    pub fn names(&self) -> Vec<String> {
        self.merge.iter().map(|(n, _)| n.to_string()).collect()
    }
}

/// Merge or refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Merge,
    Refresh,
}

/// What a merge or refresh does before staging anything.
#[derive(Debug)]
pub enum Start<'a> {
    /// Stage and swap.
    Proceed,
    /// `merge` on a merged hierarchy: refused.
    AlreadyMerged(&'a str),
    /// `refresh` and every merged tree records the same fingerprint: keep
    /// it (the state of the first one, when recorded).
    Unchanged(Option<&'a MergeState>),
    /// `refresh` with nothing merged and no image found.
    NothingToMerge,
}

/// Decides how a command starts from the current state of the
/// hierarchies, the fingerprint of what decides the result, and whether
/// any image was found.
pub fn start<'a>(
    mode: Mode,
    current: &'a [Current],
    fingerprint: &str,
    any_image: bool,
) -> Start<'a> {
    if mode == Mode::Merge {
        return match current.iter().find(|c| c.merged) {
            Some(c) => Start::AlreadyMerged(&c.hierarchy),
            None => Start::Proceed,
        };
    }
    let merged: Vec<&Current> = current.iter().filter(|c| c.merged).collect();
    if !merged.is_empty()
        && merged.iter().all(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.fingerprint == fingerprint)
        })
    {
        return Start::Unchanged(merged.first().and_then(|c| c.state.as_ref()));
    }
    if merged.is_empty() && !any_image {
        return Start::NothingToMerge;
    }
    Start::Proceed
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use sysupdate::extension::{Host, Scope};

    use super::*;
    use crate::discover::{discover, Discovery};
    use crate::root::Root;

    fn host(id: &str, version: Option<&str>, level: Option<&str>) -> HostRelease {
        HostRelease {
            os_release_path: PathBuf::from("/etc/os-release"),
            host: Host {
                id: id.into(),
                version_id: version.map(Into::into),
                sysext_level: level.map(Into::into),
                architecture: "x86-64".into(),
                scope: Scope::System,
            },
        }
    }

    fn rel(text: &str) -> OsRelease {
        crate::osrelease::parse(Path::new("extension-release.x"), text.as_bytes()).unwrap()
    }

    fn check(text: &str, h: &HostRelease) -> Result<bool, Refusal> {
        admit_release(Ok(&rel(text)), false, h, false)
    }

    fn refused_at(r: Result<bool, Refusal>, stage: Stage, words: &str) {
        match r {
            Err(e) => {
                assert_eq!(e.stage(), stage, "{e}");
                assert!(
                    e.reason().contains(words),
                    "{:?} lacks {words:?}",
                    e.reason()
                );
            }
            Ok(_) => panic!("accepted; expected a refusal at {stage:?}"),
        }
    }

    #[test]
    fn release_fits_the_host() {
        let h = host("debian", Some("12"), None);
        assert!(!check("ID=debian\nVERSION_ID=12\n", &h).unwrap());
        assert!(check("ID=_any\n", &h).is_ok());
        assert!(check("ID=debian\nVERSION_ID=12\nEXTENSION_RELOAD_MANAGER=1\n", &h).unwrap());
    }

    #[test]
    fn refused_for_os_version_level_arch_scope() {
        let h = host("debian", Some("12"), Some("1.2"));
        refused_at(
            check("ID=fedora\nVERSION_ID=12\n", &h),
            Stage::Compatibility,
            "fedora",
        );
        let hv = host("debian", Some("12"), None);
        refused_at(
            check("ID=debian\nVERSION_ID=11\n", &hv),
            Stage::Compatibility,
            "11",
        );
        refused_at(
            check("ID=debian\nSYSEXT_LEVEL=1.3\n", &h),
            Stage::Compatibility,
            "SYSEXT_LEVEL=1.3",
        );
        refused_at(
            check("ID=debian\nVERSION_ID=12\nARCHITECTURE=arm64\n", &h),
            Stage::Compatibility,
            "arm64",
        );
        refused_at(
            check("ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=initrd\n", &h),
            Stage::Compatibility,
            "scope",
        );
    }

    #[test]
    fn refused_without_release_or_with_os_release_unless_forced() {
        let h = host("debian", None, None);
        refused_at(
            admit_release(Err("no file"), false, &h, false),
            Stage::Release,
            "no file",
        );
        let r = rel("ID=debian\n");
        refused_at(
            admit_release(Ok(&r), true, &h, false),
            Stage::Compatibility,
            "os-release",
        );
        assert!(admit_release(Err("no file"), true, &h, true).is_ok());
        assert!(admit_release(Ok(&rel("ID=fedora\n")), false, &h, true).is_ok());
    }

    #[test]
    fn policy_refusals() {
        let no_certs = || -> Result<signing::pkcs7::TrustedCerts, signing::pkcs7::Pkcs7Error> {
            panic!("no signature to check")
        };
        // A directory image carries no verity data.
        let e = admit_policy(Policy::Signed, None, "directory image /x", no_certs).unwrap_err();
        assert_eq!(e.stage(), Stage::Policy);
        assert!(e.reason().contains("signed"), "{}", e.reason());
        let e = admit_policy(Policy::Verity, None, "x.raw", no_certs).unwrap_err();
        assert_eq!(e.stage(), Stage::Policy);
        assert!(admit_policy(Policy::Any, None, "x.raw", no_certs).is_ok());
    }

    fn name(s: &str) -> ImageName {
        ImageName::new(s).unwrap()
    }

    #[test]
    fn stack_order_and_refusals() {
        let plan = Plan::new([
            (name("ext-1.10"), Ok(())),
            (name("ext-1.9"), Ok(())),
            (
                name("bad"),
                Err(Refusal::Release(Mismatch::NoRelease {
                    detail: "none".into(),
                })),
            ),
            (name("alpha"), Ok(())),
        ]);
        assert_eq!(plan.names(), ["alpha", "ext-1.9", "ext-1.10"]);
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].0.as_str(), "bad");
        assert_eq!(plan.refused[0].1.stage(), Stage::Release);
    }

    #[test]
    fn masked_and_duplicate_names_never_reach_the_plan() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["etc/extensions", "run/extensions", "var/lib/extensions"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("var/lib/extensions/dup.raw"), b"low").unwrap();
        std::fs::write(r.join("etc/extensions/dup.raw"), b"high").unwrap();
        std::fs::create_dir(r.join("run/extensions/hidden")).unwrap();
        std::fs::write(r.join("var/lib/extensions/hidden.raw"), b"x").unwrap();
        let d: Discovery = discover(&Root::open(r).unwrap()).unwrap();
        let plan = Plan::new(d.images.iter().map(|i| (i.name.clone(), Ok(&i.path))));
        assert_eq!(plan.names(), ["dup"]);
        assert!(plan.merge[0]
            .1
            .starts_with(std::fs::canonicalize(r).unwrap().join("etc")));
        assert_eq!(d.masked.len(), 1);
        assert_eq!(d.masked[0].name.as_str(), "hidden");
    }

    fn cur(h: &str, merged: bool, fp: Option<&str>) -> Current {
        Current {
            hierarchy: h.into(),
            target: PathBuf::from(h),
            merged,
            state: fp.map(|f| MergeState {
                tool: "t".into(),
                fingerprint: f.into(),
                merged_at_usec: 0,
                policy: Policy::Any,
                images: Vec::new(),
            }),
        }
    }

    #[test]
    fn how_a_command_starts() {
        let none = [cur("/usr", false, None), cur("/opt", false, None)];
        let some = [cur("/usr", true, Some("f")), cur("/opt", false, None)];
        let foreign = [cur("/usr", true, None)];
        assert!(matches!(
            start(Mode::Merge, &none, "f", true),
            Start::Proceed
        ));
        assert!(matches!(
            start(Mode::Merge, &some, "f", true),
            Start::AlreadyMerged("/usr")
        ));
        assert!(matches!(
            start(Mode::Refresh, &some, "f", true),
            Start::Unchanged(Some(_))
        ));
        assert!(matches!(
            start(Mode::Refresh, &some, "g", true),
            Start::Proceed
        ));
        // Merged by systemd-sysext (no state): always re-merged.
        assert!(matches!(
            start(Mode::Refresh, &foreign, "f", true),
            Start::Proceed
        ));
        assert!(matches!(
            start(Mode::Refresh, &none, "f", false),
            Start::NothingToMerge
        ));
        assert!(matches!(
            start(Mode::Refresh, &none, "f", true),
            Start::Proceed
        ));
    }
}
