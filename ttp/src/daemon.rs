//! The daemon: kill-switch first, then Tor, then the ports, then redirection goes live.
//!
//! 0. (Before any thread: the privileged monitor is forked, see [`crate::monitor`].)
//! 1. Into its own cgroup (the only thing the kill-switch exempts).
//! 2. Datapath attached and pinned in lockdown: from here on nothing governed leaks.
//! 3. The loader's descriptors are closed (the pins hold the datapath), the maps the daemon
//!    needs are reopened read-only but for the stream origins
//!    ([`crate::datapath::ServiceMaps`]), the proxy ports are bound (low ports need root),
//!    then root is given up: the daemon becomes the service user with no capability (on
//!    kernels before 5.19, `CAP_BPF` alone), in every thread.
//! 4. Arti bootstraps, unprivileged.
//! 5. The ports are served, the control socket opens.
//! 6. Lockdown off (the monitor writes it, as root): governed traffic now flows through Tor.
//!
//! On SIGTERM/SIGINT/`stop` from root, and only then: lockdown on, services stop, and the
//! monitor (root) destroys the applications' sockets through us, detaches and unpins the
//! datapath, and removes the runtime files, if it finds root's own request for the stop
//! (see [`crate::monitor`]: the daemon's word alone is not enough).
//!
//! On anything else once the kill-switch is attached (a service that ends, Tor that does
//! not bootstrap, any error): lockdown on, and the monitor is told why and leaves the
//! datapath attached. The host stays closed until root says `ttp stop` or a new start
//! takes the pins over. [`run`] is where this is decided, in one `match`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UdpSocket};

use crate::{
    cgroup,
    control::{self, proto::Ports, Control},
    datapath::{Datapath, DatapathOptions, ServiceMaps},
    dns::{self, Automap, Cache, DnsService},
    load::{Budget, LoadStats},
    lock::SessionLock,
    monitor::{Cleanup, Monitor, StopRequested},
    options::StartOptions,
    services::Services,
    socks::SocksPort,
    tor::{self, Isolation, TorResolver},
    transport::{PortContext, Streams, TransPort},
    tunnel::{self, config::TunnelConfig},
    user::{self, ServiceUser},
};

/// How long the DNS cache and the automap keep entries.
const DNS_CACHE_TTL: Duration = Duration::from_secs(60);
const AUTOMAP_TTL: Duration = Duration::from_secs(30 * 60);
const AUTOMAP_CAPACITY: usize = 65536;

/// Gateway mode, once set up: the interfaces steered into Tor, and the tunnel to run.
#[derive(Default)]
struct Gateway {
    interfaces: Vec<String>,
    tunnel: Option<(tunnel::device::Device, tunnel::device::Runner)>,
}

/// Milestones of a start, for whoever waits on it (`ttp start` reads them from the
/// daemon's stdout: see [`Event::line`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The kill-switch is attached and closed.
    KillSwitch(Duration),
    /// Tor's bootstrap: percent done and what it is doing.
    Bootstrap(u8, String),
    /// Governed traffic flows through Tor.
    Ready(Duration),
}

impl Event {
    /// One line of the start protocol: `KILLSWITCH <ms>`, `BOOTSTRAP <pct> <text>`, `READY`.
    pub fn line(&self) -> String {
        match self {
            Event::KillSwitch(d) => format!("KILLSWITCH {}", d.as_millis()),
            Event::Bootstrap(p, s) => format!("BOOTSTRAP {p} {}", s.replace('\n', " ")),
            Event::Ready(_) => "READY".into(),
        }
    }

    /// The inverse of [`Event::line`]; `None` for any other line.
    pub fn parse(line: &str) -> Option<Event> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "KILLSWITCH" => Some(Event::KillSwitch(Duration::from_millis(rest.parse().ok()?))),
            "BOOTSTRAP" => {
                let (p, s) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Event::Bootstrap(p.parse().ok()?, s.to_string()))
            }
            "READY" if rest.is_empty() => Some(Event::Ready(Duration::ZERO)),
            _ => None,
        }
    }
}

/// The governed cgroup (under the cgroup2 mount `root`) and the two `ttp exec` cgroups
/// inside it.
fn exec_cgroups(opts: &StartOptions, root: &Path) -> (PathBuf, [PathBuf; 2]) {
    let governed = opts.cgroup.clone().unwrap_or_else(|| root.to_path_buf());
    let exec = exec_cgroups_under(&governed);
    (governed, exec)
}

