//! `ttp watchdog`: an integrity loop beside the daemon.
//!
//! Every few seconds it checks that the programs are attached (pins present), the daemon is
//! alive and answers, Tor is bootstrapped, and the DNSPort answers. On a fault it locks the
//! host down first (the pinned lockdown flag), then repairs what it can: a dead or hung
//! daemon is replaced by a new `ttp start` with the session's own options (which takes the
//! stale pins over without a gap). Every fault and repair is logged with its reason in
//! `<runtime-dir>/watchdog.log`, and the last round is in `watchdog.json` for `status`.
//!
//! The watchdog ends by itself when the session ends normally (`ttp stop` removes the lock
//! and the pins, and stops the watchdog first).

use std::{
    net::UdpSocket,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use ttp::{
    control::{self, client::Client},
    datapath::{Maps, PinLayout},
    lock::SessionLock,
};

const PID_FILE: &str = "watchdog.pid";
const STATE_FILE: &str = "watchdog.json";
/// The watchdog's own log, beside the daemon's.
pub fn log_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("watchdog.log")
}

/// The outcome of the last round, for `ttp watchdog status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub at_unix: u64,
    pub faults: Vec<String>,
    pub repairs: u64,
}

/// Starts `ttp watchdog run` detached, unless one runs already.
pub fn spawn(runtime_dir: &Path, pin_dir: &Path) -> Result<u32> {
    if let Some(pid) = running(runtime_dir) {
        bail!("a watchdog already runs (pid {pid})");
    }
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["watchdog", "run", "--runtime-dir"])
        .arg(runtime_dir)
        .arg("--pin-dir")
        .arg(pin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the watchdog")?;
    Ok(child.id())
}

/// The running watchdog's pid, if any.
pub fn running(runtime_dir: &Path) -> Option<u32> {
    // Root signals this pid: only a file root wrote is believed.
    let pid: u32 = ttp::rootfs::read_small(&runtime_dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    // (A zombie's command line is empty: a dead watchdog is not taken for a running one.)
    let cmdline = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?.cmdline().ok()?;
    cmdline.iter().any(|a| a == "watchdog").then_some(pid)
}

/// Stops the watchdog, if one runs; returns its pid.
pub fn stop(runtime_dir: &Path) -> Option<u32> {
    let pid = running(runtime_dir)?;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
    for _ in 0..100 {
        if !super::start::pid_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(runtime_dir.join(PID_FILE));
    Some(pid)
}

pub fn status(runtime_dir: &Path, json: bool) -> Result<()> {
    let pid = running(runtime_dir);
    let round: Option<Round> =
        ttp::rootfs::read_small(&runtime_dir.join(STATE_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "running": pid.is_some(), "pid": pid, "last": round }))?
        );
        return Ok(());
    }
    match pid {
        Some(pid) => println!("watchdog: running (pid {pid})"),
        None => println!("watchdog: not running (`sudo ttp watchdog start`)"),
    }
    if let Some(r) = round {
        let age = control::unix_now().saturating_sub(r.at_unix);
        if r.faults.is_empty() {
            println!("last check {age}s ago: all good; {} repairs so far", r.repairs);
        } else {
            println!("last check {age}s ago: {}; {} repairs so far", r.faults.join("; "), r.repairs);
        }
    }
    Ok(())
}

