//! Property tests: rendering then parsing gives back the same value for
//! transfer files, manifests and patterns; parsers never panic on arbitrary
//! input; version ordering is a total order consistent with systemd's
//! comparison.

use std::path::Path;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use sysupdate::candidates;
use sysupdate::manifest::{Manifest, ManifestName};
use sysupdate::pattern::{Captures, MatchPattern, PatternTemplate};
use sysupdate::transfer::{
    PathRelativeTo, Source, SourceType, Target, TargetType, Transfer, TransferSection,
};
use sysupdate::version::compare;
use sysupdate::{Date, Sha256Digest, Version};

fn version() -> impl Strategy<Value = Version> {
    "[A-Za-z0-9][A-Za-z0-9.,_+~^-]{0,12}"
        .prop_map(|s| Version::new(s).expect("valid by construction"))
}

fn sysupdate_version() -> impl Strategy<Value = Version> {
    "[A-Za-z0-9][A-Za-z0-9.,_+-]{0,12}"
        .prop_map(|s| Version::new(s).expect("valid by construction"))
}

fn template() -> impl Strategy<Value = PatternTemplate> {
    ("[a-z][a-z0-9.-]{0,8}", prop::bool::ANY, "[.][a-z]{1,4}").prop_filter_map(
        "valid template",
        |(pre, arch, ext)| {
            let text = if arch {
                format!("{pre}_@v_%a{ext}")
            } else {
                format!("{pre}_@v{ext}")
            };
            PatternTemplate::new(text).ok()
        },
    )
}

fn abs_path() -> impl Strategy<Value = String> {
    vec("[a-z0-9_.-]{1,8}", 1..4).prop_filter_map("normalized", |parts| {
        if parts.iter().any(|p| p == "." || p == "..") {
            None
        } else {
            Some(format!("/{}", parts.join("/")))
        }
    })
}

fn transfer() -> impl Strategy<Value = Transfer> {
    let section = (
        option::of(version()),
        vec(
            prop_oneof![
                version().prop_map(|v| v.to_string()),
                Just("%A".to_string())
            ],
            0..3,
        ),
        option::of(any::<bool>()),
    )
        .prop_map(|(min_version, protect_versions, verify)| TransferSection {
            min_version,
            protect_versions,
            verify,
        });
    let source = (
        prop_oneof![Just(SourceType::UrlFile), Just(SourceType::RegularFile)],
        abs_path(),
        vec(template(), 1..3),
    )
        .prop_map(|(kind, path, mut patterns)| {
            patterns.dedup();
            let path = if kind == SourceType::UrlFile {
                format!("https://example.org{path}/")
            } else {
                path
            };
            Source {
                kind,
                path,
                path_relative_to: None,
                patterns,
            }
        });
    let target = (
        option::of(Just(TargetType::RegularFile)),
        abs_path(),
        option::of(prop_oneof![
            Just(PathRelativeTo::Root),
            Just(PathRelativeTo::Boot)
        ]),
        vec(template(), 0..2),
        option::of(abs_path()),
        option::of(2u64..100),
        option::of(any::<bool>()),
        option::of(0u32..0o7777),
        (
            option::of(any::<u64>()),
            option::of(any::<u64>()),
            option::of(any::<bool>()),
        ),
    )
        .prop_map(
            |(kind, path, relto, mut patterns, link, imax, ro, mode, (tl, td, rt))| {
                patterns.dedup();
                let mut t = Target::new(kind, path);
                t.path_relative_to = relto;
                t.patterns = patterns;
                t.current_symlink = link;
                t.instances_max = imax;
                t.read_only = ro;
                t.mode = mode;
                t.tries_left = tl;
                t.tries_done = td;
                t.remove_temporary = rt;
                t
            },
        );
    (section, source, target).prop_map(|(transfer, source, target)| Transfer {
        transfer,
        source,
        target,
    })
}

