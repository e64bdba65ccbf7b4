//! Segmentation offload for the tunnel's UDP socket: one system call for many datagrams.
//!
//! Sending, a [`Batch`] collects the sealed datagrams of one wakeup that go to the same
//! endpoint with the same size (the last may be shorter) and hands them to the kernel in a
//! single `sendmsg` with `UDP_SEGMENT` (UDP GSO); the kernel cuts them apart, or passes
//! the whole run through a veth to a receiver that keeps it whole. Receiving, `UDP_GRO`
//! lets one `recvmsg` return a run of datagrams from one sender with the segment size
//! beside it, and [`segments`] cuts it up again. Per-packet system calls, not the cipher,
//! are what limits a tunnel on a few cores (KNOWN.md).
//!
//! By hand on libc-level calls (through nix) because neither tokio nor socket2 expose
//! control messages; quinn-udp does this too but comes with QUIC's ECN and address
//! handling, which the tunnel does not need.

use std::{
    io::{IoSlice, IoSliceMut},
    net::{SocketAddr, SocketAddrV6},
    os::fd::{AsFd, RawFd},
};

use nix::{
    errno::Errno,
    sys::socket::{
        recvmsg, sendmsg, setsockopt, sockopt::UdpGroSegment, ControlMessage, ControlMessageOwned, MsgFlags,
        SockaddrIn6,
    },
};

/// The most datagrams one GSO send carries (the kernel's UDP_MAX_SEGMENTS is 64 on older
/// kernels, 128 on newer ones).
pub const MAX_SEGMENTS: usize = 64;
/// The most bytes one GSO send carries: an IP packet's 64 KiB, less the headers.
pub const MAX_BYTES: usize = 65_000;
/// A receive buffer for a GRO run.
pub const GRO_BUFFER: usize = 65_535;

/// Datagrams for one endpoint, same size, back to back (see the module's comment).
#[derive(Debug, Default)]
pub struct Batch {
    to: Option<SocketAddr>,
    buf: Vec<u8>,
    /// The size of every datagram but the last.
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it.
    closed: bool,
}

