//! `ttp stop --systemd`: the unit's ExecStop, which systemd runs for more than a stop.
//!
//! systemd runs a unit's ExecStop for `systemctl stop`, but also for `systemctl restart`
//! (and a package upgrade's try-restart), and after the main process died on its own: a
//! SIGKILL, a crash, the OOM killer ("the stop operation is always performed if the service
//! started successfully", systemd.service(5)). Only the first is root asking for the host
//! to be opened. A plain `ttp stop` in every case would open the host for the length of a
//! restart, and after every crash until systemd restarts the daemon.
//!
//! So the unit asks systemd what it is doing: a running `restart` job for the unit keeps
//! the kill-switch (the old daemon ends as in a crash; the new one takes the pins over, as
//! `ttp restart` does), and an unset `$MAINPID` (systemd already saw the daemon exit) is
//! not a stop either. Only a stop of a running daemon tears down.

use std::{path::Path, process::Command};

use anyhow::Result;
use ttp::lock::SessionLock;

/// Whether this ExecStop is a stop root asked for; if not, does what the case needs
/// (keep the host closed) and says so.
pub fn is_a_stop(runtime_dir: &Path, pin_dir: &Path) -> Result<bool> {
    let Some(unit) = ttp::cgroup::systemd_service().and_then(|c| c.file_name()?.to_str().map(str::to_owned)) else {
        // Not run by systemd after all (by hand, say): a plain stop.
        return Ok(true);
    };
    if std::env::var_os("MAINPID").is_none() {
        let why = std::env::var("SERVICE_RESULT").unwrap_or_else(|_| "unknown".into());
        println!(
            "the daemon had already ended ({why}): not a stop, the host stays closed; \
             systemd restarts ttp (Restart=), or `ttp stop` opens the host"
        );
        return Ok(false);
    }
    if !restarting(&unit) {
        return Ok(true);
    }
    if let Some(lock) = SessionLock::read(runtime_dir)? {
        crate::cli::start::end_without_teardown(&lock, pin_dir);
    }
    println!("systemd restarts {unit}: the kill-switch stays until the new daemon takes it over");
    Ok(false)
}

/// Whether systemd has a restart job running for `unit` (`systemctl list-jobs`: id, unit,
/// type, state). If systemd cannot say, this is taken as a stop: the stop root may have
/// asked for must not fail.
fn restarting(unit: &str) -> bool {
    let Ok(out) = Command::new("systemctl").args(["list-jobs", "--no-legend", "--no-pager", unit]).output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&unit) && f.get(2) == Some(&"restart")
    })
}
