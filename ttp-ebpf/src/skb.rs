//! cgroup_skb/egress: the kill-switch for governed sockets.
//!
//! Redirected traffic only ever goes to loopback; every other packet of a governed socket
//! (ICMP, raw sockets, UDP that slipped past sendmsg, anything in lockdown) is dropped
//! unless its socket is exempt or it is bound for the LAN with LAN bypass on. A socket
//! made in another network namespace (a container's) is left to that namespace's way
//! out, which runs through the host namespace's gateway program or uplink kill-switch.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use ttp_common::{Counter, Refused};
use ttp_ebpf::{egress_allowed, skb_drop_counter};

use crate::{
    maps::{config, count, note_refusal},
    packet::{socket_of, Ip},
};

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let Some(mut ip) = Ip::parse(&ctx.skb, 0) else {
        count(Counter::SkbDroppedOther);
        return 0;
    };
    if ip.dest.loopback {
        return 1;
    }
    let cfg = config();
    ip.read_group_port(&ctx.skb);
    let (exempt, netns) = socket_of(&cfg, ctx.skb.skb);
    if egress_allowed(&cfg, &ip.dest, exempt, netns) {
        1
    } else {
        let c = skb_drop_counter(ip.transport(&ctx.skb).map_or(0, |(proto, _)| proto));
        count(c);
        // Whose packet: the socket's owner and cgroup (the sender is not the current task
        // here). SAFETY: helpers of cgroup_skb programs, given this program's skb.
        let (uid, cgroup) = unsafe {
            (
                aya_ebpf::helpers::generated::bpf_get_socket_uid(ctx.skb.skb),
                aya_ebpf::helpers::generated::bpf_skb_cgroup_id(ctx.skb.skb),
            )
        };
        note_refusal(Refused { cgroup, uid, counter: c as u32 });
        0
    }
}
