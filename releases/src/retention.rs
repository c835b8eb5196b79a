//! Which images a feed keeps: the newest N versions of every stream, and
//! for every stream and architecture the newest image (what a node on that
//! stream is pointed at), even when one architecture lags behind.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;

use sysupdate::{Arch, Version};

use crate::layout::{streams_of, Stream, StreamPolicy};

/// How many versions each stream keeps (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_per_stream: NonZeroUsize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_per_stream: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// The streams present among `images` and, for each, its newest version
/// per architecture.
pub fn newest_per_stream(
    policy: StreamPolicy,
    images: &[(Version, Arch)],
) -> BTreeMap<Stream, BTreeMap<Arch, Version>> {
    let mut out: BTreeMap<Stream, BTreeMap<Arch, Version>> = BTreeMap::new();
    for (v, a) in images {
        for s in streams_of(policy, v) {
            let slot = out.entry(s).or_default();
            match slot.get(a) {
                Some(cur) if cur >= v => {}
                _ => {
                    slot.insert(*a, v.clone());
                }
            }
        }
    }
    out
}

/// The subset of `images` to keep.
pub fn retain(
    policy: StreamPolicy,
    rules: Retention,
    images: &[(Version, Arch)],
) -> BTreeSet<(Version, Arch)> {
    let mut per_stream: BTreeMap<Stream, BTreeSet<Version>> = BTreeMap::new();
    for (v, _) in images {
        for s in streams_of(policy, v) {
            per_stream.entry(s).or_default().insert(v.clone());
        }
    }
    let mut keep_versions: BTreeSet<Version> = BTreeSet::new();
    for versions in per_stream.values() {
        keep_versions.extend(
            versions
                .iter()
                .rev()
                .take(rules.keep_per_stream.get())
                .cloned(),
        );
    }
    let mut keep: BTreeSet<(Version, Arch)> = images
        .iter()
        .filter(|(v, _)| keep_versions.contains(v))
        .cloned()
        .collect();
    // A stream never loses what it points at, per architecture.
    for per_arch in newest_per_stream(policy, images).into_values() {
        for (a, v) in per_arch {
            keep.insert((v, a));
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(v: &str, a: Arch) -> (Version, Arch) {
        (Version::new(v).unwrap(), a)
    }
    fn n(k: usize) -> Retention {
        Retention {
            keep_per_stream: NonZeroUsize::new(k).unwrap(),
        }
    }

    #[test]
    fn keeps_newest_n_by_uapi_order() {
        let imgs: Vec<_> = ["1.9", "1.10", "1.2", "1.10.1", "1.0~rc1"]
            .iter()
            .map(|v| img(v, Arch::X86_64))
            .collect();
        let keep = retain(StreamPolicy::Single, n(2), &imgs);
        let kept: Vec<_> = keep.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(kept, ["1.10", "1.10.1"]);
    }

    #[test]
    fn minor_streams_keep_their_newest() {
        let imgs = vec![
            img("v1.29.1", Arch::X86_64),
            img("v1.29.2", Arch::X86_64),
            img("v1.30.1", Arch::X86_64),
            img("v1.30.2", Arch::X86_64),
            img("v1.30.3", Arch::X86_64),
        ];
        let keep = retain(StreamPolicy::Minor, n(1), &imgs);
        let kept: Vec<_> = keep.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(kept, ["v1.29.2", "v1.30.3"]);
        // Single policy would drop the whole v1.29 line.
        let keep = retain(StreamPolicy::Single, n(1), &imgs);
        assert_eq!(keep.len(), 1);
    }

    #[test]
    fn a_lagging_architecture_keeps_its_newest() {
        let imgs = vec![
            img("3", Arch::X86_64),
            img("2", Arch::X86_64),
            img("1", Arch::Arm64),
            img("2", Arch::Arm64),
            img("1", Arch::X86_64),
        ];
        let keep = retain(StreamPolicy::Single, n(1), &imgs);
        assert_eq!(
            keep,
            [img("3", Arch::X86_64), img("2", Arch::Arm64)]
                .into_iter()
                .collect()
        );
    }
}
