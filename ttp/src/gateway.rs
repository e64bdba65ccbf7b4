//! Gateway mode's routing: whatever other machines send in on a gateway interface (the
//! tunnel's TUN, a LAN interface named with `--gateway`) is delivered to this host, never
//! forwarded.
//!
//! One policy rule per interface and family (`iif IFACE fwmark M/M lookup 29808`) and one
//! route per family in that table (`local 0.0.0.0/0 dev lo`, `local ::/0 dev lo`): a
//! packet from a gateway interface to any address counts as addressed to us if the TC
//! program on the interface (`ttp-ebpf/src/gateway.rs`) marked it, which it does for
//! everything it lets in ([`ttp_common::GATEWAY_LOCAL_MARK`]). The program hands new TCP
//! connections to the TransPort and DNS queries to the DNSPort, and drops the rest. What
//! it leaves unmarked is routed as usual: a container's answers to a LAN machine's
//! connection to a port it publishes, and the kernel's reverse-path check of packets
//! forwarded *to* the interface (it looks routes up as if from it, without the mark).
//! Set up as root before the daemon gives up root; removed by the monitor at a clean
//! stop, and by `ttp stop` after a crash. Only this table and rules pointing at it are
//! touched: the host's own routes never are.
//!
//! The rules name interfaces, so they hold for a named interface that does not exist yet
//! or is made again; the TC programs are the monitor's to attach when one appears
//! ([`follow_interfaces`]). A `--gateway` value may also be a prefix and `*` (Docker
//! makes a `br-<id>` bridge per user-defined network): every interface whose name starts
//! with it is a gateway interface, and the monitor adds its rules when one appears. In
//! the moment before the monitor attaches (milliseconds after the interface is made,
//! before an engine has put a container behind it), nothing on it is marked and the host
//! routes what arrives as it would without ttp: with the whole host governed, the
//! uplinks' kill-switch drops it (SECURITY.md).
//!
//! The monitor also keeps the program's list of this host's own addresses current
//! ([`follow_local_addresses`]): connections to them go to the host's own services.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        route::{RouteMessage, RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
    MulticastGroup,
};

use crate::datapath::{
    maps::Maps,
    tcx::{self, Attached, Direction},
    PinLayout,
};
use ttp_common::programs::{TC_GATEWAY, TC_GATEWAY_EGRESS};

/// The routing table ttp owns ("tp").
pub const TABLE: u32 = 0x7470;
/// Before the main table (32766), after the local one (0).
pub const PRIORITY: u32 = 7470;

/// What `--gateway` values and the tunnel's interface make rules for at start: every
/// literal name (there or not: its rule waits for it), and what a pattern matches now.
pub fn rule_names(specs: &[String]) -> Vec<String> {
    let mut names: Vec<String> = specs.iter().filter(|s| !s.ends_with('*')).cloned().collect();
    let matched: Vec<String> = crate::ifname::present(specs).into_iter().filter(|n| !names.contains(n)).collect();
    names.extend(matched);
    names
}

/// Installs the rule for each interface and the table's one route, replacing what an
/// earlier instance left.
pub async fn install(interfaces: &[String]) -> Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let conn = tokio::spawn(conn);
    let result = async {
        remove_with(&handle).await?;
        let [(v4, v4_text), (v6, v6_text)] = local_defaults()?;
        let add = |route, text| {
            let req = handle.route().add(route).replace().execute();
            async move { req.await.with_context(|| format!("adding the route `{text} dev lo table {TABLE}`")) }
        };
        add(v4, v4_text).await?;
        // A host without IPv6 serves its gateway clients over IPv4 only; their IPv6, if
        // any, finds no listener and is dropped by the TC program.
        let v6 = match add(v6, v6_text).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("gateway clients' IPv6 is dropped: {e:#}");
                false
            }
        };
        for iface in interfaces {
            add_rules(&handle, iface, v6).await?;
        }
        anyhow::Ok(())
    }
    .await;
    conn.abort();
    result
}

