//! The end-to-end harness every ttp test builds on.
//!
//! A test gets its own world: a "host" network namespace whose uplink veth leads to an
//! "internet" namespace, a packet capture on the internet side of that link (what left the
//! host), a fresh cgroup subtree (governed, daemon and bypass cgroups), helpers to run a
//! command as any uid/gid inside the governed cgroup, and a daemon guard. Every piece
//! removes itself on drop, also when the test panics, so nothing of a test outlives it.
//!
//! Nothing here touches the machine's own network: namespaces are made by the test,
//! programs attach to the test's cgroup and to interfaces inside the test's namespaces.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub mod bench;
pub mod booted;
pub mod bpfheld;
pub mod exitlog;
pub mod testnet;
pub mod wireguard;

/// Addresses of the test topology. Public ranges from the documentation blocks, so LAN
/// bypass never applies to "internet" destinations by accident.
pub mod addr {
    pub const HOST_V4: &str = "198.51.100.1";
    pub const INET_V4: &str = "198.51.100.2";
    pub const HOST_V6: &str = "2001:db8:1::1";
    pub const INET_V6: &str = "2001:db8:1::2";
    /// A server "on the internet" (the internet namespace's loopback).
    pub const SERVER_V4: &str = "203.0.113.10";
    pub const SERVER_V6: &str = "2001:db8:2::10";
    /// A DNS-over-HTTPS resolver on the internet side.
    pub const DOH_V4: &str = "203.0.113.53";
    /// The LAN: a private range on the same link.
    pub const HOST_LAN: &str = "192.168.77.1";
    pub const LAN_PEER: &str = "192.168.77.2";
}

/// Path of a binary of this package (testkit, ttp-probe), next to the running one:
/// test binaries live in target/<profile>/deps, the others in target/<profile>.
/// `TTP_BIN=PATH` runs another build of `ttp` instead (a release profile under trial in
/// `bench tor`, side by side with the built one).
pub fn bin(name: &str) -> PathBuf {
    if name == "ttp" {
        // Before this process runs its first ttp, which may mount bpffs.
        unmount_bpffs_at_exit();
    }
    match std::env::var_os("TTP_BIN") {
        Some(p) if name == "ttp" => PathBuf::from(p),
        _ => built(name),
    }
}

fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    [dir.join(name), dir.parent().expect("target dir").join(name)].into_iter().find(|p| p.exists()).unwrap_or_else(
        || panic!("{name} is not built next to {}: build with cargo build -p ttp-tests --bins", exe.display()),
    )
}

/// The cargo target directory the tests were built in, where `cargo xtask test` caches
/// what they need: the booted system's root, the .deb, WireGuard peers (`peers/bin`).
pub fn target_dir() -> PathBuf {
    built("ttp").parent().and_then(std::path::Path::parent).expect("target/<profile>/ttp").to_path_buf()
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// A network namespace: made by the test (named, deleted on drop), or one the test only
/// uses, such as the private Tor network's.
pub struct Netns {
    pub name: String,
    path: String,
    owned: bool,
}

impl Netns {
    pub fn new(role: &str) -> Result<Self> {
        let name = format!("ttpt-{}-{role}", unique());
        ip(&["netns", "add", &name])?;
        let ns = Netns { path: format!("/run/netns/{name}"), name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace someone else owns, by its path (`/proc/PID/ns/net`).
    pub fn borrowed(path: &str) -> Self {
        Netns { name: path.to_string(), path: path.to_string(), owned: false }
    }

    pub fn path(&self) -> String {
        self.path.clone()
    }

    /// `ip ARGS...` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(self.cmd("ip").args(args)).map(drop)
    }

    /// A command that runs inside this namespace. Only the network namespace is entered
    /// (nsenter, not `ip netns exec`, which also makes a private mount namespace where
    /// bpffs pins would not outlive the process).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path)).arg("--").arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive but invisible; guards kill them first.
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        }
    }
}

