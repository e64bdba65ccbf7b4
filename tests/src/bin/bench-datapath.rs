//! `cargo xtask bench datapath`: what redirection costs a governed connection.
//!
//! Side by side in one run, same namespaces, same listener code: a governed client makes
//! sequential TCP connections and reads the first byte of the answer, through
//! (a) no redirect (it connects to the listener itself),
//! (b) ttp's eBPF redirect (connect4 + sock_ops; the listener reads CONN_DST),
//! (c) an nftables `redirect` rule (the listener reads SO_ORIGINAL_DST),
//! interleaved a b c a b c ... and reported as medians. Then each ttp program's average
//! cost per run, from the kernel's own BPF statistics (run_time_ns / run_cnt), collected
//! while BPF_ENABLE_STATS is held (released on exit; the sysctl is never touched).
//!
//! Subcommands used internally: `serve MODE PORT ...` and `client ADDR N`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ttp_tests::{addr, bin, run, Proc, World, UPLINK};

const PORT: u16 = 9040;
const CONNS: usize = 5000;
const ROUNDS: usize = 5;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1], &args[2..]),
        Some("client") => client(args[1].parse()?, args[2].parse()?),
        None => orchestrate(),
        Some(other) => bail!("unknown subcommand {other}"),
    }
}

/// Listener: per connection, recover the original destination the way the mode does it,
/// write one line, close.
fn serve(mode: &str, rest: &[String]) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", PORT))?;
    let mut maps = None;
    let _datapath = if mode == "bpf" {
        let cgroup = rest[0].clone().into();
        let daemon_cgroup: std::path::PathBuf = rest[1].clone().into();
        ttp::cgroup::move_into(&daemon_cgroup, std::process::id())?;
        let opts = ttp::datapath::DatapathOptions {
            cgroup,
            uplinks: vec![UPLINK.into()],
            gateways: vec![],
            pin_dir: rest[2].clone().into(),
            trans_port: PORT,
            dns_port: PORT + 13,
            daemon_cgroup,
            daemon_uid: None,
            virtual_v4: None,
            start_locked: false,
            policy: ttp::datapath::Policy { bypass_cgroups: vec![rest[3].clone().into()], ..Default::default() },
        };
        let (dp, _logs) = ttp::datapath::Datapath::start(&opts)?;
        maps = Some(ttp::datapath::ServiceMaps::open_pinned(&dp.layout().maps())?);
        Some(dp)
    } else {
        None
    };
    println!("LISTENING");
    std::io::stdout().flush()?;
    for s in listener.incoming() {
        let mut s = s?;
        let peer = s.peer_addr()?;
        let orig = match mode {
            "bpf" => maps.as_mut().and_then(|m| m.take_original_destination(peer)),
            "nft" => original_dst(&s),
            _ => None,
        };
        let _ = writeln!(s, "{}", orig.map(|o| o.to_string()).unwrap_or_else(|| "-".into()));
    }
    Ok(())
}

/// getsockopt(SOL_IP, SO_ORIGINAL_DST): what nftables' redirect leaves for the listener.
fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: the buffer is a sockaddr_in and len says so.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        (r == 0).then(|| {
            SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)).into(),
                u16::from_be(sa.sin_port),
            )
        })
    }
}

/// N sequential connections; prints "conns_per_s p50_us p99_us".
fn client(to: SocketAddr, n: usize) -> Result<()> {
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(to)?;
        let got = s.read(&mut buf)?;
        if got == 0 {
            bail!("no answer from {to}");
        }
        lat.push(t.elapsed());
    }
    let total = t0.elapsed();
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!("{:.0} {:.1} {:.1}", n as f64 / total.as_secs_f64(), p(0.5), p(0.99));
    Ok(())
}

struct Sample {
    cps: f64,
    p50: f64,
    p99: f64,
}

