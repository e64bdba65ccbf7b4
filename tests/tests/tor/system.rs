//! ttp as people run it (issue 18): the Debian package installed with apt on a booted
//! Debian 12, run by systemd, with systemd-resolved as the system's resolver. The
//! container's network namespace is a test world on the private Tor network, so the
//! uplink capture sees everything the booted system sends.

use ttp_tests::booted::{debian_package, Booted};

use super::*;

const USER: u32 = 1000;
const NAME: &str = "www.example.com";

/// A booted Debian on the private network with the package installed and configured
/// (not started).
fn installed() -> (Booted, World) {
    let net = net();
    let w = World::with_testnet(net).expect("test world on the Tor network");
    let b = Booted::boot(&w).expect("booting Debian");
    let deb = debian_package().expect("the package of this build");
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(&deb, b.path("/root").join(&name)).unwrap();
    b.ok(&format!("apt-get install -y /root/{name}")).expect("apt installs the package");
    // Point the installed config at the private network (a conffile: written after the install).
    std::fs::copy(net.arti_toml(), b.path("/etc/ttp/arti.toml")).unwrap();
    let conf = std::fs::read_to_string(b.path("/etc/ttp/ttp.toml")).unwrap();
    std::fs::write(
        b.path("/etc/ttp/ttp.toml"),
        format!("{conf}\narti-config = \"/etc/ttp/arti.toml\"\ncheck-url = \"{}\"\n", ttp_tests::testnet::CHECK_URL),
    )
    .unwrap();
    (b, w)
}

