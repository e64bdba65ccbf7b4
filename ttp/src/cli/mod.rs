//! The command line's own work: what runs in the `ttp` process, not in the daemon.
//! One module per command family.

pub mod check_leak;
pub mod exec;
pub mod install;
pub mod lock;
pub mod logs;
pub mod reload;
pub mod start;
pub mod tunnel;
pub mod unit_stop;
pub mod watchdog;
