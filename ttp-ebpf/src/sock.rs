//! cgroup/sock_create and cgroup/sock_release: tag exempt sockets by their cookie.
//!
//! Exemption is decided once, in the creating task's context, where uid, gid and cgroup are
//! all known. The packet-level programs (skb, tc) see no gid, so they read this tag.
//! A governed socket made in another network namespace than the one ttp governs (a
//! container's) is tagged too, as no exemption: see `ttp_common::TAG_OTHER_NETNS`.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::SockContext,
};
use ttp_common::{Counter, TAG_OTHER_NETNS};

use crate::maps::{config, count, exempt_current, EXEMPT_SOCK, ORIG_DST};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let cfg = config();
    let tag = match exempt_current(&cfg) {
        Some(reason) => reason as u8,
        // SAFETY: ctx.sock is the kernel's bpf_sock for this hook, valid for the helper.
        None if cfg.host_netns != 0 && unsafe { bpf_get_netns_cookie(ctx.sock.cast()) } != cfg.host_netns => {
            TAG_OTHER_NETNS
        }
        None => return 1,
    };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    if EXEMPT_SOCK.insert(&cookie, &tag, 0).is_err() {
        // Table full: the socket stays governed as the host's, which is the safe side (in
        // a container: redirected to a loopback where nothing listens).
        count(Counter::ExemptTableFull);
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
