//! Tor's connections from an address that no longer works are closed at once.
//!
//! When a link goes down, or its address changes (a new DHCP lease, a laptop's Wi-Fi
//! after resume, the default route moving to another uplink), the daemon's TCP
//! connections to its relays keep their old source address. TCP gives such a connection
//! up only after minutes of retransmissions (tcp_retries2), and meanwhile Arti keeps its
//! channels on it: every stream times out "waiting for answer from exit" (measured: a new
//! address left governed fetches failing for more than three minutes). The monitor (root:
//! SOCK_DESTROY needs CAP_NET_ADMIN) follows rtnetlink's link and address events and
//! destroys those connections: Arti sees its channels close and builds new ones through
//! what works now.
//!
//! Only the daemon's connections (its uid and cgroup, read from /proc, not from the
//! daemon's word): another program's connection across a brief flap (an ssh session) is
//! its own to keep or lose.

use std::{collections::HashSet, net::IpAddr};

use nix::net::if_::InterfaceFlags;
use rtnetlink::MulticastGroup;

/// Follows link and address changes until the process ends, reaping the connections of
/// the daemon `daemon` (a pid). Blocking: run it on a thread of its own.
pub fn follow(daemon: u32) {
    let mut usable = usable_addresses();
    crate::netwatch::follow(
        &[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr],
        "not following address changes (after a network change meanwhile, Tor may take minutes to notice)",
        || {
            let now = usable_addresses();
            let gone: HashSet<IpAddr> = usable.difference(&now).copied().collect();
            if !gone.is_empty() {
                reap(daemon, &gone);
            }
            usable = now;
        },
    );
}

/// Destroys the daemon's TCP connections from an address in `gone` (one that was usable
/// and is not any more). Only such addresses: the daemon's transparent sockets (a gateway
/// client's connection, accepted with its original destination as local address) have
/// local addresses that were never the host's, and stay.
fn reap(daemon: u32, gone: &HashSet<IpAddr>) {
    let Some((uid, cgroup)) = identity(daemon) else { return };
    let doomed = |s: &crate::sockdestroy::DiagSocket| {
        s.uid == uid && s.cgroup == cgroup && !s.listening() && gone.contains(&canonical(s.src.ip()))
    };
    match crate::sockdestroy::destroy_where(doomed) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "the network changed: {n} Tor connections from an address that no longer works closed; Tor reconnects"
        ),
        Err(e) => tracing::warn!("closing Tor's connections after a network change: {e}"),
    }
}

/// The daemon's uid and cgroup id, from /proc (None once it is gone).
fn identity(daemon: u32) -> Option<(u32, u64)> {
    let uid = procfs::process::Process::new(i32::try_from(daemon).ok()?).ok()?.status().ok()?.ruid;
    let cgroup = crate::cgroup::cgroup_id(&crate::cgroup::cgroup_of(daemon).ok()?).ok()?;
    Some((uid, cgroup))
}

/// Addresses of interfaces that are up and have a carrier.
fn usable_addresses() -> HashSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return HashSet::new() };
    addrs
        .filter(|a| a.flags.contains(InterfaceFlags::IFF_UP) && a.flags.contains(InterfaceFlags::IFF_RUNNING))
        .filter_map(|a| {
            let sa = a.address?;
            sa.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| sa.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// An IPv4 address for a v4-mapped IPv6 one (a dual-stack socket's view of it).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
