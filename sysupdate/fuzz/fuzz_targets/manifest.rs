//! SHA256SUMS manifests: parsing arbitrary bytes never panics, and a parsed
//! manifest renders to bytes that parse back to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sysupdate::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let rendered = m.render();
        let back = Manifest::parse(rendered.as_bytes()).expect("rendered manifest must parse");
        assert_eq!(back, m);
        assert_eq!(back.render(), rendered);
    }
});
