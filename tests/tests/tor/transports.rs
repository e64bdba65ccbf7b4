//! Bridges through the real transport clients Debian ships (issue 21), where this
//! machine can run the other side.
//!
//! A snowflake bridge with the real programs: Debian's `snowflake-client`,
//! started by ttp as Arti's managed transport, and Debian's `snowflake-proxy` on the
//! internet side. Debian ships no broker or server (golang-snowflake-dev 2.5.1 carries
//! only the client's and the proxy's code, its source tarball is not on the mirror, and
//! no Go toolchain may be fetched here); `tests/tools/snowflake_standin.py` stands in
//! for them and for a STUN server, speaking snowflake's own messages (the server's KCP
//! is a stand-in's: it never retransmits, the path being lossless here). Tor bootstraps
//! through them, end to end.
//!
//! A meek_lite bridge through obfs4proxy (its meek_lite client), to a meek server in
//! front of the private network's bridge (`tests/tools/meek_server.py`: meek-server is
//! not in Debian either): Tor bootstraps through it, end to end.

use std::process::Stdio;

use ttp_tests::{Netns, Proc, TempDir};

use super::*;

/// The stand-in broker (8080), server (8081) and STUN server (3478), on the private
/// network's own namespace.
const STANDIN: &str = "192.0.2.200";
/// The proxy's host: a namespace of its own behind the private network, as a volunteer's
/// browser is somewhere on the internet.
const PROXY: &str = "192.0.2.201";

/// An address of the private network's own (on its loopback), removed on drop.
struct LoAddr(&'static str);

impl LoAddr {
    fn add(addr: &'static str) -> LoAddr {
        Netns::borrowed(&net().netns).ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]).unwrap();
        LoAddr(addr)
    }
}

impl Drop for LoAddr {
    fn drop(&mut self) {
        let _ = Netns::borrowed(&net().netns).ip(&["addr", "del", &format!("{}/32", self.0), "dev", "lo"]);
    }
}

/// The broker, server and proxy, removed on drop (the proxy's namespace with its link).
struct Deployment {
    standin: Proc,
    proxy: Option<Proc>,
    proxy_ns: Netns,
    dir: TempDir,
    _addr: LoAddr,
}

impl Deployment {
    /// Starts the stand-in broker and server (in front of `bridge`, an ORPort) and makes
    /// the proxy's host; `uplink_if` is the test world's link in the private network's
    /// namespace, which forwards (only) between it and the proxy's link.
    fn start(uplink_if: &str, bridge: &str) -> Deployment {
        let net = net();
        let inet = Netns::borrowed(&net.netns);
        let addr = LoAddr::add(STANDIN);
        let dir = TempDir::new("snowflake");
        let proxy_ns = Netns::new("sfproxy").unwrap();
        let pid = net.netns.trim_start_matches("/proc/").trim_end_matches("/ns/net");
        let link = format!("tsf{}", std::process::id() % 100_000);
        proxy_ns.ip(&["link", "add", "sf0", "type", "veth", "peer", "name", &link, "netns", pid]).unwrap();
        proxy_ns.ip(&["addr", "add", &format!("{PROXY}/32"), "dev", "sf0"]).unwrap();
        proxy_ns.ip(&["link", "set", "sf0", "up"]).unwrap();
        proxy_ns.ip(&["route", "add", &format!("{STANDIN}/32"), "dev", "sf0"]).unwrap();
        proxy_ns.ip(&["route", "add", "default", "via", STANDIN, "dev", "sf0"]).unwrap();
        inet.ip(&["link", "set", &link, "up"]).unwrap();
        inet.ip(&["route", "add", &format!("{PROXY}/32"), "dev", &link]).unwrap();
        // Forwarding on these two links only: the rest of the private network stays as
        // it is for the tests that share it.
        for ifc in [link.as_str(), uplink_if] {
            let out = inet.cmd("sysctl").args(["-qw", &format!("net.ipv4.conf.{ifc}.forwarding=1")]).output().unwrap();
            assert!(out.status.success(), "forwarding on {ifc}: {}", String::from_utf8_lossy(&out.stderr));
        }

        let mut c = inet.cmd("python3");
        c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/snowflake_standin.py")).args([STANDIN, "300", bridge]);
        let mut standin = Proc::spawn(c).unwrap();
        standin.wait_line("LISTENING", Duration::from_secs(10)).expect("the stand-in broker and server");
        Deployment { standin, proxy: None, proxy_ns, dir, _addr: addr }
    }

