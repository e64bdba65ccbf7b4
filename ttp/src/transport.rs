//! The TransPort: accepts the TCP connections the kernel redirected and carries each one
//! through Tor to the destination the application asked for.
//!
//! Arti has no transparent proxy port; this is it. The original destination comes from the
//! datapath (`CONN_DST`, keyed by the client's address), or, for a machine behind the
//! gateway, from the accepted socket's own address; virtual addresses are mapped back to
//! their .onion names, and every stream is isolated by the owner the kernel recorded (or
//! by the gateway client's address).

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::{Context, Result};
use arti_client::{DangerouslyIntoTorAddr, DataStream, StreamPrefs};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::{
    datapath::maps::{ConnOrigin, ServiceMaps},
    dns::{automap::Mapped, Automap},
    load::{LoadStats, Share, Shares},
    principal::{IsolationKey, Owner},
    tor::{Isolation, Tor},
};

/// Where the TransPort learns what a redirected connection wanted.
pub trait OriginSource: Send + Sync + 'static {
    fn take(&self, peer: SocketAddr) -> Option<ConnOrigin>;
}

impl OriginSource for Mutex<ServiceMaps> {
    fn take(&self, peer: SocketAddr) -> Option<ConnOrigin> {
        self.lock().expect("maps lock").take_origin(peer)
    }
}

/// One live stream, as `ttp status` and `ttp streams` show it.
#[derive(Debug)]
pub struct Stream {
    pub destination: String,
    pub isolation: String,
    /// Arti's id of the circuit carrying it (e.g. "Circ 3.1").
    pub circuit: String,
    /// Its relays, entry first (see [`relays_of`]).
    pub relays: Vec<String>,
    pub started: Instant,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

pub use crate::control::proto::StreamSnapshot;

/// How many closed streams `streams` still reports.
const RECENT: usize = 256;

/// The table of live streams, and the most recent closed ones.
#[derive(Default)]
pub struct Streams {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Stream>>>,
    recent: Mutex<std::collections::VecDeque<StreamSnapshot>>,
    /// Connections refused because the stream limit was reached.
    pub refused: AtomicU64,
    /// Bytes of the streams already closed (up: to Tor, down: to applications).
    closed_up: AtomicU64,
    closed_down: AtomicU64,
}

impl Streams {
    pub(crate) fn add(&self, s: Stream) -> (u64, Arc<Stream>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(s);
        self.live.lock().expect("streams lock").insert(id, s.clone());
        (id, s)
    }

    pub(crate) fn remove(&self, id: u64) {
        let Some(s) = self.live.lock().expect("streams lock").remove(&id) else { return };
        self.closed_up.fetch_add(s.bytes_up.load(Ordering::Relaxed), Ordering::Relaxed);
        self.closed_down.fetch_add(s.bytes_down.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut recent = self.recent.lock().expect("streams lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(snapshot(id, &s, false));
    }

    /// Open streams; with `recent`, also the last closed ones (oldest first).
    pub fn snapshot(&self, recent: bool) -> Vec<StreamSnapshot> {
        let mut v: Vec<_> =
            self.live.lock().expect("streams lock").iter().map(|(id, s)| snapshot(*id, s, true)).collect();
        if recent {
            v.extend(self.recent.lock().expect("streams lock").iter().cloned());
        }
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn open_count(&self) -> usize {
        self.live.lock().expect("streams lock").len()
    }

    /// Bytes through every stream since start, open and closed: (up, down).
    pub fn totals(&self) -> (u64, u64) {
        let live = self.live.lock().expect("streams lock");
        let (up, down) = live.values().fold((0, 0), |(u, d), s| {
            (u + s.bytes_up.load(Ordering::Relaxed), d + s.bytes_down.load(Ordering::Relaxed))
        });
        (up + self.closed_up.load(Ordering::Relaxed), down + self.closed_down.load(Ordering::Relaxed))
    }
}

fn snapshot(id: u64, s: &Stream, open: bool) -> StreamSnapshot {
    StreamSnapshot {
        id,
        destination: s.destination.clone(),
        isolation: s.isolation.clone(),
        circuit: s.circuit.clone(),
        relays: s.relays.clone(),
        open,
        age_secs: s.started.elapsed().as_secs(),
        bytes_up: s.bytes_up.load(Ordering::Relaxed),
        bytes_down: s.bytes_down.load(Ordering::Relaxed),
    }
}

/// What both proxy ports (TransPort, SOCKS) need to open and account Tor streams.
pub struct PortContext {
    pub tor: Tor,
    pub automap: Arc<Mutex<Automap>>,
    pub isolation: Arc<Isolation>,
    pub streams: Arc<Streams>,
    /// At most this many streams at once ([`crate::load::Budget::streams`]); connections
    /// past it are closed at once.
    pub limit: Arc<Semaphore>,
    /// What one key may hold of them.
    pub shares: Arc<Shares<IsolationKey>>,
    pub load: Arc<LoadStats>,
}

/// `ip` as `owner`'s stream target: a virtual address the DNSPort gave `owner` becomes
/// its name again (one lock). Any other virtual address (expired, or another owner's) is
/// an error, never a destination.
pub fn unmap(automap: &Mutex<Automap>, ip: IpAddr, owner: Owner) -> Result<Target> {
    let IpAddr::V4(v4) = ip else { return Ok(Target::Addr(ip)) };
    match automap.lock().expect("automap lock").lookup(owner, v4, Instant::now()) {
        Mapped::Name(name) => Ok(Target::Name(name)),
        Mapped::Nothing => anyhow::bail!("{v4}: not a virtual address of this client's (expired?)"),
        Mapped::Outside => Ok(Target::Addr(ip)),
    }
}

/// Where a stream goes: a name (resolved by the exit, or an onion service) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Addr(IpAddr),
}

impl PortContext {
    /// Accepts forever; each connection is handled under a permit of `admission` (the
    /// stream slots, or for SOCKS the handshake slots), which `handle` holds as long as it
    /// needs. Past the limit a connection is closed at once and counted, never queued.
    pub async fn serve<F, Fut>(
        self: Arc<Self>,
        listener: TcpListener,
        what: &'static str,
        admission: Arc<Semaphore>,
        handle: F,
    ) -> Result<()>
    where
        F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let handle = Arc::new(handle);
        loop {
            let (client, peer) = crate::accept::next(what, &self.load.accept_errors, || listener.accept())
                .await
                .with_context(|| format!("{what}: the listener failed"))?;
            let Ok(permit) = admission.clone().try_acquire_owned() else {
                self.streams.refused.fetch_add(1, Ordering::Relaxed);
                drop(client);
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(client, peer, permit).await {
                    tracing::info!(%peer, "{what} stream failed: {e:#}");
                }
            });
        }
    }

