//! Failing closed under load and faults (issue 16): no error, exhaustion or ended service
//! may open the host. Each test captures the uplink on the receiving side and proves that
//! nothing but relay traffic left, and that the daemon (or its kill-switch) held.

use ttp_tests::{limit_open_files, Capture, Netns};

use super::*;

/// A world whose daemon was started with `nofile` open files, soft and hard (a shell's
/// default soft limit is 1,024; here the hard one is too, so ttp cannot raise it).
fn start_limited(nofile: u64) -> Running {
    let net = net();
    let w = World::with_testnet(net).expect("test world on the Tor network");
    let state = std::env::temp_dir().join(format!("ttpt-load-{}", w.pin_dir.file_name().unwrap().to_string_lossy()));
    let arti = net.arti_toml().display().to_string();
    let args = ["--arti-config", arti.as_str(), "--check-url", ttp_tests::testnet::CHECK_URL];
    let started = w.start_ttp_with(&state, &args, |c| limit_open_files(c, nofile));
    let r = Running::new(w, state, started, "ttp run");
    let t0 = Instant::now();
    while curl(&r.w, &format!("http://{WEB}/index.txt")) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(60), "no stream through Tor within 60 s:\n{}", r.failures());
        std::thread::sleep(Duration::from_millis(500));
    }
    r
}

/// `uid` in the governed cgroup holds `n` connections to `addr` for `secs` (a program with
/// many connections); returns once they are all opened (or refused).
fn hold_open(r: &Running, uid: u32, addr: &str, n: u32, secs: u32) -> ttp_tests::Proc {
    let kit = ttp_tests::bin("testkit");
    let argv = [kit.to_str().unwrap(), "hold-open", addr, &n.to_string(), &secs.to_string()];
    let mut p = r.w.spawn_in(&r.w.governed, uid, uid, &argv).unwrap();
    p.wait_line("OPENED", Duration::from_secs(90)).expect("the held connections opened");
    p
}

fn pid_of(r: &Running) -> u32 {
    r.daemon.as_ref().expect("daemon").proc.child.id()
}

/// Whether the daemon still runs (a dead child of ours stays in /proc until reaped).
fn alive(r: &mut Running) -> bool {
    matches!(r.daemon.as_mut().expect("daemon").proc.child.try_wait(), Ok(None))
}