/// A cgroup made by the test; its processes are killed and it is removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new_root() -> Result<Self> {
        let root = ttp::cgroup::cgroup2_root()?;
        Self::at(root.join(format!("ttpt-{}", unique())))
    }

    pub fn at(path: PathBuf) -> Result<Self> {
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    pub fn child(&self, name: &str) -> Result<Cgroup> {
        Self::at(self.path.join(name))
    }

    pub fn id(&self) -> u64 {
        ttp::cgroup::cgroup_id(&self.path).expect("cgroup id")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Kills every process in the subtree, then removes it leaves first (the daemon
        // under test makes cgroups of its own in it).
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if remove_cgroup_tree(&self.path) || !self.path.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// rmdir of a cgroup and its descendants, deepest first; true when it is gone.
fn remove_cgroup_tree(path: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    fs::remove_dir(path).is_ok()
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Proc { child, stdout })
    }

    /// Waits until a stdout line equals `want` (servers print LISTENING, daemons READY).
    pub fn wait_line(&mut self, want: &str, timeout: Duration) -> Result<()> {
        self.wait_line_where(want, timeout, |line| line == want).map(drop)
    }

    /// Waits until a stdout line satisfies `is`, and returns it (`what` names it in errors).
    pub fn wait_line_where(&mut self, what: &str, timeout: Duration, is: impl Fn(&str) -> bool) -> Result<String> {
        let stdout = self.stdout.as_mut().context("no stdout")?;
        let deadline = Instant::now() + timeout;
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                bail!("process exited before printing {what}: {:?}", self.child.try_wait());
            }
            if is(line.trim_end()) {
                return Ok(line.trim_end().to_string());
            }
        }
        bail!("timed out waiting for {what}")
    }

    /// The next line the process prints (without its newline); an error at its end.
    pub fn next_line(&mut self) -> Result<String> {
        let stdout = self.stdout.as_mut().context("no stdout")?;
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            bail!("process exited: {:?}", self.child.try_wait());
        }
        Ok(line.trim_end().to_string())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tcpdump on an interface; [`Capture::stop`] returns the packets as tcpdump prints them.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str) -> Result<Self> {
        Self::start_filtered(ns, iface, &[])
    }

    /// A capture of only what the tcpdump `filter` words select: under a flood a full
    /// capture drops packets, a narrow one does not.
    pub fn start_filtered(ns: &Netns, iface: &str, filter: &[&str]) -> Result<Self> {
        let file = std::env::temp_dir().join(format!("ttpt-{}.pcap", unique()));
        let mut cmd = ns.cmd("tcpdump");
        // --immediate-mode: otherwise packets still in tcpdump's ring when it is stopped are
        // never written, and a leak test reading the file would pass on an empty capture.
        cmd.args(["-i", iface, "--immediate-mode", "-U", "-n", "-w"]).arg(&file).args(filter).stderr(Stdio::piped());
        let mut child = cmd.stdout(Stdio::null()).spawn().context("spawning tcpdump")?;
        let mut err = BufReader::new(child.stderr.take().context("tcpdump stderr")?);
        let mut line = String::new();
        err.read_line(&mut line)?;
        if !line.contains("listening on") {
            let _ = child.kill();
            bail!("tcpdump did not start: {line}");
        }
        Ok(Capture { proc: Proc { child, stdout: None }, file })
    }

    /// Stops the capture and returns one line per packet (`tcpdump -nn -r`).
    pub fn stop(mut self) -> Result<Vec<String>> {
        thread::sleep(Duration::from_millis(300));
        self.proc.signal(nix::sys::signal::Signal::SIGINT);
        let _ = self.proc.child.wait();
        let file = &self.file;
        // -tt: epoch timestamps, comparable with the test's own clock (see [`time_of`]).
        let out = run(Command::new("tcpdump").args(["-tt", "-nn", "-r"]).arg(file))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    }

    /// Stops the capture and returns the payloads of its IPv4 UDP datagrams (of an L3
    /// capture or Ethernet: the IP header is found by its version nibble).
    pub fn stop_udp_payloads(mut self) -> Result<Vec<Vec<u8>>> {
        thread::sleep(Duration::from_millis(300));
        self.proc.signal(nix::sys::signal::Signal::SIGINT);
        let _ = self.proc.child.wait();
        let out = run(Command::new("tcpdump").args(["-nn", "-x", "-r"]).arg(&self.file).arg("udp"))?;
        let mut packets: Vec<Vec<u8>> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            match line.trim_start().strip_prefix("0x") {
                Some(rest) if line.starts_with('\t') => {
                    let hex: String = rest.split_once(':').map(|(_, h)| h).unwrap_or("").split_whitespace().collect();
                    let bytes = (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok());
                    if let Some(p) = packets.last_mut() {
                        p.extend(bytes);
                    }
                }
                _ => packets.push(Vec::new()),
            }
        }
        // `tcpdump -x` prints from the IP header on: skip it and the UDP header.
        Ok(packets
            .into_iter()
            .filter(|p| p.first().is_some_and(|b| b >> 4 == 4))
            .filter_map(|p| p.get(usize::from(p[0] & 0x0f) * 4 + 8..).map(<[u8]>::to_vec))
            .collect())
    }
}

