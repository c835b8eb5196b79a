//! `bakery`: the command line of the build side. It parses arguments, calls
//! the `bakery` library and prints the result; errors are printed as
//! `error: …` with their causes, and the exit code is 1 (2 for usage errors).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sysupdate::Arch;

use bakery::build::{BuildOptions, BuildReport};
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
systemd-sysext merges.";

const EXAMPLES: &str = "\
Examples:
  bakery build examples/hello
  bakery build examples/hello --arch x86-64 --output /srv/feed/hello
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

/// The subcommands. New ones (keygen, publish, versions, lock, list) are
/// added here as variants with their own `Args` struct.
#[derive(Subcommand)]
enum Command {
    Build(BuildArgs),
}

const BUILD_LONG_ABOUT: &str = "\
Build a recipe into sysext images, one per architecture.

Writes NAME-VERSION-ARCH.raw for each architecture into the output
directory and adds or replaces its line in DIR/SHA256SUMS (other lines are
kept). Every file appears atomically: images are written to temporary files
next to their final names and renamed only when all of them are complete.
On any error no new file is left behind.

The recipe is checked first: unknown keys, bad names or architectures,
files outside usr/ and opt/, usr/sbin, device nodes and escaping symlinks
are errors that name the file (and line and key where there is one).

Images are byte-identical across rebuilds of the same inputs. Every inode
gets the time SOURCE_DATE_EPOCH (seconds since 1970; unset means 0).";

const BUILD_EXAMPLES: &str = "\
Examples:
  Build every architecture of the bundled example into ./out:
    bakery build examples/hello

  Build only x86-64, with gzip, into another directory:
    bakery build examples/hello --arch x86-64 --compression gzip --output /tmp/images

  Stamp the image with the time of the last commit:
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) bakery build examples/hello

Environment:
  SOURCE_DATE_EPOCH  mtime of every inode (default 0)";

#[derive(Args)]
#[command(
    about = "Build a recipe into sysext images (NAME-VERSION-ARCH.raw + SHA256SUMS)",
    long_about = BUILD_LONG_ABOUT,
    after_help = BUILD_EXAMPLES
)]
struct BuildArgs {
    /// The recipe directory (holds recipe.toml and optionally files/).
    #[arg(value_name = "RECIPE-DIR")]
    recipe: PathBuf,

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build(args),
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
    };
    let report = bakery::build::build(&args.recipe, &opts)
        .with_context(|| format!("cannot build {}", args.recipe.display()))?;
    print_report(&report);
    Ok(())
}

fn print_report(r: &BuildReport) {
    println!(
        "built {} {} ({}, SOURCE_DATE_EPOCH={})",
        r.name, r.version, r.compression, r.source_date_epoch
    );
    let width = r
        .images
        .iter()
        .map(|i| i.path.display().to_string().len())
        .max()
        .unwrap_or(0);
    for i in &r.images {
        println!(
            "  {:<width$}  {:>12} bytes  sha256 {}",
            i.path.display().to_string(),
            i.size,
            i.sha256
        );
    }
    println!("  {} updated", r.sha256sums.display());
}
