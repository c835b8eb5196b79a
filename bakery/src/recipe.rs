//! The recipe model: a recipe directory (`recipe.toml` plus an optional
//! `files/` tree) parsed into validated types.
//!
//! This module owns the `recipe.toml` format and its error messages. Every
//! error points at the file, line, column and key it is about and says what
//! to do. Staging the `files/` tree is [`crate::stage`]'s job.
//!
//! # Format
//!
//! ```toml
//! name = "hello"                        # image name: [A-Za-z0-9_.-], not starting with '.' or '-'
//! version = "1.0.0"                     # extension version: [A-Za-z0-9.,_+~^-]
//! description = "Greets the world"      # one line of text
//! reload-manager = true                 # EXTENSION_RELOAD_MANAGER=1 (default false)
//! os = "_any"                           # host os-release ID it fits (default "_any")
//! # sysext-level = "1.0"                # with an explicit os: host SYSEXT_LEVEL it fits
//! # version-id = "3815.2.0"             # with an explicit os: host VERSION_ID it fits
//! architectures = ["x86-64", "arm64"]   # systemd arch names (default: x86-64 and arm64)
//! scope = ["system"]                    # SYSEXT_SCOPE (default ["system"])
//!
//! [units]
//! start = ["hello.service"]             # started with the system via Upholds= drop-ins
//! ```
//!
//! Top-level keys describe the extension; tables group what grows: `[units]`,
//! `[[symlink]]`, and the remote inputs — `[upstream]` (where versions come
//! from), `[secondary.NAME]` (inputs with their own version), `[arch.ARCH]`
//! (per-architecture template variables) and `[[source]]` (what to download,
//! how to check and unpack it, what goes where) — whose format and checks
//! live in [`crate::source`]. A recipe with `[upstream]` has no `version`
//! key: its version is resolved from the lock file or upstream
//! ([`RecipeTemplate::instantiate`]). Unknown keys are errors, so typos
//! never pass silently.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use sysupdate::{Arch, Version};
use toml::Spanned;

/// The file inside a recipe directory that describes the recipe.
pub const RECIPE_FILE: &str = "recipe.toml";
/// The directory inside a recipe directory copied into the image root.
pub const FILES_DIR: &str = "files";

/// Longest image file name we produce (`NAME-VERSION-ARCH.raw`), leaving
/// room for temporary-file prefixes within the 255-byte name limit.
const MAX_IMAGE_FILE_NAME: usize = 200;

// ---------------------------------------------------------------------------
// Validated newtypes
// ---------------------------------------------------------------------------

/// Extension names, os-release tokens, host OS matches and scopes are
/// the shared extension vocabulary of `sysupdate`.
pub use sysupdate::extension::{
    BadExtensionName, BadOsToken, BadScope, ExtensionName, OsMatch, OsToken, Scope,
};

/// The kinds of unit that can be started with the system, and the target
/// whose `.d/` drop-in holds the `Upholds=` line for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitKind {
    Service,
    Socket,
    Timer,
    Path,
    Target,
}

impl UnitKind {
    /// The target that upholds units of this kind.
    pub fn upheld_by(self) -> &'static str {
        match self {
            UnitKind::Socket => "sockets.target",
            UnitKind::Timer => "timers.target",
            UnitKind::Path => "paths.target",
            UnitKind::Service | UnitKind::Target => "multi-user.target",
        }
    }
}

/// A systemd unit name that can be started with the system:
/// `PREFIX[@INSTANCE].{service,socket,timer,path,target}`, characters
/// `[A-Za-z0-9:_.\-@]` (systemd's set, minus `\`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName {
    name: String,
    kind: UnitKind,
}

/// Text that cannot be a startable unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid unit name {text:?}: {reason}")]
pub struct BadUnitName {
    pub text: String,
    pub reason: &'static str,
}

