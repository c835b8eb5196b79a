//! `bakery`: the command line of the build side. It parses arguments, calls
//! the `bakery` library and prints the result; errors are printed as
//! `error: …` with their causes, and the exit code is 1 (2 for usage errors).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sysupdate::Arch;

use bakery::build::{BuildOptions, BuildReport};
use bakery::fetch::github::GithubApi;
use bakery::fetch::{Cache, FetchOptions, Fetcher, MirrorSet, Renderer};
use bakery::inputs::{CookOptions, Outcome, RecipeRef};
use bakery::seal::{KeyArgs, SealFormat, SealOptions};
use bakery::squashfs::{Compression, SquashfsOptions};
use bakery::stage::SourceDateEpoch;

const ABOUT: &str = "Turn recipes into systemd-sysext images";

const LONG_ABOUT: &str = "\
Turn recipes into systemd-sysext images.

A recipe is a directory holding recipe.toml (name, version, description,
target OS and architectures, units to start) and an optional files/ tree
with the usr/ and opt/ content of the extension. bakery stages it
(normalised owners, modes and times; generated extension-release and
Upholds= drop-ins), lints it, and writes reproducible squashfs images that
systemd-sysext merges, sealed with dm-verity and a root-hash signature
(a Discoverable Disk Image) when a signing key is given.

'bakery keygen' makes the keys: an X.509 certificate and RSA key that sign
images, and an OpenPGP key that signs feed manifests.";

const EXAMPLES: &str = "\
Examples:
  bakery keygen --out keys
  bakery build examples/hello --key keys/signing.key
  bakery build examples/hello --arch x86-64 --output /srv/feed/hello
  bakery publish --feed /srv/feed --base-url https://feed.example.org \
      --pgp-key keys/openpgp.key --verity-cert keys/signing.crt out
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) bakery build recipes/wasmtime

Run 'bakery help <COMMAND>' for the options of a command.";

#[derive(Parser)]
#[command(
    name = "bakery",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands, each with its own `Args` struct.
#[derive(Subcommand)]
enum Command {
    Build(BuildArgs),
    Keygen(KeygenArgs),
    Publish(PublishArgs),
    Versions(VersionsArgs),
    Lock(LockArgs),
    List(ListArgs),
}

const BUILD_LONG_ABOUT: &str = "\
Build recipes into sysext images, one per architecture.

RECIPE-DIR is a recipe directory, or a name under --recipes-dir: NAME, or
NAME-STREAM for the newest version of a stream (kubernetes-v1.30 = the
newest v1.30.x). Several recipes are built in one run, their downloads
fetched in parallel.

Recipes with remote inputs: when the lock file (recipes/NAME/bakery.lock
or NAME-STREAM.lock, written by 'bakery lock') exists, its versions, URLs
and sha256 digests are used and upstream is asked nothing. Without it the
version is resolved upstream and each input is checked against the
checksum file upstream publishes; inputs with no published checksum need
a lock pin, or --allow-unpinned (recorded as \"unpinned\" in the
provenance file). Every download is verified while it streams into the
download cache; a cached input is never downloaded again. Beside each
image, NAME-VERSION-ARCH.provenance.json records the inputs, how each was
verified, and the input fingerprint: when the outputs for exactly these
inputs and options exist, nothing is rebuilt (--force rebuilds).

Writes NAME-VERSION-ARCH.raw for each architecture into the output
directory and adds or replaces the lines of every file it wrote in
DIR/SHA256SUMS (other lines are kept). Every file appears atomically: all
outputs are written and sealed in a hidden staging directory inside the
output directory and renamed into place only when all of them are
complete. On any error no new file is left behind.

Sealing (--format):
  ddi      one GPT disk image per architecture: the filesystem (root-ARCH),
           its dm-verity hash tree (root-ARCH-verity) and, with a key, the
           root-hash signature (root-ARCH-verity-sig). The default when a
           signing key is given. Without a key the DDI is verity-only.
  sidecar  the bare filesystem as NAME-VERSION-ARCH.raw with .verity,
           .roothash and, with a key, .roothash.p7s beside it.
  bare     the filesystem alone, no verity, no signature. The default
           without a key; the output then says 'unsigned: ...'.
The verity salt and UUID are derived from the filesystem's sha256, and RSA
signatures are deterministic, so the same recipe and key give the same
bytes.

