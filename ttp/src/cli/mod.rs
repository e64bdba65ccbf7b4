//! The command line's own work: what runs in the `ttp` process, not in the daemon.
//! One module per command (or family of commands), with its run; `main.rs` only
//! parses and dispatches.

pub mod check;
pub mod check_leak;
pub mod exec;
pub mod install;
pub mod lock;
pub mod logs;
pub mod refresh;
pub mod reload;
pub mod start;
pub mod status;
pub mod streams;
pub mod tunnel;
pub mod unit_stop;
pub mod watchdog;
