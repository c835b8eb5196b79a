//! The `update`, `pending` and `rollback` subcommands of `sysext`: argument
//! parsing and presentation only (progress on a terminal, plain lines or
//! JSON lines otherwise, a summary or `--json` report); the work is
//! `merge_runtime::update`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use merge_runtime::runtime::Options;
use merge_runtime::update::{self, health::Check, ComponentReport, Event, Outcome, UpdateOptions};

#[derive(Subcommand)]
pub enum UpdateCommand {
    /// Download, verify and activate the newest version of extensions from
    /// their feeds (/etc/sysupdate.NAME.d/*.transfer); roll back when the
    /// health check fails.
    #[command(after_help = UPDATE_HELP)]
    Update {
        /// Components to update (default: every /etc/sysupdate.NAME.d).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        common: Common,
        /// Health check: a shell command that must exit 0 after the refresh.
        #[arg(long, value_name = "CMD", conflicts_with = "check_unit")]
        check: Option<String>,
        /// Health check: a unit that is restarted and must not fail.
        #[arg(long, value_name = "UNIT")]
        check_unit: Option<String>,
        /// Seconds the health check may take.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        check_timeout: u64,
        /// Only install and flip CurrentSymlink (like systemd-sysupdate);
        /// do not refresh the merged extensions.
        #[arg(long, conflicts_with_all = ["check", "check_unit"])]
        no_refresh: bool,
        /// Also consider versions that failed before.
        #[arg(long)]
        retry_failed: bool,
        /// Largest image file to download, in bytes: a larger one is
        /// refused (by Content-Length before downloading, else by
        /// counting) and its partial file deleted.
        #[arg(long, value_name = "BYTES", default_value_t = update::feed::DEFAULT_MAX_DOWNLOAD)]
        max_download_size: u64,
    },
    /// Show what `update` would do (fetches and verifies the manifests;
    /// changes nothing).
    Pending {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Make the previous instance of a component current again, record the
    /// current version as failed (updates skip it), and refresh.
    Rollback {
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        common: Common,
        /// Only flip CurrentSymlink back; do not refresh.
        #[arg(long)]
        no_refresh: bool,
    },
}

const UPDATE_HELP: &str = "\
Files (all inside --root):
  /etc/sysupdate.NAME.d/*.transfer   transfer definitions (also /run, /usr/local/lib, /usr/lib;
                                     *.conf when no *.transfer exists)
  /etc/systemd/import-pubring.gpg    keyring for SHA256SUMS.gpg (also .pgp, /usr/lib/systemd/)
  /etc/verity.d/*.crt                certificates for image signatures (node policy)
  /var/lib/sysext/update-state.json  failed versions, previous instances, activation journal
  /run/sysext/lock, update.lock      locks shared with merge/refresh/unmerge

Exit status: 0 when every component is up to date or was updated; 1 when
one was refused, rolled back or failed.";

#[derive(Args)]
pub struct Common {
    /// Read transfer files only from this directory (inside --root).
    #[arg(long, value_name = "DIR")]
    definitions: Option<PathBuf>,
    /// Progress display: a line that updates on a terminal (auto), one
    /// line per step (plain), JSON lines with timestamps (json), or none.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProgressArg {
    Auto,
    Plain,
    Json,
    None,
}

/// Renders events on stderr.
struct Progress {
    mode: ProgressArg,
    start: Instant,
    /// A progress line is on screen (terminal mode).
    open_line: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(mode: ProgressArg) -> Progress {
        let mode = match mode {
            ProgressArg::Auto if std::io::stderr().is_terminal() => ProgressArg::Auto,
            ProgressArg::Auto => ProgressArg::Plain,
            m => m,
        };
        Progress {
            mode,
            start: Instant::now(),
            open_line: false,
            last_draw: None,
        }
    }

    fn event(&mut self, e: &Event) {
        let mut err = std::io::stderr().lock();
        match self.mode {
            ProgressArg::None => {}
            ProgressArg::Json => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "elapsed_us".into(),
                        (self.start.elapsed().as_micros() as u64).into(),
                    );
                }
                let _ = writeln!(err, "{v}");
            }
            ProgressArg::Plain | ProgressArg::Auto => {
                let tty = self.mode == ProgressArg::Auto;
                if let Event::DownloadProgress {
                    component,
                    file,
                    bytes,
                    total,
                } = e
                {
                    if !tty {
                        return;
                    }
                    let now = Instant::now();
                    let done = total.is_some_and(|t| t == *bytes);
                    if !done
                        && self
                            .last_draw
                            .is_some_and(|t| now - t < Duration::from_millis(100))
                    {
                        return;
                    }
                    self.last_draw = Some(now);
                    let pct = total
                        .filter(|t| *t > 0)
                        .map(|t| format!(" {:3}%", bytes * 100 / t))
                        .unwrap_or_default();
                    let _ = write!(
                        err,
                        "\r\x1b[K{component}: downloading {file} {}{}{pct}",
                        mib(*bytes),
                        total.map(|t| format!(" / {}", mib(t))).unwrap_or_default()
                    );
                    self.open_line = true;
                    return;
                }
                if self.open_line {
                    let _ = write!(err, "\r\x1b[K");
                    self.open_line = false;
                }
                if let Some(line) = describe(e) {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// One human line per event (none for the chatty ones).
fn describe(e: &Event) -> Option<String> {
    Some(match e {
        Event::LockWait { path } => format!(
            "Waiting for {} (another sysext is updating or merging)…",
            path.display()
        ),
        Event::Component { .. } => return None,
        Event::Warning { component, message } => format!("{component}: {message}"),
        Event::Recovering {
            component,
            version,
            action,
        } => format!("{component}: an earlier run was interrupted while activating {version}: {action}"),
        Event::Manifest {
            component,
            url,
            verified,
            signer,
        } => {
            if *verified {
                format!(
                    "{component}: {url}: signature OK (key {})",
                    signer.as_deref().unwrap_or("?")
                )
            } else {
                format!("{component}: {url}: NOT VERIFIED (Verify=no)")
            }
        }
        Event::Plan {
            component,
            current,
            action,
            ..
        } => format!(
            "{component}: current {}; {action}",
            current.as_deref().unwrap_or("none")
        ),
        Event::Vacuumed { component, removed } => format!(
            "{component}: removed {}",
            removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::DownloadStart {
            component,
            url,
            resume_from,
            ..
        } => {
            if *resume_from > 0 {
                format!("{component}: resuming {url} at {}", mib(*resume_from))
            } else {
                format!("{component}: downloading {url}")
            }
        }
        Event::DownloadProgress { .. } => return None,
        Event::DownloadDone {
            component,
            file,
            bytes,
            transferred,
        } => format!(
            "{component}: {file}: {} ({} transferred), sha256 matches the manifest",
            mib(*bytes),
            mib(*transferred)
        ),
        Event::Reused { component, file } => format!(
            "{component}: {} is already installed and matches the manifest",
            file.display()
        ),
        Event::ImageVerified {
            component,
            file,
            policy,
            signer,
            verified_bytes,
        } => format!(
            "{component}: {}: accepted under policy {policy}; signer {}; {} checked against the root hash",
            file.display(),
            signer.as_deref().unwrap_or("none"),
            mib(*verified_bytes)
        ),
        Event::Installed { component, file } => {
            format!("{component}: installed {}", file.display())
        }
        Event::JournalWritten { .. } => return None,
        Event::LinkFlipped {
            component,
            link,
            target,
        } => format!(
            "{component}: {link} -> {}",
            target.as_deref().unwrap_or("(removed)")
        ),
        Event::RefreshStart { .. } => return None,
        Event::RefreshDone { component, action } => {
            format!("{component}: refreshed the merged extensions ({action})")
        }
        Event::CheckStart { component, check } => format!("{component}: health check: {check}"),
        Event::CheckPassed { component } => format!("{component}: health check passed"),
        Event::CheckFailed { component, reason } => {
            format!("{component}: HEALTH CHECK FAILED: {reason}")
        }
        Event::RollingBack {
            component,
            version,
            reason,
        } => format!("{component}: ROLLING BACK {version}: {reason}"),
        Event::Done { .. } => return None,
    })
}

/// "; skipped ..." with each skipped version and why it failed, or "".
fn skipped(c: &ComponentReport) -> String {
    if c.skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = c
        .skipped
        .iter()
        .map(|s| format!("{} ({})", s.version, s.reason))
        .collect();
    format!(
        "; skipped version(s) that failed before: {} (--retry-failed to try again)",
        list.join("; ")
    )
}

fn summary(c: &ComponentReport) -> String {
    let cur = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    let n = &c.component;
    let reason = c.reason.as_deref().unwrap_or("");
    match c.outcome {
        Outcome::Installed => format!(
            "{n}: updated to {} (was {})",
            cur(&c.version),
            cur(&c.current_before)
        ),
        Outcome::Staged => format!(
            "{n}: installed {} and flipped the link (not refreshed: run `sysext refresh`)",
            cur(&c.version)
        ),
        Outcome::UpToDate => format!("{n}: up to date ({}){}", cur(&c.current_after), skipped(c)),
        Outcome::WouldInstall => format!(
            "{n}: would update {} -> {}{}",
            cur(&c.current_before),
            cur(&c.version),
            skipped(c)
        ),
        Outcome::NothingAvailable => format!("{n}: nothing to install: {reason}"),
        Outcome::RolledBack => format!("{n}: ROLLED BACK to {}: {reason}", cur(&c.current_after)),
        Outcome::Refused => format!(
            "{n}: REFUSED, {} stays current: {reason}",
            cur(&c.current_after)
        ),
        Outcome::Failed => format!("{n}: FAILED: {reason}"),
    }
}

/// Runs an update subcommand. `json`: `Some(pretty)` prints the report as
/// JSON on stdout.
pub fn run(cmd: UpdateCommand, runtime: Options, json: Option<bool>) -> Result<()> {
    let mut opts = UpdateOptions::new(runtime);
    let print = |v: &dyn erased::Ser| -> Result<()> {
        if let Some(pretty) = json {
            println!("{}", v.to_json(pretty)?);
        }
        Ok(())
    };
    match cmd {
        UpdateCommand::Update {
            names,
            common,
            check,
            check_unit,
            check_timeout,
            no_refresh,
            retry_failed,
            max_download_size,
        } => {
            opts.definitions = common.definitions;
            opts.check = match (check, check_unit) {
                (Some(c), _) => Some(Check::Command { command: c }),
                (None, Some(u)) => Some(Check::unit(&u).map_err(anyhow::Error::msg)?),
                (None, None) => None,
            };
            opts.check_timeout = Duration::from_secs(check_timeout.max(1));
            opts.refresh = !no_refresh;
            opts.retry_failed = retry_failed;
            opts.max_download_size = max_download_size;
            let mut p = Progress::new(common.progress);
            let r = update::update(&opts, &names, &mut |e| p.event(e)).context("update")?;
            print(&r)?;
            if json.is_none() {
                for c in &r.components {
                    eprintln!("{}", summary(c));
                }
            }
            let bad: Vec<&str> = r
                .components
                .iter()
                .filter(|c| c.outcome.is_failure())
                .map(|c| c.component.as_str())
                .collect();
            if !bad.is_empty() {
                bail!("update of {} did not succeed", bad.join(", "));
            }
        }
        UpdateCommand::Pending { names, common } => {
            opts.definitions = common.definitions;
            let mut p = Progress::new(common.progress);
            let r = update::pending(&opts, &names, &mut |e| p.event(e)).context("pending")?;
            print(&r)?;
            if json.is_none() {
                for c in &r.components {
                    println!("{}", summary(c));
                    if let Some(m) = &c.recovered {
                        println!("  {m}");
                    }
                }
            }
            let bad: Vec<&str> = r
                .components
                .iter()
                .filter(|c| c.outcome.is_failure())
                .map(|c| c.component.as_str())
                .collect();
            if !bad.is_empty() {
                bail!("cannot update {}", bad.join(", "));
            }
        }
        UpdateCommand::Rollback {
            name,
            common,
            no_refresh,
        } => {
            opts.definitions = common.definitions;
            opts.refresh = !no_refresh;
            let mut p = Progress::new(common.progress);
            let r = update::rollback(&opts, &name, &mut |e| p.event(e)).context("rollback")?;
            print(&r)?;
            if json.is_none() {
                eprintln!(
                    "{}: rolled back from {} to {}; {} is recorded as failed",
                    r.component,
                    r.current_before.as_deref().unwrap_or("none"),
                    r.current_after.as_deref().unwrap_or("none"),
                    r.version.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

/// Serialising the two report types through one closure.
mod erased {
    pub trait Ser {
        fn to_json(&self, pretty: bool) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self, pretty: bool) -> serde_json::Result<String> {
            if pretty {
                serde_json::to_string_pretty(self)
            } else {
                serde_json::to_string(self)
            }
        }
    }
}
