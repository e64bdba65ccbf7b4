//! The `ttp` command's lifecycle on the private Tor network, through the real CLI (`ttp
//! start` detaches a daemon): SIGKILL and recovery, the watchdog, a stop under load, exec,
//! check-leak, the config file.

use std::{path::Path, process::Output};

use nix::sys::signal::{kill, Signal};
use ttp_tests::{now_epoch, time_of, Capture};

use super::*;

/// A session started with `ttp start`; stopped, and its state removed, on drop (also when
/// the test fails). The world's cgroup guard kills whatever is left.
struct Session {
    w: World,
    state: PathBuf,
}

impl Session {
    fn start(extra: &[&str]) -> Session {
        let net = net();
        let w = World::with_testnet(net).expect("test world on the Tor network");
        let state =
            std::env::temp_dir().join(format!("ttpt-life-{}", w.pin_dir.file_name().unwrap().to_string_lossy()));
        let s = Session { w, state };
        let out = s.start_again(extra);
        assert!(out.status.success(), "ttp start: {}{}", text(&out.stdout), text(&out.stderr));
        s.warm_up();
        s
    }

    /// `ttp start` with the network's configuration plus `extra` (a config file, if
    /// `extra` names one, supplies the rest).
    fn start_again(&self, extra: &[&str]) -> Output {
        let mut c = self.w.ttp_start(&self.state, extra);
        if !extra.contains(&"--config") {
            c.arg("--arti-config").arg(net().arti_toml()).args(["--check-url", ttp_tests::testnet::CHECK_URL]);
        }
        c.output().unwrap()
    }

    fn warm_up(&self) {
        let t0 = Instant::now();
        while curl(&self.w, &format!("http://{WEB}/index.txt")) != PAGE {
            assert!(t0.elapsed() < Duration::from_secs(60), "no stream through Tor within 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.w.ttp_ctl(args, &self.state).output().unwrap()
    }

    /// `ttp ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "ttp {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    fn lock(&self) -> Option<serde_json::Value> {
        let t = std::fs::read_to_string(self.state.join("run/ttp.lock")).ok()?;
        serde_json::from_str(&t).ok()
    }

    fn pid(&self) -> i32 {
        self.lock().expect("session lock")["pid"].as_i64().unwrap() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("run/ttp.log")).unwrap_or_default()
    }