fn orchestrate() -> Result<()> {
    let w = World::new()?;
    let server_addr = format!("{}:80", addr::SERVER_V4);
    let mut results: Vec<(&str, Vec<Sample>)> =
        vec![("no redirect", vec![]), ("ttp eBPF", vec![]), ("nftables", vec![])];
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    for round in 0..ROUNDS {
        for (i, (name, samples)) in results.iter_mut().enumerate() {
            let mode = ["none", "bpf", "nft"][i];
            let mut cmd = w.host.cmd(bin("bench-datapath"));
            cmd.args(["serve", mode]).arg(&w.governed.path).arg(&w.daemon.path).arg(&w.pin_dir).arg(&w.bypass.path);
            let mut server = Proc::spawn(cmd)?;
            server.wait_line("LISTENING", Duration::from_secs(30))?;
            if mode == "nft" {
                nft(&w, true)?;
            }
            let target = if mode == "none" { format!("127.0.0.1:{PORT}") } else { server_addr.clone() };
            let exe = bin("bench-datapath");
            let out =
                w.run_in(&w.governed, 1001, 1001, &[exe.to_str().unwrap(), "client", &target, &CONNS.to_string()]);
            if mode == "nft" {
                nft(&w, false)?;
            }
            drop(server);
            let _ = ttp::datapath::teardown(&ttp::datapath::PinLayout::new(&w.pin_dir));
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() != 3 {
                bail!("{name}: client failed: {text} {}", String::from_utf8_lossy(&out.stderr));
            }
            eprintln!("round {round} {name:<12} {:>7.0} conn/s  p50 {:>6.1} us  p99 {:>6.1} us", v[0], v[1], v[2]);
            samples.push(Sample { cps: v[0], p50: v[1], p99: v[2] });
        }
    }
    println!("\n| path ({CONNS} sequential connections, median of {ROUNDS}) | connections/s | connect-to-first-byte p50 | p99 |");
    println!("|---|---|---|---|");
    for (name, s) in &results {
        let med = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = s.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("| {name} | {:.0} | {:.1} us | {:.1} us |", med(|x| x.cps), med(|x| x.p50), med(|x| x.p99));
    }
    // Cost per run of each ttp program, from the kernel (the programs are gone now,
    // so this is measured in a final dedicated round with traffic on every hook).
    program_costs(&w)?;
    drop(stats);
    Ok(())
}

/// One more eBPF round with traffic through every hook, then run_time_ns / run_cnt.
fn program_costs(w: &World) -> Result<()> {
    let mut cmd = w.host.cmd(bin("bench-datapath"));
    cmd.args(["serve", "bpf"]).arg(&w.governed.path).arg(&w.daemon.path).arg(&w.pin_dir).arg(&w.bypass.path);
    let mut server = Proc::spawn(cmd)?;
    server.wait_line("LISTENING", Duration::from_secs(30))?;
    let exe = bin("bench-datapath");
    let exe = exe.to_str().unwrap();
    w.run_in(&w.governed, 1001, 1001, &[exe, "client", &format!("{}:80", addr::SERVER_V4), "2000"]);
    // Uplink traffic for the TC program, as in real use: a long-lived stream from the
    // daemon's own cgroup (Tor's connections), one second of iperf3.
    let mut iperf = w.inet.cmd("iperf3");
    iperf.args(["-s", "-1", "-B", addr::SERVER_V4, "-p", "5201"]);
    let _iperf_server = Proc::spawn(iperf)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = w.run_in(&w.daemon, 0, 0, &["iperf3", "-c", addr::SERVER_V4, "-p", "5201", "-t", "1"]);
    if !out.status.success() {
        bail!("iperf3 from the daemon cgroup failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    println!("\n| program | runs | average ns per run |\n|---|---|---|");
    let names =
        ["connect4", "sock_ops", "sock_create", "sock_release", "skb_egress", "tc_egress", "getpeername4", "recvmsg4"];
    let links = std::fs::read_dir(w.pin_dir.join("links"))?.count();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = info.name_as_str() else { continue };
        if names.contains(&name) && info.run_count() > 0 {
            let avg = info.run_time().as_nanos() as f64 / info.run_count() as f64;
            println!("| {name} | {} | {avg:.0} |", info.run_count());
        }
    }
    eprintln!("({links} links were attached)");
    drop(server);
    let _ = ttp::datapath::teardown(&ttp::datapath::PinLayout::new(&w.pin_dir));
    Ok(())
}

fn nft(w: &World, on: bool) -> Result<()> {
    if on {
        let rules = format!(
            "table ip ttpbench {{\n  chain out {{\n    type nat hook output priority -100; policy accept;\n    \
             ip daddr {} tcp dport 80 redirect to :{PORT}\n  }}\n}}\n",
            addr::SERVER_V4
        );
        let file = std::env::temp_dir().join(format!("ttpbench-{}.nft", std::process::id()));
        std::fs::write(&file, rules)?;
        run(w.host.cmd("nft").arg("-f").arg(&file))?;
        let _ = std::fs::remove_file(&file);
    } else {
        run(w.host.cmd("nft").args(["delete", "table", "ip", "ttpbench"]))?;
    }
    Ok(())
}
