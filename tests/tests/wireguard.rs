//! ttp's tunnel against WireGuard implementations we did not write: Debian's wireguard-go
//! and boringtun-cli (crates.io, built once under target/peers by `cargo xtask test`),
//! both configured with `wg` as their users would. Namespaces made here, joined by veths;
//! nothing reaches the host's network.

use std::{path::PathBuf, time::Duration};

use ttp_tests::{
    bin, run,
    wireguard::{Impl, Interface},
    Capture, Netns, Proc, TempDir,
};

const GW_OUTER: &str = "192.0.2.1";
const GW_INNER: &str = "10.77.0.1";

fn key(args: &[&str], stdin: Option<&str>) -> String {
    ttp_tests::tunnel_key(args, stdin.unwrap_or("")).unwrap()
}

/// The gateway's namespace and one namespace per peer, each joined to the gateway by a
/// veth of its own; peer `i` is 192.0.2.(10+i) outside and 10.77.0.(2+i) inside.
struct Wan {
    gw: Netns,
    peers: Vec<Netns>,
    gw_ifs: Vec<String>,
    dir: TempDir,
    procs: Vec<Proc>,
    wg: Vec<Interface>,
}

fn peer_outer(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

fn peer_inner(i: usize) -> String {
    format!("10.77.0.{}", 2 + i)
}

impl Wan {
    fn new(n: usize) -> Wan {
        let gw = Netns::new("wgw").unwrap();
        let (mut peers, mut gw_ifs) = (Vec::new(), Vec::new());
        for i in 0..n {
            let ns = Netns::new(&format!("wp{i}")).unwrap();
            let tag = format!("{}{i}", std::process::id() % 10000);
            let (a, b) = (format!("wg{tag}"), format!("wp{tag}"));
            gw.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]).unwrap();
            gw.ip(&["link", "set", &b, "netns", &ns.path()]).unwrap();
            if i == 0 {
                gw.ip(&["addr", "add", &format!("{GW_OUTER}/32"), "dev", &a]).unwrap();
            }
            gw.ip(&["link", "set", &a, "up"]).unwrap();
            gw.ip(&["route", "add", &format!("{}/32", peer_outer(i)), "dev", &a, "src", GW_OUTER]).unwrap();
            ns.ip(&["addr", "add", &format!("{}/32", peer_outer(i)), "dev", &b]).unwrap();
            ns.ip(&["link", "set", &b, "up"]).unwrap();
            ns.ip(&["route", "add", "default", "dev", &b]).unwrap();
            peers.push(ns);
            gw_ifs.push(a);
        }
        Wan { gw, peers, gw_ifs, dir: TempDir::new("wireguard"), procs: Vec::new(), wg: Vec::new() }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `ttp tunnel up` with `toml` in `ns`.
    fn ttp(&mut self, ns: &Netns, name: &str, toml: &str) {
        let conf = self.file(name, toml);
        let mut c = ns.cmd(bin("ttp"));
        c.args(["tunnel", "up", "--config"]).arg(conf);
        let mut p = Proc::spawn(c).unwrap();
        p.wait_line("TUNNEL UP", Duration::from_secs(10)).unwrap();
        self.procs.push(p);
    }

    /// A WireGuard interface `ifname` in `ns`, configured by `wg set ifname ARGS...` (if
    /// there are any), up with `address`.
    fn wireguard(&mut self, which: Impl, ns: &Netns, ifname: &str, address: &str, wg_args: &[&str]) -> &Interface {
        let iface = Interface::start(which, ns, ifname).unwrap();
        if !wg_args.is_empty() {
            iface.set(ns, wg_args).unwrap();
        }
        iface.up(ns, address).unwrap();
        self.wg.push(iface);
        self.wg.last().expect("pushed")
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.wg.clear();
    }
}

fn ping(ns: &Netns, to: &str) -> bool {
    ns.cmd("ping").args(["-c", "1", "-W", "1", to]).output().is_ok_and(|o| o.status.success())
}

/// Pings until one answer comes (the first packets may go to the handshake).
fn reaches(ns: &Netns, to: &str) -> bool {
    (0..10).any(|_| ping(ns, to))
}

