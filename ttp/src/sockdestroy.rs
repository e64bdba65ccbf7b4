//! Destroying applications' TCP sockets that the datapath's change would leave hanging.
//!
//! - On stop: an application's TCP connection through the TransPort (or to the DNSPort)
//!   is, on the application's side, a loopback socket connected to our port; destroyed,
//!   the application reconnects to whatever the host does next (direct after a stop,
//!   through a new ttp after restart).
//! - On start: a governed application's connection opened before ttp, to a destination
//!   the kill-switch now closes, would only hang (its packets are dropped); destroyed, the
//!   application reconnects, through Tor.
//!
//! ttp finds them with NETLINK_SOCK_DIAG and destroys each with SOCK_DESTROY (what `ss
//! -K` does): the application sees ECONNABORTED at once.
//!
//! The same netlink family also tells who owns the client end of a loopback connection
//! ([`tcp_owner`]) or the sender of a datagram ([`udp_owner`]): the daemon's listeners
//! share their slots fairly per local user, and the DNSPort isolates users' lookups.
//!
//! Written by hand: the sock-diag crates parse dumps but do not send SOCK_DESTROY, and the
//! two messages involved are small fixed structs (linux/inet_diag.h).

use std::{io, net::IpAddr};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const ALL_STATES: u32 = !0;
const NLMSG_HDRLEN: usize = 16;

/// `struct inet_diag_sockid`: ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Req {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Msg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `INET_DIAG_CGROUP_ID`: the socket's cgroup v2 id, an attribute the kernel adds to
/// every full socket's message (Linux 5.7+).
const INET_DIAG_CGROUP_ID: u16 = 21;

/// One socket of a dump or a lookup (TCP, or UDP for [`udp_owner`]), as the filters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: u8,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    pub uid: u32,
    /// 0 when the kernel did not say.
    pub cgroup: u64,
}

impl DiagSocket {
    pub fn listening(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// Reads one dump message: the fixed head, then the attributes for the cgroup id. Input
/// from the kernel, but parsed like any other: lengths checked, nothing trusted.
fn parse_msg(payload: &[u8]) -> Option<(Msg, DiagSocket)> {
    if payload.len() < std::mem::size_of::<Msg>() {
        return None;
    }
    // SAFETY: length checked; Msg is plain data and read unaligned.
    let m: Msg = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
    let mut cgroup = 0;
    let mut at = (std::mem::size_of::<Msg>() + 3) & !3;
    while at + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[at], payload[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[at + 2], payload[at + 3]]) & 0x3fff;
        if len < 4 || at + len > payload.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            cgroup = u64::from_ne_bytes(payload[at + 4..at + 12].try_into().ok()?);
        }
        at += (len + 3) & !3;
    }
    let addr = |a: &[u8; 16], port: [u8; 2]| {
        let ip: IpAddr =
            if m.family == libc::AF_INET as u8 { IpAddr::from([a[0], a[1], a[2], a[3]]) } else { IpAddr::from(*a) };
        std::net::SocketAddr::new(ip, u16::from_be_bytes(port))
    };
    let s = DiagSocket {
        state: m.state,
        src: addr(&m.id.src, m.id.sport),
        dst: addr(&m.id.dst, m.id.dport),
        uid: m.uid,
        cgroup,
    };
    Some((m, s))
}

/// One netlink socket for the dump and the destroys.
struct Diag(libc::c_int);

impl Drop for Diag {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

impl Diag {
    fn open() -> io::Result<Diag> {
        // SAFETY: plain socket call.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let d = Diag(fd);
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: a valid timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(d)
    }

