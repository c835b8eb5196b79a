//! Parsing upstream checksum files: a `.sha256`/`.sha256sum` beside a file
//! (a bare hex digest, or `HEX  NAME`), and `sha256sum`-style lists such as
//! k3s's `sha256sum-amd64.txt` or runc's `runc.sha256sum`, where the line is
//! picked by file name. BSD-style `SHA256 (NAME) = HEX` lines are accepted
//! too. Hex digits may be upper or lower case.

use sysupdate::Sha256Digest;

/// A checksum file that does not give a usable digest for a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("{source_name} line {line}: {message}")]
    BadLine {
        source_name: String,
        line: usize,
        message: String,
    },
    #[error(
        "{source_name}: no checksum for {file_name:?} (it lists {listed}); \
         check the recipe's file name or checksum URL"
    )]
    NotListed {
        source_name: String,
        file_name: String,
        listed: String,
    },
    #[error("{source_name}: is empty; expected a sha256 digest")]
    Empty { source_name: String },
    #[error(
        "{source_name}: lists {file_name:?} twice with different digests \
         (lines {first} and {second}); refusing to pick one"
    )]
    Conflicting {
        source_name: String,
        file_name: String,
        first: usize,
        second: usize,
    },
}

/// One parsed line: the digest and the file name, if the line has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumLine {
    pub line: usize,
    pub digest: Sha256Digest,
    pub name: Option<String>,
}

/// Parses every non-empty, non-comment line of a checksum file.
/// `source_name` (usually the URL) is used in error messages.
pub fn parse_checksum_lines(
    text: &str,
    source_name: &str,
) -> Result<Vec<ChecksumLine>, ChecksumError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| ChecksumError::BadLine {
            source_name: source_name.to_string(),
            line: line_no,
            message,
        };
        let (hex, name) = if let Some(rest) = line.strip_prefix("SHA256 (") {
            // BSD style: SHA256 (name) = hex
            let (name, hex) = rest
                .rsplit_once(") = ")
                .ok_or_else(|| bad(format!("expected 'SHA256 (NAME) = HEX', found {line:?}")))?;
            (hex.trim(), Some(name.to_string()))
        } else {
            match line.split_once(char::is_whitespace) {
                None => (line, None),
                Some((hex, name)) => {
                    // GNU style: "HEX  NAME" or "HEX *NAME" (binary mode).
                    let name = name.trim_start();
                    let name = name.strip_prefix('*').unwrap_or(name);
                    (hex, (!name.is_empty()).then(|| name.to_string()))
                }
            }
        };
        let digest: Sha256Digest = hex.to_ascii_lowercase().parse().map_err(|_| {
            bad(format!(
                "{hex:?} is not a sha256 digest (64 hex digits); is this really a sha256 checksum file?"
            ))
        })?;
        out.push(ChecksumLine {
            line: line_no,
            digest,
            name,
        });
    }
    Ok(out)
}

/// Normalises a listed name for comparison: `./x` and `dir/x` both name `x`.
fn base_name(name: &str) -> &str {
    let name = name.strip_prefix("./").unwrap_or(name);
    name.rsplit('/').next().unwrap_or(name)
}

