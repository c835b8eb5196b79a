//! Transfer files: parsing never panics, and whatever parses renders to
//! text that parses back to the same value and renders identically.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sysupdate::transfer::Transfer;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.transfer");
    if let Ok(t) = Transfer::parse(text, file) {
        let rendered = t.render();
        let back = Transfer::parse(&rendered, file).expect("rendered transfer must parse");
        assert_eq!(back, t);
        assert_eq!(back.render(), rendered);
    }
});
