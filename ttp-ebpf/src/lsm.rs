//! lsm_cgroup/socket_create: governed processes get no frame sockets.
//!
//! A packet socket (`AF_PACKET`, any type, any `sll_protocol`) writes whole frames to a
//! link: with `PACKET_QDISC_BYPASS` they skip the TC egress hook, and no cgroup_skb
//! program ever sees them. AF_XDP hands frames to the driver. So a governed process with
//! `CAP_NET_RAW` (root, unless `--allow-root`) could put anything on an uplink. Refusing
//! the socket where it is created closes that for good; an exempt process (bypass uid,
//! gid, cgroup, root with `--allow-root`) may still have one while the kill-switch is open.
//!
//! Per cgroup (BPF_LSM_CGROUP): attached to the governed cgroup, it runs for its
//! processes only. It needs BPF LSM in the kernel's LSM list (`lsm=...,bpf`); without it
//! ttp starts all the same and says that this class is not covered.

use aya_ebpf::{macros::lsm_cgroup, programs::LsmContext};
use ttp_common::Counter;
use ttp_ebpf::socket_allowed;

use crate::maps::{config, count_refused_by_current, exempt_current};

/// lsm_cgroup verdicts: 1 allows, 0 refuses (the caller sees EPERM).
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[lsm_cgroup(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern)
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    let cfg = config();
    // The exemption lookups only for the families that need them.
    let exempt = if kern == 0 && (family == ttp_ebpf::AF_PACKET || family == ttp_ebpf::AF_XDP) {
        exempt_current(&cfg)
    } else {
        None
    };
    if socket_allowed(&cfg, family, kern != 0, exempt) {
        ALLOW
    } else {
        count_refused_by_current(Counter::FrameSocketRefused);
        REFUSE
    }
}
