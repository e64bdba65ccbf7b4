//! cgroup/setsockopt: governed processes may not make frames skip the TC kill-switch.
//!
//! `PACKET_QDISC_BYPASS` sends a packet socket's frames straight to the driver, past TC
//! egress; AF_XDP sockets (configured only through `SOL_XDP` options) do the same. Where
//! BPF LSM refuses frame sockets outright (`lsm.rs`) this is a second wall; where the
//! kernel does not allow BPF LSM programs, it is the wall: a governed packet socket's
//! frames then all meet `tc_egress`, which reads what each frame is.

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use ttp_common::Counter;
use ttp_ebpf::sockopt_allowed;

use crate::maps::{config, count_refused_by_current, exempt_current};

/// cgroup sockopt verdicts: 1 lets the kernel handle the option, 0 refuses it (EPERM).
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel's bpf_sockopt for this call; plain integer fields.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    let cfg = config();
    // Most options concern nothing here: decide those before any lookup.
    if sockopt_allowed(&cfg, level, optname, None) {
        return PROCEED;
    }
    if sockopt_allowed(&cfg, level, optname, exempt_current(&cfg)) {
        PROCEED
    } else {
        count_refused_by_current(Counter::FrameSocketRefused);
        REFUSE
    }
}
