//! The command line's own work: what runs in the `ttp` process, not in the daemon.
//! One module per command (or family of commands), each with its `Args` (clap), whether
//! it needs root (`NEEDS_ROOT`, beside them) and its `run`; `main.rs` only parses and
//! dispatches.

use std::path::{Path, PathBuf};

pub mod check;
pub mod check_leak;
pub mod diagnose;
pub mod exec;
pub mod install;
pub mod lock;
pub mod logs;
pub mod refresh;
pub mod reload;
pub mod restart;
pub mod run;
pub mod start;
pub mod status;
pub mod stop;
pub mod streams;
pub mod top;
pub mod tunnel;
pub mod unit_stop;
pub mod watchdog;

/// Where an instance lives: the options every command that talks to one takes, with
/// their defaults in one place.
#[derive(clap::Args, Clone)]
pub struct Paths {
    /// Per-instance directory in bpffs where links and maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/ttp", value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// The daemon's runtime directory (control socket).
    #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
    pub runtime_dir: PathBuf,
}

/// The daemon's log in a runtime directory (where `ttp start` has it write, and `ttp
/// logs` and `ttp top` read).
pub fn log_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("ttp.log")
}