The signing key is a PEM private key (--key or BAKERY_SIGNING_KEY, a path
or the PEM text) with its X.509 certificate (--cert or
BAKERY_SIGNING_CERT; default: the key's path with the extension .crt).
The certificate must belong to the key. An encrypted key needs its
passphrase (--passphrase-file or BAKERY_SIGNING_KEY_PASSPHRASE). Private
keys are never printed.

The recipe is checked first: unknown keys, bad names or architectures,
files outside usr/ and opt/, usr/sbin, device nodes and escaping symlinks
are errors that name the file (and line and key where there is one).

Images are byte-identical across rebuilds of the same inputs. Every inode
gets the time SOURCE_DATE_EPOCH (seconds since 1970; unset means 0).";

const BUILD_EXAMPLES: &str = "\
Examples:
  Build every architecture of the bundled example into ./out:
    bakery build examples/hello

  The newest Kubernetes v1.30 patch (from its lock file, if there is one):
    bakery build kubernetes-v1.30

  Every download from an internal mirror instead of upstream:
    bakery build docker --mirror https://download.docker.com/=http://mirror.local/docker/

  Build only x86-64, with gzip, into another directory:
    bakery build examples/hello --arch x86-64 --compression gzip --output /tmp/images

  Stamp the image with the time of the last commit:
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) bakery build examples/hello

  Build signed DDIs with a key made by 'bakery keygen --out keys':
    bakery build examples/hello --key keys/signing.key

  Signed sidecar form, key from the environment:
    BAKERY_SIGNING_KEY=keys/signing.key bakery build examples/hello --format sidecar

Environment:
  SOURCE_DATE_EPOCH              mtime of every inode (default 0)
  GITHUB_TOKEN                   sent to api.github.com when listing releases
  XDG_CACHE_HOME                 download cache in $XDG_CACHE_HOME/bakery
  XDG_CONFIG_HOME                mirror rules in $XDG_CONFIG_HOME/bakery/mirrors.toml
  BAKERY_SIGNING_KEY             signing key: path or PEM text (--key wins)
  BAKERY_SIGNING_CERT            its certificate: path or PEM text
  BAKERY_SIGNING_KEY_PASSPHRASE  passphrase of an encrypted key";

#[derive(Args)]
#[command(
    about = "Build a recipe into sysext images (NAME-VERSION-ARCH.raw + SHA256SUMS)",
    long_about = BUILD_LONG_ABOUT,
    after_help = BUILD_EXAMPLES
)]
struct BuildArgs {
    /// Recipe directories (holding recipe.toml and optionally files/), or
    /// recipe names under --recipes-dir: NAME or NAME-STREAM.
    #[arg(value_name = "RECIPE-DIR", required = true)]
    recipes: Vec<String>,

    /// Build this upstream version instead of the locked or newest one
    /// (one recipe only).
    #[arg(long = "upstream-version", value_name = "VERSION")]
    pin_version: Option<sysupdate::Version>,

    /// Accept inputs that have neither a published checksum nor a lock
    /// pin; the provenance file records them as unpinned.
    #[arg(long)]
    allow_unpinned: bool,

    /// Rebuild even if the output for exactly these inputs exists.
    #[arg(long)]
    force: bool,

    #[command(flatten)]
    net: NetArgs,

    /// Build only this architecture (systemd name: x86-64, arm64, …); repeat
    /// for several. Default: every architecture the recipe lists.
    #[arg(long = "arch", value_name = "ARCH")]
    arches: Vec<Arch>,

    /// Directory that receives the images and SHA256SUMS (created if missing).
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    output: PathBuf,

    /// Compressor for the squashfs image.
    #[arg(long, value_enum, value_name = "NAME", default_value_t = CompressionArg::Zstd)]
    compression: CompressionArg,

    /// Compression level (zstd 1-22, default 15; gzip 1-9, default 9; xz
    /// 0-9, default 6; lz4 has none).
    #[arg(long, value_name = "N")]
    level: Option<i32>,

    /// Compression threads; 0 uses every core. Does not change the output.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,

    /// How to seal the images: ddi, sidecar or bare. Default: ddi when a
    /// signing key is given, else bare.
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<FormatArg>,

    /// PEM private key that signs the verity root hash (a path or the PEM
    /// text; default: $BAKERY_SIGNING_KEY).
    #[arg(long, value_name = "PATH")]
    key: Option<std::ffi::OsString>,