/// Finds the digest of `file_name` in a checksum file.
///
/// A file with a single bare digest (no name) is taken as the digest of
/// `file_name` (the `.sha256`-beside-the-file convention). Otherwise the
/// line whose name (or its last path component) equals `file_name` is used;
/// a single named line for another file is an error, not a silent match.
pub fn find_checksum(
    text: &str,
    file_name: &str,
    source_name: &str,
) -> Result<Sha256Digest, ChecksumError> {
    let lines = parse_checksum_lines(text, source_name)?;
    if lines.is_empty() {
        return Err(ChecksumError::Empty {
            source_name: source_name.to_string(),
        });
    }
    if let [only] = lines.as_slice() {
        if only.name.is_none() {
            return Ok(only.digest);
        }
    }
    let wanted = base_name(file_name);
    let mut found: Option<&ChecksumLine> = None;
    for l in &lines {
        let Some(name) = &l.name else {
            return Err(ChecksumError::BadLine {
                source_name: source_name.to_string(),
                line: l.line,
                message: "a digest without a file name in a file that lists several".into(),
            });
        };
        if name == file_name || base_name(name) == wanted {
            match found {
                Some(prev) if prev.digest != l.digest => {
                    return Err(ChecksumError::Conflicting {
                        source_name: source_name.to_string(),
                        file_name: file_name.to_string(),
                        first: prev.line,
                        second: l.line,
                    })
                }
                Some(_) => {}
                None => found = Some(l),
            }
        }
    }
    found.map(|l| l.digest).ok_or_else(|| {
        let mut names: Vec<&str> = lines.iter().filter_map(|l| l.name.as_deref()).collect();
        let more = names.len().saturating_sub(8);
        names.truncate(8);
        let mut listed = names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            listed.push_str(&format!(" and {more} more"));
        }
        ChecksumError::NotListed {
            source_name: source_name.to_string(),
            file_name: file_name.to_string(),
            listed,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn bare_digest_beside_the_file() {
        // dl.k8s.io's kubectl.sha256 holds the digest with no newline.
        let d = find_checksum(A, "kubectl", "u").unwrap();
        assert_eq!(d.to_hex(), A);
        let d = find_checksum(&format!("{}\n", A.to_uppercase()), "kubectl", "u").unwrap();
        assert_eq!(d.to_hex(), A);
    }

    #[test]
    fn named_digest_beside_the_file_must_name_it() {
        let text = format!("{A}  containerd-static-1.7.0-linux-amd64.tar.gz\n");
        assert_eq!(
            find_checksum(&text, "containerd-static-1.7.0-linux-amd64.tar.gz", "u")
                .unwrap()
                .to_hex(),
            A
        );
        let e = find_checksum(
            &text,
            "containerd-static-1.7.0-linux-arm64.tar.gz",
            "https://x/y.sha256sum",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("https://x/y.sha256sum") && msg.contains("linux-arm64"),
            "{msg}"
        );
    }

    #[test]
    fn picks_the_line_from_a_list() {
        let text =
            format!("{A}  k3s\n{B} *k3s-arm64\n\n# comment\n{A}  ./k3s-airgap-images-amd64.tar\n");
        assert_eq!(find_checksum(&text, "k3s-arm64", "u").unwrap().to_hex(), B);
        assert_eq!(find_checksum(&text, "k3s", "u").unwrap().to_hex(), A);
        assert_eq!(
            find_checksum(&text, "k3s-airgap-images-amd64.tar", "u")
                .unwrap()
                .to_hex(),
            A
        );
        let e = find_checksum(&text, "k3s-s390x", "u").unwrap_err();
        assert!(e.to_string().contains("\"k3s-arm64\""), "{e}");
    }

    #[test]
    fn bsd_style() {
        let text = format!("SHA256 (runc.amd64) = {A}\nSHA256 (runc.arm64) = {B}\n");
        assert_eq!(find_checksum(&text, "runc.arm64", "u").unwrap().to_hex(), B);
    }

    #[test]
    fn rejects_garbage_with_line_numbers() {
        let e = find_checksum(
            &format!("{A}  a\n<html>oops</html>\n"),
            "a",
            "https://h/x.txt",
        )
        .unwrap_err();
        assert!(e.to_string().contains("https://h/x.txt line 2"), "{e}");
        let e = find_checksum("md5deadbeef  a\n", "a", "u").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(matches!(
            find_checksum(" \n", "a", "u"),
            Err(ChecksumError::Empty { .. })
        ));
        let e = find_checksum(&format!("{A}  a\n{B}  a\n"), "a", "u").unwrap_err();
        assert!(
            matches!(
                e,
                ChecksumError::Conflicting {
                    first: 1,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
    }
}
