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
