//! TC ingress (tcx) on the gateway interfaces: other machines' traffic into Tor.
//!
//! Packets arriving on the tunnel's TUN or a LAN interface named as a gateway are never
//! forwarded: this program marks every packet it lets in (`GATEWAY_LOCAL_MARK`), ttp's
//! routing rule delivers marked packets from these interfaces locally, and the program
//! decides which local socket gets each (the one exception, answers to published ports,
//! is below). A new TCP connection is handed to the TransPort's listener with
//! `bpf_sk_assign` (as Cilium and dae do for their proxies), so the accepted socket's
//! local address is the destination the client asked for; a DNS
//! query is handed to the DNSPort likewise. A new TCP connection to one of this host's own
//! addresses (LOCAL_V4, kept by the daemon) goes to the host's own services: an admin's
//! SSH from the LAN keeps working. Everything else is dropped. A dead daemon leaves this
//! program attached and its sockets gone: nothing gets into Tor or past this host, and
//! every packet but those to the host's own services is dropped.
//!
//! IPv6 is served the same way (TCP to the TransPort, DNS to the DNSPort, both listening
//! on ::1; connections to the host's own IPv6 addresses, LOCAL_V6, to its services). On
//! a LAN interface neighbour discovery passes, as ARP does for IPv4; every other ICMPv6
//! message, extension headers and fragments are dropped.
//!
//! On egress one small fix: the DNSPort's answers leave from port 53, the port the client
//! asked (a socket has one port, and the DNSPort's is not 53).
//!
//! Published ports: a LAN machine's connection to a port a container publishes arrives on
//! the uplink, is DNATed by the host and forwarded out of the container's bridge. The
//! egress program records that flow (`INBOUND`) as it leaves; the ingress program lets
//! the container's answers to it through unmarked, so they are routed back to the LAN.
//! Only with LAN bypass, to unicast LAN addresses, and never in lockdown; the uplink's
//! kill-switch still decides whether an answer may leave there.

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6, BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0,
    },
    helpers::generated::{bpf_sk_assign, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::classifier,
    programs::TcContext,
};
use ttp_common::{Config, Counter, Flow, GATEWAY_LOCAL_MARK};
use ttp_ebpf::{
    gateway_answers_inbound, gateway_decide, gateway_inbound_starts, gateway_reply_port, Dest, GatewayAction,
    IPPROTO_TCP, IPPROTO_UDP, TCP_FLAG_SYN,
};

use crate::{
    maps::{config, count, GATEWAYS, INBOUND, LOCAL_V4, LOCAL_V6},
    packet::{ETH_P_IP, ETH_P_IPV6},
};

/// The packet is ours: deliver it (to the socket assigned) and end the chain.
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// Pass on to the next program and then the stack.
const TC_ACT_UNSPEC: i32 = -1;
const BPF_TCP_LISTEN: u32 = 10;
const LOOPBACK_BE: u32 = u32::from_be(0x7f00_0001);
/// ::1 as four network-order words.
const LOOPBACK6_BE: [u32; 4] = [0, 0, 0, u32::from_be(1)];
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMPV6: u8 = 58;
/// Neighbour discovery: router solicitation and advertisement, neighbour solicitation
/// and advertisement, redirect (RFC 4861).
const NDP: core::ops::RangeInclusive<u8> = 133..=137;

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
    let verdict = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => ipv4(&ctx, l3),
        ETH_P_IPV6 => ipv6(&ctx, l3, l2 != 0),
        // ARP keeps the LAN working.
        ETH_P_ARP if l2 != 0 => {
            count(Counter::GwPassed);
            Some(Verdict::Here(TC_ACT_UNSPEC))
        }
        _ => None,
    };
    match verdict {
        None => {
            count(Counter::GwDropped);
            TC_ACT_SHOT
        }
        Some(Verdict::Here(TC_ACT_SHOT)) => TC_ACT_SHOT,
        Some(Verdict::Here(v)) => {
            // SAFETY: skb is the program's context; tc programs may write its mark.
            unsafe { (*ctx.skb.skb).mark |= GATEWAY_LOCAL_MARK };
            v
        }
        Some(Verdict::Routed) => TC_ACT_UNSPEC,
    }
}

