//! `ttp run`: the daemon in the foreground (what `ttp start` and the systemd unit run).

use anyhow::{Context, Result};
use ttp::options::StartOptions;

/// Run the daemon in the foreground (what `ttp start` and the systemd unit run).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub opts: Box<StartOptions>,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        let opts = self.opts;
        // Before the first thread: the monitor is forked from a single-threaded process.
        let monitor = ttp::monitor::Monitor::spawn(ttp::daemon::cleanup_for(&opts)?)?;
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        // The start protocol on stdout (for `ttp start`), systemd's on its socket.
        // Write errors are ignored: `ttp start` stops listening once the daemon is ready.
        rt.block_on(ttp::daemon::run(&opts, monitor, |e| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", e.line()).and_then(|_| out.flush());
            if matches!(e, ttp::daemon::Event::Ready(_)) {
                ttp::daemon::notify_systemd_ready();
            }
        }))
    }
}
