//! `cargo xtask testnet up|down|status`: the private Tor network as a background service,
//! for the demo and for trying ttp by hand. (The tests start their own, in-process.)

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::{cargo, require_root, root, sh};

#[derive(Subcommand, Clone)]
pub enum Cmd {
    /// Start the network in the background; returns when its consensus is usable.
    Up {
        #[arg(long, default_value = "/tmp/ttp-testnet")]
        dir: PathBuf,
    },
    /// Stop it.
    Down {
        #[arg(long, default_value = "/tmp/ttp-testnet")]
        dir: PathBuf,
    },
    /// Is it running, and where is its Arti configuration?
    Status {
        #[arg(long, default_value = "/tmp/ttp-testnet")]
        dir: PathBuf,
    },
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.with_extension("pid")
}
fn log_file(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

fn running(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(dir)).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

pub fn run(cmd: Cmd) -> Result<()> {
    require_root("the private Tor network")?;
    match cmd {
        Cmd::Up { dir } => up(&dir),
        Cmd::Down { dir } => {
            match running(&dir) {
                Some(pid) => {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    let _ = fs::remove_file(pid_file(&dir));
                    eprintln!("==> private Tor network stopped");
                }
                None => eprintln!("==> no private Tor network running for {}", dir.display()),
            }
            Ok(())
        }
        Cmd::Status { dir } => {
            match running(&dir) {
                Some(pid) => {
                    println!("running (pid {pid}); Arti configuration: {}", dir.join("arti.toml").display());
                    print!("{}", fs::read_to_string(log_file(&dir)).unwrap_or_default());
                }
                None => println!("not running (start it with: cargo xtask testnet up)"),
            }
            Ok(())
        }
    }
}

pub fn up(dir: &Path) -> Result<()> {
    if let Some(pid) = running(dir) {
        eprintln!("==> private Tor network already running (pid {pid})");
        return Ok(());
    }
    sh(cargo().args(["build", "-p", "ttp-tests", "--bins"]))?;
    let log = fs::File::create(log_file(dir)).context("creating the testnet log")?;
    let mut c = Command::new(root().join("target/debug/testnet"));
    c.arg("run").arg(dir).stdout(log.try_clone()?).stderr(log).stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the network outlives this command.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = c.spawn().context("starting the testnet")?;
    fs::write(pid_file(dir), child.id().to_string())?;
    eprintln!("==> starting the private Tor network in {} (usually 10-30 s)", dir.display());
    let t0 = Instant::now();
    loop {
        let text = fs::read_to_string(log_file(dir)).unwrap_or_default();
        if text.lines().any(|l| l == "READY") {
            eprint!("{text}");
            return Ok(());
        }
        if running(dir).is_none() {
            bail!("the private Tor network failed to start:\n{text}");
        }
        if t0.elapsed() > Duration::from_secs(240) {
            bail!("the private Tor network did not come up in 240 s; see {}", log_file(dir).display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
