//! `cargo xtask bench tor`: ttp's TransPort and DNSPort (eBPF redirect, embedded Arti)
//! against C tor's TransPort and DNSPort behind an nftables redirect, the setup older
//! transparent-proxy tools use. C tor twice: as it comes, and with `ConfluxEnabled 0`
//! (one circuit per stream, as Arti 0.47). Same private Tor network, same run,
//! interleaved rounds; each side in its own host namespace joined to the network by its
//! own veth.
//!
//! Measures: first byte of a small GET (median of 20), 50 MB throughput (median of 5),
//! DNS answers per second through the redirect (cached: one name; uncached: new names),
//! and the daemon's resident memory with 1,000 open streams. With
//! `TESTNET_EXIT_LOG="[circ]info"`, also how many circuits carried each download and the
//! congestion window and round-trip time the exit gave each (see ttp_tests::exitlog).
use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ttp_tests::{
    bench::{ctor_side, curl_metric, finish, governed, median, ttp_side, warm_up, Side, GOVERNED, WEB},
    bin,
    testnet::Testnet,
    Proc,
};

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("ttp-bench-net-{}", std::process::id()));
    let net = Testnet::start(&dir)?;
    eprintln!("private Tor network up (consensus after {:.1} s)", net.consensus_after);
    let mut hold_server = net.cmd(bin("testkit"));
    hold_server.args(["serve-hold", &format!("{WEB}:7000")]);
    let mut hold_server = Proc::spawn(hold_server)?;
    hold_server.wait_line("LISTENING", Duration::from_secs(10))?;

    // C tor twice: as it comes (its client links two circuits to the exit per stream with
    // conflux, which Arti 0.47 cannot do) and with conflux off (one circuit per stream,
    // like Arti): the second isolates what each client does with one circuit.
    let sides = [
        ttp_side(&net, &["--max-streams", "5000"])?,
        ctor_side(&net, "C tor", "C tor 0.4.9 (TransPort, nftables redirect)", "")?,
        ctor_side(&net, "C tor 1c", "C tor, `ConfluxEnabled 0`", "ConfluxEnabled 0\n")?,
    ];
    for s in &sides {
        warm_up(s)?;
    }

    // BENCH_ONLY=speed|dns|memory runs one part (while working on it); the table is made
    // from complete runs only.
    let only = std::env::var("BENCH_ONLY").ok();
    let want = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let n = sides.len();
    let (mut ttfb, mut thr, mut cpu) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    // Each 50 MB download: the side, and when it ran (seconds since local midnight, as the
    // exits' logs have it).
    let mut downloads: Vec<(usize, f64, f64)> = vec![];
    for round in 0..if want("speed") { 20 } else { 0 } {
        for (i, s) in sides.iter().enumerate() {
            ttfb[i].push(curl_metric(s, "/index.txt", "%{time_starttransfer}")? * 1000.0);
            if round < 5 {
                let (cpu0, t0, from) = (cpu_secs(s.pid)?, Instant::now(), local_seconds_of_day());
                thr[i].push(curl_metric(s, "/50M.bin", "%{speed_download}")? / 1e6);
                downloads.push((i, from, local_seconds_of_day()));
                // The client's share of a core while it moved the data: near 1.0 means it
                // was bound by its own per-cell work, not by the network or flow control.
                cpu[i].push((cpu_secs(s.pid)? - cpu0) / t0.elapsed().as_secs_f64());
                eprintln!(
                    "round {round} {:<8} 50 MB at {:.1} MB/s, client busy {:.0}% of a core",
                    s.name,
                    thr[i].last().unwrap(),
                    cpu[i].last().unwrap() * 100.0
                );
            }
        }
    }
    if std::env::var_os("TESTNET_EXIT_LOG").is_some() && !downloads.is_empty() {
        exits_view(&net, &sides, &downloads)?;
    }
    let mut dns_cached = vec![];
    let mut dns_uncached = vec![];
    for s in sides.iter().filter(|_| want("dns")) {
        dns_cached.push(dns_rate(s, 2000, false)?);
        dns_uncached.push(dns_rate(s, 100, true)?);
    }
    let mut rss_idle: Vec<Mem> = vec![];
    let mut rss_held: Vec<Mem> = vec![];
    let mut rss_after: Vec<Mem> = vec![];
    for s in sides.iter().filter(|_| want("memory")) {
        rss_idle.push(rss_mb(s.pid)?);
        rss_held.push(with_streams_held(s, 1000)?);
        // What the daemon keeps of the burst.
        std::thread::sleep(AFTER_RELEASE);
        let after = rss_mb(s.pid)?;
        eprintln!(
            "{}: {}s after the streams closed, RSS {:.1} MB ({:.1} MB anonymous)",
            s.name,
            AFTER_RELEASE.as_secs(),
            after.rss,
            after.anon
        );
        rss_after.push(after);
    }
    if only.is_some() {
        println!("sides {:?}", sides.iter().map(|s| s.name).collect::<Vec<_>>());
        println!("ttfb ms {ttfb:?}\nthroughput MB/s {thr:?}\nclient CPU (cores) {cpu:?}\ndns/s cached {dns_cached:?} new {dns_uncached:?}");
        println!("memory MB idle {rss_idle:?} with 1,000 streams {rss_held:?} after them {rss_after:?}");
        finish(sides, &dir);
        return Ok(());
    }

    let row = |what: &str, v: Vec<String>| println!("| {what} | {} |", v.join(" | "));
    println!();
    row("measure (median)", sides.iter().map(|s| s.label.to_string()).collect());
    println!("|---|{}", "---|".repeat(n));
    let f1 = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>();
    let f0 = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>();
    row("first byte of a small GET, ms (20 runs)", f1(&ttfb.iter().map(|v| median(v)).collect::<Vec<_>>()));
    row("50 MB download, MB/s (5 runs)", thr.iter().map(|v| format!("{:.2}", median(v))).collect());
    row("client CPU during the download, cores", cpu.iter().map(|v| format!("{:.2}", median(v))).collect());
    row("DNS answers/s, cached name (2,000 queries)", f0(&dns_cached));
    row("DNS answers/s, new names (100 queries, resolved by the exit)", f0(&dns_uncached));
    row(
        "daemon RSS (with its helper processes), MB, idle after the runs",
        f1(&rss_idle.iter().map(|m| m.rss).collect::<Vec<_>>()),
    );
    row(
        "daemon RSS (with its helper processes), MB, with 1,000 open streams",
        f1(&rss_held.iter().map(|m| m.rss).collect::<Vec<_>>()),
    );
    row(
        "PSS (shared pages divided among their processes), MB, idle / with 1,000 streams",
        rss_idle.iter().zip(&rss_held).map(|(i, h)| format!("{:.1} / {:.1}", i.pss, h.pss)).collect(),
    );
    row(
        "of which anonymous (heap, stacks), MB, idle / with 1,000 streams",
        rss_idle.iter().zip(&rss_held).map(|(i, h)| format!("{:.1} / {:.1}", i.anon, h.anon)).collect(),
    );
    row(
        &format!("PSS / anonymous, MB, {} s after the 1,000 streams closed", AFTER_RELEASE.as_secs()),
        rss_after.iter().map(|m| format!("{:.1} / {:.1}", m.pss, m.anon)).collect(),
    );
    println!();
    for (s, t) in sides.iter().zip(&thr) {
        println!("throughput samples MB/s, {}: {:?}", s.name, round2(t));
    }
    finish(sides, &dir);
    Ok(())
}