/// The rule `iif IFACE fwmark M/M lookup 29808` for IPv4, and IPv6 if `v6`. One that is
/// there already is no error.
async fn add_rules(handle: &rtnetlink::Handle, iface: &str, v6: bool) -> Result<()> {
    let mark = ttp_common::GATEWAY_LOCAL_MARK;
    let rule =
        || handle.rule().add().input_interface(iface.to_string()).fw_mark(mark).table_id(TABLE).priority(PRIORITY);
    let what = |v| format!("adding the rule `iif {iface} fwmark {mark:#x}/{mark:#x} lookup {TABLE}` (IPv{v})");
    let exists = |r: &std::result::Result<(), rtnetlink::Error>| matches!(r, Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST);
    let mut r4 = rule().v4().action(RuleAction::ToTable);
    r4.message_mut().attributes.push(RuleAttribute::FwMask(mark));
    let done = r4.execute().await;
    if !exists(&done) {
        done.with_context(|| what(4))?;
    }
    if v6 {
        let mut r6 = rule().v6().action(RuleAction::ToTable);
        r6.message_mut().attributes.push(RuleAttribute::FwMask(mark));
        let done = r6.execute().await;
        if !exists(&done) {
            done.with_context(|| what(6))?;
        }
    }
    Ok(())
}

/// [`add_rules`] from a thread without a runtime (the monitor's follower, for an interface
/// a pattern matches when it appears). IPv6 is tried; without it, IPv4 alone.
fn add_rules_blocking(iface: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        let conn = tokio::spawn(conn);
        let result = match add_rules(&handle, iface, true).await {
            Ok(()) => Ok(()),
            Err(_) => add_rules(&handle, iface, false).await,
        };
        conn.abort();
        result
    })
}

/// Removes every rule pointing at ttp's table and the table's route. Returns how many
/// rules went; nothing there is not an error.
pub async fn remove() -> Result<usize> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let conn = tokio::spawn(conn);
    let result = remove_with(&handle).await;
    conn.abort();
    result
}

/// [`remove`] from code without a runtime (the monitor, `ttp stop`).
pub fn remove_blocking() -> Result<usize> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?.block_on(remove())
}

async fn remove_with(handle: &rtnetlink::Handle) -> Result<usize> {
    let mut n = 0;
    for family in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let rules: Vec<RuleMessage> =
            handle.rule().get(family).execute().try_collect().await.context("listing the rules")?;
        for r in rules.into_iter().filter(points_at_our_table) {
            handle.rule().del(r).execute().await.context("removing a gateway rule")?;
            n += 1;
        }
    }
    for (route, _) in local_defaults()? {
        match handle.route().del(route).execute().await {
            Ok(()) => {}
            // Not there (ESRCH, or ENOENT for IPv6): nothing to remove.
            Err(rtnetlink::Error::NetlinkError(e)) if [-libc::ESRCH, -libc::ENOENT].contains(&e.raw_code()) => {}
            Err(e) => return Err(e).context(format!("removing a route in table {TABLE}")),
        }
    }
    Ok(n)
}

fn points_at_our_table(r: &RuleMessage) -> bool {
    r.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if *t == TABLE))
}

