//! Types shared by ttp's eBPF programs (`ttp-ebpf`) and its userspace (`ttp`).
//!
//! Everything here crosses the kernel/user boundary through BPF maps, so every type is
//! `#[repr(C)]`, has explicit padding (map keys are hashed byte for byte: no byte may be
//! left uninitialised) and only plain integer fields.
#![no_std]

/// Names of the maps in the eBPF object. Userspace finds and pins them by these names.
pub mod maps {
    /// `Array<Config>`, one entry: ports, flags, the daemon's identity.
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<u64>` indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `HashMap<u32, u8>`: UIDs whose sockets go direct.
    pub const BYPASS_UID: &str = "BYPASS_UID";
    /// `HashMap<u32, u8>`: GIDs whose sockets go direct.
    pub const BYPASS_GID: &str = "BYPASS_GID";
    /// `HashMap<u64, u8>`: cgroup ids whose subtree goes direct.
    pub const BYPASS_CGROUP: &str = "BYPASS_CGROUP";
    /// `HashMap<IpKey, u8>`: DNS-over-HTTPS resolvers whose port 443 is refused.
    pub const DOH_ADDRS: &str = "DOH_ADDRS";
    /// `LruHashMap<u64, Origin>`: socket cookie -> destination the application asked for.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// `LruHashMap<SockAddr, Origin>`: redirected client's local address -> original
    /// destination and owner. The TransPort looks up each accepted connection's peer.
    pub const CONN_DST: &str = "CONN_DST";
    /// `HashMap<u64, u8>`: socket cookie -> [`crate::Exempt`] reason, set at socket creation.
    pub const EXEMPT_SOCK: &str = "EXEMPT_SOCK";
    /// `HashMap<u32, u32>`: uplink ifindex -> length of its link-layer header (14 or 0).
    pub const UPLINKS: &str = "UPLINKS";
    /// `HashMap<u32, u32>`: gateway interface ifindex -> length of its link-layer header.
    /// Traffic arriving on these (tunnel TUN, LAN) is steered into the TransPort/DNSPort.
    pub const GATEWAYS: &str = "GATEWAYS";
    /// `HashMap<u32, u8>`: this host's own IPv4 addresses (network byte order). A gateway
    /// client's new TCP connection to one of them goes to the host's own services.
    pub const LOCAL_V4: &str = "LOCAL_V4";
    /// `HashMap<[u32; 4], u8>`: this host's own IPv6 addresses (four network-order words),
    /// for the same purpose.
    pub const LOCAL_V6: &str = "LOCAL_V6";
    /// `LruHashMap<Refused, u64>`: what the kill-switch stopped, by whom (uid and cgroup)
    /// and why (the counter): so a user sees which application tried to leak. Written by
    /// the programs, read by the daemon through a read-only descriptor.
    pub const REFUSALS: &str = "REFUSALS";
    /// `LruHashMap<Flow, u8>`: flows that a machine on the LAN started to one behind a
    /// gateway interface (a port a container publishes: DNAT, then forwarded), recorded
    /// as they leave on that interface. The gateway program lets the machine's answers to
    /// them be routed back to the LAN instead of dropping them.
    pub const INBOUND: &str = "INBOUND";
}

/// The `skb->mark` bit the gateway program sets on every packet from a gateway interface
/// that it keeps for this host (steered into the TransPort or DNSPort, a later segment of
/// such a connection, the host's own services). ttp's routing rule `iif IFACE fwmark M/M
/// lookup 29808` delivers these here whatever their destination, the way transparent
/// proxies (TPROXY, Cilium) do. The mark, and not the interface alone, so that what the
/// program leaves unmarked is routed as usual: answers to a LAN machine's flow to a
/// published port, and the kernel's reverse-path check of packets forwarded *to* the
/// interface, which looks routes up as if from it (and would otherwise find the rule's
/// `local` route and call the packet a martian).
///
/// The daemon's transparent sockets (the TransPort's and DNSPort's in gateway mode, and
/// so every connection they accept) carry the same bit as their `SO_MARK`: their packets
/// belong on a gateway interface, and the uplinks' kill-switch drops any that would leave
/// by an uplink instead (counted as `tc_dropped_gateway_stray`).
///
/// One bit, bit 28: no mark is free on every host (Calico's default mask 0xffff0000
/// covers it; Docker, Podman, kube-proxy, WireGuard and Tailscale use others).
pub const GATEWAY_LOCAL_MARK: u32 = 1 << 28;

/// A flow through a gateway interface as the machine behind it sees it: its own address
/// and port (`inside`), the LAN peer's (`outside`), the protocol. Addresses as in the
/// packet (network byte order), IPv4 in the first word with the rest zero; ports in
/// network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    pub inside: [u32; 4],
    pub outside: [u32; 4],
    pub inside_port: u16,
    pub outside_port: u16,
    pub proto: u8,
    pub v6: u8,
    pub _pad: [u8; 2],
}

