//! Remote inputs in the recipe format: where a recipe's versions come from
//! (`[upstream]`, `[secondary.NAME]`), the per-architecture template
//! variables (`[arch.ARCH]`), and what to download, how to check it, how to
//! unpack it and what goes where (`[[source]]`), plus `[[symlink]]`.
//!
//! This module owns those tables' validation (every error names the file,
//! line, column and key), the `{variable}` templates they use, planning the
//! concrete inputs of one version and architecture ([`Remote::plan`]), and
//! placing a downloaded input into an architecture's staging directory
//! ([`Source::unpack_into`], including `.deb` packages inside archives).
//! Version discovery is [`crate::versions`]; pinning is [`crate::lock`].
//!
//! # Format
//!
//! ```toml
//! [upstream]                     # where the extension's version comes from
//! github = "k3s-io/k3s"          # GitHub releases (pre-releases and drafts dropped)
//! tag = "{version}"              # how a tag spells the version (default "{version}")
//! match = "v*+k3s*"              # glob the version must match (optional)
//! streams = "minor"              # NAME-v1.30 = newest v1.30.x (optional)
//! # or: listing = "https://download.docker.com/linux/static/stable/{arch}/"
//! #     listing-file = "docker-{version}.tgz"
//! # or: kubernetes-schedule = "https://raw.githubusercontent.com/kubernetes/website/main/data/releases/schedule.yaml"
//!
//! [secondary.runc]               # an input with its own version, pinned in the lock
//! version-url = "https://raw.githubusercontent.com/containerd/containerd/refs/tags/v{version}/script/setup/runc-version"
//! # or github = "containernetworking/plugins"; tag and match as above
//!
//! [arch.x86-64]                  # template variables per architecture
//! arch = "amd64"
//! [arch.arm64]
//! arch = "arm64"
//!
//! [[source]]
//! name = "runc"                  # names the input in the lock and in messages
//! version = "runc"               # {version} is this secondary's (default: the extension's)
//! url = "https://github.com/opencontainers/runc/releases/download/{version}/runc.{arch}"
//! checksum = "sha256sum-list"    # or "sha256-file" (default URL "{url}.sha256"), or "none"
//! checksum-url = "https://github.com/opencontainers/runc/releases/download/{version}/runc.sha256sum"
//! # checksum-name = "{file}"     # the name looked up in a list (default: the URL's file name)
//! unpack = "raw"                 # raw, tar, tar.gz, tar.xz, tar.zst (default: from the URL)
//! place = [{ to = "usr/bin/runc", mode = 0o755 }]
//! # strip-components = 1; exclude = ["bin/x"]; [[source.deb]] path/place/exclude
//!
//! [[symlink]]
//! path = "usr/local/bin/kubectl"
//! target = "k3s"
//! ```
//!
//! Template variables: `{version}`, `{name}` (the extension), every key of
//! `[arch.ARCH]`, and in `checksum-url`/`checksum-name` also `{url}` and
//! `{file}` (the input's URL and its last path component). `checksum =
//! "none"` means upstream publishes no checksum: the lock file's sha256 is
//! the check, and a build without a lock needs `--allow-unpinned`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sysupdate::{Arch, Version};
use toml::Spanned;

use crate::recipe::{Ctx, Location, RecipeError};
use crate::unpack::{self, ArchiveFormat, Selection, UnpackOptions, UnpackReport};
use crate::versions::Glob;

pub(crate) const UPSTREAM_KEYS: &str =
    "github, tag, match, streams, listing, listing-file, kubernetes-schedule";
pub(crate) const SECONDARY_KEYS: &str = "github, tag, match, version-url";
pub(crate) const SOURCE_KEYS: &str = "name, version, url, checksum, checksum-url, checksum-name, \
     unpack, strip-components, place, exclude, deb";

/// Variable names a recipe cannot define in `[arch.ARCH]`.
const RESERVED_VARS: [&str; 4] = ["version", "name", "url", "file"];

// ---------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------

/// Template variables and their values.
pub type Vars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

/// A string with `{variable}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `{` and `}` only appear around variable names.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("unmatched '}}' in {text:?}"));
            }
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
            let name = &after[..close];
            if !is_var_name(name) {
                return Err(format!(
                    "{{{name}}} is not a variable name (lowercase letters, digits and '-')"
                ));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The variables used, in order of first use.
    pub fn vars(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.parts {
            if let Part::Var(v) = p {
                if !out.contains(&v.as_str()) {
                    out.push(v);
                }
            }
        }
        out
    }

    pub fn uses(&self, var: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(v) if v == var))
    }

    /// Fills in every variable.
    pub fn render(&self, vars: &Vars) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(
                    vars.get(v)
                        .ok_or_else(|| format!("{:?}: no value for {{{v}}}", self.text))?,
                ),
            }
        }
        Ok(out)
    }

    /// Matches `s` against the template, rendering every variable but
    /// `capture` from `vars`, and returns what `{capture}` stands for. The
    /// template must use `capture` exactly once; the capture is non-empty.
    pub fn capture(&self, vars: &Vars, s: &str, capture: &str) -> Option<String> {
        let at = self
            .parts
            .iter()
            .position(|p| matches!(p, Part::Var(v) if v == capture))?;
        let render = |parts: &[Part]| -> Option<String> {
            let mut out = String::new();
            for p in parts {
                match p {
                    Part::Lit(l) => out.push_str(l),
                    Part::Var(v) if v == capture => return None,
                    Part::Var(v) => out.push_str(vars.get(v)?),
                }
            }
            Some(out)
        };
        let prefix = render(&self.parts[..at])?;
        let suffix = render(&self.parts[at + 1..])?;
        let middle = s.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
        (!middle.is_empty()).then(|| middle.to_string())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The last path component of a URL (without query), for `{file}`.
pub fn url_file_name(url: &str) -> &str {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    no_query.rsplit('/').next().unwrap_or(no_query)
}

// ---------------------------------------------------------------------------
// Raw TOML shapes (deserialized by `recipe.rs`)
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSymlink {
    path: Spanned<String>,
    target: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUpstream {
    github: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    #[serde(rename = "match")]
    matches: Option<Spanned<String>>,
    streams: Option<Spanned<String>>,
    listing: Option<Spanned<String>>,
    listing_file: Option<Spanned<String>>,
    kubernetes_schedule: Option<Spanned<String>>,
    version_url: Option<Spanned<String>>,
}

/// `[arch.ARCH]` tables: architecture → variable → value.
pub(crate) type RawArchTable = BTreeMap<String, Spanned<BTreeMap<String, Spanned<String>>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSource {
    name: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    checksum: Option<Spanned<String>>,
    checksum_url: Option<Spanned<String>>,
    checksum_name: Option<Spanned<String>>,
    unpack: Option<Spanned<String>>,
    strip_components: Option<Spanned<i64>>,
    place: Option<Vec<Spanned<RawPlace>>>,
    exclude: Option<Vec<Spanned<String>>>,
    deb: Option<Vec<Spanned<RawDeb>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPlace {
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    mode: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawDeb {
    path: Option<Spanned<String>>,
    place: Option<Vec<Spanned<RawPlace>>>,
    exclude: Option<Vec<Spanned<String>>>,
}

// ---------------------------------------------------------------------------
// Validated model
// ---------------------------------------------------------------------------

/// A symlink placed in every image: `path` (an image path under `usr/` or
/// `opt/`) pointing at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkSpec {
    pub path: String,
    pub target: String,
    pub location: Location,
}

/// Streams a recipe publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// One stream per `MAJOR.MINOR` (`v1.30`): Kubernetes-style.
    Minor,
}

/// Where the versions of an input are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// GitHub releases of `owner/repo`.
    Github { owner: String, repo: String },
    /// A directory listing (HTML or text) per architecture; file names that
    /// match `file` give the versions, and a version must be listed for
    /// every architecture.
    Listing { url: Template, file: Template },
    /// Kubernetes' `schedule.yaml`: every released patch of every
    /// supported minor.
    KubernetesSchedule { url: String },
    /// A text file whose content (matched against `tag`) is the version;
    /// `{version}` in the URL is the extension's version (secondary only).
    VersionUrl { url: Template },
}

/// Where an input's versions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub source: VersionSource,
    /// How tags (and version files) spell the version: captures `{version}`.
    pub tag: Template,
    pub matches: Option<Glob>,
    pub streams: Option<StreamKind>,
    pub location: Location,
}

