//! The DNSPort's sockets: UDP and TCP on loopback, around [`DnsService`]. In gateway mode
//! they also take the queries of machines behind the gateway (see [`crate::gateway`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};

use super::DnsService;
use crate::{
    load::{LoadStats, Shares},
    principal::Asker,
};

/// Queries in flight at once; past this, UDP queries are dropped (the client retries) and
/// TCP connections wait. Above the service's cap on lookups through Tor, so that slow
/// lookups can never take every slot from answers that need no Tor.
const MAX_IN_FLIGHT: usize = 1024;
const _: () = assert!(MAX_IN_FLIGHT > super::service::MAX_TOR_LOOKUPS);
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers UDP queries. Each answer leaves from the address its query was sent to
/// (`IP_PKTINFO`, `IPV6_PKTINFO`): a query the gateway program handed over was sent to some resolver's
/// address (the client's own choice), and the client only accepts the answer from there.
/// For this host's redirected queries that address is 127.0.0.1, as before.
///
/// Who sent a query decides what it may see ([`Asker`]): a local program's socket names
/// its uid and cgroup (one SOCK_DIAG lookup per query, in the query's task), a gateway
/// client is its address.
pub async fn serve_udp(sock: UdpSocket, service: Arc<DnsService>, load: Arc<LoadStats>) -> Result<()> {
    let sock = Arc::new(sock);
    let local = sock.local_addr()?;
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 65535];
    loop {
        let received = if local.is_ipv4() {
            sock.async_io(Interest::READABLE, || recv_v4(&sock, &mut buf)).await
        } else {
            sock.async_io(Interest::READABLE, || recv_v6(&sock, &mut buf)).await
        };
        // A receive error that is not the socket's own (no memory, an ICMP error) is
        // waited out like an accept error: it must not end the DNSPort.
        let (n, peer, dst) = match received {
            Ok(r) => r,
            Err(e) if !crate::accept::is_fatal(&e) => {
                crate::accept::wait_out("DNSPort (UDP)", &load.accept_errors, &e).await;
                continue;
            }
            Err(e) => return Err(e).context("DNSPort (UDP): the socket failed"),
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, service) = (sock.clone(), service.clone());
        tokio::spawn(async move {
            let asker = Asker::of_datagram(peer, local);
            if let Some(answer) = service.handle(&query, &asker).await {
                let _ = match (dst, peer) {
                    (Some(IpAddr::V4(from)), SocketAddr::V4(to)) => {
                        sock.async_io(Interest::WRITABLE, || send_v4(&sock, &answer, from, to)).await
                    }
                    (Some(IpAddr::V6(from)), SocketAddr::V6(to)) => {
                        sock.async_io(Interest::WRITABLE, || send_v6(&sock, &answer, from, to)).await
                    }
                    _ => sock.send_to(&answer, peer).await.map(drop),
                };
            }
            drop(permit);
        });
    }
}

/// One datagram and the destination address it was sent to.
fn recv_v4(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let peer = msg.address.map(|a| SocketAddr::V4(a.into())).ok_or(std::io::ErrorKind::InvalidData)?;
    let dst = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4PacketInfo(pi) => Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)))),
        _ => None,
    });
    Ok((msg.bytes, peer, dst))
}

/// [`recv_v4`] for IPv6.
fn recv_v6(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn6};
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn6>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let peer = msg.address.map(|a| SocketAddr::V6(a.into())).ok_or(std::io::ErrorKind::InvalidData)?;
    let dst = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::Ipv6PacketInfo(pi) => Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr))),
        _ => None,
    });
    Ok((msg.bytes, peer, dst))
}

/// [`send_v4`] for IPv6.
fn send_v6(sock: &UdpSocket, data: &[u8], from: Ipv6Addr, to: SocketAddrV6) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn6};
    // SAFETY: in6_pktinfo is plain data; zero is "no interface".
    let mut pi: libc::in6_pktinfo = unsafe { std::mem::zeroed() };
    pi.ipi6_addr.s6_addr = from.octets();
    let iov = [std::io::IoSlice::new(data)];
    let to = SockaddrIn6::from(to);
    sendmsg(sock.as_raw_fd(), &iov, &[ControlMessage::Ipv6PacketInfo(&pi)], MsgFlags::empty(), Some(&to))?;
    Ok(())
}

/// Sends `data` to `to` from the address `from`.
fn send_v4(sock: &UdpSocket, data: &[u8], from: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    // SAFETY: in_pktinfo is plain data; zero is "no interface".
    let mut pi: libc::in_pktinfo = unsafe { std::mem::zeroed() };
    pi.ipi_spec_dst.s_addr = u32::from(from).to_be();
    let iov = [std::io::IoSlice::new(data)];
    let to = SockaddrIn::from(to);
    sendmsg(sock.as_raw_fd(), &iov, &[ControlMessage::Ipv4PacketInfo(&pi)], MsgFlags::empty(), Some(&to))?;
    Ok(())
}

/// Answers DNS over TCP: at most `max_conns` connections at once (each holds a
/// descriptor); past that a connection is closed at once and counted. A connection that
/// idles, or does not take its answer, for [`TCP_IDLE`] is closed.
pub async fn serve_tcp(
    listener: TcpListener,
    service: Arc<DnsService>,
    max_conns: usize,
    load: Arc<LoadStats>,
) -> Result<()> {
    let limit = Arc::new(Semaphore::new(max_conns));
    // One local user (or remote address) holds at most half of them.
    let shares = Shares::new(crate::load::share_of(max_conns));
    loop {
        let (stream, peer) = crate::accept::next("DNSPort (TCP)", &load.accept_errors, || listener.accept())
            .await
            .context("DNSPort (TCP): the listener failed")?;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            LoadStats::count(&load.refused_dns_tcp);
            drop(stream);
            continue;
        };
        let asker = stream.local_addr().map(|local| Asker::of_stream(peer, local)).unwrap_or(Asker::remote(peer.ip()));
        let Some(share) = shares.try_take(&asker.owner) else {
            LoadStats::count(&load.refused_share);
            drop(stream);
            continue;
        };
        let (service, load) = (service.clone(), load.clone());
        tokio::spawn(async move {
            if let Err(TcpEnd::Idle) = tcp_session(stream, &service, &asker).await {
                LoadStats::count(&load.idle_closed);
            }
            drop((permit, share));
        });
    }
}

/// How a DNS-over-TCP connection ended other than by the client closing it.
enum TcpEnd {
    Idle,
    Failed,
}

/// Length-prefixed queries until the client closes or idles.
async fn tcp_session(mut s: TcpStream, service: &DnsService, asker: &Asker) -> Result<(), TcpEnd> {
    async fn within<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, TcpEnd> {
        match tokio::time::timeout(TCP_IDLE, f).await {
            Err(_) => Err(TcpEnd::Idle),
            Ok(r) => r.map_err(|_| TcpEnd::Failed),
        }
    }
    loop {
        let mut len = [0u8; 2];
        within(s.read_exact(&mut len)).await?;
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        within(s.read_exact(&mut q)).await?;
        let Some(answer) = service.handle(&q, asker).await else { return Ok(()) };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&(answer.len() as u16).to_be_bytes());
        out.extend_from_slice(&answer);
        within(s.write_all(&out)).await?;
    }
}