/// Gives the DNSPort's answers port 53 as their source, and records the flows LAN
/// machines start to the machines behind (published ports). Never drops: what leaves here
/// was sent by this host's own sockets, which the kill-switch governs, or forwarded to
/// the machines behind.
#[classifier]
pub fn tc_gateway_egress(ctx: TcContext) -> i32 {
    // SAFETY: skb is the program's context.
    let (ifindex, from_iface) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    // Forwarded: it came in on an interface. This host's own packets have none.
    let forwarded = from_iface != 0;
    // SAFETY: u32 copied out at once.
    if let Some(l2) = (unsafe { GATEWAYS.get(&ifindex) }).copied() {
        let l3 = l2 as usize;
        let _ = match (u16::from_be(ctx.skb.protocol() as u16), forwarded) {
            (ETH_P_IP, true) => record_inbound4(&ctx, l3),
            (ETH_P_IP, false) => ipv4_l4(&ctx, l3).and_then(|(proto, l4)| fix_reply_port(&ctx, proto, l4)),
            (ETH_P_IPV6, true) => record_inbound6(&ctx, l3),
            // Our own answers carry no extension headers: UDP follows the fixed header.
            (ETH_P_IPV6, false) => ctx.load::<u8>(l3 + 6).ok().and_then(|proto| fix_reply_port(&ctx, proto, l3 + 40)),
            _ => None,
        };
    }
    TC_ACT_UNSPEC
}

/// Records a forwarded IPv4 packet that starts a LAN machine's flow to one behind.
#[inline(always)]
fn record_inbound4(ctx: &TcContext, l3: usize) -> Option<()> {
    let frag: u16 = ctx.load(l3 + 6).ok()?;
    // A later fragment has no ports.
    if u16::from_be(frag) & 0x1fff != 0 {
        return None;
    }
    let (proto, l4) = ipv4_l4(ctx, l3)?;
    let saddr: u32 = ctx.load(l3 + 12).ok()?;
    let daddr: u32 = ctx.load(l3 + 16).ok()?;
    record_inbound(ctx, proto, l4, [saddr, 0, 0, 0], [daddr, 0, 0, 0], Dest::v4(u32::from_be(saddr), 0), 0)
}

/// [`record_inbound4`] for IPv6 (TCP or UDP right after the fixed header).
#[inline(always)]
fn record_inbound6(ctx: &TcContext, l3: usize) -> Option<()> {
    let proto: u8 = ctx.load(l3 + 6).ok()?;
    let saddr: [u32; 4] = ctx.load(l3 + 8).ok()?;
    let daddr: [u32; 4] = ctx.load(l3 + 24).ok()?;
    record_inbound(ctx, proto, l3 + 40, saddr, daddr, Dest::v6(host_words(saddr), 0), 1)
}

/// Records the flow from `outside` (the LAN machine, `from` as a [`Dest`] without its
/// port) to `inside` if its packet starts one.
#[inline(always)]
fn record_inbound(
    ctx: &TcContext,
    proto: u8,
    l4: usize,
    outside: [u32; 4],
    inside: [u32; 4],
    from: Dest,
    v6: u8,
) -> Option<()> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let sport: u16 = ctx.load(l4).ok()?;
    let dport: u16 = ctx.load(l4 + 2).ok()?;
    let tcp_flags: u8 = if proto == IPPROTO_TCP { ctx.load(l4 + 13).ok()? } else { 0 };
    let from = Dest { port: u16::from_be(sport), ..from };
    if !gateway_inbound_starts(&config(), proto, tcp_flags, true, &from) {
        return None;
    }
    let flow = Flow { inside, outside, inside_port: dport, outside_port: sport, proto, v6, _pad: [0; 2] };
    // A flow already there (a UDP exchange's next datagram) is only touched, which keeps
    // it from the LRU's end.
    if INBOUND.get_ptr(&flow).is_none() {
        INBOUND.insert(&flow, &1, 0).ok()?;
        count(Counter::GwInbound);
    }
    Some(())
}

