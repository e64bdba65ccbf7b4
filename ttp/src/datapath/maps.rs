//! Typed handles on the datapath's maps, whether just loaded or reopened from their pins.
//!
//! Root owns CONFIG, the bypass sets, DOH_ADDRS, UPLINKS, GATEWAYS and LOCAL_V4/V6: every map
//! a verdict of the kill-switch depends on. Only root's processes (the start, the monitor,
//! the CLI) hold them writable, as [`Maps`]. The programs own ORIG_DST, EXEMPT_SOCK and
//! CONN_DST. The daemon, once it has given up root, holds [`ServiceMaps`]: COUNTERS
//! read-only, and CONN_DST, which it consumes and which no verdict reads. So code
//! running as the service user (a compromised daemon) cannot write its way past the
//! kill-switch: the kernel refuses writes through a read-only descriptor whoever makes them.

use std::{
    collections::HashSet,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use ttp_common::{flags, maps as names, Config, Counter, IpKey, Origin, Refused, SockAddr, AF_INET};

use super::Policy;

/// A redirected connection as the kernel recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOrigin {
    /// The destination the application asked for.
    pub dst: SocketAddr,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the connecting task.
    pub cgroup: u64,
}

/// Every map root reads or writes.
pub struct Maps {
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    bypass_uid: HashMap<MapData, u32, u8>,
    bypass_gid: HashMap<MapData, u32, u8>,
    bypass_cgroup: HashMap<MapData, u64, u8>,
    doh: HashMap<MapData, IpKey, u8>,
    uplinks: HashMap<MapData, u32, u32>,
    gateways: HashMap<MapData, u32, u32>,
    local_v4: HashMap<MapData, u32, u8>,
    local_v6: HashMap<MapData, [u32; 4], u8>,
}

/// The maps that are pinned, in pin order. EXEMPT_SOCK, ORIG_DST and INBOUND are pinned
/// too so that `bpftool` can inspect a crashed instance, though userspace never touches
/// them.
pub const PINNED: [&str; 15] = [
    names::CONFIG,
    names::COUNTERS,
    names::BYPASS_UID,
    names::BYPASS_GID,
    names::BYPASS_CGROUP,
    names::DOH_ADDRS,
    names::CONN_DST,
    names::UPLINKS,
    names::GATEWAYS,
    names::LOCAL_V4,
    names::LOCAL_V6,
    names::ORIG_DST,
    names::EXEMPT_SOCK,
    names::REFUSALS,
    names::INBOUND,
];

impl Maps {
    /// Builds the handles from maps taken out of a loaded object (or opened from pins).
    pub fn from_maps(mut take: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        macro_rules! get {
            ($name:expr) => {
                typed(take($name)?, $name)?
            };
        }
        Ok(Maps {
            config: get!(names::CONFIG),
            counters: get!(names::COUNTERS),
            bypass_uid: get!(names::BYPASS_UID),
            bypass_gid: get!(names::BYPASS_GID),
            bypass_cgroup: get!(names::BYPASS_CGROUP),
            doh: get!(names::DOH_ADDRS),
            uplinks: get!(names::UPLINKS),
            gateways: get!(names::GATEWAYS),
            local_v4: get!(names::LOCAL_V4),
            local_v6: get!(names::LOCAL_V6),
        })
    }