/// The table's routes, one per family, with how `ip route` would write them.
fn local_defaults() -> Result<[(RouteMessage, &'static str); 2]> {
    let lo = nix::net::if_::if_nametoindex("lo").context("no loopback interface")?;
    let v4 = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .table_id(TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .build();
    let v6 = rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .table_id(TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .output_interface(lo)
        .build();
    Ok([(v4, "local 0.0.0.0/0"), (v6, "local ::/0")])
}

/// Gives the named gateway interfaces their programs whenever they exist: one that
/// appears after start (docker0 when docker.service starts, Podman's bridge with its first
/// container), or that is deleted and made again (Podman's, with its last container and
/// the next first one). Root's job, on a thread of the monitor: follows link changes until
/// the process ends.
pub fn follow_interfaces(pin_dir: std::path::PathBuf, specs: Vec<String>, mut maps: Maps) {
    let layout = PinLayout::new(&pin_dir);
    // Interfaces a pattern matched whose rules this thread added (or found there).
    let mut ruled = std::collections::HashSet::new();
    crate::netwatch::follow(
        &[MulticastGroup::Link],
        "not following the gateway interfaces (one made meanwhile gets its gateway program when \
         following resumes)",
        || attach_interfaces(&layout, &mut maps, &specs, &mut ruled),
    );
}

fn attach_interfaces(
    layout: &PinLayout,
    maps: &mut Maps,
    specs: &[String],
    ruled: &mut std::collections::HashSet<String>,
) {
    for iface in &crate::ifname::present(specs) {
        // A pattern's interface gets its rules here; a literal name's are there from start.
        if !specs.contains(iface) && !ruled.contains(iface) {
            // On a thread of its own: this one runs the follower's runtime.
            let added = std::thread::scope(|s| s.spawn(|| add_rules_blocking(iface)).join());
            match added {
                Ok(Ok(())) => drop(ruled.insert(iface.clone())),
                Ok(Err(e)) => tracing::error!("gateway interface {iface}: {e:#}; what comes in on it is not ours"),
                Err(_) => tracing::error!("gateway interface {iface}: adding its rules panicked"),
            }
        }
        let Ok((index, l2)) = crate::datapath::link_of(iface) else { continue };
        // The map first: the ingress program drops what comes from an interface it lacks.
        let done = maps.set_gateway(index, l2).and_then(|()| {
            let ingress = tcx::ensure(layout, TC_GATEWAY, iface, index, Direction::Ingress)?;
            tcx::ensure(layout, TC_GATEWAY_EGRESS, iface, index, Direction::Egress)?;
            Ok(ingress)
        });
        match done {
            Ok(Attached::Already) => {}
            Ok(Attached::New) => {
                tracing::info!("gateway interface {iface} appeared: what comes in on it goes through Tor")
            }
            Ok(Attached::Again) => {
                tracing::info!("gateway interface {iface} was made again: what comes in on it goes through Tor")
            }
            Err(e) => tracing::error!(
                "gateway interface {iface}: attaching the gateway program failed: {e:#}; what comes in on it \
                 is delivered to this host, never forwarded"
            ),
        }
    }
    // Entries of interfaces that are gone: a bounded map must not fill with them.
    if let Err(e) = maps.retain_gateways(crate::ifname::index_exists) {
        tracing::warn!("{e:#}");
    }
}

/// Keeps LOCAL_V4 and LOCAL_V6 equal to this host's addresses, so that the gateway
/// program hands a gateway client's new connection to one of them (an admin's SSH from
/// the LAN) to the host's own services instead of the TransPort. Root's job: the monitor
/// runs it on a thread of its own from arming to its end ([`crate::monitor`]); these maps
/// decide what bypasses Tor, so the daemon cannot write them. Every change rtnetlink announces re-reads
/// the whole list: a host has a handful of addresses, and a full read cannot drift the
/// way counting additions and removals could. Until the first list is written, a gateway
/// client's connection to the host goes to the TransPort (closed, not open).
pub fn follow_local_addresses(mut maps: Maps) {
    let run = async {
        // Subscribed before the first read, so a change in between is not missed.
        let groups = [MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr];
        let (conn, handle, mut changes) =
            rtnetlink::new_multicast_connection(&groups).context("opening rtnetlink for address changes")?;
        tokio::spawn(conn);
        write_local_addresses(&handle, &mut maps).await?;
        while changes.next().await.is_some() {
            write_local_addresses(&handle, &mut maps).await?;
        }
        bail!("rtnetlink closed")
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result: Result<()> = rt.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run));
    if let Err(e) = result {
        // Losing track of address changes is no reason to stop protecting the host: the
        // list stays as it was.
        tracing::warn!("no longer following this host's addresses for the gateway: {e:#}");
    }
}

async fn write_local_addresses(handle: &rtnetlink::Handle, maps: &mut Maps) -> Result<()> {
    let mut addrs: Vec<IpAddr> = handle
        .address()
        .get()
        .execute()
        .map_ok(|m| {
            // IFA_LOCAL is an IPv4 interface's own address (IFA_ADDRESS is the peer's on a
            // point-to-point link); IPv6 gives its own as IFA_ADDRESS alone.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let v6 = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip @ IpAddr::V6(_)) => Some(*ip),
                _ => None,
            });
            local.or(v6)
        })
        .try_filter_map(|a| async move { Ok(a) })
        .try_collect()
        .await
        .context("listing this host's addresses")?;
    // Loopback never arrives from outside: the stack drops it as a martian.
    addrs.retain(|a| !a.is_loopback());
    addrs.sort();
    addrs.dedup();
    let v4: Vec<Ipv4Addr> = addrs.iter().filter_map(|a| if let IpAddr::V4(v) = a { Some(*v) } else { None }).collect();
    let v6: Vec<Ipv6Addr> = addrs.iter().filter_map(|a| if let IpAddr::V6(v) = a { Some(*v) } else { None }).collect();
    maps.set_local_v4(&v4)?;
    maps.set_local_v6(&v6)?;
    tracing::debug!("this host's addresses, for the gateway: {addrs:?}");
    Ok(())
}
