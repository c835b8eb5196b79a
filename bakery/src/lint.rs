//! The lints every image passes before it is sealed, on the complete
//! staged tree of one architecture (recipe files, unpacked inputs and
//! generated files together):
//!
//! - every ELF file is for the image's architecture ([`crate::elf`]);
//! - every `Exec*=` command of every unit file and drop-in (`ExecStart=`,
//!   `ExecStartPre=`, `ExecStartPost=`, `ExecStop=`, `ExecReload=`) exists
//!   in the image or is a known base-OS program ([`BASE_OS_PROGRAMS`]);
//! - every unit named by `Upholds=` exists in the image;
//! - nothing outside `usr/` and `opt/`, and no `usr/sbin`.
//!
//! This module owns those rules and their messages; each finding names the
//! image path and says what is wrong.

use std::fmt;
use std::os::unix::ffi::OsStrExt;

use sysupdate::Arch;

use crate::stage::UNIT_DIRS;
use crate::tree::{DirNode, EntryName, FileContent, Node, StagedTree};

/// Programs every systemd host OS this project targets (Flatcar, Fedora
/// CoreOS, Debian, …) has in `/usr/bin` or `/usr/sbin`: a unit may run them
/// without shipping them.
pub const BASE_OS_PROGRAMS: &[&str] = &[
    "bash",
    "cat",
    "chcon",
    "chmod",
    "chown",
    "cp",
    "echo",
    "env",
    "false",
    "install",
    "ip",
    "iptables",
    "journalctl",
    "kill",
    "ldconfig",
    "ln",
    "loginctl",
    "mkdir",
    "modprobe",
    "mount",
    "mv",
    "nsenter",
    "rm",
    "sh",
    "sleep",
    "sysctl",
    "systemctl",
    "systemd-notify",
    "systemd-tmpfiles",
    "tee",
    "test",
    "touch",
    "true",
    "udevadm",
    "umount",
];

/// Unit settings whose first word is a program to run.
const EXEC_KEYS: [&str; 5] = [
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "ExecStop",
    "ExecReload",
];

/// One problem in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Absolute image path (`/usr/bin/kubelet`).
    pub path: String,
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// The lints an image failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LintError {
    pub arch: Arch,
    pub findings: Vec<Finding>,
}

impl fmt::Display for LintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} image fails {} lint{}:",
            self.arch,
            self.findings.len(),
            if self.findings.len() == 1 { "" } else { "s" }
        )?;
        for x in &self.findings {
            write!(f, "\n  {x}")?;
        }
        Ok(())
    }
}

fn lookup<'a>(root: &'a DirNode, rel: &str) -> Option<&'a Node> {
    let mut dir = root;
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let node = dir.entries.get(&EntryName::new(part.as_bytes()).ok()?)?;
        if i + 1 == parts.len() {
            return Some(node);
        }
        match node {
            Node::Dir(d) => dir = d,
            _ => return None,
        }
    }
    None
}

fn exists(root: &DirNode, rel: &str) -> bool {
    matches!(lookup(root, rel), Some(Node::File(_) | Node::Symlink(_)))
}

fn content(node: &crate::tree::FileNode) -> Option<String> {
    match &node.content {
        FileContent::Bytes(b) => String::from_utf8(b.clone()).ok(),
        FileContent::Path(p) => std::fs::read_to_string(p).ok(),
    }
}

/// Whether the program a unit runs is available: `word` is an absolute
/// path or a bare name (searched in systemd's fixed path).
fn program_available(root: &DirNode, word: &str) -> bool {
    if let Some(abs) = word.strip_prefix('/') {
        // Merged /usr: /bin and /sbin are /usr/bin and /usr/sbin, and on
        // Flatcar /usr/sbin is /usr/bin.
        let mut candidates = vec![abs.to_string()];
        for (from, to) in [
            ("bin/", "usr/bin/"),
            ("sbin/", "usr/sbin/"),
            ("usr/sbin/", "usr/bin/"),
        ] {
            if let Some(rest) = abs.strip_prefix(from) {
                candidates.push(format!("{to}{rest}"));
            }
        }
        if candidates.iter().any(|c| exists(root, c)) {
            return true;
        }
        let base_dir = candidates.iter().any(|c| {
            c.rsplit_once('/')
                .is_some_and(|(d, _)| matches!(d, "usr/bin" | "usr/sbin"))
        });
        let name = abs.rsplit('/').next().unwrap_or(abs);
        base_dir && BASE_OS_PROGRAMS.contains(&name)
    } else {
        ["usr/local/bin", "usr/local/sbin", "usr/bin", "usr/sbin"]
            .iter()
            .any(|d| exists(root, &format!("{d}/{word}")))
            || BASE_OS_PROGRAMS.contains(&word)
    }
}

