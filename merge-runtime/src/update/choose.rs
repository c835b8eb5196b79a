//! Which version to install, without side effects: given the versions
//! every transfer of a component offers, the current version, the
//! `MinVersion=` floors and the versions recorded as failed (health check,
//! rollback, or refused by the node's image policy), pick the newest
//! acceptable one, and say which newer versions were skipped and why.

use std::cmp::Ordering;

use sysupdate::Version;

use super::report::SkippedVersion;
use super::state::FailedVersion;

/// What [`choose`] works from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Versions offered by every transfer, newest first.
    pub offered: &'a [Version],
    /// The version installed and current, if any.
    pub current: Option<&'a Version>,
    /// `MinVersion=` of each transfer that sets it.
    pub min_versions: &'a [&'a Version],
    /// Versions recorded as failed, with why.
    pub failed: &'a [FailedVersion],
    /// `--retry-failed`: consider failed versions again.
    pub retry_failed: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The version to install; `None` when up to date.
    pub install: Option<Version>,
    /// The newest version offered.
    pub newest: Option<Version>,
    /// Versions newer than the current one skipped because they failed
    /// before, newest first.
    pub skipped: Vec<SkippedVersion>,
}

/// Picks the version to install (see the module doc).
pub fn choose(i: Inputs) -> Choice {
    let newer = |v: &Version| i.current.is_none_or(|c| v.cmp_uapi(c) == Ordering::Greater);
    let min_ok = |v: &Version| {
        i.min_versions
            .iter()
            .all(|m| v.cmp_uapi(m) != Ordering::Less)
    };
    let mut skipped = Vec::new();
    let mut chosen = None;
    for v in i.offered.iter().filter(|v| min_ok(v)) {
        let failed = i.failed.iter().find(|f| f.version.uapi_eq(v));
        match failed {
            Some(f) if !i.retry_failed => {
                // Failed versions older than what is current are irrelevant.
                if newer(v) {
                    skipped.push(SkippedVersion {
                        version: v.to_string(),
                        reason: f.reason.clone(),
                    });
                }
            }
            _ => {
                chosen = Some(v.clone());
                break;
            }
        }
    }
    Choice {
        install: chosen.filter(|v| newer(v)),
        newest: i.offered.first().cloned(),
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    fn vs(list: &[&str]) -> Vec<Version> {
        list.iter().map(|s| v(s)).collect()
    }

    fn failed(ver: &str, why: &str) -> FailedVersion {
        FailedVersion {
            version: v(ver),
            reason: why.into(),
            at_usec: 0,
        }
    }

    fn pick(offered: &[&str], current: Option<&str>, failed: &[FailedVersion]) -> Choice {
        let offered = vs(offered);
        let current = current.map(v);
        choose(Inputs {
            offered: &offered,
            current: current.as_ref(),
            min_versions: &[],
            failed,
            retry_failed: false,
        })
    }

    #[test]
    fn newer_is_installed() {
        let c = pick(&["3", "2", "1"], Some("2"), &[]);
        assert_eq!(c.install, Some(v("3")));
        assert_eq!(c.newest, Some(v("3")));
        assert!(c.skipped.is_empty());
        // Nothing installed yet: the newest.
        assert_eq!(pick(&["3", "2"], None, &[]).install, Some(v("3")));
    }

    #[test]
    fn equal_or_older_is_up_to_date() {
        assert_eq!(pick(&["2", "1"], Some("2"), &[]).install, None);
        assert_eq!(pick(&["1"], Some("2"), &[]).install, None);
        // UAPI order, not string order.
        assert_eq!(pick(&["1.9"], Some("1.10"), &[]).install, None);
        assert_eq!(pick(&["1.10"], Some("1.9"), &[]).install, Some(v("1.10")));
        assert_eq!(pick(&[], Some("1"), &[]).newest, None);
    }

    #[test]
    fn failed_before_is_skipped_with_its_reason() {
        let f = [failed("3", "health check failed: exit 1")];
        let c = pick(&["3", "2", "1"], Some("1"), &f);
        assert_eq!(c.install, Some(v("2")));
        assert_eq!(
            c.skipped,
            [SkippedVersion {
                version: "3".into(),
                reason: "health check failed: exit 1".into()
            }]
        );
        // The only newer one failed: up to date, still naming it.
        let c = pick(&["3", "2"], Some("2"), &f);
        assert_eq!(c.install, None);
        assert_eq!(c.skipped.len(), 1);
        // A failed version older than the current one is not mentioned.
        let c = pick(&["3", "2"], Some("3"), &[failed("2", "x")]);
        assert!(c.skipped.is_empty());
    }

    #[test]
    fn refused_by_policy_is_a_failed_version_until_retried() {
        let f = [failed("4", "refused by this node's image policy: unsigned")];
        let offered = vs(&["4", "3"]);
        let current = v("1");
        let mut i = Inputs {
            offered: &offered,
            current: Some(&current),
            min_versions: &[],
            failed: &f,
            retry_failed: false,
        };
        let c = choose(i);
        assert_eq!(c.install, Some(v("3")));
        assert!(c.skipped[0].reason.contains("image policy"));
        i.retry_failed = true;
        let c = choose(i);
        assert_eq!(c.install, Some(v("4")));
        assert!(c.skipped.is_empty());
    }

    #[test]
    fn min_version_pins_a_floor() {
        let offered = vs(&["4", "3", "2"]);
        let floor = v("4");
        let f = [failed("4", "refused")];
        let c = choose(Inputs {
            offered: &offered,
            current: None,
            min_versions: &[&floor],
            failed: &f,
            retry_failed: false,
        });
        // 4 failed and 3, 2 are below the floor: nothing.
        assert_eq!(c.install, None);
        assert_eq!(c.skipped.len(), 1);
        let floor = v("3");
        let c = choose(Inputs {
            offered: &offered,
            current: None,
            min_versions: &[&floor],
            failed: &[],
            retry_failed: false,
        });
        assert_eq!(c.install, Some(v("4")));
    }
}
