//! A private Tor network made of Debian's `tor`: 3 directory authorities, a middle relay
//! that also serves an onion service, 3 exits, and an unpublished bridge behind Debian's
//! obfs4proxy, in a network namespace of its own (the "internet"), with a DNS server for
//! the exits and a web server to reach.
//!
//! Relays listen on their own addresses in 192.0.2.0/24 (not private, so nothing in ttp
//! treats them as LAN). The namespace is held by a `sleep` process and every process of
//! the network is spawned with PR_SET_PDEATHSIG from a thread that lives as long as the
//! process, so a test run that ends in any way, panics included, takes its network with it.
//!
//! `Testnet::start` writes `arti.toml` (Arti's own configuration keys for this network)
//! into the network directory: ttp is pointed at it with `--arti-config`.

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::run;

pub const WEB_V4: &str = "203.0.113.10";
/// A check endpoint like the Tor Project's (`{"IsTor":true,"IP":"<the exit>"}`).
pub const CHECK_URL: &str = "http://203.0.113.10:8080/api/ip";
pub const DNS_V4: &str = "192.0.2.53";
/// What the network's resolver answers for AAAA queries (no host has it: DNS only).
pub const WEB_V6: &str = "2001:db8:113::10";
const OR_PORT: u16 = 9001;
/// Seconds between consensuses once the network runs (the first comes after 5 s). It
/// also sets the onion time period (below): a longer one makes it rarer that a test run
/// straddles a period rotation, when service and client briefly disagree. Each
/// consensus stays valid for 10 intervals (V3AuthNIntervalsValid), so a vote that comes
/// late on a loaded machine never leaves clients without a live directory.
const VOTING_INTERVAL: u32 = 30;
/// Onion-service time period, in minutes. On a TestingTorNetwork, C tor makes it one
/// shared-random protocol run (24 voting intervals) and ignores `hsdir-interval`; Arti
/// follows the consensus parameter `hsdir_interval` (at least 5 min; C tor spells it
/// `hsdir-interval`, so both are set). They must agree, or the service and the
/// client derive different blinded keys and look at different HSDirs.
const TIME_PERIOD_MIN: u32 = 24 * VOTING_INTERVAL / 60;
const DIR_PORT: u16 = 9030;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Authority,
    Middle,
    Exit,
    /// Not in the consensus: reached only through its bridge line (obfs4).
    Bridge,
}

/// One relay of the network.
#[derive(Clone, Debug)]
pub struct Relay {
    pub nick: String,
    pub role: Role,
    pub addr: String,
    pub rsa_id: String,
    pub ed_id: String,
    pub v3ident: Option<String>,
}

/// A running private Tor network.
pub struct Testnet {
    pub dir: PathBuf,
    /// `/proc/PID/ns/net` of the network's namespace.
    pub netns: String,
    pub relays: Vec<Relay>,
    /// The onion service's address (`xyz.onion`), served by the middle relay; it forwards
    /// port 80 to the web server.
    pub onion: String,
    /// Seconds from the first relay's start to a usable consensus.
    pub consensus_after: f64,
    /// When the network was started.
    pub since: Instant,
    /// `obfs4 ADDR:PORT FINGERPRINT cert=... iat-mode=0` for the bridge, when obfs4proxy is
    /// installed.
    pub bridge_line: Option<String>,
    _keeper: mpsc::Sender<()>,
}

/// The layout: which relays, which roles.
/// Three exits, not two: a client whose guard is an exit needs another one that accepts
/// its ports, and in full runs at stops 6, 7 and 8 Arti saw only one exit accepting
/// ("rejected 5/6 as not exiting to desired ports; 1/1 as in same family") and built no
/// circuit.
const LAYOUT: [Role; 8] =
    [Role::Authority, Role::Authority, Role::Authority, Role::Middle, Role::Exit, Role::Exit, Role::Exit, Role::Bridge];
/// How many relays of [`LAYOUT`] are exits.
const EXITS: usize = {
    let (mut n, mut i) = (0, 0);
    while i < LAYOUT.len() {
        if matches!(LAYOUT[i], Role::Exit) {
            n += 1;
        }
        i += 1;
    }
    n
};
/// The bridge's obfs4 port.
pub const OBFS4_PORT: u16 = 9443;
const OBFS4PROXY: &str = "/usr/bin/obfs4proxy";

