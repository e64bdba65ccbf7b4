//! The device: a TUN interface and a UDP socket around the protocol core. It does all the
//! I/O the core does not: packets read from the TUN go to [`Core::from_tunnel`], datagrams
//! to [`Core::from_network`], a timer drives [`Core::tick`], and each [`Action`] is carried
//! out here. Addresses, MTU, link state and routes are set through rtnetlink, never by
//! running `ip`.
//!
//! Each wakeup handles whatever is ready (up to [`BATCH`] bursts or GRO runs), and no side
//! costs a system call per packet: datagrams leave through [`gso`] (those of one wakeup
//! for one endpoint in one call, UDP GSO) and arrive several per call (UDP GRO); the TUN
//! ([`super::tun`]) hands over a TCP burst per read (TSO) and takes a flow's decrypted
//! packets joined into one write (GRO).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use tokio::{
    io::Interest,
    net::UdpSocket,
    sync::{mpsc, oneshot},
};

use super::{
    config::TunnelConfig,
    gso::{self, Batch, Offload},
    protocol::{Action, Core, Drops, PeerConfig, PeerError},
    tun::{self, Read, Tun},
};

/// Packets handled per wakeup, at most, before the loop looks at its other work.
const BATCH: usize = 64;

/// How often timers are looked at: handshake retries (5 s) and keepalives (10 s) need no
/// finer grain.
const TICK: Duration = Duration::from_millis(250);

pub use crate::control::proto::PeerStatus;

pub use crate::control::proto::DropCounts;

impl From<&Drops> for DropCounts {
    fn from(d: &Drops) -> Self {
        DropCounts { replay: d.replay, decrypt: d.decrypt, source: d.source }
    }
}

/// A running tunnel side.
#[derive(Clone)]
pub struct Device {
    pub interface: String,
    pub local: SocketAddr,
    /// This side's addresses on the TUN: a peer added while running must stay inside
    /// their prefixes (a route of its own needs `CAP_NET_ADMIN`, which the daemon gave up).
    addresses: Vec<IpNet>,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    commands: mpsc::Sender<Command>,
    /// Host routes to the endpoints (see [`configure_link`]), removed by [`Device::close`].
    pinned: Arc<Mutex<Vec<rtnetlink::packet_route::route::RouteMessage>>>,
}

/// A change to a running device's peers, and where its outcome goes.
enum Command {
    Add(PeerConfig, oneshot::Sender<Result<(), PeerError>>),
    Remove([u8; 32], oneshot::Sender<Result<(), PeerError>>),
}

impl Device {
    pub fn status(&self) -> Vec<PeerStatus> {
        self.status.lock().expect("status lock").clone()
    }

    /// Removes what outlives the TUN: the endpoints' host routes (the TUN's own routes go
    /// with it). Needs `CAP_NET_ADMIN`, like bringing it up.
    pub async fn close(&self) {
        let routes = std::mem::take(&mut *self.pinned.lock().expect("routes lock"));
        unpin_routes(routes).await;
    }

    /// Adds a peer to the running device.
    pub async fn add_peer(&self, cfg: PeerConfig) -> Result<()> {
        if let Some(p) = cfg.allowed.iter().find(|p| !self.addresses.iter().any(|a| a.trunc().contains(*p))) {
            anyhow::bail!(
                "{p} is outside the tunnel's own prefixes ({}): a running gateway cannot route it; \
                 add the peer to the configuration file and restart",
                self.addresses.iter().map(|a| a.trunc().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Add(cfg, tx)).await.map_err(|_| anyhow::anyhow!("the tunnel is not running"))?;
        rx.await.context("the tunnel stopped")?.map_err(Into::into)
    }

    /// Removes a peer from the running device: its session ends at once.
    pub async fn remove_peer(&self, public: [u8; 32]) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Remove(public, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the tunnel is not running"))?;
        rx.await.context("the tunnel stopped")?.map_err(Into::into)
    }
}

/// The tunnel's UDP socket (dual stack), bound to `port` (0: any). Separate from [`start`]
/// so that the daemon can bind it as the service user's (see [`crate::privs::owned_by`]).
pub fn bind(port: u16) -> Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
        .with_context(|| format!("binding UDP port {port} (is another tunnel using it?)"))?;
    s.set_nonblocking(true)?;
    socket_buffers(&s);
    Ok(s)
}

/// What the socket may queue each way. The default (about 200 KB) overflows when the
/// other end sends a burst faster than one loop turn, and every datagram lost there is a
/// packet the tunnelled TCP retransmits and backs off for (KNOWN.md: a bare forwarder
/// goes from 1.2 to 1.8 Gbit/s with 4 MiB). `net.core.rmem_max` caps the plain option
/// (and cannot be raised inside a network namespace), so the forcing variants are tried
/// first: they need `CAP_NET_ADMIN`, which bringing up a TUN needs anyway.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn socket_buffers(s: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        let set = |opt| {
            // SAFETY: setsockopt with an int option on a socket we own.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCKET_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
            }
        };
        if !set(force) && !set(plain) {
            tracing::debug!("socket buffer option {plain} not set: {}", std::io::Error::last_os_error());
        }
    }
}