    /// A stream slot, for a client admitted by another kind of slot (a SOCKS handshake).
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.limit.clone().try_acquire_owned().map_err(|_| {
            self.streams.refused.fetch_add(1, Ordering::Relaxed);
            anyhow::anyhow!("refused: every stream slot is taken")
        })
    }

    /// A slot of `key`'s share, held for the stream's life; a key holding its whole share
    /// is refused (and counted), so that it cannot take every slot.
    pub fn share(&self, key: &IsolationKey) -> Result<Share<IsolationKey>> {
        self.shares.try_take(key).ok_or_else(|| {
            LoadStats::count(&self.load.refused_share);
            anyhow::anyhow!("refused: this client holds its whole share of the stream slots")
        })
    }

    /// A virtual address the DNSPort gave `owner` becomes its name again.
    pub fn unmap(&self, ip: IpAddr, owner: Owner) -> Result<Target> {
        unmap(&self.automap, ip, owner)
    }

    /// Opens a Tor stream under `isolation`; returns its printable destination too.
    pub async fn open(
        &self,
        target: &Target,
        port: u16,
        isolation: IsolationKey,
    ) -> Result<(String, DataStream), (String, arti_client::Error)> {
        let mut prefs = StreamPrefs::new();
        prefs.set_isolation(self.isolation.token(isolation));
        // Arti's connect futures are boxed. A task is as large as its largest state, so an
        // unboxed one would stay allocated, at its full size, in every stream's task for
        // the stream's whole life; boxed, it is freed once the stream is open.
        match target {
            Target::Name(host) => {
                if crate::dns::service::is_tor_only(host) {
                    prefs.connect_to_onion_services(arti_client::config::BoolOrAuto::Explicit(true));
                }
                let d = format!("{host}:{port}");
                match Box::pin(self.tor.connect_with_prefs((host.as_str(), port), &prefs)).await {
                    Ok(s) => Ok((d, s)),
                    Err(e) => Err((d, e)),
                }
            }
            Target::Addr(ip) => {
                let sa = SocketAddr::new(*ip, port);
                let addr = sa.into_tor_addr_dangerously().map_err(|e| (sa.to_string(), e.into()))?;
                match Box::pin(self.tor.connect_with_prefs(addr, &prefs)).await {
                    Ok(s) => Ok((sa.to_string(), s)),
                    Err(e) => Err((sa.to_string(), e)),
                }
            }
        }
    }

