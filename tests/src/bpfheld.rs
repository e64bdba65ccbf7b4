//! The bpf objects another process holds, seen as an attacker in that process would hold
//! them: its descriptors (/proc/PID/fdinfo), taken over with `pidfd_getfd` and used.
//! Proves what a compromised daemon could do with what it keeps after the privilege drop.
//!
//! By hand (libc): `pidfd_getfd` and the two bpf(2) commands are a dozen lines, and no
//! well-kept crate offers them without pulling a BPF loader in for the wrong side.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};

/// One bpf descriptor of another process.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its number in the holder.
    pub fd: i32,
    /// `bpf-map`, `bpf-prog`, `bpf-link`...
    pub kind: String,
    /// Opened for writing (the kernel refuses updates through a read-only one).
    pub writable: bool,
    /// The map's name (maps only; empty otherwise).
    pub name: String,
    pub key_size: usize,
    pub value_size: usize,
}

/// Every bpf descriptor `pid` holds, with each map's name.
pub fn held(pid: u32) -> Result<Vec<Held>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("reading the process's descriptors")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let Some(kind) = target.to_string_lossy().strip_prefix("anon_inode:").map(str::to_string) else { continue };
        if !kind.starts_with("bpf") {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse()?;
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("").to_string();
        let flags = u32::from_str_radix(&field("flags:"), 8).context("fdinfo flags")?;
        let writable = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        let mut h = Held {
            fd,
            kind,
            writable,
            name: String::new(),
            key_size: field("key_size:").parse().unwrap_or(0),
            value_size: field("value_size:").parse().unwrap_or(0),
        };
        if h.kind == "bpf-map" {
            h.name = map_name(take(pid, fd)?.as_fd())?;
        }
        out.push(h);
    }
    Ok(out)
}

/// A copy of `pid`'s descriptor `fd` (same open file, same access mode).
pub fn take(pid: u32, fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain system calls; each new descriptor is owned at once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_open");
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_getfd");
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: attr is valid for its size; the kernel reads (and for info, writes) at most that.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The map's name (BPF_OBJ_GET_INFO_BY_FD).
fn map_name(map: BorrowedFd<'_>) -> Result<String> {
    #[repr(C)]
    #[derive(Default)]
    struct MapInfo {
        kind: u32,
        id: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        name: [u8; 16],
    }
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
        _rest: [u64; 4],
    }
    let mut info = MapInfo::default();
    let mut attr = InfoByFd {
        bpf_fd: map.as_raw_fd() as u32,
        info_len: std::mem::size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
        _rest: [0; 4],
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    let end = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
    Ok(String::from_utf8_lossy(&info.name[..end]).into_owned())
}

/// Writes a zeroed value under a zeroed key (BPF_MAP_UPDATE_ELEM): what an attacker's
/// first write would be.
pub fn write_zeros(map: BorrowedFd<'_>, key_size: usize, value_size: usize) -> std::io::Result<()> {
    #[repr(C)]
    struct Update {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
        _rest: [u64; 4],
    }
    let key = vec![0u8; key_size.max(1)];
    // Per-CPU maps take one value per possible CPU, each 8-byte aligned: room for plenty.
    let value = vec![0u8; value_size.next_multiple_of(8).max(8) * 1024];
    let mut attr = Update {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: 0,
        _rest: [0; 4],
    };
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}
