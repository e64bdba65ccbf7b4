//! The kernel datapath, end to end: real eBPF programs on the running kernel, in network
//! namespaces and cgroups each test makes for itself. Every property is proven on the
//! uplink capture (what actually left the host), each with a positive control in the same
//! capture so that a broken capture cannot make a leak test pass.
//!
//! Needs root (CI runs as root). The probe daemon stands in for the Tor services: its
//! TransPort answers `ORIG <original destination>`, its DNSPort answers every A query with
//! 198.18.0.7.

use std::time::Duration;

use ttp_tests::{addr, matching, Capture, World, INET_IF, UPLINK};

const GOVERNED: u32 = 1001;
const BYPASS_UID: u32 = 2001;
const BYPASS_GID: u32 = 3001;
const IN_BYPASS_GROUP: u32 = 1002;
const ANSWER: &str = "198.18.0.7";

fn world() -> World {
    assert!(nix::unistd::geteuid().is_root(), "the datapath tests need root (they load eBPF and make namespaces)");
    World::new().expect("building the test world")
}

fn bypass_args(w: &World) -> Vec<String> {
    vec![
        "--bypass-uid".into(),
        BYPASS_UID.to_string(),
        "--bypass-gid".into(),
        BYPASS_GID.to_string(),
        "--bypass-cgroup".into(),
        w.bypass.path.display().to_string(),
        "--doh".into(),
        addr::DOH_V4.into(),
    ]
}

fn start(w: &World, extra: &[&str]) -> ttp_tests::Daemon {
    let mut args = bypass_args(w);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    w.start_probe(&refs).expect("starting the probe daemon")
}

/// 1 if the kernel let the datapath attach its BPF LSM program (socket_create), else 0:
/// the link counts depend on it.
fn lsm_link(w: &World) -> usize {
    usize::from(w.pin_dir.join("links").join("socket_create").exists())
}

fn s4(port: u16) -> String {
    format!("{}:{port}", addr::SERVER_V4)
}
fn s6(port: u16) -> String {
    format!("[{}]:{port}", addr::SERVER_V6)
}

#[test]
fn tcp_connects_reach_the_transport_with_their_original_destination() {
    let w = world();
    let _d = start(&w, &[]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();

    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("ORIG {}", s4(80)));
    assert_eq!(w.governed(GOVERNED, &["connect", &s6(80)]), format!("ORIG {}", s6(80)));
    // An IPv6 socket asking for an IPv4-mapped address skips connect4: connect6 handles it.
    let mapped = format!("[::ffff:{}]:80", addr::SERVER_V4);
    assert_eq!(w.governed(GOVERNED, &["connect", &mapped]), format!("ORIG {}", s4(80)));
    // getpeername shows the application the address it asked for.
    assert_eq!(w.governed(GOVERNED, &["peername", &s4(80)]), format!("PEER {}", s4(80)));
    // Positive control in the same capture: an exempt uid goes direct and is seen.
    assert_eq!(w.governed(BYPASS_UID, &["connect", &s4(80)]), format!("DIRECT {}", s4(80)));

    let pkts = cap.stop().unwrap();
    // Four governed connects and one exempt: exactly one SYN may leave, the control's.
    let syns = matching(&pkts, &format!("> {}.80: Flags [S]", addr::SERVER_V4));
    assert_eq!(syns.len(), 1, "only the exempt connect may leave: {pkts:#?}");
    assert!(matching(&pkts, &format!("> {}.80:", addr::SERVER_V6)).is_empty(), "IPv6 TCP leaked: {pkts:#?}");

    let c = w.counters().unwrap();
    assert!(c["tcp_redirected"] >= 4, "{c:?}");
    assert!(c["exempt_passed"] >= 1, "{c:?}");
}