impl Testnet {
    /// Builds and starts the network in `dir` (wiped first) and waits for a consensus with
    /// every relay and Guard, Exit and HSDir flags.
    pub fn start(dir: &Path) -> Result<Testnet> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (tx_ready, rx_ready) = mpsc::channel::<Result<BroughtUp>>();
        let (keeper, keep_rx) = mpsc::channel::<()>();
        let d = dir.to_path_buf();
        // Every process is spawned from this thread, with PDEATHSIG: they die with it, and it
        // only ends when the Testnet is dropped or the process exits.
        thread::Builder::new().name("testnet".into()).spawn(move || {
            let mut children = Vec::new();
            let r = bring_up(&d, &mut children);
            let failed = r.is_err();
            let _ = tx_ready.send(r);
            if !failed {
                let _ = keep_rx.recv(); // until the Testnet is dropped
            }
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
        })?;
        let since = Instant::now();
        let (netns, relays, onion, consensus_after, bridge_line) =
            rx_ready.recv().context("testnet thread died")?.context("starting the private Tor network")?;
        Ok(Testnet {
            dir: dir.to_path_buf(),
            netns,
            relays,
            onion,
            consensus_after,
            since,
            bridge_line,
            _keeper: keeper,
        })
    }

    /// A command run inside the network's namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns)).arg("--").arg(program);
        c
    }

    pub fn arti_toml(&self) -> PathBuf {
        self.dir.join("arti.toml")
    }

    /// Waits until the onion service has uploaded a descriptor (its log says so), so a
    /// client's first lookup can succeed.
    pub fn wait_onion_published(&self, timeout: Duration) -> Result<()> {
        let mid = self.relays.iter().find(|r| r.role == Role::Middle).context("layout has a middle")?;
        let log = self.dir.join(&mid.nick).join("onion.log");
        let deadline = Instant::now() + timeout;
        while !fs::read_to_string(&log).unwrap_or_default().contains("Uploaded hidden service descriptor (status 200") {
            if Instant::now() > deadline {
                // The network's directory is removed with it: quote the logs here.
                let tail = |f: &Path| {
                    let text = fs::read_to_string(f).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                };
                bail!(
                    "the onion service uploaded no descriptor within {timeout:?} (network up {:.0?});\n\
                     {}:\n{}\n{}/notice.log:\n{}",
                    self.since.elapsed(),
                    log.display(),
                    tail(&log),
                    mid.nick,
                    tail(&self.dir.join(&mid.nick).join("notice.log"))
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Addresses (ip:port) of every relay's ORPort.
    pub fn or_addrs(&self) -> Vec<String> {
        self.relays.iter().map(|r| format!("{}:{OR_PORT}", r.addr)).collect()
    }
}

/// Spawns with PR_SET_PDEATHSIG=SIGKILL: the child dies with the spawning thread.
fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = fs::File::create(log)?;
    cmd.stdout(out.try_clone()?).stderr(out).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("spawning {cmd:?}"))
}

/// netns, relays, onion address, seconds to a consensus, bridge line.
type BroughtUp = (String, Vec<Relay>, String, f64, Option<String>);

fn bring_up(dir: &Path, children: &mut Vec<Child>) -> Result<BroughtUp> {
    // 1. The namespace, held by a sleeping process.
    let mut holder = Command::new("unshare");
    holder.args(["--net", "--", "sleep", "infinity"]);
    let holder = spawn(&mut holder, &dir.join("holder.log"))?;
    let netns = format!("/proc/{}/ns/net", holder.id());
    children.push(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_link(&netns).ok() == fs::read_link("/proc/self/ns/net").ok() {
        if Instant::now() > deadline {
            bail!("unshare did not make a namespace");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let ns_ip =
        |args: &[&str]| run(Command::new("nsenter").arg(format!("--net={netns}")).arg("--").arg("ip").args(args));
    ns_ip(&["link", "set", "lo", "up"])?;
    let addr_of = |i: usize| format!("192.0.2.{}", i + 1);
    for i in 0..LAYOUT.len() {
        ns_ip(&["addr", "add", &format!("{}/32", addr_of(i)), "dev", "lo"])?;
    }
    ns_ip(&["addr", "add", &format!("{DNS_V4}/32"), "dev", "lo"])?;
    ns_ip(&["addr", "add", &format!("{WEB_V4}/32"), "dev", "lo"])?;
    // The web server has an IPv6 address too (exits are IPv6Exit), for clients' IPv6.
    ns_ip(&["addr", "add", &format!("{WEB_V6}/128"), "dev", "lo"])?;
    let in_ns = |program: &str| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={netns}")).arg("--").arg(program);
        c
    };

    // 2. Keys: relay identities, and authority certificates.
    let mut relays = Vec::new();
    for (i, role) in LAYOUT.iter().enumerate() {
        let nick = format!(
            "ttpt{i}{}",
            match role {
                Role::Authority => "auth",
                Role::Middle => "mid",
                Role::Exit => "exit",
                Role::Bridge => "bridge",
            }
        );
        let d = dir.join(&nick);
        fs::create_dir_all(d.join("keys"))?;
        set_mode(&d, 0o700)?;
        run(Command::new("tor").args(["--ignore-missing-torrc", "-f", "/dev/null", "--DataDirectory"]).arg(&d).args([
            "--Nickname",
            &nick,
            "--ORPort",
            "1",
            "--SocksPort",
            "0",
            "--list-fingerprint",
        ]))
        .context("tor --list-fingerprint (is Debian's tor installed? cargo xtask setup installs it)")?;
        let mut v3ident = None;
        if *role == Role::Authority {
            let mut gencert = Command::new("tor-gencert");
            gencert
                .args(["--create-identity-key", "--passphrase-fd", "0", "-m", "12", "-a"])
                .arg(format!("{}:{DIR_PORT}", addr_of(i)))
                .arg("-i")
                .arg(d.join("keys/authority_identity_key"))
                .arg("-s")
                .arg(d.join("keys/authority_signing_key"))
                .arg("-c")
                .arg(d.join("keys/authority_certificate"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = gencert.spawn().context("tor-gencert")?;
            drop(child.stdin.take()); // empty passphrase
            if !child.wait()?.success() {
                bail!("tor-gencert failed for {nick}");
            }
            let cert = fs::read_to_string(d.join("keys/authority_certificate"))?;
            v3ident = cert.lines().find_map(|l| l.strip_prefix("fingerprint ")).map(str::to_owned);
        }
        let second = |f: &str| -> Result<String> {
            let t = fs::read_to_string(d.join(f)).with_context(|| format!("{nick}: {f}"))?;
            t.split_whitespace().nth(1).map(str::to_owned).with_context(|| format!("{nick}: malformed {f}"))
        };
        let (rsa_id, ed_id) = (second("fingerprint")?, second("fingerprint-ed25519")?);
        relays.push(Relay { nick, role: *role, addr: addr_of(i), rsa_id, ed_id, v3ident });
    }

    // 3. torrc files.
    let mut authorities = String::new();
    for r in relays.iter().filter(|r| r.role == Role::Authority) {
        let v3 = r.v3ident.as_deref().unwrap_or_default();
        writeln!(
            authorities,
            "DirAuthority {} orport={OR_PORT} no-v2 v3ident={v3} {}:{DIR_PORT} {}",
            r.nick, r.addr, r.rsa_id
        )?;
    }
    fs::write(dir.join("resolv.conf"), format!("nameserver {DNS_V4}\n"))?;
    // For C tor clients on this network (the benchmark's peer).
    fs::write(dir.join("authorities.torrc"), &authorities)?;
    for r in &relays {
        let d = dir.join(&r.nick);
        let mut t = format!(
            "TestingTorNetwork 1\nDataDirectory {d}\nNickname {nick}\nRunAsDaemon 0\nShutdownWaitLength 0\n\
             Log notice file {d}/notice.log\nSafeLogging 0\nSandbox 0\nSocksPort 0\n\
             ORPort {addr}:{OR_PORT}\nAddress {addr}\nOutboundBindAddress {addr}\nAssumeReachable 1\n\
             PathsNeededToBuildCircuits 0.67\nTestingDirAuthVoteExit *\nTestingDirAuthVoteHSDir *\n\
             TestingDirAuthVoteGuard *\nTestingMinExitFlagThreshold 0\nV3AuthNIntervalsValid 10\n\
             ServerDNSDetectHijacking 0\nServerDNSTestAddresses\nServerDNSResolvConfFile {dir}/resolv.conf\n{authorities}",
            d = d.display(),
            nick = r.nick,
            addr = r.addr,
            dir = dir.display(),
        );
        match r.role {
            // Every relay Stable: the authorities otherwise give Stable to the relays whose
            // uptime is above the median, which on a network a minute old is a coin toss
            // per vote. An onion service's intro circuits need Stable hops (C tor's
            // vanguards-lite layer-2 guards are Stable relays): with too few, the middle
            // relay's service logs "Failed to find node for hop #2" and never publishes
            // (stop 13: 3 failures in 4 runs on a fresh machine).
            Role::Authority => write!(
                t,
                "DirPort {addr}:{DIR_PORT}\nAuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\n\
                 ContactInfo {nick}@test.invalid\nAuthDirMaxServersPerAddr 0\nExitRelay 0\n\
                 ConsensusParams guard-min-filtered-sample-size=3 hsdir_interval={TIME_PERIOD_MIN} hsdir-interval={TIME_PERIOD_MIN}{extra}\n\
                 TestingV3AuthInitialVotingInterval 5\nTestingV3AuthInitialVoteDelay 2\n\
                 TestingV3AuthInitialDistDelay 2\n\
                 AuthDirVoteStableGuaranteeMinUptime 0\nAuthDirVoteStableGuaranteeMTBF 0\nV3AuthVotingInterval {VOTING_INTERVAL}\nV3AuthVoteDelay 2\nV3AuthDistDelay 2\n",
                addr = r.addr,
                nick = r.nick,
                // For experiments with the network's parameters (congestion control, for
                // one): `TESTNET_CONSENSUS_PARAMS="cc_alg=0" target/release/bench-tor`.
                extra = std::env::var("TESTNET_CONSENSUS_PARAMS").map(|p| format!(" {p}")).unwrap_or_default(),
            )?,
            // Its onion service is added later (see `add_onion_service`).
            Role::Middle => t.push_str("ExitRelay 0\n"),
            // The last line matters: without it the microdescriptor summary says "reject all".
            // IPv6Exit: so that exits resolve AAAA too.
            Role::Exit => {
                t.push_str("ExitRelay 1\nIPv6Exit 1\nExitPolicyRejectPrivate 0\nExitPolicy accept *:*\n");
                // For looking into the exits' congestion control: `TESTNET_EXIT_LOG="[circ]info"`
                // logs each SENDME's Vegas state (RTT, CWND, QUSE) to NICK/exit.log, with
                // milliseconds (crate::exitlog reads it).
                if let Ok(level) = std::env::var("TESTNET_EXIT_LOG") {
                    writeln!(t, "Log {level} file {}/exit.log\nLogTimeGranularity 1", d.display())?;
                }
            }
            // obfs4proxy writes the bridge line's cert to pt_state/obfs4_bridgeline.txt.
            Role::Bridge => write!(
                t,
                "BridgeRelay 1\nPublishServerDescriptor 0\nExitRelay 0\nExtORPort auto\n\
                 ServerTransportPlugin obfs4 exec {OBFS4PROXY}\nServerTransportListenAddr obfs4 {addr}:{OBFS4_PORT}\n",
                addr = r.addr
            )?,
        }
        fs::write(d.join("torrc"), t)?;
    }

    // 4. The services the network needs: DNS for the exits, a web server to reach.
    let www = dir.join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.txt"), "hello from the private internet\n")?;
    // 50 MB for throughput benchmarks (sparse: costs no disk).
    fs::File::create(www.join("50M.bin"))?.set_len(50 * 1024 * 1024)?;
    fs::File::create(www.join("4M.bin"))?.set_len(4 * 1024 * 1024)?;
    let mut dns = in_ns(crate::bin("testkit").to_str().context("path")?);
    dns.args(["serve-dns", &format!("{DNS_V4}:53"), WEB_V4, WEB_V6]);
    children.push(spawn(&mut dns, &dir.join("dns.log"))?);
    // An exit that cannot reach its resolver at start judges its DNS broken and publishes
    // a reject-all policy: the resolver must answer before any relay starts.
    wait_for_line(&dir.join("dns.log"), "LISTENING")?;
    let mut check = in_ns(crate::bin("testkit").to_str().context("path")?);
    check.args(["serve-check", &format!("{WEB_V4}:8080")]);
    children.push(spawn(&mut check, &dir.join("check.log"))?);
    let mut web = in_ns("python3");
    web.args(["-m", "http.server", "80", "--bind", WEB_V4, "--directory"]).arg(&www);
    children.push(spawn(&mut web, &dir.join("web.log"))?);
    let mut web6 = in_ns("python3");
    web6.args(["-m", "http.server", "80", "--bind", WEB_V6, "--directory"]).arg(&www);
    children.push(spawn(&mut web6, &dir.join("web6.log"))?);

    // 5. The relays.
    let t0 = Instant::now();
    let has_obfs4 = Path::new(OBFS4PROXY).exists();
    let mut mid_pid = 0;
    for r in relays.iter().filter(|r| r.role != Role::Bridge || has_obfs4) {
        let mut tor = in_ns("tor");
        tor.arg("-f").arg(dir.join(&r.nick).join("torrc"));
        let child = spawn(&mut tor, &dir.join(&r.nick).join("stdout.log"))?;
        if r.role == Role::Middle {
            mid_pid = child.id();
        }
        children.push(child);
    }
    write_arti_toml(dir, &relays)?;

    // 6. A consensus with every relay, Guard, Exit and HSDir flags, and every exit's
    //    policy summary accepting (the Exit flag alone says nothing about the policy).
    let auth = relays[0].addr.clone();
    let url = format!("http://{auth}:{DIR_PORT}/tor/status-vote/current/consensus");
    let deadline = Instant::now() + Duration::from_secs(120);
    let consensus_after = loop {
        if Instant::now() > deadline {
            bail!("no usable consensus after 120 s; relay logs are in {}", dir.display());
        }
        let out = in_ns("curl").args(["-sf", "--max-time", "2", &url]).output()?;
        let c = String::from_utf8_lossy(&out.stdout);
        let n = c.lines().filter(|l| l.starts_with("r ")).count();
        let flags = |f: &str| c.lines().filter(|l| l.starts_with("s ") && l.split(' ').any(|w| w == f)).count();
        let accepting = c.lines().filter(|l| l.starts_with("p accept")).count();
        let published = relays.iter().filter(|r| r.role != Role::Bridge).count();
        if n >= published && flags("Exit") >= EXITS && flags("Guard") >= 3 && flags("HSDir") >= 3 && accepting >= EXITS
        {
            break t0.elapsed().as_secs_f64();
        }
        thread::sleep(Duration::from_millis(250));
    };
    // Every relay is also a directory cache for clients: each must hold a consensus that
    // lists the whole network, or a client that asks it bootstraps from an early one (a
    // relay or two, no exit) and waits; and the microdescriptors of the whole network,
    // every exit's accepting policy among them, or a client may see a single exit (once
    // seen: that exit was also its guard, and no circuit could be built).
    let published: Vec<&Relay> = relays.iter().filter(|r| r.role != Role::Bridge).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let complete = |relay_dir: &Path| {
        let listed = fs::read_to_string(relay_dir.join("cached-microdesc-consensus"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("r "))
            .count();
        // Microdescriptors live in the journal (.new) until C tor compacts them.
        let mds: String = ["cached-microdescs", "cached-microdescs.new"]
            .iter()
            .map(|f| fs::read_to_string(relay_dir.join(f)).unwrap_or_default())
            .collect();
        let keys = mds.lines().filter(|l| l.starts_with("onion-key")).count();
        let accepting = mds.lines().filter(|l| l.starts_with("p accept")).count();
        listed >= published.len() && keys >= published.len() && accepting >= EXITS
    };
    for r in &published {
        let file = dir.join(&r.nick).join("cached-microdesc-consensus");
        while !complete(&dir.join(&r.nick)) {
            if Instant::now() > deadline {
                bail!("{} has no complete consensus and microdescriptors after 90 s (see {})", r.nick, file.display());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    let mid = relays.iter().find(|r| r.role == Role::Middle).expect("layout has a middle");
    let onion = add_onion_service(&dir.join(&mid.nick), mid_pid)?;
    let bridge_line = if has_obfs4 { Some(bridge_line(dir, &relays)?) } else { None };
    Ok((netns, relays, onion.trim().to_string(), consensus_after, bridge_line))
}

/// Adds the onion service to the middle relay once the relay holds a consensus of the
/// network's final voting interval, and returns its address.
///
/// Why not from the start: the first consensuses come from the authorities' initial 5 s
/// schedule, and C tor derives the onion time period from the voting interval on a test
/// network (24 intervals). A service born under a 5 s consensus builds its descriptors for
/// 2-minute periods and keeps them until its next rotation (up to 12 minutes later), while
/// clients (Arti follows `hsdir_interval`) look for the 12-minute period's descriptor: the
/// service is unreachable until then. Adding it by SIGHUP once the relay's consensus has
/// the final interval makes service and clients agree from its first upload.
fn add_onion_service(mid_dir: &Path, pid: u32) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if consensus_interval(&mid_dir.join("cached-microdesc-consensus")) == Some(VOTING_INTERVAL) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the middle relay got no {VOTING_INTERVAL} s consensus within 90 s (see {})", mid_dir.display());
        }
        thread::sleep(Duration::from_millis(200));
    }
    let torrc = mid_dir.join("torrc");
    let mut t = fs::read_to_string(&torrc)?;
    write!(
        t,
        "HiddenServiceDir {d}/onion\nHiddenServicePort 80 {WEB_V4}:80\nLog [rend]info file {d}/onion.log\n",
        d = mid_dir.display()
    )?;
    fs::write(&torrc, t)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGHUP)
        .context("SIGHUP to the middle relay")?;
    let hostname = mid_dir.join("onion/hostname");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(h) = fs::read_to_string(&hostname) {
            if h.trim().ends_with(".onion") {
                return Ok(h.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("the onion service did not start: no {}", hostname.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Seconds between a cached consensus's valid-after and fresh-until.
fn consensus_interval(file: &Path) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    let secs = |key: &str| -> Option<i64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let hms = line.split_whitespace().nth(2)?;
        let mut it = hms.split(':').map(|x| x.parse::<i64>().ok());
        Some(it.next()?? * 3600 + it.next()?? * 60 + it.next()??)
    };
    let d = (secs("fresh-until ")? - secs("valid-after ")?).rem_euclid(86_400);
    u32::try_from(d).ok()
}

/// The bridge's line, once obfs4proxy has written its cert.
fn bridge_line(dir: &Path, relays: &[Relay]) -> Result<String> {
    let b = relays.iter().find(|r| r.role == Role::Bridge).context("layout has a bridge")?;
    let file = dir.join(&b.nick).join("pt_state/obfs4_bridgeline.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(&file).unwrap_or_default();
        if let Some(cert) = text.split_whitespace().find(|w| w.starts_with("cert=")) {
            return Ok(format!("obfs4 {}:{OBFS4_PORT} {} {cert} iat-mode=0", b.addr, b.rsa_id));
        }
        if Instant::now() > deadline {
            bail!("obfs4proxy never wrote {} (see {}/{}/notice.log)", file.display(), dir.display(), b.nick);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_line(file: &Path, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(file).unwrap_or_default().lines().any(|l| l == want) {
        if Instant::now() > deadline {
            bail!("{} never said {want}", file.display());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Arti's configuration for this network: the same keys the `arti` program reads.
fn write_arti_toml(dir: &Path, relays: &[Relay]) -> Result<()> {
    let mut t = String::from(
        "# Private test network written by ttp's testnet: pass it to ttp with --arti-config.\n\
         [path_rules]\nipv4_subnet_family_prefix = 33\nipv6_subnet_family_prefix = 129\n\n\
         [address_filter]\nallow_local_addrs = true\n\n\
         # Six relays cannot give onion circuits distinct vanguards; the real network can.\n\
         [vanguards]\nmode = \"disabled\"\n\n[tor_network]\nfallback_caches = [\n",
    );
    for r in relays.iter().filter(|r| r.role != Role::Bridge) {
        writeln!(
            t,
            "  {{ rsa_identity = \"{}\", ed_identity = \"{}\", orports = [\"{}:{OR_PORT}\"] }},",
            r.rsa_id, r.ed_id, r.addr
        )?;
    }
    t.push_str("]\n\n[tor_network.authorities]\nv3idents = [\n");
    for r in relays.iter().filter_map(|r| r.v3ident.as_ref()) {
        writeln!(t, "  \"{r}\",")?;
    }
    t.push_str("]\n");
    fs::write(dir.join("arti.toml"), t)?;
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}
