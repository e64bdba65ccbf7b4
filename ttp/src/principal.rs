//! Who a connection or a DNS query belongs to: the parties ttp keeps apart.
//!
//! Two notions, for two jobs:
//! - [`IsolationKey`]: whose circuits a stream or a lookup may use (Tor's isolation).
//!   Fine-grained: a uid *and* its cgroup, a SOCKS username, a gateway client.
//! - [`Owner`]: who holds a slot or a private table entry (a virtual address, a cached
//!   answer): a local user, or a remote machine by its address. Coarse on purpose: what
//!   one uid does in two cgroups is still one user's.
//!
//! A leaf module: the DNSPort, the TransPort, the SOCKS port and the load accounting all
//! use it, and it uses nothing of theirs (and nothing of Arti).

use std::net::{IpAddr, SocketAddr};

use crate::sockdestroy;

/// Who a stream belongs to, for isolation: streams of different keys never share a circuit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IsolationKey {
    /// A redirected connection or a local program's DNS query: by uid and cgroup.
    Local { uid: u32, cgroup: u64 },
    /// A SOCKS client: by its username and password (like Tor's IsolateSOCKSAuth).
    Socks { user: Vec<u8>, pass: Vec<u8> },
    /// A client known by its address: a machine behind the gateway (tunnel peer, LAN
    /// client), or a loopback client whose socket could not be found.
    Gateway { client: IpAddr },
}

/// Who holds a slot or an entry of a per-party table: the local user behind a loopback
/// connection or datagram, found by its socket ([`sockdestroy`]), or the remote
/// address. A loopback client whose socket cannot be found shares one owner with every
/// other such client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Uid(u32),
    Addr(IpAddr),
}

impl Owner {
    /// The owner of the TCP connection from `peer` to our `local` address.
    pub fn of(peer: SocketAddr, local: SocketAddr) -> Owner {
        Asker::of_stream(peer, local).owner
    }
}

/// The sender of a DNS query: whose lookups it may share circuits with, and whose
/// virtual addresses and cached answers it may see.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Asker {
    pub owner: Owner,
    pub key: IsolationKey,
}

impl Asker {
    /// The sender of a TCP connection from `peer` to our `local` address.
    pub fn of_stream(peer: SocketAddr, local: SocketAddr) -> Asker {
        Asker::find(peer, || sockdestroy::tcp_owner(peer, local))
    }

    /// The sender of a datagram from `peer` to our `local` address.
    pub fn of_datagram(peer: SocketAddr, local: SocketAddr) -> Asker {
        Asker::find(peer, || sockdestroy::udp_owner(peer, local))
    }

    /// A local user by uid and cgroup.
    pub fn local(uid: u32, cgroup: u64) -> Asker {
        Asker { owner: Owner::Uid(uid), key: IsolationKey::Local { uid, cgroup } }
    }

    /// A party known only by its address.
    pub fn remote(ip: IpAddr) -> Asker {
        Asker { owner: Owner::Addr(ip), key: IsolationKey::Gateway { client: ip } }
    }

    /// A loopback peer is a local program: its socket names its uid and cgroup. Any other
    /// peer (a gateway client), or a socket gone or not found (descriptors exhausted, say),
    /// is known by its address.
    fn find(peer: SocketAddr, lookup: impl FnOnce() -> std::io::Result<Option<sockdestroy::DiagSocket>>) -> Asker {
        if sockdestroy::is_loopback_ip(peer.ip()) {
            if let Ok(Some(s)) = lookup() {
                return Asker::local(s.uid, s.cgroup);
            }
        }
        Asker::remote(peer.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_sender_is_its_uid_and_cgroup_and_others_their_address() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = server.local_addr().unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"q", at).unwrap();
        let mut b = [0u8; 1];
        let (_, from) = server.recv_from(&mut b).unwrap();
        let a = Asker::of_datagram(from, at);
        assert_eq!(a.owner, Owner::Uid(nix::unistd::geteuid().as_raw()));
        assert!(matches!(a.key, IsolationKey::Local { .. }), "{a:?}");
        let lan: SocketAddr = "192.168.1.20:5353".parse().unwrap();
        assert_eq!(Asker::of_datagram(lan, at), Asker::remote(lan.ip()));
        // A loopback sender whose socket is gone: its address, shared with its like.
        drop(client);
        assert_eq!(Asker::of_datagram(from, at), Asker::remote(from.ip()));
    }
}
