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
//! - `LOCKDOWN ON` / `LOCKDOWN OFF`: the daemon's services are ready (or ending); the
//!   monitor sets the flag in CONFIG and answers `OK` (or `ERROR <why>`). The daemon holds
//!   no writable descriptor of a map any verdict reads ([`crate::datapath::ServiceMaps`]):
//!   root's process writes them. Lifting lockdown on the daemon's word gives it nothing it
//!   lacks: the connections it lets through are redirected to it;
//! - `CLEAN`: the daemon has stopped its services and asks for the teardown. The monitor
//!   tears down (then answers `DONE`) only if root asked for the stop in a way the
//!   daemon cannot forge (see below); otherwise it is a fault;
//! - `FAULT <why>`, or end of file without `CLEAN`: the daemon failed or crashed. The
//!   monitor puts the datapath in lockdown (so that no connection is redirected to ports
//!   nobody serves, which any local user could bind), writes why to
//!   `<runtime-dir>/fault` for `ttp status`, and touches nothing else: the kill-switch
//!   holds the host closed until `ttp stop` or the next start.
//!
//! The rule this carries (ARCHITECTURE.md): only an explicit stop by root releases the
//! kill-switch. In the daemon, [`Monitor::finish`], the only way to ask for a teardown,
//! takes a [`StopRequested`], which only the places that receive a stop request make. But
//! the daemon runs as the service user, and code running there (a compromised daemon)
//! could say `CLEAN` at any time: so the monitor believes only its own evidence that root
//! asked ([`RootAsked`]): the stop file `ttp stop` writes into root's runtime directory
//! before it asks the daemon ([`request_stop`]), or a SIGTERM/SIGINT to the monitor
//! itself (a Ctrl-C on `ttp run`'s terminal, a signal to its process group), which only
//! root can send a root process. A SIGTERM to the daemon's pid alone could be the daemon's
//! own: it ends in lockdown, and `ttp stop` then opens the host.
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

use crate::{
    datapath::{teardown, PinLayout, Teardown},
    lock::SessionLock,
};

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
    /// The uplinks the monitor keeps the kill-switch on as interfaces come and go
    /// ([`crate::uplinks`]); none after a crash (`ttp stop` only tears down).
    pub uplinks: Option<crate::uplinks::Follow>,
    /// Gateway interfaces named by the user: the monitor gives them their programs when
    /// they appear or are made again ([`crate::gateway::follow_interfaces`]).
    pub gateways: Vec<String>,
}

/// The daemon's reason to ask for a teardown: SIGTERM or SIGINT, or `stop` on the control
/// socket from root. Made only where such a request is received ([`crate::daemon`]'s stop
/// signals); a fault never has one, so a failing daemon never asks for a teardown. The
/// monitor checks root's request on its own ([`RootAsked`]) all the same.
#[derive(Debug)]
pub struct StopRequested {
    /// How it was asked for, for the log.
    pub by: &'static str,
}

/// Where the monitor records why a daemon failed (in the root-owned runtime directory).
pub const FAULT_FILE: &str = "fault";

/// Root's stop request, written by `ttp stop` into the root-owned runtime directory: the
/// pid of the daemon root wants stopped. The service user cannot create it.
pub const STOP_FILE: &str = "stop";

/// Records that root asks the daemon `pid` to stop (`ttp stop`, before it tells the
/// daemon): the monitor's evidence that a teardown is wanted.
pub fn request_stop(runtime_dir: &std::path::Path, pid: u32) -> Result<()> {
    crate::rootfs::write_file(runtime_dir, STOP_FILE, format!("{pid}\n").as_bytes())
}

/// Whether root's stop file names the daemon `pid` (read, not used up: the daemon asks
/// before it accepts a stop on its control socket, the monitor decides).
pub fn stop_requested(runtime_dir: &std::path::Path, pid: u32) -> bool {
    crate::rootfs::read_small(&runtime_dir.join(STOP_FILE)).ok().and_then(|t| t.trim().parse::<u32>().ok()) == Some(pid)
}

/// Whether root asked for the stop of the daemon `daemon`, by the monitor's own evidence.
/// The stop file is used up when read.
struct RootAsked;

/// Set by the monitor's SIGTERM/SIGINT handler.
static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The daemon's pid, for the handler to pass the signal on.
static DAEMON: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_stop_signal(_: libc::c_int) {
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    let pid = DAEMON.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe. Root's stop reaches the daemon too, also
        // when only the monitor was signalled.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

impl RootAsked {
    fn check(runtime_dir: &std::path::Path, daemon: u32) -> Option<RootAsked> {
        let asked = stop_requested(runtime_dir, daemon);
        let _ = std::fs::remove_file(runtime_dir.join(STOP_FILE));
        (SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) || asked).then_some(RootAsked)
    }
}

