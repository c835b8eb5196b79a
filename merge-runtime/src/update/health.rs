//! The health check after an activation: a shell command (`--check CMD`)
//! or a systemd unit (`--check-unit UNIT`: restarted, then it must not be
//! failed), which must succeed within a timeout. The check runs in its
//! own process group; on timeout the whole group is killed.
//!
//! The command sees `SYSEXT_ROOT`, `SYSEXT_COMPONENT`, `SYSEXT_VERSION`
//! (the version being activated) in its environment. Its standard output
//! goes to our standard error, so `--json` output stays clean.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What must succeed after an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Check {
    /// `sh -c COMMAND` must exit 0.
    Command { command: String },
    /// `systemctl restart UNIT` must succeed, and the unit must not be in
    /// the failed state afterwards.
    Unit { unit: String },
}

impl Check {
    /// A check of a unit; refuses names systemctl would take as options or
    /// that cannot be unit names.
    pub fn unit(name: &str) -> Result<Check, String> {
        let ok = !name.is_empty()
            && !name.starts_with('-')
            && name.len() <= 256
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
        if ok {
            Ok(Check::Unit {
                unit: name.to_string(),
            })
        } else {
            Err(format!(
                "invalid unit name {name:?}: use a systemd unit name such as kubelet.service"
            ))
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Check::Command { command } => format!("check command `{command}`"),
            Check::Unit { unit } => format!("unit {unit}"),
        }
    }
}

/// Runs `check` with `env`, within `timeout`. `Err` says why it failed.
pub fn run(check: &Check, env: &[(&str, String)], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    match check {
        Check::Command { command } => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(command);
            let status = run_one(cmd, env, deadline, timeout)?;
            if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "check command `{command}` {}",
                    describe_status(status)
                ))
            }
        }
        Check::Unit { unit } => {
            let mut restart = Command::new("systemctl");
            restart.args(["restart", "--"]).arg(unit);
            let status = run_one(restart, env, deadline, timeout)?;
            if !status.success() {
                return Err(format!(
                    "`systemctl restart {unit}` {}",
                    describe_status(status)
                ));
            }
            let mut failed = Command::new("systemctl");
            failed.args(["is-failed", "--quiet", "--"]).arg(unit);
            let status = run_one(failed, env, deadline, timeout)?;
            if status.success() {
                return Err(format!(
                    "unit {unit} is in the failed state after the restart"
                ));
            }
            Ok(())
        }
    }
}

fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_string(),
    }
}

fn stderr_as_stdio() -> io::Result<Stdio> {
    Ok(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?))
}

fn run_one(
    mut cmd: Command,
    env: &[(&str, String)],
    deadline: Instant,
    timeout: Duration,
) -> Result<ExitStatus, String> {
    cmd.stdin(Stdio::null()).process_group(0);
    if let Ok(out) = stderr_as_stdio() {
        cmd.stdout(out);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
        if Instant::now() >= deadline {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the health check did not finish within {} s and was killed",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_status_and_timeout() {
        let ok = Check::Command {
            command: "test \"$SYSEXT_VERSION\" = 2".into(),
        };
        run(
            &ok,
            &[("SYSEXT_VERSION", "2".into())],
            Duration::from_secs(5),
        )
        .unwrap();
        let e = run(
            &ok,
            &[("SYSEXT_VERSION", "1".into())],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.contains("exited with status 1"), "{e}");
        let slow = Check::Command {
            command: "sleep 30 & sleep 30".into(),
        };
        let t = Instant::now();
        let e = run(&slow, &[], Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn unit_names() {
        assert!(Check::unit("kubelet.service").is_ok());
        assert!(Check::unit("getty@tty1.service").is_ok());
        assert!(Check::unit("--now").is_err());
        assert!(Check::unit("a b").is_err());
    }
}