impl Drop for Capture {
    /// Also when a test fails before `stop`: no capture file is left behind.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
    }
}

/// `ttp tunnel ARGS` with `stdin` on its standard input (genkey, pubkey): its one line.
pub fn tunnel_key(args: &[&str], stdin: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin("ttp"))
        .arg("tunnel")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning ttp tunnel")?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ttp tunnel {args:?} failed");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The uid the daemon becomes once set up, in tests: a number with no /etc/passwd entry,
/// so that no test adds a user to the host.
pub const SERVICE_UID: u32 = 64123;

/// A directory removed on drop, also when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ttpt-{name}-{}", unique()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("creating a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Makes `cmd` start inside `cgroup`.
pub fn into_cgroup(cmd: &mut Command, cgroup: &Cgroup) {
    use std::os::unix::process::CommandExt;
    let procs = cgroup.path.join("cgroup.procs");
    // SAFETY: one write to a cgroup file between fork and exec.
    unsafe {
        cmd.pre_exec(move || fs::write(&procs, b"0"));
    }
}

/// When a captured packet was seen (seconds since the epoch).
pub fn time_of(packet: &str) -> f64 {
    packet.split_whitespace().next().and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

/// Now, in the capture's clock.
pub fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Packets of a capture that contain `needle` (e.g. "> 203.0.113.10.443:").
pub fn matching<'a>(packets: &'a [String], needle: &str) -> Vec<&'a String> {
    packets.iter().filter(|l| l.contains(needle)).collect()
}

const BPFFS: &str = "/sys/fs/bpf";

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf"))
}

/// The daemons mount bpffs at /sys/fs/bpf when it is missing (a host without systemd has
/// none). A test process that found it missing before it ran its first `ttp` ([`bin`])
/// unmounts it as it exits, whether its tests
/// passed or failed, once nothing of ours is pinned there: the kernel's own preload
/// iterators (`maps.debug`, `progs.debug`) are all it may hold.
fn unmount_bpffs_at_exit() {
    // Two daemons that start at once may both find it missing and mount it twice, one
    // over the other: each mount goes, from the top.
    extern "C" fn at_exit() {
        while bpffs_mounted() {
            let left: Vec<String> = fs::read_dir(BPFFS)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if let Some(other) = left.iter().find(|n| !matches!(n.as_str(), "maps.debug" | "progs.debug")) {
                eprintln!("warning: {BPFFS}/{other} is still pinned after the tests; bpffs left mounted");
                return;
            }
            if let Err(e) = nix::mount::umount(BPFFS) {
                eprintln!("warning: unmounting the tests' bpffs at {BPFFS}: {e}");
                return;
            }
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !bpffs_mounted() {
            // SAFETY: registers a plain function; it runs once, when the process exits.
            unsafe { libc::atexit(at_exit) };
        }
    });
}

