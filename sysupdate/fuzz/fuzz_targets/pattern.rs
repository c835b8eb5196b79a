//! Match patterns: the input is split at the first NUL into a pattern and a
//! name. Parsing and matching never panic; a match renders back to a name
//! that matches with the same captures, or render says why it cannot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sysupdate::pattern::{MatchPattern, PatternError, PatternTemplate};
use sysupdate::Arch;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = text.split_once('\0').unwrap_or((text, ""));
    if let Ok(t) = PatternTemplate::new(pattern) {
        let _ = t.for_arch(Arch::Arm64);
    }
    let Ok(p) = MatchPattern::parse(pattern) else {
        return;
    };
    if let Some(c) = p.matches(name) {
        assert!(c.version.is_some(), "a match always captures @v");
        // Rendering canonicalises values (e.g. `yes` -> `1`), which can make
        // a later literal appear inside a value; render refuses that case.
        match p.render(&c) {
            Ok(rendered) => assert_eq!(p.matches(&rendered), Some(c)),
            Err(e) => assert!(matches!(e, PatternError::Ambiguous { .. }), "{e}"),
        }
    }
});
