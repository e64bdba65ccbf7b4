//! `ttp stop`: zero-leak teardown: lockdown, then detach and unpin. Works after a crash
//! too; the only way the kill-switch is released.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ttp::{
    control::{self, client::Client, proto::Request},
    lock::SessionLock,
};

use super::{
    start::{is_ttp, pid_alive},
    Paths,
};

/// Zero-leak teardown: lockdown, then detach and unpin. Works after a crash too.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: Paths,
    /// As a systemd unit's ExecStop: tear down only for a stop; through a restart, or
    /// once the daemon is already gone (killed, crashed), the host stays closed.
    #[arg(long)]
    pub systemd: bool,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        let Paths { runtime_dir, pin_dir } = self.paths;
        if self.systemd && !super::unit_stop::is_a_stop(&runtime_dir, &pin_dir)? {
            return Ok(());
        }
        // A stopped ttp is not to be revived: the watchdog goes first.
        super::watchdog::stop(&runtime_dir);
        stop(&runtime_dir, &pin_dir)
    }
}

/// `ttp stop`: a live daemon stops itself (services down, then the same teardown); whatever
/// is left (a crashed daemon's pins) is torn down here. Idempotent.
pub fn stop(runtime_dir: &Path, pin_dir: &Path) -> Result<()> {
    let t0 = Instant::now();
    let lock = SessionLock::read(runtime_dir).ok().flatten();
    let gone = || match &lock {
        Some(l) => !pid_alive(l.pid),
        None => !runtime_dir.join(control::SOCKET).exists(),
    };
    // The monitor tears down only for a stop root asked for: this file, in root's runtime
    // directory, is how it knows (the daemon's own word is not enough).
    if let Some(l) = lock.as_ref().filter(|l| pid_alive(l.pid)) {
        if let Err(e) = ttp::monitor::request_stop(runtime_dir, l.pid) {
            eprintln!("warning: recording the stop request for the monitor: {e:#} (the teardown is done here instead)");
        }
    }
    if Client::new(runtime_dir).call(&Request::Stop).is_ok() {
        while !gone() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A daemon that is alive but does not stop (hung) is stopped the hard way: the
    // kill-switch holds the host closed meanwhile, and the teardown below opens it.
    if let Some(l) = lock.as_ref().filter(|l| pid_alive(l.pid) && is_ttp(l.pid)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(l.pid as i32), nix::sys::signal::SIGKILL);
        while pid_alive(l.pid) && t0.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The same teardown as the monitor's, from what the session recorded.
    let cleanup = ttp::monitor::Cleanup::recorded(runtime_dir, pin_dir, lock.as_ref());
    let r = ttp::monitor::tear_down(&cleanup)
        .with_context(|| format!("the datapath under {} could not be torn down (see above)", pin_dir.display()))?;
    if r.links_detached == 0 && r.maps_unpinned == 0 && lock.is_none() {
        println!("ttp was not running (nothing pinned under {})", pin_dir.display());
    } else if r.links_detached == 0 && r.maps_unpinned == 0 {
        println!("stopped after {:.1?}", t0.elapsed());
    } else {
        println!(
            "stopped after {:.1?}: {} links detached, {} maps unpinned",
            t0.elapsed(),
            r.links_detached,
            r.maps_unpinned
        );
    }
    Ok(())
}
