//! The unprivileged user the daemon runs as once it is set up (`--user`, default `ttp`).
//!
//! Arti, the proxy ports and everything else that parses input from the network run as
//! this user. It owns what the daemon writes while it runs: the state directory (Arti's
//! state and cache), the runtime directory (control socket, session lock, log). Root keeps
//! what only root may touch: the pins, the cgroups, the teardown (see [`crate::monitor`]).

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// The default service user, created (as a system user) on first use if it is missing.
pub const DEFAULT: &str = "ttp";
/// The group whose members may use the control socket (see [`crate::control`]).
pub const CONTROL_GROUP: &str = "ttp";

/// Who the daemon becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: its own group alone.
    pub groups: Vec<u32>,
}

impl ServiceUser {
    /// Root: no change of user (`--user root`, for debugging only).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// `USER[:GROUP]`: names or numbers. A number needs no entry in /etc/passwd (its group is
/// the same number unless given). The default user is created if it does not exist.
pub fn resolve(spec: &str) -> Result<ServiceUser> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        bail!("--user {spec:?}: expected USER or USER:GROUP (names or numbers)");
    }
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, nix::unistd::User::from_uid(n.into()).ok().flatten().map_or(n, |p| p.gid.as_raw())),
        Err(_) => {
            let found = match nix::unistd::User::from_name(u)? {
                Some(p) => p,
                None if u == DEFAULT => create_system_user()?,
                None => bail!(
                    "no user named {u:?}: create it (`useradd --system {u}`), give a uid, or leave --user at `{DEFAULT}`"
                ),
            };
            (found.uid.as_raw(), found.gid.as_raw())
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)?
                .with_context(|| format!("no group named {g:?} (give a name from /etc/group or a number)"))?
                .gid
                .as_raw(),
        },
    };
    // Its own group only. (It was once in the control group too, to hand its socket over;
    // root binds the socket now, and a member of that group could read the daemon's status
    // through it, which the daemon itself has no need to.)
    Ok(ServiceUser { uid, gid, groups: vec![gid] })
}

/// `useradd --system`: the standard tool keeps /etc/passwd, /etc/shadow and their locks
/// consistent, which writing the files ourselves would not.
pub fn create_system_user() -> Result<nix::unistd::User> {
    // Its group is the control group: an existing one (an older install made it) is reused.
    let group = if nix::unistd::Group::from_name(CONTROL_GROUP)?.is_some() {
        ["--gid", CONTROL_GROUP]
    } else {
        ["--user-group", ""]
    };
    let out = Command::new("useradd")
        .arg("--system")
        .args(group.iter().filter(|a| !a.is_empty()))
        .args(["--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", "--comment", "ttp transparent Tor proxy", DEFAULT])
        .output()
        .context("running useradd to create the system user ttp (or pass --user)")?;
    if !out.status.success() {
        bail!(
            "useradd could not create the system user {DEFAULT}: {} (create it, or pass --user)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tracing::info!("created the system user {DEFAULT}: the daemon runs as it once set up");
    nix::unistd::User::from_name(DEFAULT)?.context("useradd succeeded but the user ttp is not there")
}

/// Gives `path` and everything below it to `user` (symlinks themselves, not their targets).
pub fn chown_tree(path: &Path, user: &ServiceUser, keep: &Path) -> Result<()> {
    // Root's runtime directory may lie inside the state directory: it stays root's.
    if path == keep {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("giving {} to uid {}", path.display(), user.uid))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            chown_tree(&e?.path(), user, keep)?;
        }
    }
    Ok(())
}

/// Fails, saying which, if `user` could not reach `dir`: every parent must be searchable
/// by it. Checked before the daemon gives up root, when the fix is still easy to name.
pub fn check_reachable(dir: &Path, user: &ServiceUser) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut p = dir.parent();
    while let Some(d) = p {
        if let Ok(m) = std::fs::metadata(d) {
            let bits = if m.uid() == user.uid {
                m.mode() >> 6
            } else if user.groups.contains(&m.gid()) {
                m.mode() >> 3
            } else {
                m.mode()
            };
            if bits & 1 == 0 {
                bail!(
                    "{} is not searchable by the service user (uid {}), so it cannot reach {}: \
                     chmod o+x {} or choose another directory",
                    d.display(),
                    user.uid,
                    dir.display(),
                    d.display()
                );
            }
        }
        p = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_bad_specs() {
        let u = resolve("64123").unwrap();
        assert_eq!((u.uid, u.gid), (64123, 64123));
        let u = resolve("64123:64124").unwrap();
        assert_eq!((u.uid, u.gid), (64123, 64124));
        assert_eq!(u.groups[0], 64124);
        let r = resolve("root").unwrap();
        assert!(r.is_root());
        assert_eq!(resolve("0:root").unwrap().gid, 0);
        for bad in ["", ":", "1:", ":1"] {
            assert!(resolve(bad).unwrap_err().to_string().contains("expected USER"), "{bad:?}");
        }
        assert!(resolve("no-such-user-here").unwrap_err().to_string().contains("no user named"));
        assert!(resolve("1:no-such-group-here").unwrap_err().to_string().contains("no group named"));
    }

    #[test]
    fn an_unsearchable_parent_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("ttp-user-test-{}", std::process::id()));
        let inner = base.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = ServiceUser { uid: 64123, gid: 64123, groups: vec![64123] };
        let e = check_reachable(&inner.join("state"), &nobody).unwrap_err().to_string();
        std::fs::set_permissions(base.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ok = check_reachable(&inner.join("state"), &nobody);
        std::fs::remove_dir_all(&base).unwrap();
        assert!(e.contains(&format!("{} is not searchable", base.join("a").display())), "{e}");
        ok.unwrap();
    }
}