/// What the exits' congestion control gave each side's downloads (with
/// `TESTNET_EXIT_LOG="[circ]info"`): how many circuits carried one download, and each
/// circuit's window and round-trip time. A side's throughput is about its circuits'
/// windows per round trip, summed.
fn exits_view(net: &Testnet, sides: &[Side], downloads: &[(usize, f64, f64)]) -> Result<()> {
    let mut samples = vec![];
    for e in fs::read_dir(&net.dir)?.flatten() {
        if let Ok(log) = fs::read_to_string(e.path().join("exit.log")) {
            samples.extend(ttp_tests::exitlog::parse(&log));
        }
    }
    println!(
        "\nAt the exits, per 50 MB download (circuits: SENDMEs, min/mean RTT ms, mean cwnd cells, cwnd/RTT MB/s):"
    );
    let mut per_side: Vec<Vec<ttp_tests::exitlog::Leg>> = vec![vec![]; sides.len()];
    let mut count: Vec<Vec<f64>> = vec![vec![]; sides.len()];
    for &(i, from, to) in downloads {
        let legs = ttp_tests::exitlog::legs(&samples, from, to);
        count[i].push(legs.len() as f64);
        per_side[i].extend(legs.iter().cloned());
        let each: Vec<String> = legs
            .iter()
            .map(|l| {
                format!(
                    "{} {}/{:.1} {:.0} {:.1}",
                    l.sendmes,
                    l.min_rtt_ms,
                    l.mean_rtt_ms,
                    l.mean_cwnd,
                    l.window_rate_mb_s()
                )
            })
            .collect();
        let sum: f64 = legs.iter().map(|l| l.window_rate_mb_s()).sum();
        println!(
            "  {:<8} {:.1} s, {} circuit(s), together {sum:.1} MB/s: {}",
            sides[i].name,
            to - from,
            legs.len(),
            each.join(" | ")
        );
    }
    println!(
        "\n| client | circuits per download (median) | per circuit: mean cwnd, cells | min / mean RTT, ms | \
         Vegas' queue estimate, cells | cwnd/RTT, MB/s |"
    );
    println!("|---|---|---|---|---|---|");
    for ((s, legs), c) in sides.iter().zip(&per_side).zip(&count) {
        if legs.is_empty() {
            continue;
        }
        let n = legs.len() as f64;
        let mean = |f: fn(&ttp_tests::exitlog::Leg) -> f64| legs.iter().map(f).sum::<f64>() / n;
        let min_rtt = legs.iter().map(|l| l.min_rtt_ms).min().unwrap_or_default();
        println!(
            "| {} | {} | {:.0} | {min_rtt} / {:.1} | {:.0} | {:.1} |",
            s.label,
            median(c),
            mean(|l| l.mean_cwnd),
            mean(|l| l.mean_rtt_ms),
            mean(|l| l.mean_queue),
            mean(|l| l.window_rate_mb_s())
        );
    }
    Ok(())
}

