//! Giving up privileges once the daemon is set up.
//!
//! Setting up needs most of root: loading and attaching BPF programs, pinning, mounting
//! bpffs, creating cgroups. Running needs little: BPF map access through the descriptors
//! already open (stream origins; counters read-only: `CAP_BPF`, see
//! [`crate::datapath::ServiceMaps`]); lockdown is the monitor's to set. What needs root at the
//! end (destroying sockets, unpinning, removing cgroups) is the monitor's job (see
//! [`crate::monitor`]).
//!
//! So the daemon becomes the service user (see [`crate::user`]) and keeps no capability at
//! all on Linux 5.19 and later, `CAP_BPF` alone before (see [`daemon_keep`]): everything
//! else leaves the effective, permitted, inheritable, ambient and bounding sets,
//! `no_new_privs` is set, and the securebits keep a later exec (Arti runs obfs4proxy)
//! from regaining capabilities. A compromised Arti, or a bug in code parsing
//! network input, then cannot load modules, ptrace, mount, change uids, read or write
//! root's files, open raw sockets, or signal other users' processes.
//!
//! The uid changes with the capabilities still held (`SECBIT_NO_SETUID_FIXUP` stops the
//! kernel from clearing them at that moment); the capabilities are cut to what is kept
//! just after.
//!
//! Capabilities belong to threads, not processes, and the async runtime's threads already
//! run: the drop is applied in every thread, each in its own context, by a real-time signal
//! whose handler makes the raw system calls (what libcap's "psx" does). Written by hand
//! because the capability crates act on the calling thread only and allocate, which a
//! signal handler must not.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::user::ServiceUser;

/// Capability numbers (linux/capability.h).
pub const CAP_BPF: u32 = 39;
pub const CAP_NET_ADMIN: u32 = 12;
/// What the running daemon keeps where the kernel needs it (see [`daemon_keep`]).
pub const KEEP: u64 = 1 << CAP_BPF;

/// What the running daemon keeps on this kernel. It uses bpf(2) only through the map
/// descriptors it already holds. Since Linux 5.19 ("bpf: refine
/// kernel.unprivileged_bpf_disabled behaviour"), `kernel.unprivileged_bpf_disabled` refuses
/// only what creates (maps, programs, BTF) to a caller without `CAP_BPF`, and a held
/// descriptor works without any capability (measured on 6.18 with the sysctl at 2): the
/// daemon keeps nothing, so a compromised one cannot create maps or load socket filters
/// either. Before 5.19 every bpf(2) command needs `CAP_BPF` while the sysctl is set, so
/// the daemon keeps it there.
pub fn daemon_keep() -> u64 {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    keep_for_kernel(&release, disabled)
}

/// [`daemon_keep`] for a kernel `release` and its `unprivileged_bpf_disabled` (unknown:
/// assume set). An unparsable release keeps `CAP_BPF`: better a capability too many than
/// a daemon that cannot read its maps.
pub fn keep_for_kernel(release: &str, unprivileged_bpf_disabled: Option<u32>) -> u64 {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    let version = match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => Some((major, minor)),
        _ => None,
    };
    match (version, unprivileged_bpf_disabled) {
        (_, Some(0)) => 0,
        (Some(v), _) if v >= (5, 19) => 0,
        _ => KEEP,
    }
}

