//! Choosing what to install: the manifest entries a transfer's source
//! patterns match, ordered newest first like systemd, and the newest one
//! allowed by `MinVersion=` and a block list.
//!
//! Minor streams need nothing special: a pattern such as
//! `kubernetes-v1.30.@v-%a.raw` carries the minor line in its literal part,
//! so names of other minors simply do not match.

use std::cmp::Ordering;

use crate::digest::Sha256Digest;
use crate::manifest::{Manifest, ManifestName};
use crate::pattern::{Captures, MatchPattern};
use crate::version::{compare, Version};

/// One manifest entry a pattern matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: Version,
    pub name: ManifestName,
    pub digest: Sha256Digest,
    pub captures: Captures,
}

/// A manifest that contradicts itself for these patterns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    #[error(
        "{name}: the SHA-256 in the file name ({in_name}) differs from the manifest's ({listed})"
    )]
    DigestMismatch {
        name: String,
        in_name: Sha256Digest,
        listed: Sha256Digest,
    },
}

/// Orders newest first; equal versions by name (systemd's `instance_cmp`).
fn newest_first(a: &Candidate, b: &Candidate) -> Ordering {
    compare(b.version.as_str(), a.version.as_str()).then_with(|| a.name.cmp(&b.name))
}

/// Every manifest entry matching one of `patterns` (the first pattern that
/// matches a name is used, as systemd does), newest first.
pub fn list(
    manifest: &Manifest,
    patterns: &[MatchPattern],
) -> Result<Vec<Candidate>, CandidateError> {
    let mut out = Vec::new();
    for (name, digest) in manifest.entries() {
        let Some(captures) = patterns.iter().find_map(|p| p.matches(name.as_str())) else {
            continue;
        };
        if let Some(h) = captures.sha256 {
            if h != *digest {
                return Err(CandidateError::DigestMismatch {
                    name: name.to_string(),
                    in_name: h,
                    listed: *digest,
                });
            }
        }
        // A successful match always captures the mandatory @v.
        let Some(version) = captures.version.clone() else {
            continue;
        };
        out.push(Candidate {
            version,
            name: name.clone(),
            digest: *digest,
            captures,
        });
    }
    out.sort_by(newest_first);
    Ok(out)
}

/// Limits on what may be chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `MinVersion=`: nothing older is chosen.
    pub min_version: Option<Version>,
    /// Versions never chosen (compared with UAPI ordering, so `1.030`
    /// blocks `1.30`).
    pub blocked: Vec<Version>,
}

impl Policy {
    /// Whether `v` may be chosen.
    pub fn allows(&self, v: &Version) -> bool {
        let old_enough = self
            .min_version
            .as_ref()
            .is_none_or(|min| compare(v.as_str(), min.as_str()) != Ordering::Less);
        old_enough && !self.blocked.iter().any(|b| b.uapi_eq(v))
    }
}

/// The newest candidate the policy allows, from a newest-first list.
pub fn choose<'a>(candidates: &'a [Candidate], policy: &Policy) -> Option<&'a Candidate> {
    candidates.iter().find(|c| policy.allows(&c.version))
}

/// [`list`] then [`choose`].
pub fn newest(
    manifest: &Manifest,
    patterns: &[MatchPattern],
    policy: &Policy,
) -> Result<Option<Candidate>, CandidateError> {
    Ok(choose(&list(manifest, patterns)?, policy).cloned())
}

