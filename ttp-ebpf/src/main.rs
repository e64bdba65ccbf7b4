//! ttp's kernel programs. One file per hook family:
//!
//! - `sock_addr`: connect/sendmsg/recvmsg/getpeername, IPv4 and IPv6: redirection to the
//!   TransPort and DNSPort, refusal of leaky protocols.
//! - `sock`: socket creation and release: remembers which sockets are exempt.
//! - `sock_ops`: hands the original destination of a redirected TCP connection to the
//!   TransPort, keyed by the client's local address.
//! - `skb`: cgroup egress kill-switch for governed sockets.
//! - `lsm`: refuses frame sockets (AF_PACKET, AF_XDP) to governed processes; `sockopt`:
//!   refuses the options that would let their frames skip TC (where LSM is unavailable).
//! - `tc`: egress kill-switch on the uplinks for everything else (raw, packet sockets).
//! - `gateway`: ingress on the gateway interfaces (tunnel, LAN): other machines' TCP and
//!   DNS handed to the TransPort and DNSPort, the rest dropped.
//!
//! The policy itself is in `lib.rs`; these files only adapt kernel contexts to it.
#![no_std]
#![no_main]

mod gateway;
mod lsm;
mod maps;
mod packet;
mod skb;
mod sock;
mod sock_addr;
mod sock_ops;
mod sockopt;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