impl UnitName {
    pub fn new(s: impl Into<String>) -> Result<Self, BadUnitName> {
        let text = s.into();
        let bad = |reason| {
            Err(BadUnitName {
                text: text.clone(),
                reason,
            })
        };
        if text.is_empty() || text.len() > 255 {
            return bad("it must be 1 to 255 characters long");
        }
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '@'))
        {
            return bad("only letters, digits and ':', '_', '.', '-', '@' are allowed");
        }
        let Some((stem, suffix)) = text.rsplit_once('.') else {
            return bad("it needs a suffix: .service, .socket, .timer, .path or .target");
        };
        let kind = match suffix {
            "service" => UnitKind::Service,
            "socket" => UnitKind::Socket,
            "timer" => UnitKind::Timer,
            "path" => UnitKind::Path,
            "target" => UnitKind::Target,
            _ => {
                return bad(
                    "only .service, .socket, .timer, .path and .target units can be started",
                )
            }
        };
        let prefix = stem.split('@').next().unwrap_or_default();
        if prefix.is_empty() || stem.matches('@').count() > 1 {
            return bad("expected PREFIX.SUFFIX or PREFIX@INSTANCE.SUFFIX");
        }
        if stem.ends_with('@') {
            return bad("a template (PREFIX@.SUFFIX) cannot be started; name an instance, e.g. PREFIX@1.SUFFIX");
        }
        Ok(UnitName { name: text, kind })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> UnitKind {
        self.kind
    }

    /// For an instance `foo@bar.service`, the template `foo@.service`
    /// whose unit file provides it.
    pub fn template(&self) -> Option<String> {
        let (stem, suffix) = self.name.rsplit_once('.')?;
        let (prefix, _instance) = stem.split_once('@')?;
        Some(format!("{prefix}@.{suffix}"))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for UnitName {
    type Err = BadUnitName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnitName::new(s)
    }
}

// ---------------------------------------------------------------------------
// Locations and errors
// ---------------------------------------------------------------------------

/// A place in a recipe file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    fn at(file: &Path, src: &str, offset: usize) -> Location {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location {
            file: file.to_path_buf(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A recipe that cannot be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {err} (a recipe is a directory holding recipe.toml)")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{location}: {}{message}{}", key_prefix(.key), help_suffix(.help))]
    Invalid {
        location: Location,
        /// Dotted key path (`name`, `units.start`) when known.
        key: Option<String>,
        message: String,
        help: Option<String>,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default()
}

