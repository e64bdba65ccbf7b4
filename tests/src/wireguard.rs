//! WireGuard implementations we did not write, run as their users run them: a userspace
//! interface in a namespace, configured over its UAPI socket with `wg`. Debian's
//! wireguard-go, boringtun-cli (crates.io, built once under target/peers by `cargo
//! xtask test`), and for the benchmark a wireguard-go with TUN offloads (Debian 13's,
//! fetched under target/peers by `cargo xtask bench tunnel`).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{run, Netns, Proc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    WireguardGo,
    Boringtun,
    /// wireguard-go 0.0.20231211, with the TUN offloads Debian 12's lacks.
    WireguardGoOffloads,
}

impl Impl {
    fn program(self) -> Result<PathBuf> {
        Ok(match self {
            Impl::WireguardGo => "wireguard-go".into(),
            Impl::WireguardGoOffloads => match std::env::var_os("TTP_TEST_WIREGUARD_GO_OFFLOADS") {
                Some(p) => PathBuf::from(p),
                None => bail!("TTP_TEST_WIREGUARD_GO_OFFLOADS is not set: `cargo xtask bench tunnel` fetches it"),
            },
            Impl::Boringtun => match std::env::var_os("TTP_TEST_BORINGTUN") {
                Some(p) => PathBuf::from(p),
                None => {
                    let p = crate::target_dir().join("peers/bin/boringtun-cli");
                    if !p.exists() {
                        bail!("{} is missing: `cargo xtask test` builds it", p.display());
                    }
                    p
                }
            },
        })
    }
}

/// A running WireGuard interface; stopped, and its UAPI socket removed, on drop (the
/// sockets live in the host's /var/run/wireguard whatever the namespace: names must be
/// unique).
pub struct Interface {
    pub name: String,
    proc: Proc,
    sock: PathBuf,
}

impl Interface {
    /// Starts `which` as interface `name` in `ns`, waits for its UAPI socket, and gives it
    /// `address` and MTU 1420 once configured with `wg` (`wg_args`, or later
    /// [`Interface::setconf`]).
    pub fn start(which: Impl, ns: &Netns, name: &str) -> Result<Interface> {
        let sock = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
        let mut c = ns.cmd(which.program()?);
        match which {
            Impl::WireguardGo | Impl::WireguardGoOffloads => {
                c.arg(name).env("WG_PROCESS_FOREGROUND", "1");
            }
            // One thread: its default of four is twice as slow on two cores (KNOWN.md). One
            // unconnected socket: the route picks each datagram's source, so a peer whose
            // address changes sends from its new one.
            Impl::Boringtun => {
                c.args([
                    name,
                    "--foreground",
                    "--disable-drop-privileges",
                    "--threads",
                    "1",
                    "--disable-connected-udp",
                ]);
            }
        }
        c.stderr(Stdio::null());
        let proc = Proc::spawn(c)?;
        let iface = Interface { name: name.to_string(), proc, sock };
        let t0 = Instant::now();
        while !iface.sock.exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("{which:?} made no UAPI socket {}", iface.sock.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(iface)
    }

    /// The implementation's process.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// `wg set NAME ARGS...`
    pub fn set(&self, ns: &Netns, args: &[&str]) -> Result<()> {
        run(ns.cmd("wg").args(["set", &self.name]).args(args)).map(drop)
    }

    /// Configures it from a wg-quick file as a WireGuard app would import it: `wg-quick
    /// strip` (which takes out wg-quick's own keys: Address, DNS...) into `wg setconf`.
    pub fn setconf(&self, ns: &Netns, conf: &Path) -> Result<()> {
        let stripped = run(ns.cmd("wg-quick").arg("strip").arg(conf))?;
        let path = conf.with_extension("stripped");
        std::fs::write(&path, &stripped.stdout).context("writing the stripped configuration")?;
        run(ns.cmd("wg").args(["setconf", &self.name]).arg(&path)).map(drop)
    }

    /// Gives it `address` and MTU 1420, and brings it up.
    pub fn up(&self, ns: &Netns, address: &str) -> Result<()> {
        ns.ip(&["addr", "add", address, "dev", &self.name])?;
        ns.ip(&["link", "set", &self.name, "mtu", "1420", "up"])
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}
