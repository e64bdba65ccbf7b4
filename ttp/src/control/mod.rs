//! The control socket: how the CLI and other programs talk to the daemon.
//!
//! A Unix socket (`<runtime-dir>/control.sock`, mode 0660, owner root, group `ttp` when
//! that group exists) carrying one JSON object per line each way; docs/API.md has the
//! protocol. Peer credentials are checked as well as file permissions: only root and
//! members of the `ttp` group are served.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Notify,
};

use crate::{datapath::ServiceMaps, services::Services};

pub mod client;
pub mod proto;

use proto::{LoadStatus, PeerChange, Ports, Refusal, Reply, Request, Status, TestConnect};

use crate::user::CONTROL_GROUP as GROUP;
pub use proto::SOCKET;

/// What the control socket needs from the daemon. It serves from before Tor bootstraps:
/// `status` shows how far the bootstrap got and `stop` stops it (a stalled bootstrap
/// behind a censor can take minutes); what needs Tor answers that Tor is not ready yet.
pub struct Control {
    /// The services, set once Tor has bootstrapped.
    pub services: std::sync::OnceLock<Arc<Services>>,
    /// Arti's last word on its bootstrap, until the services are set.
    pub bootstrap: Mutex<String>,
    pub maps: Arc<Mutex<ServiceMaps>>,
    pub ports: Ports,
    pub started: Instant,
    pub started_unix: u64,
    /// Notified by a `stop` request.
    pub stop: Arc<Notify>,
    /// Root's runtime directory, where `ttp stop` records its request for the monitor.
    pub runtime_dir: std::path::PathBuf,
    /// Check endpoints, in order.
    pub check_urls: Vec<String>,
    pub load: Arc<crate::load::LoadStats>,
    pub budget: crate::load::Budget,
    /// Tor's configuration as at start, for a reload's bridges.
    pub tor_base: crate::tor::ConfigBase,
    /// The bridges in use (none: the network directly).
    pub bridges: Mutex<Option<crate::tor::InUse>>,
    /// The gateway interfaces, the tunnel's among them.
    pub gateway_interfaces: Vec<String>,
}

impl Control {
    async fn change_peer(services: &Services, change: PeerChange) -> Result<()> {
        use crate::tunnel::keys::decode;
        let tunnel = services.tunnel.as_ref().context("this ttp runs no tunnel gateway (start it with --tunnel)")?;
        match change {
            PeerChange::Add { public_key, preshared_key, allowed_ips, endpoint } => {
                let cfg = crate::tunnel::protocol::PeerConfig {
                    public: decode(&public_key).context("public key")?,
                    psk: preshared_key.as_deref().map(decode).transpose().context("preshared key")?,
                    allowed: allowed_ips,
                    endpoint,
                    persistent_keepalive: None,
                };
                tunnel.add_peer(cfg).await?;
                tracing::info!("tunnel peer {public_key} added");
            }
            PeerChange::Remove { public_key } => {
                tunnel.remove_peer(decode(&public_key).context("public key")?).await?;
                tracing::info!("tunnel peer {public_key} removed");
            }
        }
        Ok(())
    }

    /// Reconfigures Arti with `bridges` (the rest of its configuration as at start), and
    /// gives every isolation key a new circuit, as `refresh` does: the next streams go
    /// through circuits that follow the new setting. Returns how many keys were reset.
    fn set_bridges(&self, services: &Services, bridges: Option<&crate::tor::Bridges>) -> Result<usize> {
        let config = self.tor_base.with_bridges(bridges)?;
        services
            .tor
            .reconfigure(&config, arti_client::config::Reconfigure::AllOrNothing)
            .context("Tor refused the new bridges (the running session is unchanged; `ttp restart` applies them)")?;
        let n = services.isolation.new_identity();
        *self.bridges.lock().expect("bridges lock") = bridges.map(crate::tor::Bridges::in_use);
        match bridges {
            Some(b) => tracing::info!("now through {} bridge(s); new streams use new circuits", b.lines.len()),
            None => tracing::info!("bridges off; new streams use new circuits"),
        }
        Ok(n)
    }