/// How an input's sha256 is obtained when there is no lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumSpec {
    /// A file beside the input: a bare digest or `HEX  NAME`.
    Sha256File { url: Template },
    /// A `sha256sum`-style list; the line for `name` is used.
    Sha256sumList { url: Template, name: Template },
    /// Upstream publishes none: the lock pins it.
    None,
}

/// One placement rule: archive path `from` to image path `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub from: Template,
    pub to: Template,
    pub mode: Option<u32>,
}

/// A `.deb` package inside an archive whose `data.tar` is unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebSpec {
    pub path: Template,
    pub place: Vec<Place>,
    pub exclude: Vec<Template>,
}

/// One downloaded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    /// The `[secondary.NAME]` whose version `{version}` is; `None` for the
    /// extension's own version.
    pub version_of: Option<String>,
    pub url: Template,
    pub checksum: ChecksumSpec,
    /// `None`: guessed from the URL's file name (raw if it has no archive
    /// extension).
    pub unpack: Option<ArchiveFormat>,
    pub strip_components: usize,
    pub place: Vec<Place>,
    pub exclude: Vec<Template>,
    pub debs: Vec<DebSpec>,
    pub location: Location,
}

/// The remote inputs of a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub upstream: Option<Upstream>,
    pub secondary: BTreeMap<String, Upstream>,
    /// Variables per architecture (empty maps if the recipe has no `[arch]`).
    pub arch_vars: BTreeMap<Arch, BTreeMap<String, String>>,
    pub sources: Vec<Source>,
}

/// The versions a build uses: the extension's and every secondary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub main: Version,
    pub secondary: BTreeMap<String, Version>,
}

/// How one planned input is checked when there is no lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedChecksum {
    /// Fetch the checksum file at `url` and take the digest for `name`.
    File { url: String, name: String },
    /// No published checksum.
    None,
}

/// One concrete input of one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedInput {
    /// Index into [`Remote::sources`].
    pub index: usize,
    pub source: String,
    pub arch: Arch,
    pub version: Version,
    pub url: String,
    pub checksum: PlannedChecksum,
    /// The template variables of this input.
    pub vars: Vars,
}

impl Remote {
    /// Template variables of `arch` for a source of version `version`.
    pub fn vars(&self, extension: &str, arch: Arch, version: &Version) -> Vars {
        let mut vars: Vars = self.arch_vars.get(&arch).cloned().unwrap_or_default();
        vars.insert("version".into(), version.to_string());
        vars.insert("name".into(), extension.to_string());
        vars
    }

    /// Variables for discovering versions (no version yet): per arch.
    pub fn arch_only_vars(&self, extension: &str, arch: Arch) -> Vars {
        let mut vars: Vars = self.arch_vars.get(&arch).cloned().unwrap_or_default();
        vars.insert("name".into(), extension.to_string());
        vars
    }

