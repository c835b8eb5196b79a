//! What an extension-release says and whether it fits a host: the fields
//! an image declares ([`ExtensionRelease`], written in a fixed order), the
//! host side ([`Host`]) and systemd-sysext's compatibility rules in its
//! order ([`check_compatible`], `extension_release_validate()`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::name::ExtensionName;
use super::os_release::{assignment as kv, OsRelease};
use crate::{Arch, Version};

/// The extension-release keys systemd-sysext and this project use.
pub mod keys {
    pub const ID: &str = "ID";
    pub const VERSION_ID: &str = "VERSION_ID";
    pub const SYSEXT_LEVEL: &str = "SYSEXT_LEVEL";
    pub const ARCHITECTURE: &str = "ARCHITECTURE";
    pub const SYSEXT_SCOPE: &str = "SYSEXT_SCOPE";
    pub const EXTENSION_RELOAD_MANAGER: &str = "EXTENSION_RELOAD_MANAGER";
    pub const SYSEXT_ID: &str = "SYSEXT_ID";
    pub const SYSEXT_VERSION_ID: &str = "SYSEXT_VERSION_ID";
    pub const SYSEXT_PRETTY_NAME: &str = "SYSEXT_PRETTY_NAME";
}

/// `ID=_any`: an extension that fits every host OS.
pub const ANY: &str = "_any";

/// Scopes an extension fits when it has no `SYSEXT_SCOPE=`.
pub const DEFAULT_SCOPE: &str = "system portable";

/// Where an extension may be merged (a word of `SYSEXT_SCOPE=`), and where
/// a host is (`initrd` in an initrd, else `system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    System,
    Initrd,
    Portable,
}

/// A word that is not a sysext scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected \"system\", \"initrd\" or \"portable\"")]
pub struct BadScope(pub String);

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::Initrd => "initrd",
            Scope::Portable => "portable",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = BadScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Scope::System),
            "initrd" => Ok(Scope::Initrd),
            "portable" => Ok(Scope::Portable),
            _ => Err(BadScope(s.to_string())),
        }
    }
}

/// An os-release token: the value of `ID=`, `VERSION_ID=` or
/// `SYSEXT_LEVEL=`. os-release(5) allows lowercase letters, digits, `.`,
/// `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OsToken(String);

/// Text that cannot be an os-release token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid value {0:?}: os-release allows only lowercase letters, digits, '.', '_' and '-' here"
)]
pub struct BadOsToken(pub String);

impl OsToken {
    pub fn new(s: impl Into<String>) -> Result<Self, BadOsToken> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(OsToken(s))
        } else {
            Err(BadOsToken(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for OsToken {
    type Err = BadOsToken;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OsToken::new(s)
    }
}

/// Which host operating systems an extension fits (`ID=` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsMatch {
    /// `ID=_any`: any host; no version checks.
    Any,
    /// A specific host `ID=`, optionally pinned to an ABI level or release.
    Os {
        id: OsToken,
        sysext_level: Option<OsToken>,
        version_id: Option<OsToken>,
    },
}

/// The fields of an extension-release file as an image declares them.
/// [`ExtensionRelease::to_os_release`] writes them in a fixed order, so
/// the same fields always give the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionRelease {
    /// `ID=`, and `SYSEXT_LEVEL=` / `VERSION_ID=` for a specific OS.
    pub os: OsMatch,
    /// `ARCHITECTURE=`; `None` writes none (fits every architecture).
    pub architecture: Option<Arch>,
    /// `SYSEXT_SCOPE=`, space separated; empty writes none (systemd then
    /// assumes `system portable`).
    pub scope: Vec<Scope>,
    /// `EXTENSION_RELOAD_MANAGER=1` when true: the service manager is
    /// reloaded after a merge or unmerge.
    pub reload_manager: bool,
    /// `SYSEXT_ID=`: informational, the extension's own name.
    pub sysext_id: Option<ExtensionName>,
    /// `SYSEXT_VERSION_ID=`: informational, the extension's version.
    pub sysext_version_id: Option<Version>,
    /// `SYSEXT_PRETTY_NAME=`: informational; NUL characters are dropped.
    pub sysext_pretty_name: Option<String>,
}