/// The loop itself (`ttp watchdog run`).
pub fn run(runtime_dir: &Path, pin_dir: &Path, interval: Duration) -> Result<()> {
    ttp::rootfs::ensure_dir(runtime_dir)?;
    if let Some(pid) = running(runtime_dir).filter(|p| *p != std::process::id()) {
        bail!("a watchdog already runs (pid {pid})");
    }
    ttp::rootfs::write_file(runtime_dir, PID_FILE, std::process::id().to_string().as_bytes())?;
    tracing::info!("watchdog started (pid {}), checking every {interval:?}", std::process::id());
    let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook_flag(sig, term.clone())?;
    }
    let layout = PinLayout::new(pin_dir);
    let mut repairs = 0u64;
    let mut last_faults: Vec<String> = Vec::new();
    while !term.load(std::sync::atomic::Ordering::Relaxed) {
        let lock = SessionLock::read(runtime_dir).ok().flatten();
        if lock.is_none() && !layout.exists() {
            tracing::info!("the session ended (no lock, no pins): watchdog exits");
            break;
        }
        let faults = check(runtime_dir, &layout, lock.as_ref());
        if faults != last_faults {
            if faults.is_empty() {
                tracing::info!("all checks pass");
            } else {
                tracing::warn!("FAULT: {}", faults.join("; "));
            }
        }
        if !faults.is_empty() {
            repairs += 1;
            match repair(runtime_dir, &layout, lock.as_ref(), &faults) {
                Ok(what) => tracing::info!("repaired: {what}"),
                Err(e) => tracing::error!("repair failed: {e:#}; the host stays locked down"),
            }
        }
        let round = Round { at_unix: control::unix_now(), faults: faults.clone(), repairs };
        let _ = ttp::rootfs::write_file(runtime_dir, STATE_FILE, serde_json::to_string(&round)?.as_bytes());
        last_faults = faults;
        let mut slept = Duration::ZERO;
        while slept < interval && !term.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            slept += Duration::from_millis(100);
        }
    }
    let _ = std::fs::remove_file(runtime_dir.join(PID_FILE));
    let _ = std::fs::remove_file(runtime_dir.join(STATE_FILE));
    Ok(())
}

/// One round of checks; the faults found, in words.
fn check(runtime_dir: &Path, layout: &PinLayout, lock: Option<&SessionLock>) -> Vec<String> {
    let mut faults = Vec::new();
    if !layout.exists() || layout.link_pins().map(|l| l.is_empty()).unwrap_or(true) {
        faults.push(format!(
            "programs not attached (no pins under {})",
            layout.maps().parent().unwrap_or(Path::new("")).display()
        ));
    }
    let Some(lock) = lock else {
        faults.push("no session lock: the daemon is gone".into());
        return faults;
    };
    if !super::start::pid_alive(lock.pid) {
        faults.push(format!("daemon (pid {}) is dead", lock.pid));
        return faults;
    }
    match Client::new(runtime_dir).with_timeout(Duration::from_secs(5)).status() {
        // A daemon that is still starting serves nothing yet (its DNSPort among them) and
        // holds its own lockdown until Tor is ready: not a fault while it bootstraps, and
        // one that never finishes ends itself (--bootstrap-timeout), dead for the next round.
        Ok(status) if status.state == control::proto::STATE_STARTING => {
            faults.push(format!("Tor is not bootstrapped yet (starting: {})", status.bootstrap));
            return faults;
        }
        Ok(status) => {
            if !status.bootstrap.contains("100%") && !status.bootstrap.contains("usable") {
                faults.push(format!("Tor is not bootstrapped ({})", status.bootstrap));
            }
        }
        Err(e) => faults.push(format!("daemon does not answer on its control socket ({e:#})")),
    }
    if let Err(e) = dns_answers(lock.ports.dns) {
        faults.push(format!("DNSPort does not answer ({e:#})"));
    }
    faults
}

/// Asks the DNSPort for the DoH canary, which it answers itself (no Tor round trip).
fn dns_answers(port: u16) -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    // A query for use-application-dns.net, type A, id 0x7474.
    let mut q = vec![0x74, 0x74, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["use-application-dns", "net"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, ("127.0.0.1", port))?;
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf).context("no answer within 3 s")?;
    if n < 12 || buf[..2] != [0x74, 0x74] {
        bail!("a malformed answer");
    }
    Ok(())
}

