//! The lab's background processes (`lab serve`, `lab daemon`): detached children with a
//! pidfile and a log in the lab's state directory, and a ready file they write once they do
//! their job, so `lab up` returns only when the lab works.
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::LabName;

/// A background process role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Servers on every declared container port of every pod.
    Serve,
    /// Enforcement: compile, map sync, attach, watch the manifests.
    Daemon,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Daemon => "daemon",
        }
    }

    pub fn pidfile(self, name: &LabName) -> PathBuf {
        name.state_dir().join(format!("{}.pid", self.as_str()))
    }

    pub fn log(self, name: &LabName) -> PathBuf {
        name.state_dir().join(format!("{}.log", self.as_str()))
    }

    pub fn ready_file(self, name: &LabName) -> PathBuf {
        name.state_dir().join(format!("{}.ready", self.as_str()))
    }
}

/// Start `exe lab <role> --name NAME extra...` detached (own session, stdio to the log),
/// then wait until it writes its ready file. A reaper thread collects it when it exits
/// while this process still runs (tests), so its pid never lingers as a zombie.
pub fn spawn(exe: &Path, role: Role, name: &LabName, extra: &[String]) -> Result<u32> {
    let ready = role.ready_file(name);
    let _ = fs::remove_file(&ready);
    let log_path = role.log(name);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", role.as_str(), "--name", name.as_str()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves our session and process group
    // so that a Ctrl-C on `lab up` does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} lab {}", exe.display(), role.as_str()))?;
    let pid = child.id();
    fs::write(role.pidfile(name), pid.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ready.exists() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "lab {} of {name} exited ({status}) before it was ready; log {}:\n{}",
                role.as_str(),
                log_path.display(),
                tail(&log_path)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "lab {} of {name} not ready after 30 s; log {}",
                role.as_str(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Mark this process ready (called by the background process itself).
pub fn mark_ready(role: Role, name: &LabName) -> Result<()> {
    File::create(role.ready_file(name))?;
    Ok(())
}

/// The pid in the role's pidfile, if that process is alive.
pub fn running(role: Role, name: &LabName) -> Option<u32> {
    let pid: i32 = fs::read_to_string(role.pidfile(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (alive(pid) && is_ours(pid, role, name)).then_some(pid as u32)
}

/// Whether `pid` runs `lab <role> --name <name>` (a pidfile left by a crash may point at a
/// pid the kernel has since given to something else).
fn is_ours(pid: i32, role: Role, name: &LabName) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let want: [&[u8]; 4] = [
        b"lab",
        role.as_str().as_bytes(),
        b"--name",
        name.as_str().as_bytes(),
    ];
    args.windows(4).any(|w| w == want)
}

fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A zombie answers kill(0) but is gone for our purposes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stop the role's process (SIGTERM, then SIGKILL after `grace`) and remove its files.
/// Idempotent; also fine when the pidfile points at nothing.
pub fn stop(role: Role, name: &LabName, grace: Duration) -> Result<()> {
    if let Some(pid) = running(role, name) {
        let pid = pid as i32;
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            while alive(pid) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = fs::remove_file(role.pidfile(name));
    let _ = fs::remove_file(role.ready_file(name));
    Ok(())
}

/// Kill the role's process without any grace (tests of crash recovery and restarts).
pub fn kill_hard(role: Role, name: &LabName) -> Result<()> {
    if let Some(pid) = running(role, name) {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
        while alive(pid as i32) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