#[test]
fn dns_over_udp_and_tcp_reaches_the_dns_port_and_dig_accepts_the_reply() {
    let w = world();
    let d = start(&w, &[]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();
    let dig = |server: &str, extra: &[&str]| {
        let mut argv = vec!["dig", "+short", "+tries=1", "+time=2"];
        argv.push(server);
        argv.extend_from_slice(extra);
        let out = w.run_in(&w.governed, GOVERNED, GOVERNED, &argv);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // dig drops UDP replies from an unexpected source: an answer proves recvmsg rewrote it.
    assert_eq!(dig(&format!("@{}", addr::SERVER_V4), &["example.com", "A"]), ANSWER);
    assert_eq!(dig(&format!("@{}", addr::SERVER_V4), &["+tcp", "example.com", "A"]), ANSWER);
    assert_eq!(dig(&format!("@{}", addr::SERVER_V6), &["example.com", "A"]), ANSWER);
    assert_eq!(dig(&format!("@{}", addr::SERVER_V6), &["+tcp", "example.com", "AAAA"]), "2001:db8:ffff::7");
    // A LAN resolver (the home router) and a loopback stub resolver: still the DNSPort,
    // with LAN bypass on (the default).
    assert_eq!(dig(&format!("@{}", addr::LAN_PEER), &["example.com", "A"]), ANSWER);
    assert_eq!(dig("@127.0.0.53", &["example.com", "A"]), ANSWER);
    // Positive control, same capture: an exempt datagram is seen.
    assert!(w.governed(BYPASS_UID, &["udp", &s4(443)]).starts_with("DIRECT"));
    let pkts = cap.stop().unwrap();
    assert_eq!(matching(&pkts, &format!("> {}.443:", addr::SERVER_V4)).len(), 1, "control not captured: {pkts:#?}");
    assert!(matching(&pkts, ".53:").is_empty(), "DNS left the host: {pkts:#?}");

    let c = w.counters().unwrap();
    assert!(c["dns_udp_redirected"] >= 4 && c["dns_tcp_redirected"] >= 2, "{c:?}");
    assert!(c["dns_reply_rewritten"] >= 2, "{c:?}");
    drop(d);
}

#[test]
fn leaky_protocols_never_reach_the_uplink() {
    let w = world();
    let d = start(&w, &[]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();

    // Refused at the socket with a clear errno, so applications fall back.
    assert_eq!(w.governed(GOVERNED, &["udp", &s4(443)]), "ERR EPERM", "QUIC-like UDP");
    assert_eq!(w.governed(GOVERNED, &["udp", &s6(443)]), "ERR EPERM", "QUIC-like UDP over IPv6");
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(853)]), "ERR EPERM", "DNS over TLS");
    assert_eq!(w.governed(GOVERNED, &["connect", &format!("{}:443", addr::DOH_V4)]), "ERR EPERM", "DoH resolver");
    // These bypass the sock_addr hooks; the kill-switches must stop them. Raw and packet
    // sockets need CAP_NET_RAW, so root sends them: root is governed unless allowed.
    let icmp = w.governed(0, &["icmp", &s4(0)]);
    let raw = w.governed(0, &["raw", &s4(0)]);
    let pkt = w.governed(0, &["packet", UPLINK, addr::HOST_V4, &s4(9999)]);
    // Positive controls, same capture: the same sends from the bypass cgroup leave.
    assert_eq!(w.governed(BYPASS_UID, &["udp", &s4(443)]), format!("DIRECT {} FROM {}", s4(443), s4(443)));
    assert_eq!(w.kit(&w.bypass, 0, 0, &["icmp", &s4(0)]), "SENT");
    assert_eq!(w.kit(&w.bypass, 0, 0, &["packet", UPLINK, addr::HOST_V4, &s4(9998)]), "SENT");

    let pkts = cap.stop().unwrap();
    eprintln!("governed icmp: {icmp}, raw: {raw}, packet: {pkt}");
    let to = |p: &str| matching(&pkts, &format!("> {p}:")).len();
    assert_eq!(to(&format!("{}.443", addr::SERVER_V4)), 1, "only the control's datagram may leave: {pkts:#?}");
    assert_eq!(to(&format!("{}.443", addr::SERVER_V6)), 0, "{pkts:#?}");
    assert_eq!(to(&format!("{}.853", addr::SERVER_V4)), 0, "{pkts:#?}");
    assert_eq!(to(&format!("{}.443", addr::DOH_V4)), 0, "{pkts:#?}");
    assert_eq!(to(&format!("{}.9999", addr::SERVER_V4)), 0, "governed packet-socket frame leaked: {pkts:#?}");
    assert_eq!(to(&format!("{}.9998", addr::SERVER_V4)), 1, "control frame not captured: {pkts:#?}");
    let echo = matching(&pkts, &format!("> {}: ICMP echo request", addr::SERVER_V4));
    assert_eq!(echo.len(), 1, "only the exempt echo may leave: {pkts:#?}");
    assert!(matching(&pkts, "ip-proto-253").is_empty(), "raw protocol 253 leaked: {pkts:#?}");

    let c = w.counters().unwrap();
    assert!(c["udp_refused"] >= 2 && c["dot_refused"] >= 1 && c["doh_refused"] >= 1, "{c:?}");
    assert!(c["skb_dropped_icmp"] >= 1 && c["skb_dropped_other"] >= 1, "{c:?}");
    assert!(c["tc_dropped"] >= 1, "{c:?}");
    // Who tried is on record, for `ttp status` and `ttp top`: the refused UDP under the
    // governed uid and cgroup, the dropped ICMP under its socket's owner (root) and cgroup.
    let who = ttp::datapath::ServiceMaps::open_pinned(&w.pin_dir.join("maps")).unwrap().refusals(64);
    let governed = ttp::cgroup::cgroup_id(&w.governed.path).unwrap();
    let by = |counter: &str, uid: u32| {
        who.iter().find(|r| r.0.name() == counter && r.1 == uid && r.2 == governed).map_or(0, |r| r.3)
    };
    assert!(by("udp_refused", GOVERNED) >= 2, "{who:?}");
    assert!(by("skb_dropped_icmp", 0) >= 1, "{who:?}");
    // The programs' aya-log records reach the daemon's tracing output.
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.log().contains("refused a governed connect/send"), "no eBPF log line in:\n{}", d.log());
}