    /// PEM certificate of the key (default: $BAKERY_SIGNING_CERT when the
    /// key comes from the environment, else the key's path with .crt).
    #[arg(long, value_name = "PATH")]
    cert: Option<std::ffi::OsString>,

    /// File whose first line is the passphrase of an encrypted key
    /// (default: $BAKERY_SIGNING_KEY_PASSPHRASE).
    #[arg(long, value_name = "PATH")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// GPT disk image: filesystem, verity tree, signature partition.
    Ddi,
    /// Bare filesystem with .verity, .roothash and .roothash.p7s files.
    Sidecar,
    /// The filesystem alone: no verity, no signature.
    Bare,
}

impl From<FormatArg> for SealFormat {
    fn from(f: FormatArg) -> SealFormat {
        match f {
            FormatArg::Ddi => SealFormat::Ddi,
            FormatArg::Sidecar => SealFormat::Sidecar,
            FormatArg::Bare => SealFormat::Bare,
        }
    }
}

const KEYGEN_LONG_ABOUT: &str = "\
Make the keys a publisher needs, in one directory:

  signing.key         RSA-4096 private key (mode 0600) that signs verity
                      root hashes: pass it to 'bakery build --key'
  signing.crt         its self-signed X.509 certificate: install it on
                      nodes as /etc/verity.d/NAME.crt
  openpgp.key         OpenPGP (Ed25519) private key (mode 0600) that signs
                      feed manifests (SHA256SUMS.gpg): 'bakery publish
                      --pgp-key'
  import-pubring.gpg  its public keyring: install it on nodes as
                      /etc/systemd/import-pubring.gpg

The directory is created (mode 0700) if missing. Existing keys are never
overwritten, and either all four files are written or none. Private keys
are never printed; keep them out of version control.";

const KEYGEN_EXAMPLES: &str = "\
Examples:
  bakery keygen --out keys
  bakery keygen --out /secure/feed-keys --name 'Example Corp sysext images'";

#[derive(Args)]
#[command(
    about = "Make an image-signing key and certificate and a manifest-signing OpenPGP key",
    long_about = KEYGEN_LONG_ABOUT,
    after_help = KEYGEN_EXAMPLES
)]
struct KeygenArgs {
    /// Directory to write the keys into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Common name of the certificate and OpenPGP user ID.
    #[arg(long, value_name = "CN", default_value = bakery::keygen::DEFAULT_NAME)]
    name: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Zstd,
    Gzip,
    Xz,
    Lz4,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Xz => Compression::Xz,
            CompressionArg::Lz4 => Compression::Lz4,
        }
    }
}

/// Where downloads come from and go.
#[derive(Args)]
struct NetArgs {
    /// Directory holding the recipes that NAME arguments refer to.
    #[arg(long, value_name = "DIR", default_value = bakery::inputs::RECIPES_DIR)]
    recipes_dir: PathBuf,

    /// Rewrite URLs that start with FROM to start with TO instead (both
    /// end in '/'); repeat for several. Wins over the mirror file.
    #[arg(long = "mirror", value_name = "FROM=TO")]
    mirrors: Vec<String>,

    /// Mirror rules file ([[mirror]] from/to tables; default:
    /// $XDG_CONFIG_HOME/bakery/mirrors.toml if it exists).
    #[arg(long, value_name = "PATH")]
    mirror_file: Option<PathBuf>,

    /// Download cache (default: $XDG_CACHE_HOME/bakery).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Downloads running at the same time (1 downloads one after another).
    #[arg(long, value_name = "N", default_value_t = 8)]
    jobs: usize,
}

impl NetArgs {
    fn fetcher(&self) -> anyhow::Result<(Fetcher, GithubApi)> {
        let mut mirrors = MirrorSet::from_flags(&self.mirrors)?;
        match &self.mirror_file {
            Some(p) => mirrors.extend(MirrorSet::load(p)?),
            None => mirrors.extend(MirrorSet::load_default()?),
        }
        let cache = match &self.cache_dir {
            Some(d) => Cache::new(d),
            None => Cache::open_default()?,
        };
        let opts = FetchOptions {
            concurrency: self.jobs,
            mirrors,
            ..FetchOptions::default()
        };
        let fetcher = Fetcher::new(cache, opts)?.with_progress(Renderer::auto().sink());
        Ok((fetcher, GithubApi::from_env()))
    }

