//! What the two packet-level kill-switches (skb, tc) share: reading the IP header and
//! the exemption of the socket that sent a packet.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_get_socket_cookie, bpf_get_socket_uid, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    programs::sk_buff::SkBuff,
};
use ttp_common::{Config, Exempt, ANY_UID};
use ttp_ebpf::{Dest, Netns};

use crate::maps::{exempt_by_identity, socket_tag};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Where an Ethernet frame's type field is.
const ETH_TYPE_AT: usize = 12;
const VLAN_HLEN: usize = 4;
const IPPROTO_HOPOPTS: u8 = 0;

/// An IP packet's destination, and where its header starts.
pub struct Ip {
    pub dest: Dest,
    v6: bool,
    l3: usize,
}

impl Ip {
    /// Reads the destination address at `l3` (0 in cgroup_skb, the link-layer length in
    /// tc) with a single load: the hot path needs nothing else.
    #[inline(always)]
    pub fn parse(skb: &SkBuff, l3: usize) -> Option<Ip> {
        match u16::from_be(skb.protocol() as u16) {
            ETH_P_IP => {
                let daddr: u32 = skb.load(l3 + 16).ok()?;
                Some(Ip { dest: Dest::v4(u32::from_be(daddr), 0), v6: false, l3 })
            }
            ETH_P_IPV6 => {
                let w: [u32; 4] = skb.load(l3 + 24).ok()?;
                Some(Ip { dest: Dest::v6(w.map(u32::from_be), 0), v6: true, l3 })
            }
            _ => None,
        }
    }

    /// What a frame leaving an uplink is, from its own bytes. `skb->protocol` will not do
    /// here: a packet socket's caller chooses it (`sll_protocol`) whatever the frame
    /// carries, so an IPv4 frame sent as "ARP" would pass for link control. `l2` is the
    /// link-layer header's length: 14 on Ethernet (up to two VLAN tags are looked
    /// through), 0 on layer-3 devices (the IP version nibble tells).
    #[inline(always)]
    pub fn parse_frame(skb: &SkBuff, l2: usize) -> Frame {
        let (ethertype, l3) = if l2 == 0 {
            match skb.load::<u8>(0).map(|b| b >> 4) {
                Ok(4) => (ETH_P_IP, 0),
                Ok(6) => (ETH_P_IPV6, 0),
                // A layer-3 device carries IP and nothing else.
                _ => return Frame::Unreadable,
            }
        } else {
            let Ok(mut t) = skb.load::<u16>(ETH_TYPE_AT).map(u16::from_be) else { return Frame::Unreadable };
            let mut l3 = l2;
            // Unrolled for the verifier: at most two tags (802.1ad outer, 802.1Q inner).
            if t == ETH_P_8021Q || t == ETH_P_8021AD {
                let Ok(inner) = skb.load::<u16>(ETH_TYPE_AT + VLAN_HLEN).map(u16::from_be) else {
                    return Frame::Unreadable;
                };
                (t, l3) = (inner, l3 + VLAN_HLEN);
                if t == ETH_P_8021Q || t == ETH_P_8021AD {
                    let Ok(inner) = skb.load::<u16>(ETH_TYPE_AT + 2 * VLAN_HLEN).map(u16::from_be) else {
                        return Frame::Unreadable;
                    };
                    (t, l3) = (inner, l3 + VLAN_HLEN);
                }
            }
            (t, l3)
        };
        let ip = match ethertype {
            ETH_P_IP => skb.load::<u32>(l3 + 16).ok().map(|d| Ip { dest: Dest::v4(u32::from_be(d), 0), v6: false, l3 }),
            ETH_P_IPV6 => {
                skb.load::<[u32; 4]>(l3 + 24).ok().map(|w| Ip { dest: Dest::v6(w.map(u32::from_be), 0), v6: true, l3 })
            }
            // More VLAN tags than looked through: what they carry is unknown.
            ETH_P_8021Q | ETH_P_8021AD => return Frame::Unreadable,
            t if ttp_ebpf::link_control_ethertype(t) => return Frame::LinkControl,
            _ => return Frame::Unreadable,
        };
        ip.map_or(Frame::Unreadable, Frame::Ip)
    }

    /// Multicast and broadcast destinations are judged by port too
    /// ([`ttp_ebpf::lan_allowed`]): for them (only, off the hot path) the UDP or TCP
    /// destination port is read into `dest.port`.
    #[inline(always)]
    pub fn read_group_port(&mut self, skb: &SkBuff) {
        if !self.dest.group {
            return;
        }
        if let Some((proto, l4)) = self.transport(skb) {
            if proto == 17 || proto == 6 {
                if let Ok(p) = skb.load::<u16>(l4 + 2) {
                    self.dest.port = u16::from_be(p);
                }
            }
        }
    }

    /// The transport protocol and where its header starts; read only off the hot path.
    /// Of IPv6 extension headers only one hop-by-hop header is skipped (MLD reports carry
    /// one); behind others the protocol is the extension's number, which can only make a
    /// packet look less like link control, never let one through.
    #[inline(always)]
    pub fn transport(&self, skb: &SkBuff) -> Option<(u8, usize)> {
        if !self.v6 {
            let vihl: u8 = skb.load(self.l3).ok()?;
            let proto: u8 = skb.load(self.l3 + 9).ok()?;
            return Some((proto, self.l3 + ((vihl & 0x0f) as usize) * 4));
        }
        let mut proto: u8 = skb.load(self.l3 + 6).ok()?;
        let mut l4 = self.l3 + 40;
        if proto == IPPROTO_HOPOPTS {
            let next: u8 = skb.load(l4).ok()?;
            let len: u8 = skb.load(l4 + 1).ok()?;
            proto = next;
            l4 += (len as usize + 1) * 8;
        }
        Some((proto, l4))
    }
}

/// What [`Ip::parse_frame`] found.
pub enum Frame {
    Ip(Ip),
    /// A frame whose own type is link control (ARP, EAPOL, LLDP).
    LinkControl,
    /// Too short, of another type, or of a kind that cannot be read through.
    Unreadable,
}

/// Why the socket that sent this packet is exempt, if it is. Packets without a full
/// socket (forwarded, time-wait, no socket at all) are never exempt.
#[inline(always)]
pub fn exempt_of(cfg: &Config, skb: *mut __sk_buff) -> Option<Exempt> {
    socket_of(cfg, skb).0
}

/// [`exempt_of`], and which network namespace the sending socket was made in (one lookup
/// of its tag for both). Packets without a socket count as the host's.
#[inline(always)]
pub fn socket_of(cfg: &Config, skb: *mut __sk_buff) -> (Option<Exempt>, Netns) {
    // SAFETY: skb is the program's context, valid for these helpers.
    unsafe {
        // The daemon's own traffic is the hot path on the uplink: decide it first, with one
        // helper call. Packets without a full socket have cgroup id 0.
        let cgroup = bpf_skb_cgroup_id(skb);
        let uid = || bpf_get_socket_uid(skb);
        if cgroup != 0 && cgroup == cfg.daemon_cgroup && (cfg.daemon_uid == ANY_UID || cfg.daemon_uid == uid()) {
            return (Some(Exempt::Daemon), Netns::Host);
        }
        let cookie = bpf_get_socket_cookie(skb.cast());
        if cookie == 0 {
            return (None, Netns::Host);
        }
        let (tag, netns) = socket_tag(cookie);
        if tag.is_some() || cgroup == 0 {
            return (tag, netns);
        }
        (exempt_by_identity(cfg, cgroup, uid(), None, |level| bpf_skb_ancestor_cgroup_id(skb, level as i32)), netns)
    }
}