impl ExtensionRelease {
    /// The file, keys in this order: `ID`, `SYSEXT_LEVEL`, `VERSION_ID`,
    /// `ARCHITECTURE`, `SYSEXT_SCOPE`, `EXTENSION_RELOAD_MANAGER`,
    /// `SYSEXT_ID`, `SYSEXT_VERSION_ID`, `SYSEXT_PRETTY_NAME`.
    pub fn to_os_release(&self) -> OsRelease {
        let mut r = OsRelease::default();
        // Every key is a constant and every value is a validated token,
        // so `insert` (no checks) is safe here.
        let mut put = |k: &str, v: &str| r.insert(k.to_string(), v.to_string());
        match &self.os {
            OsMatch::Any => put(keys::ID, ANY),
            OsMatch::Os {
                id,
                sysext_level,
                version_id,
            } => {
                put(keys::ID, id.as_str());
                if let Some(level) = sysext_level {
                    put(keys::SYSEXT_LEVEL, level.as_str());
                }
                if let Some(v) = version_id {
                    put(keys::VERSION_ID, v.as_str());
                }
            }
        }
        if let Some(a) = self.architecture {
            put(keys::ARCHITECTURE, a.as_str());
        }
        if !self.scope.is_empty() {
            let words: Vec<&str> = self.scope.iter().map(|s| s.as_str()).collect();
            put(keys::SYSEXT_SCOPE, &words.join(" "));
        }
        if self.reload_manager {
            put(keys::EXTENSION_RELOAD_MANAGER, "1");
        }
        if let Some(n) = &self.sysext_id {
            put(keys::SYSEXT_ID, n.as_str());
        }
        if let Some(v) = &self.sysext_version_id {
            put(keys::SYSEXT_VERSION_ID, v.as_str());
        }
        if let Some(p) = &self.sysext_pretty_name {
            put(keys::SYSEXT_PRETTY_NAME, &p.replace('\0', ""));
        }
        r
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.to_os_release().render()
    }
}

/// systemd's `parse_boolean()`: `1 yes y true t on` / `0 no n false f off`,
/// case-insensitive; anything else is not a boolean.
pub fn parse_boolean(s: &str) -> Option<bool> {
    const TRUE: [&str; 6] = ["1", "yes", "y", "true", "t", "on"];
    const FALSE: [&str; 6] = ["0", "no", "n", "false", "f", "off"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(s)) {
        Some(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(s)) {
        Some(false)
    } else {
        None
    }
}

/// True when the extension asks for a service manager reload after it is
/// merged or unmerged (`EXTENSION_RELOAD_MANAGER=` is a true boolean).
pub fn wants_manager_reload(ext: &OsRelease) -> bool {
    ext.get(keys::EXTENSION_RELOAD_MANAGER)
        .and_then(parse_boolean)
        .unwrap_or(false)
}

/// The host side of the check: what systemd-sysext reads from the host's
/// os-release and kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// `ID=` of the host's os-release (never empty).
    pub id: String,
    /// `VERSION_ID=`, when set and not empty.
    pub version_id: Option<String>,
    /// `SYSEXT_LEVEL=`, when set and not empty.
    pub sysext_level: Option<String>,
    /// systemd's name of the host architecture (`x86-64`, …): the
    /// [`Arch`] name, or for an architecture `Arch` does not know, the
    /// name systemd uses for it.
    pub architecture: String,
    /// `initrd` inside an initrd, else `system`.
    pub scope: Scope,
}

/// The host's os-release cannot be matched against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host's os-release has no ID= (or an empty one); systemd-sysext needs it to match extensions: add ID=<os> to it")]
pub struct NoHostId;

impl Host {
    /// The host described by its os-release, architecture and scope.
    pub fn from_os_release(
        os_release: &OsRelease,
        architecture: impl Into<String>,
        scope: Scope,
    ) -> Result<Host, NoHostId> {
        let get = |k| os_release.get_nonempty(k).map(str::to_string);
        Ok(Host {
            id: get(keys::ID).ok_or(NoHostId)?,
            version_id: get(keys::VERSION_ID),
            sysext_level: get(keys::SYSEXT_LEVEL),
            architecture: architecture.into(),
            scope,
        })
    }
}

