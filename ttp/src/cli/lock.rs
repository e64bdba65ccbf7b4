//! `ttp lock`: the kill-switch alone, in lockdown, before anything else runs.
//!
//! bpffs is empty after a reboot, so the kill-switch a running ttp pinned is gone, and the
//! daemon needs the network to bootstrap Tor: it cannot be up before the network is. What
//! other programs send between the network coming up and the daemon attaching would leave
//! in the clear. `ttp lock` closes that window: run at boot before the network
//! (`ttp-lock.service`, ordered before `network-pre.target`), it attaches and pins the
//! datapath in lockdown, with the session's own options, and exits. Nothing governed
//! leaves until `ttp run` takes the pins over (as after a crash: no gap) or root's
//! `ttp stop` removes them.
//!
//! Nothing is exempt: the daemon's cgroup is a placeholder nobody is in (`ttp.lock`).
//! Link-layer control (DHCP, NDP, ARP) passes as always, so the network still comes up.

use anyhow::{Context, Result};
use ttp::{
    cgroup,
    datapath::{Datapath, DatapathOptions},
    lock::SessionLock,
    options::StartOptions,
};

pub fn lock(opts: &StartOptions) -> Result<()> {
    if let Some(l) = SessionLock::read(&opts.runtime_dir)?.filter(|l| crate::cli::start::pid_alive(l.pid)) {
        println!("ttp runs already (pid {}): its kill-switch is in place", l.pid);
        return Ok(());
    }
    let root = cgroup::cgroup2_root()?;
    let governed = opts.cgroup.clone().unwrap_or_else(|| root.clone());
    let placeholder = root.join("ttp.lock");
    // The exec cgroups exist as they will under the daemon (the policy names one).
    let exec = ttp::daemon::exec_cgroups_under(&governed);
    for cg in [&placeholder, &exec[0], &exec[1]] {
        cgroup::create(cg)?;
    }
    // At boot no interface may have a default route yet: then only the cgroup programs
    // hold (every governed socket); the daemon attaches TC as uplinks appear.
    let uplinks = if opts.uplinks.is_empty() { ttp::uplinks::default_uplinks()? } else { opts.uplinks.clone() };
    let dp = DatapathOptions {
        cgroup: governed,
        uplinks,
        gateways: Vec::new(),
        pin_dir: opts.pin_dir.clone(),
        trans_port: opts.trans_port,
        dns_port: opts.dns_port,
        daemon_cgroup: placeholder,
        daemon_uid: None,
        virtual_v4: Some(opts.virtual_net),
        policy: opts.policy(exec[1].clone()),
        start_locked: true,
    };
    let (datapath, _logs) = Datapath::start(&dp).context("attaching the kill-switch")?;
    let layout = datapath.layout().clone();
    // Dropped, not stopped: the pinned links stay attached.
    drop(datapath);
    println!(
        "kill-switch attached in lockdown ({}): nothing governed leaves until `ttp run` takes it over, or `ttp stop`",
        layout.root.display()
    );
    Ok(())
}

/// Attach the kill-switch in lockdown and exit: nothing governed leaves until `ttp run`
/// takes it over, or `ttp stop` (at boot, before the network: ttp-lock.service).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub opts: Box<StartOptions>,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        lock(&self.opts)
    }
}