/// `ping -c n -i 0.05` from `ns`: how many of `n` were answered.
fn answered(ns: &Netns, to: &str, n: u32) -> u32 {
    let out = ns.cmd("ping").args(["-q", "-c", &n.to_string(), "-i", "0.05", "-W", "1", to]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split(',')
        .find_map(|part| part.trim().strip_suffix(" received").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no ping summary: {text}"))
}

/// Handshake initiations (148-byte datagrams) among tcpdump's lines.
fn initiations(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.ends_with("UDP, length 148")).count()
}

fn key_file(wan: &Wan, name: &str, key: &str) -> String {
    wan.file(name, key).to_string_lossy().into_owned()
}

#[test]
fn wireguard_go_and_boringtun_peers_use_a_ttp_gateway_and_roam() {
    let mut wan = Wan::new(2);
    let gw_key = key(&["genkey"], None);
    let gw_pub = key(&["pubkey"], Some(&gw_key));
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let k = key(&["genkey"], None);
            let p = key(&["pubkey"], Some(&k));
            (k, p)
        })
        .collect();
    let psk = key(&["genkey"], None);
    let mut toml =
        format!("private-key = \"{gw_key}\"\nlisten-port = 51820\naddress = [\"{GW_INNER}/24\"]\nrekey-after = 3\n");
    for (i, (_, public)) in keys.iter().enumerate() {
        let psk = if i == 0 { format!("preshared-key = \"{psk}\"\n") } else { String::new() };
        toml += &format!("[[peer]]\npublic-key = \"{public}\"\n{psk}allowed-ips = [\"{}/32\"]\n", peer_inner(i));
    }
    let gw = Netns::borrowed(&wan.gw.path());
    wan.ttp(&gw, "gw.toml", &toml);

    let endpoint = format!("{GW_OUTER}:51820");
    for (i, which) in [Impl::WireguardGo, Impl::Boringtun].into_iter().enumerate() {
        let ns = Netns::borrowed(&wan.peers[i].path());
        let private = key_file(&wan, &format!("peer{i}.key"), &keys[i].0);
        let psk_file = key_file(&wan, "psk", &psk);
        let ifname = format!("wgt{}{i}", std::process::id() % 10000);
        let mut args =
            vec!["private-key", &private, "peer", &gw_pub, "endpoint", &endpoint, "allowed-ips", "10.77.0.0/24"];
        if i == 0 {
            args.extend(["preshared-key", psk_file.as_str()]);
        }
        let address = format!("{}/24", peer_inner(i));
        wan.wireguard(which, &ns, &ifname, &address, &args);
        assert!(reaches(&ns, GW_INNER), "{which:?} never reached the ttp gateway");
        assert!(ping(&wan.gw, &peer_inner(i)), "the gateway cannot reach {which:?} back");
        // Near the MTU, both ways: WireGuard's padding and ttp's agree.
        let big = run(ns.cmd("ping").args(["-c", "1", "-W", "1", "-s", "1372", GW_INNER])).unwrap();
        assert!(big.status.success(), "{which:?}: {}", String::from_utf8_lossy(&big.stdout));
    }

    // boringtun's peer moves to another address while it pings, as a laptop changing
    // networks does; the gateway follows its authenticated datagrams there, and nothing is
    // lost but what was in flight. (boringtun with one unconnected socket, whose source
    // the route picks; wireguard-go 0.0.20220316 keeps sending from the address it last
    // received at, and once that address is gone it sends nothing at all.)
    let cap = Capture::start_filtered(&wan.gw, &wan.gw_ifs[1], &["udp"]).unwrap();
    let ns = &wan.peers[1];
    let veth = format!("wp{}1", std::process::id() % 10000);
    ns.ip(&["addr", "add", "192.0.2.99/32", "dev", &veth]).unwrap();
    wan.gw.ip(&["route", "add", "192.0.2.99/32", "dev", &wan.gw_ifs[1], "src", GW_OUTER]).unwrap();
    let before = answered(ns, GW_INNER, 20);
    ns.ip(&["route", "replace", "default", "dev", &veth, "src", "192.0.2.99"]).unwrap();
    ns.ip(&["addr", "del", &format!("{}/32", peer_outer(1)), "dev", &veth]).unwrap();
    let after = answered(ns, GW_INNER, 60);
    let lines = cap.stop().unwrap();
    assert_eq!(before, 20, "pings lost before the move");
    let tail = &lines[lines.len().saturating_sub(6)..];
    assert!(after >= 59, "{after} of 60 pings answered after the move: {tail:#?}");
    assert!(lines.iter().any(|l| l.contains("> 192.0.2.99.")), "the gateway never answered at the new address");
}

