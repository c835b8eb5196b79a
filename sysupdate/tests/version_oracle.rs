//! Checks `sysupdate::version::compare` against systemd itself:
//! `systemd-analyze compare-versions A B` (systemd >= 252) exits 0 for
//! `==`, 11 for `>`, 12 for `<`. Random strings over the version alphabet
//! plus separators systemd ignores; the oracle must agree on every one.

use std::cmp::Ordering;
use std::process::Command;

use proptest::prelude::*;
use sysupdate::version::compare;

fn systemd_compare(a: &str, b: &str) -> Ordering {
    let status = Command::new("systemd-analyze")
        .args(["compare-versions", "--", a, b])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("systemd-analyze (systemd >= 252) must be installed for this test");
    match status.code() {
        Some(0) => Ordering::Equal,
        Some(11) => Ordering::Greater,
        Some(12) => Ordering::Less,
        other => panic!("systemd-analyze compare-versions {a:?} {b:?}: unexpected exit {other:?}"),
    }
}

fn version_text() -> impl Strategy<Value = String> {
    // Weighted towards digits and separators, where the rules are subtle.
    proptest::string::string_regex("[0-9a-c.~^_+-]{0,10}").expect("valid regex")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_systemd_analyze(a in version_text(), b in version_text()) {
        prop_assert_eq!(compare(&a, &b), systemd_compare(&a, &b), "a={:?} b={:?}", a, b);
    }

    #[test]
    fn agrees_on_related_pairs(a in version_text(), suffix in "[0-9a-b.~^-]{0,3}") {
        let b = format!("{a}{suffix}");
        prop_assert_eq!(compare(&a, &b), systemd_compare(&a, &b), "a={:?} b={:?}", a, b);
    }
}

#[test]
fn agrees_on_kubernetes_family_versions() {
    let vs = [
        "v1.30.0",
        "v1.30.1",
        "v1.30.10",
        "v1.30.2+k3s1",
        "v1.30.2+k3s2",
        "v1.30.2+rke2r1",
        "v1.31.0~rc1",
        "v1.31.0",
        "1.30.0-rc.1",
        "1.30.0",
        "01.30",
        "1.030",
        "1.30^p1",
    ];
    for a in vs {
        for b in vs {
            assert_eq!(compare(a, b), systemd_compare(a, b), "{a} vs {b}");
        }
    }
}