/// The cgroups of `ttp exec --tor` and `ttp exec --direct` under the governed cgroup.
pub fn exec_cgroups_under(governed: &Path) -> [PathBuf; 2] {
    [governed.join("ttp.tor"), governed.join("ttp.direct")]
}

/// What the monitor removes when this daemon stops.
pub fn cleanup_for(opts: &StartOptions) -> Result<Cleanup> {
    let (_, exec) = exec_cgroups(opts, &cgroup::cgroup2_root()?);
    Ok(Cleanup {
        pin_dir: opts.pin_dir.clone(),
        runtime_dir: opts.runtime_dir.clone(),
        cgroups: exec.to_vec(),
        ports: vec![opts.trans_port, opts.dns_port, opts.socks_port],
        gateway: opts.tunnel.is_some() || !opts.gateways.is_empty(),
        uplinks: Some(if opts.uplinks.is_empty() {
            // The tunnel's interface is a gateway interface too (its name is in its file).
            let mut skip = opts.gateways.clone();
            if let Some(t) = opts.tunnel.as_deref().and_then(|p| TunnelConfig::load(p).ok()) {
                skip.push(t.interface);
            }
            crate::uplinks::Follow::DefaultRoutes { skip }
        } else {
            crate::uplinks::Follow::Named(opts.uplinks.clone())
        }),
        gateways: opts.gateways.clone(),
    })
}

