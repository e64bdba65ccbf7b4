//! Root's own files: the runtime directory and what root reads back from it.
//!
//! Root acts on what it reads from the runtime directory: `ttp restart` and the watchdog
//! replay the session lock's command line, `ttp exec` puts commands into the cgroup it
//! names. So nothing there may be writable by anyone but root, least of all by the
//! service user the daemon runs as (a compromised daemon is one of the adversaries,
//! SECURITY.md). The rule, carried by this module:
//!
//! - The runtime directory is root's, mode 0755 ([`ensure_dir`]); the daemon writes
//!   nothing into it after it gives up root. The control socket is bound and the log
//!   opened while the daemon is still root; the daemon keeps their descriptors.
//! - Root writes its files there whole or not at all, through a held directory
//!   descriptor, never following a link ([`write_file`]).
//! - Root reads back only regular files that root owns and nobody else may write, never
//!   through a link ([`read_small`]).

use std::{
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::Path,
};

use anyhow::{bail, Context, Result};
use nix::{fcntl::OFlag, sys::stat::Mode};

/// The largest file root reads back (a lock is a few hundred bytes).
const MAX_READ: u64 = 1024 * 1024;

/// Makes `dir` a root-owned directory of mode 0755 (creating it and its parents as
/// needed). A directory left by an older ttp, which gave it to the service user, is taken
/// back: everything in it that root does not own is removed, but for the log files,
/// which are given back to root.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory (a link?): remove it, or choose another --runtime-dir", dir.display());
    }
    if meta.uid() != 0 {
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).with_context(|| format!("taking {} back", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let m = entry.metadata()?; // of the entry itself: read_dir entries are not followed
        if m.uid() == 0 && m.mode() & 0o022 == 0 {
            continue;
        }
        let name = entry.file_name();
        let is_log = m.is_file() && name.to_string_lossy().starts_with("ttp.log");
        if is_log {
            std::os::unix::fs::lchown(entry.path(), Some(0), Some(0))?;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o640))?;
        } else if m.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(dir, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty())
        .map(|fd| {
            // SAFETY: a fresh descriptor from open, owned by nobody else.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        })
        .with_context(|| format!("opening {}", dir.display()))
}

/// Writes `dir/name` whole (a new temporary file renamed over it), mode 0644, without
/// following a link, through a descriptor of `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let d = open_dir(dir)?;
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    let _ = nix::unistd::unlinkat(Some(d.as_raw_fd()), tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fd = nix::fcntl::openat(
        Some(d.as_raw_fd()),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .with_context(|| format!("creating {}/{tmp}", dir.display()))?;
    // SAFETY: a fresh descriptor from openat, owned by nobody else.
    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}/{tmp}", dir.display()))?;
    let raw = d.as_raw_fd();
    nix::fcntl::renameat(Some(raw), tmp.as_str(), Some(raw), name)
        .with_context(|| format!("writing {}", dir.join(name).display()))?;
    Ok(())
}

/// Reads a small file that root owns and nobody else may write, never through a link.
/// Anything else is refused: root does not act on what another user could have written.
pub fn read_small(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    let refuse = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} {why}: root does not trust it (remove it if no ttp runs)", path.display()),
        )
    };
    if !m.is_file() {
        return Err(refuse("is not a regular file"));
    }
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(refuse("is not root's alone (owned by another user, or writable by others)"));
    }
    let mut s = String::new();
    (&mut f).take(MAX_READ).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ttp-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn root_reads_back_only_its_own_regular_files_never_through_a_link() {
        if !nix::unistd::geteuid().is_root() {
            return; // ownership checks need root to set up
        }
        let d = tmpdir("read");
        write_file(&d, "lock", b"mine").unwrap();
        assert_eq!(read_small(&d.join("lock")).unwrap(), "mine");
        // Written over, whole.
        write_file(&d, "lock", b"again").unwrap();
        assert_eq!(read_small(&d.join("lock")).unwrap(), "again");
        // Another user's file, a group-writable one, a link to root's own: all refused.
        std::fs::write(d.join("theirs"), "forged").unwrap();
        std::os::unix::fs::chown(d.join("theirs"), Some(65534), None).unwrap();
        assert!(read_small(&d.join("theirs")).is_err());
        std::fs::write(d.join("loose"), "x").unwrap();
        std::fs::set_permissions(d.join("loose"), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_small(&d.join("loose")).is_err());
        std::os::unix::fs::symlink(d.join("lock"), d.join("link")).unwrap();
        assert!(read_small(&d.join("link")).is_err());
        // Writing never follows a link planted under the name.
        std::fs::write(d.join("target"), "untouched").unwrap();
        std::os::unix::fs::symlink(d.join("target"), d.join("planted")).unwrap();
        write_file(&d, "planted", b"new").unwrap();
        assert_eq!(std::fs::read_to_string(d.join("target")).unwrap(), "untouched");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_an_older_ttp_gave_away_is_taken_back() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let d = tmpdir("ensure");
        std::fs::write(d.join("ttp.lock"), "forged").unwrap();
        std::fs::write(d.join("ttp.log"), "old log").unwrap();
        for f in ["", "ttp.lock", "ttp.log"] {
            std::os::unix::fs::lchown(d.join(f), Some(65534), Some(65534)).unwrap();
        }
        ensure_dir(&d).unwrap();
        let m = std::fs::symlink_metadata(&d).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o755));
        assert!(!d.join("ttp.lock").exists(), "a file the service user wrote survived");
        assert_eq!(std::fs::symlink_metadata(d.join("ttp.log")).unwrap().uid(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
