//! `ttp check-leak`: active probes from a governed context.
//!
//! Each probe does what a leaky application would do, towards documentation addresses
//! (198.51.100.1, 2001:db8::1) that nobody on the internet answers, so any answer can only
//! come from ttp. The evidence is the application's view (an answer, an errno) and the
//! kernel's own counters before and after the probe (when the control socket is reachable:
//! root or the `ttp` group).
//!
//! Run as root outside the governed cgroup, the probes run in a child process placed in
//! `<governed>/ttp.tor`; run as a user, they run where the user is, and say so if that is
//! not governed.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;
use ttp::{control::client::Client, lock::SessionLock};

const V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const WAIT: Duration = Duration::from_secs(3);

/// A probe's finding: pass (`Some(true)`), fail, or cannot tell (`None`); and why.
type Outcome = (Option<bool>, String);
type Probe = fn() -> Outcome;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub name: &'static str,
    pub verdict: Verdict,
    /// One line: why this verdict.
    pub evidence: String,
    /// Raw detail for `-v`: errno, timing, counter changes.
    pub detail: String,
}

pub fn run(runtime_dir: &Path, verbose: bool, json: bool) -> Result<()> {
    let Some(lock) = SessionLock::read(runtime_dir)? else {
        bail!("ttp is not running (no session lock in {}): nothing to check", runtime_dir.display());
    };
    let own = ttp::cgroup::cgroup_of(std::process::id())?;
    let governed = own.starts_with(&lock.cgroup) && !own.starts_with(lock.cgroup.join("ttp.direct"));
    if !governed && std::env::var_os("TTP_CHECK_LEAK_CHILD").is_none() {
        if nix::unistd::geteuid().is_root() {
            return in_governed_child(&lock, runtime_dir, verbose, json);
        }
        bail!(
            "this process (cgroup {}) is not governed by ttp (which governs {}): the probes would prove nothing; \
             run `sudo ttp check-leak`, or `sudo ttp exec --tor -- ttp check-leak`",
            own.display(),
            lock.cgroup.display()
        );
    }
    let status = || Client::new(runtime_dir).with_timeout(Duration::from_secs(5)).status().ok();
    let counters = || status().map(|s| s.counters);
    // Every class the kill-switch claims to stop (SECURITY.md), each as an application
    // would try it.
    let probes: [(&'static str, Probe); 13] = [
        ("dns", dns),
        ("tcp", tcp),
        ("udp", udp),
        ("quic", quic),
        ("ipv6", ipv6),
        ("v4-mapped", v4_mapped),
        ("dot", dot),
        ("doh", doh),
        ("tfo", tfo),
        ("discovery", discovery),
        ("icmp", icmp),
        ("raw", raw),
        ("frames", frames),
    ];
    let mut results = Vec::new();
    for (name, probe) in probes {
        let before = counters();
        let t0 = Instant::now();
        let (ok, what) = probe();
        let took = t0.elapsed();
        // The kernel counts per CPU and the daemon reads on request: give it a moment.
        std::thread::sleep(Duration::from_millis(50));
        let delta = before.zip(counters()).map(|(b, a)| changed(&b, &a)).unwrap_or_default();
        let evidence = if delta.is_empty() { what.clone() } else { format!("{what} ({delta})") };
        let mut verdict = match ok {
            Some(true) => Verdict::Pass,
            Some(false) => Verdict::Fail,
            None => Verdict::Skip,
        };
        // A packet the socket accepted may still have been dropped on its way out: the
        // kill-switch's own counter says so.
        if verdict == Verdict::Fail && name == "icmp" && delta.contains("skb_dropped_icmp") {
            verdict = Verdict::Pass;
        }
        let detail = format!(
            "took {took:.0?}; counters {}",
            if delta.is_empty() { "unavailable or unchanged".into() } else { delta }
        );
        results.push(Finding { name, verdict, evidence, detail });
    }
    // What an endpoint on the internet sees of this host: asked as an application asks
    // (a plain request), over IPv4 and, where an endpoint has an IPv6 address, over IPv6.
    match status() {
        Some(s) => {
            for (name, v6) in [("exit-v4", false), ("exit-v6", true)] {
                let t0 = Instant::now();
                let (ok, evidence) = exit_seen(&s.check_urls, v6, s.exit_address.as_deref());
                let verdict = match ok {
                    Some(true) => Verdict::Pass,
                    Some(false) => Verdict::Fail,
                    None => Verdict::Skip,
                };
                let detail = format!("took {:.0?}; the daemon's verified exit: {:?}", t0.elapsed(), s.exit_address);
                results.push(Finding { name, verdict, evidence, detail });
            }
        }
        None => {
            let evidence = "the daemon's check endpoints are unknown (no answer on the control socket)".to_string();
            results.push(Finding { name: "exit", verdict: Verdict::Skip, evidence, detail: String::new() });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for p in &results {
            let v = match p.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            println!("{v}  {:<9} {}", p.name, p.evidence);
            if verbose {
                println!("            {}", p.detail);
            }
        }
    }
    if results.iter().any(|p| p.verdict == Verdict::Fail) {
        bail!("a probe found a leak: `ttp diagnose` shows the datapath; `ttp stop` and `ttp start` rebuild it");
    }
    Ok(())
}

/// Runs the probes again in a child placed in `<governed>/ttp.tor/check-leak-PID`.
fn in_governed_child(lock: &SessionLock, runtime_dir: &Path, verbose: bool, json: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let cg = lock.cgroup.join("ttp.tor").join(format!("check-leak-{}", std::process::id()));
    ttp::cgroup::create(&cg)?;
    let procs = cg.join("cgroup.procs");
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("check-leak").arg("--runtime-dir").arg(runtime_dir).env("TTP_CHECK_LEAK_CHILD", "1");
    if verbose {
        cmd.arg("-v");
    }
    if json {
        cmd.arg("--json");
    }
    // SAFETY: only a write to the cgroup file between fork and exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    let status = cmd.status();
    let _ = std::fs::remove_dir(&cg);
    if !status?.success() {
        std::process::exit(1);
    }
    Ok(())
}

/// Asks the first of `urls` whose host is of the family (`v6` or not; a name counts as
/// either, the resolver chooses) which address it sees, with a plain request as any
/// application would make: governed, it goes through Tor, and the endpoint must see Tor
/// (its verdict, or the daemon's verified exit), never one of this host's addresses.
fn exit_seen(urls: &[String], v6: bool, exit: Option<&str>) -> Outcome {
    let family = |u: &reqwest::Url| match u.host_str() {
        Some(h) if h.starts_with('[') => v6,
        Some(h) if h.parse::<Ipv4Addr>().is_ok() => !v6,
        Some(_) => true,
        None => false,
    };
    let Some(url) = urls.iter().filter_map(|u| ttp::check::parse_url(u).ok()).find(family) else {
        let which = if v6 { "IPv6" } else { "IPv4" };
        return (None, format!("no check endpoint reachable over {which} is configured (--check-url)"));
    };
    let shown = url.to_string();
    let answer =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(
            |rt| {
                rt.block_on(async {
                    // No proxy from the environment: the request must be the application's own.
                    let client = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(30))
                        .redirect(reqwest::redirect::Policy::none())
                        .build()?;
                    ttp::check::ask(&client, url).await
                })
            },
        );
    let own = nix::ifaddrs::getifaddrs()
        .map(|a| a.filter_map(|i| i.address).filter_map(|s| ip_of(&s)).collect::<Vec<_>>())
        .unwrap_or_default();
    match answer {
        Err(e) => (None, format!("no answer: {e:#}")),
        Ok((Some(false), ip)) => (Some(false), format!("{shown} sees {ip}, and says it is NOT Tor")),
        Ok((_, ip)) if own.contains(&ip) => (Some(false), format!("{shown} sees {ip}: this host's own address")),
        Ok((Some(true), ip)) => (Some(true), format!("{shown} sees {ip}, a Tor exit")),
        Ok((None, ip)) if exit == Some(ip.to_string().as_str()) => {
            (Some(true), format!("{shown} sees {ip}, the verified Tor exit"))
        }
        Ok((None, ip)) => {
            (None, format!("{shown} sees {ip}: not this host's address, but not the verified exit either"))
        }
    }
}

/// The IP address of an interface address, if it is IPv4 or IPv6.
fn ip_of(s: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// Counters that changed, as `name +n, ...`.
fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a.saturating_sub(*before.get(k).unwrap_or(&0));
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A DNS query to a resolver that does not exist: only ttp's DNSPort can answer it.
fn dns() -> Outcome {
    let run = || -> std::io::Result<usize> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(WAIT))?;
        // use-application-dns.net A: the DoH canary, which the DNSPort answers itself.
        let mut q = vec![0x6c, 0x6b, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["use-application-dns", "net"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        s.send_to(&q, (V4, 53))?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf)?;
        if from != SocketAddr::from((V4, 53)) || buf[..2] != [0x6c, 0x6b] {
            return Err(std::io::Error::other(format!("an unexpected reply from {from}")));
        }
        Ok(n)
    };
    match run() {
        Ok(n) => (Some(true), format!("query to {V4}:53 answered ({n} bytes) by ttp's DNSPort, not the network")),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            (Some(false), format!("query to {V4}:53 not answered within {WAIT:?}: DNS is not redirected"))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            (Some(true), format!("query to {V4}:53 refused at the socket ({e}): nothing left"))
        }
        Err(e) => (Some(false), format!("query to {V4}:53: {e}")),
    }
}