/// Why the last daemon of this runtime directory failed, if one did.
pub fn last_fault(runtime_dir: &std::path::Path) -> Option<String> {
    crate::rootfs::read_small(&runtime_dir.join(FAULT_FILE)).ok().map(|s| s.trim().to_string())
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

    /// Has the monitor turn lockdown on or off. Returns once it is done.
    pub fn set_lockdown(&mut self, on: bool) -> Result<()> {
        self.send(if on { "LOCKDOWN ON" } else { "LOCKDOWN OFF" })?;
        let mut line = String::new();
        self.from.read_line(&mut line).context("waiting for the monitor")?;
        match line.trim() {
            "OK" => Ok(()),
            l => match l.strip_prefix("ERROR ") {
                Some(why) => bail!("the monitor could not set lockdown: {why}"),
                None => {
                    bail!("the monitor is gone (was it killed?): the kill-switch stays closed; `ttp stop` opens it")
                }
            },
        }
    }

    /// Root asked the daemon to stop: the monitor tears down. Returns once it is done.
    pub fn finish(mut self, stop: StopRequested) -> Result<()> {
        tracing::info!("stopping ({}): the monitor tears the datapath down", stop.by);
        self.send("CLEAN")?;
        let mut line = String::new();
        self.from.read_line(&mut line).context("waiting for the monitor")?;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        match line.trim() {
            "DONE" => Ok(()),
            "REFUSED" => bail!(
                "the monitor refused the teardown: root's stop did not reach it (stop with `ttp stop`, \
                 or signal ttp's process group); the host stays closed until `ttp stop`"
            ),
            _ => bail!("the monitor ended before the teardown was done: run `ttp stop` to finish it"),
        }
    }

    /// The daemon failed: the monitor puts the datapath in lockdown, records why, and
    /// leaves everything else as it is. Returns once the monitor is gone.
    pub fn fault(mut self, why: &str) {
        let line = format!("FAULT {}", why.replace(['\n', '\r'], " "));
        if self.send(&line).is_ok() {
            self.to = None; // end of file: the monitor's last word
            let mut rest = String::new();
            let _ = self.from.read_line(&mut rest);
        }
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
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
    let daemon = std::os::unix::process::parent_id();
    DAEMON.store(daemon as i32, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: PR_SET_NAME with a NUL-terminated name; signal dispositions in our own
    // process, the handler only stores and kills (async-signal-safe).
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"ttp-monitor".as_ptr() as libc::c_ulong, 0, 0, 0);
        for sig in [libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // A stop signal is root's request (the service user cannot signal a root process):
        // noted, passed on to the daemon, and the monitor lives on to do the teardown.
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
    // This instance's maps, opened when armed: a late lockdown must reach this instance's
    // maps, never those of a newer one that took the pins over since.
    let mut armed: Option<crate::datapath::Maps> = None;
    let mut why = String::from("the daemon died without a word (killed, or it crashed)");
    for line in from_daemon.lines() {
        match line.as_deref().map(str::trim) {
            Ok("ARMED") => {
                match crate::datapath::Maps::open_pinned(&PinLayout::new(&cleanup.pin_dir).maps()) {
                    Ok(m) => armed = Some(m),
                    Err(e) => bail!("opening the pinned maps: {e:#}"),
                }
                if let Some(uplinks) = cleanup.uplinks.clone() {
                    let pin_dir = cleanup.pin_dir.clone();
                    std::thread::spawn(move || crate::uplinks::follow(pin_dir, uplinks));
                }
                // The daemon is this process's parent (it forked the monitor).
                let daemon = std::os::unix::process::parent_id();
                std::thread::spawn(move || crate::reaper::follow(daemon));
                if cleanup.gateway {
                    // This instance's maps, held by the thread (see `armed`). Without them
                    // the monitor lives on (it must, to hold the host closed): a gateway
                    // client's connection to the host then goes to the TransPort.
                    match crate::datapath::Maps::open_pinned(&PinLayout::new(&cleanup.pin_dir).maps()) {
                        Ok(m) => drop(std::thread::spawn(move || crate::gateway::follow_local_addresses(m))),
                        Err(e) => tracing::error!("not following this host's addresses for the gateway: {e:#}"),
                    }
                    if !cleanup.gateways.is_empty() {
                        let (pin_dir, names) = (cleanup.pin_dir.clone(), cleanup.gateways.clone());
                        match crate::datapath::Maps::open_pinned(&PinLayout::new(&pin_dir).maps()) {
                            Ok(m) => {
                                drop(std::thread::spawn(move || crate::gateway::follow_interfaces(pin_dir, names, m)))
                            }
                            Err(e) => tracing::error!(
                                "not following the gateway interfaces (one made from now on gets no gateway \
                                 program): {e:#}"
                            ),
                        }
                    }
                }
                let _ = std::fs::remove_file(cleanup.runtime_dir.join(FAULT_FILE));
            }
            Ok(l) if l.starts_with("LOCKDOWN ") => {
                let on = l == "LOCKDOWN ON";
                let done = match armed.as_mut() {
                    Some(m) => m.set_lockdown(on),
                    None => Err(anyhow::anyhow!("the datapath is not armed")),
                };
                let answer = match done {
                    Ok(()) => "OK".to_string(),
                    Err(e) => format!("ERROR {}", format!("{e:#}").replace(['\n', '\r'], " ")),
                };
                let _ = writeln!(to_daemon, "{answer}");
            }
            Ok("CLEAN") => {
                if RootAsked::check(&cleanup.runtime_dir, daemon).is_none() {
                    why = "the daemon stopped, but root did not ask for it (a stop is `ttp stop`, \
                           or a signal to the service or to ttp's process group; a SIGTERM to the \
                           daemon alone could be its own)"
                        .into();
                    let _ = writeln!(to_daemon, "REFUSED");
                    break;
                }
                if armed.is_some() {
                    tear_down(cleanup);
                }
                let _ = writeln!(to_daemon, "DONE");
                return Ok(());
            }
            Ok(l) if l.starts_with("FAULT ") => {
                // The daemon's words, kept as text for `ttp status`; nothing acts on them.
                why = l["FAULT ".len()..].chars().take(4096).collect();
                break;
            }
            _ => break,
        }
    }
    if let Some(maps) = armed {
        hold_closed(cleanup, maps, &why);
    }
    Ok(())
}

/// A failed or dead daemon: lockdown, and why, for `ttp status`; nothing is detached.
fn hold_closed(c: &Cleanup, mut maps: crate::datapath::Maps, why: &str) {
    match maps.set_lockdown(true) {
        Ok(()) => tracing::error!(
            "the daemon failed ({why}): lockdown on; the host stays closed until `ttp stop` or the next `ttp start`"
        ),
        Err(e) => tracing::error!(
            "the daemon failed ({why}); lockdown could not be set ({e:#}), but the kill-switch holds: \
             redirected connections find no listener; `ttp stop` or `ttp start` recovers"
        ),
    }
    let when = crate::control::unix_now();
    if let Err(e) = crate::rootfs::write_file(&c.runtime_dir, FAULT_FILE, format!("{when} {why}\n").as_bytes()) {
        tracing::warn!("recording the fault: {e:#}");
    }
}

impl Cleanup {
    /// What a session recorded, for `ttp stop` after its daemon is gone: its lock (root's
    /// file: the governed cgroup and ports) and its pins (whether it ran a gateway).
    pub fn recorded(runtime_dir: &std::path::Path, pin_dir: &std::path::Path, lock: Option<&SessionLock>) -> Cleanup {
        let layout = PinLayout::new(pin_dir);
        // Its gateway program is pinned whether or not an interface for it ever appeared.
        let gateway = layout.progs().join(ttp_common::programs::TC_GATEWAY).exists()
            || layout.link_pins().unwrap_or_default().iter().any(|p| {
                p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(ttp_common::programs::TC_GATEWAY))
            });
        Cleanup {
            pin_dir: pin_dir.to_path_buf(),
            runtime_dir: runtime_dir.to_path_buf(),
            cgroups: lock.map(|l| vec![l.cgroup.join("ttp.tor"), l.cgroup.join("ttp.direct")]).unwrap_or_default(),
            ports: lock.map(|l| vec![l.ports.trans, l.ports.dns, l.ports.socks]).unwrap_or_default(),
            gateway,
            uplinks: None,
            gateways: Vec::new(),
        }
    }
}

/// The one teardown: what a clean stop removes, whether the monitor does it or `ttp stop`
/// after a crash. Each step on its own: one failing must not leave the others undone.
/// Returns what the datapath's part did, if it could be done.
pub fn tear_down(c: &Cleanup) -> Option<Teardown> {
    if !c.ports.is_empty() {
        match crate::sockdestroy::destroy_connected_to(&c.ports) {
            Ok(n) => tracing::info!("{n} application sockets through ttp destroyed"),
            Err(e) => tracing::warn!("destroying application sockets failed: {e} (they fail on next use)"),
        }
    }
    let report = match teardown(&PinLayout::new(&c.pin_dir)) {
        Ok(r) => {
            tracing::info!("stopped: {} links detached, {} maps unpinned", r.links_detached, r.maps_unpinned);
            Some(r)
        }
        Err(e) => {
            tracing::error!("teardown failed: {e:#}; run `ttp stop` to finish it");
            None
        }
    };
    if c.gateway {
        match crate::gateway::remove_blocking() {
            Ok(n) => tracing::info!("gateway routing removed ({n} rules)"),
            Err(e) => tracing::error!(
                "removing the gateway routing failed: {e:#}; `ttp stop` retries (`ip rule` shows them: table {})",
                crate::gateway::TABLE
            ),
        }
    }
    for cg in &c.cgroups {
        // Removed if empty: a command still running in one keeps it, harmlessly.
        let _ = std::fs::remove_dir(cg);
    }
    SessionLock::remove(&c.runtime_dir);
    let _ = std::fs::remove_file(c.runtime_dir.join(crate::control::SOCKET));
    let _ = std::fs::remove_file(c.runtime_dir.join(FAULT_FILE));
    let _ = std::fs::remove_file(c.runtime_dir.join(STOP_FILE));
    report
}