    /// Starts Debian's snowflake-proxy, as nobody, with a resolver that fails at once:
    /// its NAT check asks the real broker's name, and nothing here must wait for that to
    /// time out.
    fn start_proxy(&mut self) {
        let resolv = self.dir.0.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
        let log = std::fs::File::create(self.dir.0.join("proxy.log")).unwrap();
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec setpriv --reuid=65534 --regid=65534 --clear-groups \
             snowflake-proxy -broker http://{STANDIN}:8080/ -relay ws://{STANDIN}:8081/ -allow-non-tls-relay \
             -stun stun:{STANDIN}:3478 -unsafe-logging -verbose",
            resolv.display()
        );
        let mut c = self.proxy_ns.cmd("unshare");
        c.args(["--mount", "sh", "-c", &script]).stderr(Stdio::from(log));
        self.proxy = Some(Proc::spawn(c).unwrap());
    }

    /// The stand-in's event lines until one that `is` (all of them, that one last). On
    /// failure, what it saw, the proxy's log and the daemon's.
    fn until(&mut self, r: &Running, what: &str, secs: u64, is: impl Fn(&str) -> bool) -> Vec<String> {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        loop {
            let line = self.standin.next_line().unwrap_or_else(|e| format!("(the stand-in ended: {e:#})"));
            seen.push(line.clone());
            if is(&line) {
                return seen;
            }
            if line.starts_with("(the stand-in") || line == "GAVE UP" || t0.elapsed() > Duration::from_secs(secs) {
                self.fail(r, &format!("no {what}: {seen:#?}"));
            }
        }
    }

    /// Fails the test with `what`, the proxy's log and the daemon's.
    fn fail(&self, r: &Running, what: &str) -> ! {
        let daemon = r.daemon.as_ref().map(|d| d.log()).unwrap_or_default();
        let counters = r.w.counters().map(|c| format!("{c:?}")).unwrap_or_default();
        let proxy = std::fs::read_to_string(self.dir.0.join("proxy.log")).unwrap_or_default();
        panic!("{what}\nthe proxy:\n{proxy}\nttp:\n{daemon}\ncounters: {counters}")
    }
}

