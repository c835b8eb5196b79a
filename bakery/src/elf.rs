//! ELF header reading and the "every binary matches the target
//! architecture" lint: an arm64 `kubelet` in an x86-64 image is caught
//! before sealing, not on a node. Only the identification bytes and
//! `e_type`/`e_machine` are read; files that do not start with `\x7fELF`
//! are not binaries and are ignored.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sysupdate::Arch;

use crate::tree::{DirNode, FileContent, Node, StagedTree};

const MAGIC: &[u8; 4] = b"\x7fELF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    Elf32,
    Elf64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

/// The fields of an ELF header that say what machine a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfHeader {
    pub class: ElfClass,
    pub endian: Endian,
    /// `e_type`: 1 relocatable, 2 executable, 3 shared object/PIE, 4 core.
    pub e_type: u16,
    pub machine: u16,
}

/// A file that starts like an ELF file but whose header is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ELF header: {0}")]
pub struct MalformedElf(pub String);

impl ElfHeader {
    /// Parses the start of a file. `Ok(None)` means "not an ELF file".
    pub fn parse(bytes: &[u8]) -> Result<Option<ElfHeader>, MalformedElf> {
        if bytes.len() < 4 || &bytes[..4] != MAGIC {
            return Ok(None);
        }
        if bytes.len() < 20 {
            return Err(MalformedElf(format!(
                "only {} bytes, the header needs at least 20",
                bytes.len()
            )));
        }
        let class = match bytes[4] {
            1 => ElfClass::Elf32,
            2 => ElfClass::Elf64,
            c => return Err(MalformedElf(format!("unknown EI_CLASS {c}"))),
        };
        let endian = match bytes[5] {
            1 => Endian::Little,
            2 => Endian::Big,
            d => return Err(MalformedElf(format!("unknown EI_DATA {d}"))),
        };
        let u16_at = |i: usize| {
            let b = [bytes[i], bytes[i + 1]];
            match endian {
                Endian::Little => u16::from_le_bytes(b),
                Endian::Big => u16::from_be_bytes(b),
            }
        };
        Ok(Some(ElfHeader {
            class,
            endian,
            e_type: u16_at(16),
            machine: u16_at(18),
        }))
    }

    /// The systemd architecture this header is for, if it is one we know.
    pub fn arch(&self) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| self.matches(*a))
    }

    /// Whether a binary with this header runs on `arch`.
    pub fn matches(&self, arch: Arch) -> bool {
        let (class, endian) = expected_class_endian(arch);
        self.machine == arch.elf_machine() && self.class == class && self.endian == endian
    }
}

fn expected_class_endian(arch: Arch) -> (ElfClass, Endian) {
    match arch {
        Arch::X86 | Arch::Arm => (ElfClass::Elf32, Endian::Little),
        Arch::S390x => (ElfClass::Elf64, Endian::Big),
        Arch::X86_64 | Arch::Arm64 | Arch::Ppc64Le | Arch::Riscv64 | Arch::Loongarch64 => {
            (ElfClass::Elf64, Endian::Little)
        }
    }
}

/// A human name for an `e_machine` value.
pub fn machine_name(machine: u16) -> &'static str {
    match machine {
        0 => "no machine",
        2 => "SPARC",
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        43 => "SPARC V9",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "unknown machine",
    }
}

impl fmt::Display for ElfHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.class {
            ElfClass::Elf32 => "32",
            ElfClass::Elf64 => "64",
        };
        let order = match self.endian {
            Endian::Little => "LSB",
            Endian::Big => "MSB",
        };
        write!(
            f,
            "ELF {bits}-bit {order} for {} (e_machine {})",
            machine_name(self.machine),
            self.machine
        )
    }
}

/// Reads the ELF header of a file; `Ok(None)` if it is not an ELF file.
pub fn read_header(path: &Path) -> io::Result<Option<Result<ElfHeader, MalformedElf>>> {
    let mut buf = Vec::with_capacity(64);
    File::open(path)?.take(64).read_to_end(&mut buf)?;
    Ok(ElfHeader::parse(&buf).transpose())
}

/// Why a file does not belong in an image for the target architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchProblem {
    WrongArch(ElfHeader),
    Malformed(MalformedElf),
}

/// One finding of the architecture lint, with the path inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchFinding {
    pub path: PathBuf,
    pub target: Arch,
    pub problem: ArchProblem,
}

impl fmt::Display for ArchFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            ArchProblem::WrongArch(h) => write!(
                f,
                "{}: {h}, but the image is for {} (e_machine {}); the recipe fetched the wrong \
                 architecture's build: check its architecture map",
                self.path.display(),
                self.target,
                self.target.elf_machine()
            ),
            ArchProblem::Malformed(m) => write!(f, "{}: {m}", self.path.display()),
        }
    }
}

/// Checks one file's bytes (or their first 64 bytes).
pub fn check_bytes(path: &Path, head: &[u8], target: Arch) -> Option<ArchFinding> {
    let problem = match ElfHeader::parse(head) {
        Ok(None) => return None,
        Ok(Some(h)) if h.matches(target) => return None,
        Ok(Some(h)) => ArchProblem::WrongArch(h),
        Err(m) => ArchProblem::Malformed(m),
    };
    Some(ArchFinding {
        path: path.to_path_buf(),
        target,
        problem,
    })
}