/// The standard world: host and internet namespaces joined by a veth, servers on the
/// internet side, and a cgroup subtree with governed, daemon and bypass cgroups.
pub struct World {
    // Field order is drop order: processes first, then cgroups, then namespaces.
    pub servers: Vec<Proc>,
    pub bypass: Cgroup,
    pub governed: Cgroup,
    pub daemon: Cgroup,
    pub cgroups: Cgroup,
    pub host: Netns,
    pub inet: Netns,
    pub pin_dir: PathBuf,
    /// The uplink's peer interface in the internet namespace: where captures run.
    pub inet_if: String,
}

/// The uplink's name inside the host namespace, and its peer's inside the internet one.
pub const UPLINK: &str = "up0";
pub const INET_IF: &str = "eth0";

impl World {
    pub fn new() -> Result<Self> {
        let host = Netns::new("host")?;
        let inet = Netns::new("inet")?;
        host.ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", INET_IF, "netns", &inet.name])?;
        for (ns, ifc, v4, v6, lan) in [
            (&host, UPLINK, addr::HOST_V4, addr::HOST_V6, addr::HOST_LAN),
            (&inet, INET_IF, addr::INET_V4, addr::INET_V6, addr::LAN_PEER),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifc])?;
            ns.ip(&["addr", "add", &format!("{lan}/24"), "dev", ifc])?;
            ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", ifc, "nodad"])?;
            ns.ip(&["link", "set", ifc, "up"])?;
        }
        inet.ip(&["addr", "add", &format!("{}/32", addr::SERVER_V4), "dev", "lo"])?;
        inet.ip(&["addr", "add", &format!("{}/32", addr::DOH_V4), "dev", "lo"])?;
        inet.ip(&["-6", "addr", "add", &format!("{}/128", addr::SERVER_V6), "dev", "lo", "nodad"])?;
        host.ip(&["route", "add", "default", "via", addr::INET_V4])?;
        host.ip(&["-6", "route", "add", "default", "via", addr::INET_V6])?;

        let cgroups = Cgroup::new_root()?;
        let governed = cgroups.child("governed")?;
        let bypass = governed.child("bypass")?;
        let daemon = cgroups.child("daemon")?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/ttpt-{}", unique()));
        let mut w = World {
            servers: Vec::new(),
            bypass,
            governed,
            daemon,
            cgroups,
            host,
            inet,
            pin_dir,
            inet_if: INET_IF.into(),
        };

        // Every internet-side service answers "DIRECT <its address>".
        let tcp = [
            format!("{}:80", addr::SERVER_V4),
            format!("{}:853", addr::SERVER_V4),
            format!("{}:443", addr::DOH_V4),
            format!("[{}]:80", addr::SERVER_V6),
            format!("{}:80", addr::LAN_PEER),
        ];
        let udp = [
            format!("{}:443", addr::SERVER_V4),
            format!("[{}]:443", addr::SERVER_V6),
            format!("{}:5353", addr::LAN_PEER),
        ];
        let mut s = w.inet.cmd(bin("testkit"));
        s.arg("serve-tcp").args(&tcp);
        w.start_server(s)?;
        let mut s = w.inet.cmd(bin("testkit"));
        s.arg("serve-udp").args(&udp);
        w.start_server(s)?;
        Ok(w)
    }

    /// A world whose internet is the shared private Tor network: the host namespace gets
    /// its own link into the network's namespace (198.19.N.0/24), the rest is as in
    /// [`World::new`] minus the extra internet-side servers. IPv4 only.
    pub fn with_testnet(net: &testnet::Testnet) -> Result<Self> {
        static LINK: AtomicU32 = AtomicU32::new(1);
        let n = LINK.fetch_add(1, Ordering::Relaxed);
        if n > 250 {
            bail!("too many test worlds on one private Tor network");
        }
        let host = Netns::new("host")?;
        let inet = Netns::borrowed(&net.netns);
        let peer = format!("th{n}");
        let pid = net.netns.trim_start_matches("/proc/").trim_end_matches("/ns/net").to_string();
        host.ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", &peer, "netns", &pid])?;
        host.ip(&["addr", "add", &format!("198.19.{n}.2/24"), "dev", UPLINK])?;
        host.ip(&["link", "set", UPLINK, "up"])?;
        inet.ip(&["addr", "add", &format!("198.19.{n}.1/24"), "dev", &peer])?;
        inet.ip(&["link", "set", &peer, "up"])?;
        host.ip(&["route", "add", "default", "via", &format!("198.19.{n}.1")])?;
        let cgroups = Cgroup::new_root()?;
        let governed = cgroups.child("governed")?;
        let bypass = governed.child("bypass")?;
        let daemon = cgroups.child("daemon")?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/ttpt-{}", unique()));
        Ok(World { servers: Vec::new(), bypass, governed, daemon, cgroups, host, inet, pin_dir, inet_if: peer })
    }

    fn start_server(&mut self, cmd: Command) -> Result<()> {
        let mut p = Proc::spawn(cmd)?;
        p.wait_line("LISTENING", Duration::from_secs(10))?;
        self.servers.push(p);
        Ok(())
    }

    /// Runs `argv` in the host namespace, inside `cgroup`, as `uid`/`gid`.
    pub fn run_in(&self, cgroup: &Cgroup, uid: u32, gid: u32, argv: &[&str]) -> Output {
        self.cmd_in(cgroup, uid, gid, argv).output().expect("spawning a governed command")
    }

    /// `testkit ARGS` as uid/gid in the governed cgroup; returns its one-line report.
    pub fn governed(&self, uid: u32, argv: &[&str]) -> String {
        self.kit(&self.governed, uid, uid, argv)
    }

    /// `testkit ARGS` in `cgroup` as uid/gid; returns its one-line report.
    pub fn kit(&self, cgroup: &Cgroup, uid: u32, gid: u32, argv: &[&str]) -> String {
        let kit = bin("testkit");
        let mut v = vec![kit.to_str().expect("utf-8 path")];
        v.extend_from_slice(argv);
        let out = self.run_in(cgroup, uid, gid, &v);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text.is_empty() {
            format!("NO OUTPUT: {}", String::from_utf8_lossy(&out.stderr))
        } else {
            text
        }
    }

    /// A daemon's command line in the host namespace: this world's cgroups, uplink, pins.
    pub fn daemon_cmd(&self, program: &str, sub: &[&str]) -> Command {
        let mut c = self.daemon_cmd_choosing_uplinks(program, sub);
        c.args(["--uplink", UPLINK]);
        c
    }

    /// [`World::daemon_cmd`] without `--uplink`: the daemon takes the interfaces with a
    /// default route (here the world's uplink) and follows new ones.
    pub fn daemon_cmd_choosing_uplinks(&self, program: &str, sub: &[&str]) -> Command {
        let mut c = self.host.cmd(bin(program));
        c.args(sub)
            .arg("--cgroup")
            .arg(&self.governed.path)
            .arg("--daemon-cgroup")
            .arg(&self.daemon.path)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        c
    }

    /// Starts the probe daemon (real datapath, stand-in services) with extra options.
    pub fn start_probe(&self, extra: &[&str]) -> Result<Daemon> {
        let mut c = self.daemon_cmd("ttp-probe", &[]);
        c.args(extra).env("RUST_LOG", "info");
        self.spawn_daemon(c, Duration::from_secs(30))
    }

    /// Starts the real daemon (`ttp run`) in the host namespace with this world's cgroups,
    /// uplink and pin directory, plus `extra` options; waits until it prints READY.
    pub fn start_ttp(&self, state_dir: &std::path::Path, extra: &[&str]) -> Result<Daemon> {
        self.start_ttp_with(state_dir, extra, |_| {})
    }

    /// [`World::start_ttp`], with the command changed by `adjust` first (limits...).
    pub fn start_ttp_with(
        &self,
        state_dir: &std::path::Path,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Daemon> {
        let mut c = self.ttp_run_cmd(state_dir, extra);
        adjust(&mut c);
        self.spawn_daemon(c, Duration::from_secs(120))
    }

    /// [`World::start_ttp`] that returns once the kill-switch is attached (the daemon's
    /// `KILLSWITCH` line), before Tor has bootstrapped: for bridges Tor cannot finish
    /// bootstrapping through here.
    pub fn start_ttp_closed(&self, state_dir: &std::path::Path, extra: &[&str]) -> Result<Daemon> {
        let c = self.ttp_run_cmd(state_dir, extra);
        self.spawn_daemon_until(c, Duration::from_secs(60), "KILLSWITCH", |l| l.starts_with("KILLSWITCH "))
    }

    /// `ttp run EXTRA` for this world, logging as `TTP_TEST_LOG` says.
    fn ttp_run_cmd(&self, state_dir: &std::path::Path, extra: &[&str]) -> Command {
        let mut c = self.ttp_cmd("run", state_dir);
        c.args(extra)
            .env("RUST_LOG", std::env::var("TTP_TEST_LOG").unwrap_or_else(|_| "info,tor_guardmgr=warn".into()));
        c
    }

    /// `ttp SUB` for this world, with its state and runtime directories under `state_dir`
    /// and a bounded bootstrap (a stuck bootstrap ends the daemon instead of the run).
    pub fn ttp_cmd(&self, sub: &str, state_dir: &std::path::Path) -> Command {
        self.ttp_cmd_at(sub, state_dir, &state_dir.join("run"))
    }

    /// [`World::ttp_cmd`] with the runtime directory elsewhere (the state directory is the
    /// service user's, mode 0700: other users cannot reach a runtime directory inside it).
    pub fn ttp_cmd_at(&self, sub: &str, state_dir: &std::path::Path, runtime_dir: &std::path::Path) -> Command {
        let mut c = self.daemon_cmd("ttp", &[sub]);
        c.args(["--bootstrap-timeout", "90"])
            .args(["--user", &SERVICE_UID.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--runtime-dir")
            .arg(runtime_dir);
        c
    }

    /// Starts `cmd` (a `ttp run` command line) and waits until it prints READY.
    pub fn start_daemon(&self, mut cmd: Command) -> Result<Daemon> {
        cmd.env("RUST_LOG", std::env::var("TTP_TEST_LOG").unwrap_or_else(|_| "info,tor_guardmgr=warn".into()));
        self.spawn_daemon(cmd, Duration::from_secs(120))
    }

    /// `ttp ARGS` with this world's runtime and pin directories (for stop, status, exec,
    /// watchdog...), run as root in the host namespace from inside the daemon's cgroup, so
    /// that whatever it leaves running (a watchdog) dies with the world.
    pub fn ttp_ctl(&self, args: &[&str], state_dir: &std::path::Path) -> Command {
        let mut c = self.host.cmd(bin("ttp"));
        c.args(args).arg("--runtime-dir").arg(state_dir.join("run")).arg("--pin-dir").arg(&self.pin_dir);
        into_cgroup(&mut c, &self.daemon);
        c
    }

    /// `ttp start` (the real CLI path: detached daemon, start protocol) with this world's
    /// options, from inside the daemon's cgroup.
    pub fn ttp_start(&self, state_dir: &std::path::Path, extra: &[&str]) -> Command {
        let mut c = self.ttp_cmd("start", state_dir);
        c.args(extra).env("RUST_LOG", "info,tor_guardmgr=warn");
        into_cgroup(&mut c, &self.daemon);
        c
    }

    /// Spawns `argv` in the host namespace, inside `cgroup`, as `uid`/`gid`.
    pub fn spawn_in(&self, cgroup: &Cgroup, uid: u32, gid: u32, argv: &[&str]) -> Result<Proc> {
        Proc::spawn(self.cmd_in(cgroup, uid, gid, argv))
    }

    /// The command that runs `argv` in the host namespace, inside `cgroup`, as `uid`/`gid`.
    pub fn cmd_in(&self, cgroup: &Cgroup, uid: u32, gid: u32, argv: &[&str]) -> Command {
        let mut c = self.host.cmd("bash");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec setpriv --reuid="$1" --regid="$2" --clear-groups -- "${@:3}""#)
            .arg(&cgroup.path)
            .arg(uid.to_string())
            .arg(gid.to_string())
            .args(argv);
        c
    }

    fn spawn_daemon(&self, c: Command, timeout: Duration) -> Result<Daemon> {
        self.spawn_daemon_until(c, timeout, "READY", |l| l == "READY")
    }

    /// [`World::spawn_daemon`], started once its start protocol prints a line that `is`.
    fn spawn_daemon_until(
        &self,
        mut c: Command,
        timeout: Duration,
        what: &str,
        is: impl Fn(&str) -> bool,
    ) -> Result<Daemon> {
        use std::os::unix::process::CommandExt;
        // A process group of its own (the daemon and the monitor it forks), as a terminal
        // or a service manager gives it: a stop signals the group.
        c.stderr(Stdio::piped()).process_group(0);
        let mut p = Proc::spawn(c)?;
        let stderr = p.child.stderr.take().context("daemon stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push_str(&(line + "\n"));
            }
        });
        if let Err(e) = p.wait_line_where(what, timeout, is) {
            thread::sleep(Duration::from_millis(200));
            bail!("daemon did not start: {e:#}\n{}", log.lock().expect("log lock"));
        }
        Ok(Daemon { proc: p, log, pin_dir: self.pin_dir.clone() })
    }

    /// Reads the counters from the pinned maps (works with the daemon dead).
    pub fn counters(&self) -> Result<std::collections::HashMap<&'static str, u64>> {
        let maps = ttp::datapath::Maps::open_pinned(&self.pin_dir.join("maps"))?;
        Ok(maps.counters()?.into_iter().map(|(c, n)| (c.name(), n)).collect())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.servers.clear();
        // A test that SIGKILLed its daemon leaves pins: remove them so links detach.
        let _ = ttp::datapath::teardown(&ttp::datapath::PinLayout::new(&self.pin_dir));
    }
}