/// Brings the TUN up with its addresses and routes around the bound socket `udp` (from
/// [`bind`]), and returns the device and what runs it. Creating and configuring the TUN
/// needs `CAP_NET_ADMIN`; running it does not.
pub async fn start(cfg: TunnelConfig, udp: std::net::UdpSocket) -> Result<(Device, Runner)> {
    let tun = tun::create(&cfg.interface, cfg.mtu as u16)
        .with_context(|| format!("creating the TUN device {} (needs CAP_NET_ADMIN and /dev/net/tun)", cfg.interface))?;
    let pinned = configure_link(&cfg).await.with_context(|| format!("configuring {}", cfg.interface))?;
    let local = udp.local_addr()?;
    let status = Arc::new(Mutex::new(
        cfg.peers
            .iter()
            .map(|p| PeerStatus { public_key: super::keys::encode(&p.public), ..PeerStatus::default() })
            .collect(),
    ));
    let (commands, rx) = mpsc::channel(8);
    let device = Device {
        interface: cfg.interface.clone(),
        local,
        addresses: cfg.addresses.clone(),
        status: status.clone(),
        commands,
        pinned: Arc::new(Mutex::new(pinned)),
    };
    let core = Core::new(cfg.identity.clone(), cfg.peers.clone(), Instant::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_rekey_after(cfg.rekey_after)
        .with_mtu(cfg.mtu as usize);
    Ok((device, Runner { core, tun, udp, mtu: cfg.mtu as usize, status, commands: rx }))
}

/// A device set up and not yet running. Its TUN and socket are registered with the
/// runtime that runs it: [`Runner::run`] on the caller's, [`Runner::spawn`] on a thread
/// of its own.
pub struct Runner {
    core: Core,
    tun: tun_rs::SyncDevice,
    udp: std::net::UdpSocket,
    mtu: usize,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    commands: mpsc::Receiver<Command>,
}

impl Runner {
    /// Runs the device on the current runtime until it fails (or the future is dropped).
    /// A current-thread runtime suits it: it is one task, and at tens of thousands of
    /// packets a second worker threads waking each other cost more than the crypto
    /// (BENCHMARKS.md, tunnel).
    pub async fn run(self) -> Result<()> {
        let tun = Tun::new(self.tun, self.mtu).context("registering the TUN")?;
        let udp = UdpSocket::from_std(self.udp).context("registering the tunnel's socket")?;
        run(self.core, tun, udp, self.status, self.commands).await
    }

    /// Runs the device on a thread of its own with a current-thread runtime (for the
    /// daemon, whose runtime has worker threads). The future ends when the device does;
    /// dropping it stops the device.
    pub fn spawn(self) -> impl std::future::Future<Output = Result<()>> + Send {
        let (done_tx, done) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("ttp-tunnel".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let r = match rt {
                Ok(rt) => rt.block_on(async {
                    tokio::select! {
                        r = self.run() => r,
                        // The future below was dropped: its sender with it.
                        _ = stopped => Ok(()),
                    }
                }),
                Err(e) => Err(e).context("starting the tunnel's runtime"),
            };
            let _ = done_tx.send(r);
        });
        async move {
            let _stop = stop;
            thread.context("starting the tunnel's thread")?;
            done.await.context("the tunnel's thread ended without a result")?
        }
    }
}