/// Now, in seconds since the local midnight (C tor logs local time).
fn local_seconds_of_day() -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: an all-zero `tm` is valid (integers and a null pointer), and localtime_r
    // writes only into it.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    f64::from(tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec) + f64::from(now.subsec_millis()) / 1000.0
}

fn dns_rate(s: &Side, n: usize, unique: bool) -> Result<f64> {
    let kit = bin("testkit");
    let out = governed(
        s,
        &[kit.to_str().unwrap_or_default(), "dns-rate", "9.9.9.9:53", &n.to_string(), if unique { "1" } else { "0" }],
    )?;
    let mut f = out.split_whitespace();
    let rate: f64 = f.next().context("no rate")?.parse()?;
    let answered: usize = f.next().context("no count")?.parse()?;
    eprintln!("{}: DNS {} {answered}/{n} answered, {rate:.0}/s", s.name, if unique { "uncached" } else { "cached" });
    Ok(rate)
}

/// How long after a burst of streams the memory is read again: what a daemon keeps of a
/// burst once the streams are closed (and the holder has exited).
const AFTER_RELEASE: Duration = Duration::from_secs(40);

/// Opens `n` streams through the redirect to a server that keeps them open, and reads
/// the daemon's RSS while they are all open.
fn with_streams_held(s: &Side, n: usize) -> Result<Mem> {
    let kit = bin("testkit");
    let kit = kit.to_str().unwrap_or_default();
    let mut p =
        s.w.spawn_in(&s.w.governed, GOVERNED, GOVERNED, &[kit, "hold", &format!("{WEB}:7000"), &n.to_string(), "20"])?;
    p.wait_line(&format!("HOLDING {n}"), Duration::from_secs(300))
        .with_context(|| format!("{}: opening {n} streams", s.name))?;
    let mem = rss_mb(s.pid)?;
    eprintln!("{}: {n} streams open, RSS {:.1} MB ({:.1} MB anonymous)", s.name, mem.rss, mem.anon);
    Ok(mem)
}