    /// Relays between the client and its Tor stream, listed in the stream table meanwhile.
    ///
    /// Not an `async fn`, and neither is [`relay`]: they take the streams apart before the
    /// future exists, so it holds only the halves. An async fn keeps its arguments for its
    /// whole life, which cost 750 bytes for a `DataStream`, twice, in every open stream.
    pub fn track_and_relay(
        &self,
        client: TcpStream,
        tor_stream: DataStream,
        destination: String,
        isolation: String,
    ) -> impl Future<Output = Result<()>> + '_ {
        use futures::FutureExt;
        let (id, info) = self.streams.add(Stream {
            destination,
            isolation,
            circuit: circuit_of(&tor_stream),
            relays: relays_of(&tor_stream),
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let relaying = relay(client, tor_stream, info);
        // A combinator, not an async block: awaiting a captured future moves it, and the
        // block would hold it twice.
        relaying.map(move |r| {
            self.streams.remove(id);
            r
        })
    }
}

pub struct TransPort {
    pub ctx: Arc<PortContext>,
    pub origins: Arc<dyn OriginSource>,
}

impl TransPort {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        let ctx = self.ctx.clone();
        let slots = ctx.limit.clone();
        ctx.serve(listener, "TransPort", slots, move |client, peer, slot| {
            let this = self.clone();
            async move {
                let r = this.handle(client, peer).await;
                drop(slot);
                r
            }
        })
        .await
    }

    async fn handle(&self, client: TcpStream, peer: SocketAddr) -> Result<()> {
        let (dst, key, owner, label) = match self.origins.take(peer) {
            Some(o) => (
                o.dst,
                IsolationKey::Local { uid: o.uid, cgroup: o.cgroup },
                Owner::Uid(o.uid),
                format!("uid {} cgroup {}", o.uid, o.cgroup),
            ),
            // A gateway client's connection, handed over by the gateway program: its local
            // address is the destination it asked for. Our listeners are bound to loopback,
            // so any other way in shows a loopback address and is refused.
            None => match client.local_addr()? {
                local if !local.ip().is_loopback() => (
                    local,
                    IsolationKey::Gateway { client: peer.ip() },
                    Owner::Addr(peer.ip()),
                    format!("gateway client {}", peer.ip()),
                ),
                _ => anyhow::bail!("no original destination recorded for {peer}: not a redirected connection"),
            },
        };
        let _share = self.ctx.share(&key)?;
        let target = self.ctx.unmap(dst.ip(), owner)?;
        let (destination, tor_stream) = self
            .ctx
            .open(&target, dst.port(), key)
            .await
            .map_err(|(d, e)| anyhow::Error::new(e).context(stream_failed(&d)))?;
        self.ctx.track_and_relay(client, tor_stream, destination, label).await
    }
}

/// The context of a failed stream's error, which ends up in the log: the destination is
/// scrubbed (Arti's `safelog`) unless `--log-sensitive` asked for it.
pub fn stream_failed(destination: &str) -> String {
    format!("Tor stream to {}", safelog::sensitive(destination))
}

/// Arti's id of the circuit a stream runs on, for display and for proving isolation.
/// The relays of the circuit carrying `s`, entry first, each as the first 8 hex digits of
/// its RSA identity fingerprint (Arti's circuits know no nicknames; a relay's fingerprint
/// is public, in the consensus). Empty when Arti cannot say (a multi-path tunnel).
pub fn relays_of(s: &arti_client::DataStream) -> Vec<String> {
    use tor_linkspec::HasRelayIds;
    use tor_proto::client::stream::ClientStreamCtrl;
    let Some(path) = s
        .client_stream_ctrl()
        .and_then(|c| c.tunnel())
        .and_then(|t| t.as_single_circ().ok().and_then(|c| c.single_path().ok()))
    else {
        return Vec::new();
    };
    path.hops()
        .iter()
        .map(|hop| match hop.as_chan_target().and_then(|t| t.rsa_identity().map(|id| id.to_string())) {
            // RsaIdentity displays as `$` and 40 hex digits.
            Some(id) => id.trim_start_matches('$').chars().take(8).collect::<String>().to_ascii_uppercase(),
            None => "?".to_string(),
        })
        .collect()
}

pub fn circuit_of(s: &arti_client::DataStream) -> String {
    use tor_proto::client::stream::ClientStreamCtrl;
    s.client_stream_ctrl()
        .and_then(|c| c.tunnel())
        .and_then(|t| t.as_single_circ().ok().map(|c| c.unique_id().to_string()))
        .unwrap_or_default()
}

/// Copies both ways until both are done; each direction's EOF is passed on as a
/// half-close, so request/response protocols that shut down their sending side work.
/// The streams are split before the future is made (see [`PortContext::track_and_relay`]).
pub fn relay<A, B>(a: A, b: B, stream: Arc<Stream>) -> impl Future<Output = Result<()>>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    async move {
        // The two directions are made inside `join!`: a future first bound to a local
        // and then moved in would take its space twice.
        let (u, d) = tokio::join!(
            async {
                let r = copy(&mut ar, &mut bw, &stream.bytes_up).await;
                let _ = bw.shutdown().await;
                r
            },
            async {
                let r = copy(&mut br, &mut aw, &stream.bytes_down).await;
                let _ = aw.shutdown().await;
                r
            }
        );
        u.and(d)
    }
}

