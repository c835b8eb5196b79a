//! Architectures, named with systemd's identifiers (`x86-64`, `arm64`, …).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CPU architecture as systemd names it (`ConditionArchitecture=`,
/// `ARCHITECTURE=` in extension-release, `%a` in sysupdate patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    X86_64,
    Arm64,
    X86,
    Arm,
    Ppc64Le,
    Riscv64,
    S390x,
    Loongarch64,
}

/// The architectures that images are built for by default.
pub const DEFAULT_BUILD_ARCHES: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

impl Arch {
    pub const ALL: [Arch; 8] = [
        Arch::X86_64,
        Arch::Arm64,
        Arch::X86,
        Arch::Arm,
        Arch::Ppc64Le,
        Arch::Riscv64,
        Arch::S390x,
        Arch::Loongarch64,
    ];

    /// systemd's identifier, e.g. `x86-64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
            Arch::X86 => "x86",
            Arch::Arm => "arm",
            Arch::Ppc64Le => "ppc64-le",
            Arch::Riscv64 => "riscv64",
            Arch::S390x => "s390x",
            Arch::Loongarch64 => "loongarch64",
        }
    }

    /// Maps a kernel `uname -m` machine string to systemd's identifier.
    pub fn from_uname(machine: &str) -> Option<Arch> {
        Some(match machine {
            "x86_64" => Arch::X86_64,
            "aarch64" | "aarch64_be" => Arch::Arm64,
            "i386" | "i486" | "i586" | "i686" => Arch::X86,
            m if m.starts_with("arm") => Arch::Arm,
            "ppc64le" => Arch::Ppc64Le,
            "riscv64" => Arch::Riscv64,
            "s390x" => Arch::S390x,
            "loongarch64" => Arch::Loongarch64,
            _ => return None,
        })
    }

    /// The architecture this program was compiled for.
    pub fn native() -> Option<Arch> {
        Arch::from_uname(std::env::consts::ARCH)
    }

    /// ELF `e_machine` value of binaries for this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
            Arch::X86 => 3,
            Arch::Arm => 40,
            Arch::Ppc64Le => 21,
            Arch::Riscv64 => 243,
            Arch::S390x => 22,
            Arch::Loongarch64 => 258,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An architecture name that systemd does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?}: expected one of x86-64, arm64, x86, arm, ppc64-le, riscv64, s390x, loongarch64")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownArch(s.to_string()))
    }
}

impl TryFrom<String> for Arch {
    type Error = UnknownArch;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_name() {
        for a in Arch::ALL {
            assert_eq!(a.as_str().parse::<Arch>().unwrap(), a);
        }
    }

    #[test]
    fn rejects_upstream_spellings() {
        for bad in ["amd64", "x86_64", "aarch64", ""] {
            let err = bad.parse::<Arch>().unwrap_err();
            assert!(err.to_string().contains("x86-64"), "{err}");
        }
    }

    #[test]
    fn maps_uname() {
        assert_eq!(Arch::from_uname("x86_64"), Some(Arch::X86_64));
        assert_eq!(Arch::from_uname("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_uname("mips"), None);
    }
}