    /// The concrete inputs for `versions` and `arch`, in source order.
    pub fn plan(
        &self,
        extension: &str,
        versions: &Versions,
        arch: Arch,
    ) -> Result<Vec<PlannedInput>, String> {
        let mut out = Vec::new();
        for (index, s) in self.sources.iter().enumerate() {
            let version = match &s.version_of {
                None => versions.main.clone(),
                Some(n) => versions.secondary.get(n).cloned().ok_or_else(|| {
                    format!("no version for [secondary.{n}] (source {:?})", s.name)
                })?,
            };
            let mut vars = self.vars(extension, arch, &version);
            let url = s.url.render(&vars)?;
            crate::fetch::parse_url(&url).map_err(|e| e.to_string())?;
            vars.insert("url".into(), url.clone());
            vars.insert("file".into(), url_file_name(&url).to_string());
            let checksum = match &s.checksum {
                ChecksumSpec::Sha256File { url: t } => PlannedChecksum::File {
                    url: t.render(&vars)?,
                    name: url_file_name(&url).to_string(),
                },
                ChecksumSpec::Sha256sumList { url: t, name } => PlannedChecksum::File {
                    url: t.render(&vars)?,
                    name: name.render(&vars)?,
                },
                ChecksumSpec::None => PlannedChecksum::None,
            };
            out.push(PlannedInput {
                index,
                source: s.name.clone(),
                arch,
                version,
                url,
                checksum,
                vars,
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn parse_template(
    ctx: &Ctx<'_>,
    v: &Spanned<String>,
    key: &str,
    allowed: &dyn Fn(&str) -> bool,
    allowed_text: &str,
) -> Result<Template, RecipeError> {
    let t = Template::parse(v.get_ref()).map_err(|m| {
        ctx.err(
            v.span(),
            key,
            m,
            Some("write variables as {version} or {arch}".to_string()),
        )
    })?;
    if let Some(bad) = t.vars().into_iter().find(|n| !allowed(n)) {
        return Err(ctx.err(
            v.span(),
            key,
            format!("unknown variable {{{bad}}}"),
            Some(format!(
                "variables here: {allowed_text} (define architecture variables in [arch.ARCH])"
            )),
        ));
    }
    Ok(t)
}

/// Validates `[[symlink]]`.
pub(crate) fn validate_symlinks(
    ctx: &Ctx<'_>,
    raw: Vec<Spanned<RawSymlink>>,
) -> Result<Vec<SymlinkSpec>, RecipeError> {
    let mut out: Vec<SymlinkSpec> = Vec::new();
    for item in raw {
        let span = item.span();
        let s = item.into_inner();
        let path = s.path.get_ref().trim_start_matches('/').to_string();
        let comps: Vec<&str> = path.split('/').collect();
        let ok = comps.len() >= 2
            && matches!(comps[0], "usr" | "opt")
            && comps
                .iter()
                .all(|c| !c.is_empty() && *c != "." && *c != ".." && !c.contains('\0'))
            && path != "usr/sbin"
            && !path.starts_with("usr/sbin/");
        if !ok {
            return Err(ctx.err(
                s.path.span(),
                "symlink.path",
                format!(
                    "{:?} is not an image path under usr/ or opt/",
                    s.path.get_ref()
                ),
                Some("use e.g. path = \"usr/local/bin/kubectl\" (no '..', not usr/sbin)".into()),
            ));
        }
        let target = s.target.get_ref().clone();
        if target.is_empty() || target.contains('\0') {
            return Err(ctx.err(
                s.target.span(),
                "symlink.target",
                "the target is empty",
                Some("name the file the link points at, e.g. target = \"k3s\"".into()),
            ));
        }
        if !target.starts_with('/') {
            // Relative targets may not climb above the image root.
            let mut depth = comps.len() as i64 - 1;
            for c in target.split('/') {
                match c {
                    "" | "." => {}
                    ".." => depth -= 1,
                    _ => depth += 1,
                }
                if depth < 0 {
                    return Err(ctx.err(
                        s.target.span(),
                        "symlink.target",
                        format!("{target:?} points outside the image root"),
                        Some("use a target inside the image or an absolute path".into()),
                    ));
                }
            }
        }
        if out.iter().any(|o| o.path == path) {
            return Err(ctx.err(
                s.path.span(),
                "symlink.path",
                format!("{path} is listed twice"),
                Some("remove the duplicate".into()),
            ));
        }
        out.push(SymlinkSpec {
            path,
            target,
            location: ctx.location(span.start),
        });
    }
    Ok(out)
}

fn validate_upstream(
    ctx: &Ctx<'_>,
    table: &str,
    raw: Spanned<RawUpstream>,
    arch_var_names: &[String],
    secondary: bool,
) -> Result<Upstream, RecipeError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let key = |k: &str| format!("{table}.{k}");
    let is_arch_var = |n: &str| n == "name" || arch_var_names.iter().any(|a| a == n);
    let arch_text = {
        let mut v = vec!["{name}".to_string()];
        v.extend(arch_var_names.iter().map(|a| format!("{{{a}}}")));
        v.join(", ")
    };
    let given: Vec<(&str, &Spanned<String>)> = [
        ("github", raw.github.as_ref()),
        ("listing", raw.listing.as_ref()),
        ("kubernetes-schedule", raw.kubernetes_schedule.as_ref()),
        ("version-url", raw.version_url.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let kinds = if secondary {
        "github or version-url"
    } else {
        "github, listing or kubernetes-schedule"
    };
    let (kind, value) = match given.as_slice() {
        [] => {
            return Err(RecipeError::Invalid {
                location: ctx.location(span.start),
                key: Some(table.to_string()),
                message: format!("says nowhere where versions come from: set one of {kinds}"),
                help: Some("e.g. github = \"owner/repo\"".into()),
            })
        }
        [one] => *one,
        [_, (k, v), ..] => {
            return Err(ctx.err(
                v.span(),
                &key(k),
                format!("only one of {kinds} may be set"),
                Some("remove all but one".into()),
            ))
        }
    };
    let source = match kind {
        "github" => {
            let text = value.get_ref();
            let parts: Vec<&str> = text.split('/').collect();
            let ok_part = |p: &str| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            if parts.len() != 2 || !parts.iter().all(|p| ok_part(p)) {
                return Err(ctx.err(
                    value.span(),
                    &key("github"),
                    format!("{text:?} is not OWNER/REPO"),
                    Some("e.g. github = \"k3s-io/k3s\"".into()),
                ));
            }
            VersionSource::Github {
                owner: parts[0].to_string(),
                repo: parts[1].to_string(),
            }
        }
        "listing" if !secondary => {
            let url = parse_template(ctx, value, &key("listing"), &is_arch_var, &arch_text)?;
            let file = raw.listing_file.as_ref().ok_or_else(|| {
                ctx.err(
                    value.span(),
                    &key("listing"),
                    "a listing needs `listing-file`, the file name pattern that holds the version",
                    Some("e.g. listing-file = \"docker-{version}.tgz\"".to_string()),
                )
            })?;
            let allowed = |n: &str| n == "version" || is_arch_var(n);
            let file_t = parse_template(
                ctx,
                file,
                &key("listing-file"),
                &allowed,
                &format!("{{version}}, {arch_text}"),
            )?;
            let n = file_t
                .parts
                .iter()
                .filter(|p| matches!(p, Part::Var(v) if v == "version"))
                .count();
            if n != 1 {
                return Err(ctx.err(
                    file.span(),
                    &key("listing-file"),
                    "must contain {version} exactly once",
                    None,
                ));
            }
            VersionSource::Listing { url, file: file_t }
        }
        "kubernetes-schedule" if !secondary => {
            crate::fetch::parse_url(value.get_ref()).map_err(|e| {
                ctx.err(
                    value.span(),
                    &key("kubernetes-schedule"),
                    e.to_string(),
                    None,
                )
            })?;
            VersionSource::KubernetesSchedule {
                url: value.get_ref().clone(),
            }
        }
        "version-url" if secondary => {
            let allowed = |n: &str| n == "version" || is_arch_var(n);
            let url = parse_template(
                ctx,
                value,
                &key("version-url"),
                &allowed,
                &format!("{{version}} (the extension's), {arch_text}"),
            )?;
            VersionSource::VersionUrl { url }
        }
        other => {
            return Err(ctx.err(
                value.span(),
                &key(other),
                format!("not allowed in [{table}]"),
                Some(format!("use one of {kinds}")),
            ))
        }
    };
    if kind != "listing" {
        if let Some(f) = &raw.listing_file {
            return Err(ctx.err(
                f.span(),
                &key("listing-file"),
                "only applies with `listing`",
                None,
            ));
        }
    }
    let tag = match &raw.tag {
        None => Template::parse("{version}").map_err(|m| ctx.err(span.clone(), table, m, None))?,
        Some(t) => {
            let allowed = |n: &str| n == "version";
            let tpl = parse_template(ctx, t, &key("tag"), &allowed, "{version}")?;
            let n = tpl
                .parts
                .iter()
                .filter(|p| matches!(p, Part::Var(v) if v == "version"))
                .count();
            if n != 1 {
                return Err(ctx.err(
                    t.span(),
                    &key("tag"),
                    "must contain {version} exactly once",
                    Some("e.g. tag = \"v{version}\"".into()),
                ));
            }
            tpl
        }
    };
    if matches!(
        source,
        VersionSource::KubernetesSchedule { .. } | VersionSource::Listing { .. }
    ) {
        if let Some(t) = &raw.tag {
            return Err(ctx.err(
                t.span(),
                &key("tag"),
                "only applies to github and version-url",
                None,
            ));
        }
    }
    let matches = match &raw.matches {
        None => None,
        Some(m) => Some(Glob::new(m.get_ref()).map_err(|e| {
            ctx.err(
                m.span(),
                &key("match"),
                e,
                Some("a glob: * any text, ? one character, [0-9] a class".into()),
            )
        })?),
    };
    let streams = match &raw.streams {
        None => None,
        Some(s) if secondary => {
            return Err(ctx.err(
                s.span(),
                &key("streams"),
                "streams belong to the extension's own version ([upstream])",
                None,
            ))
        }
        Some(s) => match s.get_ref().as_str() {
            "minor" => Some(StreamKind::Minor),
            other => {
                return Err(ctx.err(
                    s.span(),
                    &key("streams"),
                    format!("unknown stream kind {other:?}"),
                    Some("use streams = \"minor\" (NAME-v1.30 = newest v1.30.x)".into()),
                ))
            }
        },
    };
    Ok(Upstream {
        source,
        tag,
        matches,
        streams,
        location: ctx.location(span.start),
    })
}

fn parse_mode(ctx: &Ctx<'_>, m: &Spanned<i64>, key: &str) -> Result<u32, RecipeError> {
    let v = *m.get_ref();
    if !(0..=0o777).contains(&v) {
        return Err(ctx.err(
            m.span(),
            key,
            format!("mode {v:#o} is not a permission mode"),
            Some("write it in octal, e.g. mode = 0o755 (no setuid, setgid or sticky bits)".into()),
        ));
    }
    Ok(v as u32)
}

fn validate_places(
    ctx: &Ctx<'_>,
    raw: Vec<Spanned<RawPlace>>,
    key: &str,
    allowed: &dyn Fn(&str) -> bool,
    allowed_text: &str,
) -> Result<Vec<Place>, RecipeError> {
    let mut out = Vec::new();
    for p in raw {
        let span = p.span();
        let p = p.into_inner();
        let from = match &p.from {
            Some(f) => parse_template(ctx, f, &format!("{key}.from"), allowed, allowed_text)?,
            None => Template::parse("").map_err(|m| ctx.err(span.clone(), key, m, None))?,
        };
        let to_raw = p.to.as_ref().ok_or_else(|| {
            ctx.err(
                span.clone(),
                &format!("{key}.to"),
                "a placement needs `to`, the image path",
                Some("e.g. { from = \"bin/\", to = \"usr/bin/\" }".to_string()),
            )
        })?;
        let to = parse_template(ctx, to_raw, &format!("{key}.to"), allowed, allowed_text)?;
        // The destination must stay under usr/ or opt/.
        let lit = to.as_str().trim_start_matches('/');
        let first = lit.split('/').next().unwrap_or_default();
        if !(first == "usr" || first == "opt")
            || lit.split('/').any(|c| c == "..")
            || lit == "usr/sbin"
            || lit.starts_with("usr/sbin/")
        {
            return Err(ctx.err(
                to_raw.span(),
                &format!("{key}.to"),
                format!("{:?} is not under usr/ or opt/", to.as_str()),
                Some("systemd-sysext merges only /usr and /opt; put programs in usr/bin, not usr/sbin".into()),
            ));
        }
        // Checked again with values, but catch literal mistakes early.
        Selection::all()
            .place(&from.as_str().replace(['{', '}'], ""), "usr/x")
            .map_err(|e| ctx.err(span.clone(), &format!("{key}.from"), e.to_string(), None))?;
        let mode = p
            .mode
            .as_ref()
            .map(|m| parse_mode(ctx, m, &format!("{key}.mode")))
            .transpose()?;
        out.push(Place { from, to, mode });
    }
    Ok(out)
}

/// Validates `[upstream]`, `[secondary.*]`, `[arch.*]` and `[[source]]`.
pub(crate) fn validate_remote(
    ctx: &Ctx<'_>,
    architectures: &[Arch],
    upstream: Option<Spanned<RawUpstream>>,
    secondary: Option<BTreeMap<String, Spanned<RawUpstream>>>,
    arch: Option<RawArchTable>,
    sources: Option<Vec<Spanned<RawSource>>>,
) -> Result<Option<Remote>, RecipeError> {
    if upstream.is_none() && secondary.is_none() && arch.is_none() && sources.is_none() {
        return Ok(None);
    }

    // [arch.ARCH]
    let mut arch_vars: BTreeMap<Arch, BTreeMap<String, String>> = BTreeMap::new();
    let mut var_names: Vec<String> = Vec::new();
    if let Some(table) = arch {
        let table_span = table.values().next().map_or(0..0, |v| v.span());
        let mut first: Option<(Arch, Vec<String>)> = None;
        for (name, vars) in table {
            let a: Arch = name.parse().map_err(|e: sysupdate::arch::UnknownArch| {
                ctx.err(
                    vars.span(),
                    &format!("arch.{name}"),
                    e.to_string(),
                    Some("use systemd's names: [arch.x86-64], [arch.arm64]".into()),
                )
            })?;
            if !architectures.contains(&a) {
                return Err(ctx.err(
                    vars.span(),
                    &format!("arch.{name}"),
                    format!("{a} is not in this recipe's `architectures`"),
                    Some("add it to `architectures` or remove this table".into()),
                ));
            }
            let span = vars.span();
            let mut map = BTreeMap::new();
            for (k, v) in vars.into_inner() {
                if !is_var_name(&k) || RESERVED_VARS.contains(&k.as_str()) {
                    return Err(ctx.err(
                        v.span(),
                        &format!("arch.{name}.{k}"),
                        format!("{k:?} cannot be a variable name"),
                        Some(format!(
                            "use lowercase letters, digits and '-', not one of {}",
                            RESERVED_VARS.join(", ")
                        )),
                    ));
                }
                let value = v.get_ref();
                if value.contains(['{', '}', '/']) {
                    return Err(ctx.err(
                        v.span(),
                        &format!("arch.{name}.{k}"),
                        "values may not contain '{', '}' or '/'",
                        None,
                    ));
                }
                map.insert(k, value.clone());
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            match &first {
                None => first = Some((a, keys)),
                Some((fa, fk)) if *fk != keys => {
                    return Err(ctx.err(
                        span,
                        &format!("arch.{name}"),
                        format!(
                            "defines {} but [arch.{fa}] defines {}",
                            keys.join(", "),
                            fk.join(", ")
                        ),
                        Some("every [arch.ARCH] table must define the same variables".into()),
                    ))
                }
                Some(_) => {}
            }
            arch_vars.insert(a, map);
        }
        if let Some((_, keys)) = first {
            var_names = keys;
        }
        if let Some(missing) = architectures.iter().find(|a| !arch_vars.contains_key(a)) {
            return Err(RecipeError::Invalid {
                location: ctx.location(table_span.start),
                key: Some("arch".into()),
                message: format!("no [arch.{missing}] table, but {missing} is in `architectures`"),
                help: Some(format!("add [arch.{missing}] with the upstream's names")),
            });
        }
    }

    let upstream = upstream
        .map(|u| validate_upstream(ctx, "upstream", u, &var_names, false))
        .transpose()?;

    let mut secondaries = BTreeMap::new();
    let mut secondary_spans = BTreeMap::new();
    if let Some(table) = secondary {
        for (name, raw) in table {
            if !is_var_name(&name) {
                return Err(ctx.err(
                    raw.span(),
                    &format!("secondary.{name}"),
                    "a secondary input's name uses lowercase letters, digits and '-'",
                    None,
                ));
            }
            secondary_spans.insert(name.clone(), raw.span());
            let u = validate_upstream(ctx, &format!("secondary.{name}"), raw, &var_names, true)?;
            secondaries.insert(name, u);
        }
    }

    // [[source]]
    let mut out: Vec<Source> = Vec::new();
    for (i, raw) in sources.unwrap_or_default().into_iter().enumerate() {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = |k: &str| format!("source[{}].{k}", i + 1);
        let required = |v: &Option<Spanned<String>>, k: &str, example: &str| {
            v.clone().ok_or_else(|| RecipeError::Invalid {
                location: ctx.location(span.start),
                key: Some(key(k)),
                message: "required key is missing".into(),
                help: Some(format!("add {k} = {example}")),
            })
        };
        let name_v = required(&raw.name, "name", "\"kubelet\"")?;
        let name = name_v.get_ref().clone();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(ctx.err(
                name_v.span(),
                &key("name"),
                format!("{name:?} is not a source name"),
                Some("use letters, digits, '-', '_' and '.'".into()),
            ));
        }
        if out.iter().any(|s| s.name == name) {
            return Err(ctx.err(
                name_v.span(),
                &key("name"),
                format!("source {name:?} is defined twice"),
                Some("give every [[source]] its own name".into()),
            ));
        }
        let version_of = match &raw.version {
            None => None,
            Some(v) => {
                if !secondaries.contains_key(v.get_ref()) {
                    return Err(ctx.err(
                        v.span(),
                        &key("version"),
                        format!("there is no [secondary.{}]", v.get_ref()),
                        Some("name a [secondary.NAME] table, or remove `version` to use the extension's version".into()),
                    ));
                }
                Some(v.get_ref().clone())
            }
        };
        let base_vars = |n: &str| n == "version" || n == "name" || var_names.iter().any(|a| a == n);
        let mut base_text = vec!["{version}".to_string(), "{name}".to_string()];
        base_text.extend(var_names.iter().map(|a| format!("{{{a}}}")));
        let base_text = base_text.join(", ");
        let url_v = required(&raw.url, "url", "\"https://…/{version}/…\"")?;
        let url = parse_template(ctx, &url_v, &key("url"), &base_vars, &base_text)?;
        if !(url.as_str().starts_with("https://") || url.as_str().starts_with("http://")) {
            return Err(ctx.err(
                url_v.span(),
                &key("url"),
                "must be an http:// or https:// URL",
                Some("use the upstream's download URL; air-gapped sites use --mirror".into()),
            ));
        }
        let with_url = |n: &str| base_vars(n) || n == "url" || n == "file";
        let with_url_text = format!("{base_text}, {{url}}, {{file}}");
        let checksum_v = required(&raw.checksum, "checksum", "\"sha256-file\"")?;
        let checksum = match checksum_v.get_ref().as_str() {
            "sha256-file" => {
                if let Some(n) = &raw.checksum_name {
                    return Err(ctx.err(
                        n.span(),
                        &key("checksum-name"),
                        "only applies to checksum = \"sha256sum-list\"",
                        None,
                    ));
                }
                let url = match &raw.checksum_url {
                    Some(u) => parse_template(ctx, u, &key("checksum-url"), &with_url, &with_url_text)?,
                    None => Template::parse("{url}.sha256")
                        .map_err(|m| ctx.err(checksum_v.span(), &key("checksum"), m, None))?,
                };
                ChecksumSpec::Sha256File { url }
            }
            "sha256sum-list" => {
                let u = raw.checksum_url.as_ref().ok_or_else(|| {
                    ctx.err(
                        checksum_v.span(),
                        &key("checksum"),
                        "a sha256sum list needs `checksum-url`",
                        Some("e.g. checksum-url = \"https://…/{version}/sha256sum-{arch}.txt\"".to_string()),
                    )
                })?;
                let url = parse_template(ctx, u, &key("checksum-url"), &with_url, &with_url_text)?;
                let name = match &raw.checksum_name {
                    Some(n) => {
                        parse_template(ctx, n, &key("checksum-name"), &with_url, &with_url_text)?
                    }
                    None => Template::parse("{file}")
                        .map_err(|m| ctx.err(checksum_v.span(), &key("checksum"), m, None))?,
                };
                ChecksumSpec::Sha256sumList { url, name }
            }
            "none" => {
                for (k, v) in [
                    ("checksum-url", &raw.checksum_url),
                    ("checksum-name", &raw.checksum_name),
                ] {
                    if let Some(v) = v {
                        return Err(ctx.err(
                            v.span(),
                            &key(k),
                            "makes no sense with checksum = \"none\"",
                            None,
                        ));
                    }
                }
                ChecksumSpec::None
            }
            other => {
                return Err(ctx.err(
                    checksum_v.span(),
                    &key("checksum"),
                    format!("unknown checksum kind {other:?}"),
                    Some("use \"sha256-file\" (a .sha256 beside the file), \"sha256sum-list\" (a list such as sha256sum-amd64.txt) or \"none\" (upstream publishes none; the lock pins it)".into()),
                ))
            }
        };
        let unpack = match &raw.unpack {
            None => None,
            Some(u) => Some(
                u.get_ref()
                    .parse::<ArchiveFormat>()
                    .map_err(|e| ctx.err(u.span(), &key("unpack"), e.to_string(), None))?,
            ),
        };
        let effective = unpack.unwrap_or_else(|| {
            ArchiveFormat::from_file_name(url_file_name(url.as_str())).unwrap_or(ArchiveFormat::Raw)
        });
        let strip_components = match &raw.strip_components {
            None => 0,
            Some(n) if (0..=16).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                return Err(ctx.err(n.span(), &key("strip-components"), "must be 0 to 16", None))
            }
        };
        let place = validate_places(
            ctx,
            raw.place.unwrap_or_default(),
            &key("place"),
            &base_vars,
            &base_text,
        )?;
        let exclude = raw
            .exclude
            .unwrap_or_default()
            .iter()
            .map(|e| parse_template(ctx, e, &key("exclude"), &base_vars, &base_text))
            .collect::<Result<Vec<_>, _>>()?;
        let mut debs = Vec::new();
        for (j, d) in raw.deb.unwrap_or_default().into_iter().enumerate() {
            let dspan = d.span();
            let d = d.into_inner();
            let dkey = |k: &str| format!("source[{}].deb[{}].{k}", i + 1, j + 1);
            let path_v = d.path.ok_or_else(|| RecipeError::Invalid {
                location: ctx.location(dspan.start),
                key: Some(dkey("path")),
                message: "required key is missing".into(),
                help: Some("add path = \"…/NAME_{version}_{arch}.deb\" (the package's path in the archive)".into()),
            })?;
            let path = parse_template(ctx, &path_v, &dkey("path"), &base_vars, &base_text)?;
            let place = validate_places(
                ctx,
                d.place.unwrap_or_default(),
                &dkey("place"),
                &base_vars,
                &base_text,
            )?;
            if place.is_empty() {
                return Err(ctx.err(
                    dspan,
                    &dkey("place"),
                    "a package needs at least one placement",
                    Some("e.g. place = [{ from = \"usr/bin/\", to = \"usr/bin/\" }]".into()),
                ));
            }
            let exclude = d
                .exclude
                .unwrap_or_default()
                .iter()
                .map(|e| parse_template(ctx, e, &dkey("exclude"), &base_vars, &base_text))
                .collect::<Result<Vec<_>, _>>()?;
            debs.push(DebSpec {
                path,
                place,
                exclude,
            });
        }
        if effective == ArchiveFormat::Raw {
            if place.len() != 1 || place[0].from.as_str() != "" {
                return Err(RecipeError::Invalid {
                    location: ctx.location(span.start),
                    key: Some(key("place")),
                    message: "a raw input needs exactly one placement with only `to`".into(),
                    help: Some("e.g. place = [{ to = \"usr/bin/kubelet\", mode = 0o755 }]".into()),
                });
            }
            if strip_components != 0 || !exclude.is_empty() || !debs.is_empty() {
                return Err(RecipeError::Invalid {
                    location: ctx.location(span.start),
                    key: Some(key("unpack")),
                    message: "strip-components, exclude and deb apply to archives, not raw inputs"
                        .into(),
                    help: Some(
                        "set unpack = \"tar.gz\" (or the archive's format) or remove them".into(),
                    ),
                });
            }
        } else if !debs.is_empty() && !place.is_empty() {
            return Err(RecipeError::Invalid {
                location: ctx.location(span.start),
                key: Some(key("place")),
                message: "a source with [[source.deb]] places files per package".into(),
                help: Some("move `place` into the [[source.deb]] entries".into()),
            });
        }
        out.push(Source {
            name,
            version_of,
            url,
            checksum,
            unpack,
            strip_components,
            place,
            exclude,
            debs,
            location: ctx.location(span.start),
        });
    }
    for (name, span) in secondary_spans {
        if !out
            .iter()
            .any(|s| s.version_of.as_deref() == Some(name.as_str()))
        {
            return Err(ctx.err(
                span,
                &format!("secondary.{name}"),
                "no [[source]] uses this version",
                Some(format!(
                    "set version = \"{name}\" on the sources it is for, or remove the table"
                )),
            ));
        }
    }
    if out.is_empty() {
        if let Some(u) = &upstream {
            return Err(RecipeError::Invalid {
                location: u.location.clone(),
                key: Some("upstream".into()),
                message: "the recipe has [upstream] but no [[source]]".into(),
                help: Some("add [[source]] tables saying what to download".into()),
            });
        }
    }
    Ok(Some(Remote {
        upstream,
        secondary: secondaries,
        arch_vars,
        sources: out,
    }))
}

// ---------------------------------------------------------------------------
// Unpacking one input
// ---------------------------------------------------------------------------

/// Placing a downloaded input failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{}: {action}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        err: std::io::Error,
    },
}

fn selection(
    strip: usize,
    place: &[Place],
    exclude: &[Template],
    vars: &Vars,
    what: &str,
) -> Result<Selection, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        what: what.to_string(),
        message,
    };
    let mut sel = Selection::all().strip_components(strip);
    for p in place {
        let from = p.from.render(vars).map_err(invalid)?;
        let to = p.to.render(vars).map_err(invalid)?;
        sel = match p.mode {
            Some(m) => sel.place_with_mode(&from, &to, m),
            None => sel.place(&from, &to),
        }
        .map_err(|e| invalid(e.to_string()))?;
    }
    for e in exclude {
        sel = sel
            .exclude(&e.render(vars).map_err(invalid)?)
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(sel)
}

impl Source {
    /// The archive format of this source's input.
    pub fn format_for(&self, url: &str) -> ArchiveFormat {
        self.unpack.unwrap_or_else(|| {
            ArchiveFormat::from_file_name(url_file_name(url)).unwrap_or(ArchiveFormat::Raw)
        })
    }

    /// Unpacks the verified input at `input` (planned as `planned`) into
    /// the architecture's staging directory `dest`.
    pub fn unpack_into(
        &self,
        input: &Path,
        planned: &PlannedInput,
        dest: &Path,
    ) -> Result<Vec<UnpackReport>, SourceError> {
        let format = self.format_for(&planned.url);
        let name = planned.url.clone();
        if self.debs.is_empty() {
            let sel = selection(
                self.strip_components,
                &self.place,
                &self.exclude,
                &planned.vars,
                &name,
            )?;
            let opts = UnpackOptions::new(name, sel);
            return Ok(vec![unpack::unpack(input, format, dest, &opts)?]);
        }
        // An archive of .deb packages: take the packages out, then unpack
        // each package's data.tar with its own placements.
        let work = tempfile::Builder::new()
            .prefix(".bakery-deb-")
            .tempdir()
            .map_err(|err| SourceError::Io {
                path: std::env::temp_dir(),
                action: "cannot create a temporary directory",
                err,
            })?;
        let mut sel = Selection::all().strip_components(self.strip_components);
        let mut paths = Vec::new();
        for (i, d) in self.debs.iter().enumerate() {
            let p = d
                .path
                .render(&planned.vars)
                .map_err(|m| SourceError::Invalid {
                    what: name.clone(),
                    message: m,
                })?;
            let target = format!("{i}.deb");
            sel = sel.place(&p, &target).map_err(|e| SourceError::Invalid {
                what: name.clone(),
                message: e.to_string(),
            })?;
            paths.push((p, work.path().join(target)));
        }
        unpack::unpack(
            input,
            format,
            work.path(),
            &UnpackOptions::new(name.clone(), sel),
        )?;
        let mut reports = Vec::new();
        for ((p, file), d) in paths.iter().zip(&self.debs) {
            let what = format!("{name}: {p}");
            let (member, member_format) = extract_deb_data(file, &what, work.path())?;
            let sel = selection(0, &d.place, &d.exclude, &planned.vars, &what)?;
            let opts = UnpackOptions::new(what, sel);
            reports.push(unpack::unpack(&member, member_format, dest, &opts)?);
        }
        Ok(reports)
    }
}

/// Takes `data.tar[.gz|.xz|.zst]` out of a Debian package (an `ar`
/// archive) into `work`; returns its path and format.
fn extract_deb_data(
    deb: &Path,
    what: &str,
    work: &Path,
) -> Result<(PathBuf, ArchiveFormat), SourceError> {
    let bad = |message: String| SourceError::Invalid {
        what: what.to_string(),
        message,
    };
    let io = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |err| SourceError::Io { path, action, err }
    };
    let mut f = fs::File::open(deb).map_err(io(deb, "cannot open"))?;
    let total = f.metadata().map_err(io(deb, "cannot stat"))?.len();
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)
        .map_err(|_| bad("not a Debian package (too short)".into()))?;
    if &magic != b"!<arch>\n" {
        return Err(bad("not a Debian package (no ar header)".into()));
    }
    let mut pos = 8u64;
    while pos < total {
        let mut hdr = [0u8; 60];
        f.read_exact(&mut hdr)
            .map_err(|_| bad(format!("truncated ar header at byte {pos}")))?;
        if &hdr[58..60] != b"`\n" {
            return Err(bad(format!("corrupt ar header at byte {pos}")));
        }
        let name = String::from_utf8_lossy(&hdr[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad member size in ar header at byte {pos}")))?;
        pos += 60;
        if size > total.saturating_sub(pos) {
            return Err(bad(format!(
                "member {name:?} runs past the end of the package"
            )));
        }
        let format = match name.as_str() {
            "data.tar" => Some(ArchiveFormat::Tar),
            "data.tar.gz" => Some(ArchiveFormat::TarGz),
            "data.tar.xz" => Some(ArchiveFormat::TarXz),
            "data.tar.zst" => Some(ArchiveFormat::TarZst),
            _ => None,
        };
        if let Some(format) = format {
            let out_path = work.join(format!(
                "{}.{}",
                deb.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                name
            ));
            let mut out = fs::File::create(&out_path).map_err(io(&out_path, "cannot create"))?;
            let copied = std::io::copy(&mut (&mut f).take(size), &mut out)
                .map_err(io(&out_path, "cannot write"))?;
            if copied != size {
                return Err(bad(format!("member {name:?} is truncated")));
            }
            return Ok((out_path, format));
        }
        // Members are 2-byte aligned.
        let skip = size + (size & 1);
        std::io::copy(&mut (&mut f).take(skip), &mut std::io::sink())
            .map_err(io(deb, "cannot read"))?;
        pos += skip;
    }
    Err(bad("the package has no data.tar member".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_render_and_capture() {
        let t = Template::parse("https://dl.k8s.io/{version}/bin/linux/{arch}/kubelet").unwrap();
        assert_eq!(t.vars(), vec!["version", "arch"]);
        let v = vars(&[("version", "v1.30.4"), ("arch", "amd64")]);
        assert_eq!(
            t.render(&v).unwrap(),
            "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubelet"
        );
        let tag = Template::parse("v{version}").unwrap();
        assert_eq!(
            tag.capture(&Vars::new(), "v1.7.20", "version").as_deref(),
            Some("1.7.20")
        );
        assert_eq!(tag.capture(&Vars::new(), "api/v1.8.0", "version"), None);
        assert_eq!(tag.capture(&Vars::new(), "v", "version"), None);
        let f = Template::parse("docker-{version}.tgz").unwrap();
        assert_eq!(
            f.capture(&Vars::new(), "docker-27.1.1.tgz", "version")
                .as_deref(),
            Some("27.1.1")
        );
        for bad in ["{", "}", "{Version}", "a{}b", "{x"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert!(t.render(&vars(&[("version", "1")])).is_err());
    }

    #[test]
    fn url_file_names() {
        assert_eq!(url_file_name("https://x/a/b.tgz?x=1"), "b.tgz");
        assert_eq!(url_file_name("https://x/a/k3s"), "k3s");
    }

    const HEAD: &str = "name = \"demo\"\ndescription = \"d\"\n";
    const UP: &str = "[upstream]\ngithub = \"o/r\"\ntag = \"v{version}\"\n\
                      [arch.x86-64]\narch = \"amd64\"\n[arch.arm64]\narch = \"arm64\"\n";
    const SRC: &str = "[[source]]\nname = \"bin\"\n\
                       url = \"https://example.org/{version}/demo-{arch}.tar.gz\"\n\
                       checksum = \"sha256-file\"\nstrip-components = 1\n\
                       place = [{ from = \"bin\", to = \"usr/bin\" }]\n";

    fn template(text: &str) -> Result<crate::recipe::RecipeTemplate, RecipeError> {
        crate::recipe::RecipeTemplate::parse(Path::new("r"), text)
    }

    fn err(text: &str) -> String {
        template(text).unwrap_err().to_string()
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn a_remote_recipe_plans_its_inputs() {
        let text = format!("{HEAD}{UP}{SRC}");
        let t = template(&text).unwrap();
        assert!(t.has_upstream() && t.fixed_version.is_none());
        let r = t
            .instantiate(Some(&Version::new("1.2.3").unwrap()))
            .unwrap();
        assert_eq!(r.image_file_name(Arch::Arm64), "demo-1.2.3-arm64.raw");
        let remote = r.remote.as_ref().unwrap();
        let plan = remote
            .plan(
                "demo",
                &Versions {
                    main: r.version.clone(),
                    secondary: BTreeMap::new(),
                },
                Arch::Arm64,
            )
            .unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].url, "https://example.org/1.2.3/demo-arm64.tar.gz");
        assert_eq!(
            plan[0].checksum,
            PlannedChecksum::File {
                url: "https://example.org/1.2.3/demo-arm64.tar.gz.sha256".into(),
                name: "demo-arm64.tar.gz".into()
            }
        );
        // Without a version, a recipe with [upstream] says how to get one.
        let e = t.instantiate(None).unwrap_err().to_string();
        assert!(
            e.contains("key `version`") && e.contains("bakery build NAME"),
            "{e}"
        );
        let e = crate::recipe::Recipe::parse(Path::new("r"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes its version from [upstream]"), "{e}");
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        let text = format!("{HEAD}{UP}{}", SRC.replace("demo-{arch}", "demo-{arhc}"));
        let l = line_of(&text, "{arhc}");
        let e = err(&text);
        assert!(
            e.starts_with(&format!(
                "r/recipe.toml:{l}:7: key `source[1].url`: unknown variable {{arhc}}"
            )),
            "{e}"
        );
        assert!(e.contains("{version}, {name}, {arch}"), "{e}");

        let text = format!(
            "{HEAD}{UP}{}",
            SRC.replace("strip-components", "strip-component")
        );
        let e = err(&text);
        assert!(
            e.contains("key `source.strip-component`") && e.contains("checksum-url"),
            "{e}"
        );

        let text = format!("{HEAD}version = \"1\"\n{UP}{SRC}");
        assert!(
            err(&text).starts_with("r/recipe.toml:3:11: key `version`: a recipe with [upstream]")
        );

        let text = format!(
            "{HEAD}{}{SRC}",
            UP.replace("[arch.arm64]\narch = \"arm64\"\n", "")
        );
        let e = err(&text);
        assert!(e.contains("key `arch`: no [arch.arm64] table"), "{e}");

        let text = format!(
            "{HEAD}{}{SRC}",
            UP.replace("arch = \"arm64\"", "arch = \"arm64\"\nsuffix = \"-a\"")
        );
        assert!(err(&text).contains("every [arch.ARCH] table must define the same variables"));

        let e = err(&format!("{HEAD}{UP}"));
        assert!(
            e.contains("key `upstream`: the recipe has [upstream] but no [[source]]"),
            "{e}"
        );

        let text = format!(
            "{HEAD}{UP}{}",
            SRC.replace(
                "checksum = \"sha256-file\"",
                "checksum = \"sha256sum-list\""
            )
        );
        assert!(
            err(&text).contains("key `source[1].checksum`: a sha256sum list needs `checksum-url`")
        );

        let text = format!(
            "{HEAD}{UP}{}",
            SRC.replace("checksum = \"sha256-file\"", "checksum = \"md5\"")
        );
        assert!(err(&text).contains("unknown checksum kind \"md5\""));

        let text = format!(
            "{HEAD}{UP}{}",
            SRC.replace("to = \"usr/bin\"", "to = \"etc/demo\"")
        );
        let e = err(&text);
        assert!(
            e.contains("key `source[1].place.to`: \"etc/demo\" is not under usr/ or opt/"),
            "{e}"
        );

        let text = format!(
            "{HEAD}{UP}{}",
            SRC.replace("to = \"usr/bin\"", "to = \"usr/bin\", mode = 0o4755")
        );
        assert!(err(&text).contains("key `source[1].place.mode`"));

        let raw =
            "[[source]]\nname = \"r\"\nurl = \"https://x/{version}/r\"\nchecksum = \"none\"\n\
                   place = [{ to = \"usr/bin/r\" }, { to = \"usr/bin/s\" }]\n";
        assert!(
            err(&format!("{HEAD}{UP}{raw}")).contains("a raw input needs exactly one placement")
        );

        let sec = "[secondary.runc]\ngithub = \"o/runc\"\n";
        let e = err(&format!("{HEAD}{UP}{sec}{SRC}"));
        assert!(
            e.contains("key `secondary.runc`: no [[source]] uses this version"),
            "{e}"
        );
        let e = err(&format!("{HEAD}{UP}{}version = \"cni\"\n", SRC));
        assert!(
            e.contains("key `source[1].version`: there is no [secondary.cni]"),
            "{e}"
        );

        let e = err(&format!(
            "{HEAD}{}{SRC}",
            UP.replace("github = \"o/r\"", "github = \"o\"")
        ));
        assert!(
            e.contains("key `upstream.github`: \"o\" is not OWNER/REPO"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}{}{SRC}",
            UP.replace("tag = \"v{version}\"", "tag = \"v\"")
        ));
        assert!(
            e.contains("key `upstream.tag`: must contain {version} exactly once"),
            "{e}"
        );
        let up = UP.replace(
            "tag = \"v{version}\"\n",
            "tag = \"v{version}\"\nstreams = \"major\"\n",
        );
        let e = err(&format!("{HEAD}{up}{SRC}"));
        assert!(e.contains("unknown stream kind \"major\""), "{e}");

        let link = "[[symlink]]\npath = \"usr/bin/x\"\ntarget = \"../../../etc/shadow\"\n";
        let e = err(&format!("{HEAD}version = \"1\"\n{link}"));
        assert!(
            e.contains("key `symlink.target`") && e.contains("outside the image root"),
            "{e}"
        );
        let link = "[[symlink]]\npath = \"etc/x\"\ntarget = \"y\"\n";
        assert!(err(&format!("{HEAD}version = \"1\"\n{link}")).contains("key `symlink.path`"));
    }

    #[test]
    fn the_eight_recipes_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let mut names = Vec::new();
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if !p.is_dir() {
                continue;
            }
            let t = crate::recipe::RecipeTemplate::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(t.has_upstream(), "{}", p.display());
            assert_eq!(t.architectures, vec![Arch::X86_64, Arch::Arm64]);
            names.push(t.name.to_string());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "containerd",
                "docker",
                "falco",
                "k3s",
                "kubernetes",
                "nvidia-runtime",
                "rke2",
                "wasmtime"
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn templates_never_panic(text in "\\PC{0,40}", value in "[a-z0-9.]{0,8}") {
            if let Ok(t) = Template::parse(&text) {
                let mut vars = Vars::new();
                for v in t.vars() {
                    vars.insert(v.to_string(), value.clone());
                }
                let rendered = t.render(&vars).unwrap();
                if t.uses("version") && t.parts.iter().filter(|p| matches!(p, Part::Var(v) if v == "version")).count() == 1 && !value.is_empty() {
                    proptest::prop_assert_eq!(t.capture(&vars, &rendered, "version"), Some(value.clone()));
                }
            }
        }

        #[test]
        fn remote_tables_never_panic(body in "\\PC{0,60}(\n\\PC{0,60}){0,4}") {
            let text = format!("{HEAD}[upstream]\n{body}\n{SRC}");
            let _ = template(&text);
            let text = format!("{HEAD}{UP}[[source]]\n{body}\n");
            if let Err(RecipeError::Invalid { location, .. }) = template(&text) {
                proptest::prop_assert!(location.line >= 1);
            }
        }
    }

    fn write_ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            let mut h = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                100644,
                data.len()
            );
            h.truncate(60);
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn finds_the_data_member_of_a_deb() {
        let t = tempfile::tempdir().unwrap();
        let deb = t.path().join("p.deb");
        fs::write(
            &deb,
            write_ar(&[
                ("debian-binary", b"2.0\n"),
                ("control.tar.xz", b"abc"),
                ("data.tar.zst", b"zstd-bytes"),
            ]),
        )
        .unwrap();
        let (p, f) = extract_deb_data(&deb, "p.deb", t.path()).unwrap();
        assert_eq!(f, ArchiveFormat::TarZst);
        assert_eq!(fs::read(p).unwrap(), b"zstd-bytes");
        fs::write(&deb, write_ar(&[("debian-binary", b"2.0\n")])).unwrap();
        let e = extract_deb_data(&deb, "p.deb", t.path()).unwrap_err();
        assert!(e.to_string().contains("no data.tar"), "{e}");
        fs::write(&deb, b"<html>").unwrap();
        let e = extract_deb_data(&deb, "p.deb", t.path()).unwrap_err();
        assert!(e.to_string().contains("not a Debian package"), "{e}");
    }
}