fn help_suffix(help: &Option<String>) -> String {
    help.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

impl RecipeError {
    /// The location this error points at, if it is about the recipe's text.
    pub fn location(&self) -> Option<&Location> {
        match self {
            RecipeError::Invalid { location, .. } => Some(location),
            RecipeError::Read { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------
// The recipe
// ---------------------------------------------------------------------------

/// A unit to start with the system, with where the recipe names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartUnit {
    pub unit: UnitName,
    pub location: Location,
}

/// Units the extension ships and how they are activated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Units {
    /// Started with the system through `Upholds=` drop-ins.
    pub start: Vec<StartUnit>,
}

/// A parsed, validated recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The recipe directory.
    pub dir: PathBuf,
    pub name: ExtensionName,
    pub version: Version,
    pub description: String,
    pub reload_manager: bool,
    pub os: OsMatch,
    /// Declared order, no duplicates.
    pub architectures: Vec<Arch>,
    /// Where `architectures` is set (or the top of the file if defaulted).
    pub architectures_location: Location,
    /// Declared order, no duplicates.
    pub scope: Vec<Scope>,
    pub units: Units,
    /// `[[symlink]]`: symlinks placed in every image of the recipe.
    pub symlinks: Vec<crate::source::SymlinkSpec>,
    /// `[upstream]`, `[secondary.*]`, `[arch.*]`, `[[source]]`: the
    /// remote inputs, if the recipe has any.
    pub remote: Option<crate::source::Remote>,
}

/// A recipe whose version may still be unknown: what `bakery versions`,
/// `lock` and `list` need, and what a build instantiates once the version
/// is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeTemplate {
    pub dir: PathBuf,
    pub name: ExtensionName,
    pub description: String,
    pub architectures: Vec<Arch>,
    /// The `version` key, for recipes that fix their version.
    pub fixed_version: Option<Version>,
    pub remote: Option<crate::source::Remote>,
    text: String,
}

impl RecipeTemplate {
    /// Reads and validates `DIR/recipe.toml` without requiring a version.
    pub fn load(dir: &Path) -> Result<RecipeTemplate, RecipeError> {
        let text = read_recipe_text(dir)?;
        RecipeTemplate::parse(dir, &text)
    }

    /// Validates the text of `DIR/recipe.toml` without requiring a version.
    pub fn parse(dir: &Path, text: &str) -> Result<RecipeTemplate, RecipeError> {
        let (recipe, fixed) = parse_inner(dir, text, VersionMode::Template)?;
        Ok(RecipeTemplate {
            dir: recipe.dir,
            name: recipe.name,
            description: recipe.description,
            architectures: recipe.architectures,
            fixed_version: fixed.then_some(recipe.version),
            remote: recipe.remote,
            text: text.to_string(),
        })
    }

    /// Whether the version comes from `[upstream]` (not from the recipe).
    pub fn has_upstream(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.upstream.is_some())
    }

    /// The recipe with its version: `version` for a recipe with
    /// `[upstream]`; `None` (or the same version) for one that fixes it.
    pub fn instantiate(&self, version: Option<&Version>) -> Result<Recipe, RecipeError> {
        let mode = match version {
            Some(v) => VersionMode::Resolved(v.clone()),
            None => VersionMode::Required,
        };
        parse_inner(&self.dir, &self.text, mode).map(|(r, _)| r)
    }

    /// `DIR/recipe.toml`.
    pub fn recipe_file(&self) -> PathBuf {
        self.dir.join(RECIPE_FILE)
    }

    /// The text of `recipe.toml` as read.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// How `parse_inner` treats the `version` key.
#[derive(Debug, Clone)]
enum VersionMode {
    /// The recipe must give its version (a plain local recipe).
    Required,
    /// The version was resolved elsewhere (lock, upstream, `--upstream-version`).
    Resolved(Version),
    /// Only validating: a missing version is fine.
    Template,
}

fn read_recipe_text(dir: &Path) -> Result<String, RecipeError> {
    let path = dir.join(RECIPE_FILE);
    let text = std::fs::read(&path).map_err(|err| RecipeError::Read {
        path: path.clone(),
        err,
    })?;
    String::from_utf8(text).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let src = String::from_utf8_lossy(e.as_bytes()).into_owned();
        RecipeError::Invalid {
            location: Location::at(&path, &src, offset),
            key: None,
            message: "the file is not valid UTF-8".into(),
            help: Some("save it as UTF-8 text".into()),
        }
    })
}

/// Parses and validates; the flag says whether `version` was in the file.
fn parse_inner(dir: &Path, text: &str, mode: VersionMode) -> Result<(Recipe, bool), RecipeError> {
    let file = dir.join(RECIPE_FILE);
    let ctx = Ctx {
        file: &file,
        src: text,
    };
    let raw: RawRecipe = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
    ctx.validate(dir, raw, mode)
}

impl Recipe {
    /// Reads and validates `DIR/recipe.toml`. A recipe with `[upstream]`
    /// has no version of its own: load it with [`RecipeTemplate`].
    pub fn load(dir: &Path) -> Result<Recipe, RecipeError> {
        let text = read_recipe_text(dir)?;
        Recipe::parse(dir, &text)
    }

    /// Validates the text of `DIR/recipe.toml` (errors name that path).
    pub fn parse(dir: &Path, text: &str) -> Result<Recipe, RecipeError> {
        parse_inner(dir, text, VersionMode::Required).map(|(r, _)| r)
    }

    /// `DIR/files`.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join(FILES_DIR)
    }

    /// `DIR/recipe.toml`.
    pub fn recipe_file(&self) -> PathBuf {
        self.dir.join(RECIPE_FILE)
    }

    /// `NAME-VERSION-ARCH.raw`.
    pub fn image_file_name(&self, arch: Arch) -> String {
        format!("{}-{}-{}.raw", self.name, self.version, arch)
    }
}

