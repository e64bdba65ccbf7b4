//! The session lock: `<runtime-dir>/ttp.lock`, one JSON object describing the running
//! session (pid, start time, options, exit address). The daemon writes it when it is
//! ready, rewrites it when the exit is verified, and removes it on stop. `ttp restart`
//! and the watchdog read the options back from it; scripts may read it too.

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
    /// The exit's address, once a check endpoint has confirmed it.
    pub exit_address: Option<String>,
    pub ports: crate::control::Ports,
    /// The cgroup2 directory governed.
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
}

impl SessionLock {
    pub fn path(runtime_dir: &Path) -> PathBuf {
        runtime_dir.join(FILE)
    }

    /// The lock, if there is one.
    pub fn read(runtime_dir: &Path) -> Result<Option<SessionLock>> {
        let p = Self::path(runtime_dir);
        match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .with_context(|| format!("{} is not a ttp session lock (remove it if no ttp runs)", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Written whole or not at all (a temporary file renamed over the lock).
    pub fn write(&self, runtime_dir: &Path) -> Result<()> {
        let p = Self::path(runtime_dir);
        let tmp = runtime_dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
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
        let dir = std::env::temp_dir().join(format!("ttp-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(SessionLock::read(&dir).unwrap(), None);
        let l = SessionLock {
            pid: 42,
            started_unix: 1,
            args: vec!["--uplink".into(), "eth0".into()],
            exit_address: Some("192.0.2.5".into()),
            ports: crate::control::Ports { trans: 9040, dns: 9053, socks: 9055 },
            cgroup: "/sys/fs/cgroup".into(),
            pin_dir: "/sys/fs/bpf/ttp".into(),
        };
        l.write(&dir).unwrap();
        assert_eq!(SessionLock::read(&dir).unwrap(), Some(l));
        std::fs::write(SessionLock::path(&dir), "garbage").unwrap();
        let e = SessionLock::read(&dir).unwrap_err().to_string();
        assert!(e.contains("not a ttp session lock"), "{e}");
        SessionLock::remove(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