#[test]
fn a_ttp_client_uses_a_wireguard_go_gateway_across_rekeys() {
    let mut wan = Wan::new(1);
    let gw_key = key(&["genkey"], None);
    let gw_pub = key(&["pubkey"], Some(&gw_key));
    let me_key = key(&["genkey"], None);
    let me_pub = key(&["pubkey"], Some(&me_key));
    let private = key_file(&wan, "gw.key", &gw_key);
    let gw = Netns::borrowed(&wan.gw.path());
    let ifname = format!("wgg{}", std::process::id() % 10000);
    let allowed = format!("{}/32", peer_inner(0));
    wan.wireguard(
        Impl::WireguardGo,
        &gw,
        &ifname,
        &format!("{GW_INNER}/24"),
        &["private-key", &private, "listen-port", "51820", "peer", &me_pub, "allowed-ips", &allowed],
    );
    // The ttp side renews its session every 2 s: several rekeys during the transfer.
    let client = Netns::borrowed(&wan.peers[0].path());
    wan.ttp(
        &client,
        "client.toml",
        &format!(
            "private-key = \"{me_key}\"\naddress = [\"{}/24\"]\nrekey-after = 2\n\
             [[peer]]\npublic-key = \"{gw_pub}\"\nallowed-ips = [\"10.77.0.0/24\"]\nendpoint = \"{GW_OUTER}:51820\"\n\
             persistent-keepalive = 1\n",
            peer_inner(0)
        ),
    );
    assert!(reaches(&client, GW_INNER), "the ttp client never reached wireguard-go");

    let cap = Capture::start_filtered(&wan.gw, &wan.gw_ifs[0], &["udp"]).unwrap();
    let server = Proc::spawn({
        let mut c = wan.gw.cmd("iperf3");
        c.args(["-s", "-1", "-B", GW_INNER]);
        c
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = run(client.cmd("iperf3").args(["-c", GW_INNER, "-t", "5", "-J"])).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = report["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(bytes > 1e6, "iperf3 through wireguard-go moved {bytes} bytes");
    // No ping lost across the rekeys either (5 s of light load: at least two rekeys
    // happen here even if iperf3's load cost a handshake datagram its retry above).
    assert_eq!(answered(&client, GW_INNER, 100), 100, "pings lost across rekeys");
    drop(server);
    let lines = cap.stop().unwrap();
    // At least two rekeys (under iperf3's load a handshake datagram may be dropped, as any
    // UDP datagram may, and then waits for its retry).
    assert!(initiations(&lines) >= 2, "{} handshakes in 10 s with rekey-after = 2", initiations(&lines));

    // Idle, the client still sends a keepalive after each second of silence
    // (persistent-keepalive = 1), as a side behind a NAT must.
    let cap = Capture::start_filtered(&wan.gw, &wan.gw_ifs[0], &["udp"]).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    let lines = cap.stop().unwrap();
    let from_client = format!("{}.", peer_outer(0));
    let keepalives = lines.iter().filter(|l| l.contains(&from_client) && l.contains("> ") && l.contains("length 32"));
    let keepalives = keepalives.filter(|l| l.split("> ").next().is_some_and(|src| src.contains(&from_client))).count();
    assert!(keepalives >= 3, "{keepalives} keepalives in 3.5 idle seconds: {lines:#?}");
}

/// `ttp tunnel peer ARGS... --config gw.toml` in the gateway's namespace, under strace
/// (what it opens and how); returns its output and strace's lines.
fn peer_cmd(wan: &Wan, args: &[&str]) -> (std::process::Output, Vec<String>) {
    let log = wan.dir.0.join("strace.log");
    let mut c = wan.gw.cmd("strace");
    c.args(["-f", "-qq", "-e", "trace=open,openat,creat,chmod,fchmod,fchmodat", "-o"]).arg(&log);
    c.arg(bin("ttp")).args(["tunnel", "peer"]).args(args).arg("--config").arg(wan.dir.0.join("gw.toml"));
    if args[0] != "show" {
        c.args(["--runtime-dir", "/nonexistent"]);
    }
    let out = c.output().unwrap();
    let trace = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect();
    (out, trace)
}

/// Every file `trace` shows created or re-moded under `dir` was created exclusively
/// with mode 0600, and never given bits for others: a private key is never readable by
/// anyone else, not even for a moment.
fn assert_private(trace: &[String], dir: &std::path::Path) {
    let dir = dir.to_string_lossy();
    let created: Vec<&String> = trace.iter().filter(|l| l.contains(&*dir) && l.contains("O_CREAT")).collect();
    assert!(!created.is_empty(), "nothing created under {dir}: {trace:#?}");
    for l in created {
        assert!(l.contains("O_EXCL") && l.contains(", 0600)"), "created readable by others, or not exclusively: {l}");
    }
    for l in trace.iter().filter(|l| l.contains("chmod(")) {
        let mode = l.rsplit_once(", ").and_then(|(_, m)| m.split(')').next()).unwrap_or_default();
        let mode = u32::from_str_radix(mode.trim_start_matches('0'), 8).unwrap_or(0);
        assert_eq!(mode & 0o007, 0, "a private file given bits for others: {l}");
    }
}

#[test]
fn devices_added_with_peer_add_work_from_their_printed_configuration() {
    use std::os::unix::fs::PermissionsExt;
    let mut wan = Wan::new(2);
    let gw_key = key(&["genkey"], None);
    let gw_file = wan.file(
        "gw.toml",
        &format!("# the gateway\nprivate-key = \"{gw_key}\"\nlisten-port = 51820\naddress = [\"{GW_INNER}/24\"]\n"),
    );
    std::fs::set_permissions(&gw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let endpoint = format!("{GW_OUTER}:51820");

    // Without a default route there is nothing to guess the endpoint from: one clear
    // error, and nothing changes.
    let before = std::fs::read_to_string(&gw_file).unwrap();
    let (out, _) = peer_cmd(&wan, &["add", "phone"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--endpoint"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&gw_file).unwrap(), before);

    let (out, trace) = peer_cmd(&wan, &["add", "phone", "--endpoint", &endpoint, "--qr"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_private(&trace, &wan.dir.0);
    let kept = wan.dir.0.join("peers/phone.conf");
    let phone = std::fs::read_to_string(&kept).unwrap();
    assert!(text.contains(&phone) && text.contains('█'), "the configuration and its QR code: {text}");
    assert!(phone.contains(&format!("Address = {}/32", peer_inner(0))) && phone.contains("DNS = 10.77.0.1"), "{phone}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&gw_file), mode(&kept), mode(&wan.dir.0.join("peers"))), (0o600, 0o600, 0o700));
    assert!(std::fs::read_to_string(&gw_file).unwrap().starts_with("# the gateway\n"), "the file's comment kept");
    let (out, _) = peer_cmd(&wan, &["add", "laptop", "--endpoint", &endpoint]);
    assert!(out.status.success(), "{out:?}");
    let (out, _) = peer_cmd(&wan, &["add", "laptop", "--endpoint", &endpoint]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a peer named laptop"), "{out:?}");
    let (out, _) = peer_cmd(&wan, &["show", "phone"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&phone), "{out:?}");

    let gw = Netns::borrowed(&wan.gw.path());
    wan.ttp(&gw, "gw-running.toml", &std::fs::read_to_string(&gw_file).unwrap());

    // The phone's file, as a WireGuard app would import it: into wireguard-go with
    // `wg setconf` (after `wg-quick strip`, which takes out wg-quick's own keys).
    let ns = Netns::borrowed(&wan.peers[0].path());
    let ifname = format!("wgd{}", std::process::id() % 10000);
    let conf = wan.file(&format!("{ifname}.conf"), &phone);
    let address = format!("{}/32", peer_inner(0));
    wan.wireguard(Impl::WireguardGo, &ns, &ifname, &address, &[]).setconf(&ns, &conf).unwrap();
    ns.ip(&["route", "add", &format!("{GW_INNER}/32"), "dev", &ifname]).unwrap();
    assert!(reaches(&ns, GW_INNER), "wireguard-go with the printed configuration never reached the gateway");

    // The laptop's, as is, to `ttp tunnel up` (everything routed into the tunnel but the
    // way to the gateway).
    let laptop = std::fs::read_to_string(wan.dir.0.join("peers/laptop.conf")).unwrap();
    let ns = Netns::borrowed(&wan.peers[1].path());
    wan.ttp(&ns, "laptop.conf", &laptop);
    assert!(reaches(&ns, GW_INNER), "ttp with the printed configuration never reached the gateway");

    // Removed: its kept configuration goes with it.
    let (out, _) = peer_cmd(&wan, &["remove", "phone"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!kept.exists());
    let (out, _) = peer_cmd(&wan, &["list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("laptop") && !list.contains("phone"), "{list}");
}