/// Names of the programs in the eBPF object, one per hook.
pub mod programs {
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SENDMSG4: &str = "sendmsg4";
    pub const SENDMSG6: &str = "sendmsg6";
    pub const RECVMSG4: &str = "recvmsg4";
    pub const RECVMSG6: &str = "recvmsg6";
    pub const GETPEERNAME4: &str = "getpeername4";
    pub const GETPEERNAME6: &str = "getpeername6";
    pub const SOCK_CREATE: &str = "sock_create";
    pub const SOCK_RELEASE: &str = "sock_release";
    pub const SOCK_OPS: &str = "sock_ops";
    pub const SKB_EGRESS: &str = "skb_egress";
    pub const TC_EGRESS: &str = "tc_egress";
    pub const TC_GATEWAY: &str = "tc_gateway";
    pub const TC_GATEWAY_EGRESS: &str = "tc_gateway_egress";
    pub const SOCKET_CREATE: &str = "socket_create";
    pub const SETSOCKOPT: &str = "setsockopt";
}

/// Bits of [`Config::flags`].
pub mod flags {
    /// Drop every governed packet except loopback and the daemon's; refuse every
    /// non-loopback connect. Set first on stop and by crash recovery.
    pub const LOCKDOWN: u32 = 1 << 0;
    /// Let RFC 1918, link-local, unique-local and multicast destinations go direct.
    pub const LAN_BYPASS: u32 = 1 << 1;
    /// Let uid 0 go direct (opt-in: by default root is governed like everyone else).
    pub const ALLOW_ROOT: u32 = 1 << 2;
    /// Refuse all IPv6 instead of sending it through Tor.
    pub const IPV6_DROP: u32 = 1 << 3;
    /// At least one entry is in `BYPASS_CGROUP`: only then do the programs walk the
    /// cgroup ancestry (up to [`crate::MAX_CGROUP_DEPTH`] lookups).
    pub const HAS_BYPASS_CGROUPS: u32 = 1 << 4;
    /// Set by userspace once every map is filled; until then the programs fail closed.
    pub const READY: u32 = 1 << 5;
    /// LAN bypass without discovery: mDNS is refused too (see `ttp_ebpf::lan_allowed`).
    pub const NO_LAN_DISCOVERY: u32 = 1 << 6;
}

