//! `sysext`: merge system extension images into /usr/ and /opt/.
//! Parses arguments, calls `merge_runtime`, and prints tables (like
//! systemd-sysext's) or JSON. Exit codes: 0 success, 1 failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use merge_runtime::runtime::{self, Action, Options, Outcome, Swap};
use merge_runtime::verify::{BackendChoice, Policy, PolicySource};

mod update_cli;

#[derive(Parser)]
#[command(
    name = "sysext",
    version,
    about = "Merge system extension images into /usr/ and /opt/",
    long_about = "Merge system extension images into /usr/ and /opt/, interchangeably with \
                  systemd-sysext, with image verification (also on kernels without dm-verity), \
                  a signature policy, and a refresh with no gap."
)]
struct Cli {
    /// Operate relative to this root directory.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print JSON (`--json` alone means `short`).
    #[arg(long, global = true, value_name = "MODE", num_args = 0..=1,
          require_equals = true, default_missing_value = "short")]
    json: Option<JsonMode>,
    /// Ignore version incompatibilities (skip extension-release checks).
    #[arg(long, global = true)]
    force: bool,
    /// Do not reload the service manager after merge/unmerge.
    #[arg(long, global = true)]
    no_reload: bool,
    /// Do not print table headers and footers.
    #[arg(long, global = true)]
    no_legend: bool,
    /// Accepted for compatibility with systemd-sysext; there is no pager.
    #[arg(long, global = true, hide = true)]
    no_pager: bool,
    /// Verification policy; overrides /etc/sysext/policy.conf.
    #[arg(long, global = true, value_enum)]
    policy: Option<PolicyArg>,
    /// How verity-protected images are checked.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    verity: BackendArg,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show current merge status (default).
    Status,
    /// Merge extensions into /usr/ and /opt/.
    Merge,
    /// Unmerge extensions from /usr/ and /opt/.
    Unmerge,
    /// Re-merge the current set atomically (no-op when nothing changed).
    Refresh,
    /// List installed extensions.
    List,
    /// Verify one image file (policy, signature, every data block).
    Verify {
        /// The image: a DDI, or a bare image with .roothash/.verity sidecars.
        image: PathBuf,
    },
    // `update`, `pending`, `rollback` (H8).
    #[command(flatten)]
    Update(update_cli::UpdateCommand),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum JsonMode {
    Pretty,
    Short,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Signed,
    Verity,
    Any,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Kernel,
    UserSpace,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sysext: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(mode: JsonMode, v: &impl serde::Serialize) -> Result<()> {
    let s = if mode == JsonMode::Pretty {
        serde_json::to_string_pretty(v)?
    } else {
        serde_json::to_string(v)?
    };
    println!("{s}");
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let mut opts = Options::new(cli.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    opts.hierarchies_from_env()?;
    opts.force = cli.force;
    opts.no_reload = cli.no_reload;
    opts.policy = cli.policy.map(|p| match p {
        PolicyArg::Signed => Policy::Signed,
        PolicyArg::Verity => Policy::Verity,
        PolicyArg::Any => Policy::Any,
    });
    opts.backend = match cli.verity {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Kernel => BackendChoice::Kernel,
        BackendArg::UserSpace => BackendChoice::UserSpace,
    };
    let json = cli.json.filter(|m| *m != JsonMode::Off);
    let legend = !cli.no_legend;
    match cli.command.unwrap_or(Command::Status) {
        Command::Update(cmd) => {
            return update_cli::run(cmd, opts, json.map(|m| m == JsonMode::Pretty))
        }
        Command::Status => {
            let r = runtime::status(&opts).context("status")?;
            if let Some(m) = json {
                return print_json(m, &r.hierarchies);
            }
            let mut t = Table::new(["hierarchy", "extensions", "since"]);
            for h in &r.hierarchies {
                let exts = match &h.extensions {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.as_str().unwrap_or("none").to_string(),
                };
                t.row([
                    h.hierarchy.clone(),
                    exts,
                    h.since.map(format_usec).unwrap_or("-".into()),
                ]);
            }
            t.print(legend);
            // One row per image: every merged hierarchy records the same set.
            let mut images = Table::new(["extension", "verification", "root hash", "signer"]);
            let mut seen = std::collections::BTreeSet::new();
            for h in &r.hierarchies {
                for i in &h.images {
                    if !seen.insert(i.name.clone()) {
                        continue;
                    }
                    images.row([
                        i.name.clone(),
                        i.verification.as_str().to_string(),
                        i.root_hash
                            .as_deref()
                            .map(|s| s[..s.len().min(16)].to_string())
                            .unwrap_or("-".into()),
                        i.signer.clone().unwrap_or("-".into()),
                    ]);
                }
                if h.merged_by.as_deref() == Some("systemd-sysext") {
                    let exts = h.extensions.as_array().cloned().unwrap_or_default();
                    for e in exts.iter().filter_map(|v| v.as_str()) {
                        if seen.insert(e.to_string()) {
                            images.row([
                                e.to_string(),
                                "unknown (merged by systemd-sysext)".into(),
                                "-".into(),
                                "-".into(),
                            ]);
                        }
                    }
                }
            }
            if !images.rows.is_empty() {
                println!();
                images.print(legend);
            }
            if legend {
                let src = match &r.policy.source {
                    PolicySource::CommandLine => "--policy".to_string(),
                    PolicySource::File { path } => path.display().to_string(),
                    PolicySource::Default => "default".to_string(),
                };
                println!(
                    "\nPolicy: {} (from {src}); kernel dm-verity: {}",
                    r.policy.policy,
                    if r.kernel_dm_verity {
                        "present"
                    } else {
                        "absent (user-space verification)"
                    }
                );
            }
        }
        Command::List => {
            let r = runtime::list(&opts).context("list")?;
            if let Some(m) = json {
                return print_json(m, &r.images);
            }
            if r.images.is_empty() && r.masked.is_empty() {
                eprintln!("No OS extensions found.");
                return Ok(());
            }
            let mut t = Table::new(["name", "type", "path", "time", "format", "verity", "signed"]);
            for i in &r.images {
                t.row([
                    i.name.clone(),
                    i.kind.clone(),
                    i.path.display().to_string(),
                    i.time.map(format_usec).unwrap_or("-".into()),
                    i.format.clone().unwrap_or("-".into()),
                    yes_no(i.verity),
                    yes_no(i.signed),
                ]);
            }
            t.print(legend);
            for m in &r.masked {
                eprintln!(
                    "{} is masked by the empty directory {}",
                    m.name,
                    m.path.display()
                );
            }
            for s in &r.skipped {
                eprintln!("Ignoring {}: {}", s.path.display(), s.reason);
            }
        }
        cmd @ (Command::Merge | Command::Refresh) => {
            let refresh = matches!(cmd, Command::Refresh);
            let r = if refresh {
                runtime::refresh(&opts).context("refresh")?
            } else {
                runtime::merge(&opts).context("merge")?
            };
            if let Some(m) = json {
                return print_json(m, &r);
            }
            for i in &r.images {
                if let Outcome::Refused { stage, reason } = &i.outcome {
                    eprintln!("Refusing extension '{}' ({stage:?}): {reason}", i.name);
                }
            }
            for m in &r.masked {
                eprintln!("Extension '{}' is masked by {}.", m.name, m.path.display());
            }
            match r.action {
                Action::Unchanged => eprintln!(
                    "Nothing changed, extensions '{}' stay merged.",
                    r.extensions.join("', '")
                ),
                Action::NothingToMerge => {
                    eprintln!("No suitable extensions found.");
                    for h in &r.unmerged {
                        eprintln!("Unmerged '{h}'.");
                    }
                }
                Action::Merged => {
                    eprintln!("Using extensions '{}'.", r.extensions.join("', '"));
                    for h in &r.hierarchies {
                        let how = match h.swap {
                            Swap::Mounted => "Merged extensions into",
                            Swap::Beneath => {
                                "Replaced the merged tree (mounted beneath, no gap) on"
                            }
                            Swap::Stacked => {
                                "Stacked the new merged tree (kernel lacks MOVE_MOUNT_BENEATH) on"
                            }
                            Swap::Unmerged => "Unmerged",
                        };
                        eprintln!("{how} '{}'.", h.hierarchy);
                    }
                }
            }
            if r.reloaded_manager {
                eprintln!("Reloaded the service manager.");
            }
        }
        Command::Unmerge => {
            let r = runtime::unmerge(&opts).context("unmerge")?;
            if let Some(m) = json {
                return print_json(m, &r);
            }
            for h in &r.unmerged {
                eprintln!("Unmerged '{h}'.");
            }
        }
        Command::Verify { image } => {
            let r = runtime::verify_image(&opts, &image)
                .with_context(|| format!("verifying {}", image.display()))?;
            if let Some(m) = json {
                return print_json(m, &r);
            }
            println!("{}: OK", r.path.display());
            println!("  format:    {}", r.format);
            println!("  root hash: {} (from {})", r.root_hash, r.root_hash_origin);
            println!(
                "  signer:    {}",
                r.signer.as_deref().unwrap_or("none (not signed)")
            );
            println!(
                "  checked:   {} bytes, every block, in user space",
                r.data_bytes
            );
            println!("  policy:    {}", r.policy.policy);
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// A table printed like systemd's: upper-case headers, columns separated
/// by a space, the last column not padded.
struct Table<const N: usize> {
    header: [&'static str; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&'static str; N]) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, r: [String; N]) {
        self.rows.push(r);
    }

    fn print(&self, legend: bool) {
        let mut widths = [0usize; N];
        if legend {
            for (w, h) in widths.iter_mut().zip(self.header) {
                *w = h.chars().count();
            }
        }
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == N {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$} ", w = widths[i]));
                }
            }
            println!("{}", s.trim_end());
        };
        if legend {
            line(self.header.iter().map(|h| h.to_uppercase()).collect());
        }
        for r in &self.rows {
            line(r.to_vec());
        }
    }
}

/// Formats µs since the epoch like systemd (`Sun 2026-11-22 02:26:06 UTC`),
/// always in UTC.
fn format_usec(usec: u64) -> String {
    let secs = usec / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    match sysupdate::Date::from_unix_days(days) {
        Some(date) => format!("{wd} {date} {h:02}:{m:02}:{s:02} UTC"),
        // Beyond year 9999: no calendar date; show the raw count.
        None => format!("@{secs} UTC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_systemd() {
        // 1795314366108436 µs was printed by systemd-sysext as this:
        assert_eq!(
            format_usec(1_795_314_366_108_436),
            "Sun 2026-11-22 02:26:06 UTC"
        );
        assert_eq!(format_usec(0), "Thu 1970-01-01 00:00:00 UTC");
    }
}