/// The capabilities of `mask`, by name (for logs).
pub fn names(mask: u64) -> String {
    match mask {
        0 => "no capabilities".into(),
        KEEP => "CAP_BPF only".into(),
        m => format!("capabilities {m:#x}"),
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// SECBIT_NOROOT, its lock, SECBIT_NO_SETUID_FIXUP, its lock.
const SECBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08;

static KEEP_MASK: AtomicU64 = AtomicU64::new(KEEP);
static LAST_CAP: AtomicU64 = AtomicU64::new(40);
static UID: AtomicU32 = AtomicU32::new(0);
static GID: AtomicU32 = AtomicU32::new(0);
/// Supplementary groups: at most [`MAX_GROUPS`], copied into a fixed array for the handler.
const MAX_GROUPS: usize = 4;
static GROUPS: [AtomicU32; MAX_GROUPS] = [const { AtomicU32::new(0) }; MAX_GROUPS];
static NGROUPS: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicI32 = AtomicI32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Becomes `user` and drops every capability but what this kernel needs the daemon to keep
/// ([`daemon_keep`]), in every thread of the process, for good. Returns what was kept.
pub fn drop_privileges(user: &ServiceUser) -> Result<u64> {
    let keep = daemon_keep();
    drop_to(user, keep)?;
    Ok(keep)
}

/// Becomes `user` in every thread, keeping only the capabilities in `keep` (a mask of
/// `1 << CAP_*`), and proves it (see [`check_dropped`]).
pub fn drop_to(user: &ServiceUser, keep: u64) -> Result<()> {
    if user.groups.len() > MAX_GROUPS {
        bail!("at most {MAX_GROUPS} groups for the service user");
    }
    UID.store(user.uid, Ordering::SeqCst);
    GID.store(user.gid, Ordering::SeqCst);
    for (slot, g) in GROUPS.iter().zip(&user.groups) {
        slot.store(*g, Ordering::SeqCst);
    }
    NGROUPS.store(user.groups.len(), Ordering::SeqCst);
    let last: u64 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    LAST_CAP.store(last, Ordering::SeqCst);
    KEEP_MASK.store(keep, Ordering::SeqCst);
    let sig = libc::SIGRTMIN() + 4;
    // SAFETY: installs a handler that only makes raw system calls and touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("installing the privilege-drop handler");
        }
    }
    let errno = apply_here();
    if errno != 0 {
        return Err(std::io::Error::from_raw_os_error(errno)).context("dropping capabilities");
    }
    // SAFETY: plain system calls.
    let (pid, me) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) };
    let mut done: HashSet<i32> = HashSet::from([me]);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Threads may start meanwhile (they inherit whatever their creator had): scan until a
    // pass finds none left.
    loop {
        let pending: Vec<i32> = threads()?.into_iter().filter(|t| !done.contains(t)).collect();
        if pending.is_empty() {
            break;
        }
        let before = DONE.load(Ordering::SeqCst);
        let mut sent = 0;
        for tid in &pending {
            // SAFETY: signals a thread of this process.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, *tid, sig) } == 0 {
                sent += 1;
            }
            done.insert(*tid); // gone threads (ESRCH) need nothing
        }
        while DONE.load(Ordering::SeqCst) < before + sent {
            if Instant::now() > deadline {
                bail!("threads did not drop their capabilities within 5 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let errno = FAILED.load(Ordering::SeqCst);
        if errno != 0 {
            return Err(std::io::Error::from_raw_os_error(errno)).context("dropping capabilities in a thread");
        }
    }
    // Proof, from the kernel's point of view, for every thread.
    for tid in threads()? {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
        check_dropped(&status, user, keep).with_context(|| format!("thread {tid}"))?;
    }
    Ok(())
}

/// Checks one thread's `/proc/.../status`: every uid and gid the service user's, its own
/// groups and no others, no capability but `keep` in the effective, permitted and
/// bounding sets, none inheritable or ambient, and `no_new_privs` set. A field that is
/// missing fails the check: unproven is not dropped.
pub fn check_dropped(status: &str, user: &ServiceUser, keep: u64) -> Result<()> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .with_context(|| format!("no {name} in the thread's status"))
    };
    let caps = |name: &str| -> Result<u64> {
        u64::from_str_radix(field(name)?, 16).with_context(|| format!("{name} is not a capability set"))
    };
    for (name, allowed) in [("CapEff", keep), ("CapPrm", keep), ("CapBnd", keep), ("CapInh", 0), ("CapAmb", 0)] {
        let set = caps(name)?;
        if set & !allowed != 0 {
            bail!("{name} still holds capabilities {:x}", set & !allowed);
        }
    }
    for (name, want) in [("Uid", user.uid), ("Gid", user.gid)] {
        let ids = field(name)?;
        if ids.split_whitespace().any(|u| u.parse() != Ok(want)) {
            bail!("{name} is {ids}, not {want} throughout");
        }
    }
    let mut groups: Vec<u32> = field("Groups")?.split_whitespace().filter_map(|g| g.parse().ok()).collect();
    let mut want = user.groups.clone();
    groups.sort_unstable();
    want.sort_unstable();
    want.dedup();
    if groups != want {
        bail!("supplementary groups are {groups:?}, not {want:?}");
    }
    if field("NoNewPrivs")? != "1" {
        bail!("no_new_privs is not set");
    }
    Ok(())
}

fn threads() -> Result<Vec<i32>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").context("listing threads")?.flatten() {
        if let Some(t) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(t);
        }
    }
    Ok(v)
}