/// How deep the cgroup ancestry walk for bypass cgroups goes.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// `daemon_uid` value meaning "any uid in the daemon cgroup".
pub const ANY_UID: u32 = u32::MAX;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Datapath configuration, written by userspace into `CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// TransPort on loopback (host byte order).
    pub trans_port: u16,
    /// DNSPort on loopback, UDP and TCP (host byte order).
    pub dns_port: u16,
    /// [`flags`] bits.
    pub flags: u32,
    /// cgroup v2 id of the daemon's own cgroup: its sockets are never redirected or dropped.
    pub daemon_cgroup: u64,
    /// The daemon's uid, or [`ANY_UID`]. A socket is the daemon's only if both match.
    pub daemon_uid: u32,
    /// The DNSPort's virtual IPv4 range for names only Tor can resolve (.onion), host
    /// byte order. It lies in 10/8, so it must be redirected even with LAN bypass on.
    pub virt4_net: u32,
    pub virt4_mask: u32,
    /// Depth of `governed_cgroup` below the cgroup2 root.
    pub governed_level: u32,
    /// When ttp governs a subtree rather than the whole host: that subtree's cgroup id, so
    /// the uplink kill-switch leaves the rest of the host alone. 0 for the whole host.
    pub governed_cgroup: u64,
    /// Cookie of the network namespace ttp governs (its uplinks are there). A governed
    /// socket created in another namespace (a container's) is tagged [`TAG_OTHER_NETNS`]
    /// and left to that namespace's way out, which runs through this one: a gateway
    /// interface steers it into Tor, an uplink drops it. 0 (per-application mode, where
    /// the uplinks let unowned packets through): no socket is told apart by namespace.
    pub host_netns: u64,
}

impl Config {
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Is this IPv4 address (host byte order) one of the DNSPort's virtual addresses?
    pub const fn is_virtual4(&self, ip: u32) -> bool {
        self.virt4_mask != 0 && ip & self.virt4_mask == self.virt4_net
    }
}

/// What the kernel records about a redirected socket: where it wanted to go, and who it
/// belongs to (for stream isolation). Value of `ORIG_DST` and `CONN_DST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub dst: SockAddr,
    /// cgroup v2 id of the task that connected.
    pub cgroup: u64,
    pub uid: u32,
    pub gid: u32,
}

/// Key of `REFUSALS`: who had what refused. `cgroup` is the cgroup v2 id of the task (for
/// refusals at a socket call) or of the socket (for dropped packets); `uid` the task's or
/// the socket's owner; `counter` the [`Counter`] that counted it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Refused {
    pub cgroup: u64,
    pub uid: u32,
    pub counter: u32,
}

/// A socket address as the kernel's `bpf_sock_addr` holds it: IPv4 in `addr[0]`, IPv6 in all
/// four words, each word in network byte order as the kernel gives it; `port` in host order.
/// IPv4-mapped IPv6 addresses are stored as IPv4, so both sides compare like with like.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockAddr {
    pub addr: [u32; 4],
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    pub _pad: u32,
}

impl SockAddr {
    pub const fn v4(addr_be: u32, port: u16) -> Self {
        SockAddr { addr: [addr_be, 0, 0, 0], port, family: AF_INET, _pad: 0 }
    }

    /// Builds from the four network-order words of an IPv6 address; v4-mapped becomes IPv4.
    pub fn v6(addr: [u32; 4], port: u16) -> Self {
        if is_v4_mapped(&addr) {
            Self::v4(addr[3], port)
        } else {
            SockAddr { addr, port, family: AF_INET6, _pad: 0 }
        }
    }
}

/// Is this IPv6 address (network-order words) `::ffff:a.b.c.d`?
pub fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff)
}

/// Key of `DOH_ADDRS`: an address without a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    pub addr: [u32; 4],
    pub family: u16,
    pub _pad: [u16; 3],
}

impl IpKey {
    pub const fn of(a: &SockAddr) -> Self {
        IpKey { addr: a.addr, family: a.family, _pad: [0; 3] }
    }
}

/// Why a socket is exempt from redirection and the kill-switch (value of `EXEMPT_SOCK`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exempt {
    Daemon = 1,
    Root = 2,
    Uid = 3,
    Gid = 4,
    Cgroup = 5,
}

/// `EXEMPT_SOCK` value of a governed socket made in another network namespace than
/// `Config::host_netns`. It is no exemption: the cgroup hooks leave such a socket's
/// connects and packets to its namespace's way out, and every packet of it that reaches
/// an uplink is dropped like any governed packet.
pub const TAG_OTHER_NETNS: u8 = 6;

