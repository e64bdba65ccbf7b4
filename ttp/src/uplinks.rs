//! Uplinks that appear after start get the uplink kill-switch.
//!
//! When ttp chose its uplinks itself (no `--uplink`: the interfaces with a default
//! route), an interface that gains a default route later (a Wi-Fi reconnect, USB
//! tethering, a bridge that took the NIC over) must not be a way around the TC
//! kill-switch. The monitor (root: attaching needs `CAP_NET_ADMIN`, which the daemon gave
//! up) follows rtnetlink's link and route events on a thread of its own, and on each one
//! attaches `tc_egress` to every default-route interface that has none yet: the same
//! program the datapath loaded (found through an existing link's pin), its link pinned
//! beside the others, so a stop or a crash treats it like them.
//!
//! What it cannot close: the moment between the kernel adding the route and the event's
//! handling (milliseconds), in which only the cgroup programs hold governed sockets.
//! `--uplink` given explicitly means those interfaces and no others.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};
use rtnetlink::MulticastGroup;
use ttp_common::programs::TC_EGRESS;

use crate::datapath::{Maps, PinLayout};

/// Follows route and link changes until the process ends; `skip` are interfaces never
/// to treat as uplinks (the gateway's). Blocking: run it on a thread of its own.
pub fn follow(pin_dir: PathBuf, skip: Vec<String>) {
    let layout = PinLayout::new(&pin_dir);
    crate::netwatch::follow(
        &[MulticastGroup::Link, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route],
        "no longer following new uplinks; a new default-route interface gets no TC kill-switch until the next start",
        || attach_new(&layout, &skip),
    );
}

/// Attaches the kill-switch to every default-route interface that has none.
fn attach_new(layout: &PinLayout, skip: &[String]) {
    let Ok(uplinks) = crate::daemon::default_uplinks() else { return };
    for iface in uplinks.iter().filter(|i| *i != "lo" && !skip.contains(i)) {
        if layout.links().join(pin_name(iface)).exists() {
            continue;
        }
        match attach(layout, iface) {
            Ok(()) => tracing::warn!("{iface} now carries a default route: the uplink kill-switch is attached to it"),
            Err(e) => tracing::error!("{iface} carries a default route, and attaching the kill-switch failed: {e:#}"),
        }
    }
}

/// The pin of `iface`'s TC link (bpffs refuses dots, which VLAN interfaces have).
pub fn pin_name(iface: &str) -> String {
    format!("{TC_EGRESS}@{}", iface.replace('.', "_"))
}

fn attach(layout: &PinLayout, iface: &str) -> Result<()> {
    let (index, l2) = crate::datapath::link_of(iface)?;
    // Its link-layer length first: the program reads it for every frame.
    Maps::open_pinned(&layout.maps())?.set_uplink(index, l2)?;
    let prog = tc_program(layout)?;
    let link = crate::datapath::link_create(prog.as_fd(), index, crate::datapath::BPF_TCX_EGRESS)
        .with_context(|| format!("attaching {TC_EGRESS} to {iface}"))?;
    crate::datapath::pin_fd(layout, &pin_name(iface), &link)
}

/// The running datapath's `tc_egress` program, through one of its pinned links.
fn tc_program(layout: &PinLayout) -> Result<OwnedFd> {
    let pin = layout
        .link_pins()?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{TC_EGRESS}@"))))
        .context("no uplink kill-switch pinned to copy")?;
    let link: aya::programs::links::FdLink =
        aya::programs::links::PinnedLink::from_pin(&pin).context("opening a pinned TC link")?.into();
    let prog_id = link.info().context("reading the TC link")?.program_id();
    #[repr(C)]
    struct GetFdById {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
        _rest: [u32; 5],
    }
    let attr = GetFdById { prog_id, next_id: 0, open_flags: 0, _rest: [0; 5] };
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    crate::datapath::bpf_new_fd(BPF_PROG_GET_FD_BY_ID, &attr).context("BPF_PROG_GET_FD_BY_ID")
}
