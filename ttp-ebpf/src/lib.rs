//! The datapath's decisions as pure functions, shared by every program in `main.rs`.
//!
//! Nothing here touches a map or a helper, so the policy is unit-tested on the host
//! (`cargo test -p ttp-ebpf --lib`) while the programs stay thin adapters around it.
#![no_std]

use ttp_common::{flags, Config, Counter, Exempt};

/// Where a connect or a packet is going, classified once per hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    pub v6: bool,
    /// 127.0.0.0/8, 0.0.0.0/8, ::1, :: : this host, never governed.
    pub loopback: bool,
    /// RFC 1918, link-local, CGNAT-free LAN ranges, unique-local, multicast, broadcast.
    pub lan: bool,
    /// Multicast or broadcast: to every host of the LAN at once.
    pub group: bool,
    /// The mDNS group (224.0.0.251, ff02::fb).
    pub mdns: bool,
    /// Destination port, host byte order.
    pub port: u16,
    /// One of the DNSPort's virtual addresses: always redirected, never LAN.
    pub virt: bool,
}

impl Dest {
    /// `ip` in host byte order (`u32::from_be` of the kernel's field).
    pub const fn v4(ip: u32, port: u16) -> Self {
        Dest {
            v6: false,
            loopback: v4_is_local(ip),
            lan: v4_is_lan(ip),
            group: ip >> 28 == 0xe || ip == 0xffff_ffff,
            mdns: ip == 0xe000_00fb,
            port,
            virt: false,
        }
    }

    /// `words` in host byte order; callers turn v4-mapped addresses into [`Dest::v4`] first.
    pub const fn v6(words: [u32; 4], port: u16) -> Self {
        Dest {
            v6: true,
            loopback: v6_is_local(words),
            lan: v6_is_lan(words),
            group: words[0] >> 24 == 0xff,
            mdns: words[0] == 0xff02_0000 && words[1] == 0 && words[2] == 0 && words[3] == 0xfb,
            port,
            virt: false,
        }
    }
}

pub const fn v4_is_local(ip: u32) -> bool {
    let first = ip >> 24;
    first == 127 || first == 0
}

pub const fn v4_is_lan(ip: u32) -> bool {
    ip >> 24 == 10                       // 10.0.0.0/8
        || ip >> 20 == 0xac1             // 172.16.0.0/12
        || ip >> 16 == 0xc0a8            // 192.168.0.0/16
        || ip >> 16 == 0xa9fe            // 169.254.0.0/16 link-local
        || ip >> 28 == 0xe               // 224.0.0.0/4 multicast (mDNS, SSDP)
        || ip == 0xffff_ffff // limited broadcast
}

pub const fn v6_is_local(w: [u32; 4]) -> bool {
    w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == 1 || w[3] == 0)
}

pub const fn v6_is_lan(w: [u32; 4]) -> bool {
    w[0] >> 25 == 0x7e          // fc00::/7 unique-local
        || w[0] >> 22 == 0x3fa  // fe80::/10 link-local
        || w[0] >> 24 == 0xff // ff00::/8 multicast
}

/// Transport protocol of a connect or send the sock_addr hooks see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Which network namespace a governed socket lives in, as its creation tagged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netns {
    /// The namespace ttp governs (or any, when ttp governs a subtree).
    Host,
    /// Another one: a container's. Its only ways out run through the host namespace (a
    /// veth into a bridge, a macvlan on an uplink, a helper's socket there), where the
    /// gateway program steers what arrives on a gateway interface into Tor and the
    /// uplinks' kill-switch drops the rest.
    Other,
}

/// What a sock_addr hook does with a connect or a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Leave it alone; count it if `Some`.
    Pass(Option<Counter>),
    /// Rewrite the destination to our `port` on loopback and remember the original.
    Redirect { port: u16, counter: Counter },
    /// Refuse at the socket (EPERM).
    Refuse(Counter),
}