    fn recipe(&self, arg: &str) -> anyhow::Result<RecipeRef> {
        Ok(bakery::inputs::find_recipe(arg, &self.recipes_dir)?)
    }
}

const VERSIONS_LONG_ABOUT: &str = "\
List the versions upstream publishes of a recipe, newest first (UAPI
version order), from where its [upstream] table says: GitHub releases
(pre-releases and drafts dropped; GITHUB_TOKEN is sent if set), a
directory listing, or Kubernetes' schedule.yaml. NAME-STREAM lists one
stream. For recipes with streams, the newest version of each stream is
shown too.";

#[derive(Args)]
#[command(
    about = "List the upstream versions of a recipe (NAME or NAME-STREAM)",
    long_about = VERSIONS_LONG_ABOUT,
    after_help = "Examples:\n  bakery versions k3s\n  bakery versions kubernetes-v1.30"
)]
struct VersionsArgs {
    /// Recipe directory or name (NAME, NAME-STREAM).
    #[arg(value_name = "RECIPE")]
    recipe: String,

    /// Show at most this many versions (0 = all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: usize,

    #[command(flatten)]
    net: NetArgs,
}

const LOCK_LONG_ABOUT: &str = "\
Resolve a recipe (or one of its streams) against upstream and write its
lock file: recipes/NAME/bakery.lock, or recipes/NAME/NAME-STREAM.lock. It
records the version, every secondary input's version (CNI plugins, runc),
and for every input and architecture its URL and sha256. Digests come from
the checksum files upstream publishes; inputs without one are downloaded
once and their digest pinned ('checked = \"pinned\"'). 'bakery build'
then uses exactly these inputs and asks upstream nothing.";

#[derive(Args)]
#[command(
    about = "Pin a recipe's versions and input digests in its lock file",
    long_about = LOCK_LONG_ABOUT,
    after_help = "Examples:\n  bakery lock kubernetes-v1.30\n  bakery lock docker --upstream-version 27.1.1"
)]
struct LockArgs {
    /// Recipe directories or names (NAME, NAME-STREAM).
    #[arg(value_name = "RECIPE", required = true)]
    recipes: Vec<String>,

    /// Lock this version instead of the newest (one recipe only).
    #[arg(long = "upstream-version", value_name = "VERSION")]
    pin_version: Option<sysupdate::Version>,

    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args)]
#[command(
    about = "List the recipes with their architectures, streams and lock files",
    after_help = "Examples:\n  bakery list\n  bakery list --recipes-dir /srv/recipes"
)]
struct ListArgs {
    /// Directory holding the recipes.
    #[arg(long, value_name = "DIR", default_value = bakery::inputs::RECIPES_DIR)]
    recipes_dir: PathBuf,
}

fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let r = args.net.recipe(&args.recipe)?;
    let (fetcher, github) = args.net.fetcher()?;
    let list = bakery::inputs::versions(&fetcher, &github, &r)
        .with_context(|| format!("cannot list the versions of {}", r.target()))?;
    let has_streams = r
        .template
        .remote
        .as_ref()
        .and_then(|x| x.upstream.as_ref())
        .is_some_and(|u| u.streams.is_some());
    if has_streams && r.stream.is_none() {
        println!("streams (newest version of each):");
        for (s, v) in bakery::versions::streams(&list).into_iter().take(8) {
            println!("  {}-{s}  {v}", r.template.name);
        }
        println!("versions:");
    }
    let shown = if args.limit == 0 {
        list.len()
    } else {
        args.limit
    };
    for v in list.iter().take(shown) {
        println!("{v}");
    }
    if list.len() > shown {
        println!("… and {} more (--limit 0 shows all)", list.len() - shown);
    }
    Ok(())
}

