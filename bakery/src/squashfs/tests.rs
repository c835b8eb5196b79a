//! Unit tests of the squashfs writer (format details checked by hand; the
//! real-tool oracles live in tests/tests/squashfs.rs).
