//! Mount-table facts and the `.systemd-sysext` marker: reading
//! `/proc/self/mountinfo`, "is this a mount point", "is this one of the
//! merged trees" (the marker's `dev` equals the mount's `st_dev`, exactly
//! as systemd-sysext decides), overlay `lowerdir=` escaping, and writing
//! the marker the way systemd 252 does.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, StatxFlags, CWD};

/// Directory, inside each merged hierarchy, holding the marker files.
pub const MARKER_DIR: &str = ".systemd-sysext";
/// Our extra state file in the marker directory (systemd ignores it).
pub const STATE_FILE: &str = "sysext-forge.json";

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u64,
    pub parent: u64,
    pub major: u32,
    pub minor: u32,
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
    pub super_options: String,
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of a mountinfo file (malformed lines are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.splitn(3, ' ').collect();
        if f.len() < 6 || g.len() < 3 {
            continue;
        }
        let (Ok(id), Ok(parent)) = (f[0].parse(), f[1].parse()) else {
            continue;
        };
        let Some((maj, min)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        out.push(MountInfo {
            id,
            parent,
            major,
            minor,
            root: unescape_octal(f[3]),
            mount_point: PathBuf::from(unescape_octal(f[4])),
            options: f[5].to_string(),
            fs_type: g[0].to_string(),
            source: unescape_octal(g[1]),
            super_options: g[2].to_string(),
        });
    }
    out
}

/// The calling thread's mount table.
pub fn mountinfo() -> io::Result<Vec<MountInfo>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/thread-self/mountinfo",
    )?))
}

/// True when `path` (not following a final symlink) is the root of a mount.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let st = rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    let mask = rustix::fs::StatxAttributes::MOUNT_ROOT;
    if st.stx_attributes_mask.contains(mask) {
        return Ok(st.stx_attributes.contains(mask));
    }
    // Kernels before 5.8: compare with the parent.
    let parent = path.join("..");
    let pst = rustix::fs::statx(CWD, &parent, AtFlags::empty(), StatxFlags::BASIC_STATS)?;
    Ok(st.stx_dev_major != pst.stx_dev_major
        || st.stx_dev_minor != pst.stx_dev_minor
        || st.stx_ino == pst.stx_ino)
}

/// `st_dev` of `path` as (major, minor), not following a final symlink.
pub fn dev_of(path: &Path) -> io::Result<(u32, u32)> {
    let st = rustix::fs::statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    Ok((st.stx_dev_major, st.stx_dev_minor))
}

/// Parses `MAJOR:MINOR` (surrounding whitespace allowed, as
/// `read_one_line_file` + `parse_devnum` accept).
pub fn parse_devnum(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// systemd-sysext's `is_our_mount_point()`: `path` is a mount point and its
/// `.systemd-sysext/dev` names the device it is on. `Ok(false)` for a
/// missing path, a plain directory or an unpacked copy of a merged tree.
pub fn is_merged_tree(path: &Path) -> io::Result<bool> {
    match is_mount_point(path) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let dev_file = path.join(MARKER_DIR).join("dev");
    let text = match std::fs::read_to_string(&dev_file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let first = text.lines().next().unwrap_or("");
    let Some(dev) = parse_devnum(first) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: expected MAJOR:MINOR, found {first:?}",
                dev_file.display()
            ),
        ));
    };
    Ok(dev_of(path)? == dev)
}

/// Escapes a layer path for `lowerdir=` like systemd's
/// `shell_escape(path, ",:")`: a backslash before `\`, `,` and `:`.
pub fn escape_layer(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The overlay option string for `layers` (top first).
pub fn lowerdir_option(layers: &[PathBuf]) -> String {
    let escaped: Vec<String> = layers.iter().map(|l| escape_layer(l)).collect();
    format!("lowerdir={}", escaped.join(":"))
}

/// The `extensions` marker content exactly as systemd 252 writes it:
/// names joined by newlines, plus the trailing newline `write_string_file`
/// adds.
pub fn extensions_marker(names: &[String]) -> String {
    let mut s = names.join("\n");
    s.push('\n');
    s
}

/// The `dev` marker content exactly as systemd 252 writes it.
pub fn dev_marker((major, minor): (u32, u32)) -> String {
    format!("{major}:{minor}\n")
}

/// Reads the `extensions` marker of a merged tree.
pub fn read_extensions_marker(tree: &Path) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(tree.join(MARKER_DIR).join("extensions"))?;
    Ok(text
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(escape_layer(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
        assert_eq!(
            lowerdir_option(&[
                PathBuf::from("/m"),
                PathBuf::from("/e:1"),
                PathBuf::from("/usr")
            ]),
            "lowerdir=/m:/e\\:1:/usr"
        );
    }

    #[test]
    fn markers_match_systemd_bytes() {
        assert_eq!(extensions_marker(&["a".into(), "b".into()]), "a\nb\n");
        assert_eq!(dev_marker((0, 42)), "0:42\n");
        assert_eq!(parse_devnum("0:42\n"), Some((0, 42)));
        assert_eq!(parse_devnum("x"), None);
    }

    #[test]
    fn parses_mountinfo_lines() {
        let t = "95 63 0:42 / /tmp/r\\040x/usr ro,relatime shared:2 - overlay sysext ro,lowerdir=/a:/b\n\
                 bad line\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/tmp/r x/usr"));
        assert_eq!((m[0].major, m[0].minor), (0, 42));
        assert_eq!(m[0].fs_type, "overlay");
        assert_eq!(m[0].source, "sysext");
        assert_eq!(m[0].super_options, "ro,lowerdir=/a:/b");
    }

    #[test]
    fn plain_directory_is_not_merged() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join(MARKER_DIR)).unwrap();
        std::fs::write(t.path().join(MARKER_DIR).join("dev"), "0:1\n").unwrap();
        assert!(!is_merged_tree(t.path()).unwrap());
        assert!(!is_merged_tree(&t.path().join("missing")).unwrap());
    }
}