/// An I/O error while linting, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot read for the architecture lint: {source}")]
pub struct LintIoError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn head_of(path: &Path) -> Result<Vec<u8>, LintIoError> {
    let mut buf = Vec::with_capacity(64);
    File::open(path)
        .and_then(|f| f.take(64).read_to_end(&mut buf))
        .map_err(|source| LintIoError {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf)
}

/// Lints every regular file under `root` (symlinks are not followed).
/// Finding paths are relative to `root`, sorted.
pub fn lint_dir(root: &Path, target: Arch) -> Result<Vec<ArchFinding>, LintIoError> {
    let mut findings = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|source| LintIoError {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LintIoError {
                path: dir.clone(),
                source,
            })?;
            let ty = entry.file_type().map_err(|source| LintIoError {
                path: entry.path(),
                source,
            })?;
            let rel_child = rel.join(entry.file_name());
            if ty.is_dir() {
                stack.push(rel_child);
            } else if ty.is_file() {
                if let Some(f) = check_bytes(&rel_child, &head_of(&entry.path())?, target) {
                    findings.push(f);
                }
            }
        }
    }
    findings.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(findings)
}

/// Lints every regular file of a staged tree. Finding paths are absolute
/// image paths (`/usr/bin/kubelet`).
pub fn lint_tree(tree: &StagedTree, target: Arch) -> Result<Vec<ArchFinding>, LintIoError> {
    let mut findings = Vec::new();
    lint_dir_node(&tree.root, &PathBuf::from("/"), target, &mut findings)?;
    Ok(findings)
}

fn lint_dir_node(
    dir: &DirNode,
    at: &Path,
    target: Arch,
    out: &mut Vec<ArchFinding>,
) -> Result<(), LintIoError> {
    for (name, node) in &dir.entries {
        let path = at.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        match node {
            Node::Dir(d) => lint_dir_node(d, &path, target, out)?,
            Node::File(f) => {
                let finding = match &f.content {
                    FileContent::Bytes(b) => check_bytes(&path, &b[..b.len().min(64)], target),
                    FileContent::Path(p) => check_bytes(&path, &head_of(p)?, target),
                };
                out.extend(finding);
            }
            Node::Symlink(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(MAGIC);
        h[4] = class;
        h[5] = data;
        h[6] = 1;
        let m = if data == 2 {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        };
        h[16] = 2;
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn recognises_architectures() {
        let x = ElfHeader::parse(&header(2, 1, 62)).unwrap().unwrap();
        assert_eq!(x.arch(), Some(Arch::X86_64));
        let a = ElfHeader::parse(&header(2, 1, 183)).unwrap().unwrap();
        assert_eq!(a.arch(), Some(Arch::Arm64));
        let s = ElfHeader::parse(&header(2, 2, 22)).unwrap().unwrap();
        assert_eq!(s.arch(), Some(Arch::S390x));
        // x32 (EM_X86_64 in a 32-bit file) is not x86-64.
        let x32 = ElfHeader::parse(&header(1, 1, 62)).unwrap().unwrap();
        assert!(!x32.matches(Arch::X86_64));
    }

    #[test]
    fn non_elf_and_malformed() {
        assert_eq!(ElfHeader::parse(b"#!/bin/sh\n").unwrap(), None);
        assert_eq!(ElfHeader::parse(b"").unwrap(), None);
        assert!(ElfHeader::parse(b"\x7fELF\x02\x01").is_err());
        let mut h = header(2, 1, 62);
        h[4] = 9;
        assert!(ElfHeader::parse(&h).is_err());
    }

    #[test]
    fn lints_a_staged_tree() {
        use crate::tree::{EntryName, FileNode};
        let file = |content: Vec<u8>| {
            Node::File(FileNode {
                mode: 0o755,
                content: FileContent::Bytes(content),
            })
        };
        let dir = |entries: Vec<(&str, Node)>| DirNode {
            mode: 0o755,
            entries: entries
                .into_iter()
                .map(|(n, node)| (EntryName::new(n).unwrap(), node))
                .collect(),
        };
        let bin = dir(vec![
            ("kubelet", file(header(2, 1, 183))),
            ("kubectl", file(header(2, 1, 62))),
            ("script", file(b"#!/bin/sh\n".to_vec())),
        ]);
        let root = dir(vec![("usr", Node::Dir(dir(vec![("bin", Node::Dir(bin))])))]);
        let tree = StagedTree { root, mtime: 0 };
        let findings = lint_tree(&tree, Arch::X86_64).unwrap();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].path, Path::new("/usr/bin/kubelet"));
    }

    #[test]
    fn finding_message_names_path_and_both_architectures() {
        let f = check_bytes(
            Path::new("/usr/bin/kubelet"),
            &header(2, 1, 183),
            Arch::X86_64,
        )
        .unwrap();
        let msg = f.to_string();
        assert!(msg.contains("/usr/bin/kubelet"), "{msg}");
        assert!(msg.contains("AArch64") && msg.contains("183"), "{msg}");
        assert!(msg.contains("x86-64") && msg.contains("62"), "{msg}");
        assert!(check_bytes(Path::new("x"), &header(2, 1, 62), Arch::X86_64).is_none());
    }
}