/// A governed host with a snowflake bridge line, end to end: ttp runs Debian's
/// snowflake-client as the service user, without privileges; the line's broker URL,
/// front and fingerprint reach it (the broker sees the front's Host and the bridge's
/// fingerprint); while no proxy is there, Tor waits and status says so; once Debian's
/// snowflake-proxy polls the broker, the client meets it over WebRTC, Tor bootstraps
/// through it and a governed fetch works. On the host's uplink, nothing but the client's
/// rendezvous with the broker, its STUN requests and its WebRTC traffic to the proxy.
#[test]
fn a_snowflake_bridge_carries_tor_through_debians_client_and_proxy() {
    let client = std::path::Path::new("/usr/bin/snowflake-client");
    assert!(client.exists(), "snowflake-client is not installed (cargo xtask setup installs it)");
    let net = net();
    let bridge = net.relays.iter().find(|r| r.role == ttp_tests::testnet::Role::Bridge).expect("a bridge relay");
    let or_port = net.or_addrs().into_iter().find(|a| a.starts_with(&format!("{}:", bridge.addr))).unwrap();
    let w = World::with_testnet(net).unwrap();
    let uplink_addr = format!("198.19.{}.2", w.inet_if.trim_start_matches("th"));
    let mut d = Deployment::start(&w.inet_if, &or_port);
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();

    let fp = &bridge.rsa_id;
    // The address is the placeholder Tor Browser's lines carry: snowflake never dials it.
    let line = format!(
        "snowflake 192.0.2.199:1 {fp} fingerprint={fp} url=http://broker.example.net:8080/ front={STANDIN}:8080 \
         ice=stun:{STANDIN}:3478"
    );
    let mut r = with_bridge(w, &line, false);
    let t0 = Instant::now();

    let seen = d.until(&r, "the client's poll at the broker", 60, |l| l.starts_with("CLIENT "));
    let poll = seen.last().unwrap();
    assert!(poll.contains("host=broker.example.net:8080"), "the line's url and front did not reach the client: {poll}");
    assert!(poll.contains(&format!("fingerprint={fp}")), "the line's fingerprint did not reach the client: {poll}");
    // No proxy yet: Tor cannot be ready, and status says how far it got.
    let status: serde_json::Value = serde_json::from_str(&ttp(&r, &["status", "--json"])).unwrap();
    assert_eq!((&status["state"], &status["tor_ready"]), (&"starting".into(), &false.into()), "{status:#}");
    assert_eq!(status["bridges"], serde_json::json!({"count": 1, "transports": ["snowflake"], "connected": []}));

    d.start_proxy();
    let seen = d.until(&r, "the proxy's answer", 90, |l| l.starts_with("ANSWER "));
    let answer = seen.last().unwrap().clone();
    let relayed = d.until(&r, "the client's first bytes at the server", 60, |l| l.starts_with("RELAY "));
    let relayed = relayed.last().unwrap();
    assert!(relayed.contains("token=ok"), "not the client's turbotunnel token: {relayed}");
    assert!(relayed.contains(&format!("client_ip={uplink_addr}")), "not this host's client: {relayed}");
    if let Err(e) = r.daemon.as_mut().unwrap().proc.wait_line("READY", Duration::from_secs(120)) {
        d.fail(&r, &format!("Tor did not bootstrap through the snowflake bridge: {e:#}"));
    }
    eprintln!("Tor ready through snowflake {:.1} s after the kill-switch was on", t0.elapsed().as_secs_f64());
    // Tor's connection to the bridge, as an smux stream the server took to the ORPort.
    d.until(&r, "an smux stream to the bridge", 10, |l| l.starts_with("STREAM "));
    let t1 = Instant::now();
    while curl(&r.w, &format!("http://{WEB}/index.txt")) != PAGE {
        if t1.elapsed() > Duration::from_secs(60) {
            d.fail(&r, "no governed fetch through the snowflake bridge");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // The proxy's candidates in its answer ("udp 192.0.2.201:40000"): where WebRTC goes.
    let mut allowed: Vec<String> = vec![format!("{STANDIN}.8080"), format!("{STANDIN}.3478")];
    allowed.extend(answer.split_whitespace().skip(1).collect::<Vec<_>>().chunks(2).map(|c| c[1].replace(':', ".")));
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    assert_only_to_the_bridge(&cap.stop().unwrap(), &allowed);
    assert_unprivileged_transport(&r, "snowflake-client", |comm| comm == "snowflake-clien");
    let status: serde_json::Value = serde_json::from_str(&ttp(&r, &["status", "--json"])).unwrap();
    assert_eq!((&status["state"], &status["tor_ready"]), (&"running".into(), &true.into()), "{status:#}");
}

/// Where the meek server listens (the front the line names).
const MEEK: &str = "192.0.2.202";

/// A meek_lite bridge through obfs4proxy, the program ttp runs for it, to a meek server in
/// front of the private network's bridge (`tests/tools/meek_server.py`: meek-server is
/// not in Debian): Tor bootstraps through it and a governed fetch works; the line's url
/// and front reach the client (the server sees the url's host in Host, on the front's
/// address); nothing leaves the host but the client's HTTP to the front; the client runs
/// unprivileged.
#[test]
fn a_meek_lite_bridge_carries_tor_through_obfs4proxy() {
    let net = net();
    let bridge = net.relays.iter().find(|r| r.role == ttp_tests::testnet::Role::Bridge).expect("a bridge relay");
    let or_port = net.or_addrs().into_iter().find(|a| a.starts_with(&format!("{}:", bridge.addr))).unwrap();
    let _addr = LoAddr::add(MEEK);
    let mut c = Netns::borrowed(&net.netns).cmd("python3");
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/meek_server.py")).args([&format!("{MEEK}:8082"), &or_port]);
    let mut server = Proc::spawn(c).unwrap();
    server.wait_line("LISTENING", Duration::from_secs(10)).expect("the meek server");

    let w = World::with_testnet(net).unwrap();
    let cap = Capture::start(&w.inet, &w.inet_if).unwrap();
    let id = &bridge.rsa_id;
    // The address is a placeholder, as in Tor Browser's meek lines: the client dials the front.
    let line = format!("meek_lite 192.0.2.199:2 {id} url=http://meek.example.net:8082/ front={MEEK}:8082");
    let r = with_bridge(w, &line, true);
    let t0 = Instant::now();
    while curl(&r.w, &format!("http://{WEB}/index.txt")) != PAGE {
        assert!(t0.elapsed() < Duration::from_secs(90), "no stream through the meek_lite bridge:\n{}", r.failures());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_only_to_the_bridge(&cap.stop().unwrap(), &[&format!("{MEEK}.8082")]);
    let session = server.next_line().unwrap();
    assert_eq!(session, "SESSION host=meek.example.net:8082", "the line's url and front did not reach obfs4proxy");
    assert_unprivileged_transport(&r, "obfs4proxy", |comm| comm == "obfs4proxy");
    let status: serde_json::Value = serde_json::from_str(&ttp(&r, &["status", "--json"])).unwrap();
    assert_eq!(status["bridges"], serde_json::json!({"count": 1, "transports": ["meek_lite"], "connected": []}));
}