/// Runs the daemon until SIGTERM, SIGINT or a stop request; `events` hears each milestone.
/// `monitor` finishes the teardown once the daemon has stopped.
pub async fn run(opts: &StartOptions, mut monitor: Monitor, mut events: impl FnMut(Event)) -> Result<()> {
    if let Ok(status) = control::client::Client::new(&opts.runtime_dir).status() {
        anyhow::bail!("ttp is already running (pid {}); `ttp stop` first, or use another --runtime-dir", status.pid);
    }
    let t0 = Instant::now();
    // Destinations and names stay out of the log unless asked for (for the whole run).
    let _sensitive = opts.log_sensitive.then(safelog::disable_safe_logging).transpose()?;
    // Bad input fails here, before anything on the host changes (the configuration is read
    // once to check it, and again below for the service user's uid).
    let bridges = opts.bridges()?;
    let arti_files = tor::ArtiFiles::read(&opts.arti_config)?;
    tor::config_from(&opts.state_dir, &arti_files, bridges.as_ref(), None)?;
    let root = cgroup::cgroup2_root()?;
    let (governed, [exec_tor, exec_direct]) = exec_cgroups(opts, &root);
    // The daemon's own cgroup is exempt from the kill-switch (with its uid). Under systemd,
    // its unit's: only the unit's processes are in it, and systemd keeps tracking them.
    let daemon_cgroup =
        opts.daemon_cgroup.clone().or_else(cgroup::systemd_service).unwrap_or_else(|| root.join("ttp.daemon"));
    // Both must be cgroup2 directories: nothing is created outside the hierarchy.
    for (what, p) in [("--cgroup", &governed), ("--daemon-cgroup", &daemon_cgroup)] {
        if !p.starts_with(&root) {
            anyhow::bail!("{what} {} is not under the cgroup2 mount {}", p.display(), root.display());
        }
    }
    cgroup::cgroup_id(&governed).context("the cgroup to govern (--cgroup)")?;
    let tunnel_config = opts.tunnel.as_deref().map(TunnelConfig::load).transpose()?;
    if let Some(p) = tunnel_config.iter().flat_map(|c| &c.peers).flat_map(|p| &p.allowed).find(|n| n.prefix_len() == 0)
    {
        anyhow::bail!("--tunnel: a gateway's peer cannot claim every address ({p}): list its tunnel addresses");
    }
    for spec in &opts.gateways {
        if !crate::ifname::valid_gateway_spec(spec) {
            anyhow::bail!(
                "--gateway {}: not an interface name (1 to 15 bytes, no '/', ':' or spaces), nor a \
                 prefix of one and `*` (`br-*`)",
                spec.escape_debug()
            );
        }
        if let Some(up) = opts.uplinks.iter().find(|u| crate::ifname::matches(spec, u)) {
            anyhow::bail!("--gateway {spec} names the uplink {up}: a gateway interface faces the machines behind it");
        }
        // A container engine's bridge exists once the engine runs (docker0) or its first
        // container does (Podman's): the monitor attaches to it when it appears.
        if crate::ifname::present(std::slice::from_ref(spec)).is_empty() {
            tracing::info!("gateway interface {spec}: none there yet; ttp takes it over when it appears");
        }
    }
    // Descriptors: as many as we may have, and the slots sized against them (load.rs).
    let budget = Budget::new(crate::load::raise_nofile()?, opts.max_streams);
    if budget.streams < opts.max_streams {
        tracing::info!(
            "{} stream slots, not --max-streams {}: the open-files limit is {}",
            budget.streams,
            opts.max_streams,
            budget.nofile
        );
    }
    // The first change to the host, if the default user is missing: creating it.
    let service_user = user::resolve(&opts.user)?;
    for dir in [&opts.state_dir, &opts.runtime_dir] {
        user::check_reachable(dir, &service_user)?;
    }
    let tor_base = tor::ConfigBase { state_dir: opts.state_dir.clone(), files: arti_files, owner: service_user.uid };
    let config = tor_base.with_bridges(bridges.as_ref())?;
    crate::rootfs::ensure_dir(&opts.runtime_dir)?;
    cgroup::create(&daemon_cgroup)?;
    cgroup::move_into(&daemon_cgroup, std::process::id())?;
    let uplinks = if opts.uplinks.is_empty() { crate::uplinks::default_uplinks()? } else { opts.uplinks.clone() };
    for spec in &opts.gateways {
        if let Some(up) = uplinks.iter().find(|u| crate::ifname::matches(spec, u)) {
            anyhow::bail!("--gateway {spec}: {up} carries a default route (an uplink): name the LAN side instead");
        }
    }
    // The tunnel's TUN exists before the datapath, which attaches the gateway program to it;
    // its socket is the service user's, like every socket of the daemon.
    let mut gateway = Gateway { interfaces: opts.gateways.clone(), tunnel: None };
    if let Some(cfg) = tunnel_config {
        let udp = crate::privs::owned_by(&service_user, || tunnel::device::bind(cfg.listen_port))?;
        gateway.interfaces.push(cfg.interface.clone());
        let (device, runner) = tunnel::device::start(cfg, udp).await?;
        gateway.tunnel = Some((device, runner));
    }
    // `ttp exec --tor` and `ttp exec --direct` run commands in children of these two.
    cgroup::create(&exec_tor)?;
    cgroup::create(&exec_direct)?;

    let dp_opts = DatapathOptions {
        cgroup: governed.clone(),
        uplinks,
        gateways: gateway.interfaces.clone(),
        pin_dir: opts.pin_dir.clone(),
        trans_port: opts.trans_port,
        dns_port: opts.dns_port,
        daemon_cgroup,
        // Only the service user's sockets in the daemon's cgroup: all of Arti's are opened
        // after the switch, and the proxy listeners and the tunnel's socket, bound before
        // it, are created as the service user's (privs::owned_by).
        daemon_uid: Some(service_user.uid),
        virtual_v4: Some(opts.virtual_net),
        policy: opts.policy(exec_direct.clone()),
        start_locked: true,
    };
    let (datapath, logger) = Datapath::start(&dp_opts).inspect_err(|_| {
        let _ = std::fs::remove_dir(&exec_tor);
        let _ = std::fs::remove_dir(&exec_direct);
    })?;
    // Armed: from here on only root's stop opens the host again (through the monitor's
    // teardown). A monitor already gone leaves it to us, while we are still root.
    if let Err(e) = monitor.armed() {
        let _ = datapath.stop();
        return Err(e);
    }
    // The pins hold the datapath from here on. The loader's descriptors (programs, the
    // policy maps, writable) go before the privilege drop: what the daemon keeps is
    // ServiceMaps, opened in `serve`.
    let maps_dir = datapath.layout().maps();
    drop(datapath);
    tracing::info!("kill-switch active after {:.0?} (lockdown until Tor is ready)", t0.elapsed());
    events(Event::KillSwitch(t0.elapsed()));
    // Connections opened before start would only hang now: closed, so that their
    // applications reconnect, through Tor.
    match crate::datapath::destroy_stranded(&dp_opts.cgroup, &dp_opts.policy) {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} connections opened before start closed (they reconnect through Tor)"),
        Err(e) => tracing::warn!("closing connections opened before start: {e:#} (they hang until they time out)"),
    }
    // The config file's text as applied, for `ttp reload` to compare a changed file with.
    let config_path = crate::config::or_default(opts.config.clone());
    // Root's files, written while we are root: the session lock (`ttp stop` finds us by it
    // from now on) and the control socket.
    let lock = SessionLock {
        pid: std::process::id(),
        started_unix: control::unix_now(),
        args: own_args(),
        ports: Ports { trans: opts.trans_port, dns: opts.dns_port, socks: opts.socks_port },
        cgroup: governed.clone(),
        pin_dir: opts.pin_dir.clone(),
        config_text: config_path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()),
        config_path,
    };
    if let Some(logger) = logger {
        tokio::spawn(crate::datapath::forward_logs(logger));
    }
    // What status says of the bridges, from the lines read above as root (a bridges file
    // may be root's alone: the daemon cannot read it again once it is the service user).
    let bridges = bridges.as_ref().map(tor::Bridges::in_use);
    let setup = Setup { config, tor_base, bridges, service_user: &service_user, gateway, maps_dir, t0, budget };
    let stop = StopSignals::new()?;
    let outcome = match lock.write(&opts.runtime_dir) {
        Ok(()) => serve(opts, setup, stop, &mut monitor, &mut events).await,
        Err(e) => Err(e),
    };
    // The one place where a daemon's end is decided.
    match outcome {
        // Root asked: the monitor tears down.
        Ok(stopped) => monitor.finish(stopped).inspect_err(|e| tracing::error!("{e:#}")),
        // Anything else fails closed: lockdown stays on (serve set it, or never lifted
        // it), the links stay attached, and the monitor records why. Only `ttp stop` (or a
        // new start, which takes the pins over) opens the host.
        Err(fault) => {
            let why = format!("{fault:#}");
            tracing::error!("{why}");
            tracing::error!("the kill-switch stays closed: nothing governed leaves; `ttp start` recovers, `ttp stop` opens the host");
            monitor.fault(&why);
            Err(fault.context("the daemon failed; the host stays closed (`ttp status` says why)"))
        }
    }
}