/// Every decision the programs make is counted in `COUNTERS[counter as u32]`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP connect sent to the TransPort.
    TcpRedirected = 0,
    /// TCP connect to port 53 sent to the DNSPort.
    DnsTcpRedirected,
    /// UDP datagram to port 53 sent to the DNSPort.
    DnsUdpRedirected,
    /// DNS reply source rewritten back to the server the application asked.
    DnsReplyRewritten,
    /// Connect or send by an exempt socket, left alone.
    ExemptPassed,
    /// LAN destination left alone (LAN bypass on).
    LanPassed,
    /// Non-DNS UDP refused at the socket (QUIC, NTP, ...).
    UdpRefused,
    /// DNS-over-TLS (TCP 853) refused.
    DotRefused,
    /// TCP 443 to a known DNS-over-HTTPS resolver refused.
    DohRefused,
    /// IPv6 refused because the IPv6 policy is "drop".
    Ipv6Refused,
    /// Refused because lockdown is on (or the datapath is not ready).
    LockdownRefused,
    /// Governed packets dropped by the cgroup egress kill-switch, by protocol.
    SkbDroppedTcp,
    SkbDroppedUdp,
    SkbDroppedIcmp,
    SkbDroppedOther,
    /// Packets dropped by the TC egress kill-switch on an uplink.
    TcDropped,
    /// Packets the TC kill-switch let through because the daemon sent them.
    TcPassedDaemon,
    /// Packets the TC kill-switch let through because an exempt socket sent them.
    TcPassedExempt,
    /// Link-control packets the TC kill-switch lets through (ARP, NDP, DHCP).
    TcPassedLinkControl,
    /// Exempt-socket table full: the socket stays governed (fail closed).
    ExemptTableFull,
    /// Packets the TC kill-switch let through because their socket is outside the
    /// governed subtree (only when ttp governs a subtree, not the whole host).
    TcPassedUngoverned,
    /// Gateway interfaces: TCP connections (their SYN) handed to the TransPort.
    GwTcpSteered,
    /// Gateway interfaces: DNS queries (UDP, or a TCP SYN to port 53) handed to the DNSPort.
    GwDnsSteered,
    /// Gateway interfaces: packets of connections already ours, DHCP and link control.
    GwPassed,
    /// Gateway interfaces: everything else (other UDP, ICMP, IPv6, lockdown): dropped.
    GwDropped,
    /// Gateway interfaces: the TransPort or DNSPort socket was not found (daemon gone):
    /// dropped.
    GwNoListener,
    /// Gateway interfaces: DNS answers given source port 53 on their way out.
    GwDnsReplies,
    /// Gateway interfaces: TCP connections (their SYN) to one of this host's own
    /// addresses, passed to its own services (an admin's SSH), not into Tor.
    GwLocal,
    /// Frame sockets (AF_PACKET, AF_XDP) of governed processes refused at creation, or
    /// their options that skip TC egress (PACKET_QDISC_BYPASS, SOL_XDP) refused.
    FrameSocketRefused,
    /// Multicast and broadcast of governed sockets refused with LAN bypass on: LLMNR,
    /// SSDP, NetBIOS and the like (they announce the host, or ask the LAN for names), and
    /// mDNS with `--no-lan-discovery`.
    LanDiscoveryRefused,
    /// Connects and sends of governed sockets in another network namespace (a
    /// container's), left to that namespace's way out through a gateway interface.
    OtherNetnsPassed,
    /// Gateway interfaces: flows a LAN machine started to one behind the gateway (a
    /// container's published port), recorded as they left on it.
    GwInbound,
    /// Gateway interfaces: packets answering such a flow, routed back to the LAN.
    GwInboundReplies,
    /// Uplinks: packets of the daemon's connections with gateway clients (their sockets
    /// carry [`GATEWAY_LOCAL_MARK`]) about to leave by an uplink, because the client's
    /// interface is gone (a container's bridge deleted with it): they carry the address
    /// the client visited as their source, and are dropped.
    TcDroppedGatewayStray,
}

