//! Uplinks that appear after start, or come back, get the uplink kill-switch.
//!
//! When ttp chose its uplinks itself (no `--uplink`: the interfaces with a default
//! route), an interface that gains a default route later (a Wi-Fi reconnect, USB
//! tethering, a bridge that took the NIC over) must not be a way around the TC
//! kill-switch. And an uplink that goes and comes back under its name (a USB modem
//! unplugged and plugged in, named with `--uplink` or not) is a new interface to the
//! kernel, which detached the old one's programs with it. The monitor (root: attaching
//! needs `CAP_NET_ADMIN`, which the daemon gave up) follows rtnetlink's link and route
//! events on a thread of its own, and on each one makes sure every uplink there now has
//! `tc_egress` attached ([`crate::datapath::tcx::ensure`]): the program the datapath
//! pinned, its link pinned beside the others, so a stop or a crash treats it like them.
//!
//! What it cannot close: the moment between the kernel adding the route or the interface
//! and the event's handling (milliseconds), in which only the cgroup programs hold
//! governed sockets.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rtnetlink::MulticastGroup;
use ttp_common::programs::TC_EGRESS;

use crate::datapath::{
    tcx::{self, Attached, Direction},
    Maps, PinLayout,
};

/// Which interfaces the monitor keeps the uplink kill-switch on.
#[derive(Clone, Debug)]
pub enum Follow {
    /// Those named with `--uplink`, whenever they exist.
    Named(Vec<String>),
    /// Every interface with a default route but these (the gateway's: names, or prefixes
    /// and `*`).
    DefaultRoutes { skip: Vec<String> },
}

/// Follows route and link changes until the process ends. Blocking: run it on a thread
/// of its own.
pub fn follow(pin_dir: PathBuf, uplinks: Follow) {
    let layout = PinLayout::new(&pin_dir);
    // This instance's maps, opened once: a newer instance's are not ours to write.
    let mut maps = match Maps::open_pinned(&layout.maps()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("not following uplinks (new ones get no TC kill-switch until the next start): {e:#}");
            return;
        }
    };
    crate::netwatch::follow(
        &[MulticastGroup::Link, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route],
        "not following uplinks (a new default-route interface gets its TC kill-switch when following resumes)",
        || attach(&layout, &mut maps, &uplinks),
    );
}

/// Attaches the kill-switch to every uplink there now that has none on it.
fn attach(layout: &PinLayout, maps: &mut Maps, uplinks: &Follow) {
    let now = match uplinks {
        Follow::Named(names) => names.clone(),
        Follow::DefaultRoutes { skip } => match default_uplinks() {
            Ok(u) => u.into_iter().filter(|i| !skip.iter().any(|s| crate::ifname::matches(s, i))).collect(),
            Err(_) => return,
        },
    };
    for iface in &now {
        // A named uplink that is not there (unplugged) is nothing to attach to.
        let Ok((index, l2)) = crate::datapath::link_of(iface) else { continue };
        // Its link-layer length first: the program reads it for every frame.
        let done =
            maps.set_uplink(index, l2).and_then(|()| tcx::ensure(layout, TC_EGRESS, iface, index, Direction::Egress));
        match done {
            Ok(Attached::Already) => {}
            Ok(Attached::New) => {
                tracing::warn!("{iface} now carries a default route: the uplink kill-switch is attached to it")
            }
            Ok(Attached::Again) => {
                tracing::warn!("uplink {iface} was made again: the kill-switch is attached to it again")
            }
            Err(e) => tracing::error!("{iface} is an uplink, and attaching the kill-switch to it failed: {e:#}"),
        }
    }
    // Entries of interfaces that are gone: a bounded map must not fill with them.
    if let Err(e) = maps.retain_uplinks(crate::ifname::index_exists) {
        tracing::warn!("{e:#}");
    }
}

/// The interfaces that carry a default route (IPv4 or IPv6) in the main table: the
/// uplinks when none are named. A route dump over rtnetlink, made synchronously (its
/// callers are sync, some on a runtime's thread; one request and its reply need none).
pub fn default_uplinks() -> Result<Vec<String>> {
    use rtnetlink::packet_route::AddressFamily;
    let mut names = std::collections::BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for index in default_route_interfaces(family).context("reading the routing table (rtnetlink)")? {
            // An interface gone since the dump has no name any more, and is no uplink.
            if let Ok(name) = nix::net::if_::if_indextoname(index) {
                let name = name.to_string_lossy().into_owned();
                if name != "lo" {
                    names.insert(name);
                }
            }
        }
    }
    if names.is_empty() {
        anyhow::bail!("no interface carries a default route: name the uplinks with --uplink IFACE");
    }
    Ok(names.into_iter().collect())
}

/// The output interfaces of the main table's default unicast routes of `family` (each
/// next hop of a multipath route counts).
fn default_route_interfaces(family: rtnetlink::packet_route::AddressFamily) -> std::io::Result<Vec<u32>> {
    use rtnetlink::{
        packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST},
        packet_route::{
            route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
            RouteNetlinkMessage,
        },
        sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    };
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut query = RouteMessage::default();
    query.header.address_family = family;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetRoute(query)));
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut found = Vec::new();
    let mut rx = vec![0; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => return Err(std::io::Error::other(format!("route dump: {e:?}"))),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                    let table = r
                        .attributes
                        .iter()
                        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
                        .unwrap_or(u32::from(r.header.table));
                    if r.header.destination_prefix_length == 0
                        && r.header.kind == RouteType::Unicast
                        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
                    {
                        for a in &r.attributes {
                            match a {
                                RouteAttribute::Oif(i) => found.push(*i),
                                RouteAttribute::MultiPath(hops) => found.extend(hops.iter().map(|h| h.interface_index)),
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The dump agrees with `ip route` (iproute2) on this host's default routes.
    #[test]
    fn default_uplinks_are_the_interfaces_of_the_default_routes() {
        let mut want = std::collections::BTreeSet::new();
        for family in ["-4", "-6"] {
            let out = std::process::Command::new("ip")
                .args([family, "route", "show", "default", "table", "main"])
                .output()
                .expect("ip (iproute2), to compare with");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                // `default via A dev X ...`, or a multipath route's `nexthop via A dev X ...` lines.
                if let Some(i) = words.iter().position(|w| *w == "dev") {
                    want.insert(words[i + 1].to_string());
                }
            }
        }
        match super::default_uplinks() {
            Ok(got) => assert_eq!(got.into_iter().collect::<std::collections::BTreeSet<_>>(), want),
            Err(e) => assert!(want.is_empty(), "{e:#}, but ip route shows {want:?}"),
        }
    }
}