/// Whether the packet answers a recorded inbound flow (then it goes into the stack
/// unmarked, to be routed back to the LAN). `to` is its destination as a [`Dest`]; `flow`
/// makes its key, only for a packet the policy lets be an answer (most are the machines'
/// own traffic into Tor).
#[inline(always)]
fn answers_inbound(cfg: &Config, proto: u8, tcp_flags: u8, to: &Dest, flow: impl FnOnce() -> Flow) -> bool {
    // SAFETY: only tested for presence.
    if !gateway_answers_inbound(cfg, proto, tcp_flags, to) || unsafe { INBOUND.get(&flow()) }.is_none() {
        return false;
    }
    count(Counter::GwInboundReplies);
    true
}

/// The verdicts of the ingress program's parsers.
enum Verdict {
    /// Into the stack, for this host (marked): the TC action to return.
    Here(i32),
    /// Into the stack unmarked, to be routed: an answer to a LAN machine's inbound flow.
    Routed,
}

/// Network-order words to host order, as [`Dest::v6`] takes them.
#[inline(always)]
fn host_words(w: [u32; 4]) -> [u32; 4] {
    [u32::from_be(w[0]), u32::from_be(w[1]), u32::from_be(w[2]), u32::from_be(w[3])]
}

/// The protocol and where its header starts.
#[inline(always)]
fn ipv4_l4(ctx: &TcContext, l3: usize) -> Option<(u8, usize)> {
    let vihl: u8 = ctx.load(l3).ok()?;
    let proto: u8 = ctx.load(l3 + 9).ok()?;
    Some((proto, l3 + ((vihl & 0x0f) as usize) * 4))
}