/// Why an extension does not fit a host: systemd-sysext's checks, in its
/// order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("the extension-release file holds no KEY=value assignment")]
    Empty,
    #[error("{} does not include the host scope {host}", show_scope(.scope))]
    Scope {
        /// `SYSEXT_SCOPE=` as written; `None` when absent.
        scope: Option<String>,
        host: Scope,
    },
    #[error("the extension is built for {} but the host is {host}", kv(keys::ARCHITECTURE, .ext))]
    Architecture { ext: String, host: String },
    #[error("the extension-release has no ID= (use ID=_any to fit every OS)")]
    NoId,
    #[error("the extension is for OS {} but the host's os-release says {}", kv(keys::ID, .ext), kv(keys::ID, .host))]
    Os { ext: String, host: String },
    #[error("the extension needs {} but the host has {}", kv(keys::SYSEXT_LEVEL, .ext), kv(keys::SYSEXT_LEVEL, .host))]
    SysextLevel { ext: String, host: String },
    #[error("the extension-release has no VERSION_ID= (nor a SYSEXT_LEVEL= shared with the host), but the host has {}", kv(keys::VERSION_ID, .host))]
    NoVersionId { host: String },
    #[error("the extension needs {} but the host has {}", kv(keys::VERSION_ID, .ext), kv(keys::VERSION_ID, .host))]
    VersionId { ext: String, host: String },
}

fn show_scope(scope: &Option<String>) -> String {
    match scope {
        Some(s) => format!("the extension's {}", kv(keys::SYSEXT_SCOPE, s)),
        None => format!("the extension has no SYSEXT_SCOPE=, so its default {DEFAULT_SCOPE:?}"),
    }
}