/// Per-direction relay buffer while data moves. It exists only then: an idle stream waits
/// with [`IDLE_BUF`] bytes per direction, so a thousand idle streams cost a thousand times
/// 128 bytes, not 8 KiB (the memory target of issue 3 is counted with idle streams).
const RELAY_BUF: usize = 4 * 1024;
/// What a waiting direction holds. It only has to wake the direction up: the rest of
/// what is readable (the rest of Arti's cell too) is read at once into the relay buffer.
const IDLE_BUF: usize = 64;

/// Copies with a byte counter. Whatever more is readable without waiting joins the same
/// write (Arti returns at most a cell, 498 bytes, per read; one write per cell costs a
/// system call each), then the write is flushed: Arti buffers a stream's data until a cell
/// is full, and interactive protocols cannot wait for that.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W, counter: &AtomicU64) -> Result<()> {
    use futures::FutureExt;
    let mut first = [0u8; IDLE_BUF];
    loop {
        let n = r.read(&mut first).await?;
        if n == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; RELAY_BUF];
        buf[..n].copy_from_slice(&first[..n]);
        let mut filled = n;
        let mut eof = false;
        while filled < buf.len() {
            // `read` is cancellation-safe: a pending read consumes nothing.
            match r.read(&mut buf[filled..]).now_or_never() {
                Some(Ok(0)) => {
                    eof = true;
                    break;
                }
                Some(Ok(m)) => filled += m,
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        w.write_all(&buf[..filled]).await?;
        w.flush().await?;
        counter.fetch_add(filled as u64, Ordering::Relaxed);
        if eof {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_scrubbed_from_the_log_unless_asked_for() {
        let scrubbed = stream_failed("secret.example:443");
        assert!(!scrubbed.contains("secret.example"), "{scrubbed}");
        let _shown = safelog::disable_safe_logging().unwrap();
        assert!(stream_failed("secret.example:443").contains("secret.example:443"));
    }

    #[tokio::test]
    async fn relay_counts_bytes_and_passes_half_close() {
        let (client, mut app) = tokio::io::duplex(64);
        let (tor_side, mut remote) = tokio::io::duplex(64);
        let s = Arc::new(Stream {
            destination: "x:1".into(),
            isolation: String::new(),
            circuit: String::new(),
            relays: Vec::new(),
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let relaying = async { relay(client, tor_side, s.clone()).await.unwrap() };
        let peers = async {
            app.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            app.shutdown().await.unwrap(); // half-close: the request is complete
            let mut req = Vec::new();
            remote.read_to_end(&mut req).await.unwrap(); // sees EOF through the relay
            remote.write_all(b"HTTP/1.0 200 OK\r\n\r\nhi").await.unwrap();
            remote.shutdown().await.unwrap();
            let mut resp = Vec::new();
            app.read_to_end(&mut resp).await.unwrap();
            (req.len(), resp)
        };
        let ((), (req_len, resp)) = tokio::join!(relaying, peers);
        assert_eq!(req_len, 18);
        assert_eq!(resp, b"HTTP/1.0 200 OK\r\n\r\nhi");
        assert_eq!(s.bytes_up.load(Ordering::Relaxed), 18);
        assert_eq!(s.bytes_down.load(Ordering::Relaxed), 21);
    }

    /// Reads far larger than the idle buffer: each burst starts with [`IDLE_BUF`] bytes
    /// and continues in the relay buffer, and no byte is lost, reordered or counted twice.
    #[tokio::test]
    async fn relay_carries_bursts_larger_than_its_buffers_intact() {
        let (client, mut app) = tokio::io::duplex(8 * 1024);
        let (tor_side, mut remote) = tokio::io::duplex(8 * 1024);
        let s = Arc::new(Stream {
            destination: "x:1".into(),
            isolation: String::new(),
            circuit: String::new(),
            relays: Vec::new(),
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let relaying = async { relay(client, tor_side, s.clone()).await.unwrap() };
        let up = async {
            app.write_all(&data).await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            back
        };
        let down = async {
            let mut got = Vec::new();
            remote.read_to_end(&mut got).await.unwrap();
            remote.write_all(&got).await.unwrap(); // echoed back, the other way
            remote.shutdown().await.unwrap();
            got
        };
        let ((), back, got) = tokio::join!(relaying, up, down);
        assert!(got == data && back == data, "bytes lost or reordered");
        assert_eq!(s.bytes_up.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(s.bytes_down.load(Ordering::Relaxed), data.len() as u64);
    }
}