fn digest() -> impl Strategy<Value = Sha256Digest> {
    any::<[u8; 32]>().prop_map(Sha256Digest::from_bytes)
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        btree_map("[A-Za-z0-9][A-Za-z0-9 ._+~^,@%-]{0,30}", digest(), 0..8),
        option::of(0i64..40_000),
    )
        .prop_map(|(entries, bb)| {
            let mut m = Manifest::new();
            for (n, d) in entries {
                if let Ok(name) = ManifestName::new(n) {
                    m.insert(name, d);
                }
            }
            m.set_best_before(bb.and_then(Date::from_unix_days));
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn transfer_round_trips(t in transfer()) {
        let text = t.render();
        let back = Transfer::parse(&text, Path::new("gen.transfer"));
        prop_assert_eq!(back.as_ref(), Ok(&t), "rendered:\n{}", text);
        prop_assert_eq!(back.map(|b| b.render()), Ok(text));
    }

    #[test]
    fn manifest_round_trips(m in manifest()) {
        let text = m.render();
        prop_assert_eq!(Manifest::parse(text.as_bytes()), Ok(m));
    }

    #[test]
    fn manifest_reparse_is_stable(bytes in vec(any::<u8>(), 0..400)) {
        if let Ok(m) = Manifest::parse(&bytes) {
            prop_assert_eq!(Manifest::parse(m.render().as_bytes()), Ok(m));
        }
    }

    #[test]
    fn transfer_parser_total(text in "(\\[(Transfer|Source|Target|X)\\]\n|[A-Za-z]{1,14}=[ -~]{0,20}\n|#[ -~]{0,10}\n|\n){0,14}") {
        if let Ok(t) = Transfer::parse(&text, Path::new("fuzz.conf")) {
            prop_assert_eq!(Transfer::parse(&t.render(), Path::new("fuzz.conf")), Ok(t));
        }
    }

    #[test]
    fn pattern_render_match_round_trip(
        pre in "[a-z]{1,6}[-_.]",
        sep in "[-_.]{1,2}[a-z]{0,2}",
        v in sysupdate_version(),
        size in any::<u64>().prop_filter("not max", |s| *s != u64::MAX),
        use_size in any::<bool>(),
    ) {
        let text = if use_size { format!("{pre}@v{sep}@s.raw") } else { format!("{pre}@v{sep}raw") };
        let p = MatchPattern::parse(&text).unwrap();
        let mut c = Captures::version(v);
        if use_size { c.size = Some(size); }
        match p.render(&c) {
            Ok(name) => prop_assert_eq!(p.matches(&name), Some(c)),
            Err(e) => prop_assert!(e.to_string().contains("would not match"), "{}", e),
        }
    }

    #[test]
    fn pattern_parser_total(text in "[ -~]{0,24}", name in "[ -~]{0,24}") {
        if let Ok(p) = MatchPattern::parse(&text) {
            if let Some(c) = p.matches(&name) {
                prop_assert!(c.version.is_some());
            }
        }
        let _ = PatternTemplate::new(text);
    }

    #[test]
    fn minor_stream_never_jumps_minor(
        entries in vec((1u8..4, 0u16..40, prop_oneof![Just("x86-64"), Just("arm64")]), 1..30),
        minor in 1u8..4,
    ) {
        let mut m = Manifest::new();
        for (mi, patch, arch) in &entries {
            let name = format!("kubernetes-v1.{mi}.{patch}-{arch}.raw");
            m.insert(ManifestName::new(name).unwrap(), Sha256Digest::from_bytes([*mi; 32]));
        }
        let p = PatternTemplate::new(format!("kubernetes-v1.{minor}.@v-%a.raw"))
            .unwrap()
            .for_arch(sysupdate::Arch::X86_64)
            .unwrap();
        let best = candidates::newest(&m, &[p], &candidates::Policy::default()).unwrap();
        let expected = entries
            .iter()
            .filter(|(mi, _, arch)| *mi == minor && *arch == "x86-64")
            .map(|(_, patch, _)| *patch)
            .max();
        prop_assert_eq!(best.map(|c| c.version.to_string()), expected.map(|p| p.to_string()));
    }

    #[test]
    fn version_order_is_consistent(a in version(), b in version(), c in version()) {
        let (sa, sb) = (a.as_str(), b.as_str());
        prop_assert_eq!(compare(sa, sb), compare(sb, sa).reverse());
        prop_assert_eq!(compare(sa, sa), std::cmp::Ordering::Equal);
        if a <= b && b <= c { prop_assert!(a <= c); }
        if compare(sa, sb).is_lt() { prop_assert!(a < b); }
    }
}
