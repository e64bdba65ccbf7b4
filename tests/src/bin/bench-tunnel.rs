//! `cargo xtask bench tunnel`: throughput through the tunnel, side by side with the bare
//! veth, boringtun (`boringtun-cli`), Debian's wireguard-go and a wireguard-go with TUN
//! offloads (all configured with Debian's `wg`), in one run on the same two namespaces and veth. iperf3: one TCP stream, four TCP streams, and UDP
//! packets per second (small datagrams); and the CPU both tunnel ends used per gigabit.
//!
//! Both ends run on this machine, so "CPU" is the two tunnel processes' user+system time
//! (from /proc; for ttp, whose `tunnel up` forks its device, the children's too) while
//! iperf3 ran, divided by the gigabits moved.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use ttp_tests::{
    bin, run, tunnel_key,
    wireguard::{Impl, Interface},
    Netns, Proc, TempDir,
};

const SECS: u32 = 8;
const ROUNDS: usize = 3;
const A_OUTER: &str = "192.0.2.1";
const B_OUTER: &str = "192.0.2.2";
const A_INNER: &str = "10.77.0.1";
const B_INNER: &str = "10.77.0.2";

/// One measurement: iperf3's rate and the tunnel ends' CPU seconds meanwhile.
struct Sample {
    /// Gbit/s (TCP) or packets/s (UDP).
    rate: f64,
    cpu_secs: f64,
}

fn main() -> Result<()> {
    // boringtun-cli from target/peers (`cargo xtask test` builds it there), or the PATH.
    if std::env::var_os("TTP_TEST_BORINGTUN").is_none()
        && !ttp_tests::target_dir().join("peers/bin/boringtun-cli").exists()
    {
        let found = which("boringtun-cli").context(
            "boringtun-cli is missing: `cargo xtask test` builds it under target/peers (or `cargo install boringtun-cli --locked`)",
        )?;
        std::env::set_var("TTP_TEST_BORINGTUN", found);
    }
    which("wg").context("wg is not installed: `apt-get install wireguard-tools`")?;
    which("wireguard-go").context("wireguard-go is not installed: `apt-get install wireguard-go`")?;
    which("iperf3").context("iperf3 is not installed: `apt-get install iperf3`")?;
    let (a, b) = (Netns::new("bta").unwrap(), Netns::new("btb").unwrap());
    a.ip(&["link", "add", "bt0", "type", "veth", "peer", "name", "bt1"])?;
    a.ip(&["link", "set", "bt1", "netns", &b.path()])?;
    for (ns, ifc, addr) in [(&a, "bt0", A_OUTER), (&b, "bt1", B_OUTER)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifc])?;
        ns.ip(&["link", "set", ifc, "up"])?;
    }
    let dir = TempDir::new("bench-tunnel");
    let _server = iperf_server(&b)?;

    let mut table: Vec<(&str, Vec<[Sample; 3]>)> = vec![
        ("bare veth", vec![]),
        ("ttp tunnel", vec![]),
        ("boringtun 0.7.1", vec![]),
        ("wireguard-go 0.0.20220316", vec![]),
        ("wireguard-go 0.0.20231211 (TUN offloads)", vec![]),
    ];
    for round in 0..ROUNDS {
        table[0].1.push(measure(&a, B_OUTER, &[])?);
        {
            let ends = ttp_tunnel(&a, &b, &dir)?;
            let pids: Vec<u32> = ends.iter().map(|p| p.child.id()).collect();
            table[1].1.push(measure(&a, B_INNER, &pids)?);
        }
        for (row, which) in [(2, Impl::Boringtun), (3, Impl::WireguardGo), (4, Impl::WireguardGoOffloads)] {
            let ends = wireguard_tunnel(which, &a, &b, &dir, round)?;
            let pids: Vec<u32> = ends.iter().map(|i| i.pid()).collect();
            table[row].1.push(measure(&a, B_INNER, &pids)?);
        }
        eprintln!(
            "round {round}, 1 stream, Gbit/s: {}",
            table.iter().map(|(name, r)| format!("{name} {:.2}", r[round][0].rate)).collect::<Vec<_>>().join(", ")
        );
    }
    println!("| path (median of {ROUNDS} rounds, {SECS} s each) | 1 TCP stream, Gbit/s | 4 TCP streams, Gbit/s | UDP 64-byte datagrams, packets/s | tunnel CPU, core-seconds per Gbit (1 stream) |");
    println!("|---|---|---|---|---|");
    for (name, rounds) in &table {
        let med = |i: usize| median(rounds.iter().map(|r| r[i].rate).collect());
        let cpu = median(rounds.iter().map(|r| r[0].cpu_secs / (r[0].rate * f64::from(SECS))).collect());
        let cpu = if *name == "bare veth" { "—".to_string() } else { format!("{cpu:.2}") };
        println!("| {name} | {:.2} | {:.2} | {:.0} | {cpu} |", med(0), med(1), med(2));
    }
    for (name, rounds) in &table {
        let one: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r[0].rate)).collect();
        println!("rounds, {name}, 1 stream: {}", one.join(", "));
    }
    Ok(())
}