    /// Reopens the maps of a running (or crashed) instance from its pin directory.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self> {
        Self::from_maps(|name| open_pin(maps_dir, name, Access::ReadWrite))
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("reading CONFIG")
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        self.config.set(0, cfg, 0).context("writing CONFIG")
    }

    /// Turns lockdown on or off: on, every governed packet except loopback and the
    /// daemon's is dropped and every non-loopback connect refused.
    pub fn set_lockdown(&mut self, on: bool) -> Result<()> {
        let mut cfg = self.config()?;
        if on {
            cfg.flags |= flags::LOCKDOWN;
        } else {
            cfg.flags &= !flags::LOCKDOWN;
        }
        self.set_config(cfg)
    }

    /// Turns lockdown on or off in a pinned instance through its CONFIG alone: works on
    /// the pins of any version of ttp (an older one may lack maps this one has), so a
    /// takeover, an upgrade or a stop can close the host before anything else.
    pub fn set_lockdown_pinned(maps_dir: &Path, on: bool) -> Result<()> {
        let mut config: Array<MapData, Config> =
            typed(open_pin(maps_dir, names::CONFIG, Access::ReadWrite)?, names::CONFIG)?;
        let mut cfg = config.get(&0, 0).context("reading CONFIG")?;
        if on {
            cfg.flags |= flags::LOCKDOWN;
        } else {
            cfg.flags &= !flags::LOCKDOWN;
        }
        config.set(0, cfg, 0).context("writing CONFIG")
    }

    /// CONFIG and the counters of a pinned instance, opened alone: like
    /// [`Maps::set_lockdown_pinned`], readable on the pins of any version of ttp (for
    /// `ttp status` and `ttp diagnose` after an upgrade over a crashed instance).
    pub fn read_pinned_state(maps_dir: &Path) -> Result<(Config, Vec<(Counter, u64)>)> {
        let config: Array<MapData, Config> =
            typed(open_pin(maps_dir, names::CONFIG, Access::ReadOnly)?, names::CONFIG)?;
        let counters: PerCpuArray<MapData, u64> =
            typed(open_pin(maps_dir, names::COUNTERS, Access::ReadOnly)?, names::COUNTERS)?;
        Ok((config.get(&0, 0).context("reading CONFIG")?, sum_counters(&counters)?))
    }

    /// Makes the policy maps equal to `policy` (live: takes effect for the next connect or
    /// packet). Returns the flags the policy implies, for CONFIG.
    pub fn apply_policy(&mut self, policy: &Policy, bypass_cgroup_ids: &[u64]) -> Result<u32> {
        sync(&mut self.bypass_uid, policy.bypass_uids.iter().copied(), "BYPASS_UID")?;
        sync(&mut self.bypass_gid, policy.bypass_gids.iter().copied(), "BYPASS_GID")?;
        sync(&mut self.bypass_cgroup, bypass_cgroup_ids.iter().copied(), "BYPASS_CGROUP")?;
        sync(&mut self.doh, policy.doh_resolvers.iter().map(ip_key), "DOH_ADDRS")?;
        let mut f = 0;
        if policy.lan_bypass {
            f |= flags::LAN_BYPASS;
        }
        if !policy.lan_discovery {
            f |= flags::NO_LAN_DISCOVERY;
        }
        if policy.allow_root {
            f |= flags::ALLOW_ROOT;
        }
        if policy.ipv6 == super::Ipv6Policy::Drop {
            f |= flags::IPV6_DROP;
        }
        if !bypass_cgroup_ids.is_empty() {
            f |= flags::HAS_BYPASS_CGROUPS;
        }
        Ok(f)
    }

    pub fn set_uplink(&mut self, ifindex: u32, l2_len: u32) -> Result<()> {
        self.uplinks.insert(ifindex, l2_len, 0).context("writing UPLINKS")
    }

    /// Marks an interface as a gateway interface (its ingress is steered into Tor).
    pub fn set_gateway(&mut self, ifindex: u32, l2_len: u32) -> Result<()> {
        self.gateways.insert(ifindex, l2_len, 0).context("writing GATEWAYS")
    }

    /// Keeps the UPLINKS entries of the interfaces `keep` names (by index), removes the
    /// others: interfaces that come and go must not fill the bounded map.
    pub fn retain_uplinks(&mut self, keep: impl Fn(u32) -> bool) -> Result<()> {
        retain(&mut self.uplinks, keep, "UPLINKS")
    }

    /// [`Maps::retain_uplinks`] for GATEWAYS.
    pub fn retain_gateways(&mut self, keep: impl Fn(u32) -> bool) -> Result<()> {
        retain(&mut self.gateways, keep, "GATEWAYS")
    }

    /// Makes LOCAL_V4 this host's addresses: the gateway program passes a gateway
    /// client's new TCP connection to one of them to the host's own services.
    pub fn set_local_v4(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        sync(&mut self.local_v4, addrs.iter().map(|a| u32::from_ne_bytes(a.octets())), "LOCAL_V4")
    }

    /// Makes LOCAL_V6 this host's IPv6 addresses, for the same purpose.
    pub fn set_local_v6(&mut self, addrs: &[Ipv6Addr]) -> Result<()> {
        sync(&mut self.local_v6, addrs.iter().map(words), "LOCAL_V6")
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        sum_counters(&self.counters)
    }
}

/// Sums each counter over CPUs.
fn sum_counters(counters: &PerCpuArray<MapData, u64>) -> Result<Vec<(Counter, u64)>> {
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = counters.get(&(c as u32), 0).context("reading COUNTERS")?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}

/// The daemon's maps once it runs as the service user (opened by root before the drop,
/// see [`crate::daemon`]): COUNTERS through a read-only descriptor, CONN_DST
/// writable (the TransPort deletes what it consumed; no program decides anything by it,
/// so a write there misleads only the daemon itself). Lockdown is the monitor's to set
/// and lift ([`crate::monitor`]).
pub struct ServiceMaps {
    counters: PerCpuArray<MapData, u64>,
    conn_dst: HashMap<MapData, SockAddr, Origin>,
    /// Read-only; absent when the pins are an older ttp's (taken over without it).
    refusals: Option<HashMap<MapData, Refused, u64>>,
}

impl ServiceMaps {
    pub fn open_pinned(maps_dir: &Path) -> Result<Self> {
        let open = |name, access| open_pin(maps_dir, name, access);
        Ok(ServiceMaps {
            counters: typed(open(names::COUNTERS, Access::ReadOnly)?, names::COUNTERS)?,
            conn_dst: typed(open(names::CONN_DST, Access::ReadWrite)?, names::CONN_DST)?,
            refusals: open(names::REFUSALS, Access::ReadOnly).and_then(|m| typed(m, names::REFUSALS)).ok(),
        })
    }