#[inline(always)]
fn fix_reply_port(ctx: &TcContext, proto: u8, l4: usize) -> Option<()> {
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
fn ipv4(ctx: &TcContext, l3: usize) -> Option<Verdict> {
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
    let cfg = config();
    let flow = || Flow {
        inside: [saddr, 0, 0, 0],
        outside: [daddr, 0, 0, 0],
        inside_port: sport,
        outside_port: dport,
        proto,
        v6: 0,
        _pad: [0; 2],
    };
    if answers_inbound(&cfg, proto, tcp_flags, &Dest::v4(u32::from_be(daddr), u16::from_be(dport)), flow) {
        return Some(Verdict::Routed);
    }
    // Looked up for a connection's first segment only; its later ones pass as
    // `Established` once the local service's socket exists.
    // SAFETY: only tested for presence.
    let to_local = proto == IPPROTO_TCP && tcp_flags & TCP_FLAG_SYN != 0 && unsafe { LOCAL_V4.get(&daddr) }.is_some();
    let action = gateway_decide(&cfg, proto, u16::from_be(dport), tcp_flags, to_local);
    let tuple = |d: u32, dport: u16| tuple4(saddr, sport, d, dport);
    Some(Verdict::Here(carry_out(ctx, action, tuple, daddr, dport, LOOPBACK_BE, TUPLE4_LEN)))
}

/// Carries out the policy's decision. `tuple(daddr, dport)` makes a socket lookup's key
/// from the packet's source and the given destination (`daddr` is the packet's own,
/// `loopback` the listeners' address), `len` its size: the family's.
#[inline(always)]
fn carry_out<A: Copy>(
    ctx: &TcContext,
    action: GatewayAction,
    tuple: impl Fn(A, u16) -> bpf_sock_tuple,
    daddr: A,
    dport: u16,
    loopback: A,
    len: u32,
) -> i32 {
    match action {
        GatewayAction::SteerTcp { port, counter } => {
            let mut t = tuple(loopback, port.to_be());
            // SAFETY: the tuple lives on our stack for the call; the socket it returns is
            // released in `assign`.
            let sk = unsafe { bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut t, len, CURRENT_NETNS, 0) };
            assign(ctx, sk, true, counter)
        }
        GatewayAction::SteerUdp { port } => {
            let mut t = tuple(loopback, port.to_be());
            // SAFETY: as above.
            let sk = unsafe { bpf_sk_lookup_udp(ctx.skb.skb.cast(), &mut t, len, CURRENT_NETNS, 0) };
            assign(ctx, sk, false, Counter::GwDnsSteered)
        }
        GatewayAction::Established => {
            let mut t = tuple(daddr, dport);
            // SAFETY: as above; the socket is released before we return.
            let known = unsafe {
                let sk = bpf_skc_lookup_tcp(ctx.skb.skb.cast(), &mut t, len, CURRENT_NETNS, 0);
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
    }
}

/// `None`: unparsable, dropped by the caller. Only a TCP or UDP header right after the
/// fixed one is served: extension headers (fragments among them) are dropped, as ICMPv6
/// is but for neighbour discovery on a LAN (`l2`).
#[inline(always)]
fn ipv6(ctx: &TcContext, l3: usize, l2: bool) -> Option<Verdict> {
    let next: u8 = ctx.load(l3 + 6).ok()?;
    let saddr: [u32; 4] = ctx.load(l3 + 8).ok()?;
    let daddr: [u32; 4] = ctx.load(l3 + 24).ok()?;
    let l4 = l3 + 40;
    if next == IPPROTO_ICMPV6 {
        let kind: u8 = ctx.load(l4).ok()?;
        if l2 && NDP.contains(&kind) {
            count(Counter::GwPassed);
            return Some(Verdict::Here(TC_ACT_UNSPEC));
        }
        return None;
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return None;
    }
    let sport: u16 = ctx.load(l4).ok()?;
    let dport: u16 = ctx.load(l4 + 2).ok()?;
    let tcp_flags: u8 = if next == IPPROTO_TCP { ctx.load(l4 + 13).ok()? } else { 0 };
    let cfg = config();
    let flow = || Flow {
        inside: saddr,
        outside: daddr,
        inside_port: sport,
        outside_port: dport,
        proto: next,
        v6: 1,
        _pad: [0; 2],
    };
    if answers_inbound(&cfg, next, tcp_flags, &Dest::v6(host_words(daddr), u16::from_be(dport)), flow) {
        return Some(Verdict::Routed);
    }
    // SAFETY: only tested for presence.
    let to_local = next == IPPROTO_TCP && tcp_flags & TCP_FLAG_SYN != 0 && unsafe { LOCAL_V6.get(&daddr) }.is_some();
    let action = gateway_decide(&cfg, next, u16::from_be(dport), tcp_flags, to_local);
    let tuple = |d: [u32; 4], dport: u16| tuple6(saddr, sport, d, dport);
    Some(Verdict::Here(carry_out(ctx, action, tuple, daddr, dport, LOOPBACK6_BE, TUPLE6_LEN)))
}

const TUPLE6_LEN: u32 = core::mem::size_of::<Tuple6>() as u32;

/// All four in network byte order.
#[inline(always)]
fn tuple6(saddr: [u32; 4], sport: u16, daddr: [u32; 4], dport: u16) -> bpf_sock_tuple {
    // SAFETY: plain data; zeroed so that no byte the kernel reads is uninitialised.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    t.__bindgen_anon_1.ipv6 = Tuple6 { saddr, daddr, sport, dport };
    t
}

const TUPLE4_LEN: u32 = core::mem::size_of::<Tuple4>() as u32;
const CURRENT_NETNS: u64 = BPF_F_CURRENT_NETNS as u64;

/// All four in network byte order.
#[inline(always)]
fn tuple4(saddr: u32, sport: u16, daddr: u32, dport: u16) -> bpf_sock_tuple {
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
