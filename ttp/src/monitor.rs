//! The privileged monitor: the small root process that finishes a clean stop.
//!
//! The daemon gives up root once set up (see [`crate::privs`]), but a clean stop needs
//! root at the very end: destroying the sockets applications still hold to our ports
//! (`SOCK_DESTROY`), detaching and unpinning the datapath, removing the `ttp exec`
//! cgroups and the runtime files. So, before it starts a single thread, the daemon forks
//! this monitor, which keeps root, does nothing but wait, and is told three things over a
//! pipe (OpenSSH's privilege separation, reduced to one job):
//!
//! - `ARMED`: the datapath is attached and its pins are this daemon's;
//! - `CLEAN`: the daemon stopped on purpose; the monitor tears down, then answers `DONE`;
//! - end of file without `CLEAN`: the daemon crashed. The monitor touches nothing: the
//!   kill-switch holds the host closed until `ttp stop` or the next start.
//!
//! The daemon keeps its pid (the one `ttp start`, systemd and `ttp status` know), and
//! waits for `DONE` before it exits, so a stop is complete when the daemon is gone.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

use crate::datapath::{teardown, PinLayout};

/// What the monitor removes at a clean stop.
#[derive(Debug, Clone)]
pub struct Cleanup {
    pub pin_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// Removed if empty (a command still running in one keeps it, harmlessly).
    pub cgroups: Vec<PathBuf>,
    /// Connections to these loopback ports are destroyed.
    pub ports: Vec<u16>,
    /// Gateway mode ran: its routing rules go (see [`crate::gateway`]).
    pub gateway: bool,
}

/// The daemon's end of the pipes to its monitor.
pub struct Monitor {
    to: Option<File>,
    from: BufReader<File>,
    pid: i32,
}

impl Monitor {
    /// Forks the monitor. The calling process must still have a single thread (a fork
    /// copies only the calling thread; locks other threads hold would stay held).
    pub fn spawn(cleanup: Cleanup) -> Result<Monitor> {
        let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        if status.lines().find_map(|l| l.strip_prefix("Threads:")).map(str::trim) != Some("1") {
            bail!("the monitor must be forked before any thread starts");
        }
        let (to_r, to_w) = pipe()?;
        let (from_r, from_w) = pipe()?;
        // SAFETY: single-threaded (checked above), so the child may run ordinary code.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()).context("forking the monitor"),
            0 => {
                drop((to_w, from_r));
                let code = match run(BufReader::new(File::from(to_r)), File::from(from_w), &cleanup) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("monitor: {e:#}; run `ttp stop` to finish the teardown");
                        1
                    }
                };
                // SAFETY: ends the monitor without running the daemon's exit handlers.
                unsafe { libc::_exit(code) }
            }
            pid => Ok(Monitor { to: Some(File::from(to_w)), from: BufReader::new(File::from(from_r)), pid }),
        }
    }

    /// The datapath is attached: from now on a clean stop tears it down.
    pub fn armed(&mut self) -> Result<()> {
        self.send("ARMED")
    }

    /// The daemon stops on purpose: the monitor tears down. Returns once it is done.
    pub fn finish(mut self) -> Result<()> {
        self.send("CLEAN")?;
        let mut line = String::new();
        self.from.read_line(&mut line).context("waiting for the monitor")?;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        if line.trim() != "DONE" {
            bail!("the monitor ended before the teardown was done: run `ttp stop` to finish it");
        }
        Ok(())
    }

    fn send(&mut self, word: &str) -> Result<()> {
        let to = self.to.as_mut().context("the monitor is gone")?;
        writeln!(to, "{word}")
            .and_then(|_| to.flush())
            .context("the monitor is gone (was it killed?): the kill-switch stays closed; `ttp stop` opens it")
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the monitor's pipe");
    }
    // SAFETY: fresh descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The monitor's whole life.
fn run(from_daemon: BufReader<File>, mut to_daemon: File, cleanup: &Cleanup) -> Result<()> {
    // SAFETY: PR_SET_NAME with a NUL-terminated name; signal dispositions in our own
    // process. A Ctrl-C or SIGTERM meant for the daemon (its process group) must not end
    // the monitor before the teardown it is about to be asked for.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"ttp-monitor".as_ptr() as libc::c_ulong, 0, 0, 0);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut armed = false;
    for line in from_daemon.lines() {
        match line.as_deref().map(str::trim) {
            Ok("ARMED") => armed = true,
            Ok("CLEAN") => {
                if armed {
                    tear_down(cleanup);
                }
                let _ = writeln!(to_daemon, "DONE");
                return Ok(());
            }
            _ => break,
        }
    }
    if armed {
        tracing::error!("the daemon died: the kill-switch holds the host closed; `ttp start` or `ttp stop` recovers");
    }
    Ok(())
}

/// Each step on its own: one failing must not leave the others undone.
fn tear_down(c: &Cleanup) {
    match crate::sockdestroy::destroy_connected_to(&c.ports) {
        Ok(n) => tracing::info!("{n} application sockets through ttp destroyed"),
        Err(e) => tracing::warn!("destroying application sockets failed: {e} (they fail on next use)"),
    }
    match teardown(&PinLayout::new(&c.pin_dir)) {
        Ok(r) => tracing::info!("stopped: {} links detached, {} maps unpinned", r.links_detached, r.maps_unpinned),
        Err(e) => tracing::error!("teardown failed: {e:#}; run `ttp stop` to finish it"),
    }
    if c.gateway {
        match crate::gateway::remove_blocking() {
            Ok(n) => tracing::info!("gateway routing removed ({n} rules)"),
            Err(e) => tracing::error!("removing the gateway routing failed: {e:#}; `ttp stop` retries"),
        }
    }
    for cg in &c.cgroups {
        let _ = std::fs::remove_dir(cg);
    }
    crate::lock::SessionLock::remove(&c.runtime_dir);
    let _ = std::fs::remove_file(c.runtime_dir.join(crate::control::SOCKET));
}