fn which(program: &str) -> Option<String> {
    let out = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn iperf_server(ns: &Netns) -> Result<Proc> {
    let mut c = ns.cmd("iperf3");
    c.args(["-s", "--logfile", "/dev/null"]);
    let p = Proc::spawn(c)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// 1 TCP stream, 4 TCP streams, UDP small datagrams, each SECS long, to `to`.
fn measure(client: &Netns, to: &str, pids: &[u32]) -> Result<[Sample; 3]> {
    let tcp1 = iperf(client, to, &["-P", "1"], pids)?;
    let tcp4 = iperf(client, to, &["-P", "4"], pids)?;
    let udp = iperf(client, to, &["-u", "-b", "0", "-l", "64"], pids)?;
    Ok([tcp1, tcp4, udp])
}

fn iperf(client: &Netns, to: &str, extra: &[&str], pids: &[u32]) -> Result<Sample> {
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let out = run(client.cmd("iperf3").args(["-c", to, "-t", &SECS.to_string(), "-J"]).args(extra))?;
    let cpu_secs = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu0;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let end = &v["end"];
    let rate = if extra.contains(&"-u") {
        // Packets the receiver got, per second.
        let s = &end["sum"];
        let received = s["packets"].as_f64().unwrap_or(0.0) - s["lost_packets"].as_f64().unwrap_or(0.0);
        received / s["seconds"].as_f64().unwrap_or(f64::from(SECS))
    } else {
        end["sum_received"]["bits_per_second"].as_f64().context("iperf3 result")? / 1e9
    };
    Ok(Sample { rate, cpu_secs })
}

/// utime + stime of a process and its threads, and of its children (ttp's device
/// process), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let children: f64 = children.split_whitespace().filter_map(|c| c.parse().ok()).map(cpu_secs).sum();
    children + own_cpu_secs(pid)
}

fn own_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 =
        f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Keys for two sides: (private a, public a, private b, public b).
fn keys() -> Result<(String, String, String, String)> {
    let (ka, kb) = (tunnel_key(&["genkey"], "")?, tunnel_key(&["genkey"], "")?);
    Ok((ka.clone(), tunnel_key(&["pubkey"], &ka)?, kb.clone(), tunnel_key(&["pubkey"], &kb)?))
}

fn ttp_tunnel(a: &Netns, b: &Netns, dir: &TempDir) -> Result<Vec<Proc>> {
    let (ka, pa, kb, pb) = keys()?;
    let side = |me: &str, addr: &str, peer: &str, peer_addr: &str, endpoint: &str| {
        format!(
            "private-key = \"{me}\"\nlisten-port = 51820\naddress = [\"{addr}/24\"]\ninterface = \"btt0\"\n\
             [[peer]]\npublic-key = \"{peer}\"\nallowed-ips = [\"{peer_addr}/32\"]\nendpoint = \"{endpoint}:51820\"\n"
        )
    };
    std::fs::write(dir.0.join("a.toml"), side(&ka, A_INNER, &pb, B_INNER, B_OUTER))?;
    std::fs::write(dir.0.join("b.toml"), side(&kb, B_INNER, &pa, A_INNER, A_OUTER))?;
    let mut ends = vec![];
    for (ns, f) in [(a, "a.toml"), (b, "b.toml")] {
        let mut c = ns.cmd(bin("ttp"));
        c.args(["tunnel", "up", "--config"]).arg(dir.0.join(f));
        let mut p = Proc::spawn(c)?;
        p.wait_line("TUNNEL UP", Duration::from_secs(10))?;
        ends.push(p);
    }
    wait_for_ping(a, B_INNER)?;
    Ok(ends)
}

/// `which` on both ends: boringtun-cli 0.7.1 (one thread: its default of four is about 2x
/// slower on this 2-core machine), Debian's wireguard-go (0.0.20220316: before
/// wireguard-go's TUN offloads of 2023), or wireguard-go 0.0.20231211 with them.
fn wireguard_tunnel(which: Impl, a: &Netns, b: &Netns, dir: &TempDir, round: usize) -> Result<Vec<Interface>> {
    let (ka, pa, kb, pb) = keys()?;
    let mut ends = vec![];
    let pid = std::process::id() % 10000;
    for (i, (ns, key, addr, peer, peer_addr, endpoint)) in
        [(a, &ka, A_INNER, &pb, B_INNER, B_OUTER), (b, &kb, B_INNER, &pa, A_INNER, A_OUTER)].into_iter().enumerate()
    {
        let iface = Interface::start(which, ns, &format!("wg{pid}x{round}{i}"))?;
        let keyfile = dir.0.join(format!("wg{i}.key"));
        std::fs::write(&keyfile, key)?;
        let keyfile = keyfile.to_string_lossy().into_owned();
        let (allowed, endpoint) = (format!("{peer_addr}/32"), format!("{endpoint}:51820"));
        iface.set(
            ns,
            &[
                "listen-port",
                "51820",
                "private-key",
                &keyfile,
                "peer",
                peer,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        )?;
        iface.up(ns, &format!("{addr}/24"))?;
        ends.push(iface);
    }
    wait_for_ping(a, B_INNER)?;
    Ok(ends)
}

fn wait_for_ping(ns: &Netns, to: &str) -> Result<()> {
    for _ in 0..20 {
        if ns.cmd("ping").args(["-c", "1", "-W", "1", to]).output()?.status.success() {
            return Ok(());
        }
    }
    bail!("no ping through the tunnel to {to}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