// ---------------------------------------------------------------------------
// Raw TOML shape and validation
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRecipe {
    name: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    reload_manager: Option<Spanned<bool>>,
    os: Option<Spanned<String>>,
    sysext_level: Option<Spanned<String>>,
    version_id: Option<Spanned<String>>,
    architectures: Option<Spanned<Vec<Spanned<String>>>>,
    scope: Option<Spanned<Vec<Spanned<String>>>>,
    units: Option<Spanned<RawUnits>>,
    symlink: Option<Vec<Spanned<crate::source::RawSymlink>>>,
    upstream: Option<Spanned<crate::source::RawUpstream>>,
    secondary: Option<std::collections::BTreeMap<String, Spanned<crate::source::RawUpstream>>>,
    arch: Option<crate::source::RawArchTable>,
    source: Option<Vec<Spanned<crate::source::RawSource>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUnits {
    start: Option<Vec<Spanned<String>>>,
}

const TOP_KEYS: &str = "name, version, description, reload-manager, os, sysext-level, \
                        version-id, architectures, scope, [units], [[symlink]], [upstream], \
                        [secondary.NAME], [arch.ARCH], [[source]]";

/// The keys allowed in a table, for the "unknown key" help.
fn known_keys(table: &str) -> &'static str {
    let top = table.split('.').next().unwrap_or(table);
    match top {
        "units" => "start",
        "symlink" => "path, target",
        "upstream" => crate::source::UPSTREAM_KEYS,
        "secondary" => crate::source::SECONDARY_KEYS,
        "arch" => "any variable name (e.g. arch = \"amd64\")",
        "source" if table.ends_with(".place") => "from, to, mode",
        "source" if table.ends_with(".deb") => "path, place, exclude",
        "source" => crate::source::SOURCE_KEYS,
        _ => TOP_KEYS,
    }
}

/// Validation context: the file and its text, for located errors.
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
    pub(crate) src: &'a str,
}