/// Checks extension-release `ext` against `host` the way systemd-sysext
/// does (`extension_release_validate()`), in its order:
///
/// 1. an empty file does not fit;
/// 2. the host scope must be a word of `SYSEXT_SCOPE` (default
///    `system portable`);
/// 3. `ARCHITECTURE`, unless empty or `_any`, must be the host's;
/// 4. `ID` is required; `ID=_any` fits with no version checks;
/// 5. `ID` must equal the host's (`ID_LIKE` is not consulted; systemd 258
///    added that);
/// 6. a host with neither `VERSION_ID` nor `SYSEXT_LEVEL` fits;
/// 7. when both sides have `SYSEXT_LEVEL`, those must be equal;
/// 8. else, when the host has `VERSION_ID`, the extension's must equal it.
///
/// Empty values count as absent, as systemd's `isempty()` has it.
pub fn check_compatible(ext: &OsRelease, host: &Host) -> Result<(), Incompatible> {
    if ext.is_empty() {
        return Err(Incompatible::Empty);
    }
    let scope = ext.get(keys::SYSEXT_SCOPE);
    let fits_scope = scope
        .unwrap_or(DEFAULT_SCOPE)
        .split([' ', '\t', '\n', '\r'])
        .any(|w| w == host.scope.as_str());
    if !fits_scope {
        return Err(Incompatible::Scope {
            scope: scope.map(str::to_string),
            host: host.scope,
        });
    }
    if let Some(a) = ext.get_nonempty(keys::ARCHITECTURE) {
        if a != ANY && a != host.architecture {
            return Err(Incompatible::Architecture {
                ext: a.to_string(),
                host: host.architecture.clone(),
            });
        }
    }
    let id = ext.get_nonempty(keys::ID).ok_or(Incompatible::NoId)?;
    if id == ANY {
        return Ok(());
    }
    if id != host.id {
        return Err(Incompatible::Os {
            ext: id.to_string(),
            host: host.id.clone(),
        });
    }
    if host.version_id.is_none() && host.sysext_level.is_none() {
        return Ok(());
    }
    if let (Some(e), Some(h)) = (ext.get_nonempty(keys::SYSEXT_LEVEL), &host.sysext_level) {
        return if e == h {
            Ok(())
        } else {
            Err(Incompatible::SysextLevel {
                ext: e.to_string(),
                host: h.clone(),
            })
        };
    }
    if let Some(h) = &host.version_id {
        let Some(e) = ext.get_nonempty(keys::VERSION_ID) else {
            return Err(Incompatible::NoVersionId { host: h.clone() });
        };
        if e != h {
            return Err(Incompatible::VersionId {
                ext: e.to_string(),
                host: h.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(s: &str) -> OsRelease {
        OsRelease::parse(s).unwrap()
    }

    fn host(id: &str, ver: Option<&str>, level: Option<&str>) -> Host {
        Host {
            id: id.into(),
            version_id: ver.map(Into::into),
            sysext_level: level.map(Into::into),
            architecture: "x86-64".into(),
            scope: Scope::System,
        }
    }

    fn host_of(os: &str) -> Host {
        Host::from_os_release(&rf(os), Arch::X86_64.as_str(), Scope::System).unwrap()
    }

    // From bakery's copy.
    #[test]
    fn compatibility_follows_systemd_order() {
        let debian = host_of("ID=debian\nVERSION_ID=12\n");
        let flatcar = host_of("ID=flatcar\nVERSION_ID=3815.2.0\nSYSEXT_LEVEL=1.0\n");
        let ok = |e: &str, h: &Host| check_compatible(&rf(e), h);
        assert_eq!(ok("", &debian), Err(Incompatible::Empty));
        assert!(ok("ID=_any\n", &debian).is_ok());
        assert!(ok("ID=_any\nARCHITECTURE=x86-64\n", &debian).is_ok());
        assert!(matches!(
            ok("ID=_any\nARCHITECTURE=arm64\n", &debian),
            Err(Incompatible::Architecture { .. })
        ));
        assert!(matches!(
            ok("ID=_any\nSYSEXT_SCOPE=initrd\n", &debian),
            Err(Incompatible::Scope { .. })
        ));
        assert_eq!(
            ok("ARCHITECTURE=x86-64\n", &debian),
            Err(Incompatible::NoId)
        );
        let e = ok("ID=otheros\n", &debian).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the extension is for OS ID=otheros but the host's os-release says ID=debian"
        );
        let e = ok("ID=\"my os\"\n", &debian).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the extension is for OS ID=\"my os\" but the host's os-release says ID=debian"
        );
        assert!(ok("ID=debian\nVERSION_ID=12\n", &debian).is_ok());
        assert!(matches!(
            ok("ID=debian\n", &debian),
            Err(Incompatible::NoVersionId { .. })
        ));
        assert!(ok("ID=flatcar\nSYSEXT_LEVEL=1.0\n", &flatcar).is_ok());
        assert!(matches!(
            ok("ID=flatcar\nSYSEXT_LEVEL=2.0\n", &flatcar),
            Err(Incompatible::SysextLevel { .. })
        ));
        assert!(ok("ID=flatcar\nVERSION_ID=3815.2.0\n", &flatcar).is_ok());
        assert!(ok("ID=debian\n", &host_of("ID=debian\n")).is_ok());
    }

    // From merge-runtime's copy.
    #[test]
    fn rules_in_systemd_order() {
        let h = host("debian", Some("12"), None);
        let v = |e: &str| check_compatible(&rf(e), &h);
        assert!(v("ID=debian\nVERSION_ID=12\n").is_ok());
        assert!(v("ID=_any\n").is_ok());
        assert!(matches!(v(""), Err(Incompatible::Empty)));
        assert!(matches!(
            v("ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=initrd portable\n"),
            Err(Incompatible::Scope { .. })
        ));
        // Architecture is checked before ID, so even ID=_any is refused.
        assert!(matches!(
            v("ID=_any\nARCHITECTURE=arm64\n"),
            Err(Incompatible::Architecture { .. })
        ));
        assert!(v("ID=_any\nARCHITECTURE=_any\n").is_ok());
        assert!(matches!(v("VERSION_ID=12\n"), Err(Incompatible::NoId)));
        assert!(matches!(
            v("ID=fedora\nVERSION_ID=12\n"),
            Err(Incompatible::Os { .. })
        ));
        assert!(matches!(
            v("ID=debian\n"),
            Err(Incompatible::NoVersionId { .. })
        ));
        assert!(matches!(
            v("ID=debian\nVERSION_ID=11\n"),
            Err(Incompatible::VersionId { .. })
        ));
    }

    // From merge-runtime's copy.
    #[test]
    fn sysext_level_overrides_version() {
        let h = host("flatcar", Some("3815.2.0"), Some("1.0"));
        let v = |e: &str| check_compatible(&rf(e), &h);
        assert!(v("ID=flatcar\nSYSEXT_LEVEL=1.0\n").is_ok());
        assert!(matches!(
            v("ID=flatcar\nSYSEXT_LEVEL=2.0\nVERSION_ID=3815.2.0\n"),
            Err(Incompatible::SysextLevel { .. })
        ));
        // Extension without a level falls back to VERSION_ID.
        assert!(v("ID=flatcar\nVERSION_ID=3815.2.0\n").is_ok());
        // Rolling host: ID suffices.
        assert!(check_compatible(&rf("ID=arch\n"), &host("arch", None, None)).is_ok());
        // A host with only a level: an extension without one needs nothing
        // more (rule 8 applies only when the host has VERSION_ID).
        assert!(check_compatible(&rf("ID=x\n"), &host("x", None, Some("1"))).is_ok());
    }

    #[test]
    fn empty_values_count_as_absent() {
        let h = host("debian", Some("12"), None);
        let v = |e: &str| check_compatible(&rf(e), &h);
        assert!(v("ID=_any\nARCHITECTURE=\n").is_ok());
        assert_eq!(v("ID=\n"), Err(Incompatible::NoId));
        assert!(matches!(
            v("ID=debian\nVERSION_ID=\n"),
            Err(Incompatible::NoVersionId { .. })
        ));
        // An empty SYSEXT_SCOPE= is a scope list with no word in it.
        let e = v("ID=_any\nSYSEXT_SCOPE=\n").unwrap_err();
        assert_eq!(
            e,
            Incompatible::Scope {
                scope: Some(String::new()),
                host: Scope::System
            }
        );
        let initrd = Host {
            scope: Scope::Initrd,
            ..h.clone()
        };
        let e = check_compatible(&rf("ID=_any\n"), &initrd).unwrap_err();
        assert!(e.to_string().contains("default \"system portable\""), "{e}");
        assert!(check_compatible(&rf("ID=_any\nSYSEXT_SCOPE=initrd\tsystem\n"), &initrd).is_ok());
    }

    #[test]
    fn host_needs_an_id() {
        assert_eq!(
            Host::from_os_release(&rf("VERSION_ID=1\n"), "x86-64", Scope::System),
            Err(NoHostId)
        );
        assert_eq!(
            Host::from_os_release(&rf("ID=\n"), "x86-64", Scope::System),
            Err(NoHostId)
        );
        let h = host_of("ID=debian\nVERSION_ID=\nSYSEXT_LEVEL=2\n");
        assert_eq!(h.version_id, None);
        assert_eq!(h.sysext_level.as_deref(), Some("2"));
    }

    #[test]
    fn booleans_like_systemd() {
        for t in ["1", "yes", "Y", "TRUE", "t", "On"] {
            assert_eq!(parse_boolean(t), Some(true), "{t}");
        }
        for f in ["0", "NO", "n", "False", "f", "off"] {
            assert_eq!(parse_boolean(f), Some(false), "{f}");
        }
        for x in ["", "2", "yes ", "enable"] {
            assert_eq!(parse_boolean(x), None, "{x}");
        }
        assert!(wants_manager_reload(&rf("EXTENSION_RELOAD_MANAGER=yes\n")));
        assert!(!wants_manager_reload(&rf("EXTENSION_RELOAD_MANAGER=0\n")));
        assert!(!wants_manager_reload(&rf(
            "EXTENSION_RELOAD_MANAGER=maybe\n"
        )));
        assert!(!wants_manager_reload(&rf("ID=_any\n")));
    }

    // From bakery's recipe copy.
    #[test]
    fn tokens_and_scopes() {
        for ok in ["flatcar", "1.0", "3815.2.0", "a_b-c"] {
            assert!(OsToken::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Flatcar", "a b", "a/b", &"x".repeat(129)] {
            assert!(OsToken::new(bad).is_err(), "{bad}");
        }
        for s in [Scope::System, Scope::Initrd, Scope::Portable] {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert_eq!(
            "host".parse::<Scope>().unwrap_err().to_string(),
            "unknown scope \"host\": expected \"system\", \"initrd\" or \"portable\""
        );
    }

    #[test]
    fn extension_release_renders_in_a_fixed_order() {
        let mut r = ExtensionRelease {
            os: OsMatch::Any,
            architecture: Some(Arch::X86_64),
            scope: vec![Scope::System],
            reload_manager: true,
            sysext_id: Some(ExtensionName::new("hello").unwrap()),
            sysext_version_id: Some(Version::new("1.0.0").unwrap()),
            sysext_pretty_name: Some("hello 1.0.0".into()),
        };
        assert_eq!(
            r.render(),
            "ID=_any\nARCHITECTURE=x86-64\nSYSEXT_SCOPE=system\nEXTENSION_RELOAD_MANAGER=1\n\
             SYSEXT_ID=hello\nSYSEXT_VERSION_ID=1.0.0\nSYSEXT_PRETTY_NAME=\"hello 1.0.0\"\n"
        );
        r.os = OsMatch::Os {
            id: OsToken::new("otheros").unwrap(),
            sysext_level: Some(OsToken::new("1.0").unwrap()),
            version_id: Some(OsToken::new("1").unwrap()),
        };
        r.architecture = None;
        r.scope = vec![Scope::System, Scope::Portable];
        r.reload_manager = false;
        r.sysext_id = None;
        r.sysext_version_id = None;
        r.sysext_pretty_name = Some("a\0b".into());
        assert_eq!(
            r.render(),
            "ID=otheros\nSYSEXT_LEVEL=1.0\nVERSION_ID=1\nSYSEXT_SCOPE=\"system portable\"\n\
             SYSEXT_PRETTY_NAME=ab\n"
        );
    }

    fn token() -> impl proptest::strategy::Strategy<Value = OsToken> {
        use proptest::strategy::Strategy;
        "[a-z0-9._-]{1,8}".prop_map(|s| OsToken::new(s).unwrap())
    }

    proptest::proptest! {
        /// What we write, a strict parse reads back, and it fits a host
        /// made for it.
        #[test]
        fn written_releases_parse_and_fit_their_host(
            id in proptest::option::of(token()),
            level in proptest::option::of(token()),
            version in proptest::option::of(token()),
            arch in proptest::sample::select(Arch::ALL.to_vec()),
            pretty in "\\PC{0,20}",
        ) {
            let os = match id.clone() {
                None => OsMatch::Any,
                Some(id) => OsMatch::Os { id, sysext_level: level.clone(), version_id: version.clone() },
            };
            let r = ExtensionRelease {
                os,
                architecture: Some(arch),
                scope: vec![Scope::System],
                reload_manager: true,
                sysext_id: None,
                sysext_version_id: None,
                sysext_pretty_name: Some(pretty.clone()),
            };
            let back = OsRelease::parse(&r.render()).unwrap();
            proptest::prop_assert_eq!(&back, &r.to_os_release());
            proptest::prop_assert_eq!(back.get(keys::SYSEXT_PRETTY_NAME), Some(pretty.as_str()));
            proptest::prop_assert!(wants_manager_reload(&back));
            let host = Host {
                id: id.map(|t| t.as_str().to_string()).unwrap_or_else(|| "anything".into()),
                version_id: version.map(|t| t.as_str().to_string()),
                sysext_level: level.map(|t| t.as_str().to_string()),
                architecture: arch.as_str().into(),
                scope: Scope::System,
            };
            proptest::prop_assert_eq!(check_compatible(&back, &host), Ok(()));
        }
    }
}