/// The program of an `Exec*=` value, or `None` if it cannot be checked
/// statically (empty reset, variables, specifiers).
fn exec_program(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches(['-', '@', ':', '+', '!']);
    let word = if let Some(rest) = v.strip_prefix('"') {
        rest.split('"').next().unwrap_or_default()
    } else {
        v.split_whitespace().next().unwrap_or_default()
    };
    if word.is_empty() || word.contains(['$', '%']) {
        return None;
    }
    Some(word.to_string())
}

fn unit_exists(root: &DirNode, unit: &str) -> bool {
    let mut names = vec![unit.to_string()];
    if let Some((stem, suffix)) = unit.rsplit_once('.') {
        if let Some((prefix, _)) = stem.split_once('@') {
            names.push(format!("{prefix}@.{suffix}"));
        }
    }
    UNIT_DIRS
        .iter()
        .any(|d| names.iter().any(|n| exists(root, &format!("{d}/{n}"))))
}

fn check_unit_text(root: &DirNode, path: &str, text: &str, out: &mut Vec<Finding>) {
    // Join continuation lines.
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(line);
            logical.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        logical.push(cur);
    }
    for line in logical {
        let t = line.trim();
        if t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        let Some((key, value)) = t.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if EXEC_KEYS.contains(&key) {
            if let Some(prog) = exec_program(value) {
                if !program_available(root, &prog) {
                    out.push(Finding {
                        path: format!("/{path}"),
                        problem: format!(
                            "{key}= runs {prog}, which is neither in the image nor a known base-OS program; \
                             ship it (check the recipe's placements) or fix the path"
                        ),
                    });
                }
            }
        } else if key == "Upholds" {
            for unit in value.split_whitespace() {
                if !unit_exists(root, unit) {
                    out.push(Finding {
                        path: format!("/{path}"),
                        problem: format!(
                            "Upholds={unit}, but the image has no {unit} in {}; ship the unit or remove the line",
                            UNIT_DIRS.join(" or ")
                        ),
                    });
                }
            }
        }
    }
}

fn walk_units(root: &DirNode, dir: &DirNode, rel: &str, out: &mut Vec<Finding>) {
    for (name, node) in &dir.entries {
        let child = format!("{rel}/{name}");
        match node {
            Node::Dir(d) => walk_units(root, d, &child, out),
            Node::File(f) => {
                let n = name.to_string();
                let is_unit = [
                    ".service", ".socket", ".timer", ".path", ".target", ".mount",
                ]
                .iter()
                .any(|s| n.ends_with(s))
                    || (n.ends_with(".conf") && rel.ends_with(".d"));
                if !is_unit {
                    continue;
                }
                match content(f) {
                    Some(text) => check_unit_text(root, &child, &text, out),
                    None => out.push(Finding {
                        path: format!("/{child}"),
                        problem: "is a unit file but not readable UTF-8 text".into(),
                    }),
                }
            }
            Node::Symlink(_) => {}
        }
    }
}