/// Root's ways of asking the daemon to stop: SIGTERM, SIGINT, or `stop` on the control
/// socket (root only, see [`control::proto::Request::allowed_for`]). Listened for from before
/// Tor's bootstrap, so a stop during it is a clean stop too.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    control: Arc<tokio::sync::Notify>,
}

impl StopSignals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            control: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Waits for root's stop request; the only maker of [`StopRequested`].
    async fn requested(&mut self) -> StopRequested {
        tokio::select! {
            _ = self.term.recv() => StopRequested { by: "SIGTERM" },
            _ = self.int.recv() => StopRequested { by: "SIGINT" },
            _ = self.control.notified() => StopRequested { by: "stop on the control socket" },
        }
    }
}

/// The directories the service user writes, made its own (the state may be root's from an
/// older version, or a run with `--user root`).
/// The runtime directory stays root's (see [`crate::rootfs`]): the daemon keeps the
/// descriptors of what it writes there (the log, the control socket).
fn hand_over_dirs(opts: &StartOptions, user: &ServiceUser) -> Result<()> {
    private_dir(&opts.state_dir)?;
    user::chown_tree(&opts.state_dir, user, &opts.runtime_dir)?;
    Ok(())
}

/// The proxy ports' sockets, bound while still root (a port below 1024 needs it) and
/// owned by the service user (see [`crate::privs::owned_by`]). In gateway mode the
/// TransPort and DNSPort sockets on 127.0.0.1 are transparent (`IP_TRANSPARENT`): other
/// machines' connections are handed to them by the gateway program with their original
/// destination, and the replies must leave from that address.
struct Listeners {
    trans: Vec<TcpListener>,
    dns_udp: Vec<UdpSocket>,
    dns_tcp: Vec<TcpListener>,
    socks: Vec<TcpListener>,
}