    fn load_status(&self) -> LoadStatus {
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        LoadStatus {
            budget: self.budget,
            descriptors_open: std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0),
            accept_errors: self.load.accept_errors.get(),
            refused_share: n(&self.load.refused_share),
            refused_dns_tcp: n(&self.load.refused_dns_tcp),
            refused_control: n(&self.load.refused_control),
            idle_closed: n(&self.load.idle_closed),
        }
    }

    /// Status and stop, at any time; the rest once Tor is ready.
    async fn answer(&self, req: Request) -> Reply {
        match req {
            Request::Status => Reply::Status { ok: true, status: Box::new(self.status()) },
            Request::Stop => self.stop(),
            req => match self.services.get() {
                Some(services) => self.answer_ready(services, req).await,
                None => Reply::Error {
                    ok: false,
                    error: format!(
                        "Tor is not ready yet ({}): try again once `ttp status` says it is",
                        self.bootstrap.lock().expect("bootstrap lock")
                    ),
                },
            },
        }
    }

    /// The monitor tears down only on root's own record of the request (see
    /// crate::monitor): a stop without it would end in lockdown with the daemon gone, so
    /// it is refused here, and the daemon runs on.
    fn stop(&self) -> Reply {
        if !crate::monitor::stop_requested(&self.runtime_dir, std::process::id()) {
            return Reply::Error {
                ok: false,
                error: "a stop must come with root's stop request: use `ttp stop` (it records the request in the \
                        runtime directory first), or SIGTERM to ttp's process group; the daemon runs on"
                    .into(),
            };
        }
        self.stop.notify_one();
        Reply::Done { ok: true }
    }

    /// What the daemon says of itself: before Tor is ready, how far its bootstrap got.
    fn status(&self) -> Status {
        let (counters, refusals) = {
            let maps = self.maps.lock().expect("maps lock");
            let counters = maps
                .counters()
                .map(|v| v.into_iter().map(|(c, n)| (c.name().to_string(), n)).collect())
                .unwrap_or_default();
            let refusals = maps
                .refusals(MAX_REFUSALS)
                .into_iter()
                .map(|(c, uid, cgroup, count)| Refusal { counter: c.name().into(), uid, cgroup, count })
                .collect();
            (counters, refusals)
        };
        let mut status = Status {
            state: proto::STATE_STARTING.into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            started_unix: self.started_unix,
            ports: self.ports.clone(),
            bootstrap: self.bootstrap.lock().expect("bootstrap lock").clone(),
            waiting: no_network().or_else(|| Some(STARTING.into())),
            tor_ready: false,
            streams_open: 0,
            streams_refused: 0,
            bytes_up: 0,
            bytes_down: 0,
            exit_address: None,
            exit_checked_unix: None,
            check_urls: self.check_urls.clone(),
            counters,
            refusals,
            tunnel_peers: Vec::new(),
            load: Some(self.load_status()),
            memory: crate::memory::of(std::process::id()),
            bridges: self.bridges.lock().expect("bridges lock").as_mut().map(crate::tor::InUse::status),
            dns: None,
            gateway_interfaces: self.gateway_interfaces.clone(),
            gateway_present: crate::ifname::present(&self.gateway_interfaces),
        };
        if let Some(s) = self.services.get() {
            // One snapshot each: the figures of one reply agree with each other.
            let boot = s.tor.bootstrap_status();
            let (bytes_up, bytes_down) = s.streams.totals();
            let exit = s.exit.lock().expect("exit lock").clone();
            status.state = proto::STATE_RUNNING.into();
            status.bootstrap = boot.to_string();
            status.waiting = no_network().or_else(|| crate::tor::waiting_while_running(&boot));
            status.tor_ready = boot.ready_for_traffic();
            status.streams_open = s.streams.open_count();
            status.streams_refused = s.streams.refused.load(std::sync::atomic::Ordering::Relaxed);
            (status.bytes_up, status.bytes_down) = (bytes_up, bytes_down);
            status.exit_address = exit.as_ref().map(|c| c.exit_address.to_string());
            status.exit_checked_unix = exit.as_ref().map(|c| c.checked_unix);
            status.tunnel_peers = s.tunnel.as_ref().map(|t| t.status()).unwrap_or_default();
            status.dns = Some(s.dns.status());
        }
        status
    }

    /// The requests that need Tor.
    async fn answer_ready(&self, services: &Services, req: Request) -> Reply {
        match req {
            Request::Status => Reply::Status { ok: true, status: Box::new(self.status()) },
            Request::Stop => self.stop(),
            Request::Check { urls } => {
                let urls = if urls.is_empty() { self.check_urls.clone() } else { urls };
                let socks = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.ports.socks));
                match crate::check::check_any(socks, &urls).await {
                    Ok(check) => {
                        *services.exit.lock().expect("exit lock") = Some(check.clone());
                        Reply::Checked { ok: true, check }
                    }
                    Err(e) => Reply::Error { ok: false, error: format!("{e:#}") },
                }
            }
            Request::Streams { recent } => Reply::Streams { ok: true, streams: services.streams.snapshot(recent) },
            Request::Refresh => {
                let n = services.isolation.new_identity();
                tracing::info!("new identity: {n} isolation keys reset; new streams use new circuits");
                Reply::Refreshed { ok: true, isolation_keys_reset: n }
            }
            Request::Bridges { bridges } => match self.set_bridges(services, bridges.as_ref()) {
                Ok(n) => Reply::Refreshed { ok: true, isolation_keys_reset: n },
                Err(e) => Reply::Error { ok: false, error: format!("{e:#}") },
            },
            Request::TunnelPeer(change) => match Self::change_peer(services, change).await {
                Ok(()) => Reply::Done { ok: true },
                Err(e) => Reply::Error { ok: false, error: format!("{e:#}") },
            },
            Request::TestConnect { host, port } => {
                let t0 = Instant::now();
                let prefs = {
                    let mut p = arti_client::StreamPrefs::new();
                    p.set_isolation(arti_client::IsolationToken::new());
                    p.connect_to_onion_services(arti_client::config::BoolOrAuto::Explicit(true));
                    p
                };
                match services.tor.connect_with_prefs((host.as_str(), port), &prefs).await {
                    Ok(stream) => Reply::Connected {
                        ok: true,
                        connected: TestConnect {
                            host,
                            port,
                            latency_ms: t0.elapsed().as_millis() as u64,
                            circuit: crate::transport::circuit_of(&stream),
                        },
                    },
                    Err(e) => Reply::Error { ok: false, error: format!("test-connect {host}:{port}: {e}") },
                }
            }
        }
    }
}