/// Packet sockets write whole frames below the cgroup hooks, and with
/// `PACKET_QDISC_BYPASS` below TC egress too: a governed root process gets none, of any
/// kind. A frame socket opened before start (the LSM cannot refuse it any more) still
/// meets the TC kill-switch, which reads the frame's own type: an IPv4 frame whose socket
/// claims ARP is no link control. The capture runs on the receiving side, which sees
/// bypassed frames too (the exempt controls prove it).
#[test]
fn frame_sockets_of_governed_root_never_put_a_frame_on_the_uplink() {
    let w = world();
    let kit = ttp_tests::bin("testkit");
    let src = addr::HOST_V4;
    // Opened in the governed cgroup before ttp starts, as root, with a spoofed protocol.
    let go = ttp_tests::TempDir::new("frames");
    let go_file = go.0.join("go");
    let go_path = go_file.display().to_string();
    let early_dst = s4(9990);
    let argv = [kit.to_str().unwrap(), "packet-when", &go_path, UPLINK, src, &early_dst, "raw-as-arp"];
    let mut early = w.spawn_in(&w.governed, 0, 0, &argv).unwrap();
    early.wait_line("OPENED", Duration::from_secs(10)).unwrap();
    let d = start(&w, &[]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();
    // With BPF LSM the sockets themselves are refused; without it (this kernel refuses
    // LSM programs: EPERM) the options that skip TC are, and TC reads what each frame is.
    let lsm = lsm_link(&w) == 1;
    for (mode, port) in [("dgram", 9991), ("dgram-bypass", 9992), ("raw-as-arp", 9993), ("raw-as-arp-bypass", 9994)] {
        let got = w.governed(0, &["packet", UPLINK, src, &s4(port), mode]);
        if lsm || mode.ends_with("-bypass") {
            assert_eq!(got, "ERR EPERM", "a governed root packet socket ({mode}):\n{}", d.log());
        }
    }
    std::fs::write(&go_file, "").unwrap();
    // It reports SENT or the error its send met (TC's drop is ENOBUFS): the capture judges.
    let sent = early.wait_line("SENT", Duration::from_secs(10));
    eprintln!("the early socket's send: {sent:?}");
    // Positive controls, same capture: the exempt cgroup's frames leave, bypass or not.
    for (mode, port) in [("raw-as-arp-bypass", 9995), ("dgram", 9996)] {
        assert_eq!(w.kit(&w.bypass, 0, 0, &["packet", UPLINK, src, &s4(port), mode]), "SENT", "{mode}");
    }
    let pkts = cap.stop().unwrap();
    let to = |port: u16| matching(&pkts, &format!("> {}.{port}:", addr::SERVER_V4)).len();
    for port in [9990, 9991, 9992, 9993, 9994] {
        assert_eq!(to(port), 0, "a governed frame to port {port} left: {pkts:#?}");
    }
    assert_eq!((to(9995), to(9996)), (1, 1), "the exempt controls were not captured: {pkts:#?}");
    let c = w.counters().unwrap();
    assert!(c["frame_socket_refused"] >= if lsm { 4 } else { 2 }, "{c:?}");
    if !lsm {
        assert!(d.log().contains("packet sockets are NOT refused"), "the missing LSM was not reported:\n{}", d.log());
    }
}

/// A connection a governed application opened before ttp started would only hang once the
/// kill-switch drops its packets: it is destroyed at start, so the application sees it
/// closed at once (and reconnects, through Tor), and nothing of it leaves after start. An
/// exempt application's connection stays (the positive control, in the same capture).
#[test]
fn a_connection_opened_before_start_is_closed_at_start_and_sends_nothing_after() {
    let w = world();
    let kit = ttp_tests::bin("testkit");
    let server = format!("{}:7000", addr::SERVER_V4);
    let mut held = ttp_tests::Proc::spawn({
        let mut c = w.inet.cmd(&kit);
        c.args(["serve-hold", &server]);
        c
    })
    .unwrap();
    held.wait_line("LISTENING", Duration::from_secs(10)).unwrap();
    let open = |cgroup: &ttp_tests::Cgroup| {
        let mut p = w.spawn_in(cgroup, GOVERNED, GOVERNED, &[kit.to_str().unwrap(), "keep-sending", &server]).unwrap();
        let line = p.next_line().unwrap();
        let port = line.strip_prefix("CONNECTED ").unwrap_or_else(|| panic!("{line}")).to_string();
        (p, port)
    };
    let (mut governed, governed_port) = open(&w.governed);
    let (mut exempt, exempt_port) = open(&w.bypass);
    let d = start(&w, &[]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();
    let closed = governed.next_line().unwrap();
    assert!(closed.starts_with("CLOSED"), "the governed connection was not closed at start: {closed}");
    std::thread::sleep(Duration::from_millis(500));
    let pkts = cap.stop().unwrap();
    let from = |port: &str| matching(&pkts, &format!("{}.{port} > ", addr::HOST_V4)).len();
    assert_eq!(from(&governed_port), 0, "the governed connection sent after start: {pkts:#?}");
    assert!(from(&exempt_port) > 0, "the exempt connection (the control) was not captured: {pkts:#?}");
    assert!(d.log().contains("1 connections opened before start closed"), "{}", d.log());
    drop(exempt.child.kill());
}

/// LAN bypass lets a governed program find printers (mDNS) but not ask the whole LAN for
/// the names it looks up (LLMNR) or announce the host (SSDP); `--no-lan-discovery`
/// refuses mDNS too. Judged on the receiving side's capture.
#[test]
fn lan_bypass_lets_mdns_out_but_not_llmnr_or_ssdp_and_strict_refuses_mdns_too() {
    let w = world();
    let send = |to: &str| w.governed(GOVERNED, &["udp-send", to, "00"]);
    let (mdns, llmnr, ssdp) = ("224.0.0.251:5353", "224.0.0.252:5355", "239.255.255.250:1900");
    let d = start(&w, &[]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();
    assert_eq!(send(mdns), "SENT", "mDNS with LAN bypass");
    assert_eq!(send(llmnr), "ERR EPERM", "LLMNR");
    assert_eq!(send(ssdp), "ERR EPERM", "SSDP");
    let pkts = cap.stop().unwrap();
    assert_eq!(matching(&pkts, "> 224.0.0.251.5353").len(), 1, "the mDNS control: {pkts:#?}");
    assert!(
        matching(&pkts, "> 224.0.0.252.").is_empty() && matching(&pkts, "> 239.255.255.250.").is_empty(),
        "{pkts:#?}"
    );
    assert!(w.counters().unwrap()["lan_discovery_refused"] >= 2);
    d.stop().unwrap();

    let _d = start(&w, &["--no-lan-discovery"]);
    let cap = Capture::start(&w.inet, INET_IF).unwrap();
    assert_eq!(send(mdns), "ERR EPERM", "mDNS with --no-lan-discovery");
    // Unicast to the LAN still goes direct.
    assert!(w.governed(GOVERNED, &["udp", &format!("{}:5353", addr::LAN_PEER)]).starts_with("DIRECT"));
    let pkts = cap.stop().unwrap();
    assert!(matching(&pkts, "> 224.0.0.251.").is_empty(), "{pkts:#?}");
}

#[test]
fn exempt_uid_gid_and_cgroup_go_direct_and_lan_bypass_switches() {
    let w = world();
    let d = start(&w, &[]);
    let direct = format!("DIRECT {}", s4(80));
    assert_eq!(w.governed(BYPASS_UID, &["connect", &s4(80)]), direct, "bypass uid");
    assert_eq!(w.kit(&w.governed, IN_BYPASS_GROUP, BYPASS_GID, &["connect", &s4(80)]), direct, "bypass gid");
    assert_eq!(w.kit(&w.bypass, GOVERNED, GOVERNED, &["connect", &s4(80)]), direct, "bypass cgroup");
    // A GID-exempt socket's datagrams pass the packet-level switches too (tagged at creation).
    assert!(w.kit(&w.governed, IN_BYPASS_GROUP, BYPASS_GID, &["udp", &s4(443)]).starts_with("DIRECT"));
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("ORIG {}", s4(80)), "governed");

    // LAN bypass (default on): private destinations go direct, TCP and UDP.
    let lan = format!("{}:80", addr::LAN_PEER);
    assert_eq!(w.governed(GOVERNED, &["connect", &lan]), format!("DIRECT {lan}"));
    assert!(w.governed(GOVERNED, &["udp", &format!("{}:5353", addr::LAN_PEER)]).starts_with("DIRECT"));
    d.stop().unwrap();

    // LAN bypass off: the same connect goes to the TransPort, the UDP is refused.
    let _d = start(&w, &["--no-lan-bypass"]);
    assert_eq!(w.governed(GOVERNED, &["connect", &lan]), format!("ORIG {lan}"));
    assert_eq!(w.governed(GOVERNED, &["udp", &format!("{}:5353", addr::LAN_PEER)]), "ERR EPERM");
}

#[test]
fn ipv6_policy_drop_refuses_ipv6() {
    let w = world();
    let _d = start(&w, &["--ipv6", "drop"]);
    assert_eq!(w.governed(GOVERNED, &["connect", &s6(80)]), "ERR EPERM");
    // IPv4, also through an IPv6 socket, still goes through.
    let mapped = format!("[::ffff:{}]:80", addr::SERVER_V4);
    assert_eq!(w.governed(GOVERNED, &["connect", &mapped]), format!("ORIG {}", s4(80)));
    assert!(w.counters().unwrap()["ipv6_refused"] >= 1);
}

#[test]
fn sigkill_leaves_the_host_closed_and_stop_reopens_it() {
    let w = world();
    let d = start(&w, &[]);
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("ORIG {}", s4(80)));
    d.kill();

    let before = w.counters().unwrap();
    let cap = Capture::start(&w.inet, INET_IF).unwrap();
    // Redirection still happens: to a dead port, so the connect fails instead of leaking.
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), "ERR ECONNREFUSED");
    assert_eq!(w.governed(GOVERNED, &["udp", &s4(443)]), "ERR EPERM");
    w.governed(0, &["icmp", &s4(0)]);
    w.governed(0, &["packet", UPLINK, addr::HOST_V4, &s4(9999)]);
    // Positive control: an exempt socket still works (its exemption is in pinned maps).
    assert_eq!(w.governed(BYPASS_UID, &["connect", &s4(80)]), format!("DIRECT {}", s4(80)));
    let pkts = cap.stop().unwrap();
    assert!(!matching(&pkts, &format!("> {}.80:", addr::SERVER_V4)).is_empty(), "control not captured: {pkts:#?}");
    let leaks: Vec<_> = pkts
        .iter()
        .filter(|l| l.contains(".443:") || l.contains(".9999:") || l.contains("ICMP echo request"))
        .collect();
    assert!(leaks.is_empty(), "governed traffic left a host whose daemon is dead: {leaks:#?}");
    // The counters still count.
    let after = w.counters().unwrap();
    assert!(after["tcp_redirected"] > before["tcp_redirected"], "{before:?} -> {after:?}");
    assert!(after["udp_refused"] > before["udp_refused"], "{before:?} -> {after:?}");
    assert!(after["tc_dropped"] > before["tc_dropped"], "{before:?} -> {after:?}");

    // `ttp stop` after a crash: lockdown, detach, unpin; the host is open again.
    let lsm = lsm_link(&w);
    let report = ttp::datapath::teardown(&ttp::datapath::PinLayout::new(&w.pin_dir)).unwrap();
    assert_eq!(report.links_detached, 14 + lsm, "{report:?}");
    assert!(!w.pin_dir.exists(), "pins left behind");
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("DIRECT {}", s4(80)));
}

