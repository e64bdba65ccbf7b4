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

/// Makes a container's network as Podman and Docker make it: a namespace `ns` whose
/// `eth0` is a veth into the bridge `bridge` (`gw`/24 on the host side, `.2` inside), its
/// default route through the bridge and its resolver the bridge's address (podman's
/// aardvark-dns listens there). The host must forward, as with a container engine.
fn container_net(b: &Booted, ns: &str, bridge: &str, net: &str) {
    b.ok(&format!(
        "set -e; ip link add {bridge} type bridge; ip addr add {net}.1/24 dev {bridge}; ip link set {bridge} up; \
         ip netns add {ns}; ip link add v{ns} type veth peer name eth0 netns {ns}; \
         ip link set v{ns} master {bridge} up; ip -n {ns} addr add {net}.2/24 dev eth0; \
         ip -n {ns} link set eth0 up; ip -n {ns} link set lo up; ip -n {ns} route add default via {net}.1; \
         mkdir -p /etc/netns/{ns}; echo 'nameserver {net}.1' > /etc/netns/{ns}/resolv.conf"
    ))
    .unwrap();
}

/// A container on a macvlan of the uplink (Docker's `macvlan` network driver): an address
/// of its own on the uplink's subnet, its packets leaving through the uplink without
/// passing the host's routing. Returns its address.
fn macvlan_container(b: &Booted, ns: &str) -> String {
    let uplink = b.ok(&format!("ip -4 -o addr show dev {}", ttp_tests::UPLINK)).unwrap();
    let addr = uplink.split_whitespace().nth(3).expect("the uplink's address");
    let (host, len) = addr.split_once('/').unwrap();
    let net = host.rsplit_once('.').unwrap().0;
    let (mine, gw) = (format!("{net}.3"), format!("{net}.1"));
    b.ok(&format!(
        "set -e; ip netns add {ns}; ip link add mv{ns} link {up} type macvlan mode bridge; \
         ip link set mv{ns} netns {ns}; ip -n {ns} link set mv{ns} name eth0; \
         ip -n {ns} addr add {mine}/{len} dev eth0; ip -n {ns} link set eth0 up; ip -n {ns} link set lo up; \
         ip -n {ns} route add default via {gw}",
        up = ttp_tests::UPLINK
    ))
    .unwrap();
    mine
}