/// Creates the socket with its permissions.
pub fn bind(runtime_dir: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(runtime_dir).with_context(|| format!("creating {}", runtime_dir.display()))?;
    let path = runtime_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    // Bound while the daemon is still root: the socket is root's, readable by the group.
    let group = nix::unistd::Group::from_name(GROUP).ok().flatten().filter(|g| {
        nix::unistd::chown(&path, None, Some(g.gid))
            .inspect_err(|e| tracing::warn!("control socket not given to the group {GROUP}: {e}"))
            .is_ok()
    });
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// What a starting daemon waits for.
const STARTING: &str = "Tor is bootstrapping; the host stays closed until it is ready";

/// Who-refused entries a status carries, the most frequent first.
const MAX_REFUSALS: usize = 32;

/// The longest request line; a longer one ends the connection.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A connection that sends no complete request for this long is closed.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Who is asking, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Root,
    /// A member of the `ttp` group (primary or supplementary): may read.
    Reader,
    Stranger,
}

impl Caller {
    /// From the peer's uid, primary gid and supplementary groups.
    pub fn of(uid: u32, gid: u32, groups: &[u32], ttp_group: Option<u32>) -> Caller {
        match ttp_group {
            _ if uid == 0 => Caller::Root,
            Some(g) if gid == g || groups.contains(&g) => Caller::Reader,
            _ => Caller::Stranger,
        }
    }
}

impl Request {
    /// Whether `caller` may make this request. Everything that changes the daemon's state,
    /// or makes it reach a destination the caller chose, is root's alone; the `ttp` group
    /// reads (status, streams, a check against the configured endpoints).
    pub fn allowed_for(&self, caller: Caller) -> bool {
        match (caller, self) {
            (Caller::Root, _) => true,
            (Caller::Reader, Request::Status | Request::Streams { .. }) => true,
            (Caller::Reader, Request::Check { urls }) => urls.is_empty(),
            _ => false,
        }
    }
}