async fn run(
    mut core: Core,
    tun: Tun,
    udp: UdpSocket,
    status: Arc<Mutex<Vec<PeerStatus>>>,
    mut commands: mpsc::Receiver<Command>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    // A GRO run of datagrams (one datagram if GRO is off).
    let mut from_net = vec![0u8; gso::GRO_BUFFER];
    let offload = Offload::enable(&udp);
    let io = &mut Io { udp: &udp, tun, out: Batch::new(), offload };
    // A client reaches out at once; a gateway waits to be reached.
    for peer in core.peer_ids() {
        let a = core.initiate(peer, Instant::now(), SystemTime::now());
        io.apply(a).await?;
    }
    io.flush().await?;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            r = io.tun.recv() => {
                let mut read = r.context("reading the TUN")?;
                let (now, wall) = (Instant::now(), SystemTime::now());
                // Whatever else is ready is handled in the same turn: one wakeup, not one
                // per burst (the loop's fixed cost dominates at these rates).
                for _ in 0..BATCH {
                    match read {
                        Read::Packets(n) => {
                            for i in 0..n {
                                let a = core.from_tunnel(io.tun.packet(i), now, wall);
                                io.apply(a).await?;
                            }
                        }
                        Read::Refused(e) => tracing::debug!("a burst from the TUN was dropped: {e}"),
                    }
                    match io.tun.try_recv() {
                        Some(r) => read = r.context("reading the TUN")?,
                        None => break,
                    }
                }
                io.flush().await?;
            }
            r = udp.readable() => {
                r.context("waiting for the network")?;
                let now = Instant::now();
                for _ in 0..BATCH {
                    match udp.try_io(Interest::READABLE, || gso::recv(udp.as_raw_fd(), &mut from_net)) {
                        Ok((n, src, segment)) => {
                            for d in gso::segments(&from_net[..n], segment) {
                                let a = core.from_network(unmap(src), d, now);
                                io.apply(a).await?;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // An ICMP error for an earlier datagram: not this socket's failure.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Err(e).context("receiving from the network"),
                    }
                }
                io.flush().await?;
            }
            Some(cmd) = commands.recv() => {
                let (outcome, reply) = match cmd {
                    Command::Add(cfg, reply) => (core.add_peer(cfg).map(drop), reply),
                    Command::Remove(public, reply) => (core.remove_peer(&public).map(drop), reply),
                };
                if outcome.is_ok() {
                    *status.lock().expect("status lock") = peer_status(&core, Instant::now());
                }
                let _ = reply.send(outcome);
            }
            _ = tick.tick() => {
                for a in core.tick(Instant::now(), SystemTime::now()) {
                    io.apply(a).await?;
                }
                io.flush().await?;
                io.tun.trim();
                *status.lock().expect("status lock") = peer_status(&core, Instant::now());
            }
        }
    }
}

/// What `ttp status` shows of the core's peers, in the order they were added.
fn peer_status(core: &Core, now: Instant) -> Vec<PeerStatus> {
    core.peer_ids()
        .into_iter()
        .filter_map(|id| core.peer(id))
        .map(|p| PeerStatus {
            public_key: super::keys::encode(&p.public),
            endpoint: p.endpoint,
            last_handshake_secs: p.traffic.handshake_at.map(|at| now.duration_since(at).as_secs()),
            rx_bytes: p.traffic.rx_bytes,
            tx_bytes: p.traffic.tx_bytes,
            drops: DropCounts::from(&p.drops),
        })
        .collect()
}

/// Where actions go: packets for the TUN and datagrams for the network are both queued,
/// and [`Io::flush`] writes them at the end of each wakeup (or when a queue is full).
struct Io<'a> {
    udp: &'a UdpSocket,
    tun: Tun,
    out: Batch,
    offload: Offload,
}

impl Io<'_> {
    async fn apply(&mut self, a: Action) -> Result<()> {
        match a {
            Action::Network(to, d) => {
                if !self.out.push(to, &d) {
                    self.send().await;
                    let empty_takes_any = self.out.push(to, &d);
                    debug_assert!(empty_takes_any);
                }
            }
            Action::Tunnel(_, p) => {
                if self.tun.queue(&p) {
                    self.write().await?;
                }
            }
            Action::None => {}
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.send().await;
        self.write().await
    }

    /// Sends the datagrams, waiting while the socket's buffer is full.
    async fn send(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.udp.as_raw_fd();
        let (out, offload) = (&mut self.out, &mut self.offload);
        let sent = self.udp.async_io(Interest::WRITABLE, || gso::send(fd, out, offload)).await;
        // A peer out of reach is the network's business, not a reason to stop.
        if let Err(e) = sent {
            tracing::debug!("sending to the network: {e}");
        }
    }

    /// Writes the decrypted packets to the TUN.
    async fn write(&mut self) -> Result<()> {
        if let Some(e) = self.tun.flush().await.context("writing to the TUN")? {
            tracing::debug!("the kernel refused a packet from a peer: {e}");
        }
        Ok(())
    }
}

