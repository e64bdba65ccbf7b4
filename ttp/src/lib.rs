//! ttp: a transparent Tor proxy for Linux.
//!
//! - [`datapath`]: the eBPF programs' loader, maps and pins (kernel side in `ttp-ebpf`).
//! - [`cgroup`]: cgroup v2 plumbing.
//! - [`tor`]: the embedded Arti client: configuration, bootstrap, isolation.
//! - [`transport`]: the TransPort. [`dns`]: the DNSPort. [`socks`]: the SOCKS port.
//! - [`control`]: the control socket. [`tunnel`]: the encrypted tunnel for remote peers
//!   (being built).
//! - [`daemon`]: wires them together, as [`user`] once set up, with [`monitor`] (root) to
//!   finish each stop; [`options`]: what it is told; [`lock`]: the session
//!   lock; [`logfile`]: the volatile, rotated log; [`rootfs`]: root's runtime directory
//!   and what root reads back from it.
//! - [`accept`] and [`load`]: listeners that no load ends, descriptors and fair shares;
//!   [`principal`]: who a connection or a query belongs to (isolation keys, owners).
//! - [`uplinks`]: the kill-switch for uplinks that appear after start (run by the monitor).

pub mod accept;
pub mod cgroup;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod diagnose;
pub mod dns;
pub mod gateway;
pub mod ifname;
pub mod load;
pub mod lock;
pub mod logfile;
pub mod memory;
pub mod monitor;
pub mod netwatch;
pub mod options;
pub mod principal;
pub mod privs;
pub mod reaper;
pub mod rootfs;
pub mod services;
pub mod sockdestroy;
pub mod socks;
pub mod tor;
pub mod transport;
pub mod tunnel;
pub mod uplinks;
pub mod user;