pub async fn serve(listener: UnixListener, ctl: Arc<Control>) -> Result<()> {
    let group = nix::unistd::Group::from_name(GROUP).ok().flatten().map(|g| g.gid.as_raw());
    let slots = Arc::new(tokio::sync::Semaphore::new(crate::load::MAX_CONTROL));
    loop {
        let (stream, _) = crate::accept::next("control socket", &ctl.load.accept_errors, || listener.accept())
            .await
            .context("control socket: the listener failed")?;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::load::LoadStats::count(&ctl.load.refused_control);
            continue;
        };
        let caller = match (stream.peer_cred(), peer_groups(&stream)) {
            (Ok(c), Ok(groups)) => Caller::of(c.uid(), c.gid(), &groups, group),
            _ => Caller::Stranger,
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            if let Err(e) = session(stream, &ctl, caller).await {
                tracing::debug!("control connection: {e:#}");
            }
            drop(slot);
        });
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`: as they were when it connected).
/// By hand: nix has no wrapper for this option.
fn peer_groups(s: &UnixStream) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; the kernel writes at most that and says how
        // many it needs when they do not fit (ERANGE).
        let r = unsafe {
            libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        if r == 0 {
            groups.truncate(len as usize / 4);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || len as usize / 4 <= groups.len() || groups.len() > 65536 {
            return Err(e);
        }
        groups.resize(len as usize / 4, 0);
    }
}

async fn session(stream: UnixStream, ctl: &Control, caller: Caller) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut r).take(MAX_REQUEST as u64 + 1);
        match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Err(_) => {
                crate::load::LoadStats::count(&ctl.load.idle_closed);
                bail!("idle for {IDLE:?}");
            }
            Ok(n) => {
                if n? == 0 {
                    return Ok(());
                }
            }
        }
        let too_long = line.len() > MAX_REQUEST;
        let reply = match read_request(&line, caller) {
            Ok(req) => ctl.answer(req).await,
            Err(refusal) => refusal,
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        tokio::time::timeout(IDLE, w.write_all(&out)).await.context("reply not taken in time")??;
        if too_long {
            bail!("request too long");
        }
    }
}

/// One request line from `caller`, or the reply that refuses it: too long, from a caller
/// who may not use the socket, not a request, or one the caller may not make.
pub fn read_request(line: &[u8], caller: Caller) -> Result<Request, Reply> {
    let refuse = |error: String| Err(Reply::Error { ok: false, error });
    if line.len() > MAX_REQUEST {
        return refuse(format!("request longer than {MAX_REQUEST} bytes"));
    }
    if caller == Caller::Stranger {
        return refuse("permission denied: only root and the ttp group may use ttp's control socket".into());
    }
    match serde_json::from_slice::<Request>(line) {
        Ok(req) if !req.allowed_for(caller) => refuse(
            "permission denied: only root may change ttp's state or choose where it connects \
             (the ttp group may read: status, streams, check)"
                .into(),
        ),
        Ok(req) => Ok(req),
        Err(e) => refuse(format!("bad request: {e}")),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What ttp itself sees missing: no interface with a default route (a link down, a Wi-Fi
/// not yet joined). Arti notices only once its connections fail.
fn no_network() -> Option<String> {
    // default_uplinks fails exactly when there is none.
    crate::uplinks::default_uplinks().is_err().then(|| {
        "no network: no interface has a default route; ttp waits for one (the host stays closed meanwhile)".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_reject_unknown_input() {
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(), Request::Status);
        // The form docs/API.md shows for peer changes.
        let remove = Request::TunnelPeer(PeerChange::Remove { public_key: "K".into() });
        assert_eq!(serde_json::to_string(&remove).unwrap(), r#"{"cmd":"tunnel-peer","remove":{"public_key":"K"}}"#);
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"cmd":"tunnel-peer","add":{"public_key":"K","allowed_ips":["10.77.0.5/32"]}}"#
            )
            .unwrap(),
            Request::TunnelPeer(PeerChange::Add {
                public_key: "K".into(),
                preshared_key: None,
                allowed_ips: vec!["10.77.0.5/32".parse().unwrap()],
                endpoint: None
            })
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"streams","recent":true}"#).unwrap(),
            Request::Streams { recent: true }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"streams"}"#).unwrap(),
            Request::Streams { recent: false }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }

    #[test]
    fn the_ttp_group_reads_and_only_root_changes_anything() {
        let ttp = Some(990);
        // Primary or supplementary membership, both count.
        assert_eq!(Caller::of(1000, 990, &[], ttp), Caller::Reader);
        assert_eq!(Caller::of(1000, 1000, &[27, 990], ttp), Caller::Reader);
        assert_eq!(Caller::of(1000, 1000, &[27], ttp), Caller::Stranger);
        assert_eq!(Caller::of(1000, 1000, &[990], None), Caller::Stranger);
        assert_eq!(Caller::of(0, 0, &[], None), Caller::Root);
        let reads = [Request::Status, Request::Streams { recent: true }, Request::Check { urls: vec![] }];
        let changes = [
            Request::Stop,
            Request::Refresh,
            Request::Check { urls: vec!["http://192.0.2.1/".into()] },
            Request::TestConnect { host: "example.org".into(), port: 80 },
            Request::TunnelPeer(PeerChange::Remove { public_key: "K".into() }),
            Request::Bridges { bridges: None },
        ];
        for r in &reads {
            assert!(r.allowed_for(Caller::Reader) && r.allowed_for(Caller::Root), "{r:?}");
            assert!(!r.allowed_for(Caller::Stranger), "{r:?}");
        }
        for r in &changes {
            assert!(!r.allowed_for(Caller::Reader) && !r.allowed_for(Caller::Stranger), "{r:?}");
            assert!(r.allowed_for(Caller::Root), "{r:?}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::Refreshed { ok: true, isolation_keys_reset: 2 };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"ok":true,"isolation_keys_reset":2}"#);
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r);
    }
}
