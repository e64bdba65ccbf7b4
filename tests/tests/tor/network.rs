//! Network changes under a running ttp (issue 18): a link that goes down and comes back,
//! an address that changes, the default route moving to another uplink. The host stays
//! closed throughout (captures on both links show only relay traffic), and a governed
//! fetch works again without anyone restarting ttp. How long that takes is measured and
//! printed (BENCHMARKS.md records it), never asserted as a time.

use ttp_tests::UPLINK;

use super::*;

/// Polls a governed fetch until it works (at most 180 s); how long it took.
fn recovery(r: &Running) -> Duration {
    let t0 = Instant::now();
    let url = format!("http://{WEB}/index.txt");
    loop {
        let out = r.w.run_in(&r.w.governed, GOVERNED, GOVERNED, &["curl", "-s", "--max-time", "5", &url]);
        if String::from_utf8_lossy(&out.stdout).trim() == PAGE {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "no governed fetch within 180 s:\n{}", r.failures());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What `ttp status` says Tor waits for, within `secs` (None if it never says).
fn waiting(r: &Running, secs: u64) -> Option<String> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        let s: serde_json::Value = serde_json::from_str(&ttp(r, &["status", "--json"])).ok()?;
        if let Some(w) = s["waiting"].as_str() {
            return Some(w.to_string());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

#[test]
fn network_changes_keep_the_host_closed_and_tor_comes_back_by_itself() {
    let r = start_choosing_uplinks();
    let n: u32 = r.w.inet_if.trim_start_matches("th").parse().unwrap();
    let gw = format!("198.19.{n}.1");
    let host = &r.w.host;
    let url = format!("http://{WEB}/index.txt");
    let cap = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();

    // The link goes down (a cable, a Wi-Fi that drops), then comes back.
    host.ip(&["link", "set", UPLINK, "down"]).unwrap();
    let out = r.w.run_in(&r.w.governed, GOVERNED, GOVERNED, &["curl", "-s", "--max-time", "3", &url]);
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), PAGE, "a fetch worked with the uplink down");
    let said = waiting(&r, 20);
    assert!(
        said.as_deref().is_some_and(|s| s.contains("no network")),
        "ttp status says: {said:?}\n{}\n{}",
        ttp(&r, &["status", "--json"]),
        String::from_utf8_lossy(&ttp_tests::run(host.cmd("cat").arg("/proc/net/route")).unwrap().stdout)
    );
    host.ip(&["link", "set", UPLINK, "up"]).unwrap();
    host.ip(&["route", "replace", "default", "via", &gw]).unwrap();
    let flap = recovery(&r);

    // The address changes (a new DHCP lease): every connection of the old one is dead.
    host.ip(&["addr", "del", &format!("198.19.{n}.2/24"), "dev", UPLINK]).unwrap();
    host.ip(&["addr", "add", &format!("198.19.{n}.3/24"), "dev", UPLINK]).unwrap();
    host.ip(&["route", "replace", "default", "via", &gw]).unwrap();
    let readdressed = recovery(&r);
    assert_only_relay_traffic(&cap.stop().unwrap());

    // The default route moves to a second uplink (Ethernet to Wi-Fi), the first goes down.
    let pid = net().netns.trim_start_matches("/proc/").trim_end_matches("/ns/net").to_string();
    let peer = format!("tb{n}");
    host.ip(&["link", "add", "up1", "type", "veth", "peer", "name", &peer, "netns", &pid]).unwrap();
    host.ip(&["addr", "add", &format!("198.18.{n}.2/24"), "dev", "up1"]).unwrap();
    host.ip(&["link", "set", "up1", "up"]).unwrap();
    r.w.inet.ip(&["addr", "add", &format!("198.18.{n}.1/24"), "dev", &peer]).unwrap();
    r.w.inet.ip(&["link", "set", &peer, "up"]).unwrap();
    let cap_old = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();
    let cap_new = Capture::start(&r.w.inet, &peer).unwrap();
    host.ip(&["route", "replace", "default", "via", &format!("198.18.{n}.1"), "dev", "up1"]).unwrap();
    host.ip(&["link", "set", UPLINK, "down"]).unwrap();
    let moved = recovery(&r);
    assert!(r.w.pin_dir.join("links/tc_egress@up1").exists(), "the new uplink has no kill-switch");
    assert!(assert_only_to_and_from_relays(&cap_new.stop().unwrap()) > 0, "no Tor traffic on the new uplink");
    assert_only_to_and_from_relays(&cap_old.stop().unwrap());
    eprintln!(
        "governed fetch works again {:.1} s after the link came back, {:.1} s after a new address, \
         {:.1} s after the route moved to another uplink",
        flap.as_secs_f64(),
        readdressed.as_secs_f64(),
        moved.as_secs_f64()
    );
    let log = r.daemon.as_ref().unwrap().log();
    assert!(log.contains("up1 now carries a default route"), "{log}");
}

/// Every IP packet of a capture on a link (both directions) is to or from a relay's
/// ORPort; returns how many there were (a link that was down may have none).
fn assert_only_to_and_from_relays(pkts: &[String]) -> usize {
    let relays: Vec<String> = net().or_addrs().iter().map(|a| a.replace(':', ".")).collect();
    let ip: Vec<&String> = pkts.iter().filter(|l| l.contains(" IP ")).collect();
    let other: Vec<&&String> = ip
        .iter()
        .filter(|l| {
            let (src, dst) = l.split_once(" IP ").map(|(_, r)| r).and_then(|r| r.split_once(" > ")).unwrap_or_default();
            !relays.iter().any(|a| src == a || dst.starts_with(&format!("{a}:")))
        })
        .collect();
    assert!(other.is_empty(), "non-Tor traffic on the link: {other:#?}");
    ip.len()
}

/// A clock days behind (a board without a real-time clock, a laptop whose clock was
/// reset): Tor refuses a directory that is not yet valid (Arti tolerates one day early,
/// three days late), and ttp says so in plain words with what to do; nothing but relay
/// traffic leaves meanwhile (libfaketime moves the daemon's clock only).
#[test]
fn a_wrong_clock_is_named_with_what_to_do() {
    let w = World::with_testnet(net()).unwrap();
    let state = std::env::temp_dir().join(format!("ttpt-clock-{}", w.pin_dir.file_name().unwrap().to_string_lossy()));
    let mut c = run_cmd(w.daemon_cmd("ttp", &["run"]), &state, 20);
    c.env("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
        .env("FAKETIME", "-2d")
        .env("RUST_LOG", "info,tor_guardmgr=warn");
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("ttp still runs with a clock 2 days slow:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ttp bootstrapped with a clock 2 days slow:\n{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("clock"), "the error does not name the clock: {last}");
    eprintln!("{last}");
    assert_only_relay_traffic(&cap.stop().unwrap());
}

/// The wall clock jumps while ttp runs, as when a laptop wakes after hours asleep or NTP
/// steps a clock that drifted. libfaketime moves the daemon's wall clock only (read from
/// a file every second; the monotonic clock, which a suspend does not advance either, is
/// left alone), and `ttp refresh` after each jump makes the next fetch build circuits
/// under the new time.
///
/// - Hours ahead, then back: a governed fetch works after each jump, by itself.
/// - Days ahead, beyond what Tor accepts of a directory: fetches fail (closed), `ttp
///   status` says the clock may be wrong, and once it is set right Tor comes back with
///   no one touching ttp.
///
/// Nothing but relay traffic leaves throughout. How soon fetches work again is printed
/// (BENCHMARKS.md), never asserted as a time.
#[test]
fn a_clock_that_jumps_keeps_the_host_closed_and_tor_comes_back_when_it_is_right() {
    let w = World::with_testnet(net()).unwrap();
    let state = std::env::temp_dir().join(format!("ttpt-jump-{}", w.pin_dir.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&state).unwrap();
    let clock = state.join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let mut c = run_cmd(w.daemon_cmd("ttp", &["run"]), &state, 90);
    c.env("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_CACHE_DURATION", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let started = w.start_daemon(c);
    let r = Running::new(w, state, started, "ttp run with a clock that will jump");
    let cap = Capture::start(&r.w.inet, &r.w.inet_if).unwrap();
    let jump = |to: &str| {
        std::fs::write(&clock, format!("{to}\n")).unwrap();
        // libfaketime reads the file again within a second.
        std::thread::sleep(Duration::from_secs(2));
        ttp(&r, &["refresh"]);
    };
    jump("+6h");
    let ahead = recovery(&r);
    jump("+0");
    let back = recovery(&r);

    jump("+4d");
    let said = waiting(&r, 90);
    assert!(
        said.as_deref().is_some_and(|s| s.contains("clock")),
        "with the clock 4 days ahead, ttp status says: {said:?}\n{}",
        ttp(&r, &["status", "--json"])
    );
    let url = format!("http://{WEB}/index.txt");
    let out = r.w.run_in(&r.w.governed, GOVERNED, GOVERNED, &["curl", "-s", "--max-time", "5", &url]);
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), PAGE, "a fetch worked with the clock 4 days ahead");
    jump("+0");
    let set_right = recovery(&r);
    assert_only_relay_traffic(&cap.stop().unwrap());
    eprintln!(
        "governed fetch works again {:.1} s after the clock jumped 6 h ahead, {:.1} s after it jumped back, \
         {:.1} s after a clock 4 days ahead was set right",
        ahead.as_secs_f64(),
        back.as_secs_f64(),
        set_right.as_secs_f64()
    );
}