impl Ctx<'_> {
    /// The location of a byte offset.
    pub(crate) fn location(&self, offset: usize) -> Location {
        Location::at(self.file, self.src, offset)
    }

    pub(crate) fn err(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) -> RecipeError {
        RecipeError::Invalid {
            location: Location::at(self.file, self.src, span.start),
            key: Some(key.to_string()),
            message: message.into(),
            help: help.into(),
        }
    }

    fn missing(&self, key: &str, example: &str) -> RecipeError {
        RecipeError::Invalid {
            location: Location::at(self.file, self.src, 0),
            key: Some(key.to_string()),
            message: "required key is missing".into(),
            help: Some(format!("add `{key} = {example}` at the top of the file")),
        }
    }

    /// Turns a TOML syntax or shape error into a located error, naming the
    /// key the span sits on where the message does not already.
    fn toml_error(&self, e: &toml::de::Error) -> RecipeError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let (key, help) = if let Some(rest) = message.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or_default().to_string();
            let table = table_at(self.src, span.start);
            let key = match table {
                Some(t) => format!("{t}.{field}"),
                None => field,
            };
            let known = table.map_or(TOP_KEYS, known_keys);
            (
                Some(key),
                Some(format!(
                    "unknown keys are not allowed (check the spelling); known keys here: {known}"
                )),
            )
        } else {
            (key_at(self.src, span.start), None)
        };
        let message = message.lines().next().unwrap_or("invalid TOML").to_string();
        RecipeError::Invalid {
            location: Location::at(self.file, self.src, span.start),
            key,
            message,
            help,
        }
    }

    fn validate(
        &self,
        dir: &Path,
        raw: RawRecipe,
        mode: VersionMode,
    ) -> Result<(Recipe, bool), RecipeError> {
        let name = raw
            .name
            .ok_or_else(|| self.missing("name", "\"my-extension\""))?;
        let name = ExtensionName::new(name.get_ref().clone()).map_err(|e| {
            self.err(
                name.span(),
                "name",
                e.to_string(),
                Some("use e.g. name = \"my-extension\"".to_string()),
            )
        })?;

        let has_upstream = raw.upstream.is_some();
        let fixed = raw.version.is_some();
        let version = match (raw.version, mode) {
            (Some(v), _) if has_upstream => {
                return Err(self.err(
                    v.span(),
                    "version",
                    "a recipe with [upstream] takes its version from upstream or the lock file",
                    Some("remove `version` (pick a version with `bakery build NAME --upstream-version V` or pin it with `bakery lock`)".to_string()),
                ))
            }
            (Some(v), mode) => {
                let fixed = Version::new(v.get_ref().clone()).map_err(|e| {
                    self.err(
                        v.span(),
                        "version",
                        e.to_string(),
                        Some("use the upstream's version, e.g. version = \"1.2.3\"".to_string()),
                    )
                })?;
                if let VersionMode::Resolved(other) = mode {
                    if other != fixed {
                        return Err(self.err(
                            v.span(),
                            "version",
                            format!("the recipe fixes version {fixed}, but {other} was asked for"),
                            Some("build the recipe's own version, or change `version`".to_string()),
                        ));
                    }
                }
                fixed
            }
            (None, VersionMode::Resolved(v)) => v,
            // Validation only: a placeholder that never leaves this module.
            (None, VersionMode::Template) if has_upstream => Version::new("0").map_err(|e| {
                self.err(0..0, "version", e.to_string(), None)
            })?,
            (None, _) if has_upstream => {
                return Err(RecipeError::Invalid {
                    location: Location::at(self.file, self.src, 0),
                    key: Some("version".into()),
                    message: "this recipe takes its version from [upstream]".into(),
                    help: Some(
                        "build it by name (`bakery build NAME` or `bakery build NAME-STREAM`), \
                         which takes the version from the lock file or asks upstream"
                            .into(),
                    ),
                })
            }
            (None, _) => return Err(self.missing("version", "\"1.0.0\"")),
        };

        let description = raw
            .description
            .ok_or_else(|| self.missing("description", "\"what this extension provides\""))?;
        if description.get_ref().trim().is_empty()
            || description.get_ref().chars().any(char::is_control)
        {
            return Err(self.err(
                description.span(),
                "description",
                "must be one non-empty line of text",
                None,
            ));
        }
        let description = description.into_inner();

        let reload_manager = raw.reload_manager.map(Spanned::into_inner).unwrap_or(false);

        let os = self.validate_os(raw.os, raw.sysext_level, raw.version_id)?;

        let (architectures, architectures_location) = match raw.architectures {
            None => (
                sysupdate::arch::DEFAULT_BUILD_ARCHES.to_vec(),
                Location::at(self.file, self.src, 0),
            ),
            Some(list) => {
                let location = Location::at(self.file, self.src, list.span().start);
                let list_span = list.span();
                let items = list.into_inner();
                if items.is_empty() {
                    return Err(self.err(
                        list_span,
                        "architectures",
                        "the list is empty",
                        Some("name at least one, e.g. [\"x86-64\", \"arm64\"], or remove the key for that default".to_string()),
                    ));
                }
                let mut out = Vec::new();
                for item in items {
                    let arch: Arch = item.get_ref().parse().map_err(|e: sysupdate::arch::UnknownArch| {
                        self.err(
                            item.span(),
                            "architectures",
                            e.to_string(),
                            Some("use systemd's names (x86-64, not amd64 or x86_64; arm64, not aarch64)".to_string()),
                        )
                    })?;
                    if out.contains(&arch) {
                        return Err(self.err(
                            item.span(),
                            "architectures",
                            format!("{arch} is listed twice"),
                            Some("remove the duplicate".to_string()),
                        ));
                    }
                    out.push(arch);
                }
                (out, location)
            }
        };

        let scope = match raw.scope {
            None => vec![Scope::System],
            Some(list) => {
                let list_span = list.span();
                let items = list.into_inner();
                if items.is_empty() {
                    return Err(self.err(
                        list_span,
                        "scope",
                        "the list is empty, so systemd-sysext would never merge the image",
                        Some("use e.g. scope = [\"system\"], or remove the key".to_string()),
                    ));
                }
                let mut out = Vec::new();
                for item in items {
                    let s: Scope = item.get_ref().parse().map_err(|e: BadScope| {
                        self.err(item.span(), "scope", e.to_string(), None)
                    })?;
                    if out.contains(&s) {
                        return Err(self.err(
                            item.span(),
                            "scope",
                            format!("{s} is listed twice"),
                            Some("remove the duplicate".to_string()),
                        ));
                    }
                    out.push(s);
                }
                out
            }
        };

        let mut units = Units::default();
        if let Some(raw_units) = raw.units {
            for item in raw_units.into_inner().start.unwrap_or_default() {
                let unit = UnitName::new(item.get_ref().clone())
                    .map_err(|e| self.err(item.span(), "units.start", e.to_string(), None))?;
                if units.start.iter().any(|u| u.unit == unit) {
                    return Err(self.err(
                        item.span(),
                        "units.start",
                        format!("{unit} is listed twice"),
                        Some("remove the duplicate".to_string()),
                    ));
                }
                units.start.push(StartUnit {
                    unit,
                    location: Location::at(self.file, self.src, item.span().start),
                });
            }
        }

        let symlinks = crate::source::validate_symlinks(self, raw.symlink.unwrap_or_default())?;
        let remote = crate::source::validate_remote(
            self,
            &architectures,
            raw.upstream,
            raw.secondary,
            raw.arch,
            raw.source,
        )?;

        let recipe = Recipe {
            dir: dir.to_path_buf(),
            name,
            version,
            description,
            reload_manager,
            os,
            architectures,
            architectures_location,
            scope,
            units,
            symlinks,
            remote,
        };
        for &arch in &recipe.architectures {
            let file_name = recipe.image_file_name(arch);
            if file_name.len() > MAX_IMAGE_FILE_NAME {
                return Err(RecipeError::Invalid {
                    location: Location::at(self.file, self.src, 0),
                    key: Some("version".into()),
                    message: format!(
                        "image file name {file_name:?} would be longer than {MAX_IMAGE_FILE_NAME} bytes"
                    ),
                    help: Some("shorten the name or the version".into()),
                });
            }
        }
        Ok((recipe, fixed))
    }

    fn validate_os(
        &self,
        os: Option<Spanned<String>>,
        sysext_level: Option<Spanned<String>>,
        version_id: Option<Spanned<String>>,
    ) -> Result<OsMatch, RecipeError> {
        let token = |v: &Spanned<String>, key: &str| {
            OsToken::new(v.get_ref().clone())
                .map_err(|e| self.err(v.span(), key, e.to_string(), None))
        };
        let is_any = os.as_ref().is_none_or(|o| o.get_ref() == "_any");
        if is_any {
            for (v, key) in [(&sysext_level, "sysext-level"), (&version_id, "version-id")] {
                if let Some(v) = v {
                    return Err(self.err(
                        v.span(),
                        key,
                        "only applies to a specific host OS, but `os` is \"_any\"",
                        Some(format!(
                            "set os = \"flatcar\" (or another os-release ID) or remove `{key}`"
                        )),
                    ));
                }
            }
            return Ok(OsMatch::Any);
        }
        let Some(os) = os else {
            return Ok(OsMatch::Any);
        };
        let id = token(&os, "os").map_err(|e| match e {
            RecipeError::Invalid {
                location,
                key,
                message,
                ..
            } => RecipeError::Invalid {
                location,
                key,
                message,
                help: Some("use the host's os-release ID (e.g. \"flatcar\") or \"_any\"".into()),
            },
            other => other,
        })?;
        Ok(OsMatch::Os {
            id,
            sysext_level: sysext_level
                .as_ref()
                .map(|v| token(v, "sysext-level"))
                .transpose()?,
            version_id: version_id
                .as_ref()
                .map(|v| token(v, "version-id"))
                .transpose()?,
        })
    }
}

