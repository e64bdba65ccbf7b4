//! `ttp exec --tor|--direct -- CMD`: one command in a torified or a bypass cgroup.
//!
//! The daemon keeps two cgroups inside the subtree it governs: `ttp.tor` (governed like
//! everything else there) and `ttp.direct` (a bypass cgroup). Each `exec` gets its own
//! child of one of them, removed when the command ends. With a daemon that governs only a
//! subtree (`--cgroup`), `exec --tor` is how single applications use Tor; with a
//! system-wide one, `exec --direct` is how they skip it.
//!
//! A command through Tor also gets a mount namespace in which the local name services
//! (systemd-resolved's socket, nscd's) are out of reach: they run outside the governed
//! subtree and would look its names up in the clear ([`NAME_SERVICES`]).

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use ttp::{cgroup, lock::SessionLock};

/// Which side of ttp the command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Tor,
    Direct,
}

impl Route {
    /// The cgroup (under the governed one) that the daemon set up for this route.
    pub fn cgroup(self, governed: &std::path::Path) -> PathBuf {
        governed.join(match self {
            Route::Tor => "ttp.tor",
            Route::Direct => "ttp.direct",
        })
    }
}

/// Runs `argv` on `route` as `user` (default: the user who ran sudo) and returns its exit code.
pub fn exec(runtime_dir: &std::path::Path, route: Route, user: Option<&str>, argv: &[String]) -> Result<i32> {
    let Some(lock) = SessionLock::read(runtime_dir)? else {
        bail!("ttp is not running (no session lock in {}): `sudo ttp start` first", runtime_dir.display());
    };
    let Some((program, args)) = argv.split_first() else { bail!("no command given: ttp exec --tor -- CMD [ARGS]") };
    // The lock is root's own file (rootfs), and still: commands go only into a child of
    // the governed tree that the daemon made, never into some other cgroup it names.
    let root = cgroup::cgroup2_root()?;
    if !lock.cgroup.is_absolute()
        || !lock.cgroup.starts_with(&root)
        || lock.cgroup.components().any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!(
            "the session lock names {} as the governed cgroup, which is not under {}",
            lock.cgroup.display(),
            root.display()
        );
    }
    let base = route.cgroup(&lock.cgroup);
    let meta = std::fs::symlink_metadata(&base);
    if meta.as_ref().is_ok_and(|m| !m.is_dir()) {
        bail!("{} is not a cgroup directory", base.display());
    }
    if meta.is_err() {
        bail!("{} does not exist: the running daemon is older than `ttp exec`; `ttp restart` it", base.display());
    }
    let own = base.join(format!("exec-{}", std::process::id()));
    cgroup::create(&own)?;
    let (uid, gid) = target_user(user)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let procs = own.join("cgroup.procs");
    let hide: Vec<PathBuf> = match route {
        Route::Tor => NAME_SERVICES.iter().map(PathBuf::from).filter(|p| p.exists()).collect(),
        Route::Direct => Vec::new(),
    };
    // SAFETY: between fork and exec only async-signal-safe calls: open/write/close on the
    // cgroup file, unshare and mount (nix passes the paths on the stack), then
    // setgroups/setgid/setuid.
    unsafe {
        cmd.pre_exec(move || {
            std::fs::write(&procs, b"0")?;
            if !hide.is_empty() {
                hide_name_services(&hide)?;
            }
            if let Some((uid, gid)) = uid.zip(gid) {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let status = cmd.status().with_context(|| format!("running {program}"));
    // Gone with its command (a child it left running keeps it, harmlessly).
    let _ = std::fs::remove_dir(&own);
    let status = status?;
    Ok(status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}

/// Local services that resolve names for a program, outside the governed subtree: what
/// glibc asks before (or instead of) DNS. systemd-resolved's varlink socket is what
/// nss-resolve (Ubuntu's and Fedora's default) uses; nscd's is what glibc tries first
/// wherever nscd runs. Either would look the name up in the clear, from its own cgroup.
/// Hidden, glibc finds them unavailable and falls back to DNS through resolv.conf, which
/// the command sends itself, from the governed cgroup: the DNSPort answers (a stub at
/// 127.0.0.53 included: loopback DNS is redirected too).
const NAME_SERVICES: &[&str] = &["/run/systemd/resolve/io.systemd.Resolve", "/run/nscd/socket", "/var/run/nscd/socket"];

/// In the child, before exec: a mount namespace of its own (mounts made here stay here,
/// the host's still arrive) in which each of `paths` is /dev/null, so connecting to it fails.
fn hide_name_services(paths: &[PathBuf]) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)?;
    for p in paths {
        mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    }
    Ok(())
}

/// The uid and gid to run as: `--user NAME|UID`, else the sudo caller, else unchanged.
fn target_user(user: Option<&str>) -> Result<(Option<u32>, Option<u32>)> {
    if let Some(u) = user {
        let found = match u.parse::<u32>() {
            Ok(n) => nix::unistd::User::from_uid(n.into())?,
            Err(_) => nix::unistd::User::from_name(u)?,
        };
        let found = found.with_context(|| format!("no such user: {u}"))?;
        return Ok((Some(found.uid.as_raw()), Some(found.gid.as_raw())));
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    Ok((env("SUDO_UID"), env("SUDO_GID")))
}

/// Run one command through Tor (`--tor`) or around it (`--direct`).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
    /// Through Tor, even when ttp governs only part of the host.
    #[arg(long, conflicts_with = "direct", required_unless_present = "direct")]
    pub tor: bool,
    /// Around Tor (split tunneling), even when ttp governs the whole host.
    #[arg(long)]
    pub direct: bool,
    /// Run as this user (default: the user who ran sudo).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    /// Runs the command and exits with its exit code.
    pub fn run(self) -> Result<()> {
        let route = if self.tor { Route::Tor } else { Route::Direct };
        let code = exec(&self.paths.runtime_dir, route, self.user.as_deref(), &self.command)?;
        std::process::exit(code);
    }
}
