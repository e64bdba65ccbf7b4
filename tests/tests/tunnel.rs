//! The tunnel device between two namespaces made here: a peer and a gateway joined by a
//! veth. Real TUN devices, real UDP, the real handshake; nothing reaches the host's network.

use std::time::Duration;

use ttp_tests::{bin, run, Capture, Netns, Proc, TempDir};

const GW_OUTER: &str = "192.0.2.1";
const PEER_OUTER: &str = "192.0.2.2";
const GW_INNER: &str = "10.77.0.1";
const PEER_INNER: &str = "10.77.0.2";

fn key(args: &[&str], stdin: Option<&str>) -> String {
    ttp_tests::tunnel_key(args, stdin.unwrap_or("")).unwrap()
}

/// Two namespaces, a veth between them, and a tunnel side running in each.
struct Pair {
    gw: Netns,
    peer: Netns,
    dir: TempDir,
    sides: Vec<Proc>,
    gw_pub: String,
}

impl Pair {
    fn up() -> Pair {
        Pair::with_client_routes("\"10.77.0.0/24\"")
    }

    /// Two sides; the client routes `routes` (TOML list items) into the tunnel.
    fn with_client_routes(routes: &str) -> Pair {
        let mut p = Pair::gateway_only(routes);
        p.start_client();
        p
    }

