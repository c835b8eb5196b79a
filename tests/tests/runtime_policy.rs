//! The verification policy: `signed` refuses anything without a valid
//! signature by a `verity.d` certificate, `verity` anything without a root
//! hash, `any` merges unprotected images too; the policy file under
//! `--root` applies when `--policy` is not given, and a bad one is an
//! error naming file and line.

mod runtime_common;

use std::collections::BTreeMap;
use std::fs;

use merge_runtime::runtime::{Outcome, Stage};
use merge_runtime::verify::PolicySource;
use merge_runtime::Policy;
use runtime_common::*;

struct Set {
    host: Host,
    _work: tempfile::TempDir,
}

/// signed (DDI, trusted), verity-only (bare + sidecars), plain (bare
/// squashfs) and dir (directory).
fn set() -> Set {
    let host = Host::new();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let key = openssl_key(w, "vendor");
    trust(&host, &key, "vendor");
    let fits = "ID=debian\nVERSION_ID=12\n";
    let ext = host.p("var/lib/extensions");
    let fs_signed = w.join("signed.squashfs");
    squashfs_ext(
        w,
        &fs_signed,
        "signed",
        fits,
        &[("usr/share/signed.txt", "s\n")],
    );
    ddi(&fs_signed, &ext.join("signed.raw"), Some(&key), w);
    let verity = ext.join("verityonly.raw");
    squashfs_ext(
        w,
        &verity,
        "verityonly",
        fits,
        &[("usr/share/verityonly.txt", "v\n")],
    );
    sidecars(&verity);
    squashfs_ext(
        w,
        &ext.join("plain.raw"),
        "plain",
        fits,
        &[("usr/share/plain.txt", "p\n")],
    );
    ext_tree(
        &host.p("etc/extensions/dir"),
        "dir",
        fits,
        &[("usr/share/dir.txt", "d\n")],
    );
    Set { host, _work: work }
}

fn outcomes(r: &merge_runtime::runtime::MergeReport) -> BTreeMap<String, Outcome> {
    r.images
        .iter()
        .map(|i| (i.name.clone(), i.outcome.clone()))
        .collect()
}

fn refused_by_policy(o: &Outcome, words: &str) -> bool {
    matches!(o, Outcome::Refused { stage: Stage::Policy, reason } if reason.contains(words))
}

#[test]
fn signed_policy_refuses_unsigned_images() {
    if !in_private_ns("signed_policy_refuses_unsigned_images") {
        return;
    }
    let s = set();
    let mut opts = s.host.options();
    opts.policy = Some(Policy::Signed);
    let r = merge_runtime::merge(&opts).unwrap();
    let o = outcomes(&r);
    assert_eq!(r.extensions, ["signed"], "{o:?}");
    for name in ["verityonly", "plain", "dir"] {
        assert!(
            refused_by_policy(&o[name], "policy signed requires a signed root hash"),
            "{name}: {:?}",
            o[name]
        );
    }
    assert!(!s.host.p("usr/share/plain.txt").exists());
    assert_eq!(
        fs::read_to_string(s.host.p("usr/share/signed.txt")).unwrap(),
        "s\n"
    );
    merge_runtime::unmerge(&opts).unwrap();

    // `verity`: root hash needed, signature not.
    opts.policy = Some(Policy::Verity);
    let r = merge_runtime::merge(&opts).unwrap();
    let o = outcomes(&r);
    assert_eq!(r.extensions, ["signed", "verityonly"], "{o:?}");
    assert!(
        refused_by_policy(&o["plain"], "requires a root hash"),
        "{:?}",
        o["plain"]
    );
    assert!(
        refused_by_policy(&o["dir"], "requires a root hash"),
        "{:?}",
        o["dir"]
    );
    merge_runtime::unmerge(&opts).unwrap();
}

#[test]
fn any_policy_merges_unsigned_images() {
    if !in_private_ns("any_policy_merges_unsigned_images") {
        return;
    }
    let s = set();
    let mut opts = s.host.options();
    opts.policy = Some(Policy::Any);
    let r = merge_runtime::merge(&opts).unwrap();
    assert_eq!(
        r.extensions,
        ["dir", "plain", "signed", "verityonly"],
        "{:?}",
        outcomes(&r)
    );
    for f in ["plain", "dir", "signed", "verityonly"] {
        assert!(s.host.p(&format!("usr/share/{f}.txt")).exists(), "{f}");
    }
    merge_runtime::unmerge(&opts).unwrap();
}

#[test]
fn policy_file_under_root_applies() {
    if !in_private_ns("policy_file_under_root_applies") {
        return;
    }
    let s = set();
    let opts = s.host.options(); // no --policy
    fs::create_dir_all(s.host.p("etc/sysext")).unwrap();
    let conf = s.host.p("etc/sysext/policy.conf");
    fs::write(&conf, "# site policy\npolicy = signed\n").unwrap();
    let r = merge_runtime::merge(&opts).unwrap();
    assert_eq!(r.extensions, ["signed"]);
    assert_eq!(r.policy.policy, Policy::Signed);
    let st = merge_runtime::status(&opts).unwrap();
    assert_eq!(
        st.policy.source,
        PolicySource::File {
            path: fs::canonicalize(&conf).unwrap()
        }
    );
    merge_runtime::unmerge(&opts).unwrap();

    // --policy wins over the file.
    let mut any = opts.clone();
    any.policy = Some(Policy::Any);
    assert_eq!(merge_runtime::merge(&any).unwrap().extensions.len(), 4);
    merge_runtime::unmerge(&any).unwrap();

    // A bad file is an error that says where.
    fs::write(&conf, "policy = signed\npolicy = strict\n").unwrap();
    let e = merge_runtime::merge(&opts).unwrap_err().to_string();
    assert!(
        e.contains("policy.conf:2") && e.contains("strict") && e.contains("signed, verity or any"),
        "{e}"
    );
    assert!(mounts_below(s.host.path()).is_empty());
}