/// `curl` as the user, through whatever the system does with it.
fn user_curl(b: &Booted, url: &str) -> String {
    let out = b.run_as(USER, &["curl", "-s", "-m", "10", url]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `getent ahostsv4 NAME` as the user: glibc asks systemd-resolved (nss-resolve, or its stub
/// at 127.0.0.53), which asks its upstream server.
fn user_getent(b: &Booted, name: &str) -> String {
    let out = b.run_as(USER, &["getent", "ahostsv4", name]).unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn the_debian_package_on_a_booted_debian_torifies_the_system_and_its_resolver() {
    let (b, w) = installed();
    assert!(b.ok("getent passwd ttp").is_ok(), "postinst made no system user");
    assert_eq!(
        b.ok("systemctl is-enabled ttp || true").unwrap(),
        "disabled",
        "the package must not start ttp by itself"
    );

    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    // Type=notify: enable --now returns once the daemon said READY.
    let t0 = Instant::now();
    b.ok("systemctl enable --now ttp").unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&b)));
    eprintln!("systemctl enable --now ttp returned after {:.1?}", t0.elapsed());
    assert_eq!(b.ok("systemctl is-active ttp").unwrap(), "active");
    wait_for_tor(&b);
    // The system's resolver (resolved, asking 192.0.2.53) goes through the DNSPort: the
    // exit's resolver answers, and nothing reaches 192.0.2.53 from the host.
    assert_eq!(user_getent(&b, NAME), WEB, "{}", journal(&b));
    let resolvectl = b.ok(&format!("resolvectl query --cache=no {NAME}")).unwrap();
    assert!(resolvectl.contains(WEB), "{resolvectl}");
    // A .onion name gets an address of the DNSPort's virtual range.
    let onion = user_getent(&b, &net().onion);
    assert!(onion.starts_with("10."), "no virtual address for {}: {onion:?}", net().onion);
    let pkts = cap.stop().unwrap();
    assert!(matching(&pkts, &format!("> {}.53:", ttp_tests::testnet::DNS_V4)).is_empty(), "DNS left the host directly");
    assert_only_relay_traffic(&pkts);
    let log = journal(&b);
    assert!(log.contains("ready"), "the journal has no ttp log:\n{log}");

    // A stop leaves no broken DNS behind: resolved's own server answers again, directly.
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    b.ok("systemctl stop ttp").unwrap();
    assert_eq!(user_getent(&b, "after.example.com"), WEB, "names do not resolve after stop");
    assert_eq!(user_curl(&b, &format!("http://{WEB}/index.txt")), PAGE);
    let pkts = cap.stop().unwrap();
    assert!(
        !matching(&pkts, &format!("> {}.53:", ttp_tests::testnet::DNS_V4)).is_empty(),
        "after stop, resolved did not ask its server directly: {pkts:#?}"
    );
    assert!(std::fs::read_dir(&b.bpffs).unwrap().all(|e| e.unwrap().file_name() != "ttp"), "pins left after stop");
}

/// `journalctl -u ttp` of the booted system.
fn journal(b: &Booted) -> String {
    b.sh("journalctl -u ttp --no-pager -o cat")
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits until `line` is in ttp's journal (10 s at most): journald files a unit's
/// output asynchronously, so it may land after the command that printed it returned.
fn wait_journal(b: &Booted, line: &str) {
    let t0 = Instant::now();
    while !journal(b).contains(line) {
        assert!(t0.elapsed() < Duration::from_secs(10), "`{line}` is not in the journal:\n{}", journal(b));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Installed, enabled and started, with one fetch through Tor done.
fn running() -> (Booted, World) {
    let (b, w) = installed();
    b.ok("systemctl enable --now ttp").unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&b)));
    wait_for_tor(&b);
    (b, w)
}

/// Waits until the user's fetch goes through Tor (60 s at most).
fn wait_for_tor(b: &Booted) {
    let t0 = Instant::now();
    while user_curl(b, &format!("http://{WEB}/index.txt")) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(60), "no fetch through Tor within 60 s\n{}", journal(b));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn systemctl_restart_and_kill_never_open_the_host_and_stop_opens_it_without_a_leak() {
    let (b, w) = running();
    // An application that connects all the time, as the user.
    let url = format!("http://{WEB}/index.txt");
    b.start_as(USER, "hammer", &["bash", "-c", &format!("while :; do curl -s -m 2 -o /dev/null {url}; done")]).unwrap();
    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();

    // A restart (also what a package upgrade does): the old daemon's kill-switch holds
    // until the new daemon has taken it over.
    let t0 = Instant::now();
    b.ok("systemctl restart ttp").unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&b)));
    eprintln!("systemctl restart ttp returned after {:.1?}", t0.elapsed());
    wait_for_tor(&b);
    wait_journal(&b, "the kill-switch stays until the new daemon takes it over");

    // The daemon dies (SIGKILL to the main process only: a crash), its root monitor
    // lives and holds the host closed; Restart= brings ttp back. (systemd.service(5) says
    // ExecStop runs also then; bookworm's systemd 252 runs none. One that does finds
    // $MAINPID unset, and `ttp stop --systemd` keeps the host closed.)
    b.ok("systemctl kill --kill-whom=main --signal=KILL ttp").unwrap();
    wait_restarts(&b, 1);
    wait_for_tor(&b);
    // SIGKILL to every process of the unit, the root monitor included: the pins alone
    // hold the host closed until systemd has restarted ttp.
    b.ok("systemctl kill --signal=KILL ttp").unwrap();
    wait_restarts(&b, 2);
    wait_for_tor(&b);
    let log = journal(&b);
    // The refusals during the lockdowns are counted, not logged one line each.
    assert!(!log.contains("refused a governed"), "the journal logs every refused connect:\n{log}");

    let pkts = cap.stop().unwrap();
    assert!(
        matching(&pkts, &format!("> {WEB}.80: Flags [S]")).is_empty(),
        "the hammer connected directly during a restart or after the kill:\n{}\n{log}",
        matching(&pkts, &format!("> {WEB}.80: Flags [S]")).len()
    );
    assert_only_relay_traffic(&pkts);

    // `systemctl stop` with the loop still running: nothing direct while any link of the
    // kill-switch is pinned; afterwards the loop's connections go direct (the control).
    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();
    let links = b.bpffs.join("ttp/links");
    let count = move || std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
    let full = count();
    assert!(full > 0, "no pinned links in the booted system's bpffs");
    let watcher = std::thread::spawn(move || {
        let mut last_full = ttp_tests::now_epoch();
        while count() == full {
            last_full = ttp_tests::now_epoch();
            std::thread::sleep(Duration::from_millis(2));
        }
        last_full
    });
    b.ok("systemctl stop ttp").unwrap();
    let last_full = watcher.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pkts = cap.stop().unwrap();
    let syns = matching(&pkts, &format!("> {WEB}.80: Flags [S]"));
    assert!(!syns.is_empty(), "no direct connection after the stop: the loop or the capture did not work");
    let early: Vec<_> = syns.iter().filter(|p| ttp_tests::time_of(p) <= last_full).collect();
    assert!(early.is_empty(), "direct connections while the kill-switch was in place: {early:#?}");
}

