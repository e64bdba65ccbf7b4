//! `ttp start` (and what `stop` and `restart` share with it: is a daemon alive, ending
//! one without a teardown).
//!
//! `start` runs `ttp run` with the same arguments as a detached daemon (its own session,
//! its log in the runtime dir) and reads the daemon's start protocol from its stdout
//! ([`ttp::daemon::Event`]): a progress bar on a terminal, plain lines otherwise.

use std::{
    io::{BufRead, IsTerminal, Write},
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ttp::{
    control::client::Client, daemon::Event, datapath::PinLayout, lock::SessionLock, logfile, options::StartOptions,
};

/// The daemon's log file for these options.
pub fn log_path(opts: &StartOptions) -> std::path::PathBuf {
    opts.log_file.clone().unwrap_or_else(|| super::log_path(&opts.runtime_dir))
}

/// `ttp start ARGS`: `args` are the arguments after `start`, passed on to `ttp run`.
pub fn start(opts: &StartOptions, args: &[String]) -> Result<()> {
    if let Ok(status) = Client::new(&opts.runtime_dir).status() {
        bail!("ttp is already running (pid {}); `ttp stop` first, or `ttp restart`", status.pid);
    }
    ttp::rootfs::ensure_dir(&opts.runtime_dir)?;
    let log = log_path(opts);
    let mut run_args = vec!["run".to_string()];
    run_args.extend_from_slice(args);
    if opts.log_file.is_none() {
        run_args.extend(["--log-file".to_string(), log.display().to_string()]);
    }
    // What the daemon prints before its log is set up (or if it aborts) lands in the log.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(&run_args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
    // SAFETY: setsid is async-signal-safe: the daemon leaves our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut show = Progress::new();
    let t0 = Instant::now();
    let mut armed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let event = Event::parse(&line);
        armed |= matches!(event, Some(Event::KillSwitch(_)));
        match event {
            Some(Event::Ready(_)) => {
                show.finish();
                println!(
                    "ttp is running (pid {}) after {:.1?}: the host's traffic goes through Tor",
                    child.id(),
                    t0.elapsed()
                );
                if opts.watchdog {
                    crate::cli::watchdog::spawn(&opts.runtime_dir, &opts.pin_dir)?;
                    println!("watchdog started");
                }
                return Ok(());
            }
            Some(e) => show.event(&e),
            None => {}
        }
    }
    show.finish();
    let status = child.wait()?;
    let tail = logfile::tail(&log, 8).unwrap_or_default();
    let lines: Vec<String> =
        tail.iter().filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("ttp:")).cloned().collect();
    let host = if armed {
        "the kill-switch stays closed: nothing governed leaves. Fix the cause and `ttp start` again \
         (it takes over without a gap), or `ttp stop` to open the host"
    } else {
        "the host is as it was"
    };
    bail!(
        "the daemon exited ({status}) before it was ready; {host}.\n{}\n(the whole log: {}, or `ttp logs`)",
        if lines.is_empty() { tail.join("\n") } else { lines.join("\n") },
        log.display()
    )
}

/// Start progress: a bar on a terminal, one line per step otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: Option<(u8, String)>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(100);
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} Tor [{bar:30}] {pos:>3}% {wide_msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b.set_message("kill-switch first");
            b
        });
        Self { bar, last: None }
    }

    fn event(&mut self, e: &Event) {
        match (e, &self.bar) {
            (Event::KillSwitch(d), Some(b)) => b.println(format!("kill-switch active after {d:.0?}")),
            (Event::KillSwitch(d), None) => println!("kill-switch active after {d:.0?} (lockdown until Tor is ready)"),
            (Event::Bootstrap(p, s), Some(b)) => {
                b.set_position(u64::from(*p));
                b.set_message(s.clone());
            }
            (Event::Bootstrap(p, s), None) => {
                if self.last.as_ref() != Some(&(*p, s.clone())) {
                    println!("bootstrap {p:>3}%: {s}");
                    self.last = Some((*p, s.clone()));
                }
            }
            (Event::Ready(_), _) => {}
        }
        let _ = std::io::stdout().flush();
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Ends a running daemon the way a crash would: lockdown first (so nothing is redirected
/// to ports about to close), then SIGKILL. Its monitor leaves the pins; a new start takes
/// them over.
pub fn end_without_teardown(lock: &SessionLock, pin_dir: &Path) {
    let _ = ttp::datapath::Maps::set_lockdown_pinned(&PinLayout::new(pin_dir).maps(), true);
    if pid_alive(lock.pid) && is_ttp(lock.pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(lock.pid as i32), nix::sys::signal::SIGKILL);
        let t0 = Instant::now();
        while pid_alive(lock.pid) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` runs (procfs; a zombie, dead but not yet reaped, does not).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    procfs::process::Process::new(pid).and_then(|p| p.stat()).is_ok_and(|s| s.state != 'Z')
}

/// Whether `pid` runs the ttp binary (a stale lock's pid may have been reused).
pub fn is_ttp(pid: u32) -> bool {
    let exe = i32::try_from(pid).ok().and_then(|pid| procfs::process::Process::new(pid).ok()?.exe().ok());
    exe.is_some() && exe == std::env::current_exe().ok()
}

/// Start the daemon in the background; returns once the host is protected and traffic
/// flows through Tor (or fails: before the kill-switch with the host as it was, after it
/// with the host closed until `ttp stop`).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub opts: Box<StartOptions>,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        // The arguments after `start`, passed on to `ttp run` as given.
        let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a != "start").skip(1).collect();
        start(&self.opts, &args)
    }
}