    /// What the kill-switch refused, by whom: (counter, uid, cgroup id, count), the most
    /// frequent first, at most `max`. A key whose counter this version does not know is
    /// left out.
    pub fn refusals(&self, max: usize) -> Vec<(Counter, u32, u64, u64)> {
        let Some(map) = &self.refusals else { return Vec::new() };
        let mut v: Vec<_> = map
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, n)| Some((Counter::from_index(k.counter)?, k.uid, k.cgroup, n)))
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.3));
        v.truncate(max);
        v
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        sum_counters(&self.counters)
    }

    /// Where a redirected TCP client wanted to go and who it is, found by the client's
    /// address as the TransPort sees it (its peer address). The entry is consumed.
    pub fn take_origin(&mut self, peer: SocketAddr) -> Option<ConnOrigin> {
        let key = sock_addr(peer);
        let o = self.conn_dst.get(&key, 0).ok()?;
        let _ = self.conn_dst.remove(&key);
        Some(ConnOrigin { dst: socket_addr(&o.dst), uid: o.uid, gid: o.gid, cgroup: o.cgroup })
    }

    /// [`ServiceMaps::take_origin`], destination only.
    pub fn take_original_destination(&mut self, peer: SocketAddr) -> Option<SocketAddr> {
        self.take_origin(peer).map(|o| o.dst)
    }
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(m: Map, name: &str) -> Result<T> {
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

/// How a pinned map is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadWrite,
    /// The kernel refuses every update and delete through the descriptor (BPF_F_RDONLY),
    /// whatever the holder's privileges.
    ReadOnly,
}

fn open_pin(maps_dir: &Path, name: &str, access: Access) -> Result<Map> {
    let path = maps_dir.join(name);
    let data = match access {
        Access::ReadWrite => MapData::from_pin(&path).map_err(anyhow::Error::from),
        // aya 0.14 opens pins read-write only: BPF_OBJ_GET by hand, then aya takes the fd.
        Access::ReadOnly => super::obj_get(&path, super::BPF_F_RDONLY)
            .map_err(anyhow::Error::from)
            .and_then(|fd| MapData::from_fd(fd).map_err(anyhow::Error::from)),
    }
    .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("pinned map {} has an unknown type", path.display()))
}

fn sync<K: aya::Pod + Eq + Hash>(
    map: &mut HashMap<MapData, K, u8>,
    want: impl Iterator<Item = K>,
    name: &str,
) -> Result<()> {
    let want: HashSet<K> = want.collect();
    let have: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in have.iter().filter(|k| !want.contains(k)) {
        map.remove(k).with_context(|| format!("removing from {name}"))?;
    }
    for k in want {
        map.insert(k, 1, 0).with_context(|| format!("writing {name} (is it full?)"))?;
    }
    Ok(())
}

fn retain(map: &mut HashMap<MapData, u32, u32>, keep: impl Fn(u32) -> bool, name: &str) -> Result<()> {
    let gone: Vec<u32> = map.keys().filter_map(Result::ok).filter(|k| !keep(*k)).collect();
    for k in gone {
        map.remove(&k).with_context(|| format!("removing a gone interface from {name}"))?;
    }
    Ok(())
}

/// std address -> the kernel-side representation (v4-mapped IPv6 becomes IPv4).
pub fn sock_addr(a: SocketAddr) -> SockAddr {
    match a.ip().to_canonical() {
        IpAddr::V4(v4) => SockAddr::v4(u32::from_ne_bytes(v4.octets()), a.port()),
        IpAddr::V6(v6) => SockAddr::v6(words(&v6), a.port()),
    }
}

pub fn socket_addr(a: &SockAddr) -> SocketAddr {
    if a.family == AF_INET {
        SocketAddr::new(Ipv4Addr::from(a.addr[0].to_ne_bytes()).into(), a.port)
    } else {
        let mut b = [0u8; 16];
        for (i, w) in a.addr.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        SocketAddr::new(Ipv6Addr::from(b).into(), a.port)
    }
}

fn words(v6: &Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    core::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

fn ip_key(ip: &IpAddr) -> IpKey {
    IpKey::of(&sock_addr(SocketAddr::new(*ip, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_kernel_layout() {
        for s in ["93.184.216.34:80", "[2001:db8::1]:443", "127.0.0.1:1"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(socket_addr(&sock_addr(a)), a);
        }
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:53".parse().unwrap();
        assert_eq!(socket_addr(&sock_addr(mapped)), "10.1.2.3:53".parse().unwrap());
        // network byte order in memory, as the kernel's user_ip4
        assert_eq!(sock_addr("1.2.3.4:0".parse().unwrap()).addr[0].to_ne_bytes(), [1, 2, 3, 4]);
    }
}