/// The whole redirection policy for one connect/send by a socket of the governed cgroup.
///
/// `exempt` is why the socket may go direct, if it may; `doh` whether the destination is
/// a listed DNS-over-HTTPS resolver.
///
/// A socket in another network namespace (`netns`) is not redirected: our listeners are
/// on the host namespace's loopback, which it cannot reach. Its traffic is steered on the
/// way out instead, by the gateway program on the container bridge; without one, the
/// uplinks drop it. Its own loopback (a container's DNS stub on 127.0.0.11) is its own.
pub fn decide(cfg: &Config, proto: Proto, dest: &Dest, exempt: Option<Exempt>, doh: bool, netns: Netns) -> Action {
    if exempt == Some(Exempt::Daemon) {
        return Action::Pass(Some(Counter::ExemptPassed));
    }
    // Local services stay local, except DNS: a stub resolver on loopback would otherwise
    // answer governed applications without Tor.
    if dest.loopback && dest.port != 53 {
        return Action::Pass(None);
    }
    if !cfg.has(flags::READY) || cfg.has(flags::LOCKDOWN) {
        return Action::Refuse(Counter::LockdownRefused);
    }
    if exempt.is_some() {
        return Action::Pass(Some(Counter::ExemptPassed));
    }
    if netns == Netns::Other {
        return Action::Pass(Some(Counter::OtherNetnsPassed));
    }
    // DNS always goes to the DNSPort, also to a LAN resolver (the home router): LAN
    // bypass is for reaching LAN hosts, not for resolving names past Tor.
    match (proto, dest.port) {
        (Proto::Tcp, 53) => return Action::Redirect { port: cfg.dns_port, counter: Counter::DnsTcpRedirected },
        (Proto::Udp, 53) => return Action::Redirect { port: cfg.dns_port, counter: Counter::DnsUdpRedirected },
        _ => {}
    }
    if lan_allowed(cfg, dest) {
        return Action::Pass(Some(Counter::LanPassed));
    }
    if dest.group && cfg.has(flags::LAN_BYPASS) {
        return Action::Refuse(Counter::LanDiscoveryRefused);
    }
    if dest.v6 && cfg.has(flags::IPV6_DROP) {
        return Action::Refuse(Counter::Ipv6Refused);
    }
    match (proto, dest.port) {
        (Proto::Tcp, 853) => Action::Refuse(Counter::DotRefused),
        (Proto::Tcp, 443) if doh => Action::Refuse(Counter::DohRefused),
        (Proto::Tcp, _) => Action::Redirect { port: cfg.trans_port, counter: Counter::TcpRedirected },
        (Proto::Udp, _) => Action::Refuse(Counter::UdpRefused),
    }
}

/// The egress kill-switch: may a packet of a governed socket leave for `dest`?
///
/// Redirected traffic only ever goes to loopback, so anything else must be exempt or LAN,
/// or leave another network namespace (see [`decide`]): its way out is judged where it
/// enters the host namespace.
pub fn egress_allowed(cfg: &Config, dest: &Dest, exempt: Option<Exempt>, netns: Netns) -> bool {
    if dest.loopback || exempt == Some(Exempt::Daemon) {
        return true;
    }
    if !cfg.has(flags::READY) || cfg.has(flags::LOCKDOWN) {
        return false;
    }
    exempt.is_some() || netns == Netns::Other || lan_allowed(cfg, dest)
}

/// What LAN bypass lets a governed socket send to the LAN directly.
///
/// - Unicast to private, link-local and unique-local addresses: a printer, a NAS, the
///   router's admin page.
/// - Of multicast and broadcast, which reach every host of the LAN at once: DHCP (the
///   host's own address, ports 67 and 547), and mDNS (printers and casting find each other
///   by it; it names this host and its services to the LAN) unless `--no-lan-discovery`.
/// - Nothing else: LLMNR and NetBIOS ask the whole LAN for the names a program looks up
///   (a failed DNS lookup falls back to them), SSDP and WS-Discovery announce the host.
///
/// `dest.port` must be the transport's destination port for group destinations.
pub fn lan_allowed(cfg: &Config, dest: &Dest) -> bool {
    if !dest.lan || dest.virt || !cfg.has(flags::LAN_BYPASS) {
        return false;
    }
    if !dest.group {
        return true;
    }
    match dest.port {
        67 | 547 => true,
        5353 if dest.mdns => !cfg.has(flags::NO_LAN_DISCOVERY),
        _ => false,
    }
}

/// Address families whose sockets put frames on a link directly, below the cgroup and TC
/// hooks (`PACKET_QDISC_BYPASS` skips TC egress; AF_XDP hands frames to the driver).
pub const AF_PACKET: i32 = 17;
pub const AF_XDP: i32 = 44;

/// May a governed process create a socket of `family`? `kern`: the kernel's own socket,
/// created on its behalf (never refused). Frame sockets are for exempt processes only,
/// and only while the kill-switch is open (the daemon itself has no use for them).
pub fn socket_allowed(cfg: &Config, family: i32, kern: bool, exempt: Option<Exempt>) -> bool {
    if kern || (family != AF_PACKET && family != AF_XDP) {
        return true;
    }
    let open = cfg.has(flags::READY) && !cfg.has(flags::LOCKDOWN);
    exempt.is_some() && open
}

/// Socket options that let frames skip the TC kill-switch: `PACKET_QDISC_BYPASS` (a packet
/// socket's frames go straight to the driver), and every `SOL_XDP` option (an AF_XDP
/// socket needs them to send at all, and it too bypasses TC).
pub const SOL_PACKET: i32 = 263;
pub const PACKET_QDISC_BYPASS: i32 = 20;
pub const SOL_XDP: i32 = 283;