/// The versions every transfer of a component offers (systemd offers a
/// version only if all transfers have it), newest first.
pub fn common_versions(per_transfer: &[Vec<Candidate>]) -> Vec<Version> {
    let Some((first, rest)) = per_transfer.split_first() else {
        return Vec::new();
    };
    let mut out: Vec<Version> = Vec::new();
    for c in first {
        let everywhere = rest
            .iter()
            .all(|cands| cands.iter().any(|o| o.version.uapi_eq(&c.version)));
        if everywhere && !out.iter().any(|v| v.uapi_eq(&c.version)) {
            out.push(c.version.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::pattern::PatternTemplate;

    fn digest(n: u8) -> Sha256Digest {
        Sha256Digest::from_bytes([n; 32])
    }

    fn feed() -> Manifest {
        let mut m = Manifest::new();
        let mut n = 0u8;
        for minor in ["1.29", "1.30", "1.31"] {
            for patch in ["0", "2", "9", "10"] {
                for arch in ["x86-64", "arm64"] {
                    n += 1;
                    let name = format!("kubernetes-v{minor}.{patch}-{arch}.raw");
                    m.insert(name.parse().unwrap(), digest(n));
                }
            }
        }
        m.insert(
            "kubernetes-v1.32.0~rc1-x86-64.raw".parse().unwrap(),
            digest(200),
        );
        m.insert("SHA256SUMS.gpg".parse().unwrap(), digest(201));
        m
    }

    fn pattern(t: &str, arch: Arch) -> MatchPattern {
        t.parse::<PatternTemplate>()
            .unwrap()
            .for_arch(arch)
            .unwrap()
    }

    #[test]
    fn minor_stream_never_jumps_minor() {
        let m = feed();
        for arch in [Arch::X86_64, Arch::Arm64] {
            let p = pattern("kubernetes-v1.30.@v-%a.raw", arch);
            let all = list(&m, std::slice::from_ref(&p)).unwrap();
            let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(
                names,
                ["10", "9", "2", "0"].map(|x| format!("kubernetes-v1.30.{x}-{arch}.raw")),
            );
            let best = newest(&m, &[p], &Policy::default()).unwrap().unwrap();
            assert_eq!(best.version.as_str(), "10", "numeric, not lexical, order");
        }
    }

    #[test]
    fn default_stream_takes_newest_overall() {
        let m = feed();
        let p = pattern("kubernetes-@v-%a.raw", Arch::X86_64);
        let all = list(&m, std::slice::from_ref(&p)).unwrap();
        // "v1.32.0~rc1" never matches: '~' is not a sysupdate version char.
        assert_eq!(all[0].version.as_str(), "v1.31.10");
        assert_eq!(all.len(), 12);
        let policy = Policy {
            min_version: None,
            blocked: vec!["v1.31.10".parse().unwrap(), "v1.31.09".parse().unwrap()],
        };
        assert_eq!(choose(&all, &policy).unwrap().version.as_str(), "v1.31.2");
        let policy = Policy {
            min_version: Some("v1.32".parse().unwrap()),
            blocked: vec![],
        };
        assert!(choose(&all, &policy).is_none());
        let policy = Policy {
            min_version: Some("v1.31.10".parse().unwrap()),
            blocked: vec![],
        };
        assert_eq!(choose(&all, &policy).unwrap().version.as_str(), "v1.31.10");
    }

    #[test]
    fn digest_in_name_must_agree() {
        let mut m = Manifest::new();
        let d = digest(7);
        m.insert(format!("x_1_{d}.raw").parse().unwrap(), d);
        let p = MatchPattern::parse("x_@v_@h.raw").unwrap();
        assert_eq!(list(&m, std::slice::from_ref(&p)).unwrap().len(), 1);
        m.insert(format!("x_2_{d}.raw").parse().unwrap(), digest(8));
        let e = list(&m, &[p]).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
    }

    #[test]
    fn common_versions_need_every_transfer() {
        let m = feed();
        let a = list(&m, &[pattern("kubernetes-v1.30.@v-%a.raw", Arch::X86_64)]).unwrap();
        let mut b = list(&m, &[pattern("kubernetes-v1.30.@v-%a.raw", Arch::Arm64)]).unwrap();
        b.retain(|c| c.version.as_str() != "10");
        let common: Vec<String> = common_versions(&[a, b])
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(common, ["9", "2", "0"]);
    }
}
