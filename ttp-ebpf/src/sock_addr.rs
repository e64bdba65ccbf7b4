//! cgroup/sock_addr hooks: where redirection happens.
//!
//! connect4/6 and sendmsg4/6 rewrite the destination of governed TCP connects and DNS
//! datagrams to our ports on loopback and remember the original destination by socket
//! cookie; recvmsg4/6 and getpeername4/6 show the application the address it asked for.
//! IPv6 hooks handle `::ffff:a.b.c.d` themselves: such connects never reach connect4.
//!
//! Every write to the context is volatile: LLVM may otherwise merge two 4-byte stores into
//! one 8-byte store, which the verifier rejects as an invalid context access.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use ttp_common::{IpKey, Origin, SockAddr, AF_INET};
use ttp_ebpf::{decide, Action, Dest, Proto};

use crate::maps::{config, count, count_refused_by_current, exempt_current, socket_tag, DOH_ADDRS, ORIG_DST};

const LOOPBACK4: u32 = 0x7f00_0001;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const WORD_FFFF: u32 = 0x0000_ffff;

fn proto(sa: *const bpf_sock_addr) -> Option<Proto> {
    // SAFETY: sa is the hook's context.
    match unsafe { read_volatile(&(*sa).protocol) } {
        IPPROTO_TCP => Some(Proto::Tcp),
        IPPROTO_UDP => Some(Proto::Udp),
        _ => None,
    }
}

/// The destination (or, for recvmsg, the source) the context holds. v4-mapped IPv6
/// addresses come back as IPv4, so the policy sees what goes on the wire.
fn read_addr<const V6: bool>(sa: *const bpf_sock_addr) -> SockAddr {
    // SAFETY: sa is the hook's context; every field is read as its own 4-byte load.
    unsafe {
        let port = u16::from_be(read_volatile(&(*sa).user_port) as u16);
        if V6 {
            let w = [
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ];
            SockAddr::v6(w, port)
        } else {
            SockAddr::v4(read_volatile(&(*sa).user_ip4), port)
        }
    }
}

/// Writes `a` into the context. An IPv6 socket gets IPv4 addresses in v4-mapped form.
/// `V6` is a const so each program has only its own family's stores: the verifier rejects
/// a store through a context pointer with a computed offset, which a runtime flag invites.
fn write_addr<const V6: bool>(sa: *mut bpf_sock_addr, a: &SockAddr) {
    // SAFETY: sa is the hook's context; each field is written with its own store.
    unsafe {
        write_volatile(&mut (*sa).user_port, u16::to_be(a.port) as u32);
        if !V6 {
            write_volatile(&mut (*sa).user_ip4, a.addr[0]);
            return;
        }
        let w = if a.family == AF_INET { [0, 0, u32::to_be(WORD_FFFF), a.addr[0]] } else { a.addr };
        write_volatile(&mut (*sa).user_ip6[0], w[0]);
        write_volatile(&mut (*sa).user_ip6[1], w[1]);
        write_volatile(&mut (*sa).user_ip6[2], w[2]);
        write_volatile(&mut (*sa).user_ip6[3], w[3]);
    }
}

fn dest_of(a: &SockAddr, cfg: &ttp_common::Config) -> Dest {
    if a.family == AF_INET {
        let ip = u32::from_be(a.addr[0]);
        Dest { virt: cfg.is_virtual4(ip), ..Dest::v4(ip, a.port) }
    } else {
        Dest::v6(a.addr.map(u32::from_be), a.port)
    }
}

/// Our loopback listener in the same family as the original destination.
fn local_port(orig: &SockAddr, port: u16) -> SockAddr {
    if orig.family == AF_INET {
        SockAddr::v4(u32::to_be(LOOPBACK4), port)
    } else {
        SockAddr::v6([0, 0, 0, u32::to_be(1)], port)
    }
}

/// connect and sendmsg, both families.
fn redirect<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = proto(sa) else { return 1 };
    let orig = read_addr::<V6>(sa);
    let cfg = config();
    let dest = dest_of(&orig, &cfg);
    if dest.loopback && dest.port != 53 {
        return 1; // the fast path for local traffic; loopback DNS is redirected below
    }
    // SAFETY: the context is a valid argument for this helper in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let (tag, netns) = socket_tag(cookie);
    let exempt = tag.or_else(|| exempt_current(&cfg));
    // SAFETY: u8 copied out at once.
    let doh = proto == Proto::Tcp && dest.port == 443 && unsafe { DOH_ADDRS.get(&IpKey::of(&orig)) }.is_some();
    match decide(&cfg, proto, &dest, exempt, doh, netns) {
        Action::Pass(counter) => {
            if let Some(c) = counter {
                count(c);
            }
            1
        }
        Action::Refuse(c) => {
            count_refused_by_current(c);
            aya_log_ebpf::info!(ctx, "refused a governed connect/send to port {} (counter {})", dest.port, c as u32);
            0
        }
        Action::Redirect { port, counter } => {
            let uid_gid = aya_ebpf::helpers::bpf_get_current_uid_gid();
            let origin = Origin {
                dst: orig,
                // SAFETY: plain helper without arguments.
                cgroup: unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() },
                uid: uid_gid as u32,
                gid: (uid_gid >> 32) as u32,
            };
            if ORIG_DST.insert(&cookie, &origin, 0).is_err() {
                return 0;
            }
            write_addr::<V6>(sa, &local_port(&orig, port));
            count(counter);
            1
        }
    }
}

/// recvmsg and getpeername: if the peer is one of our listeners and this socket was
/// redirected, show the address the application asked for instead.
fn restore<const V6: bool>(ctx: &SockAddrContext, ports: [u16; 2], counter: Option<ttp_common::Counter>) -> i32 {
    let sa = ctx.sock_addr;
    let peer = read_addr::<V6>(sa);
    if !dest_of(&peer, &config()).loopback || (peer.port != ports[0] && peer.port != ports[1]) {
        return 1;
    }
    // SAFETY: as in `redirect`.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: Origin copied out at once.
    if let Some(Origin { dst: orig, .. }) = unsafe { ORIG_DST.get(&cookie) }.copied() {
        if V6 || orig.family == AF_INET {
            write_addr::<V6>(sa, &orig);
            if let Some(c) = counter {
                count(c);
            }
        }
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    redirect::<false>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    redirect::<true>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect::<false>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect::<true>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let dns = config().dns_port;
    restore::<false>(&ctx, [dns, dns], Some(ttp_common::Counter::DnsReplyRewritten))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let dns = config().dns_port;
    restore::<true>(&ctx, [dns, dns], Some(ttp_common::Counter::DnsReplyRewritten))
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let cfg = config();
    restore::<false>(&ctx, [cfg.trans_port, cfg.dns_port], None)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let cfg = config();
    restore::<true>(&ctx, [cfg.trans_port, cfg.dns_port], None)
}