/// `curl URL` by root inside the container `ns`: a process of the booted system (a
/// transient unit, governed like a container engine's), in the container's namespace.
fn container_curl(b: &Booted, ns: &str, url: &str) -> String {
    let out = b.run_as(0, &["ip", "netns", "exec", ns, "curl", "-s", "-m", "10", url]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn containers_behind_a_gateway_bridge_reach_the_internet_only_through_tor_and_nothing_without_ttp() {
    let (b, w) = installed();
    // Two containers: one on a bridge ttp is told is a gateway, one on a bridge it is not.
    container_net(&b, "ctr", "ttpbr0", "10.88.0");
    container_net(&b, "ctr2", "ttpbr1", "10.89.0");
    // A container engine turns forwarding on (the booted system's namespace is the world's host).
    w.host.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]).status().unwrap();
    // A third, on a macvlan of the uplink: no bridge, no gateway program on its way.
    let mac = macvlan_container(&b, "ctr3");
    let conf = std::fs::read_to_string(b.path("/etc/ttp/ttp.toml")).unwrap();
    std::fs::write(b.path("/etc/ttp/ttp.toml"), format!("{conf}gateway = [\"ttpbr0\"]\n")).unwrap();
    let by_addr = format!("http://{WEB}/index.txt");
    let from = |net: &str| format!("IP {net}.2.");

    // The control: without ttp both containers' connections are forwarded to the internet.
    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();
    container_curl(&b, "ctr", &by_addr);
    container_curl(&b, "ctr2", &by_addr);
    // The macvlan's own address is on the uplink's subnet: it gets the page directly.
    let t0 = Instant::now();
    while container_curl(&b, "ctr3", &by_addr) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(10), "the control: the macvlan container got no page");
        std::thread::sleep(Duration::from_millis(300));
    }
    let pkts = cap.stop().unwrap();
    for net in ["10.88.0", "10.89.0"] {
        assert!(!matching(&pkts, &from(net)).is_empty(), "the control: {net}.2 was not forwarded: {pkts:#?}");
    }
    let mac_out = format!("IP {mac}.");
    assert!(!matching(&pkts, &mac_out).is_empty(), "the control: nothing from {mac}: {pkts:#?}");

    b.ok("systemctl enable --now ttp").unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&b)));
    wait_for_tor(&b);
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    // The container on the gateway bridge: by name (its resolver is the bridge's address,
    // answered by the DNSPort) and by address, through Tor.
    let t0 = Instant::now();
    while container_curl(&b, "ctr", &format!("http://{NAME}/index.txt")) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(60), "the container got no page through Tor\n{}", journal(&b));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(container_curl(&b, "ctr", &by_addr), PAGE);
    let pkts = cap.stop().unwrap();
    let leaked = matching(&pkts, &from("10.88.0"));
    assert!(leaked.is_empty(), "the container's packets left the host: {leaked:#?}");
    assert_only_relay_traffic(&pkts);
    // The containers on a bridge that is no gateway and on the macvlan reach nothing, by
    // name or address: what they send is not forwarded out, and the uplink's kill-switch
    // drops what the macvlan puts on it.
    let pkts = nothing_leaves(&b, &w, &["ctr2", "ctr3"], &mac, "with ttp running");
    assert_only_relay_traffic(&pkts);
    let streams = b.ok("ttp streams --recent --json").unwrap();
    assert!(streams.contains("gateway client 10.88.0.2"), "{streams}");

    // ttp killed, and not restarted: the containers reach nothing at all.
    kill_for_good(&b);
    let pkts = nothing_leaves(&b, &w, &["ctr", "ctr2", "ctr3"], &mac, "after the kill");
    assert!(matching(&pkts, &format!("> {WEB}.")).is_empty(), "something reached the web server: {pkts:#?}");
}

/// `podman run` of `argv` in a fresh container on Podman's default network (netavark's
/// bridge podman0), started as root by systemd in the booted system, as a service would;
/// its output. The container's root is the system's own /usr (`--rootfs`: no image).
fn podman(b: &Booted, argv: &[&str]) -> String {
    let mut full = vec!["podman", "run", "--rm", "--network", "podman", "--rootfs", "/srv/ctr"];
    full.extend_from_slice(argv);
    let out = b.run_as(0, &full).unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr).trim())
}

