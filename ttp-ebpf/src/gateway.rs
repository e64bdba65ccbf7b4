//! TC ingress (tcx) on the gateway interfaces: other machines' traffic into Tor.
//!
//! Packets arriving on the tunnel's TUN or a LAN interface named as a gateway are never
//! forwarded: ttp's routing rule delivers everything from these interfaces locally, and
//! this program decides which local socket gets it. A new TCP connection is handed to the
//! TransPort's listener with `bpf_sk_assign` (as Cilium and dae do for their proxies), so
//! the accepted socket's local address is the destination the client asked for; a DNS
//! query is handed to the DNSPort likewise. A new TCP connection to one of this host's own
//! addresses (LOCAL_V4, kept by the daemon) goes to the host's own services: an admin's
//! SSH from the LAN keeps working. Everything else is dropped. A dead daemon leaves this
//! program attached and its sockets gone: nothing gets into Tor or past this host, and
//! every packet but those to the host's own services is dropped.
//!
//! On egress one small fix: the DNSPort's answers leave from port 53, the port the client
//! asked (a socket has one port, and the DNSPort's is not 53).

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4, BPF_F_CURRENT_NETNS,
        BPF_F_MARK_MANGLED_0,
    },
    helpers::generated::{bpf_sk_assign, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::classifier,
    programs::TcContext,
};
use ttp_common::Counter;
use ttp_ebpf::{gateway_decide, gateway_reply_port, GatewayAction, IPPROTO_TCP, TCP_FLAG_SYN};

use crate::{
    maps::{config, count, GATEWAYS, LOCAL_V4},
    packet::ETH_P_IP,
};

/// The packet is ours: deliver it (to the socket assigned) and end the chain.
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// Pass on to the next program and then the stack.
const TC_ACT_UNSPEC: i32 = -1;
const BPF_TCP_LISTEN: u32 = 10;
const LOOPBACK_BE: u32 = u32::from_be(0x7f00_0001);

#[classifier]
pub fn tc_gateway(ctx: TcContext) -> i32 {
    // SAFETY: skb is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: u32 copied out at once.
    let Some(l2) = (unsafe { GATEWAYS.get(&ifindex) }).copied() else {
        count(Counter::GwDropped);
        return TC_ACT_SHOT;
    };
    let l3 = l2 as usize;
    if u16::from_be(ctx.skb.protocol() as u16) != ETH_P_IP {
        // ARP keeps the LAN working; IPv6 (and anything else) is not served yet: dropped.
        return if l2 != 0 && u16::from_be(ctx.skb.protocol() as u16) == 0x0806 {
            count(Counter::GwPassed);
            TC_ACT_UNSPEC
        } else {
            count(Counter::GwDropped);
            TC_ACT_SHOT
        };
    }
    match ipv4(&ctx, l3) {
        Some(v) => v,
        None => {
            count(Counter::GwDropped);
            TC_ACT_SHOT
        }
    }
}