    /// Where curl's request to the check endpoint came from: the exit, or the host.
    fn seen_as(&self, cgroup: &ttp_tests::Cgroup, prefix: &[&str]) -> String {
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend(["curl", "-s", "-m", "20", ttp_tests::testnet::CHECK_URL]);
        let out = self.w.run_in(cgroup, 0, 0, &argv);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["IP"].as_str().unwrap_or("no answer").to_string()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn wait_dead(pid: i32) {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exits() -> Vec<String> {
    net().relays.iter().filter(|x| x.role == ttp_tests::testnet::Role::Exit).map(|x| x.addr.clone()).collect()
}

#[test]
fn sigkill_leaves_the_host_closed_and_the_next_start_recovers() {
    // Options from a config file this time (every option is a key; `ttp start` reads it,
    // and so does the daemon it runs).
    let dir = ttp_tests::TempDir::new("conf");
    let conf = dir.0.join("ttp.toml");
    std::fs::write(
        &conf,
        format!(
            "arti-config = [\"{}\"]\ncheck-url = [\"{}\"]\nbootstrap_timeout = 90\n",
            net().arti_toml().display(),
            ttp_tests::testnet::CHECK_URL
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let s = Session::start(&["--config", &conf_s]);
    let lock = s.lock().unwrap();
    assert!(lock["args"].as_array().unwrap().iter().any(|a| a == "--config"), "{lock}");
    let pid = s.pid();

    let cap = Capture::start(&s.w.inet, &s.w.inet_if).unwrap();
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_dead(pid);
    // Closed: TCP, DNS and UDP of a governed application get nowhere.
    assert_ne!(curl(&s.w, &format!("http://{WEB}/index.txt")), PAGE, "a governed curl worked with the daemon dead");
    let dns = dig(&s.w, &["@9.9.9.9", "www.example.test", "A"]);
    assert!(!dns.starts_with("203."), "DNS answered with the daemon dead: {dns}");
    let closed_until = now_epoch();
    // Positive control: an application outside the governed cgroup goes direct (ttp
    // governs a subtree here), and the capture sees it.
    let outside = s.w.cgroups.child("outside").unwrap();
    let direct =
        s.w.run_in(&outside, GOVERNED, GOVERNED, &["curl", "-s", "-m", "5", &format!("http://{WEB}/index.txt")]);
    assert_eq!(text(&direct.stdout).trim(), PAGE);
    let packets = cap.stop().unwrap();
    let to_web = matching(&packets, &format!("> {WEB}.80:"));
    assert!(!to_web.is_empty(), "the capture missed the exempt control");
    let leaked: Vec<&&String> = to_web.iter().filter(|p| time_of(p) < closed_until).collect();
    assert!(leaked.is_empty(), "traffic left while the daemon was dead: {leaked:#?}");
    let to_dns = matching(&packets, ".53:");
    assert!(to_dns.is_empty(), "DNS left while the daemon was dead: {to_dns:#?}");

    // status says so, from the pins, with exit code 1 (dead, its kill-switch remains).
    let out = s.ctl(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["pid"].is_null() && status["links"].as_u64().unwrap() > 0, "{status}");

    // The next start takes the stale pins over and serves again.
    let out = s.start_again(&["--config", &conf_s]);
    assert!(out.status.success(), "second start: {}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(s.pid(), pid);
    s.warm_up();
    // A start while one runs is refused, and changes nothing.
    let again = s.start_again(&["--config", &conf_s]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already running"), "{}", text(&again.stderr));
    assert_eq!(curl(&s.w, &format!("http://{WEB}/index.txt")), PAGE);
}

#[test]
fn the_watchdog_replaces_a_killed_daemon() {
    let s = Session::start(&["--watchdog"]);
    assert!(s.ok(&["watchdog", "status"]).contains("running"));
    let pid = s.pid();
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_dead(pid);
    let t0 = Instant::now();
    loop {
        let new = s.lock().and_then(|l| l["pid"].as_i64()).unwrap_or(0) as i32;
        if new != 0 && new != pid && Path::new(&format!("/proc/{new}")).exists() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the watchdog did not restart the daemon:\n{}",
            std::fs::read_to_string(s.state.join("run/watchdog.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.warm_up();
    let log = s.ok(&["logs", "--watchdog", "--no-follow"]);
    assert!(
        log.contains(&format!("daemon (pid {pid}) is dead")) && log.contains("repaired: daemon restarted"),
        "{log}"
    );
    // `ttp stop` stops the watchdog first: nothing revives the daemon afterwards.
    let wd: i32 = std::fs::read_to_string(s.state.join("run/watchdog.pid")).unwrap().trim().parse().unwrap();
    s.ok(&["stop"]);
    wait_dead(wd);
    assert!(!s.w.pin_dir.exists(), "pins left after stop");
    std::thread::sleep(Duration::from_secs(2));
    assert!(s.lock().is_none(), "something restarted ttp after stop");
}

#[test]
fn an_application_hammering_connections_during_stop_leaks_nothing() {
    let s = Session::start(&[]);
    // One long transfer through Tor (SOCK_DESTROY must end it at stop), and a loop of
    // short connections.
    let mut big =
        s.w.spawn_in(
            &s.w.governed,
            GOVERNED,
            GOVERNED,
            &["curl", "-s", "-o", "/dev/null", "--limit-rate", "20k", &format!("http://{WEB}/50M.bin")],
        )
        .unwrap();
    let url = format!("http://{WEB}/index.txt");
    let _hammer =
        s.w.spawn_in(
            &s.w.governed,
            GOVERNED,
            GOVERNED,
            &["bash", "-c", &format!("while :; do curl -s -m 2 -o /dev/null {url}; done")],
        )
        .unwrap();
    // Stop only once the long transfer is flowing through Tor.
    let t0 = Instant::now();
    loop {
        let streams: serde_json::Value = serde_json::from_str(&s.ok(&["streams", "--json"])).unwrap();
        // Only the long transfer moves this much: the hammer fetches a 32-byte page.
        let flowing = streams.as_array().unwrap().iter().any(|st| st["bytes_down"].as_u64().unwrap_or(0) > 100_000);
        if flowing {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the long transfer never flowed through Tor: {streams}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cap = Capture::start(&s.w.inet, &s.w.inet_if).unwrap();
    // The last moment every link of the kill-switch was still pinned.
    let links = s.w.pin_dir.join("links");
    let count = move || std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
    let full = count();
    assert!(full > 0);
    let watcher = std::thread::spawn(move || {
        let mut last_full = now_epoch();
        while count() == full {
            last_full = now_epoch();
            std::thread::sleep(Duration::from_millis(2));
        }
        last_full
    });
    let t0 = Instant::now();
    s.ok(&["stop"]);
    let stop_took = t0.elapsed();
    let last_full = watcher.join().unwrap();
    // The long transfer's socket was destroyed, not left connected to a dead proxy: no
    // socket of the host is connected to the TransPort in any state (without SOCK_DESTROY,
    // the daemon's exit would leave it in CLOSE-WAIT). Data it had buffered may still be
    // read by curl, then it gets ECONNABORTED.
    let ss = ttp_tests::run(s.w.host.cmd("ss").args(["-Htan", "( dport = :9040 )"])).unwrap();
    let left = text(&ss.stdout);
    assert!(left.trim().is_empty(), "sockets still connected to the TransPort after stop:\n{left}\n{}", s.log());
    assert!(big.child.try_wait().unwrap().is_none_or(|st| !st.success()), "the transfer finished normally?");
    // After the stop the host is direct again: the hammer's connections now show up (the
    // positive control for the capture).
    std::thread::sleep(Duration::from_secs(1));
    let packets = cap.stop().unwrap();
    let syns: Vec<&String> = matching(&packets, &format!("> {WEB}.80: Flags [S]"));
    assert!(!syns.is_empty(), "no direct connection after the stop: the hammer or the capture did not work");
    let early: Vec<&&String> = syns.iter().filter(|p| time_of(p) <= last_full).collect();
    assert!(early.is_empty(), "direct connections while the kill-switch was in place: {early:#?}");
    let log = s.log();
    // The root monitor destroys them once the unprivileged daemon has let go.
    let destroyed: usize = log
        .lines()
        .find_map(|l| {
            l.split("ttp::monitor: ").nth(1)?.strip_suffix(" application sockets through ttp destroyed")?.parse().ok()
        })
        .unwrap_or(0);
    assert!(destroyed >= 1, "no application socket destroyed at stop:\n{log}");
    eprintln!("stop took {stop_took:.1?} under load");
}

#[test]
fn exec_runs_one_command_through_tor_or_around_it() {
    let s = Session::start(&[]);
    let outside = s.w.cgroups.child("outside").unwrap();
    let host_addr = s.seen_as(&outside, &[]);
    assert!(host_addr.starts_with("198.19."), "an ungoverned curl is seen as {host_addr}");
    let ttp = ttp_tests::bin("ttp");
    let ttp = ttp.to_str().unwrap();
    let rt = s.state.join("run");
    let rt = rt.to_str().unwrap();
    let via_tor = s.seen_as(&outside, &[ttp, "exec", "--tor", "--runtime-dir", rt, "--"]);
    assert!(exits().contains(&via_tor), "`ttp exec --tor` is seen as {via_tor}, not an exit");
    // Inside the governed cgroup, --direct goes around Tor.
    assert!(exits().contains(&s.seen_as(&s.w.governed, &[])));
    let direct = s.seen_as(&s.w.governed, &[ttp, "exec", "--direct", "--runtime-dir", rt, "--"]);
    assert_eq!(direct, host_addr, "`ttp exec --direct` is not direct");
    // The per-command cgroups are gone with their commands.
    let left: Vec<_> =
        std::fs::read_dir(s.w.governed.path.join("ttp.tor")).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert!(left.is_empty(), "{left:?}");
    drop(outside);
}

#[test]
fn check_leak_passes_every_probe_and_restart_keeps_the_options() {
    let s = Session::start(&[]);
    let out = s.ok(&["check-leak", "-v"]);
    eprintln!("{out}");
    let probes = [
        "dns",
        "tcp",
        "udp",
        "quic",
        "ipv6",
        "v4-mapped",
        "dot",
        "doh",
        "tfo",
        "discovery",
        "icmp",
        "frames",
        "exit-v4",
    ];
    for probe in probes {
        assert!(out.lines().any(|l| l.starts_with("PASS") && l.contains(&format!(" {probe} "))), "{probe}:\n{out}");
    }
    assert!(out.contains("dns_udp_redirected +1") && out.contains("udp_refused +1"), "{out}");
    // The check endpoint, asked as an application asks, saw a Tor exit; there is no IPv6
    // endpoint on this network, and the probe says so rather than passing.
    assert!(out.lines().any(|l| l.starts_with("SKIP") && l.contains("exit-v6") && l.contains("over IPv6")), "{out}");
    let before = s.lock().unwrap();
    s.ok(&["restart"]);
    let after = s.lock().unwrap();
    assert_ne!(before["pid"], after["pid"]);
    assert_eq!(before["args"], after["args"]);
    s.warm_up();
    // Once set up, every thread of the daemon is the service user with no capability left
    // (CAP_BPF alone on kernels before 5.19, which need it to use a map descriptor; this
    // kind of machine runs 6.x), and it still serves: the fetch above went through Tor.
    let caps = format!("{:016x}", ttp::privs::daemon_keep());
    let pid = s.pid();
    let uid = ttp_tests::SERVICE_UID.to_string();
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().trim().to_string();
        assert_eq!(
            field("Uid:").split_whitespace().collect::<Vec<_>>(),
            [uid.as_str(); 4],
            "thread {:?}",
            t.file_name()
        );
        assert_eq!(
            field("Gid:").split_whitespace().collect::<Vec<_>>(),
            [uid.as_str(); 4],
            "thread {:?}",
            t.file_name()
        );
        assert_eq!(field("CapEff:"), caps, "thread {:?}: {status}", t.file_name());
        assert_eq!(field("CapPrm:"), caps, "thread {:?}", t.file_name());
        assert_eq!(field("CapBnd:"), caps, "thread {:?}", t.file_name());
        assert_eq!(field("NoNewPrivs:"), "1", "thread {:?}", t.file_name());
        threads += 1;
    }
    assert!(threads > 1, "the daemon runs more than one thread");
    // Arti's state is the service user's; the root monitor that finishes a stop waits.
    let owner = |p: &std::path::Path| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap());
    assert_eq!(owner(&s.state), ttp_tests::SERVICE_UID);
    let monitor = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let monitor = monitor
        .split_whitespace()
        .find(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "ttp-monitor"));
    let monitor = monitor.unwrap_or_else(|| panic!("no ttp-monitor among the daemon's children"));
    let status = std::fs::read_to_string(format!("/proc/{monitor}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")), "{status}");
    let logs = s.ok(&["logs", "--no-follow", "-n", "500"]);
    assert!(logs.contains("ready after"), "{logs}");
}