/// A TCP connect to an address nobody answers: it only completes if ttp took it.
fn tcp() -> Outcome {
    connect_probe(SocketAddr::from((V4, 80)))
}

fn ipv6() -> Outcome {
    connect_probe(SocketAddr::from((V6, 80)))
}

/// An IPv4 destination written as IPv6 (`::ffff:a.b.c.d`) on an IPv6 socket: the same
/// connection by another door.
fn v4_mapped() -> Outcome {
    connect_probe(SocketAddr::from((V4.to_ipv6_mapped(), 80)))
}

/// DNS over TLS (port 853): names that would leave encrypted around the DNSPort.
fn dot() -> Outcome {
    connect_probe(SocketAddr::from((V4, 853)))
}

/// DNS over HTTPS to the resolvers browsers use: every one on ttp's list.
fn doh() -> Outcome {
    let outcomes: Vec<(IpAddr, Outcome)> = ttp::datapath::DEFAULT_DOH_RESOLVERS
        .iter()
        .filter_map(|r| r.parse::<IpAddr>().ok())
        .map(|ip| (ip, connect_probe(SocketAddr::new(ip, 443))))
        .collect();
    match outcomes.iter().find(|(_, (ok, _))| *ok != Some(true)) {
        Some((_, bad)) => bad.clone(),
        None => (Some(true), format!("connects to {} DoH resolvers' port 443 were refused or taken", outcomes.len())),
    }
}