/// Gives the DNSPort's answers port 53 as their source. Never drops: what leaves here was
/// sent by this host's own sockets, which the kill-switch governs.
#[classifier]
pub fn tc_gateway_egress(ctx: TcContext) -> i32 {
    // SAFETY: skb is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: u32 copied out at once.
    if let Some(l2) = (unsafe { GATEWAYS.get(&ifindex) }).copied() {
        if u16::from_be(ctx.skb.protocol() as u16) == ETH_P_IP {
            let _ = fix_reply_port(&ctx, l2 as usize);
        }
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn fix_reply_port(ctx: &TcContext, l3: usize) -> Option<()> {
    let vihl: u8 = ctx.load(l3).ok()?;
    let proto: u8 = ctx.load(l3 + 9).ok()?;
    let l4 = l3 + ((vihl & 0x0f) as usize) * 4;
    let sport: u16 = ctx.load(l4).ok()?;
    let port = gateway_reply_port(&config(), proto, u16::from_be(sport))?.to_be();
    // The UDP checksum covers the ports; a zero checksum (none) stays zero.
    ctx.l4_csum_replace(l4 + 6, sport as u64, port as u64, 2 | BPF_F_MARK_MANGLED_0 as u64).ok()?;
    ctx.store(l4, &port, 0).ok()?;
    count(Counter::GwDnsReplies);
    Some(())
}

/// `None`: unparsable or fragmented, dropped by the caller.
#[inline(always)]
fn ipv4(ctx: &TcContext, l3: usize) -> Option<i32> {
    let vihl: u8 = ctx.load(l3).ok()?;
    let frag: u16 = ctx.load(l3 + 6).ok()?;
    // More-fragments set or an offset: no whole transport header to decide on.
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(l3 + 9).ok()?;
    let saddr: u32 = ctx.load(l3 + 12).ok()?;
    let daddr: u32 = ctx.load(l3 + 16).ok()?;
    let l4 = l3 + ((vihl & 0x0f) as usize) * 4;
    let sport: u16 = ctx.load(l4).ok()?;
    let dport: u16 = ctx.load(l4 + 2).ok()?;
    let tcp_flags: u8 = if proto == IPPROTO_TCP { ctx.load(l4 + 13).ok()? } else { 0 };
    // Looked up for a connection's first segment only; its later ones pass as
    // `Established` once the local service's socket exists.
    // SAFETY: only tested for presence.
    let to_local = proto == IPPROTO_TCP && tcp_flags & TCP_FLAG_SYN != 0 && unsafe { LOCAL_V4.get(&daddr) }.is_some();
    let cfg = config();
    Some(match gateway_decide(&cfg, proto, u16::from_be(dport), tcp_flags, to_local) {
        GatewayAction::SteerTcp { port, counter } => {
            let mut t = tuple(saddr, sport, LOOPBACK_BE, port.to_be());
            // SAFETY: the tuple lives on our stack for the call; the socket it returns is
            // released in `assign`.
            let sk = unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut t, TUPLE4_LEN, CURRENT_NETNS, 0) };
            assign(ctx, sk, true, counter)
        }
        GatewayAction::SteerUdp { port } => {
            let mut t = tuple(saddr, sport, LOOPBACK_BE, port.to_be());
            // SAFETY: as above.
            let sk = unsafe { bpf_sk_lookup_udp(ctx.skb.skb.cast(), &mut t, TUPLE4_LEN, CURRENT_NETNS, 0) };
            assign(ctx, sk, false, Counter::GwDnsSteered)
        }
        GatewayAction::Established => {
            let mut t = tuple(saddr, sport, daddr, dport);
            // SAFETY: as above; the socket is released before we return.
            let known = unsafe {
                let sk = bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut t, TUPLE4_LEN, CURRENT_NETNS, 0);
                if sk.is_null() {
                    false
                } else {
                    let state = (*sk).state;
                    bpf_sk_release(sk.cast());
                    state != BPF_TCP_LISTEN
                }
            };
            if known {
                count(Counter::GwPassed);
                TC_ACT_UNSPEC
            } else {
                count(Counter::GwDropped);
                TC_ACT_SHOT
            }
        }
        GatewayAction::Pass => {
            count(Counter::GwPassed);
            TC_ACT_UNSPEC
        }
        GatewayAction::Local => {
            count(Counter::GwLocal);
            TC_ACT_UNSPEC
        }
        GatewayAction::Drop => {
            count(Counter::GwDropped);
            TC_ACT_SHOT
        }
    })
}

const TUPLE4_LEN: u32 = core::mem::size_of::<Tuple4>() as u32;
const CURRENT_NETNS: u64 = BPF_F_CURRENT_NETNS as u64;

/// All four in network byte order.
#[inline(always)]
fn tuple(saddr: u32, sport: u16, daddr: u32, dport: u16) -> bpf_sock_tuple {
    // SAFETY: plain data; zeroed so that no byte the kernel reads is uninitialised.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    t.__bindgen_anon_1.ipv4 = Tuple4 { saddr, daddr, sport, dport };
    t
}

/// Hands the packet to `sk` (a listener for TCP) and releases it.
#[inline(always)]
fn assign(ctx: &TcContext, sk: *mut bpf_sock, tcp: bool, counter: Counter) -> i32 {
    if sk.is_null() {
        count(Counter::GwNoListener);
        return TC_ACT_SHOT;
    }
    // SAFETY: `sk` is a referenced socket from a lookup, released exactly once below.
    let ok = unsafe {
        let ok = (!tcp || (*sk).state == BPF_TCP_LISTEN) && bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0) == 0;
        bpf_sk_release(sk.cast());
        ok
    };
    if ok {
        count(counter);
        TC_ACT_OK
    } else {
        count(Counter::GwNoListener);
        TC_ACT_SHOT
    }
}