    /// The namespaces, both sides' files, and the gateway side running.
    fn gateway_only(routes: &str) -> Pair {
        let (gw, peer) = (Netns::new("tgw").unwrap(), Netns::new("tpeer").unwrap());
        let (a, b) = (format!("tg{}", std::process::id() % 100000), format!("tp{}", std::process::id() % 100000));
        gw.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]).unwrap();
        gw.ip(&["link", "set", &b, "netns", &peer.path()]).unwrap();
        gw.ip(&["addr", "add", &format!("{GW_OUTER}/24"), "dev", &a]).unwrap();
        gw.ip(&["link", "set", &a, "up"]).unwrap();
        // The peer reaches the gateway by its default route, as across the internet (an
        // on-link /24 would be more specific than anything the tunnel routes).
        peer.ip(&["addr", "add", &format!("{PEER_OUTER}/32"), "dev", &b]).unwrap();
        peer.ip(&["link", "set", &b, "up"]).unwrap();
        peer.ip(&["route", "add", "default", "dev", &b]).unwrap();
        let dir = TempDir::new("tunnel");
        let (gw_key, peer_key) = (key(&["genkey"], None), key(&["genkey"], None));
        let (gw_pub, peer_pub) = (key(&["pubkey"], Some(&gw_key)), key(&["pubkey"], Some(&peer_key)));
        let psk = key(&["genkey"], None);
        std::fs::write(
            dir.0.join("gw.toml"),
            format!(
                "private-key = \"{gw_key}\"\nlisten-port = 51820\naddress = [\"{GW_INNER}/24\"]\n\
                 [[peer]]\npublic-key = \"{peer_pub}\"\npreshared-key = \"{psk}\"\nallowed-ips = [\"{PEER_INNER}/32\"]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("peer.toml"),
            format!(
                "private-key = \"{peer_key}\"\naddress = [\"{PEER_INNER}/24\"]\n\
                 [[peer]]\npublic-key = \"{gw_pub}\"\npreshared-key = \"{psk}\"\nallowed-ips = [{routes}]\n\
                 endpoint = \"{GW_OUTER}:51820\"\n"
            ),
        )
        .unwrap();
        let mut p = Pair { gw, peer, dir, sides: vec![], gw_pub };
        p.start_side(true);
        p
    }

    fn start_client(&mut self) {
        self.start_side(false);
    }

    fn start_side(&mut self, gateway: bool) {
        let (ns, conf) = if gateway { (&self.gw, "gw.toml") } else { (&self.peer, "peer.toml") };
        let mut c = ns.cmd(bin("ttp"));
        c.args(["tunnel", "up", "--config"]).arg(self.dir.0.join(conf));
        let mut p = Proc::spawn(c).unwrap();
        p.wait_line("TUNNEL UP", Duration::from_secs(10)).unwrap();
        self.sides.push(p);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // The sides first: a namespace with processes inside would outlive its deletion.
        for p in &mut self.sides {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The device process of a `ttp tunnel up` (the one child of the process started).
fn device_pid(side: &Proc) -> u32 {
    let root = side.child.id();
    let children = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children")).unwrap();
    let device: Vec<&str> = children.split_whitespace().collect();
    assert_eq!(device.len(), 1, "one device process under {root}: {children:?}");
    device[0].parse().unwrap()
}

fn ping(ns: &Netns, to: &str) -> bool {
    ns.cmd("ping").args(["-c", "1", "-W", "1", to]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn handshake_then_data_both_ways_and_only_ciphertext_on_the_wire() {
    let p = Pair::up();
    // Each side parses the network's datagrams in a device process of its own, as nobody
    // with no capability at all; the root side (the process started) only waits for it
    // and removes its routes at the end.
    for side in &p.sides {
        let status = std::fs::read_to_string(format!("/proc/{}/status", device_pid(side))).unwrap();
        let field =
            |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_string();
        assert!(field("Uid:").split_whitespace().all(|u| u != "0"), "the device still root: {}", field("Uid:"));
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
        assert_eq!(field("CapBnd:"), "0000000000000000", "{status}");
        assert_eq!(field("NoNewPrivs:"), "1");
    }
    let iface = format!("tg{}", std::process::id() % 100000);
    let cap = Capture::start(&p.gw, &iface).unwrap();
    // The first packet may be spent on the handshake; a few tries, then it must flow.
    let reached = (0..10).any(|_| ping(&p.peer, GW_INNER));
    assert!(reached, "the peer never reached the gateway through the tunnel");
    assert!(ping(&p.gw, PEER_INNER), "the gateway cannot reach the peer back");
    // A bigger packet, near the MTU, both ways.
    let big = p.peer.cmd("ping").args(["-c", "1", "-W", "1", "-s", "1300", GW_INNER]).output().unwrap();
    assert!(big.status.success(), "{}", String::from_utf8_lossy(&big.stdout));
    let packets = cap.stop().unwrap();
    // On the veth: UDP between the two outer addresses, never the inner ICMP in the clear.
    assert!(packets.iter().any(|l| l.contains(&format!("{PEER_OUTER}.")) && l.contains("UDP")), "{packets:#?}");
    let clear: Vec<&String> =
        packets.iter().filter(|l| l.contains("ICMP echo") || l.contains(GW_INNER) || l.contains(PEER_INNER)).collect();
    assert!(clear.is_empty(), "inner traffic on the wire in the clear: {clear:#?}");
    // Nothing else reaches the peer namespace's routes: the tunnel prefix is on the TUN.
    let route = run(p.peer.cmd("ip").args(["route", "get", GW_INNER])).unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains("dev ttp0"));
}

fn route_dev(ns: &Netns, to: &str) -> String {
    let out = run(ns.cmd("ip").args(["route", "get", to])).unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_client_routing_everything_keeps_the_way_to_its_gateway_outside() {
    let mut p = Pair::with_client_routes("\"0.0.0.0/0\"");
    // Everything goes into the tunnel...
    assert!(route_dev(&p.peer, "203.0.113.10").contains("dev ttp0"), "{}", route_dev(&p.peer, "203.0.113.10"));
    // ... except the gateway's own address, which keeps the route it had.
    let to_gw = route_dev(&p.peer, GW_OUTER);
    assert!(!to_gw.contains("ttp0") && to_gw.contains("dev tp"), "{to_gw}");
    assert!((0..10).any(|_| ping(&p.peer, GW_INNER)), "no traffic through a tunnel that routes everything");
    // A clean stop takes that host route away again (the TUN's routes go with the TUN).
    let client = p.sides.pop().unwrap();
    client.signal(nix::sys::signal::Signal::SIGTERM);
    let mut client = client;
    let _ = client.child.wait();
    let left = run(p.peer.cmd("ip").args(["route", "show", GW_OUTER])).unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "{}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn a_handshake_flood_from_spoofed_sources_brings_cookies_and_the_peer_still_gets_in() {
    let mut p = Pair::gateway_only("\"10.77.0.0/24\"");
    // The spoofed sources' answers (cookie replies) come back over the veth, where the
    // capture sees them; the peer namespace drops them.
    let veth = format!("tg{}", std::process::id() % 100000);
    // (Through the peer as next hop, as a real uplink's router: an on-link route would
    // fill the neighbour table with thousands of unanswered entries.)
    p.gw.ip(&["route", "add", "198.18.0.0/15", "via", PEER_OUTER, "dev", &veth]).unwrap();
    let cap = Capture::start(&p.gw, &veth).unwrap();
    // The peer's own exchange, captured apart: the flood's capture may drop packets.
    let peer_cap = Capture::start_filtered(&p.gw, &veth, &["host", PEER_OUTER, "and", "udp"]).unwrap();
    let mut flood = p.peer.cmd(bin("testkit"));
    flood.args(["handshake-flood", &p.gw_pub, &format!("{GW_OUTER}:51820"), "8"]);
    let mut flood = Proc::spawn(flood).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Under load the real peer is asked for a cookie too, and gets in with it in time.
    let t0 = std::time::Instant::now();
    p.start_client();
    while !ping(&p.peer, GW_INNER) {
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = flood.child.wait();
            let peer = peer_cap.stop().unwrap();
            panic!("the peer did not get in within 5 s of a flood: {peer:#?}");
        }
    }
    let took = t0.elapsed();
    let _ = flood.child.wait();
    // Cookie replies are 64 bytes of UDP payload: to spoofed sources, and to the peer.
    let cookies = |packets: &[String], to: &str| {
        packets.iter().filter(|l| l.contains(&format!("> {to}")) && l.ends_with("UDP, length 64")).count()
    };
    let (flood_packets, peer_packets) = (cap.stop().unwrap(), peer_cap.stop().unwrap());
    let to_flood = cookies(&flood_packets, "198.18.");
    assert!(to_flood > 100, "few cookie replies to the flood: {to_flood}");
    assert!(
        cookies(&peer_packets, &format!("{PEER_OUTER}.")) >= 1,
        "the peer was never asked for a cookie: {peer_packets:#?}"
    );
    eprintln!("peer in after {took:.1?} under a flood; {to_flood} cookie replies to spoofed sources");
}

#[test]
fn sessions_are_renewed_without_losing_packets() {
    // The client renews its session every 2 s; 8 s of pings at 100 a second see 3 or more
    // rekeys, and every ping is answered.
    let mut p = Pair::gateway_only("\"10.77.0.0/24\"");
    let conf = p.dir.0.join("peer.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("rekey-after = 2\n{text}")).unwrap();
    p.start_client();
    assert!((0..10).any(|_| ping(&p.peer, GW_INNER)), "no tunnel");
    let veth = format!("tg{}", std::process::id() % 100000);
    let cap = Capture::start_filtered(&p.gw, &veth, &["udp"]).unwrap();
    let out = p.peer.cmd("ping").args(["-c", "800", "-i", "0.01", "-W", "1", GW_INNER]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let packets = cap.stop().unwrap();
    // Initiations are 148 bytes of UDP payload, from the client.
    let rekeys =
        packets.iter().filter(|l| l.contains(&format!("{PEER_OUTER}.")) && l.ends_with("UDP, length 148")).count();
    assert!(rekeys >= 3, "{rekeys} handshakes in 8 s with rekey-after = 2");
    assert!(report.contains(" 0% packet loss"), "packets lost across rekeys: {report}");
}

#[test]
fn a_restarted_gateway_is_reached_again_without_waiting_for_the_rekey() {
    let mut p = Pair::up();
    assert!((0..10).any(|_| ping(&p.peer, GW_INNER)), "the tunnel never came up");
    // The gateway dies and comes back with no sessions; the client still has its own, two
    // minutes from its rekey.
    let mut old = p.sides.remove(0);
    let device = device_pid(&old);
    old.child.kill().unwrap();
    old.child.wait().unwrap();
    // Its device process goes with it (it never runs with nobody to clean up after it).
    let t0 = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{device}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the device outlived its root side");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.start_side(true);
    // The client's pings go unanswered; 15 s after the first, it starts a new handshake
    // (the rekey would be at 120 s: 40 s tells the two apart with room to spare).
    let t0 = std::time::Instant::now();
    let mut back = false;
    while !back && t0.elapsed() < Duration::from_secs(40) {
        back = ping(&p.peer, GW_INNER);
    }
    assert!(back, "the client never found the restarted gateway (waiting for the rekey?)");
    eprintln!("reached again {:.1?} after the restart", t0.elapsed());
}

#[test]
fn a_crashed_device_process_leaves_no_route_behind() {
    let mut p = Pair::with_client_routes("\"0.0.0.0/0\"");
    assert!(!route_dev(&p.peer, GW_OUTER).contains("ttp0"), "the way to the gateway is outside the tunnel");
    // The device (the unprivileged process that parses the network's datagrams) dies
    // hard; the root side, which waited for it, takes its host route away and says so.
    let mut client = p.sides.pop().unwrap();
    let device = device_pid(&client);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(device as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = client.child.wait().unwrap();
    assert!(!status.success(), "the root side reported a killed device as success");
    let left = run(p.peer.cmd("ip").args(["route", "show", GW_OUTER])).unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "{}", String::from_utf8_lossy(&left.stdout));
}

/// Moves `file` from `from` to a listener in `to` at `addr` over TCP through the tunnel,
/// and returns what the receiver counted and hashed ("BYTES SHA256").
fn carry(dir: &TempDir, from: &Netns, to: &Netns, addr: &str, file: &std::path::Path) -> String {
    let script = dir.0.join("carry.py");
    std::fs::write(
        &script,
        "import hashlib, socket, sys\n\
         if sys.argv[1] == 'sink':\n\
         \x20   s = socket.create_server((sys.argv[2], 5001))\n\
         \x20   print('LISTENING', flush=True)\n\
         \x20   c, _ = s.accept(); h = hashlib.sha256(); n = 0\n\
         \x20   while (d := c.recv(1 << 16)):\n\
         \x20       h.update(d); n += len(d)\n\
         \x20   print(n, h.hexdigest(), flush=True)\n\
         else:\n\
         \x20   c = socket.create_connection((sys.argv[2], 5001), timeout=30)\n\
         \x20   c.sendfile(open(sys.argv[3], 'rb')); c.shutdown(socket.SHUT_WR); c.recv(1)\n",
    )
    .unwrap();
    let mut sink = to.cmd("python3");
    sink.arg(&script).args(["sink", addr]);
    let mut sink = Proc::spawn(sink).unwrap();
    sink.wait_line("LISTENING", Duration::from_secs(10)).unwrap();
    let sent = from.cmd("python3").arg(&script).args(["source", addr]).arg(file).status().unwrap();
    assert!(sent.success(), "sending {} to {addr} failed", file.display());
    sink.next_line().unwrap()
}

#[test]
fn bulk_tcp_crosses_the_tunnel_whole_both_ways_in_bursts_larger_than_the_mtu() {
    let p = Pair::up();
    assert!((0..10).any(|_| ping(&p.peer, GW_INNER)), "the peer never reached the gateway");
    let file = p.dir.0.join("16M.bin");
    std::fs::write(&file, (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>())
        .unwrap();
    let want = {
        let out = run(std::process::Command::new("sha256sum").arg(&file)).unwrap();
        format!("{} {}", 16 << 20, String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
    };
    // On the gateway's TUN: what its device writes (the peer's data, joined) and what it
    // reads (its own data, one burst per read).
    let cap = Capture::start_filtered(&p.gw, "ttp0", &["tcp"]).unwrap();
    assert_eq!(carry(&p.dir, &p.peer, &p.gw, GW_INNER, &file), want, "peer to gateway");
    assert_eq!(carry(&p.dir, &p.gw, &p.peer, PEER_INNER, &file), want, "gateway to peer");
    let lines = cap.stop().unwrap();
    // Packets larger than the TUN's MTU (1420) exist there only when the device and the
    // kernel exchange bursts: without the offloads every one is at most the MTU.
    let len = |l: &String| l.rsplit("length ").next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    let written =
        lines.iter().filter(|l| l.contains(&format!("{PEER_INNER}.")) && l.contains(&format!("> {GW_INNER}.")));
    let read = lines.iter().filter(|l| l.contains(&format!("{GW_INNER}.")) && l.contains(&format!("> {PEER_INNER}.")));
    let (written, read) = (written.map(len).max().unwrap_or(0), read.map(len).max().unwrap_or(0));
    assert!(written > 1420, "the device never wrote a joined burst to the TUN (largest TCP payload {written})");
    assert!(read > 1420, "the kernel never handed the device a burst (largest TCP payload {read})");
    // A burst never holds more segments than the device's read buffers.
    let link = run(p.gw.cmd("ip").args(["-d", "link", "show", "ttp0"])).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("gso_max_segs 128 "), "{link}");
}