/// May a governed process set this socket option? Only the options that bypass the TC
/// kill-switch are refused, and only to processes that are not exempt (or at all while
/// the kill-switch is closed). This holds where BPF LSM cannot refuse the socket itself.
pub fn sockopt_allowed(cfg: &Config, level: i32, optname: i32, exempt: Option<Exempt>) -> bool {
    let bypasses_tc = (level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP;
    if !bypasses_tc {
        return true;
    }
    let open = cfg.has(flags::READY) && !cfg.has(flags::LOCKDOWN);
    exempt.is_some() && open
}

/// Ethernet types that are link control, carrying no application's payload beyond the
/// link: ARP, 802.1X (EAPOL and its pre-authentication) and LLDP. The TC kill-switch lets
/// these through and drops every other non-IP frame (a custom type could carry anything
/// to a listener on the LAN).
pub fn link_control_ethertype(t: u16) -> bool {
    matches!(t, 0x0806 | 0x888e | 0x88c7 | 0x88cc)
}

/// What the gateway program does with an IPv4 packet that arrived on a gateway interface
/// (the tunnel's TUN, a LAN interface): traffic of other machines, torified like local
/// traffic, never forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayAction {
    /// A new TCP connection: hand it to our listener on loopback `port` (the TransPort,
    /// or the DNSPort for TCP port 53).
    SteerTcp {
        port: u16,
        counter: Counter,
    },
    /// A DNS query: hand it to the DNSPort's UDP socket on loopback `port`.
    SteerUdp {
        port: u16,
    },
    /// Another TCP segment: it may belong to a connection already steered; it passes only
    /// if the kernel holds a connected socket for its exact addresses (never a listener).
    Established,
    /// The stack may have it: a DHCP request to the gateway itself.
    Pass,
    /// A new TCP connection to one of this host's own addresses: the stack takes it to
    /// the host's own service (an admin's SSH from the LAN), not into Tor.
    Local,
    Drop,
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// The gateway's whole policy for one packet: `proto` and `dport` (host order) of an
/// unfragmented IPv4 packet, `tcp_flags` the TCP header's flag byte (0 for others),
/// `to_local` whether its destination is one of this host's own addresses. IPv6,
/// fragments and anything unparsable are dropped by the caller before this.
///
/// Passing a connection to a local address cannot leak: ttp's routing rule delivers
/// whatever arrives on a gateway interface to this host, so the stack never forwards it.
/// So in lockdown (a failed or killed daemon: its monitor sets it) the gateway's own
/// services stay reachable, and an admin can still log in to fix it; nothing is steered
/// to the proxy ports then. DNS to the gateway's own address is still the DNSPort's:
/// clients use it as resolver.
pub fn gateway_decide(cfg: &Config, proto: u8, dport: u16, tcp_flags: u8, to_local: bool) -> GatewayAction {
    if !cfg.has(flags::READY) {
        return GatewayAction::Drop;
    }
    let open = !cfg.has(flags::LOCKDOWN);
    match proto {
        IPPROTO_TCP if tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN => {
            if dport == 53 && open {
                GatewayAction::SteerTcp { port: cfg.dns_port, counter: Counter::GwDnsSteered }
            } else if to_local && dport != 53 {
                GatewayAction::Local
            } else if open {
                GatewayAction::SteerTcp { port: cfg.trans_port, counter: Counter::GwTcpSteered }
            } else {
                GatewayAction::Drop
            }
        }
        IPPROTO_TCP => GatewayAction::Established,
        IPPROTO_UDP if dport == 53 && open => GatewayAction::SteerUdp { port: cfg.dns_port },
        IPPROTO_UDP if dport == 67 => GatewayAction::Pass,
        _ => GatewayAction::Drop,
    }
}

/// Whether a packet leaving a gateway interface starts a flow that a LAN machine opened
/// to one behind the gateway (a port a container publishes: the host's DNAT made it and
/// forwards it): `forwarded` by this host rather than sent by one of its sockets, a new
/// TCP connection (its bare SYN) or a UDP datagram, from a LAN address (`from`, the
/// packet's source) that LAN bypass lets this host talk to. Not in lockdown: replies
/// to the LAN are closed then on the uplinks too. Recorded in `INBOUND`, so that
/// [`gateway_answers_inbound`] routes the machine's answers back.
pub fn gateway_inbound_starts(cfg: &Config, proto: u8, tcp_flags: u8, forwarded: bool, from: &Dest) -> bool {
    forwarded && lan_reachable(cfg, from) && new_flow(proto, tcp_flags)
}

/// Whether a packet arriving on a gateway interface may answer a LAN machine's inbound
/// flow (to be confirmed in `INBOUND`, looked up only when this holds: most packets are
/// the machines' own traffic into Tor): TCP that is not a bare SYN (a new connection of
/// its own goes into Tor), or UDP, to a LAN address (`to`) that LAN bypass lets this host
/// talk to. Such a packet goes into the stack unmarked, to be routed back to the LAN
/// rather than delivered locally; the uplink's kill-switch still decides whether it may
/// leave there.
pub fn gateway_answers_inbound(cfg: &Config, proto: u8, tcp_flags: u8, to: &Dest) -> bool {
    lan_reachable(cfg, to)
        && match proto {
            IPPROTO_TCP => tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN,
            IPPROTO_UDP => true,
            _ => false,
        }
}

/// Ready and open, LAN bypass on, and `peer` one unicast LAN address.
fn lan_reachable(cfg: &Config, peer: &Dest) -> bool {
    cfg.has(flags::READY) && !cfg.has(flags::LOCKDOWN) && !peer.group && lan_allowed(cfg, peer)
}

/// A new TCP connection's first segment, or any UDP datagram.
const fn new_flow(proto: u8, tcp_flags: u8) -> bool {
    match proto {
        IPPROTO_TCP => tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
        IPPROTO_UDP => true,
        _ => false,
    }
}

/// The source port a UDP packet leaving a gateway interface must carry, if it must be
/// changed: the DNSPort's answers to the machines behind the gateway. Their source address
/// is already the resolver the client asked (the DNSPort answers from the address each
/// query was sent to), but a socket has one port, and the client expects the answer from
/// port 53. `sport` in host order.
pub const fn gateway_reply_port(cfg: &Config, proto: u8, sport: u16) -> Option<u16> {
    if proto == IPPROTO_UDP && sport == cfg.dns_port && sport != 53 {
        Some(53)
    } else {
        None
    }
}

/// Is `uid` the daemon's, given the configured daemon uid?
pub const fn daemon_uid_matches(cfg: &Config, uid: u32) -> bool {
    cfg.daemon_uid == ttp_common::ANY_UID || cfg.daemon_uid == uid
}

/// Counter for a packet the cgroup kill-switch drops, by IP protocol number.
pub const fn skb_drop_counter(ip_proto: u8) -> Counter {
    match ip_proto {
        6 => Counter::SkbDroppedTcp,
        17 => Counter::SkbDroppedUdp,
        1 | 58 => Counter::SkbDroppedIcmp,
        _ => Counter::SkbDroppedOther,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: u32) -> Config {
        Config { trans_port: 9040, dns_port: 9053, flags: f | flags::READY, ..Default::default() }
    }
    const INTERNET: u32 = 0x5db8_d822; // 93.184.216.34
    const LAN: u32 = 0xc0a8_0105; // 192.168.1.5

    #[test]
    fn only_the_options_that_skip_tc_are_refused_and_only_to_the_governed() {
        let open = cfg(0);
        assert!(!sockopt_allowed(&open, SOL_PACKET, PACKET_QDISC_BYPASS, None));
        assert!(!sockopt_allowed(&open, SOL_XDP, 4, None));
        assert!(sockopt_allowed(&open, SOL_PACKET, PACKET_QDISC_BYPASS, Some(Exempt::Cgroup)));
        assert!(!sockopt_allowed(&cfg(flags::LOCKDOWN), SOL_XDP, 4, Some(Exempt::Cgroup)));
        // Everything else is none of this program's business, lockdown or not.
        for (level, name) in [(SOL_PACKET, 1), (1, 2), (6, 1), (0, 1)] {
            assert!(sockopt_allowed(&cfg(flags::LOCKDOWN), level, name, None), "{level} {name}");
        }
    }

    #[test]
    fn only_real_link_control_types_pass() {
        for t in [0x0806, 0x888e, 0x88cc] {
            assert!(link_control_ethertype(t), "{t:#x}");
        }
        for t in [0x0800, 0x86dd, 0x8100, 0x88b5, 0x0842, 0x9000, 0x0000, 0x05dc] {
            assert!(!link_control_ethertype(t), "{t:#x}");
        }
    }

    #[test]
    fn frame_sockets_only_for_exempt_processes_while_open() {
        let open = cfg(0);
        for family in [AF_PACKET, AF_XDP] {
            assert!(!socket_allowed(&open, family, false, None), "{family}");
            assert!(socket_allowed(&open, family, false, Some(Exempt::Uid)), "{family}");
            assert!(!socket_allowed(&cfg(flags::LOCKDOWN), family, false, Some(Exempt::Uid)), "{family}");
            assert!(socket_allowed(&open, family, true, None), "kernel sockets: {family}");
        }
        // Everything else is the other hooks' business.
        for family in [2, 10, 1, 16] {
            assert!(socket_allowed(&cfg(flags::LOCKDOWN), family, false, None), "{family}");
        }
        assert!(!socket_allowed(&Config::default(), AF_PACKET, false, Some(Exempt::Uid)), "not ready: closed");
    }

    #[test]
    fn classifies_addresses() {
        assert!(v4_is_local(0x7f00_0001) && v4_is_local(0));
        assert!(!v4_is_local(INTERNET) && !v4_is_lan(INTERNET));
        for ip in [0x0a01_0203, 0xac1f_0001, LAN, 0xa9fe_0101, 0xe000_00fb, 0xffff_ffff] {
            assert!(v4_is_lan(ip), "{ip:#x}");
        }
        assert!(!v4_is_lan(0xac20_0001)); // 172.32.0.1 is outside 172.16/12
        assert!(v6_is_local([0, 0, 0, 1]));
        assert!(v6_is_lan([0xfd00_0000, 0, 0, 1]) && v6_is_lan([0xfe80_0000, 0, 0, 1]));
        assert!(!v6_is_lan([0x2001_0db8, 0, 0, 1]));
    }

    #[test]
    fn tcp_and_dns_are_redirected() {
        let c = cfg(0);
        assert_eq!(
            decide(&c, Proto::Tcp, &Dest::v4(INTERNET, 80), None, false, Netns::Host),
            Action::Redirect { port: 9040, counter: Counter::TcpRedirected }
        );
        assert_eq!(
            decide(&c, Proto::Tcp, &Dest::v4(INTERNET, 53), None, false, Netns::Host),
            Action::Redirect { port: 9053, counter: Counter::DnsTcpRedirected }
        );
        assert_eq!(
            decide(&c, Proto::Udp, &Dest::v4(INTERNET, 53), None, false, Netns::Host),
            Action::Redirect { port: 9053, counter: Counter::DnsUdpRedirected }
        );
        assert_eq!(
            decide(&c, Proto::Tcp, &Dest::v6([0x2001_0db8, 0, 0, 1], 443), None, false, Netns::Host),
            Action::Redirect { port: 9040, counter: Counter::TcpRedirected }
        );
    }

    #[test]
    fn dns_is_redirected_even_to_lan_and_loopback_resolvers() {
        let c = cfg(flags::LAN_BYPASS);
        let dns = Action::Redirect { port: 9053, counter: Counter::DnsUdpRedirected };
        assert_eq!(decide(&c, Proto::Udp, &Dest::v4(LAN, 53), None, false, Netns::Host), dns);
        assert_eq!(decide(&c, Proto::Udp, &Dest::v4(0x7f00_0035, 53), None, false, Netns::Host), dns); // 127.0.0.53
        assert_eq!(decide(&c, Proto::Udp, &Dest::v6([0, 0, 0, 1], 53), None, false, Netns::Host), dns);
        // ... but an exempt socket resolves directly, and other loopback ports stay local.
        assert_eq!(
            decide(&c, Proto::Udp, &Dest::v4(LAN, 53), Some(Exempt::Uid), false, Netns::Host),
            Action::Pass(Some(Counter::ExemptPassed))
        );
        assert_eq!(decide(&c, Proto::Udp, &Dest::v4(0x7f00_0001, 5353), None, false, Netns::Host), Action::Pass(None));
    }

    #[test]
    fn leaky_protocols_are_refused() {
        let c = cfg(0);
        let d = |port| Dest::v4(INTERNET, port);
        assert_eq!(decide(&c, Proto::Udp, &d(443), None, false, Netns::Host), Action::Refuse(Counter::UdpRefused));
        assert_eq!(decide(&c, Proto::Tcp, &d(853), None, false, Netns::Host), Action::Refuse(Counter::DotRefused));
        assert_eq!(decide(&c, Proto::Tcp, &d(443), None, true, Netns::Host), Action::Refuse(Counter::DohRefused));
        let v6 = Dest::v6([0x2001_0db8, 0, 0, 1], 80);
        assert_eq!(
            decide(&cfg(flags::IPV6_DROP), Proto::Tcp, &v6, None, false, Netns::Host),
            Action::Refuse(Counter::Ipv6Refused)
        );
    }

    #[test]
    fn loopback_exempt_and_lan() {
        let c = cfg(flags::LAN_BYPASS);
        assert_eq!(decide(&c, Proto::Tcp, &Dest::v4(0x7f00_0001, 80), None, false, Netns::Host), Action::Pass(None));
        assert_eq!(
            decide(&c, Proto::Udp, &Dest::v4(LAN, 5353), None, false, Netns::Host),
            Action::Pass(Some(Counter::LanPassed))
        );
        let off = cfg(0);
        assert!(matches!(
            decide(&off, Proto::Tcp, &Dest::v4(LAN, 80), None, false, Netns::Host),
            Action::Redirect { .. }
        ));
        assert_eq!(
            decide(&off, Proto::Udp, &Dest::v4(INTERNET, 443), Some(Exempt::Uid), false, Netns::Host),
            Action::Pass(Some(Counter::ExemptPassed))
        );
    }

    #[test]
    fn lockdown_and_unready_fail_closed_except_daemon() {
        let locked = cfg(flags::LOCKDOWN | flags::LAN_BYPASS);
        let unready = Config { flags: 0, ..cfg(0) };
        for c in [locked, unready] {
            let d = Dest::v4(INTERNET, 80);
            assert_eq!(
                decide(&c, Proto::Tcp, &d, Some(Exempt::Uid), false, Netns::Host),
                Action::Refuse(Counter::LockdownRefused)
            );
            assert_eq!(
                decide(&c, Proto::Tcp, &Dest::v4(LAN, 80), None, false, Netns::Host),
                Action::Refuse(Counter::LockdownRefused)
            );
            assert!(matches!(decide(&c, Proto::Tcp, &d, Some(Exempt::Daemon), false, Netns::Host), Action::Pass(_)));
            assert!(!egress_allowed(&c, &d, Some(Exempt::Cgroup), Netns::Host));
            assert!(egress_allowed(&c, &d, Some(Exempt::Daemon), Netns::Host));
            assert!(egress_allowed(&c, &Dest::v4(0x7f00_0001, 1), None, Netns::Host));
        }
    }

    #[test]
    fn virtual_addresses_are_redirected_despite_lan_bypass() {
        let c = Config { virt4_net: 0x0ac0_0000, virt4_mask: 0xffc0_0000, ..cfg(flags::LAN_BYPASS) };
        let ip = 0x0ac0_0005; // 10.192.0.5
        assert!(c.is_virtual4(ip) && !c.is_virtual4(0x0a00_0001));
        let d = Dest { virt: c.is_virtual4(ip), ..Dest::v4(ip, 80) };
        assert!(matches!(decide(&c, Proto::Tcp, &d, None, false, Netns::Host), Action::Redirect { .. }));
    }

    #[test]
    fn the_gateway_steers_tcp_and_dns_passes_its_own_services_and_drops_the_rest() {
        let c = cfg(0);
        let syn = TCP_FLAG_SYN;
        assert_eq!(
            gateway_decide(&c, IPPROTO_TCP, 80, syn, false),
            GatewayAction::SteerTcp { port: 9040, counter: Counter::GwTcpSteered }
        );
        assert_eq!(
            gateway_decide(&c, IPPROTO_TCP, 53, syn, false),
            GatewayAction::SteerTcp { port: 9053, counter: Counter::GwDnsSteered }
        );
        // A SYN-ACK is not a new connection from the client: never steered to a listener.
        assert_eq!(gateway_decide(&c, IPPROTO_TCP, 80, syn | TCP_FLAG_ACK, false), GatewayAction::Established);
        assert_eq!(gateway_decide(&c, IPPROTO_TCP, 80, TCP_FLAG_ACK, false), GatewayAction::Established);
        assert_eq!(gateway_decide(&c, IPPROTO_UDP, 53, 0, false), GatewayAction::SteerUdp { port: 9053 });
        assert_eq!(gateway_decide(&c, IPPROTO_UDP, 67, 0, false), GatewayAction::Pass);
        assert_eq!(gateway_decide(&c, IPPROTO_UDP, 443, 0, false), GatewayAction::Drop);
        // ICMP.
        assert_eq!(gateway_decide(&c, 1, 0, 0, false), GatewayAction::Drop);
        // LAN bypass is for this host's applications, not for machines behind the gateway.
        assert_eq!(gateway_decide(&cfg(flags::LAN_BYPASS), IPPROTO_UDP, 5353, 0, false), GatewayAction::Drop);
        // The gateway's own services: a new connection to its own address is the stack's,
        // but DNS to it is still the DNSPort's, and only TCP is passed.
        assert_eq!(gateway_decide(&c, IPPROTO_TCP, 22, syn, true), GatewayAction::Local);
        assert_eq!(
            gateway_decide(&c, IPPROTO_TCP, 53, syn, true),
            GatewayAction::SteerTcp { port: 9053, counter: Counter::GwDnsSteered }
        );
        assert_eq!(gateway_decide(&c, IPPROTO_UDP, 53, 0, true), GatewayAction::SteerUdp { port: 9053 });
        assert_eq!(gateway_decide(&c, IPPROTO_UDP, 5000, 0, true), GatewayAction::Drop);
        assert_eq!(gateway_decide(&c, IPPROTO_TCP, 22, TCP_FLAG_ACK, true), GatewayAction::Established);
        assert_eq!(gateway_reply_port(&c, IPPROTO_UDP, 9053), Some(53));
        assert_eq!(gateway_reply_port(&c, IPPROTO_UDP, 9054), None);
        assert_eq!(gateway_reply_port(&c, IPPROTO_TCP, 9053), None); // TCP answers from 53 already
        for closed in [cfg(flags::LOCKDOWN), Config { flags: 0, ..cfg(0) }] {
            assert_eq!(gateway_decide(&closed, IPPROTO_TCP, 80, syn, false), GatewayAction::Drop);
            assert_eq!(gateway_decide(&closed, IPPROTO_TCP, 53, syn, false), GatewayAction::Drop);
            assert_eq!(gateway_decide(&closed, IPPROTO_TCP, 53, syn, true), GatewayAction::Drop);
            assert_eq!(gateway_decide(&closed, IPPROTO_UDP, 53, 0, false), GatewayAction::Drop);
        }
        // In lockdown (a failed daemon) the gateway's own services stay reachable: local
        // delivery, never forwarded. Maps never filled (no READY): nothing at all.
        assert_eq!(gateway_decide(&cfg(flags::LOCKDOWN), IPPROTO_TCP, 22, syn, true), GatewayAction::Local);
        assert_eq!(gateway_decide(&Config::default(), IPPROTO_TCP, 22, syn, true), GatewayAction::Drop);
    }

    #[test]
    fn a_lan_machines_flow_to_a_published_port_is_answered_back_to_the_lan_only() {
        let on = cfg(flags::LAN_BYPASS);
        let peer = Dest::v4(LAN, 51000);
        let syn = TCP_FLAG_SYN;
        let syn_ack = TCP_FLAG_SYN | TCP_FLAG_ACK;
        // Recorded: a forwarded SYN or datagram from a LAN address, with LAN bypass.
        assert!(gateway_inbound_starts(&on, IPPROTO_TCP, syn, true, &peer));
        assert!(gateway_inbound_starts(&on, IPPROTO_UDP, 0, true, &peer));
        assert!(!gateway_inbound_starts(&on, IPPROTO_TCP, syn, false, &peer), "one of this host's own sockets");
        assert!(!gateway_inbound_starts(&on, IPPROTO_TCP, syn_ack, true, &peer), "not a new connection");
        assert!(!gateway_inbound_starts(&on, IPPROTO_TCP, TCP_FLAG_ACK, true, &peer));
        assert!(!gateway_inbound_starts(&on, 1, 0, true, &peer), "ICMP");
        assert!(!gateway_inbound_starts(&on, IPPROTO_TCP, syn, true, &Dest::v4(INTERNET, 51000)), "from the internet");
        assert!(!gateway_inbound_starts(&cfg(0), IPPROTO_TCP, syn, true, &peer), "without LAN bypass");
        let locked = cfg(flags::LAN_BYPASS | flags::LOCKDOWN);
        assert!(!gateway_inbound_starts(&locked, IPPROTO_TCP, syn, true, &peer), "in lockdown");
        let unready = Config { flags: flags::LAN_BYPASS, ..cfg(0) };
        assert!(!gateway_inbound_starts(&unready, IPPROTO_TCP, syn, true, &peer), "before READY");
        // Answered: anything but a bare SYN, to a unicast LAN address, with LAN bypass.
        assert!(gateway_answers_inbound(&on, IPPROTO_TCP, syn_ack, &peer));
        assert!(gateway_answers_inbound(&on, IPPROTO_TCP, TCP_FLAG_ACK, &peer));
        assert!(gateway_answers_inbound(&on, IPPROTO_UDP, 0, &peer));
        assert!(!gateway_answers_inbound(&on, IPPROTO_TCP, syn, &peer), "a connection of its own goes into Tor");
        assert!(!gateway_answers_inbound(&on, IPPROTO_TCP, syn_ack, &Dest::v4(INTERNET, 51000)), "to the internet");
        assert!(!gateway_answers_inbound(&on, IPPROTO_UDP, 0, &Dest::v4(0xe000_00fb, 5353)), "to a group");
        assert!(!gateway_answers_inbound(&cfg(0), IPPROTO_TCP, syn_ack, &peer), "without LAN bypass");
        assert!(!gateway_answers_inbound(&locked, IPPROTO_TCP, syn_ack, &peer), "in lockdown");
        let v6 = Dest::v6([0xfd00_0000, 0, 0, 5], 51000);
        assert!(
            gateway_inbound_starts(&on, IPPROTO_TCP, syn, true, &v6)
                && gateway_answers_inbound(&on, IPPROTO_TCP, syn_ack, &v6)
        );
    }

    #[test]
    fn lan_bypass_lets_unicast_dhcp_and_mdns_out_but_no_other_discovery() {
        let on = cfg(flags::LAN_BYPASS);
        let strict = cfg(flags::LAN_BYPASS | flags::NO_LAN_DISCOVERY);
        let mdns = Dest::v4(0xe000_00fb, 5353);
        let mdns6 = Dest::v6([0xff02_0000, 0, 0, 0xfb], 5353);
        assert!(lan_allowed(&on, &Dest::v4(LAN, 631)), "unicast to a printer");
        assert!(lan_allowed(&on, &mdns) && lan_allowed(&on, &mdns6));
        assert!(!lan_allowed(&strict, &mdns) && !lan_allowed(&strict, &mdns6), "--no-lan-discovery");
        assert!(lan_allowed(&strict, &Dest::v4(0xffff_ffff, 67)), "DHCP stays");
        assert!(lan_allowed(&strict, &Dest::v6([0xff02_0000, 0, 0, 0x0001_0002], 547)), "DHCPv6 stays");
        for (d, what) in [
            (Dest::v4(0xe000_00fc, 5355), "LLMNR"),
            (Dest::v6([0xff02_0000, 0, 0, 0x0001_0003], 5355), "LLMNR over IPv6"),
            (Dest::v4(0xefff_fffa, 1900), "SSDP"),
            (Dest::v4(0xffff_ffff, 137), "NetBIOS"),
            (Dest::v4(0xefff_fffa, 3702), "WS-Discovery"),
            (Dest::v4(0xe000_00fb, 80), "not mDNS's port"),
        ] {
            assert!(!lan_allowed(&on, &d), "{what}");
            assert_eq!(
                decide(&on, Proto::Udp, &d, None, false, Netns::Host),
                Action::Refuse(Counter::LanDiscoveryRefused),
                "{what}"
            );
            assert!(!egress_allowed(&on, &d, None, Netns::Host), "{what}");
        }
        assert_eq!(decide(&on, Proto::Udp, &mdns, None, false, Netns::Host), Action::Pass(Some(Counter::LanPassed)));
        // Without LAN bypass nothing of the LAN is direct.
        assert!(!lan_allowed(&cfg(0), &Dest::v4(LAN, 631)) && !lan_allowed(&cfg(0), &mdns));
    }

    #[test]
    fn a_socket_in_another_namespace_is_left_to_its_way_out_but_closed_in_lockdown() {
        let c = cfg(flags::LAN_BYPASS);
        let other = Netns::Other;
        let pass = Action::Pass(Some(Counter::OtherNetnsPassed));
        // TCP, DNS (also to a container's own stub on loopback), UDP: not redirected to
        // listeners it cannot reach; the gateway program on its bridge steers them.
        assert_eq!(decide(&c, Proto::Tcp, &Dest::v4(INTERNET, 80), None, false, other), pass);
        assert_eq!(decide(&c, Proto::Udp, &Dest::v4(INTERNET, 53), None, false, other), pass);
        assert_eq!(decide(&c, Proto::Udp, &Dest::v4(0x7f00_000b, 53), None, false, other), pass);
        assert_eq!(decide(&c, Proto::Udp, &Dest::v4(INTERNET, 443), None, false, other), pass);
        assert!(egress_allowed(&c, &Dest::v4(INTERNET, 80), None, other));
        // Closed is closed, in every namespace.
        for closed in [cfg(flags::LOCKDOWN), Config { flags: 0, ..cfg(0) }] {
            let d = Dest::v4(INTERNET, 80);
            assert_eq!(decide(&closed, Proto::Tcp, &d, None, false, other), Action::Refuse(Counter::LockdownRefused));
            assert_eq!(
                decide(&closed, Proto::Udp, &Dest::v4(0x7f00_000b, 53), None, false, other),
                Action::Refuse(Counter::LockdownRefused)
            );
            assert!(!egress_allowed(&closed, &d, None, other));
        }
    }

    #[test]
    fn egress_needs_exemption_or_lan() {
        let d = Dest::v4(INTERNET, 80);
        assert!(!egress_allowed(&cfg(flags::LAN_BYPASS), &d, None, Netns::Host));
        assert!(egress_allowed(&cfg(0), &d, Some(Exempt::Gid), Netns::Host));
        assert!(egress_allowed(&cfg(flags::LAN_BYPASS), &Dest::v4(LAN, 1), None, Netns::Host));
        assert!(!egress_allowed(&cfg(0), &Dest::v4(LAN, 1), None, Netns::Host));
    }
}