/// `ttp status --json`, the daemon alive (exit code 0) or dead with its kill-switch in
/// place (1).
fn status(r: &Running) -> serde_json::Value {
    let out = std::process::Command::new(ttp_tests::bin("ttp"))
        .args(["status", "--json", "--runtime-dir"])
        .arg(r.state.join("run"))
        .arg("--pin-dir")
        .arg(&r.w.pin_dir)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "ttp status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What once opened the host: one program holding more connections than the daemon had
/// descriptors made the TransPort's accept() fail (EMFILE), the daemon took the ended task
/// for a stop, tore the kill-switch down, and the program's next connections went direct.
#[test]
fn a_program_holding_more_connections_than_the_daemon_has_descriptors_leaks_nothing() {
    let mut r = start_limited(1024);
    let pid = pid_of(&r);
    let cap = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();
    let web = format!("{WEB}:80");
    let flood = hold_open(&r, GOVERNED, &web, 2000, 120);
    // While the flood holds its connections: the daemon is the same process, and another
    // program's fetch still goes through Tor.
    let other =
        r.w.run_in(&r.w.governed, 1002, 1002, &["curl", "-sS", "--max-time", "30", &format!("http://{web}/index.txt")]);
    assert_eq!(
        String::from_utf8_lossy(&other.stdout).trim(),
        PAGE,
        "another program during the flood: {}",
        r.failures()
    );
    assert!(alive(&mut r), "the daemon died under the flood:\n{}", r.failures());
    let s = status(&r);
    let load = &s["load"];
    assert_eq!(load["budget"]["nofile"], 1024, "{s}");
    assert!(load["refused_share"].as_u64().unwrap() > 0, "the flood was never refused: {s}");
    drop(flood);
    // And after it.
    assert_eq!(curl(&r.w, &format!("http://{web}/index.txt")), PAGE, "{}", r.failures());
    assert!(alive(&mut r) && status(&r)["pid"] == pid, "a new daemon, or none");
    assert_only_relay_traffic(&cap.stop().unwrap());
}

/// Another local user holds idle connections to the SOCKS port and the DNSPort's TCP
/// listener, far more than the daemon has descriptors. They take at most that user's
/// share of the handshake and DNS-over-TCP slots (refused at once past it, closed when
/// idle): the daemon lives on, and a governed program still fetches through the
/// TransPort, through SOCKS, and resolves over UDP and TCP.
#[test]
fn idle_connections_from_one_user_take_nothing_from_the_others() {
    let mut r = start_limited(1024);
    let pid = pid_of(&r);
    let cap = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();
    let idle: Vec<_> =
        ["127.0.0.1:9055", "127.0.0.1:9053"].iter().map(|addr| hold_open(&r, 1003, addr, 1500, 60)).collect();
    let page = format!("http://{WEB}/index.txt");
    assert_eq!(curl(&r.w, &page), PAGE, "a governed fetch: {}", r.failures());
    assert_eq!(curl_via(&r.w, "socks5h://127.0.0.1:9055", &page), PAGE, "through SOCKS: {}", r.failures());
    assert_eq!(dig(&r.w, &["@9.9.9.9", "during.idle.test", "A"]), WEB);
    assert_eq!(dig(&r.w, &["@9.9.9.9", "+tcp", "during.idle.tcp.test", "A"]), WEB);
    let s = status(&r);
    assert!(s["load"]["refused_share"].as_u64().unwrap() > 0, "the idle user was never held to its share: {s}");
    drop(idle);
    assert!(alive(&mut r) && status(&r)["pid"] == pid);
    assert_only_relay_traffic(&cap.stop().unwrap());
}

/// A service that fails (here the TransPort's listening socket is destroyed from outside,
/// `ss -K`, so its accept() fails for good) ends the daemon in lockdown, never in a
/// teardown: nothing governed leaves, `ttp status` says why, and only `ttp stop` opens.
#[test]
fn a_service_that_fails_leaves_the_host_closed_and_says_why() {
    let mut r = start_limited(4096);
    let cap = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();
    let killed = r.w.host.cmd("ss").args(["-K", "-t", "state", "listening", "sport", "=", ":9040"]).output().unwrap();
    assert!(killed.status.success(), "ss -K: {}", String::from_utf8_lossy(&killed.stderr));
    let t0 = Instant::now();
    while alive(&mut r) {
        // A redirected connect wakes the listener up, if nothing else does.
        let _ = curl(&r.w, &format!("http://{WEB}/index.txt"));
        assert!(t0.elapsed() < Duration::from_secs(20), "the daemon went on without its TransPort");
    }
    // Closed: TCP and DNS of a governed application get nowhere.
    assert_ne!(curl(&r.w, &format!("http://{WEB}/index.txt")), PAGE, "a governed curl worked after the fault");
    let dns = dig(&r.w, &["@9.9.9.9", "after.fault.test", "A"]);
    assert!(dns.is_empty() || !dns.starts_with("203."), "DNS answered after the fault: {dns}");
    let packets = cap.stop().unwrap();
    assert!(matching(&packets, &format!("> {WEB}.")).is_empty(), "direct traffic after the fault: {packets:#?}");
    assert!(matching(&packets, ".53:").is_empty(), "DNS left after the fault: {packets:#?}");
    // status says why, from the pins and the monitor's record.
    let s = status(&r);
    assert!(s["pid"].is_null() && s["links"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["state"], "lockdown", "{s}");
    let fault = s["fault"].as_str().unwrap_or_default();
    assert!(fault.contains("TransPort"), "status gives no reason: {s}");
    // Pins of another version of ttp (here one without LOCAL_V6, as an instance from
    // before it would be after an upgrade) are read and stopped all the same.
    std::fs::remove_file(r.w.pin_dir.join("maps").join("LOCAL_V6")).unwrap();
    assert_eq!(status(&r)["state"], "lockdown", "the pins of another version");
    // Only root's stop opens the host.
    r.daemon.take().unwrap().kill(); // already dead: keeps the pins for `ttp stop`
    ttp(&r, &["stop"]);
    assert!(!r.w.pin_dir.exists(), "pins left after ttp stop");
}

/// A daemon that asks its monitor for a teardown root did not request (what code running
/// as the service user could do at any time: here a SIGTERM to the daemon's pid alone,
/// which the service user may send it) ends in lockdown: the monitor believes only root's
/// stop file or a signal to itself. Then `ttp stop`, root's, opens the host.
#[test]
fn a_stop_root_did_not_ask_for_leaves_the_host_closed() {
    let mut r = start_limited(4096);
    let cap = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();
    let daemon = nix::unistd::Pid::from_raw(pid_of(&r) as i32);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    while alive(&mut r) {
        assert!(t0.elapsed() < Duration::from_secs(20), "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(curl(&r.w, &format!("http://{WEB}/index.txt")), PAGE, "a governed curl worked after the stop");
    let packets = cap.stop().unwrap();
    assert!(matching(&packets, &format!("> {WEB}.")).is_empty(), "direct traffic after the stop: {packets:#?}");
    let s = status(&r);
    assert_eq!((s["state"].as_str(), s["pid"].is_null()), (Some("lockdown"), true), "{s}");
    assert!(s["fault"].as_str().unwrap_or_default().contains("root did not ask"), "{s}");
    assert!(r.w.pin_dir.exists(), "the kill-switch was torn down");
    r.daemon.take().unwrap().kill(); // already dead: keeps the pins for `ttp stop`
    ttp(&r, &["stop"]);
    assert!(!r.w.pin_dir.exists(), "pins left after ttp stop");
}

/// An interface that gains a default route after start (a Wi-Fi reconnect, USB tethering)
/// gets the uplink kill-switch, when ttp chose its uplinks itself: a governed root
/// process's frame on it leaves before (the capture's control, and the gap this closes)
/// and not after. Deleted and made again under its name (a USB modem replugged), it is a
/// new interface without the old one's programs, and gets the kill-switch again.
#[test]
fn an_uplink_that_appears_after_start_gets_the_kill_switch() {
    let r = start_choosing_uplinks();
    // A second link, to a namespace of this test's own.
    let other = Netns::new("up2").unwrap();
    let make_link = || {
        r.w.host.ip(&["link", "add", "up1", "type", "veth", "peer", "name", "eth9", "netns", &other.name]).unwrap();
        r.w.host.ip(&["addr", "add", "198.18.250.2/24", "dev", "up1"]).unwrap();
        r.w.host.ip(&["link", "set", "up1", "up"]).unwrap();
        other.ip(&["addr", "add", "198.18.250.1/24", "dev", "eth9"]).unwrap();
        other.ip(&["link", "set", "eth9", "up"]).unwrap();
    };
    make_link();
    let frame =
        |port: u16| r.w.governed(0, &["packet", "up1", "198.18.250.2", &format!("198.18.250.1:{port}"), "dgram"]);
    let cap = Capture::start(&other, "eth9").unwrap();
    assert_eq!(frame(9001), "SENT", "before the route, up1 is no uplink");
    r.w.host.ip(&["route", "add", "default", "via", "198.18.250.1", "dev", "up1", "metric", "500"]).unwrap();
    let pin = r.w.pin_dir.join("links").join("tc_egress@up1");
    let t0 = Instant::now();
    while !pin.exists() {
        assert!(t0.elapsed() < Duration::from_secs(5), "no kill-switch on the new uplink:\n{}", r.failures());
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = frame(9002);
    let pkts = cap.stop().unwrap();
    assert_eq!(matching(&pkts, "> 198.18.250.1.9001").len(), 1, "the control frame was not captured: {pkts:#?}");
    assert!(
        matching(&pkts, "> 198.18.250.1.9002").is_empty(),
        "a governed frame left the new uplink ({after}): {pkts:#?}"
    );
    let log = r.daemon.as_ref().unwrap().log();
    assert!(log.contains("up1 now carries a default route"), "{log}");

    // Unplugged and plugged in again: the pin is still there, its link on nothing.
    r.w.host.ip(&["link", "del", "up1"]).unwrap();
    make_link();
    let cap = Capture::start(&other, "eth9").unwrap();
    r.w.host.ip(&["route", "add", "default", "via", "198.18.250.1", "dev", "up1", "metric", "500"]).unwrap();
    let t0 = Instant::now();
    // The monitor says when it attached; the frame is the proof, with or without the word.
    while !r.daemon.as_ref().unwrap().log().contains("uplink up1 was made again") && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = frame(9003);
    let pkts = cap.stop().unwrap();
    assert!(
        matching(&pkts, "> 198.18.250.1.9003").is_empty(),
        "a governed frame left the uplink made again ({after}): {pkts:#?}"
    );
}