/// The `[table]` header in force at `offset`, if any.
fn table_at(src: &str, offset: usize) -> Option<&str> {
    let before = src.get(..offset.min(src.len()))?;
    before.lines().rev().find_map(|line| {
        let t = line.trim();
        if let Some(inner) = t.strip_prefix("[[") {
            let end = inner.find("]]")?;
            Some(inner.get(..end)?.trim())
        } else if let Some(inner) = t.strip_prefix('[') {
            let end = inner.find(']')?;
            Some(inner.get(..end)?.trim())
        } else {
            None
        }
    })
}

/// The key assigned on the line holding `offset` (`KEY = …`), dotted with
/// its table, if the line looks like an assignment.
fn key_at(src: &str, offset: usize) -> Option<String> {
    let offset = offset.min(src.len());
    let line_start = src.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = src.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '"'))
    {
        return None;
    }
    Some(match table_at(src, line_start) {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse(Path::new("r"), text)
    }

    const MIN: &str = "name = \"hello\"\nversion = \"1.0\"\ndescription = \"d\"\n";

    #[test]
    fn minimal_recipe_gets_defaults() {
        let r = parse(MIN).unwrap();
        assert_eq!(r.name.as_str(), "hello");
        assert_eq!(r.version.as_str(), "1.0");
        assert_eq!(r.os, OsMatch::Any);
        assert_eq!(r.architectures, vec![Arch::X86_64, Arch::Arm64]);
        assert_eq!(r.scope, vec![Scope::System]);
        assert!(!r.reload_manager);
        assert!(r.units.start.is_empty());
        assert_eq!(r.image_file_name(Arch::Arm64), "hello-1.0-arm64.raw");
    }

    #[test]
    fn full_recipe() {
        let text = format!(
            "{MIN}reload-manager = true\nos = \"flatcar\"\nsysext-level = \"1.0\"\n\
             architectures = [\"arm64\"]\nscope = [\"system\", \"initrd\"]\n\
             [units]\nstart = [\"a.service\", \"a.socket\", \"b@x.service\"]\n"
        );
        let r = parse(&text).unwrap();
        assert!(r.reload_manager);
        assert_eq!(
            r.os,
            OsMatch::Os {
                id: OsToken::new("flatcar").unwrap(),
                sysext_level: Some(OsToken::new("1.0").unwrap()),
                version_id: None
            }
        );
        assert_eq!(r.architectures, vec![Arch::Arm64]);
        assert_eq!(r.architectures_location.line, 7);
        assert_eq!(r.units.start.len(), 3);
        assert_eq!(r.units.start[1].unit.kind(), UnitKind::Socket);
        assert_eq!(r.units.start[2].location.line, 10);
        assert_eq!(
            r.units.start[2].unit.template().as_deref(),
            Some("b@.service")
        );
    }

    fn err_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = err_text(&format!("{MIN}nmae = \"x\"\n"));
        assert!(e.starts_with("r/recipe.toml:4:1: key `nmae`:"), "{e}");
        assert!(e.contains("check the spelling"), "{e}");
        let e = err_text(&format!("{MIN}[units]\nstart = []\nenable = []\n"));
        assert!(
            e.starts_with("r/recipe.toml:6:1: key `units.enable`:"),
            "{e}"
        );
    }

    #[test]
    fn bad_arch_names_line_and_key() {
        let e = err_text(&format!("{MIN}architectures = [\"x86-64\", \"amd64\"]\n"));
        assert!(
            e.starts_with("r/recipe.toml:4:28: key `architectures`:"),
            "{e}"
        );
        assert!(e.contains("\"amd64\""), "{e}");
        assert!(e.contains("not amd64"), "{e}");
    }

    #[test]
    fn missing_name() {
        let e = err_text("version = \"1\"\ndescription = \"d\"\n");
        assert!(
            e.starts_with("r/recipe.toml:1:1: key `name`: required key is missing"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_key() {
        let e = err_text("name = 5\nversion = \"1\"\ndescription = \"d\"\n");
        assert!(e.starts_with("r/recipe.toml:1:8: key `name`:"), "{e}");
        let e = err_text(&format!("{MIN}reload-manager = \"yes\"\n"));
        assert!(
            e.starts_with("r/recipe.toml:4:18: key `reload-manager`:"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_is_located() {
        let e = err_text("name = \"hello\nversion = 1\n");
        assert!(e.starts_with("r/recipe.toml:1:"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_locates_errors(text in "\\PC{0,40}(\n\\PC{0,40}){0,6}") {
            if let Err(RecipeError::Invalid { location, .. }) = parse(&text) {
                let lines = text.split('\n').count();
                proptest::prop_assert!(location.line >= 1 && location.line <= lines.max(1));
                proptest::prop_assert!(location.column >= 1);
            }
        }

        #[test]
        fn bad_values_are_blamed_on_their_key(
            key in proptest::sample::select(vec!["name", "version", "description", "os", "sysext-level", "version-id"]),
            value in "\\PC{0,30}",
        ) {
            let mut lines = vec![
                ("name", "\"hello\"".to_string()),
                ("version", "\"1.0\"".to_string()),
                ("description", "\"d\"".to_string()),
            ];
            let quoted = toml::Value::String(value).to_string();
            match lines.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = quoted,
                None => lines.push((key, quoted)),
            }
            let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            match parse(&text) {
                Ok(r) => proptest::prop_assert!(ExtensionName::new(r.name.as_str()).is_ok()),
                Err(RecipeError::Invalid { key: k, .. }) => proptest::prop_assert_eq!(k.as_deref(), Some(key)),
                Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    #[test]
    fn bad_names() {
        for bad in ["", ".hidden", "-x", "a/b", "a b", "x.raw", "ä"] {
            assert!(ExtensionName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "docker-compose", "k3s", "nvidia_runtime.v2", "A9"] {
            assert!(ExtensionName::new(good).is_ok(), "{good:?}");
        }
        let e = err_text("name = \"../evil\"\nversion = \"1\"\ndescription = \"d\"\n");
        assert!(
            e.starts_with("r/recipe.toml:1:8: key `name`: invalid extension name"),
            "{e}"
        );
        let e = err_text("name = \"a\"\nversion = \"1 2\"\ndescription = \"d\"\n");
        assert!(e.starts_with("r/recipe.toml:2:11: key `version`:"), "{e}");
    }

    #[test]
    fn os_rules() {
        let e = err_text(&format!("{MIN}sysext-level = \"1.0\"\n"));
        assert!(e.contains("key `sysext-level`"), "{e}");
        assert!(e.contains("os = \"flatcar\""), "{e}");
        let e = err_text(&format!("{MIN}os = \"Flatcar\"\n"));
        assert!(e.starts_with("r/recipe.toml:4:6: key `os`:"), "{e}");
        let r = parse(&format!("{MIN}os = \"_any\"\n")).unwrap();
        assert_eq!(r.os, OsMatch::Any);
    }

    #[test]
    fn unit_names() {
        for bad in [
            "",
            "x",
            "x.mount",
            "@.service",
            "a@.service",
            "a b.service",
            "a@b@c.service",
        ] {
            assert!(UnitName::new(bad).is_err(), "{bad:?}");
        }
        let e = err_text(&format!("{MIN}[units]\nstart = [\"hello\"]\n"));
        assert!(
            e.starts_with("r/recipe.toml:5:10: key `units.start`:"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_and_empties() {
        assert!(err_text(&format!("{MIN}architectures = []\n")).contains("empty"));
        assert!(
            err_text(&format!("{MIN}architectures = [\"arm64\", \"arm64\"]\n")).contains("twice")
        );
        assert!(err_text(&format!("{MIN}scope = []\n")).contains("empty"));
        assert!(err_text(&format!("{MIN}scope = [\"host\"]\n")).contains("key `scope`"));
        assert!(err_text(&format!("{MIN}description = \"\"\n")).contains("duplicate key"));
    }
}