fn bind_ports(opts: &StartOptions, transparent: bool) -> Result<Listeners> {
    let mut l = Listeners { trans: vec![], dns_udp: vec![], dns_tcp: vec![], socks: vec![] };
    for ip in loopbacks() {
        let t = transparent;
        let (trans, dns) = (SocketAddr::new(ip, opts.trans_port), SocketAddr::new(ip, opts.dns_port));
        l.trans.push(tcp_listener(trans, t).with_context(|| bind_err("TransPort", trans))?);
        l.dns_udp.push(udp_socket(dns, t).with_context(|| bind_err("DNSPort", dns))?);
        l.dns_tcp.push(tcp_listener(dns, t).with_context(|| bind_err("DNSPort", dns))?);
    }
    for ip in loopbacks().into_iter().chain(opts.socks_listen.iter().copied()) {
        let socks = SocketAddr::new(ip, opts.socks_port);
        l.socks.push(tcp_listener(socks, false).with_context(|| bind_err("SOCKS port", socks))?);
        if !ip.is_loopback() {
            tracing::warn!("SOCKS port also on {ip}: anyone who can reach it can use this Tor client");
        }
    }
    Ok(l)
}

/// A gateway client's packets reach our loopback listeners with the destination it
/// chose (the TC program assigns them): the sockets may use such an address as their
/// own (`IP_TRANSPARENT`, `IPV6_TRANSPARENT`). They also carry `GATEWAY_LOCAL_MARK`
/// (inherited by the connections a listener accepts), by which the uplinks' kill-switch
/// knows their packets never belong there (`ttp_common::GATEWAY_LOCAL_MARK`).
fn set_transparent(s: &socket2::Socket, addr: SocketAddr) -> std::io::Result<()> {
    s.set_mark(ttp_common::GATEWAY_LOCAL_MARK)?;
    if addr.is_ipv4() {
        s.set_ip_transparent_v4(true)
    } else {
        // Neither socket2 nor nix has the IPv6 option.
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with an int option on a socket we own.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_IPV6,
                libc::IPV6_TRANSPARENT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

fn tcp_listener(addr: SocketAddr, transparent: bool) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if transparent {
        set_transparent(&s, addr)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

fn udp_socket(addr: SocketAddr, transparent: bool) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    if transparent {
        set_transparent(&s, addr)?;
    }
    // The DNSPort answers from the address each query was sent to (see dns::server).
    if addr.is_ipv4() {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)?;
    } else {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// What the root part of the start hands to the rest.
struct Setup<'a> {
    config: tor::TorClientConfig,
    /// For `ttp reload`'s bridges.
    tor_base: tor::ConfigBase,
    /// The bridges in use, as status and a stalled bootstrap name them.
    bridges: Option<tor::InUse>,
    service_user: &'a ServiceUser,
    gateway: Gateway,
    maps_dir: PathBuf,
    t0: Instant,
    budget: Budget,
}

/// Serves until root asks to stop ([`StopRequested`]); anything else that ends it is an
/// error, and leaves the datapath in lockdown.
async fn serve(
    opts: &StartOptions,
    setup: Setup<'_>,
    mut stop: StopSignals,
    monitor: &mut Monitor,
    events: &mut impl FnMut(Event),
) -> Result<StopRequested> {
    let Setup { config, tor_base, bridges, service_user, gateway, maps_dir, t0, budget } = setup;
    hand_over_dirs(opts, service_user)?;
    let control_listener = control::bind(&opts.runtime_dir)?;
    // Read-only but for the stream origins (see ServiceMaps): opened while root, kept after.
    let maps = Arc::new(Mutex::new(ServiceMaps::open_pinned(&maps_dir)?));
    let transparent = !gateway.interfaces.is_empty();
    if transparent {
        crate::gateway::install(&crate::gateway::rule_names(&gateway.interfaces)).await?;
        tracing::info!("gateway on {}: their TCP and DNS go through Tor", gateway.interfaces.join(", "));
    }
    let listeners = crate::privs::owned_by(service_user, || bind_ports(opts, transparent))?;
    // Set up: from here on the daemon needs only map access, through open descriptors.
    let kept = crate::privs::drop_privileges(service_user).context("giving up privileges after setup")?;
    tracing::info!("now uid {} with {}; bootstrapping Tor", service_user.uid, crate::privs::names(kept));

    let check_urls: Vec<String> = if opts.check_urls.is_empty() {
        crate::check::DEFAULT_CHECK_URLS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.check_urls.clone()
    };
    let load = Arc::new(LoadStats::default());
    // The control socket answers from now on: status shows the bootstrap, root's stop
    // stops it; the rest waits for Tor (see control::Control).
    let control = Arc::new(Control {
        services: std::sync::OnceLock::new(),
        bootstrap: Mutex::new("not started yet".into()),
        maps: maps.clone(),
        ports: Ports { trans: opts.trans_port, dns: opts.dns_port, socks: opts.socks_port },
        started: t0,
        started_unix: control::unix_now(),
        stop: stop.control.clone(),
        runtime_dir: opts.runtime_dir.clone(),
        check_urls: check_urls.clone(),
        load: load.clone(),
        budget,
        tor_base,
        bridges: Mutex::new(bridges.clone()),
        gateway_interfaces: gateway.interfaces.clone(),
    });
    // Every service runs until root's stop; none may end before it. One that does (an
    // error, a panic, or just returning) is a fault, while Tor bootstraps too.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::serve(control_listener, control.clone()));

    let bootstrap = tor::bootstrap(config, Duration::from_secs(opts.bootstrap_timeout), bridges.as_ref(), |p| {
        tracing::info!("bootstrap {:>3.0}%: {}", p.fraction * 100.0, p.status);
        *control.bootstrap.lock().expect("bootstrap lock") = p.status.to_string();
        events(Event::Bootstrap((p.fraction * 100.0).round().clamp(0.0, 100.0) as u8, p.status.to_string()));
    });
    let tor = tokio::select! {
        tor = bootstrap => tor?,
        stopped = stop.requested() => return Ok(stopped),
        Some(ended) = tasks.join_next() => return Err(service_ended(ended)),
    };
    tracing::info!("Tor bootstrapped after {:.1?}", t0.elapsed());
    release_freed_memory();
    // Observation only: its end is no fault.
    tokio::spawn(tor::log_blockages(tor.clone()));

    let isolation = Arc::new(Isolation::default());
    let automap = Arc::new(Mutex::new(Automap::new(opts.virtual_net, AUTOMAP_CAPACITY, AUTOMAP_TTL)));
    let dns = Arc::new(DnsService::new(
        Arc::new(TorResolver { tor: tor.clone(), isolation: isolation.clone() }),
        automap.clone(),
        Cache::new(DNS_CACHE_TTL, 10_000),
        load.clone(),
    ));
    let services = Arc::new(Services {
        tor: tor.clone(),
        isolation,
        streams: Arc::new(Streams::default()),
        automap,
        dns: dns.clone(),
        exit: Mutex::new(None),
        tunnel: gateway.tunnel.as_ref().map(|(d, _)| d.clone()),
    });
    // One stream limit for both proxy ports.
    let ports = Arc::new(PortContext {
        tor: tor.clone(),
        automap: services.automap.clone(),
        isolation: services.isolation.clone(),
        streams: services.streams.clone(),
        limit: Arc::new(tokio::sync::Semaphore::new(budget.streams)),
        shares: crate::load::Shares::new(budget.per_key),
        load: load.clone(),
    });
    let transport = Arc::new(TransPort { ctx: ports.clone(), origins: maps.clone() });
    if let Some((device, runner)) = gateway.tunnel {
        tracing::info!("tunnel gateway on {}, UDP {}", device.interface, device.local);
        // Spawned after the privilege drop: the thread starts as the service user.
        tasks.spawn(runner.spawn());
    }
    for l in listeners.trans {
        tasks.spawn(transport.clone().serve(l));
    }
    for l in listeners.dns_udp {
        tasks.spawn(dns::server::serve_udp(l, dns.clone(), load.clone()));
    }
    for l in listeners.dns_tcp {
        tasks.spawn(dns::server::serve_tcp(l, dns.clone(), budget.dns_tcp, load.clone()));
    }

    // Set once: the control socket answers everything from here on.
    let _ = control.services.set(services.clone());

    let socks = Arc::new(SocksPort {
        ctx: ports.clone(),
        handshakes: Arc::new(tokio::sync::Semaphore::new(budget.handshakes)),
        handshake_shares: crate::load::Shares::new(crate::load::share_of(budget.handshakes)),
    });
    for l in listeners.socks {
        tasks.spawn(socks.clone().serve(l));
    }

    // Verify the exit through Tor, in the background: a check endpoint out of reach must
    // not keep the host from being protected and usable.
    tokio::spawn(verify_exit(
        services.clone(),
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), opts.socks_port),
        check_urls,
    ));

    monitor.set_lockdown(false)?;
    tracing::info!("ready after {:.1?}: governed traffic goes through Tor", t0.elapsed());
    events(Event::Ready(t0.elapsed()));

    let outcome = tokio::select! {
        stopped = stop.requested() => Ok(stopped),
        Some(ended) = tasks.join_next() => Err(service_ended(ended)),
    };
    // Lockdown first, whatever ended it (root's part: the monitor sets it). Should even
    // that fail, the links stay attached and the monitor tries again.
    let locked = monitor.set_lockdown(true);
    match &locked {
        Ok(()) => tracing::info!("lockdown on"),
        Err(e) => tracing::error!("setting lockdown: {e:#}"),
    }
    // Our ends of the applications' connections close here; the monitor destroys theirs.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let stopped = outcome?;
    locked?;
    Ok(stopped)
}

