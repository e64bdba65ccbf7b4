//! The session lock: `<runtime-dir>/ttp.lock`, one JSON object describing the running
//! session (pid, start time, options). The daemon writes it while it is still root, once
//! the kill-switch is attached, and the monitor removes it at a clean stop. `ttp restart`
//! and the watchdog replay its options as root, so it lives in root's runtime directory
//! and is read back only if root alone could have written it (see [`crate::rootfs`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "ttp.lock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionLock {
    /// The daemon's pid.
    pub pid: u32,
    pub started_unix: u64,
    /// The options the daemon was started with, as command-line arguments after the
    /// subcommand (what `ttp restart` passes to `ttp start` again).
    pub args: Vec<String>,
    pub ports: crate::control::proto::Ports,
    /// The cgroup2 directory governed.
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// The config file the session's options came from, if any, and its text as applied
    /// (what `ttp reload` compares a changed file with). Absent in older locks.
    #[serde(default)]
    pub config_path: Option<PathBuf>,
    #[serde(default)]
    pub config_text: Option<String>,
}

impl SessionLock {
    pub fn path(runtime_dir: &Path) -> PathBuf {
        runtime_dir.join(FILE)
    }

    /// The lock, if there is one; one that root did not write is an error.
    pub fn read(runtime_dir: &Path) -> Result<Option<SessionLock>> {
        let p = Self::path(runtime_dir);
        match crate::rootfs::read_small(&p) {
            Ok(t) => Self::parse(&t)
                .map(Some)
                .with_context(|| format!("{} is not a ttp session lock (remove it if no ttp runs)", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Reads a lock's text. Root wrote it, but root acts on it (replays `args`, writes into
    /// `cgroup`): parsed like any input, and checked again where it is used.
    pub fn parse(text: &str) -> Result<SessionLock> {
        Ok(serde_json::from_str(text)?)
    }

    /// Written whole or not at all, by root (see [`crate::rootfs::write_file`]).
    pub fn write(&self, runtime_dir: &Path) -> Result<()> {
        crate::rootfs::write_file(runtime_dir, FILE, serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn remove(runtime_dir: &Path) {
        let _ = std::fs::remove_file(Self::path(runtime_dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_foreign_file_is_a_clear_error() {
        if !nix::unistd::geteuid().is_root() {
            return; // the lock is root's file
        }
        let dir = std::env::temp_dir().join(format!("ttp-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(SessionLock::read(&dir).unwrap(), None);
        let l = SessionLock {
            pid: 42,
            started_unix: 1,
            args: vec!["--uplink".into(), "eth0".into()],
            ports: crate::control::proto::Ports { trans: 9040, dns: 9053, socks: 9055 },
            cgroup: "/sys/fs/cgroup".into(),
            pin_dir: "/sys/fs/bpf/ttp".into(),
            config_path: Some("/etc/ttp/ttp.toml".into()),
            config_text: Some("bypass-uid = [1000]\n".into()),
        };
        l.write(&dir).unwrap();
        assert_eq!(SessionLock::read(&dir).unwrap(), Some(l.clone()));
        std::fs::write(SessionLock::path(&dir), "garbage").unwrap();
        let e = SessionLock::read(&dir).unwrap_err().to_string();
        assert!(e.contains("not a ttp session lock"), "{e}");
        // A lock another user could have written (the service user's, from an older ttp, or
        // a forged one) is never replayed as root's command line.
        std::fs::write(SessionLock::path(&dir), serde_json::to_string(&l).unwrap()).unwrap();
        std::os::unix::fs::chown(SessionLock::path(&dir), Some(65534), None).unwrap();
        let e = format!("{:#}", SessionLock::read(&dir).unwrap_err());
        assert!(e.contains("not root's alone"), "{e}");
        SessionLock::remove(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