/// CPU time (user and system) the process has used, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Resident memory in MB, all of it and the anonymous part (heap, stacks: what the
/// process itself allocated, as opposed to its binary's and libraries' pages).
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: f64,
    anon: f64,
    /// Proportional: each shared page divided among the processes that map it (ttp's
    /// monitor shares most of the daemon's; a C tor client shares its binary's code
    /// with the relays, which flatters it, so its row is RSS).
    pss: f64,
}

/// The daemon's resident memory: the process and its children (ttp's root monitor,
/// counted whole in RSS although most of its pages are shared with the daemon; PSS
/// divides them).
fn rss_mb(pid: u32) -> Result<Mem> {
    let mut pids = vec![pid.to_string()];
    for t in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
        pids.extend(children.split_whitespace().map(str::to_owned));
    }
    let (mut rss_kb, mut anon_kb, mut pss_kb) = (0.0, 0.0, 0.0);
    for p in pids {
        let status = fs::read_to_string(format!("/proc/{p}/status"))?;
        let field = |name: &str| -> Result<f64> {
            let v = status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next());
            Ok(v.with_context(|| format!("no {name} in /proc/{p}/status"))?.parse()?)
        };
        let (rss, anon) = (field("VmRSS:")?, field("RssAnon:")?);
        let rollup = fs::read_to_string(format!("/proc/{p}/smaps_rollup"))?;
        let pss: f64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("no Pss in /proc/{p}/smaps_rollup"))?
            .parse()?;
        let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        eprintln!("  pid {p} ({}): RSS {rss} kB, of which anonymous {anon} kB; PSS {pss} kB", comm.trim());
        eprintln!("    PSS by mapping, MB: {}", pss_by_mapping(&p)?);
        rss_kb += rss;
        anon_kb += anon;
        pss_kb += pss;
    }
    Ok(Mem { rss: rss_kb / 1024.0, anon: anon_kb / 1024.0, pss: pss_kb / 1024.0 })
}

/// Where a process's PSS is, from `/proc/PID/smaps`: its binary's code, its read-only
/// data, its data (writable, or relocated at load: pages the process has its own copy
/// of), the TLS library (OpenSSL), the other libraries, and anonymous memory (heap,
/// arenas, stacks). The binary's part is what a smaller build shrinks; the anonymous part
/// is what the allocator keeps.
fn pss_by_mapping(pid: &str) -> Result<String> {
    use procfs::process::{MMPermissions, MMapPath, Process};
    const KINDS: [&str; 6] =
        ["binary code", "binary rodata", "binary data", "libssl+libcrypto", "other libraries", "anonymous"];
    let process = Process::new(pid.parse()?)?;
    // A binary replaced on disk since it started shows as "PATH (deleted)".
    let live = |p: &std::path::Path| p.to_string_lossy().trim_end_matches(" (deleted)").to_string();
    let exe = live(&process.exe()?);
    let mut bytes = [0u64; KINDS.len()];
    for map in process.smaps()? {
        let field = |k: &str| map.extension.map.get(k).copied().unwrap_or(0);
        let kind = match &map.pathname {
            MMapPath::Path(p) if live(p) == exe => {
                if map.perms.contains(MMPermissions::EXECUTE) {
                    0
                } else if field("Anonymous") > 0 || map.perms.contains(MMPermissions::WRITE) {
                    2
                } else {
                    1
                }
            }
            MMapPath::Path(p)
                if p.to_string_lossy().contains("libssl") || p.to_string_lossy().contains("libcrypto") =>
            {
                3
            }
            MMapPath::Path(_) => 4,
            _ => 5,
        };
        bytes[kind] += field("Pss");
    }
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(KINDS.iter().zip(bytes).map(|(k, v)| format!("{k} {:.1}", mb(v))).collect::<Vec<_>>().join(", "))
}

fn round2(v: &[f64]) -> Vec<String> {
    v.iter().map(|x| format!("{x:.2}")).collect()
}
