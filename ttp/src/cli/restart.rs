//! `ttp restart`: a new daemon with the running session's options, without a gap.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use ttp::lock::SessionLock;

use super::{start::end_without_teardown, Paths};

/// Stop, then start again with the options of the running session.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: Paths,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        restart(&self.paths.runtime_dir, &self.paths.pin_dir)
    }
}

/// `ttp restart`: a new daemon with the options of the running session, without a gap:
/// the old one is ended without a teardown (as if it had crashed: its kill-switch stays),
/// and the new one takes its pins over, as after a crash. If the new one fails, the old
/// kill-switch is still there: the host stays closed, never open.
pub fn restart(runtime_dir: &Path, pin_dir: &Path) -> Result<()> {
    let Some(lock) = SessionLock::read(runtime_dir)? else {
        bail!("nothing to restart: no session lock in {} (start ttp with `ttp start`)", runtime_dir.display());
    };
    end_without_teardown(&lock, pin_dir);
    // The exact same command line as the first start (its --config is read again).
    let status =
        Command::new(std::env::current_exe()?).arg("start").args(&lock.args).status().context("running ttp start")?;
    if !status.success() {
        bail!(
            "ttp start failed (see above); the host stays closed (the previous kill-switch holds): \
             fix the cause and `ttp start` again, or `ttp stop` to open the host"
        );
    }
    Ok(())
}
