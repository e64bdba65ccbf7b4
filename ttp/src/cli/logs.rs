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
