//! The device's TUN, with the kernel's offloads: one system call per burst, not per packet.
//!
//! The TUN is opened with `IFF_VNET_HDR` and TSO/USO enabled (`TUNSETOFFLOAD`), as
//! wireguard-go does since 2023. Reading, the kernel hands over a whole burst of one TCP
//! (or UDP) flow at once, up to 64 KiB behind a virtio-net header, and [`Tun::recv`] cuts
//! it into the MTU-sized packets the peer gets, each with its own headers and checksums.
//! Writing, the packets one wakeup decrypted are queued with [`Tun::queue`], and
//! [`Tun::flush`] joins consecutive segments of one flow into one large packet that the
//! kernel's stack takes whole (GRO). A 64 KiB burst so costs one system call on each side
//! instead of about 45, and the kernel's TCP works on large packets (BENCHMARKS.md,
//! tunnel).
//!
//! The cutting and joining are tun-rs's (a port of wireguard-go's offload code, with its
//! checks of every length and offset); this module owns the buffers and decides which
//! errors end the device. Joining only ever merges packets of one flow, and each packet
//! passed the core's source check for its peer before it was queued, so no merged packet
//! can carry one peer's bytes under another's address.

use std::io;

use tun_rs::{AsyncDevice, GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

/// The most segments one burst from the kernel may hold; the TUN's `gso_max_segs` is set
/// to it ([`GSO_MAX_SEGS`]) so that a burst always fits the read buffers. 64 KiB at the
/// smallest MSS a tunnel's MTU gives (1280 bytes, IPv6) is 54 segments.
pub const GSO_MAX_SEGS: u32 = 128;

/// Decrypted packets queued before they are written even within one wakeup.
const QUEUE: usize = 128;

/// Room for the virtio-net header in front of each queued packet.
const HEADROOM: usize = VIRTIO_NET_HDR_LEN;

/// A queued packet's buffer: room for a whole joined flow, which grows in the buffer of
/// its first packet (the joining code joins nothing into a buffer without this room).
/// Allocated, not touched: a buffer only costs memory as far as a flow filled it, and
/// [`Tun::trim`] gives them all back when traffic stops.
const BUFFER: usize = 2 * HEADROOM + 65_535;

/// Creates the TUN `name` with offloads (needs `CAP_NET_ADMIN`); [`Tun::new`] registers it
/// with the runtime that will run it.
pub fn create(name: &str, mtu: u16) -> io::Result<SyncDevice> {
    tun_rs::DeviceBuilder::new().name(name).mtu(mtu).offload(true).build_sync()
}

pub struct Tun {
    dev: AsyncDevice,
    /// A burst as read: virtio-net header and up to 64 KiB.
    burst: Vec<u8>,
    /// The burst cut into packets (their lengths in `sizes`), handed out by [`Tun::recv`].
    packets: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Packets for the kernel, each behind [`HEADROOM`], written by [`Tun::flush`]; the
    /// first `queued` are this wakeup's (the rest are buffers kept for reuse).
    out: Vec<Vec<u8>>,
    queued: usize,
    gro: GROTable,
    /// Something was written since the last [`Tun::trim`].
    busy: bool,
}

/// What a read gave.
pub enum Read {
    /// This many packets, in [`Tun::packet`].
    Packets(usize),
    /// A burst the offload code refused (its reason): dropped, the device goes on. The
    /// kernel made it, so this is a bug to report, not an attack.
    Refused(io::Error),
}

impl Tun {
    pub fn new(dev: SyncDevice, mtu: usize) -> io::Result<Tun> {
        Ok(Tun {
            dev: AsyncDevice::new(dev)?,
            burst: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            packets: (0..GSO_MAX_SEGS).map(|_| vec![0; mtu]).collect(),
            sizes: vec![0; GSO_MAX_SEGS as usize],
            out: Vec::new(),
            queued: 0,
            gro: GROTable::new(),
            busy: false,
        })
    }

    /// Waits for a burst and cuts it into packets.
    pub async fn recv(&mut self) -> io::Result<Read> {
        let r = self.dev.recv_multiple(&mut self.burst, &mut self.packets, &mut self.sizes, 0).await;
        classify(r)
    }

    /// Like [`Tun::recv`] if a burst is ready; `None` if not.
    pub fn try_recv(&mut self) -> Option<io::Result<Read>> {
        match self.dev.try_recv_multiple(&mut self.burst, &mut self.packets, &mut self.sizes, 0) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(classify(r)),
        }
    }

    /// The `i`th packet of the last read.
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.packets[i][..self.sizes[i]]
    }

    /// Queues a packet for the kernel; true when the queue is full and wants a
    /// [`Tun::flush`].
    #[must_use]
    pub fn queue(&mut self, packet: &[u8]) -> bool {
        if self.queued == self.out.len() {
            self.out.push(Vec::with_capacity(BUFFER));
        }
        let b = &mut self.out[self.queued];
        b.clear();
        b.resize(HEADROOM, 0);
        b.extend_from_slice(packet);
        self.queued += 1;
        self.queued >= QUEUE
    }

    /// Writes the queue, flows joined. A packet the kernel refuses (`EINVAL`: a peer can
    /// send any bytes) is dropped and reported; any other failure ends the device.
    pub async fn flush(&mut self) -> io::Result<Option<io::Error>> {
        if self.queued == 0 {
            return Ok(None);
        }
        let n = std::mem::take(&mut self.queued);
        self.busy = true;
        match self.dev.send_multiple(&mut self.gro, &mut self.out[..n], HEADROOM).await {
            Ok(_) => Ok(None),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) || e.raw_os_error().is_none() => Ok(Some(e)),
            Err(e) => Err(e),
        }
    }

    /// Frees the write buffers when nothing was written since the last call (called every
    /// few hundred milliseconds): an idle tunnel holds none of a burst's memory.
    pub fn trim(&mut self) {
        if !std::mem::take(&mut self.busy) {
            self.out = Vec::new();
        }
    }
}

/// A system call's failure ends the device; the offload code's refusal of one burst
/// does not.
fn classify(r: io::Result<usize>) -> io::Result<Read> {
    match r {
        Ok(n) => Ok(Read::Packets(n)),
        Err(e) if e.raw_os_error().is_none() => Ok(Read::Refused(e)),
        Err(e) => Err(e),
    }
}