/// Runs every lint on the tree of the `arch` image.
pub fn lint_image(tree: &StagedTree, arch: Arch) -> Result<(), LintError> {
    let root = &tree.root;
    let mut findings = Vec::new();
    for name in root.entries.keys() {
        if !matches!(name.as_bytes(), b"usr" | b"opt") {
            findings.push(Finding {
                path: format!("/{name}"),
                problem: "only usr/ and opt/ may be shipped (systemd-sysext merges nothing else)"
                    .into(),
            });
        }
    }
    if lookup(root, "usr/sbin").is_some() {
        findings.push(Finding {
            path: "/usr/sbin".into(),
            problem: "must not be shipped (a symlink to bin on Flatcar); place programs in usr/bin"
                .into(),
        });
    }
    match crate::elf::lint_tree(tree, arch) {
        Ok(elf) => findings.extend(elf.into_iter().map(|f| {
            Finding {
                path: String::from_utf8_lossy(f.path.as_os_str().as_bytes()).into_owned(),
                problem: f
                    .to_string()
                    .split_once(": ")
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default(),
            }
        })),
        Err(e) => findings.push(Finding {
            path: e.path.display().to_string(),
            problem: format!("cannot read for the architecture lint: {}", e.source),
        }),
    }
    for dir in UNIT_DIRS {
        if let Some(Node::Dir(d)) = lookup(root, dir) {
            walk_units(root, d, dir, &mut findings);
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(LintError { arch, findings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FileNode, SymlinkNode};

    fn file(content: &[u8]) -> Node {
        Node::File(FileNode {
            mode: 0o644,
            content: FileContent::Bytes(content.to_vec()),
        })
    }

    fn put(root: &mut DirNode, rel: &str, node: Node) {
        let parts: Vec<&str> = rel.split('/').collect();
        let mut dir = root;
        for p in &parts[..parts.len() - 1] {
            let e = dir
                .entries
                .entry(EntryName::new(p.as_bytes()).unwrap())
                .or_insert_with(|| Node::Dir(DirNode::default()));
            dir = match e {
                Node::Dir(d) => d,
                _ => panic!(),
            };
        }
        dir.entries.insert(
            EntryName::new(parts[parts.len() - 1].as_bytes()).unwrap(),
            node,
        );
    }

    fn elf(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[16] = 2;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn good_image_passes_and_bad_ones_are_named() {
        let mut root = DirNode::default();
        put(&mut root, "usr/bin/kubelet", file(&elf(62)));
        put(
            &mut root,
            "usr/lib/systemd/system/kubelet.service",
            file(b"[Service]\nExecStart=/usr/bin/kubelet \\\n  --x\nExecStartPre=-/sbin/modprobe br_netfilter\nExecReload=kill -HUP $MAINPID\n"),
        );
        put(
            &mut root,
            "usr/lib/systemd/system/multi-user.target.d/10-k.conf",
            file(b"[Unit]\nUpholds=kubelet.service\n"),
        );
        put(
            &mut root,
            "usr/local/bin/kubectl",
            Node::Symlink(SymlinkNode {
                target: b"k".to_vec(),
            }),
        );
        let tree = StagedTree {
            root: root.clone(),
            mtime: 0,
        };
        lint_image(&tree, Arch::X86_64).unwrap();
        let e = lint_image(&tree, Arch::Arm64).unwrap_err().to_string();
        assert!(e.contains("/usr/bin/kubelet: ELF 64-bit"), "{e}");

        put(
            &mut root,
            "usr/lib/systemd/system/kubelet.service.d/10-x.conf",
            file(b"[Service]\nExecStart=\nExecStart=/usr/bin/kubelett --x\n"),
        );
        put(
            &mut root,
            "usr/lib/systemd/system/sockets.target.d/10-k.conf",
            file(b"[Unit]\nUpholds=docker.socket\n"),
        );
        put(&mut root, "etc/x", file(b"x"));
        put(&mut root, "usr/sbin/x", file(b"x"));
        let e = lint_image(&StagedTree { root, mtime: 0 }, Arch::X86_64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fails 4 lints"), "{e}");
        assert!(e.contains("/usr/lib/systemd/system/kubelet.service.d/10-x.conf: ExecStart= runs /usr/bin/kubelett"), "{e}");
        assert!(e.contains("Upholds=docker.socket"), "{e}");
        assert!(e.contains("/etc: only usr/"), "{e}");
        assert!(e.contains("/usr/sbin: must not"), "{e}");
    }

    #[test]
    fn exec_programs() {
        assert_eq!(exec_program("-/usr/bin/x a").as_deref(), Some("/usr/bin/x"));
        assert_eq!(
            exec_program("@/usr/bin/x x a").as_deref(),
            Some("/usr/bin/x")
        );
        assert_eq!(exec_program(""), None);
        assert_eq!(exec_program("${X} a"), None);
        assert_eq!(
            exec_program("\"/usr/bin/a b\" c").as_deref(),
            Some("/usr/bin/a b")
        );
        let root = DirNode::default();
        assert!(program_available(&root, "/bin/sh"));
        assert!(program_available(&root, "/usr/sbin/modprobe"));
        assert!(program_available(&root, "mkdir"));
        assert!(!program_available(&root, "/etc/x"));
        assert!(!program_available(&root, "/usr/bin/kubelet"));
    }
}