impl Batch {
    pub fn new() -> Self {
        Batch { buf: Vec::with_capacity(MAX_BYTES), ..Batch::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds `d` for `to`; false if it does not fit this batch (another endpoint, larger
    /// than the others, after a shorter one, or the batch is full): send the batch, then
    /// push it again.
    #[must_use]
    pub fn push(&mut self, to: SocketAddr, d: &[u8]) -> bool {
        if self.count == 0 {
            (self.to, self.segment, self.closed) = (Some(to), d.len(), false);
        } else if self.to != Some(to)
            || self.closed
            || d.len() > self.segment
            || self.count == MAX_SEGMENTS
            || self.buf.len() + d.len() > MAX_BYTES
        {
            return false;
        }
        self.closed = d.len() < self.segment;
        self.buf.extend_from_slice(d);
        self.count += 1;
        true
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// Each datagram of the batch.
    #[cfg(test)]
    fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.buf.chunks(self.segment.max(1))
    }
}

/// The datagrams of a GRO run `buf` with segment size `segment` (none: `buf` is one).
pub fn segments(buf: &[u8], segment: Option<usize>) -> impl Iterator<Item = &[u8]> {
    buf.chunks(segment.filter(|s| *s > 0).unwrap_or(buf.len().max(1)))
}

/// The socket's offload state: GSO is dropped for good at the first send the kernel
/// refuses (a device without checksum offload answers EIO).
#[derive(Debug)]
pub struct Offload {
    pub gso: bool,
    pub gro: bool,
}

impl Offload {
    /// Turns GRO on for `sock`, and assumes GSO works until a send says otherwise.
    pub fn enable(sock: &impl AsFd) -> Offload {
        let gro = setsockopt(sock, UdpGroSegment, &true).is_ok();
        if !gro {
            tracing::debug!("UDP GRO not available: one datagram per receive");
        }
        Offload { gso: true, gro }
    }
}

fn v6(a: SocketAddr) -> SockaddrIn6 {
    let a = match a {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    };
    SockaddrIn6::from(a)
}

/// Sends the batch: one `sendmsg` with `UDP_SEGMENT` if it holds more than one datagram
/// and GSO works, else one datagram at a time. On `WouldBlock` what was not sent stays in
/// the batch (call again when writable); any other error empties it (a peer out of reach
/// is the network's business) and is returned for logging.
pub fn send(fd: RawFd, batch: &mut Batch, off: &mut Offload) -> std::io::Result<()> {
    let Some(to) = batch.to.filter(|_| batch.count > 0) else { return Ok(()) };
    let addr = v6(to);
    let segment = batch.segment as u16;
    let gso = (batch.count > 1 && off.gso).then(|| {
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        sendmsg(fd, &[IoSlice::new(&batch.buf)], &cmsg, MsgFlags::empty(), Some(&addr)).map(drop)
    });
    let result = match gso {
        Some(Err(Errno::EIO)) => {
            // The device cannot do it (no checksum offload): never again on this socket.
            tracing::debug!("UDP GSO refused (EIO): one datagram per send from now on");
            off.gso = false;
            send_each(fd, batch, &addr)
        }
        // Segments larger than the path's MTU: this batch one by one (fragmented).
        Some(Err(Errno::EINVAL)) => send_each(fd, batch, &addr),
        Some(r) => r,
        None => send_each(fd, batch, &addr),
    };
    if result == Err(Errno::EAGAIN) {
        return Err(std::io::ErrorKind::WouldBlock.into());
    }
    batch.clear();
    result.map_err(Into::into)
}

/// Sends the datagrams one by one; on `EAGAIN` those sent leave the batch.
fn send_each(fd: RawFd, batch: &mut Batch, addr: &SockaddrIn6) -> nix::Result<()> {
    let mut sent = 0;
    let mut result = Ok(());
    for d in batch.buf.chunks(batch.segment.max(1)) {
        if let Err(e) = sendmsg(fd, &[IoSlice::new(d)], &[], MsgFlags::empty(), Some(addr)) {
            result = Err(e);
            break;
        }
        sent += d.len();
    }
    if result == Err(Errno::EAGAIN) {
        batch.count -= sent / batch.segment.max(1);
        batch.buf.drain(..sent);
    }
    result
}

/// Receives one datagram, or one GRO run: its length, its sender, and its segment size.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<usize>)> {
    let mut space = nix::cmsg_space!(i32);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
    let mut segment = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::UdpGroSegments(s) = c {
            segment = usize::try_from(s).ok();
        }
    }
    let src = msg.address.map(|a| SocketAddr::V6(SocketAddrV6::from(a))).ok_or(std::io::ErrorKind::InvalidData)?;
    Ok((msg.bytes, src, segment))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_batch_holds_one_endpoint_and_one_size_with_a_shorter_last() {
        let (a, b) = (addr("192.0.2.1:1"), addr("192.0.2.2:1"));
        let mut batch = Batch::new();
        assert!(batch.push(a, &[1; 100]));
        assert!(batch.push(a, &[2; 100]));
        assert!(!batch.push(b, &[3; 100]), "another endpoint");
        assert!(!batch.push(a, &[4; 101]), "larger than the first");
        assert!(batch.push(a, &[5; 60]), "a shorter last one");
        assert!(!batch.push(a, &[6; 60]), "nothing after a shorter one");
        assert_eq!(batch.datagrams().map(<[u8]>::len).collect::<Vec<_>>(), [100, 100, 60]);
        batch.clear();
        assert!(batch.is_empty());
        for i in 0..MAX_SEGMENTS {
            assert!(batch.push(b, &[0; 10]), "{i}");
        }
        assert!(!batch.push(b, &[0; 10]), "full by count");
        batch.clear();
        while batch.push(b, &[0; 1500]) {}
        assert!(batch.buf.len() <= MAX_BYTES, "full by bytes");
    }

    #[test]
    fn gro_runs_are_cut_at_the_segment_size() {
        let buf = [0u8; 250];
        assert_eq!(segments(&buf, Some(100)).map(<[u8]>::len).collect::<Vec<_>>(), [100, 100, 50]);
        assert_eq!(segments(&buf, None).count(), 1);
        assert_eq!(segments(&buf, Some(0)).count(), 1);
    }

    /// Over loopback: a GSO send arrives as the same datagrams, whole (GRO) or one by one.
    #[test]
    fn gso_send_arrives_as_the_same_datagrams() {
        let rx = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let tx = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let to = rx.local_addr().unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let off_rx = Offload::enable(&rx);
        let mut off_tx = Offload::enable(&tx);
        let sent: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; if i == 9 { 700 } else { 1200 }]).collect();
        let mut batch = Batch::new();
        for d in &sent {
            assert!(batch.push(to, d));
        }
        send(tx.as_raw_fd(), &mut batch, &mut off_tx).unwrap();
        assert!(batch.is_empty());
        let (mut got, mut receives) = (Vec::new(), 0);
        let mut buf = vec![0u8; GRO_BUFFER];
        while got.len() < sent.len() {
            receives += 1;
            let (n, src, seg) = recv(rx.as_raw_fd(), &mut buf).unwrap();
            assert_eq!(src, tx.local_addr().unwrap());
            got.extend(segments(&buf[..n], seg).map(<[u8]>::to_vec));
        }
        assert_eq!(got, sent);
        assert!(off_rx.gro && off_tx.gso, "this kernel has UDP GRO and GSO");
        assert!(receives < sent.len(), "the run arrived whole, not datagram by datagram");
    }
}
