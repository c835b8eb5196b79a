//! Mirrors a feed directory (written by [`crate::publish_dir`]) to GitHub
//! Releases: one rolling release per extension whose assets are exactly
//! that extension's feed directory, so that
//! `https://github.com/OWNER/REPO/releases/download/TAG/` is the one URL
//! directory systemd-sysupdate needs, and a `catalogue` release holding
//! `catalogue.json` and its signature.
//!
//! Order, per release (the feed never points at a missing asset):
//! 1. remove debris of an interrupted run: broken uploads (`state` not
//!    `uploaded`) and temporary `*.upload-tmp` assets;
//! 2. upload images and sidecars that are missing (present ones must have
//!    the same SHA-256: published versions are immutable);
//! 3. replace changed transfer files and snippets;
//! 4. replace the manifest pair: upload the new `SHA256SUMS.gpg` and
//!    `SHA256SUMS` under temporary names, then delete the old signature,
//!    rename the new one, delete the old manifest, rename the new one
//!    (GitHub cannot replace an asset atomically). In the three states
//!    between those four quick calls the pair is missing or mismatched,
//!    which a client detects (404 or bad signature) and treats as "no
//!    update now"; no upload happens inside that window;
//! 5. delete assets the feed no longer has (retired images).
//!
//! Every step checks what is already there first, so a re-run after a
//! failure at any point completes the job, and a re-run after success does
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use sysupdate::Sha256Digest;

use super::client::{
    Asset, Client, GithubError, Release, RepoSlug, MAX_ASSETS_PER_RELEASE, MAX_ASSET_SIZE,
};
use crate::catalogue::{CATALOGUE_FILE, CATALOGUE_SIG_FILE};
use crate::dir::{MANIFEST_FILE, MANIFEST_SIG_FILE};
use crate::fsutil::{self, io_err};
use crate::layout::{self, FeedUrl};
use crate::name::{ExtensionName, FeedFileName};

/// Suffix of temporary asset names used while replacing an asset.
pub const TEMP_ASSET_SUFFIX: &str = ".upload-tmp";

/// Where on GitHub a feed goes.
#[derive(Debug, Clone)]
pub struct GithubTarget {
    pub repo: RepoSlug,
    /// Release tag of extension `NAME` is `{tag_prefix}NAME` (default: no
    /// prefix, so the feed URL is `…/releases/download/NAME/`, the same
    /// `BASE/NAME/` shape as a directory feed).
    pub tag_prefix: String,
    /// Release tag holding the catalogue.
    pub catalogue_tag: String,
    /// Web base for download URLs (`https://github.com`, or a test server).
    pub web_url: String,
    /// Also keep one release per published version, tag
    /// `{tag_prefix}NAME-VERSION`, holding that version's images and
    /// sidecars for every architecture. Never changed or pruned once
    /// uploaded: provenance outlives the rolling feed's retention.
    pub provenance: bool,
}

impl GithubTarget {
    pub fn new(repo: RepoSlug) -> GithubTarget {
        GithubTarget {
            repo,
            tag_prefix: String::new(),
            catalogue_tag: "catalogue".to_string(),
            web_url: "https://github.com".to_string(),
            provenance: false,
        }
    }

    /// The tag of an extension's rolling release.
    pub fn tag(&self, name: &ExtensionName) -> String {
        format!("{}{name}", self.tag_prefix)
    }

    /// The feed URL to give [`crate::PublishOptions`] so that transfer
    /// files and snippets point at these releases.
    pub fn feed_url(&self) -> Result<FeedUrl, crate::layout::BadFeedUrl> {
        FeedUrl::new(format!(
            "{}/{}/{}/releases/download/{}{{name}}/",
            self.web_url.trim_end_matches('/'),
            self.repo.owner,
            self.repo.repo,
            self.tag_prefix
        ))
    }
}

/// What changed in one release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseReport {
    pub tag: String,
    pub uploaded: Vec<String>,
    pub replaced: Vec<String>,
    pub deleted: Vec<String>,
    pub cleaned: Vec<String>,
}