/// The socket is IPv6 (dual stack): IPv4 peers appear as ::ffff:a.b.c.d.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Addresses, link up, and a route for every peer's allowed prefixes (beyond what the
/// addresses' own prefixes already route). Returns the host routes that keep the
/// endpoints outside the tunnel when a peer takes every address.
async fn configure_link(cfg: &TunnelConfig) -> Result<Vec<rtnetlink::packet_route::route::RouteMessage>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let conn = tokio::spawn(conn);
    let mut pinned = Vec::new();
    let result = async {
        let link = handle
            .link()
            .get()
            .match_name(cfg.interface.clone())
            .execute()
            .try_next()
            .await?
            .with_context(|| format!("{} vanished", cfg.interface))?;
        let index = link.header.index;
        for a in &cfg.addresses {
            handle
                .address()
                .add(index, a.addr(), a.prefix_len())
                .execute()
                .await
                .with_context(|| format!("adding {a}"))?;
        }
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .context("setting the link up")?;
        // A burst from the kernel must fit the TUN's read buffers (tun::GSO_MAX_SEGS): a
        // program that sets a tiny MSS would otherwise make bursts of a thousand segments,
        // which the device drops (and that program's connection stalls; nobody else's).
        let mut bound = rtnetlink::LinkUnspec::new_with_index(index).build();
        bound.attributes.push(rtnetlink::packet_route::link::LinkAttribute::GsoMaxSegs(tun::GSO_MAX_SEGS));
        if let Err(e) = handle.link().set(bound).execute().await {
            tracing::warn!(
                "could not bound {}'s bursts to {} segments ({e}): a connection with a very small MSS may stall",
                cfg.interface,
                tun::GSO_MAX_SEGS
            );
        }
        for p in cfg.peers.iter().flat_map(|p| p.allowed.iter()) {
            if p.prefix_len() == 0 {
                // Everything goes into the tunnel, except the way to the gateway itself:
                // each endpoint keeps the route it has now, as a host route of its own,
                // and the two halves of the address space (more specific than any default
                // route, which stays untouched) go to the TUN.
                for ep in cfg.peers.iter().filter_map(|q| q.endpoint).filter(|e| e.is_ipv4() == p.addr().is_ipv4()) {
                    pinned.push(pin_route(&handle, ep.ip()).await.with_context(|| format!("keeping {ep} outside"))?);
                }
                for half in halves(p) {
                    add_route(&handle, half, index).await.with_context(|| format!("routing {half}"))?;
                }
                continue;
            }
            if cfg.addresses.iter().any(|a| a.trunc().contains(p)) {
                continue;
            }
            add_route(&handle, *p, index).await.with_context(|| format!("routing {p}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    conn.abort();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            // A failure after an endpoint's host route was added must not leave it behind.
            unpin_routes(pinned).await;
            Err(e)
        }
    }
}

/// 0.0.0.0/0 as 0.0.0.0/1 and 128.0.0.0/1 (::/0 likewise).
fn halves(all: &IpNet) -> [IpNet; 2] {
    match all {
        IpNet::V4(_) => ["0.0.0.0/1".parse().expect("literal"), "128.0.0.0/1".parse().expect("literal")],
        IpNet::V6(_) => ["::/1".parse().expect("literal"), "8000::/1".parse().expect("literal")],
    }
}

/// Adds a host route to `ip` the way the kernel routes it now (same gateway and
/// interface), and returns it for removal.
async fn pin_route(handle: &rtnetlink::Handle, ip: IpAddr) -> Result<rtnetlink::packet_route::route::RouteMessage> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let query = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })
        .context("route query")?
        .build();
    let now = handle.route().get(query).execute().try_next().await?.context("no route to it")?;
    let mut msg = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })
        .context("route")?;
    for a in &now.attributes {
        match a {
            RouteAttribute::Oif(i) => msg = msg.output_interface(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => msg = msg.gateway(IpAddr::V4(*g)).context("gateway")?,
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => msg = msg.gateway(IpAddr::V6(*g)).context("gateway")?,
            _ => {}
        }
    }
    let msg = msg.build();
    handle.route().add(msg.clone()).replace().execute().await?;
    Ok(msg)
}

/// Removes the host routes [`configure_link`] added for the endpoints.
async fn unpin_routes(routes: Vec<rtnetlink::packet_route::route::RouteMessage>) {
    let Ok((conn, handle, _)) = rtnetlink::new_connection() else { return };
    let conn = tokio::spawn(conn);
    for r in routes {
        let _ = handle.route().del(r).execute().await;
    }
    conn.abort();
}

async fn add_route(handle: &rtnetlink::Handle, net: IpNet, index: u32) -> Result<()> {
    let msg = match net {
        IpNet::V4(n) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(index)
            .build(),
        IpNet::V6(n) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(index)
            .build(),
    };
    handle.route().add(msg).execute().await?;
    Ok(())
}
