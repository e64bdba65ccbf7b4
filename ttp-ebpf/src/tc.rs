//! TC egress (tcx) on the uplinks: the host-wide kill-switch.
//!
//! cgroup programs only see sockets of the governed cgroup, and never packet sockets.
//! This one sees every frame leaving an uplink and lets through only the daemon's own
//! traffic, exempt sockets, link control (ARP, EAPOL, LLDP, DHCP, NDP: by what the frame
//! is, never by `skb->protocol`, which a packet socket's caller chooses) and, with LAN
//! bypass, LAN destinations. Other non-IP frames are dropped. A dead daemon leaves it attached: the host is closed.
//! When ttp governs a subtree (per-application use), packets of sockets outside it pass.

use aya_ebpf::{
    helpers::generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::classifier,
    programs::TcContext,
};
use ttp_common::{flags, Counter, Exempt, GATEWAY_LOCAL_MARK};
use ttp_ebpf::lan_allowed;

use crate::{
    maps::{config, count, UPLINKS},
    packet::{exempt_of, Frame, Ip},
};

/// Pass on to the next program and then the stack (TC_ACT_OK would end the tcx chain).
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: u32 = 14;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let skb = &ctx.skb;
    let cfg = config();
    let open = cfg.has(flags::READY) && !cfg.has(flags::LOCKDOWN);
    match exempt_of(&cfg, skb.skb) {
        Some(Exempt::Daemon) => {
            // A connection with a gateway client whose interface is gone (a container's
            // bridge, deleted with it): routed by default out of here, it would show the
            // address the client visited as its source. It belongs on that interface only.
            // SAFETY: skb is the program's context.
            if unsafe { (*skb.skb).mark } & GATEWAY_LOCAL_MARK != 0 {
                count(Counter::TcDroppedGatewayStray);
                return TC_ACT_SHOT;
            }
            count(Counter::TcPassedDaemon);
            return TC_ACT_UNSPEC;
        }
        Some(_) if open => {
            count(Counter::TcPassedExempt);
            return TC_ACT_UNSPEC;
        }
        _ => {}
    }
    if cfg.governed_cgroup != 0 && !governed(&cfg, skb.skb) {
        count(Counter::TcPassedUngoverned);
        return TC_ACT_UNSPEC;
    }
    // SAFETY: skb is the program's context.
    let ifindex = unsafe { (*skb.skb).ifindex };
    // SAFETY: u32 copied out at once.
    let l2 = unsafe { UPLINKS.get(&ifindex) }.copied().unwrap_or(ETH_HLEN);
    let mut ip = match Ip::parse_frame(skb, l2 as usize) {
        Frame::Ip(ip) => ip,
        // Link control by its own type field: ARP, EAPOL, LLDP never leave the link.
        Frame::LinkControl => {
            count(Counter::TcPassedLinkControl);
            return TC_ACT_UNSPEC;
        }
        Frame::Unreadable => {
            count(Counter::TcDropped);
            return TC_ACT_SHOT;
        }
    };
    if link_control(&ctx, &ip) {
        count(Counter::TcPassedLinkControl);
        return TC_ACT_UNSPEC;
    }
    ip.read_group_port(skb);
    if open && lan_allowed(&cfg, &ip.dest) {
        count(Counter::LanPassed);
        return TC_ACT_UNSPEC;
    }
    count(Counter::TcDropped);
    TC_ACT_SHOT
}

/// With ttp governing a subtree: was this packet sent by a socket inside it? Packets
/// without a full socket (kernel replies, time-wait) belong to no application: not governed.
fn governed(cfg: &ttp_common::Config, skb: *mut aya_ebpf::bindings::__sk_buff) -> bool {
    // SAFETY: skb is the program's context, valid for these helpers.
    unsafe {
        bpf_skb_cgroup_id(skb) != 0 && bpf_skb_ancestor_cgroup_id(skb, cfg.governed_level as i32) == cfg.governed_cgroup
    }
}

/// DHCP and DHCPv6 client requests and ICMPv6 neighbour discovery / MLD to link-scope
/// addresses: what a host needs to keep its address and neighbours, carrying no payload
/// of any application.
fn link_control(ctx: &TcContext, ip: &Ip) -> bool {
    let Some((proto, l4)) = ip.transport(&ctx.skb) else { return false };
    match proto {
        IPPROTO_UDP => {
            let (Ok(sport), Ok(dport)) = (ctx.load::<u16>(l4), ctx.load::<u16>(l4 + 2)) else {
                return false;
            };
            let (sport, dport) = (u16::from_be(sport), u16::from_be(dport));
            (!ip.dest.v6 && sport == 68 && dport == 67) || (ip.dest.v6 && ip.dest.lan && sport == 546 && dport == 547)
        }
        IPPROTO_ICMPV6 if ip.dest.lan => {
            matches!(ctx.load::<u8>(l4), Ok(130..=137 | 143))
        }
        _ => false,
    }
}
