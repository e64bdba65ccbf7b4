//! `ttp reload` (and the unit's ExecReload, `systemctl reload ttp`): apply a changed
//! config file to the running session without a restart, where that can be done without
//! a gap, and say which changes need one.
//!
//! What can change live is the datapath's policy: who and what goes direct (bypass users,
//! groups and cgroups, root, the LAN and its discovery) and whether IPv6 is refused. Root
//! writes it into the pinned maps, entry by entry, so each connection sees the old policy
//! or the new one; connections the new policy governs that were opened direct under the
//! old one are destroyed (their application reconnects, through Tor). Bridges need a
//! restart: Arti's switch to bridges at runtime (the daemon's `bridges` request) was
//! seen to stall with no usable guard in 2 of 6 full runs.
//!
//! Everything else (ports, uplinks, the service user, Tor's configuration and bridges...)
//! is read once at start: a restart applies it, and `systemctl restart ttp` / `ttp
//! restart` keep the kill-switch through the restart.
//!
//! The running session's options are known from its lock: the command line it was started
//! with and the config file's text at that time. Old and new options are both parsed by
//! the same clap definition as `ttp run`, and compared option by option.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches};
use ttp::{
    datapath::{Maps, PinLayout},
    lock::SessionLock,
    options::{StartOptions, LIVE_OPTIONS},
};

pub fn reload(runtime_dir: &Path) -> Result<()> {
    let Some(mut lock) = SessionLock::read(runtime_dir)? else {
        bail!("ttp is not running (no session lock in {}): nothing to reload", runtime_dir.display());
    };
    if !crate::cli::start::pid_alive(lock.pid) {
        bail!(
            "the daemon (pid {}) is gone and the host is closed: `ttp start` (or `systemctl restart ttp`) applies the config",
            lock.pid
        );
    }
    let Some(path) = ttp::config::or_default(lock.config_path.clone()) else {
        bail!("the session was started without a config file: nothing to reload (`ttp restart` applies new options)");
    };
    let new_text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let old = matches(&lock.args, lock.config_text.as_deref().unwrap_or(""), &path)
        .context("the running session's options no longer parse")?;
    let new = matches(&lock.args, &new_text, &path).context("nothing was changed")?;
    // (clap id, option name) of each option whose value differs.
    let changed: Vec<(String, String)> = crate::Cli::command()
        .find_subcommand("run")
        .expect("run exists")
        .get_arguments()
        .filter(|a| {
            old.get_raw(a.get_id().as_str()).map(|v| v.collect::<Vec<_>>())
                != new.get_raw(a.get_id().as_str()).map(|v| v.collect::<Vec<_>>())
        })
        .map(|a| (a.get_id().to_string(), format!("--{}", a.get_long().unwrap_or(a.get_id().as_str()))))
        .collect();
    if changed.is_empty() {
        println!("{}: no change from the running session", path.display());
        return Ok(());
    }
    let (live, restart): (Vec<_>, Vec<_>) = changed.iter().partition(|(id, _)| LIVE_OPTIONS.contains(&id.as_str()));
    let names = |list: &[&(String, String)]| list.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ");
    if !live.is_empty() {
        let opts = StartOptions::from_arg_matches(&new)?;
        let [_, exec_direct] = ttp::daemon::exec_cgroups_under(&lock.cgroup);
        let policy = opts.policy(exec_direct);
        let mut maps = Maps::open_pinned(&PinLayout::new(&lock.pin_dir).maps())
            .with_context(|| format!("opening the pinned maps under {}", lock.pin_dir.display()))?;
        ttp::datapath::update_policy(&mut maps, &ttp::cgroup::cgroup2_root()?, &policy)?;
        let closed = ttp::datapath::destroy_stranded(&lock.cgroup, &policy)?;
        println!("applied: {}", names(&live));
        if closed > 0 {
            println!(
                "{closed} direct connections that the new policy governs were closed (they reconnect through Tor)"
            );
        }
    }
    if restart.is_empty() {
        lock.config_text = Some(new_text);
        lock.config_path = Some(path);
        lock.write(runtime_dir)?;
    } else {
        println!(
            "needs a restart: {} (`systemctl restart ttp` or `ttp restart`; the kill-switch stays through it)",
            names(&restart)
        );
    }
    Ok(())
}

/// `ttp run`'s options from the session's command line and a config file's text, the
/// command line winning, as at start.
fn matches(args: &[String], config: &str, path: &Path) -> Result<clap::ArgMatches> {
    let cli = crate::Cli::command();
    let run = cli.find_subcommand("run").expect("run exists").clone();
    let argv = || std::iter::once("run".to_string()).chain(args.iter().cloned());
    let given = run.clone().try_get_matches_from(argv())?;
    let extra = ttp::config::args_from_text(&run, &given, config, path)?;
    let all = std::iter::once("run".into()).chain(extra).chain(args.iter().map(Into::into));
    Ok(run.try_get_matches_from(all.collect::<Vec<std::ffi::OsString>>())?)
}

/// Apply a changed config file to the running session: the policy (bypass users,
/// groups and cgroups, root, LAN, IPv6) at once; names what needs a restart.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        reload(&self.paths.runtime_dir)
    }
}