impl Counter {
    pub const COUNT: u32 = Counter::TcDroppedGatewayStray as u32 + 1;

    /// The counter with this index (its value in a map), if there is one.
    pub fn from_index(i: u32) -> Option<Counter> {
        Counter::ALL.get(i as usize).copied()
    }

    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::TcpRedirected,
        Counter::DnsTcpRedirected,
        Counter::DnsUdpRedirected,
        Counter::DnsReplyRewritten,
        Counter::ExemptPassed,
        Counter::LanPassed,
        Counter::UdpRefused,
        Counter::DotRefused,
        Counter::DohRefused,
        Counter::Ipv6Refused,
        Counter::LockdownRefused,
        Counter::SkbDroppedTcp,
        Counter::SkbDroppedUdp,
        Counter::SkbDroppedIcmp,
        Counter::SkbDroppedOther,
        Counter::TcDropped,
        Counter::TcPassedDaemon,
        Counter::TcPassedExempt,
        Counter::TcPassedLinkControl,
        Counter::ExemptTableFull,
        Counter::TcPassedUngoverned,
        Counter::GwTcpSteered,
        Counter::GwDnsSteered,
        Counter::GwPassed,
        Counter::GwDropped,
        Counter::GwNoListener,
        Counter::GwDnsReplies,
        Counter::GwLocal,
        Counter::FrameSocketRefused,
        Counter::LanDiscoveryRefused,
        Counter::OtherNetnsPassed,
        Counter::GwInbound,
        Counter::GwInboundReplies,
        Counter::TcDroppedGatewayStray,
    ];

    /// Stable snake_case name, used in `ttp status --json` and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::TcpRedirected => "tcp_redirected",
            Counter::DnsTcpRedirected => "dns_tcp_redirected",
            Counter::DnsUdpRedirected => "dns_udp_redirected",
            Counter::DnsReplyRewritten => "dns_reply_rewritten",
            Counter::ExemptPassed => "exempt_passed",
            Counter::LanPassed => "lan_passed",
            Counter::UdpRefused => "udp_refused",
            Counter::DotRefused => "dot_refused",
            Counter::DohRefused => "doh_refused",
            Counter::Ipv6Refused => "ipv6_refused",
            Counter::LockdownRefused => "lockdown_refused",
            Counter::SkbDroppedTcp => "skb_dropped_tcp",
            Counter::SkbDroppedUdp => "skb_dropped_udp",
            Counter::SkbDroppedIcmp => "skb_dropped_icmp",
            Counter::SkbDroppedOther => "skb_dropped_other",
            Counter::TcDropped => "tc_dropped",
            Counter::TcPassedDaemon => "tc_passed_daemon",
            Counter::TcPassedExempt => "tc_passed_exempt",
            Counter::TcPassedLinkControl => "tc_passed_link_control",
            Counter::ExemptTableFull => "exempt_table_full",
            Counter::TcPassedUngoverned => "tc_passed_ungoverned",
            Counter::GwTcpSteered => "gateway_tcp_steered",
            Counter::GwDnsSteered => "gateway_dns_steered",
            Counter::GwPassed => "gateway_passed",
            Counter::GwDropped => "gateway_dropped",
            Counter::GwNoListener => "gateway_no_listener",
            Counter::GwDnsReplies => "gateway_dns_replies",
            Counter::GwLocal => "gateway_local",
            Counter::FrameSocketRefused => "frame_socket_refused",
            Counter::LanDiscoveryRefused => "lan_discovery_refused",
            Counter::OtherNetnsPassed => "other_netns_passed",
            Counter::GwInbound => "gateway_inbound",
            Counter::GwInboundReplies => "gateway_inbound_replies",
            Counter::TcDroppedGatewayStray => "tc_dropped_gateway_stray",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]` plain integers with explicit padding fields.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::Refused {}
}
