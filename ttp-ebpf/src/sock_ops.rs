//! sock_ops at TCP_CONNECT_CB: the moment a redirected TCP socket has its local port.
//!
//! The TransPort accepts a socket with a cookie of its own, so it cannot look up the
//! client's cookie. Here the client's local address becomes the key instead: the
//! TransPort reads `CONN_DST[peer address]` for each accepted connection.

use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext};
use ttp_common::{SockAddr, AF_INET};

use crate::maps::{CONN_DST, ORIG_DST};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this hook.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: Origin copied out at once.
    let Some(orig) = (unsafe { ORIG_DST.get(&cookie) }).copied() else {
        return 1;
    };
    let port = ctx.local_port() as u16; // host byte order in sock_ops
    let local = if ctx.family() == AF_INET as u32 {
        SockAddr::v4(ctx.local_ip4(), port)
    } else {
        SockAddr::v6(ctx.local_ip6(), port)
    };
    let _ = CONN_DST.insert(&local, &orig, 0);
    1
}