fn lock(args: LockArgs) -> anyhow::Result<()> {
    if args.pin_version.is_some() && args.recipes.len() > 1 {
        anyhow::bail!("--upstream-version applies to one recipe; name only one");
    }
    let (fetcher, github) = args.net.fetcher()?;
    for arg in &args.recipes {
        let r = args.net.recipe(arg)?;
        let (l, path) = bakery::inputs::lock(&fetcher, &github, &r, args.pin_version.clone())
            .with_context(|| format!("cannot lock {}", r.target()))?;
        let secondary: Vec<String> = l
            .versions
            .secondary
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "locked {} at {}{} ({} inputs): {}",
            r.target(),
            l.versions.main,
            if secondary.is_empty() {
                String::new()
            } else {
                format!(" with {}", secondary.join(", "))
            },
            l.inputs.len(),
            path.display()
        );
        for i in &l.inputs {
            if i.checked == bakery::lock::Checked::Pinned {
                println!(
                    "  {} ({}): no published checksum; pinned sha256 {}",
                    i.source, i.arch, i.sha256
                );
            }
        }
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let all = bakery::inputs::list(&args.recipes_dir)
        .with_context(|| format!("cannot list {}", args.recipes_dir.display()))?;
    if all.is_empty() {
        println!("no recipes in {}", args.recipes_dir.display());
    }
    for r in all {
        let arches: Vec<&str> = r.architectures.iter().map(|a| a.as_str()).collect();
        println!("{}  {}", r.name, r.description);
        println!("  architectures: {}", arches.join(", "));
        println!("  versions:      {}", r.versions_from);
        println!("  streams:       {}", r.streams.unwrap_or("none"));
        for (target, v) in &r.locks {
            println!("  locked:        {target} = {v}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build(args),
        Command::Keygen(args) => keygen(args),
        Command::Publish(args) => publish(args),
        Command::Versions(args) => versions(args),
        Command::Lock(args) => lock(args),
        Command::List(args) => list(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let source_date_epoch = SourceDateEpoch::from_env()?;
    // The key is loaded and checked before anything is built or written.
    let key = KeyArgs {
        key: args.key,
        cert: args.cert,
        passphrase_file: args.passphrase_file,
    }
    .load()
    .context("cannot load the signing key")?;
    let opts = BuildOptions {
        arches: args.arches,
        output_dir: args.output,
        squashfs: SquashfsOptions {
            compression: args.compression.into(),
            level: args.level,
            threads: args.threads,
            ..SquashfsOptions::default()
        },
        source_date_epoch,
        seal: SealOptions {
            format: args.format.map(Into::into),
            key: key.map(std::sync::Arc::new),
        },
    };
    if args.pin_version.is_some() && args.recipes.len() > 1 {
        anyhow::bail!("--upstream-version applies to one recipe; name only one");
    }
    let targets = args
        .recipes
        .iter()
        .map(|a| {
            args.net
                .recipe(a)
                .with_context(|| format!("cannot build {a}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (fetcher, github) = args.net.fetcher()?;
    let cook = CookOptions {
        build: opts,
        allow_unpinned: args.allow_unpinned,
        force: args.force,
        version: args.pin_version,
    };
    let names: Vec<String> = targets.iter().map(|t| t.target()).collect();
    let reports = bakery::inputs::cook(&fetcher, &github, &targets, &cook)
        .with_context(|| format!("cannot build {}", names.join(", ")))?;
    for r in reports {
        if let Some(l) = &r.from_lock {
            println!("{}: inputs from {}", r.target, l.display());
        }
        match &r.outcome {
            Outcome::Built(report) => print_report(report),
            Outcome::UpToDate(images) => {
                println!(
                    "{} {}: up to date (recipe, inputs and options unchanged); nothing rebuilt",
                    r.target, r.version
                );
                for i in images {
                    println!("  {}", i.display());
                }
            }
        }
        if r.downloaded + r.cached > 0 {
            println!(
                "  inputs: {} downloaded, {} from the cache",
                r.downloaded, r.cached
            );
        }
        for p in &r.provenance {
            println!("  provenance {}", p.display());
        }
        for u in &r.unpinned {
            println!("  unpinned: {u} was not verified against any checksum (--allow-unpinned)");
        }
    }
    Ok(())
}

fn print_report(r: &BuildReport) {
    println!(
        "built {} {} ({}, SOURCE_DATE_EPOCH={})",
        r.name, r.version, r.compression, r.source_date_epoch
    );
    let signed = r.images.iter().all(|i| i.is_signed());
    println!(
        "sealed as {}{}",
        r.format,
        if signed { ", signed" } else { ", unsigned" }
    );
    let files = |i: &bakery::build::BuiltImage| {
        std::iter::once((i.path.clone(), i.size, i.sha256))
            .chain(
                i.sidecars
                    .iter()
                    .map(|f| (f.path.clone(), f.size, f.sha256)),
            )
            .collect::<Vec<_>>()
    };
    let width = r
        .images
        .iter()
        .flat_map(files)
        .map(|(p, ..)| p.display().to_string().len())
        .max()
        .unwrap_or(0);
    for i in &r.images {
        for (path, size, sha256) in files(i) {
            println!(
                "  {:<width$}  {:>12} bytes  sha256 {}",
                path.display().to_string(),
                size,
                sha256
            );
        }
        if let Some(root) = &i.root_hash {
            println!("    {} verity root hash {root}", i.arch);
        }
        if let Some(fp) = &i.signer {
            println!("    {} signed by certificate sha256 {fp}", i.arch);
        }
    }
    println!("  {} updated", r.sha256sums.display());
    if let Some(why) = &r.unsigned {
        println!("{why}");
    }
}

const PUBLISH_LONG_ABOUT: &str = "\
Publish sealed images into a feed that systemd-sysupdate (and 'sysext
update') can follow: a directory per extension with the images, SHA256SUMS
and its detached OpenPGP signature SHA256SUMS.gpg, transfer files (.conf
and .transfer, one per stream), Butane and Ignition snippets for nodes, and
a signed catalogue.json of every extension. With --github the feed
directory is then mirrored to GitHub Releases (one rolling release per
extension, so one URL directory holds its manifest and images).

IMAGES are NAME-VERSION-ARCH.raw files or 'bakery build' output
directories. Every image is checked before anything is published: its
sha256 against the build's SHA256SUMS beside it, its dm-verity tree, and
its root-hash signature against --verity-cert (the certificate nodes
install in /etc/verity.d, which the snippets carry). Bare and unsigned
images are refused unless --allow-unsigned is given.

Publishing is idempotent: running it again with the same inputs changes
nothing. Files appear atomically and in an order that never lets a client
see a manifest naming a file that is not there yet. Retention keeps the
newest --keep versions of every stream and never drops the version a
stream points at.";

const PUBLISH_EXAMPLES: &str = "\
Examples:
  Publish a build into a directory served at https://feed.example.org/:
    bakery publish --feed /srv/feed --base-url https://feed.example.org \\
        --pgp-key keys/openpgp.key --verity-cert keys/signing.crt out

  Publish to GitHub Releases of example/sysexts (token in GITHUB_TOKEN):
    bakery publish --feed feed --github example/sysexts \\
        --pgp-key keys/openpgp.key --verity-cert keys/signing.crt out

  Manifests valid for 30 days, keep 5 versions per stream:
    bakery publish --feed feed --base-url https://feed.example.org \\
        --best-before-days 30 --keep 5 --pgp-key keys/openpgp.key \\
        --verity-cert keys/signing.crt out/wasmtime-25.0.1-x86-64.raw

Environment:
  BAKERY_PGP_KEY      OpenPGP secret key file (--pgp-key wins)
  BAKERY_VERITY_CERT  verity certificate file (--verity-cert wins)
  GITHUB_TOKEN        token for --github";

#[derive(Args)]
#[command(
    about = "Publish sealed images into a signed feed (directory or GitHub Releases)",
    long_about = PUBLISH_LONG_ABOUT,
    after_help = PUBLISH_EXAMPLES
)]
struct PublishArgs {
    /// Image files (NAME-VERSION-ARCH.raw) or build output directories.
    #[arg(value_name = "IMAGES|OUTDIR", required = true)]
    inputs: Vec<PathBuf>,

    /// The feed directory (created if missing); with --github, the local
    /// copy that is mirrored.
    #[arg(long, value_name = "DIR")]
    feed: PathBuf,

    /// URL the feed directory is served at; NAME/ is appended per
    /// extension, or put {name} where it belongs.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,

    /// Publish to GitHub Releases of this repository (GITHUB_TOKEN).
    #[arg(long, value_name = "OWNER/REPO")]
    github: Option<String>,

    /// GitHub API URL (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, value_name = "URL", requires = "github")]
    github_api_url: Option<String>,

    /// GitHub web URL that download links start with.
    #[arg(long, value_name = "URL", requires = "github")]
    github_web_url: Option<String>,

    /// Also keep one GitHub release per version, for provenance.
    #[arg(long, requires = "github")]
    provenance: bool,

    /// Versions to keep per stream (default 3).
    #[arg(long, value_name = "N")]
    keep: Option<std::num::NonZeroUsize>,

    /// OpenPGP secret key that signs SHA256SUMS (openpgp.key from 'bakery
    /// keygen'; default: $BAKERY_PGP_KEY).
    #[arg(long, value_name = "PATH")]
    pgp_key: Option<PathBuf>,

    /// PEM certificate the images must be signed by; nodes get it in
    /// /etc/verity.d from the snippets (default: $BAKERY_VERITY_CERT).
    #[arg(long, value_name = "PATH")]
    verity_cert: Option<PathBuf>,

    /// Write BEST-BEFORE this many days ahead into every manifest, so that
    /// nodes refuse a feed frozen by an attacker.
    #[arg(long, value_name = "N")]
    best_before_days: Option<u32>,

    /// The extension name, when it cannot be told from the file names.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Publish bare or unsigned images too.
    #[arg(long)]
    allow_unsigned: bool,
}

fn publish(args: PublishArgs) -> anyhow::Result<()> {
    use bakery::publish::{GithubSettings, PublishSettings};
    let github = match &args.github {
        Some(slug) => Some(GithubSettings {
            repo: slug
                .parse()
                .map_err(|e| anyhow::anyhow!("--github {slug:?}: {e}"))?,
            api_url: args.github_api_url.clone(),
            web_url: args.github_web_url.clone(),
            provenance: args.provenance,
        }),
        None => None,
    };
    let name = match &args.name {
        Some(n) => Some(releases::ExtensionName::new(n.clone()).context("--name")?),
        None => None,
    };
    let settings = PublishSettings {
        feed_dir: args.feed.clone(),
        inputs: args.inputs,
        name,
        base_url: args.base_url,
        github,
        keep: args.keep,
        best_before_days: args.best_before_days,
        pgp_key: args.pgp_key,
        verity_cert: args.verity_cert,
        allow_unsigned: args.allow_unsigned,
    }
    .with_env_defaults();
    let observer = |e: &releases::FeedEvent| match e {
        releases::FeedEvent::Wrote(p) => println!("  wrote   {}", p.display()),
        releases::FeedEvent::Removed(p) => println!("  removed {}", p.display()),
    };
    println!("publishing to {}", args.feed.display());
    let out = bakery::publish::publish(&settings, Some(&observer))
        .with_context(|| format!("cannot publish to {}", args.feed.display()))?;
    for i in &out.images {
        let how = match (&i.signer, i.format) {
            (Some(fp), f) => format!("{f}, signed by certificate sha256 {fp}"),
            (None, f) => format!("{f}, unsigned"),
        };
        println!(
            "  {} {} {}: {} ({how})",
            i.image.name,
            i.image.version,
            i.image.arch,
            i.image.path.display()
        );
    }
    if out.feed.is_noop() {
        println!("feed unchanged (already up to date)");
    }
    println!("feed URL {}", out.feed_url);
    println!("manifests signed by OpenPGP key {}", out.pgp_fingerprint);
    if let Some(g) = &out.github {
        for r in &g.releases {
            if r.is_noop() {
                println!("  release {}: unchanged", r.tag);
                continue;
            }
            println!(
                "  release {}: {} uploaded, {} replaced, {} deleted, {} cleaned up",
                r.tag,
                r.uploaded.len(),
                r.replaced.len(),
                r.deleted.len(),
                r.cleaned.len()
            );
        }
    }
    if out.images.iter().any(|i| i.signer.is_none()) {
        println!("unsigned: some images carry no signature (--allow-unsigned)");
    }
    Ok(())
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let g = bakery::keygen::keygen(&args.out, &args.name)
        .with_context(|| format!("cannot make keys in {}", args.out.display()))?;
    println!("wrote keys to {}", args.out.display());
    println!(
        "  {}  private image-signing key (0600): bakery build --key {}",
        g.signing_key.display(),
        g.signing_key.display()
    );
    println!(
        "  {}  certificate, sha256 {}: install on nodes as /etc/verity.d/NAME.crt",
        g.certificate.display(),
        g.certificate_fingerprint
    );
    println!(
        "  {}  private manifest-signing OpenPGP key (0600), fingerprint {}",
        g.openpgp_key.display(),
        g.openpgp_fingerprint
    );
    println!(
        "  {}  public keyring: install on nodes as /etc/systemd/import-pubring.gpg",
        g.pubring.display()
    );
    println!("Keep the private keys secret and out of version control.");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
