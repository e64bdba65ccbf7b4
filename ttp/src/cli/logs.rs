//! `ttp logs`: the last lines of the volatile log, then follows it (across rotations).

use std::path::Path;

use anyhow::{Context, Result};
use ttp::logfile;

pub fn logs(path: &Path, lines: usize, follow: bool) -> Result<()> {
    use std::io::Write;
    let tail = logfile::tail(path, lines).with_context(|| format!("reading {}", path.display()))?;
    if tail.is_empty() && !path.exists() {
        anyhow::bail!("no log at {} (ttp has not run since boot, or uses another --runtime-dir)", path.display());
    }
    let mut out = std::io::stdout().lock();
    // What the daemon wrote, never raw to root's terminal (see `logfile::printable`).
    for l in &tail {
        writeln!(out, "{}", logfile::printable(l))?;
    }
    out.flush()?;
    if follow {
        // Ends when stdout goes away (a closed pager) or on Ctrl-C.
        logfile::follow(path, |l| writeln!(out, "{}", logfile::printable(l)).and_then(|_| out.flush()).is_ok())
            .with_context(|| format!("following {}", path.display()))?;
    }
    Ok(())
}

/// Show the daemon's log (volatile, rotated at 1 MB) and follow it.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
    /// How many of the last lines to show first.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Print and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// The watchdog's log instead of the daemon's.
    #[arg(long)]
    pub watchdog: bool,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        let dir = &self.paths.runtime_dir;
        let path = if self.watchdog { super::watchdog::log_path(dir) } else { super::log_path(dir) };
        logs(&path, self.lines, !self.no_follow)
    }
}
