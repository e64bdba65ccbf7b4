//! cgroup/sock_create and cgroup/sock_release: tag exempt sockets by their cookie.
//!
//! Exemption is decided once, in the creating task's context, where uid, gid and cgroup are
//! all known. The packet-level programs (skb, tc) see no gid, so they read this tag.

use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext};
use ttp_common::Counter;

use crate::maps::{config, count, exempt_current, EXEMPT_SOCK, ORIG_DST};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let cfg = config();
    if let Some(reason) = exempt_current(&cfg) {
        // SAFETY: ctx.sock is the kernel's bpf_sock for this hook.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
        if EXEMPT_SOCK.insert(&cookie, &(reason as u8), 0).is_err() {
            // Table full: the socket stays governed, which is the safe side.
            count(Counter::ExemptTableFull);
        }
    }
    1
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let _ = EXEMPT_SOCK.remove(&cookie);
    let _ = ORIG_DST.remove(&cookie);
    1
}