/// TCP Fast Open: the first data rides in the SYN, sent by `sendto` without a connect.
fn tfo() -> Outcome {
    use socket2::{Domain, SockAddr, Socket, Type};
    let to = SocketAddr::from((V4, 80));
    let run = || -> std::io::Result<bool> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_write_timeout(Some(WAIT))?;
        s.send_to_with_flags(b"GET / HTTP/1.0\r\n\r\n", &SockAddr::from(to), libc::MSG_FASTOPEN)?;
        Ok(s.local_addr()?.as_socket().is_some_and(|a| a.ip().is_loopback()))
    };
    match run() {
        Ok(true) => (Some(true), format!("a Fast Open SYN with data to {to} was taken by ttp's TransPort")),
        Ok(false) => (Some(false), format!("a Fast Open SYN with data to {to} went to the network")),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            (Some(true), format!("a Fast Open send to {to} was refused at the socket ({e})"))
        }
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            (None, format!("TCP Fast Open is off here ({e}): nothing to probe"))
        }
        Err(e) => (Some(false), format!("a Fast Open send to {to}: {e}")),
    }
}

fn connect_probe(to: SocketAddr) -> Outcome {
    match TcpStream::connect_timeout(&to, WAIT) {
        Ok(s) => {
            // Our getpeername hook shows the original destination; the local end says where
            // the connection really went (a v4-mapped one as ::ffff:127.0.0.1).
            let loopback = |ip: IpAddr| ip.to_canonical().is_loopback();
            let local = s.local_addr().map(|a| loopback(a.ip())).unwrap_or(false);
            if local {
                (Some(true), format!("connect to {to} was taken by ttp's TransPort (local end on loopback)"))
            } else {
                (Some(false), format!("connect to {to} reached something on the network"))
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            (Some(true), format!("connect to {to} refused at the socket ({e}): nothing left"))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENETUNREACH) | Some(libc::EADDRNOTAVAIL)) => {
            (Some(true), format!("connect to {to}: {e} (no route: nothing can leave)"))
        }
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => (
            Some(false),
            format!("connect to {to} timed out: it was not redirected (the kill-switch may still drop it)"),
        ),
        Err(e) => (Some(false), format!("connect to {to}: {e}")),
    }
}

/// Non-DNS UDP: must be refused at the socket.
fn udp() -> Outcome {
    datagram_probe(SocketAddr::from((V4, 9)), b"ttp leak probe")
}

/// QUIC (HTTP/3), which browsers try first: a long-header Initial to port 443.
fn quic() -> Outcome {
    let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
    initial.extend_from_slice(b"ttpprobe");
    initial.resize(1200, 0);
    datagram_probe(SocketAddr::from((V4, 443)), &initial)
}