    fn send(&self, kind: u16, flags: u16, seq: u32, req: &Req) -> io::Result<()> {
        let len = NLMSG_HDRLEN + std::mem::size_of::<Req>();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // SAFETY: Req is repr(C) plain data; viewing it as bytes is sound.
        buf.extend_from_slice(unsafe {
            std::slice::from_raw_parts((req as *const Req).cast::<u8>(), std::mem::size_of::<Req>())
        });
        // SAFETY: the buffer is valid for its length; the kernel is the destination (pid 0).
        let n = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives the answer to a request that is not a dump: one message, or an ERROR.
    fn recv_one(&self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut got = false;
        let mut first = |p: &[u8]| {
            if !got {
                got = true;
                each(p);
            }
        };
        // A single answer comes in one datagram: one receive, then stop.
        self.recv_datagram(seq, &mut first).map(|_| ())
    }

    /// One datagram's messages for `seq`: `Ok(true)` if it ended the exchange (DONE, ACK).
    fn recv_datagram(&self, seq: u32, each: &mut impl FnMut(&[u8])) -> io::Result<bool> {
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        walk_datagram(&buf[..n as usize], seq, each)
    }

    /// Receives messages until DONE (a dump) or one ERROR/ACK; calls `each` per payload.
    fn recv(&self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        while !self.recv_datagram(seq, &mut each)? {}
        Ok(())
    }
}

/// The netlink messages of one received datagram: calls `each` with the payload of every
/// message of exchange `seq`; `Ok(true)` if one ended the exchange (DONE, or an ERROR of
/// 0, the ACK), an error for an ERROR or a message whose length does not fit.
pub fn walk_datagram(buf: &[u8], seq: u32, each: &mut impl FnMut(&[u8])) -> io::Result<bool> {
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let mut at = 0usize;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = word(at) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let mseq = word(at + 8);
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            return Err(io::Error::other("truncated netlink message"));
        }
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        if mseq == seq {
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return if code == 0 { Ok(true) } else { Err(io::Error::from_raw_os_error(code.saturating_neg())) };
                }
                _ => each(payload),
            }
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// One dump or lookup answer's payload as a socket, if it is one ([`parse_msg`]).
pub fn parse_socket(payload: &[u8]) -> Option<DiagSocket> {
    parse_msg(payload).map(|(_, s)| s)
}

/// `INET_DIAG_NOCOOKIE`: an exact lookup by addresses alone.
const NO_COOKIE: [u32; 2] = [!0, !0];

/// The TCP socket bound to `src` and connected to `dst`, if there is one: for a loopback
/// connection to one of our listeners, `src` is the client's address (our peer) and `dst`
/// our own, and the answer names the client's uid and cgroup. One exact lookup, no dump.
pub fn tcp_owner(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> io::Result<Option<DiagSocket>> {
    exact_lookup(libc::IPPROTO_TCP as u8, src, dst)
}

/// The UDP socket that sent a datagram from `client` to our `server` address (the socket
/// a datagram from `server` back to `client` would reach), with its uid and cgroup.
///
/// The kernel's UDP lookup takes the id's source as the remote end and its destination as
/// the local one (the other way round from TCP's, "for historical reasons" says
/// `udp_diag.c`): the request names the server first. An unconnected client socket bound
/// to a wildcard address is found too.
pub fn udp_owner(client: std::net::SocketAddr, server: std::net::SocketAddr) -> io::Result<Option<DiagSocket>> {
    exact_lookup(libc::IPPROTO_UDP as u8, server, client)
}

/// One exact SOCK_DIAG lookup by addresses.
fn exact_lookup(protocol: u8, src: std::net::SocketAddr, dst: std::net::SocketAddr) -> io::Result<Option<DiagSocket>> {
    let (family, to16) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (libc::AF_INET as u8, true),
        (IpAddr::V6(_), IpAddr::V6(_)) => (libc::AF_INET6 as u8, false),
        _ => return Ok(None),
    };
    let bytes = |ip: IpAddr| {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) if to16 => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b = v6.octets(),
            IpAddr::V4(_) => {}
        }
        b
    };
    let id = SockId {
        sport: src.port().to_be_bytes(),
        dport: dst.port().to_be_bytes(),
        src: bytes(src.ip()),
        dst: bytes(dst.ip()),
        ifindex: 0,
        cookie: NO_COOKIE,
    };
    let diag = Diag::open()?;
    let req = Req { family, protocol, states: ALL_STATES, id, ..Req::default() };
    diag.send(SOCK_DIAG_BY_FAMILY, libc::NLM_F_REQUEST as u16, 1, &req)?;
    let mut found = None;
    match diag.recv_one(1, |payload| found = parse_msg(payload).map(|(_, s)| s)) {
        Ok(()) => Ok(found),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Destroys every TCP socket, IPv4 and IPv6, connected to one of `ports` on a loopback
/// address (the applications' ends of connections to our listeners). Returns how many.
pub fn destroy_connected_to(ports: &[u16]) -> io::Result<usize> {
    destroy_where(|s| !s.listening() && ports.contains(&s.dst.port()) && is_loopback_ip(s.dst.ip()))
}

/// Destroys every TCP socket, IPv4 and IPv6, that `doomed` picks. Returns how many.
pub fn destroy_where(doomed: impl Fn(&DiagSocket) -> bool) -> io::Result<usize> {
    let diag = Diag::open()?;
    let mut found: Vec<Req> = Vec::new();
    for (i, family) in [libc::AF_INET as u8, libc::AF_INET6 as u8].into_iter().enumerate() {
        let seq = 1 + i as u32;
        let req = Req { family, protocol: libc::IPPROTO_TCP as u8, states: ALL_STATES, ..Req::default() };
        diag.send(SOCK_DIAG_BY_FAMILY, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, seq, &req)?;
        diag.recv(seq, |payload| {
            let Some((m, s)) = parse_msg(payload) else { return };
            if doomed(&s) {
                found.push(Req {
                    family: m.family,
                    protocol: libc::IPPROTO_TCP as u8,
                    states: ALL_STATES,
                    id: m.id,
                    ..req
                });
            }
        })?;
    }
    let mut destroyed = 0;
    for (i, req) in found.iter().enumerate() {
        let seq = 100 + i as u32;
        diag.send(SOCK_DESTROY, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, seq, req)?;
        match diag.recv(seq, |_| {}) {
            Ok(()) => destroyed += 1,
            // Closed meanwhile: nothing to do.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

const TCP_LISTEN: u8 = 10;

/// Loopback, also as a v4-mapped IPv6 address.
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<SockId>(), 48);
        assert_eq!(std::mem::size_of::<Req>(), 56);
        assert_eq!(std::mem::size_of::<Msg>(), 72);
    }

    #[test]
    fn a_dump_message_is_read_with_its_cgroup_and_bad_lengths_end_the_attributes() {
        let mut p = vec![0u8; 72];
        p[0] = libc::AF_INET as u8;
        p[1] = 1; // established
        p[4..6].copy_from_slice(&40000u16.to_be_bytes());
        p[6..8].copy_from_slice(&443u16.to_be_bytes());
        p[8..12].copy_from_slice(&[10, 0, 0, 2]);
        p[24..28].copy_from_slice(&[93, 184, 216, 34]);
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        // An unrelated attribute, then the cgroup id.
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&12u16.to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        p.extend_from_slice(&4242u64.to_ne_bytes());
        let (_, s) = parse_msg(&p).unwrap();
        assert_eq!((s.src.to_string().as_str(), s.dst.to_string().as_str()), ("10.0.0.2:40000", "93.184.216.34:443"));
        assert_eq!((s.uid, s.cgroup, s.listening()), (1000, 4242, false));
        // An attribute that claims more than there is: ignored, not read past the end.
        let mut bad = p[..72].to_vec();
        bad.extend_from_slice(&200u16.to_ne_bytes());
        bad.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        bad.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(parse_msg(&bad).unwrap().1.cgroup, 0);
        assert!(parse_msg(&p[..40]).is_none());
    }

    /// An exact lookup, which needs no privilege: the client end of a loopback connection
    /// names its owner.
    #[test]
    fn the_client_end_of_a_loopback_connection_names_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (_served, peer) = listener.accept().unwrap();
        let owner = tcp_owner(peer, server).unwrap().expect("the client's socket");
        assert_eq!(owner.uid, nix::unistd::geteuid().as_raw());
        assert_eq!((owner.src, owner.dst), (peer, server));
        drop(client);
        let gone: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_owner(gone, server).unwrap(), None);
    }

    /// The same for a datagram: the sender of a query, connected or not, names its owner.
    #[test]
    fn the_sender_of_a_datagram_names_its_owner() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = server.local_addr().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // Unconnected, bound to the wildcard address (what a resolver library does).
        let unconnected = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        unconnected.send_to(b"q", at).unwrap();
        let mut b = [0u8; 4];
        let (_, from) = server.recv_from(&mut b).unwrap();
        assert_eq!(udp_owner(from, at).unwrap().expect("the unconnected sender").uid, me);
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(at).unwrap();
        connected.send(b"q").unwrap();
        let (_, from) = server.recv_from(&mut b).unwrap();
        let found = udp_owner(from, at).unwrap().expect("the connected sender");
        assert_eq!((found.uid, found.src), (me, from));
        drop((unconnected, connected));
        assert_eq!(udp_owner(from, at).unwrap(), None);
    }

    /// Needs CAP_NET_ADMIN (SOCK_DESTROY); skipped otherwise. Touches only sockets it made
    /// on loopback, on a port nothing else uses.
    #[test]
    fn destroys_only_client_sockets_connected_to_the_port() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (served, _) = listener.accept().unwrap();
        assert_eq!(destroy_connected_to(&[port]).unwrap(), 1);
        use std::io::Read;
        let mut b = [0u8; 1];
        let e = (&client).read(&mut b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
        // The listener and the server's end are untouched.
        assert!(listener.local_addr().is_ok());
        drop(served);
    }
}