/// Makes `cmd` run with an open-files limit of `n` (soft and hard), as a shell's or an
/// old init's default would start it.
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                .map_err(std::io::Error::from)
        });
    }
}

/// A running probe daemon. Dropping it kills it and tears its pins down.
pub struct Daemon {
    pub proc: Proc,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    pin_dir: PathBuf,
}

impl Daemon {
    /// SIGTERM to the daemon's process group (as a Ctrl-C or a service manager sends it)
    /// and wait: root's clean stop.
    pub fn stop(mut self) -> Result<String> {
        let group = nix::unistd::Pid::from_raw(self.proc.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let status = self.proc.child.wait()?;
        thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().expect("log lock").clone();
        if !status.success() {
            bail!("daemon exited with {status}:\n{log}");
        }
        Ok(log)
    }

    /// SIGKILL: the crash the kill-switch must survive. Pins stay.
    pub fn kill(mut self) {
        self.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.proc.child.wait();
        self.pin_dir = PathBuf::new(); // leave the pins for the test to inspect
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if !self.pin_dir.as_os_str().is_empty() {
            let _ = ttp::datapath::teardown(&ttp::datapath::PinLayout::new(&self.pin_dir));
        }
    }
}

/// A DNS answer for a query: every A with `v4`, every AAAA with `v6` (or none), anything
/// else NOTIMP. Used by the stand-in DNSPort and by the Tor test network's resolver.
pub fn dns_answer(query: &[u8], v4: std::net::Ipv4Addr, v6: Option<std::net::Ipv6Addr>) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::{Message, MessageType, ResponseCode},
        rr::{rdata, RData, Record, RecordType},
    };
    let req = Message::from_vec(query).ok()?;
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true);
    for q in req.queries() {
        resp.add_query(q.clone());
        let rdata = match (q.query_type(), v6) {
            (RecordType::A, _) => RData::A(rdata::A(v4)),
            (RecordType::AAAA, Some(v6)) => RData::AAAA(rdata::AAAA(v6)),
            (RecordType::AAAA, None) => continue,
            _ => {
                resp.set_response_code(ResponseCode::NotImp);
                continue;
            }
        };
        resp.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
    }
    resp.to_vec().ok()
}
