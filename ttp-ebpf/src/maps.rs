//! The maps, and the small helpers every program uses to read them.
//! Userspace owns the configuration maps; the programs own the connection maps.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use ttp_common::{
    flags, Config, Counter, Exempt, Flow, IpKey, Origin, Refused, SockAddr, MAX_CGROUP_DEPTH, TAG_OTHER_NETNS,
};
use ttp_ebpf::Netns;

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map]
pub static BYPASS_UID: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static BYPASS_GID: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static BYPASS_CGROUP: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static DOH_ADDRS: HashMap<IpKey, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static ORIG_DST: LruHashMap<u64, Origin> = LruHashMap::with_max_entries(65536, 0);
#[map]
pub static CONN_DST: LruHashMap<SockAddr, Origin> = LruHashMap::with_max_entries(65536, 0);
#[map]
pub static EXEMPT_SOCK: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);
#[map]
pub static UPLINKS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);
#[map]
pub static GATEWAYS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);
#[map]
pub static LOCAL_V4: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub static LOCAL_V6: HashMap<[u32; 4], u8> = HashMap::with_max_entries(1024, 0);
/// Least recently refused first out: a program that keeps trying stays in.
#[map]
pub static REFUSALS: LruHashMap<Refused, u64> = LruHashMap::with_max_entries(1024, 0);

/// LAN machines' flows to machines behind a gateway interface (published ports); least
/// recently used first out, so a busy server's old flows make room for new ones.
#[map]
pub static INBOUND: LruHashMap<Flow, u8> = LruHashMap::with_max_entries(16384, 0);

/// The configuration; a zeroed one (no READY flag) makes every program fail closed.
#[inline(always)]
pub fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

/// Counts a refusal of `c` for the task making the call (connect, sendmsg, socket,
/// setsockopt): who tried, as well as how often.
#[inline(always)]
pub fn count_refused_by_current(c: Counter) {
    count(c);
    let uid = aya_ebpf::helpers::bpf_get_current_uid_gid() as u32;
    // SAFETY: plain helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    note_refusal(Refused { cgroup, uid, counter: c as u32 });
}

/// Adds one to `key`'s entry in REFUSALS, making it if new. The entry is shared by every
/// CPU and the add is a plain one (the BPF target has no atomic read-modify-write in
/// stable Rust): two CPUs refusing the same key at the same instant may count once. That
/// is good enough to name who tried; COUNTERS (per CPU) has the exact figures.
#[inline(always)]
pub fn note_refusal(key: Refused) {
    match REFUSALS.get_ptr_mut(&key) {
        // SAFETY: a valid, aligned u64 in the map's value, alive while this program runs.
        Some(p) => unsafe { *p += 1 },
        None => {
            let _ = REFUSALS.insert(&key, &1, 0);
        }
    }
}

/// Exemption by identity: uid, gid, cgroup. `ancestor(level)` returns the cgroup id at
/// `level` of the socket's cgroup (0 once past its depth).
#[inline(always)]
pub fn exempt_by_identity(
    cfg: &Config,
    cgroup: u64,
    uid: u32,
    gid: Option<u32>,
    ancestor: impl Fn(u32) -> u64,
) -> Option<Exempt> {
    if cfg.daemon_cgroup != 0 && cgroup == cfg.daemon_cgroup && ttp_ebpf::daemon_uid_matches(cfg, uid) {
        return Some(Exempt::Daemon);
    }
    if uid == 0 && cfg.has(flags::ALLOW_ROOT) {
        return Some(Exempt::Root);
    }
    // SAFETY (all `get`s): the values are plain u8 flags, copied out at once.
    if unsafe { BYPASS_UID.get(&uid) }.is_some() {
        return Some(Exempt::Uid);
    }
    if let Some(gid) = gid {
        if unsafe { BYPASS_GID.get(&gid) }.is_some() {
            return Some(Exempt::Gid);
        }
    }
    if cfg.has(flags::HAS_BYPASS_CGROUPS) {
        for level in 0..MAX_CGROUP_DEPTH {
            let id = ancestor(level);
            if id == 0 {
                break;
            }
            if unsafe { BYPASS_CGROUP.get(&id) }.is_some() {
                return Some(Exempt::Cgroup);
            }
        }
    }
    None
}

/// Exemption of the calling task (process context: sock_addr and sock hooks).
#[inline(always)]
pub fn exempt_current(cfg: &Config) -> Option<Exempt> {
    let uid_gid = aya_ebpf::helpers::bpf_get_current_uid_gid();
    // SAFETY: plain helpers without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    exempt_by_identity(cfg, cgroup, uid_gid as u32, Some((uid_gid >> 32) as u32), |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level as i32)
    })
}

/// What `sock.rs` recorded for a socket when it was created: its exemption, if any, and
/// whether it was made in another network namespace. An untagged socket (made before
/// ttp started) counts as the host's: redirected, so in a container it fails closed.
#[inline(always)]
pub fn socket_tag(cookie: u64) -> (Option<Exempt>, Netns) {
    // SAFETY: u8 copied out at once.
    match unsafe { EXEMPT_SOCK.get(&cookie) }.copied() {
        Some(1) => (Some(Exempt::Daemon), Netns::Host),
        Some(2) => (Some(Exempt::Root), Netns::Host),
        Some(3) => (Some(Exempt::Uid), Netns::Host),
        Some(4) => (Some(Exempt::Gid), Netns::Host),
        Some(5) => (Some(Exempt::Cgroup), Netns::Host),
        Some(TAG_OTHER_NETNS) => (None, Netns::Other),
        _ => (None, Netns::Host),
    }
}
