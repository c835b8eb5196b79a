//! Errors reach the user with each cause once: the `sysext` binary prints
//! the chain of a typed error (`{:#}`), so no error may also repeat its
//! source's text in its own message.

use std::io::Read;
use std::process::Command;

fn sysext_stderr(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(integration_tests::bin("merge-runtime", "sysext"))
        .args(args)
        .output()
        .expect("running sysext");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_of_a_random_file_says_once_what_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.raw");
    let mut bytes = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    // No magic number of a filesystem or GPT at the start.
    bytes[..4].copy_from_slice(b"JUNK");
    std::fs::write(&junk, &bytes).unwrap();

    let (code, err) = sysext_stderr(&["verify".as_ref(), junk.as_os_str()]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {err}");
    let cause = "not a squashfs, erofs or ext4 filesystem";
    assert_eq!(
        err.matches(cause).count(),
        1,
        "the cause must appear exactly once:\n{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    assert!(err.contains("junk.raw"), "{err}");
}

#[test]
fn a_missing_image_says_once_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.raw");
    let (code, err) = sysext_stderr(&["verify".as_ref(), missing.as_os_str()]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {err}");
    // ENOENT's text, as the chain shows it.
    let cause = std::io::Error::from_raw_os_error(2).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
}