impl ReleaseReport {
    pub fn is_noop(&self) -> bool {
        self.uploaded.is_empty()
            && self.replaced.is_empty()
            && self.deleted.is_empty()
            && self.cleaned.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GithubReport {
    pub releases: Vec<ReleaseReport>,
}

impl GithubReport {
    pub fn is_noop(&self) -> bool {
        self.releases.iter().all(ReleaseReport::is_noop)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Images and sidecars: never replaced.
    Immutable,
    /// Transfer files, snippets: replaced when changed.
    Mutable,
    /// The signature, then the signed file.
    Signature,
    Signed,
}

struct LocalFile {
    name: FeedFileName,
    path: PathBuf,
    sha256: Sha256Digest,
    kind: Kind,
}

/// Mirrors every extension of `feed_dir` and its catalogue to GitHub.
pub fn publish_github(
    client: &Client,
    feed_dir: &Path,
    target: &GithubTarget,
) -> Result<GithubReport, GithubError> {
    let mut report = GithubReport::default();
    let names = crate::dir::existing_extensions(feed_dir)?;
    for name in names {
        let dir = feed_dir.join(name.as_str());
        let files = local_files(&dir, Some(&name))?;
        if target.provenance {
            for r in sync_provenance(client, target, &name, &files)? {
                report.releases.push(r);
            }
        }
        let title = format!("{name} system extension feed");
        let body = format!(
            "Rolling feed of the {name} system extension for systemd-sysupdate: images, SHA256SUMS (signed), \
             transfer files and Butane/Ignition snippets. Managed by `bakery publish`; do not edit by hand."
        );
        report.releases.push(sync_release(
            client,
            target,
            &target.tag(&name),
            &title,
            &body,
            files,
        )?);
    }
    let cat = feed_dir.join(CATALOGUE_FILE);
    if cat.is_file() {
        let mut files = Vec::new();
        for (n, kind) in [
            (CATALOGUE_SIG_FILE, Kind::Signature),
            (CATALOGUE_FILE, Kind::Signed),
        ] {
            let path = feed_dir.join(n);
            let sha256 = fsutil::digest_file(&path)?.sha256;
            files.push(LocalFile {
                name: FeedFileName::new(n).map_err(|e| GithubError::Limit(e.to_string()))?,
                path,
                sha256,
                kind,
            });
        }
        report.releases.push(sync_release(
            client,
            target,
            &target.catalogue_tag,
            "Feed catalogue",
            "catalogue.json lists every extension, stream, version, architecture and digest of this feed.",
            files,
        )?);
    }
    Ok(report)
}

fn local_files(dir: &Path, name: Option<&ExtensionName>) -> Result<Vec<LocalFile>, GithubError> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err("listing", dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err("listing", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for ent in entries {
        let Some(n) = ent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if n.starts_with(fsutil::TEMP_PREFIX) || !ent.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let file = FeedFileName::new(n.as_str()).map_err(|e| {
            GithubError::Limit(format!(
                "{}: cannot be a release asset: {e}",
                dir.join(&n).display()
            ))
        })?;
        let kind = match n.as_str() {
            MANIFEST_SIG_FILE => Kind::Signature,
            MANIFEST_FILE => Kind::Signed,
            _ if name.is_some_and(|x| {
                layout::parse_image_file_name(x, &n).is_some()
                    || layout::parse_sidecar_file_name(x, &n).is_some()
            }) =>
            {
                Kind::Immutable
            }
            _ => Kind::Mutable,
        };
        let path = ent.path();
        let d = fsutil::digest_file(&path)?;
        if d.size > MAX_ASSET_SIZE {
            return Err(GithubError::Limit(format!(
                "{}: {} bytes; GitHub release assets must be smaller than 2 GiB",
                path.display(),
                d.size
            )));
        }
        out.push(LocalFile {
            name: file,
            path,
            sha256: d.sha256,
            kind,
        });
    }
    // Both halves of the pair must be there, or neither.
    let has = |k| out.iter().any(|f| f.kind == k);
    if has(Kind::Signed) != has(Kind::Signature) {
        return Err(GithubError::Limit(format!(
            "{}: SHA256SUMS and SHA256SUMS.gpg must both exist; run the directory publish again",
            dir.display()
        )));
    }
    if out.len() + 2 > MAX_ASSETS_PER_RELEASE {
        return Err(GithubError::Limit(format!(
            "{}: {} files, but a GitHub release holds at most {MAX_ASSETS_PER_RELEASE} assets (2 are needed for replacing the manifest); lower the retention",
            dir.display(),
            out.len()
        )));
    }
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(out)
}

/// Per-version releases: upload what is missing, never replace or delete.
fn sync_provenance(
    client: &Client,
    target: &GithubTarget,
    name: &ExtensionName,
    files: &[LocalFile],
) -> Result<Vec<ReleaseReport>, GithubError> {
    let mut by_version: BTreeMap<String, Vec<&LocalFile>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.kind == Kind::Immutable) {
        let n = f.name.as_str();
        let v = layout::parse_image_file_name(name, n)
            .map(|(v, _)| v)
            .or_else(|| layout::parse_sidecar_file_name(name, n).map(|(v, _, _)| v));
        if let Some(v) = v {
            by_version.entry(v.to_string()).or_default().push(f);
        }
    }
    let mut out = Vec::new();
    for (version, files) in by_version {
        let tag = format!("{}{name}-{version}", target.tag_prefix);
        let release = client.get_or_create_release(
            &target.repo,
            &tag,
            &format!("{name} {version}"),
            &format!(
                "The {name} system extension, version {version}, as first published. Immutable."
            ),
        )?;
        let mut s = Sync {
            client,
            repo: &target.repo,
            tag: tag.clone(),
            assets: BTreeMap::new(),
            report: ReleaseReport {
                tag,
                ..ReleaseReport::default()
            },
            release,
        };
        s.refresh()?;
        for f in files {
            match s.assets.get(f.name.as_str()).cloned() {
                Some(a) if a.is_uploaded() => {
                    let remote = s.remote_sha256(&a)?;
                    if remote != f.sha256 {
                        return Err(GithubError::ImmutableChanged {
                            tag: s.tag.clone(),
                            name: f.name.to_string(),
                            remote: remote.to_hex(),
                            local: f.sha256.to_hex(),
                        });
                    }
                }
                other => {
                    if let Some(broken) = other {
                        s.client.delete_asset(s.repo, broken.id)?;
                        s.report.cleaned.push(broken.name);
                    }
                    let a = s.upload(f.name.as_str(), f)?;
                    s.assets.insert(a.name.clone(), a);
                    s.report.uploaded.push(f.name.to_string());
                }
            }
        }
        out.push(s.report);
    }
    Ok(out)
}

struct Sync<'a> {
    client: &'a Client,
    repo: &'a RepoSlug,
    release: Release,
    tag: String,
    assets: BTreeMap<String, Asset>,
    report: ReleaseReport,
}

fn sync_release(
    client: &Client,
    target: &GithubTarget,
    tag: &str,
    title: &str,
    body: &str,
    files: Vec<LocalFile>,
) -> Result<ReleaseReport, GithubError> {
    let release = client.get_or_create_release(&target.repo, tag, title, body)?;
    let mut s = Sync {
        client,
        repo: &target.repo,
        tag: tag.to_string(),
        assets: BTreeMap::new(),
        report: ReleaseReport {
            tag: tag.to_string(),
            ..ReleaseReport::default()
        },
        release,
    };
    s.refresh()?;

    // 1. Debris.
    let debris: Vec<Asset> = s
        .assets
        .values()
        .filter(|a| !a.is_uploaded() || a.name.ends_with(TEMP_ASSET_SUFFIX))
        .cloned()
        .collect();
    for a in debris {
        s.client.delete_asset(s.repo, a.id)?;
        s.assets.remove(&a.name);
        s.report.cleaned.push(a.name);
    }

    // 2–3. Images and sidecars, then transfer files and snippets.
    let mut pair: Vec<(&LocalFile, Option<Asset>)> = Vec::new();
    for f in &files {
        let existing = s.assets.get(f.name.as_str()).cloned();
        let existing = match existing {
            Some(a) if s.remote_sha256(&a)? == f.sha256 => continue,
            other => other,
        };
        if matches!(f.kind, Kind::Signature | Kind::Signed) {
            pair.push((f, existing));
            continue;
        }
        match existing {
            None => {
                let a = s.upload(f.name.as_str(), f)?;
                s.assets.insert(a.name.clone(), a);
                s.report.uploaded.push(f.name.to_string());
            }
            Some(a) if f.kind == Kind::Immutable => {
                return Err(GithubError::ImmutableChanged {
                    tag: s.tag.clone(),
                    name: f.name.to_string(),
                    remote: s.remote_sha256(&a)?.to_hex(),
                    local: f.sha256.to_hex(),
                });
            }
            Some(a) => {
                s.replace(&a, f)?;
                s.report.replaced.push(f.name.to_string());
            }
        }
    }

    // 4. The manifest pair (signature first). Uploads happen before the
    // window opens: both new halves are staged under temporary names,
    // then each old one is deleted and its successor renamed.
    let mut staged = Vec::new();
    for (f, old) in &pair {
        let name = match old {
            Some(_) => format!("{}{TEMP_ASSET_SUFFIX}", f.name),
            None => f.name.to_string(),
        };
        let a = s.upload(&name, f)?;
        s.assets.insert(a.name.clone(), a.clone());
        staged.push((f, old, a));
    }
    for (f, old, new) in staged {
        match old {
            None => s.report.uploaded.push(f.name.to_string()),
            Some(old) => {
                s.swap(old, &new, f)?;
                s.report.replaced.push(f.name.to_string());
            }
        }
    }

    // 5. Retire what the feed no longer has, judged on a fresh listing.
    s.refresh()?;
    let wanted: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let extra: Vec<Asset> = s
        .assets
        .values()
        .filter(|a| !wanted.contains(a.name.as_str()))
        .cloned()
        .collect();
    for a in extra {
        s.client.delete_asset(s.repo, a.id)?;
        s.assets.remove(&a.name);
        s.report.deleted.push(a.name);
    }
    Ok(s.report)
}

impl Sync<'_> {
    fn refresh(&mut self) -> Result<(), GithubError> {
        self.assets = self
            .client
            .list_assets(self.repo, self.release.id)?
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        Ok(())
    }

    /// The content digest of a remote asset: GitHub's `digest`, or the
    /// SHA-256 of a download when the server does not report one.
    fn remote_sha256(&self, a: &Asset) -> Result<Sha256Digest, GithubError> {
        if let Some(d) = a.sha256() {
            return Ok(d);
        }
        let bytes = self
            .client
            .download_asset(self.repo, a.id, MAX_ASSET_SIZE)?;
        Ok(crate::fsutil::FileDigests::of_bytes(&bytes).sha256)
    }

    /// Uploads `f` as `name`, reconciling after failures that may have
    /// left a complete or a broken asset behind.
    fn upload(&mut self, name: &str, f: &LocalFile) -> Result<Asset, GithubError> {
        let max = self.client.config().retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = self.client.upload_asset(&self.release, name, &f.path);
            let err = match res {
                Ok(a) => match a.sha256() {
                    Some(d) if d != f.sha256 => {
                        self.client.delete_asset(self.repo, a.id)?;
                        GithubError::DigestMismatch {
                            tag: self.tag.clone(),
                            name: name.to_string(),
                            want: f.sha256.to_hex(),
                            got: d.to_hex(),
                        }
                    }
                    _ => return Ok(a),
                },
                Err(e) if e.is_transient() || e.is_already_exists() => e,
                Err(e) => return Err(e),
            };
            // What is there now under that name?
            self.refresh()?;
            if let Some(a) = self.assets.get(name).cloned() {
                if a.is_uploaded() && self.remote_sha256(&a)? == f.sha256 {
                    return Ok(a);
                }
                if a.is_uploaded()
                    && err.is_already_exists()
                    && name == f.name.as_str()
                    && f.kind == Kind::Immutable
                {
                    return Err(GithubError::ImmutableChanged {
                        tag: self.tag.clone(),
                        name: name.to_string(),
                        remote: self.remote_sha256(&a)?.to_hex(),
                        local: f.sha256.to_hex(),
                    });
                }
                self.client.delete_asset(self.repo, a.id)?;
                self.assets.remove(name);
            }
            if attempt >= max {
                return Err(err);
            }
            let wait = self.client.config().retry.backoff;
            (self.client.config().sleep)(wait);
        }
    }

    /// Replaces asset `old` with `f`: upload under a temporary name, delete
    /// the old asset, rename the new one.
    fn replace(&mut self, old: &Asset, f: &LocalFile) -> Result<(), GithubError> {
        let tmp = format!("{}{TEMP_ASSET_SUFFIX}", f.name);
        let new = self.upload(&tmp, f)?;
        self.swap(old, &new, f)
    }

    /// Deletes `old` and renames the staged `new` to `f`'s name.
    fn swap(&mut self, old: &Asset, new: &Asset, f: &LocalFile) -> Result<(), GithubError> {
        self.client.delete_asset(self.repo, old.id)?;
        self.assets.remove(old.name.as_str());
        let renamed = self
            .client
            .rename_asset(self.repo, new.id, f.name.as_str())?;
        self.assets.remove(&new.name);
        self.assets.insert(renamed.name.clone(), renamed);
        Ok(())
    }
}