/// What asks or tells the whole LAN: LLMNR and NetBIOS name queries (a failed DNS lookup
/// falls back to them, naming what the program looks up to every host) and SSDP's
/// announcements. (mDNS is the policy's choice: `--no-lan-discovery` refuses it.)
fn discovery() -> Outcome {
    let targets = [
        SocketAddr::from((Ipv4Addr::new(224, 0, 0, 252), 5355)),
        SocketAddr::from((Ipv4Addr::BROADCAST, 137)),
        SocketAddr::from((Ipv4Addr::new(239, 255, 255, 250), 1900)),
    ];
    for to in targets {
        let (ok, what) = datagram_probe(to, b"ttp leak probe");
        if ok != Some(true) {
            return (ok, what);
        }
    }
    (Some(true), "LLMNR, NetBIOS broadcast and SSDP datagrams were refused at the socket".into())
}

fn datagram_probe(to: SocketAddr, payload: &[u8]) -> Outcome {
    let r = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
        // Allowed to broadcast: a refusal can then only be ttp's.
        s.set_broadcast(true)?;
        s.send_to(payload, to)
    });
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            (Some(true), format!("datagram to {to} refused at the socket ({e})"))
        }
        Err(e) => (Some(false), format!("datagram to {to}: unexpected error {e}")),
        Ok(_) => (Some(false), format!("a datagram to {to} was accepted for sending")),
    }
}

/// An ICMP echo (ping socket, or raw as root): must be dropped before the uplink.
fn icmp() -> Outcome {
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let mut fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
        if fd < 0 {
            fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        }
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return (None, format!("cannot open an ICMP socket here ({e}); run as root to probe ICMP"));
        }
        // Echo request: type 8, code 0, checksum, id, seq.
        let mut pkt = [8u8, 0, 0, 0, 0x74, 0x74, 0, 1];
        let mut sum = pkt.chunks(2).fold(0u32, |a, c| a + u32::from(u16::from_be_bytes([c[0], c[1]])));
        sum = (sum & 0xffff) + (sum >> 16);
        sum += sum >> 16;
        pkt[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(V4).to_be() },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let sent = if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) };
        libc::close(fd);
        sent_or_dropped(sent, &format!("an echo to {V4}"))
    }
}

/// The verdict on a packet below TCP and UDP, which only the kill-switch can stop: sent
/// is a leak; refused (EPERM: the kill-switch) or not sent at all is not.
fn sent_or_dropped(sent: std::io::Result<usize>, what: &str) -> Outcome {
    match sent {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            (Some(true), format!("{what} was dropped by the kill-switch ({e})"))
        }
        Err(e) => (Some(true), format!("{what} was not sent ({e})")),
        Ok(_) => (Some(false), format!("{what} was sent")),
    }
}

/// A raw IP packet of an unassigned protocol (253, for experiments) from a raw socket
/// (root only): below TCP and UDP, so only the kill-switch can stop it.
fn raw() -> Outcome {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    if !nix::unistd::geteuid().is_root() {
        return (None, "raw sockets need root: run `sudo ttp check-leak` to probe them".into());
    }
    let to = SocketAddr::from((V4, 0));
    let sent = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(253)))
        .and_then(|s| s.send_to(b"ttp leak probe", &SockAddr::from(to)));
    sent_or_dropped(sent, &format!("a raw packet to {V4}"))
}

/// Frames of one's own making (root only): a packet socket, and the option that would
/// let its frames skip the TC kill-switch (`PACKET_QDISC_BYPASS`). Nothing is sent.
fn frames() -> Outcome {
    use socket2::{Domain, Protocol, Socket, Type};
    if !nix::unistd::geteuid().is_root() {
        return (None, "packet sockets need root: run `sudo ttp check-leak` to probe them".into());
    }
    let s = match Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from((libc::ETH_P_ALL as u16).to_be() as i32)))
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return (Some(true), format!("a packet socket was refused ({e})"));
        }
        Err(e) => return (None, format!("no packet socket here ({e})")),
        Ok(s) => s,
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to an int and its size, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let e = std::io::Error::last_os_error();
    if r < 0 && e.raw_os_error() == Some(libc::EPERM) {
        (
            Some(true),
            format!("a packet socket opened (no BPF LSM here), but skipping the kill-switch was refused ({e})"),
        )
    } else if r < 0 {
        (None, format!("PACKET_QDISC_BYPASS: {e}"))
    } else {
        (Some(false), "a packet socket may skip the TC kill-switch (PACKET_QDISC_BYPASS was accepted)".into())
    }
}

/// Active leak probes from a governed context: DNS, TCP, UDP, IPv6, ICMP; pass or fail
/// with the evidence (the kernel's own counters).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
    /// Raw detail for each probe.
    #[arg(short, long)]
    pub verbose: bool,
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Root runs the probes in a governed child; a user runs them where they are.
    pub const NEEDS_ROOT: bool = false;

    pub fn run(self) -> Result<()> {
        run(&self.paths.runtime_dir, self.verbose, self.json)
    }
}