/// Locks the host down, then replaces a dead, hung or detached daemon by a new start with
/// the session's options.
fn repair(runtime_dir: &Path, layout: &PinLayout, lock: Option<&SessionLock>, faults: &[String]) -> Result<String> {
    // Not a fault of ours: the daemon keeps trying, and fails closed meanwhile. Its
    // lockdown flag is left as the daemon set it (on while it starts: a watchdog that
    // turned it off here lifted a starting daemon's lockdown).
    if faults.iter().all(|f| f.starts_with("Tor is not bootstrapped")) {
        return Ok("nothing to do while Tor bootstraps (traffic waits for it; nothing leaks)".into());
    }
    if layout.exists() {
        Maps::set_lockdown_pinned(&layout.maps(), true).context("setting the lockdown flag")?;
    }
    let Some(lock) = lock else {
        bail!("no session lock to restart from: run `ttp start`");
    };
    if super::start::pid_alive(lock.pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(lock.pid as i32), nix::sys::signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The old control socket would make the new start think a daemon runs.
    let _ = std::fs::remove_file(runtime_dir.join(control::SOCKET));
    let out = Command::new(std::env::current_exe()?)
        .arg("start")
        .args(lock.args.iter().filter(|a| *a != "--watchdog"))
        .stdin(Stdio::null())
        .output()
        .context("running ttp start")?;
    if !out.status.success() {
        bail!("ttp start failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let new = SessionLock::read(runtime_dir)?.map(|l| l.pid).unwrap_or_default();
    Ok(format!("daemon restarted (pid {new})"))
}

/// Sets `flag` when `sig` arrives. Written by hand: one atomic store in a handler.
fn signal_hook_flag(sig: libc::c_int, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();
    let _ = FLAG.set(flag);
    extern "C" fn handler(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(handler),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only does an atomic store.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::try_from(sig)?, &action) }?;
    Ok(())
}

/// The integrity loop: programs attached, daemon alive, Tor bootstrapped, DNS answered;
/// on a fault it locks down and repairs.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: WatchdogCmd,
}

#[derive(clap::Subcommand)]
pub enum WatchdogCmd {
    /// Start the watchdog in the background.
    Start {
        #[command(flatten)]
        paths: super::Paths,
    },
    /// Stop the background watchdog.
    Stop {
        #[command(flatten)]
        paths: super::Paths,
    },
    /// Is it running, and what did its last round find?
    Status {
        #[command(flatten)]
        paths: super::Paths,
        #[arg(long)]
        json: bool,
    },
    /// Run the loop in the foreground.
    Run {
        #[command(flatten)]
        paths: super::Paths,
        /// Seconds between rounds.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
}

impl Args {
    /// `status` reads; everything else starts, stops or repairs ttp.
    pub fn needs_root(&self) -> bool {
        !matches!(self.cmd, WatchdogCmd::Status { .. })
    }

    /// Where this command logs, if it runs the loop (its log file, rotated).
    pub fn log_file(&self) -> Option<PathBuf> {
        match &self.cmd {
            WatchdogCmd::Run { paths, .. } => {
                let _ = std::fs::create_dir_all(&paths.runtime_dir);
                Some(log_path(&paths.runtime_dir))
            }
            _ => None,
        }
    }

    pub fn run(self) -> Result<()> {
        match self.cmd {
            WatchdogCmd::Start { paths } => {
                let pid = spawn(&paths.runtime_dir, &paths.pin_dir)?;
                println!("watchdog started (pid {pid}); `ttp logs --watchdog` shows what it does");
                Ok(())
            }
            WatchdogCmd::Stop { paths } => {
                match stop(&paths.runtime_dir) {
                    Some(pid) => println!("watchdog (pid {pid}) stopped"),
                    None => println!("no watchdog was running"),
                }
                Ok(())
            }
            WatchdogCmd::Status { paths, json } => status(&paths.runtime_dir, json),
            WatchdogCmd::Run { paths, interval } => {
                run(&paths.runtime_dir, &paths.pin_dir, Duration::from_secs(interval.max(1)))
            }
        }
    }
}