/// The fault of a service that ended before root's stop: every way it can end is one.
fn service_ended(ended: Result<Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("a service ended on its own"),
        Ok(Err(e)) => e.context("a service failed"),
        Err(e) => anyhow::anyhow!("a service panicked: {e}"),
    }
}

/// Waits between background exit checks that found no answer: soon at first (a fresh
/// daemon's circuits may still be building), then less and less often.
const VERIFY_RETRY: [Duration; 4] =
    [Duration::from_secs(15), Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(1800)];

/// Verifies the exit through Tor until it is known, so that `ttp status` shows it without
/// anyone running `ttp check`. A try that fails is retried later (the last wait repeats);
/// the first answer, or one from `ttp check`, ends it.
///
/// It never replaces a result that is already there: that one came from a `ttp check`
/// that started after this loop's try, so it is the newer word on the exit.
async fn verify_exit(services: Arc<Services>, socks: SocketAddr, urls: Vec<String>) {
    let known = || services.exit.lock().expect("exit lock").is_some();
    for wait in std::iter::once(Duration::ZERO).chain(VERIFY_RETRY).chain(std::iter::repeat(VERIFY_RETRY[3])) {
        tokio::time::sleep(wait).await;
        if known() {
            return;
        }
        match crate::check::check_any(socks, &urls).await {
            Ok(c) => {
                tracing::info!(
                    "exit verified: {} (is Tor: {:?}, {} ms, {})",
                    c.exit_address,
                    c.is_tor,
                    c.latency_ms,
                    c.url
                );
                services.exit.lock().expect("exit lock").get_or_insert(c);
                return;
            }
            Err(e) => tracing::warn!("exit not verified: {e:#} (trying again in a while; `ttp check` asks now)"),
        }
    }
}

/// Hands the heap's free pages back to the kernel. Setting up parses the kernel's BTF
/// (megabytes, for the eBPF loader) and Arti's first directory documents; glibc keeps what
/// they freed mapped, and the daemon's resident memory would carry it for its whole life.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This process's options: its arguments after the subcommand (`run`).
fn own_args() -> Vec<String> {
    std::env::args().skip(1).skip_while(|a| a != "run").skip(1).collect()
}

fn bind_err(what: &str, addr: SocketAddr) -> String {
    let flag = match what {
        "TransPort" => "trans",
        "DNSPort" => "dns",
        _ => "socks",
    };
    format!(
        "{what} cannot listen on {addr}: is another ttp or proxy using the port? (choose another with --{flag}-port)"
    )
}

/// 127.0.0.1, and ::1 when the host has IPv6 on loopback.
fn loopbacks() -> Vec<IpAddr> {
    let mut v = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
        v.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    v
}

/// Makes sure a directory exists with mode 0700 (Arti checks its state directory's
/// permissions).
pub fn private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Tells systemd (Type=notify) that the daemon is ready, if it runs under systemd.
/// Written by hand: one datagram on $NOTIFY_SOCKET, not worth a dependency.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let _ = sock.send_to(b"READY=1", &path);
}