extern "C" fn handler(_: libc::c_int) {
    let errno = apply_here();
    if errno != 0 {
        FAILED.store(errno, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
}

/// The drop, in the calling thread: raw system calls only (it runs in a signal handler).
/// Returns 0 or an errno.
fn apply_here() -> i32 {
    let keep = KEEP_MASK.load(Ordering::SeqCst);
    let last = LAST_CAP.load(Ordering::SeqCst);
    // SAFETY: prctl and capset with valid arguments; no memory is shared beyond the stack.
    unsafe {
        let errno = || *libc::__errno_location();
        // Needs CAP_SETPCAP, which goes below: first. Harmless if refused.
        libc::prctl(libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0);
        for cap in 0..=last {
            if keep & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                // EINVAL: a capability this kernel does not know.
                if errno() != libc::EINVAL {
                    return errno();
                }
            }
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
        // Raw system calls change this thread only (glibc's wrappers would signal every
        // thread themselves, which is not safe from a handler): every thread runs this.
        let mut groups = [0 as libc::gid_t; MAX_GROUPS];
        let n = NGROUPS.load(Ordering::SeqCst).min(MAX_GROUPS);
        for (g, slot) in groups.iter_mut().zip(&GROUPS).take(n) {
            *g = slot.load(Ordering::SeqCst);
        }
        let (uid, gid) = (UID.load(Ordering::SeqCst), GID.load(Ordering::SeqCst));
        if libc::syscall(libc::SYS_setgroups, n, groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            return errno();
        }
        let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [
            CapData { effective: keep as u32, permitted: keep as u32, inheritable: 0 },
            CapData { effective: (keep >> 32) as u32, permitted: (keep >> 32) as u32, inheritable: 0 },
        ];
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) != 0 {
            return errno();
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return errno();
        }
    }
    0
}

/// Runs `f` (which creates sockets) with the calling thread's file-system uid and gid set
/// to `user`'s, then back to root's. A socket's owner is the file-system uid of the thread
/// that created it, and the kill-switch exempts the daemon's sockets by cgroup *and*
/// owner: sockets bound while still root (a port below 1024 needs it), but owned by the
/// service user, send like the rest of the daemon (a reply to a gateway client, a SOCKS
/// port on a LAN address). Binding needs `CAP_NET_BIND_SERVICE`, which a file-system uid
/// does not touch. `f` must not yield to other tasks: the change is this thread's.
pub fn owned_by<T>(user: &ServiceUser, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsuid/setfsgid only change this thread's file-system ids; they cannot
    // fail in a way that matters here (the ids are read back by the kernel on use).
    let (old_uid, old_gid) = unsafe { (libc::setfsuid(user.uid), libc::setfsgid(user.gid)) };
    let r = f();
    // SAFETY: as above, back to what the thread had.
    unsafe {
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPPED: &str = "Name:\tttp\nUid:\t64123\t64123\t64123\t64123\nGid:\t64123\t64123\t64123\t64123\n\
        Groups:\t64123 \nNoNewPrivs:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000008000000000\n\
        CapEff:\t0000008000000000\nCapBnd:\t0000008000000000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn the_self_check_proves_every_set_and_id_not_only_the_effective_ones() {
        let user = ServiceUser { uid: 64123, gid: 64123, groups: vec![64123] };
        check_dropped(DROPPED, &user, KEEP).unwrap();
        assert!(check_dropped(DROPPED, &user, 1 << CAP_NET_ADMIN).is_err(), "CAP_BPF is not CAP_NET_ADMIN");
        for (from, to, what) in [
            ("CapPrm:\t0000008000000000", "CapPrm:\t000001ffffffffff", "CapPrm"),
            ("CapBnd:\t0000008000000000", "CapBnd:\t000001ffffffffff", "CapBnd"),
            ("CapAmb:\t0000000000000000", "CapAmb:\t0000000000000400", "CapAmb"),
            ("CapInh:\t0000000000000000", "CapInh:\t0000000000000001", "CapInh"),
            ("NoNewPrivs:\t1", "NoNewPrivs:\t0", "no_new_privs"),
            ("Groups:\t64123 ", "Groups:\t0 64123 ", "groups"),
            ("Gid:\t64123\t64123\t64123\t64123", "Gid:\t64123\t0\t64123\t64123", "Gid"),
            ("Uid:\t64123\t64123\t64123\t64123", "Uid:\t64123\t64123\t0\t64123", "Uid"),
            ("NoNewPrivs:\t1\n", "", "NoNewPrivs"),
        ] {
            let e = format!("{:#}", check_dropped(&DROPPED.replace(from, to), &user, KEEP).unwrap_err());
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn the_daemon_keeps_cap_bpf_only_on_kernels_that_need_it() {
        for (release, sysctl, keep) in [
            ("6.18.44-fc-v1272", Some(2), 0),
            ("5.19.0", Some(1), 0),
            ("5.18.19-generic", Some(2), KEEP),
            ("5.10.0-23-amd64", Some(1), KEEP),
            ("5.10.0-23-amd64", Some(0), 0),
            ("garbage", Some(2), KEEP),
            ("6.1.0", None, 0),
        ] {
            assert_eq!(keep_for_kernel(release, sysctl), keep, "{release} {sysctl:?}");
        }
    }
}
