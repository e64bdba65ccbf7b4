//! cgroup v2 plumbing: where the hierarchy is mounted, cgroup ids, moving processes.
//!
//! Never assumes /sys/fs/cgroup: hybrid systems mount cgroup2 elsewhere
//! (/sys/fs/cgroup/unified), so the mount point is read from /proc/mounts.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The cgroup2 mount point, from /proc/mounts (procfs).
pub fn cgroup2_root() -> Result<PathBuf> {
    procfs::mounts()
        .context("reading /proc/mounts")?
        .into_iter()
        .find(|m| m.fs_vfstype == "cgroup2")
        .map(|m| PathBuf::from(m.fs_file))
        .context("no cgroup2 filesystem is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1")
}

/// A cgroup's id as BPF helpers report it: the inode number of its cgroup2 directory.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    let meta = fs::metadata(path).with_context(|| format!("cgroup {} does not exist", path.display()))?;
    if !meta.is_dir() || !path.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup2 directory (no cgroup.procs in it)", path.display());
    }
    Ok(meta.ino())
}

/// The path of the cgroup whose id is `id`, relative to the cgroup2 root (`/` for the
/// root): a walk of the hierarchy, breadth first, that gives up after `max_dirs`
/// directories (the kernel has no lookup by id that is not root's alone).
pub fn path_of_id(id: u64, max_dirs: usize) -> Option<PathBuf> {
    let root = cgroup2_root().ok()?;
    let mut queue = std::collections::VecDeque::from([root.clone()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        if fs::metadata(&dir).ok()?.ino() == id {
            return Some(Path::new("/").join(dir.strip_prefix(&root).ok()?));
        }
        seen += 1;
        if seen >= max_dirs {
            return None;
        }
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(e.path());
            }
        }
    }
    None
}

/// The cgroup2 path of a process, from /proc/PID/cgroup (procfs; the `0::/path` line).
pub fn cgroup_of(pid: u32) -> Result<PathBuf> {
    let groups = i32::try_from(pid)
        .ok()
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.cgroups().ok())
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let rel = groups
        .0
        .into_iter()
        .find(|g| g.hierarchy == 0 && g.controllers.is_empty())
        .map(|g| g.pathname)
        .with_context(|| format!("process {pid} has no cgroup2 membership"))?;
    Ok(cgroup2_root()?.join(rel.trim_start_matches('/')))
}

/// The cgroup of the systemd service this process runs as, if it runs as one: systemd
/// tracks, signals and stops a service by its cgroup, and journald names a log line's unit
/// after its sender's cgroup, so a daemon that moved out would be lost to `systemctl` and
/// `journalctl -u`. (INVOCATION_ID is set by systemd for every service it starts.)
pub fn systemd_service() -> Option<PathBuf> {
    std::env::var_os("INVOCATION_ID")?;
    let own = cgroup_of(std::process::id()).ok()?;
    let name = own.file_name()?.to_str()?;
    (name.ends_with(".service") && own != cgroup2_root().ok()?).then_some(own)
}

/// Moves a process into a cgroup.
pub fn move_into(path: &Path, pid: u32) -> Result<()> {
    fs::write(path.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving process {pid} into cgroup {}", path.display()))
}

/// Creates a cgroup (and its parents); fine if it exists.
pub fn create(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_found_by_its_id() {
        let own = cgroup_of(std::process::id()).unwrap();
        let rel = Path::new("/").join(own.strip_prefix(cgroup2_root().unwrap()).unwrap());
        assert_eq!(path_of_id(cgroup_id(&own).unwrap(), 100_000), Some(rel));
        assert_eq!(path_of_id(u64::MAX, 100_000), None);
    }

    /// This process's cgroup2 path, as procfs reads it, is the `0::` line of its file.
    #[test]
    fn cgroup_of_reads_the_cgroup2_line() {
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let root = super::cgroup2_root().unwrap();
        assert_eq!(super::cgroup_of(std::process::id()).unwrap(), root.join(rel.trim_start_matches('/')));
    }
}