#[test]
fn clean_stop_restores_direct_connectivity_and_leaves_no_pins() {
    let w = world();
    let d = start(&w, &[]);
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("ORIG {}", s4(80)));
    let lsm = lsm_link(&w);
    let log = d.stop().unwrap();
    assert!(log.contains(&format!("links_detached: {}", 14 + lsm)), "{log}");
    assert!(!w.pin_dir.exists(), "pin dir {} left behind", w.pin_dir.display());
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("DIRECT {}", s4(80)));
    assert!(w.governed(GOVERNED, &["udp", &s4(443)]).starts_with("DIRECT"));
}

#[test]
fn start_after_a_crash_takes_over_the_stale_pins() {
    let w = world();
    start(&w, &[]).kill();
    let cg = w.governed.path.display().to_string();
    let attached = || {
        let out = ttp_tests::run(std::process::Command::new("bpftool").args(["cgroup", "show", &cg])).unwrap();
        String::from_utf8_lossy(&out.stdout).lines().skip(1).filter(|l| !l.trim().is_empty()).count()
    };
    let lsm = lsm_link(&w);
    assert_eq!(attached(), 13 + lsm, "the crashed instance's cgroup programs should still be attached");

    let d = start(&w, &[]);
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("ORIG {}", s4(80)));
    assert_eq!(attached(), 13 + lsm, "the stale programs were not released");
    assert!(d.log().contains(&format!("took over {} stale links", 14 + lsm)), "{}", d.log());
    let links = std::fs::read_dir(w.pin_dir.join("links")).unwrap().count();
    assert_eq!(links, 14 + lsm);
    d.stop().unwrap();
    assert_eq!(attached(), 0);
}