/// Debian's Podman in the booted system, with the whole host governed and Podman's bridge
/// named as a gateway interface before it exists (Podman makes podman0 with its first
/// container and deletes it with its last): a container's `curl` by name and by address
/// goes through Tor only, a port a container publishes answers a LAN machine, and with
/// ttp killed no container reaches anything. The control first: without ttp, the same
/// container gets the page directly (Podman masquerades it out of the uplink).
#[test]
fn podman_containers_reach_the_internet_by_name_only_through_tor_and_nothing_without_ttp() {
    let (b, w) = installed();
    let conf = std::fs::read_to_string(b.path("/etc/ttp/ttp.toml")).unwrap();
    std::fs::write(b.path("/etc/ttp/ttp.toml"), format!("{conf}gateway = [\"podman0\"]\n")).unwrap();
    // The containers' root: the system's /usr, read-only, and the server the LAN reaches.
    std::fs::copy(ttp_tests::bin("testkit"), b.path("/usr/local/bin/testkit")).unwrap();
    b.ok("set -e; mkdir -p /srv/ctr/usr /srv/ctr/etc /srv/ctr/proc /srv/ctr/sys /srv/ctr/dev /srv/ctr/tmp /srv/ctr/run; \
          cd /srv/ctr; for d in bin lib lib64 sbin; do ln -s usr/$d $d; done; \
          mount --bind /usr /srv/ctr/usr; mount -o remount,bind,ro /srv/ctr/usr")
        .unwrap();
    let by_addr = format!("http://{WEB}/index.txt");
    let by_name = format!("http://{NAME}/index.txt");
    let curl = |url: &str| podman(&b, &["curl", "-sS", "-m", "10", url]);

    // The control: Podman's network works, and without ttp its container goes direct.
    let cap = Capture::start_filtered(&w.inet, &w.inet_if, &["tcp"]).unwrap();
    let got = curl(&by_addr);
    let pkts = cap.stop().unwrap();
    assert_eq!(got, PAGE, "the control: no page without ttp");
    assert!(!matching(&pkts, &format!("> {WEB}.80")).is_empty(), "the control was not captured: {pkts:#?}");

    b.ok("systemctl enable --now ttp").unwrap_or_else(|e| panic!("{e:#}\n{}", journal(&b)));
    wait_for_tor(&b);
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    let t0 = Instant::now();
    loop {
        let got = curl(&by_name);
        if got == PAGE {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no page by name through Tor: {got}\n{}", journal(&b));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(curl(&by_addr), PAGE, "by address");
    let pkts = cap.stop().unwrap();
    assert_only_relay_traffic(&pkts);
    assert!(journal(&b).contains("gateway interface podman0 appeared"), "{}", journal(&b));
    let streams = b.ok("ttp streams --recent --json").unwrap();
    assert!(streams.contains("gateway client 10.88."), "{streams}");

    // A published port answers a LAN machine (Podman's DNAT, then back through the bridge).
    let lan = "192.168.93";
    w.host.ip(&["addr", "add", &format!("{lan}.1/24"), "dev", ttp_tests::UPLINK]).unwrap();
    w.inet.ip(&["addr", "add", &format!("{lan}.2/24"), "dev", &w.inet_if]).unwrap();
    b.ok("podman run -d --name web -p 8080:80 --network podman --rootfs /srv/ctr \
          /usr/local/bin/testkit serve-tcp 0.0.0.0:80")
        .unwrap();
    let kit = ttp_tests::bin("testkit").display().to_string();
    let t0 = Instant::now();
    loop {
        let out = w.inet.cmd(&kit).args(["connect", &format!("{lan}.1:8080")]).output().unwrap();
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got.starts_with("DIRECT 10.88.") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the published port did not answer the LAN: {got}");
        std::thread::sleep(Duration::from_millis(300));
    }
    b.ok("podman rm -f web").unwrap();

    // ttp killed, and not restarted: no container reaches anything, by name or address.
    kill_for_good(&b);
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    for url in [&by_addr, &by_name] {
        assert_ne!(curl(url), PAGE, "after the kill: {url}");
    }
    let pkts = cap.stop().unwrap();
    assert!(matching(&pkts, &format!("> {WEB}.")).is_empty(), "something reached the web server: {pkts:#?}");
    assert!(matching(&pkts, "> 192.0.2.53.").is_empty(), "a query reached the resolver: {pkts:#?}");
}

/// Kills ttp (its daemon and monitor: `systemctl kill`) and keeps systemd from starting it
/// again; returns once it is dead.
fn kill_for_good(b: &Booted) {
    b.ok("mkdir -p /run/systemd/system/ttp.service.d && printf '[Service]\\nRestart=no\\n' \
          > /run/systemd/system/ttp.service.d/test.conf && systemctl daemon-reload")
        .unwrap();
    b.ok("systemctl kill --signal=KILL ttp").unwrap();
    let t0 = Instant::now();
    while b.ok("systemctl is-active ttp || true").unwrap() == "active" {
        assert!(t0.elapsed() < Duration::from_secs(10), "ttp did not die");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each of `containers` fetches by address and by name and gets nothing, and the uplink
/// capture holds no packet from any container (`mac` is the macvlan container's
/// address); returns the capture.
fn nothing_leaves(b: &Booted, w: &World, containers: &[&str], mac: &str, when: &str) -> Vec<String> {
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    for ns in containers {
        for url in [format!("http://{WEB}/index.txt"), format!("http://{NAME}/index.txt")] {
            assert_ne!(container_curl(b, ns, &url), PAGE, "{ns} {when}: {url}");
        }
    }
    let pkts = cap.stop().unwrap();
    for from in ["IP 10.88.0.2.", "IP 10.89.0.2.", &format!("IP {mac}.")] {
        let leaked = matching(&pkts, from);
        assert!(leaked.is_empty(), "a container's packets left the host {when}: {leaked:#?}");
    }
    pkts
}
