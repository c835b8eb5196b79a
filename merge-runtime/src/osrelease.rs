//! Reading os-release and extension-release files from disk. Their syntax
//! (systemd's env-file grammar) and meaning live in
//! [`sysupdate::extension`]; this module only turns bytes on disk into an
//! [`OsRelease`], refusing a file where systemd refuses it.

use std::io;
use std::path::Path;

use sysupdate::extension::OsRelease;

/// Parses the contents of `path` as systemd does. A file systemd ignores
/// as a whole (a NUL byte, an assignment that is not UTF-8) is an
/// `InvalidData` error naming the file and line.
pub fn parse(path: &Path, bytes: &[u8]) -> io::Result<OsRelease> {
    OsRelease::parse_bytes_lenient(bytes)
        .map(|l| l.release)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
}

/// Reads and parses `path` (see [`parse`]).
pub fn read(path: &Path) -> io::Result<OsRelease> {
    parse(path, &std::fs::read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_file_and_line() {
        let e = parse(Path::new("/x/os-release"), b"ID=a\nB=\xff\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().starts_with("/x/os-release: line 2: "), "{e}");
        let f = parse(Path::new("x"), b"ID=a\nnonsense\n").unwrap();
        assert_eq!(f.get("ID"), Some("a"));
    }
}