#[test]
fn a_daemon_that_fails_before_its_kill_switch_changes_nothing_and_after_it_stays_closed() {
    let w = world();
    let state = std::env::temp_dir().join(format!("ttpt-fail-{}", w.pin_dir.file_name().unwrap().to_string_lossy()));
    let ttp = |args: &[&str]| {
        let mut c = if args[0] == "run" {
            let mut c = w.daemon_cmd("ttp", args);
            // Never the default user: that one is created on the host if missing.
            c.args(["--user", &ttp_tests::SERVICE_UID.to_string()]).arg("--state-dir").arg(&state);
            c
        } else {
            let mut c = w.host.cmd(ttp_tests::bin("ttp"));
            c.args(args).arg("--pin-dir").arg(&w.pin_dir);
            c
        };
        c.arg("--runtime-dir").arg(state.join("run"));
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    // Bad configuration is refused before anything on the host changes.
    let (code, stderr, _) = ttp(&["run", "--arti-config", "/nonexistent/arti.toml"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/arti.toml") && stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains("kill-switch active"), "{stderr}");
    assert!(!w.pin_dir.exists(), "pins left behind");
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("DIRECT {}", s4(80)));
    // A failure after the kill-switch is up (Tor cannot bootstrap: the namespace reaches no
    // Tor network) fails closed: the kill-switch stays, in lockdown, and says why.
    let (code, stderr, _) = ttp(&["run", "--bootstrap-timeout", "2"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("kill-switch active") && stderr.contains("bootstrap"), "{stderr}");
    assert!(stderr.contains("the kill-switch stays closed"), "{stderr}");
    assert!(!stderr.contains("links detached"), "torn down after a failure: {stderr}");
    let connect = w.governed(GOVERNED, &["connect", &s4(80)]);
    assert!(connect.starts_with("ERR"), "a governed connect after the failure: {connect}");
    assert!(w.governed(GOVERNED, &["udp", &s4(443)]).starts_with("ERR"));
    let (_, _, status) = ttp(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "lockdown", "{status}");
    assert!(status["fault"].as_str().unwrap_or_default().contains("bootstrap"), "{status}");
    // Root's stop opens it again, and leaves nothing.
    let (code, stderr, _) = ttp(&["stop"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!w.pin_dir.exists(), "pins left behind");
    assert!(!w.governed.path.join("ttp.tor").exists(), "exec cgroups left behind: {stderr}");
    assert_eq!(w.governed(GOVERNED, &["connect", &s4(80)]), format!("DIRECT {}", s4(80)));
    let _ = std::fs::remove_dir_all(&state);
}