/// Waits until systemd has restarted ttp `n` times in all (30 s at most).
fn wait_restarts(b: &Booted, n: u32) {
    let t0 = Instant::now();
    while b.ok("systemctl show --property=NRestarts --value ttp").unwrap().parse::<u32>().unwrap() < n {
        assert!(t0.elapsed() < Duration::from_secs(30), "systemd did not restart ttp\n{}", journal(b));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn systemctl_reload_applies_bypass_changes_live_and_names_what_needs_a_restart() {
    let (b, w) = running();
    let pid = b.ok("systemctl show --property=MainPID --value ttp").unwrap();
    let conf = std::fs::read_to_string(b.path("/etc/ttp/ttp.toml")).unwrap();
    let url = format!("http://{WEB}/index.txt");
    let direct_syns = |pkts: &[String]| matching(pkts, &format!("> {WEB}.80: Flags [S]")).len();

    // The user is let through directly by a reload: their fetch leaves the host as itself.
    std::fs::write(b.path("/etc/ttp/ttp.toml"), format!("{conf}bypass-uid = [{USER}]\n")).unwrap();
    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();
    b.ok("systemctl reload ttp").unwrap();
    // ExecReload's output reaches the journal asynchronously, after systemctl returns.
    wait_journal(&b, "applied: --bypass-uid");
    assert_eq!(user_curl(&b, &url), PAGE);
    let pkts = cap.stop().unwrap();
    assert!(direct_syns(&pkts) >= 1, "the bypassed user's fetch did not go direct: {pkts:#?}");

    // Taken back: a connection the user holds open directly is closed, and their next
    // fetch goes through Tor again.
    b.start_as(
        USER,
        "held",
        &["curl", "-s", "-o", "/dev/null", "--limit-rate", "1k", &format!("http://{WEB}/50M.bin")],
    )
    .unwrap();
    let t0 = Instant::now();
    while direct_open(&b).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the bypassed download did not connect directly");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(b.path("/etc/ttp/ttp.toml"), &conf).unwrap();
    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();
    let out = b.ok("ttp reload").unwrap();
    assert!(out.contains("applied: --bypass-uid"), "{out}");
    assert!(out.contains("direct connections that the new policy governs were closed"), "{out}");
    assert_eq!(user_curl(&b, &url), PAGE);
    std::thread::sleep(Duration::from_secs(1));
    let pkts = cap.stop().unwrap();
    assert_eq!(direct_syns(&pkts), 0, "a fetch went direct after the bypass was taken back: {pkts:#?}");
    assert!(direct_open(&b).is_empty(), "the direct download survived the reload ({out}): {}", direct_open(&b));

    // Options read only at start are named, not half-applied; the daemon is the same one.
    std::fs::write(b.path("/etc/ttp/ttp.toml"), format!("{conf}socks-port = 9155\n")).unwrap();
    let out = b.ok("ttp reload").unwrap();
    assert!(out.contains("needs a restart: --socks-port"), "{out}");
    assert_eq!(b.ok("systemctl show --property=MainPID --value ttp").unwrap(), pid, "reload restarted the daemon");
    // A config that does not parse changes nothing and says where.
    std::fs::write(b.path("/etc/ttp/ttp.toml"), "bypass-uid = [\n").unwrap();
    let out = b.sh("ttp reload").unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line"), "{out:?}");
    assert_eq!(user_curl(&b, &url), PAGE);
}

/// The booted system's established TCP connections to the web server itself (not to
/// the TransPort: a redirected connection's peer is 127.0.0.1).
fn direct_open(b: &Booted) -> String {
    b.ok(&format!("ss -Htn state established dst {WEB}:80")).unwrap()
}

#[test]
fn after_a_reboot_nothing_leaves_before_ttp_and_ttp_comes_up() {
    let (mut b, w) = installed();
    // A service that fetches as soon as the network is up, as many do.
    std::fs::write(
        b.path("/etc/systemd/system/early-fetch.service"),
        format!(
            "[Unit]\nAfter=network.target\n[Service]\nUser={USER}\n\
             ExecStart=/bin/sh -c 'while :; do curl -s -m 2 http://{WEB}/index.txt; echo; sleep 0.2; done'\n\
             [Install]\nWantedBy=multi-user.target\n"
        ),
    )
    .unwrap();
    b.ok("systemctl daemon-reload && systemctl enable ttp early-fetch").unwrap();
    assert_eq!(b.ok("systemctl is-enabled ttp-lock").unwrap(), "enabled", "enabling ttp enables its boot kill-switch");

    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();
    b.reboot(&w).unwrap();
    assert_eq!(b.ok("systemctl is-active ttp").unwrap(), "active", "{}", journal(&b));
    wait_for_tor(&b);
    let lock_log = b.ok("journalctl -b -u ttp-lock -o cat --no-pager").unwrap();
    assert!(lock_log.contains("kill-switch attached in lockdown"), "{lock_log}");
    // The service's fetches work once ttp is up (through Tor: the capture says).
    let t0 = Instant::now();
    while !b.ok("journalctl -b -u early-fetch -o cat --no-pager").unwrap().contains(PAGE) {
        assert!(t0.elapsed() < Duration::from_secs(30), "the early service never fetched");
        std::thread::sleep(Duration::from_millis(300));
    }
    let pkts = cap.stop().unwrap();
    let direct = matching(&pkts, &format!("> {WEB}.80: Flags [S]"));
    assert!(direct.is_empty(), "{} direct connections during the boot:\n{}", direct.len(), journal(&b));
    assert_only_relay_traffic(&pkts);
}

#[test]
fn per_application_mode_keeps_names_away_from_systemd_resolved() {
    let (b, w) = installed();
    // Only what `ttp exec --tor` starts is governed: a subtree of its own.
    b.ok("mkdir -p /sys/fs/cgroup/unified/ttp-apps").unwrap();
    let conf = std::fs::read_to_string(b.path("/etc/ttp/ttp.toml")).unwrap();
    std::fs::write(b.path("/etc/ttp/ttp.toml"), format!("{conf}cgroup = \"/sys/fs/cgroup/unified/ttp-apps\"\n"))
        .unwrap();
    b.ok("systemctl start ttp").unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&b)));
    // glibc asks resolved over its socket first (nss-resolve), as on Ubuntu and Fedora.
    let nss = b.ok("grep ^hosts: /etc/nsswitch.conf").unwrap();
    assert!(nss.contains("resolve"), "nss-resolve is not configured: {nss}");
    let exec = |argv: &[&str]| {
        let mut v = vec!["ttp", "exec", "--tor", "--user", "user", "--"];
        v.extend_from_slice(argv);
        let out = b.run_as(0, &v).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let t0 = Instant::now();
    while exec(&["curl", "-s", "-m", "10", &format!("http://{WEB}/index.txt")]) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(60), "no fetch through Tor within 60 s\n{}", journal(&b));
        std::thread::sleep(Duration::from_millis(500));
    }

    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["port", "53"]).unwrap();
    // The control: outside ttp exec, resolved asks its server directly.
    assert_eq!(user_getent(&b, "control.example.com"), WEB);
    // Through ttp exec --tor: the name lookup and the fetch by name go through Tor.
    let got = exec(&["getent", "ahostsv4", "private.example.com"]);
    assert!(got.starts_with(WEB), "{got:?}\n{}", journal(&b));
    // IPv4: the private network's resolver gives names an IPv6 address no host has.
    assert_eq!(exec(&["curl", "-4", "-s", "-m", "10", "http://private2.example.com/index.txt"]), PAGE);
    let pkts = cap.stop().unwrap();
    assert!(!matching(&pkts, "control.example.com").is_empty(), "the control lookup was not captured: {pkts:#?}");
    let leaked: Vec<_> =
        pkts.iter().filter(|p| p.contains("private.example.com") || p.contains("private2.example.com")).collect();
    assert!(leaked.is_empty(), "a governed program's names left the host in the clear: {leaked:#?}");
}
