//! `cargo xtask bench load`: ttp's TransPort holding many streams, beside C tor's
//! TransPort behind an nftables redirect (as it comes), on the same private Tor network in
//! the same run (issue 16). A host with a torrent client or a browser with many tabs holds
//! thousands of connections at once; what matters then is what the daemon costs in memory,
//! and whether a new connection still gets its first byte in time.
//!
//! For each load (none, 1,000 and 10,000 streams) and each side in turn: a holder (this
//! binary's `hold` mode, as the governed uid 1001 in the governed cgroup) opens the
//! connections to a server on the network that answers one line and keeps them open
//! (WEB:7000), 64 being opened at a time; each is a Tor stream. Once they are all open,
//! or the time to open them is up (how many opened is reported), the daemon's memory is
//! read: RSS, PSS and anonymous memory of all its processes (ttp: the daemon and its
//! monitor), from /proc/PID/smaps_rollup. Then 50 fresh small GETs (curl, sequential)
//! measure the time to first byte while the streams are held, as another uid (1002), so
//! that they do not count against the holder's share: ttp gives one isolation key (uid
//! and cgroup) at most half of its stream slots. Then the streams are released, and the
//! daemon is given time to close them before the next round.
//!
//! Every child (the daemons, the network's relays, the servers, the holders) inherits
//! this process's open-files limit, raised first to 131,072 (or, without
//! CAP_SYS_RESOURCE, to the hard limit): 10,000 held streams take 10,000 descriptors in
//! the holder, the daemon, the exit and the server each. ttp runs with `--max-streams
//! 20000` (its default is 4,096), which gives one key 10,000 slots if its open-files
//! limit is about 27,000 or more. Below that ttp has fewer slots (it says so: `ttp status
//! --json`, `load.budget`), and a load larger than one key's share is split evenly over
//! two or more holding uids (1001, 1003...), the same on both sides.
//!
//! `BENCH_LOADS=0,1000 target/release/bench-load` runs some of the loads only.
use std::{
    fs,
    io::Read,
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ttp_tests::{
    bench::{ctor_side, curl_metric_as, finish, ttp_side, warm_up_as, Side, GOVERNED, WEB},
    bin, run,
    testnet::Testnet,
    Proc,
};

/// The uids that hold the streams: the governed uid, and as many more as ttp's share per
/// isolation key requires (see the top of this file).
const HOLDERS: [u32; 4] = [GOVERNED, 1003, 1004, 1005];
/// The uid whose fresh GETs are timed: another isolation key than the holder's.
const FRESH: u32 = 1002;
const LOADS: [usize; 3] = [0, 1000, 10_000];
/// Fresh GETs timed per round.
const GETS: usize = 50;
/// Connections being opened at a time (by all holders together).
const WORKERS: usize = 64;
/// How long the holder may take to open its connections.
const OPEN_SECS: u64 = 300;
/// The open-files limit wanted for every child (a higher hard limit is kept; see
/// [`raise_nofile`]).
const NOFILE: u64 = 1 << 17;
const MAX_STREAMS: usize = 20_000;
/// Where the streams go: a server that answers "HELD" and keeps the connection.
const HOLD_PORT: u16 = 7000;

/// One side's round at one load.
struct Round {
    side: usize,
    asked: usize,
    outcome: Result<Held>,
    /// The daemon's memory once they were released and closed.
    after: Option<Mem>,
}

struct Held {
    opened: usize,
    failed: usize,
    /// The holder's last error, if any connection failed.
    error: String,
    open_secs: f64,
    /// Connections still open at the TransPort once the fresh GETs were done.
    still: usize,
    /// Which uids held them.
    held_by: String,
    mem: Mem,
    /// Time to first byte of the fresh GETs that were answered, ms.
    ttfb: Vec<f64>,
    /// ttp's own view while they were held: streams open, refused for the share.
    daemon_view: Option<(u64, u64)>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hold") {
        return hold(&args[1..]);
    }
    let nofile = raise_nofile()?;
    let loads: Vec<usize> = match std::env::var("BENCH_LOADS") {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().context("BENCH_LOADS: numbers, like 0,1000"))
            .collect::<Result<_>>()?,
        Err(_) => LOADS.to_vec(),
    };
    let dir = std::env::temp_dir().join(format!("ttp-bench-load-{}", std::process::id()));
    let net = Testnet::start(&dir)?;
    eprintln!("private Tor network up (consensus after {:.1} s); open-files limit {nofile}", net.consensus_after);
    let mut hold_server = net.cmd(bin("testkit"));
    hold_server.args(["serve-hold", &format!("{WEB}:{HOLD_PORT}")]);
    let mut hold_server = Proc::spawn(hold_server)?;
    hold_server.wait_line("LISTENING", Duration::from_secs(10))?;

    let sides = [
        ttp_side(&net, &["--max-streams", &MAX_STREAMS.to_string()])?,
        ctor_side(&net, "C tor", "C tor 0.4.9 (TransPort, nftables redirect)", "")?,
    ];
    // C tor's side redirects the governed uid only: the fresh GETs' and the other
    // holders' uids too.
    let rule = format!(
        "add rule ip ttpbench out meta skuid {FRESH}-{} ip daddr != 127.0.0.0/8 tcp dport != 9040 redirect to :9040",
        HOLDERS[HOLDERS.len() - 1]
    );
    run(sides[1].w.host.cmd("nft").args(rule.split(' ')))?;
    let (slots, per_key) = ttp_slots(&sides[0])?;
    eprintln!("ttp: {slots}");
    // One key may hold `per_key` streams in ttp: the load is split over that many uids
    // (the same on both sides).
    let holders = |n: usize| n.div_ceil(per_key.max(1)).max(1);
    let most = loads.iter().map(|&n| holders(n)).max().unwrap_or(1);
    if most > HOLDERS.len() {
        bail!(
            "ttp has {per_key} stream slots per key: {} streams need more uids than {HOLDERS:?}",
            loads.iter().max().unwrap_or(&0)
        );
    }
    for s in &sides {
        for &uid in HOLDERS[..most].iter().chain([&FRESH]) {
            warm_up_as(s, uid)?;
        }
    }

    let mut rounds = vec![];
    for &n in &loads {
        for (i, s) in sides.iter().enumerate() {
            let outcome = round(s, n, holders(n));
            if let Err(e) = &outcome {
                eprintln!("{}: the round with {n} streams failed: {e:#}", s.name);
            }
            release_wait(s)?;
            let after = if n > 0 { Some(mem(s.pid)?) } else { None };
            rounds.push(Round { side: i, asked: n, outcome, after });
        }
    }

    println!();
    println!(
        "| streams held | client | held by | opened, of asked | time to open them, s | daemon RSS, MB | PSS, MB | \
         of which anonymous (RSS), MB | first byte of a fresh GET (uid {FRESH}), p50, ms | p99, ms | GETs answered |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = vec![];
    for r in &rounds {
        let s = &sides[r.side];
        match &r.outcome {
            Ok(h) => {
                println!(
                    "| {} | {} | {} | {} / {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} / {GETS} |",
                    thousands(r.asked),
                    s.label,
                    h.held_by,
                    thousands(h.opened),
                    thousands(r.asked),
                    if r.asked == 0 { "—".to_string() } else { format!("{:.1}", h.open_secs) },
                    h.mem.rss,
                    h.mem.pss,
                    h.mem.anon,
                    percentile(&h.ttfb, 50).map_or("—".into(), |v| format!("{v:.1}")),
                    percentile(&h.ttfb, 99).map_or("—".into(), |v| format!("{v:.1}")),
                    h.ttfb.len(),
                );
                if h.failed > 0 {
                    notes.push(format!(
                        "{} at {}: {} connections failed to open (last: {})",
                        s.name,
                        thousands(r.asked),
                        h.failed,
                        h.error
                    ));
                }
                if r.asked > 0 && h.still < h.opened {
                    notes.push(format!(
                        "{} at {}: {} of the {} open were still open at the TransPort after the GETs",
                        s.name,
                        thousands(r.asked),
                        h.still,
                        h.opened
                    ));
                }
                if let Some(a) = r.after {
                    notes.push(format!(
                        "{} at {}: once released, RSS {:.1} MB, PSS {:.1} MB, anonymous {:.1} MB",
                        s.name,
                        thousands(r.asked),
                        a.rss,
                        a.pss,
                        a.anon
                    ));
                }
                if let Some((open, refused)) = h.daemon_view {
                    notes.push(format!(
                        "{} at {}: the daemon counted {open} streams open, {refused} refused for the share so far",
                        s.name,
                        thousands(r.asked)
                    ));
                }
                if !h.ttfb.is_empty() {
                    notes.push(format!(
                        "{} at {}: first byte p90 {:.1} ms, fastest {:.1} ms",
                        s.name,
                        thousands(r.asked),
                        percentile(&h.ttfb, 90).unwrap_or_default(),
                        h.ttfb.iter().copied().fold(f64::INFINITY, f64::min)
                    ));
                }
            }
            Err(e) => println!("| {} | {} | failed: {} |{}", thousands(r.asked), s.label, one_line(e), " |".repeat(8)),
        }
    }
    println!();
    println!("p99 of {GETS} GETs is the nearest rank: the slowest of them. ttp: {slots}.");
    for n in notes {
        println!("- {n}");
    }
    drop(hold_server);
    finish(sides, &dir);
    Ok(())
}

/// One round: `n` streams held by the holder, the daemon's memory, then the fresh GETs.
fn round(s: &Side, n: usize, holders: usize) -> Result<Held> {
    let uids = &HOLDERS[..holders.clamp(1, HOLDERS.len())];
    let mut procs = vec![];
    let (mut opened, mut failed, mut error, mut open_secs) = (0, 0, String::new(), 0.0f64);
    if n > 0 {
        let me = std::env::current_exe()?;
        let me = me.to_str().context("the benchmark's path is not UTF-8")?;
        for (k, &uid) in uids.iter().enumerate() {
            let share = n / uids.len() + usize::from(k < n % uids.len());
            let p = s.w.spawn_in(
                &s.w.governed,
                uid,
                uid,
                &[
                    me,
                    "hold",
                    &format!("{WEB}:{HOLD_PORT}"),
                    &share.to_string(),
                    &(WORKERS / uids.len()).max(1).to_string(),
                    &OPEN_SECS.to_string(),
                    // Held until this round is over (the holder is killed then); a bound if not.
                    &(OPEN_SECS + 600).to_string(),
                ],
            )?;
            procs.push((uid, share, p));
        }
        // Each holder reports progress and ends its opening within OPEN_SECS (plus one
        // connection's timeouts), so these loops end.
        for (uid, share, p) in &mut procs {
            loop {
                let line = p.next_line().with_context(|| format!("{}: the holder of {share} streams", s.name))?;
                match field(&line, 0) {
                    "PROGRESS" => eprintln!(
                        "  {} (uid {uid}): {} of {share} open, {} failed",
                        s.name,
                        field(&line, 1),
                        field(&line, 2)
                    ),
                    "HOLDING" => {
                        opened += field(&line, 1).parse::<usize>()?;
                        failed += field(&line, 2).parse::<usize>()?;
                        open_secs = open_secs.max(field(&line, 3).parse()?);
                        let e = line.splitn(5, ' ').nth(4).unwrap_or_default();
                        if !e.is_empty() {
                            error = format!("uid {uid}: {e}");
                        }
                        break;
                    }
                    _ => bail!("{}: the holder said {line}", s.name),
                }
            }
        }
        eprintln!("{}: {opened} of {n} streams open in {open_secs:.1} s ({failed} failed)", s.name);
    }
    let mem = mem(s.pid)?;
    eprintln!(
        "{}: {opened} streams held: RSS {:.1} MB, PSS {:.1} MB, anonymous {:.1} MB",
        s.name, mem.rss, mem.pss, mem.anon
    );
    let daemon_view = if s.name == "ttp" {
        let st = ttp_status(s)?;
        let open = st["streams_open"].as_u64().unwrap_or_default();
        let refused = st["load"]["refused_share"].as_u64().unwrap_or_default();
        Some((open, refused))
    } else {
        None
    };
    let mut ttfb = vec![];
    let t0 = Instant::now();
    for _ in 0..GETS {
        // Bounded: at most 30 s each, and 300 s for all of them.
        if t0.elapsed() > Duration::from_secs(300) {
            break;
        }
        match curl_metric_as(s, FRESH, "/index.txt", "%{time_starttransfer}", 30) {
            Ok(t) => ttfb.push(t * 1000.0),
            Err(e) => eprintln!("  {}: a fresh GET failed: {}", s.name, one_line(&e)),
        }
    }
    eprintln!(
        "{}: with {opened} held, first byte p50 {:.1} ms, p99 {:.1} ms ({} of {GETS} answered)",
        s.name,
        percentile(&ttfb, 50).unwrap_or(f64::NAN),
        percentile(&ttfb, 99).unwrap_or(f64::NAN),
        ttfb.len()
    );
    // Still held once the GETs are done? (The daemon or the network may have closed some.)
    let still = if n > 0 { at_transport(s)? } else { 0 };
    for (uid, _, p) in &mut procs {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!("{}: the holder (uid {uid}) exited ({status}) while its streams should have been held", s.name);
        }
    }
    drop(procs);
    let held_by = if n == 0 {
        "—".to_string()
    } else {
        let list: Vec<String> = uids.iter().map(u32::to_string).collect();
        format!("uid {}", list.join(", "))
    };
    Ok(Held { opened, failed, error, open_secs, still, held_by, mem, ttfb, daemon_view })
}

/// Connections the side's TransPort holds now (established, server side).
fn at_transport(s: &Side) -> Result<usize> {
    let out = run(s.w.host.cmd("ss").args(["-Htn", "state", "established", "( sport = :9040 )"]))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// After a round: waits until the side's TransPort holds no connection any more (60 s at
/// most), so that the next round starts from the same state.
fn release_wait(s: &Side) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let left = at_transport(s)?;
        if left == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            eprintln!("{}: {left} connections still open at the TransPort after 60 s", s.name);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// What ttp says about its stream slots.
fn ttp_slots(s: &Side) -> Result<(String, usize)> {
    let st = ttp_status(s)?;
    let b = &st["load"]["budget"];
    let (streams, per_key, nofile) = (
        b["streams"].as_u64().unwrap_or_default(),
        b["per_key"].as_u64().unwrap_or_default(),
        b["nofile"].as_u64().unwrap_or_default(),
    );
    let mut text = format!(
        "{} stream slots, {} per isolation key (--max-streams {}, open-files limit {nofile})",
        thousands(streams as usize),
        thousands(per_key as usize),
        thousands(MAX_STREAMS)
    );
    if (streams as usize) < MAX_STREAMS {
        text.push_str(&format!(
            "; NOTE: fewer slots than --max-streams {}: the open-files limit is too low for it",
            thousands(MAX_STREAMS)
        ));
    }
    Ok((text, per_key as usize))
}

fn ttp_status(s: &Side) -> Result<serde_json::Value> {
    let out = run(&mut s.w.ttp_ctl(&["status", "--json"], &s.state))?;
    serde_json::from_slice(&out.stdout).context("ttp status --json")
}

/// Raises this process's open-files limit (soft and hard) to at least [`NOFILE`], for
/// every child it starts; where the hard limit cannot be raised (no CAP_SYS_RESOURCE),
/// the soft limit to the hard one. Returns the limit.
fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let n = hard.max(NOFILE);
    if setrlimit(Resource::RLIMIT_NOFILE, n, n).is_err() {
        eprintln!("NOTE: the open-files limit cannot be raised above its hard limit, {hard}, here");
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-files limit")?;
        return Ok(hard);
    }
    Ok(n)
}

/// Resident memory of a daemon, MB: RSS, PSS (shared pages divided among the processes
/// that map them) and the anonymous part of RSS (heap, stacks).
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: f64,
    pss: f64,
    anon: f64,
}

/// The daemon's memory: the process and its descendants (ttp's monitor), from
/// /proc/PID/smaps_rollup. RSS counts the monitor whole although most of its pages are
/// shared with the daemon; PSS does not. C tor's PSS is flattered: it shares its binary's
/// and libraries' pages with the private network's relays (the same /usr/sbin/tor).
fn mem(pid: u32) -> Result<Mem> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() && pids.len() < 64 {
        if let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", pids[i])) {
            for t in tasks.flatten() {
                let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    let mut m = Mem { rss: 0.0, pss: 0.0, anon: 0.0 };
    for p in pids {
        let rollup = fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
            .with_context(|| format!("reading /proc/{p}/smaps_rollup"))?;
        let field = |name: &str| -> Result<f64> {
            let v = rollup.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next());
            Ok(v.with_context(|| format!("no {name} in /proc/{p}/smaps_rollup"))?.parse::<f64>()? / 1024.0)
        };
        let (rss, pss, anon) = (field("Rss:")?, field("Pss:")?, field("Anonymous:")?);
        let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        eprintln!("  pid {p} ({}): RSS {rss:.1} MB, PSS {pss:.1} MB, anonymous {anon:.1} MB", comm.trim());
        m.rss += rss;
        m.pss += pss;
        m.anon += anon;
    }
    Ok(m)
}

/// The holder: `bench-load hold ADDR N WORKERS OPEN_SECS HOLD_SECS` opens N connections
/// to ADDR (WORKERS at a time), each counted open once the server's first line arrives, for
/// at most OPEN_SECS; prints `PROGRESS opened failed` every 5 s, then `HOLDING opened
/// failed seconds [last error]`, and keeps them HOLD_SECS (or until killed).
fn hold(args: &[String]) -> Result<()> {
    let [addr, n, workers, open_secs, hold_secs] = args else {
        bail!("usage: bench-load hold ADDR N WORKERS OPEN_SECS HOLD_SECS");
    };
    let addr: SocketAddr = addr.parse()?;
    let n: usize = n.parse()?;
    let workers: usize = workers.parse()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(open_secs.parse()?);
    let next = AtomicUsize::new(0);
    let (opened, failed, running) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(workers));
    let held = Mutex::new(Vec::with_capacity(n));
    let last_error = Mutex::new(String::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                    match open_one(addr) {
                        Ok(s) => {
                            held.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                        }
                    }
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
        let mut last = Instant::now();
        while running.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(5) {
                println!("PROGRESS {} {}", opened.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
                last = Instant::now();
            }
        }
    });
    let error = last_error.into_inner().unwrap_or_else(|p| p.into_inner());
    println!(
        "HOLDING {} {} {:.1} {}",
        opened.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
        error.replace('\n', " ")
    );
    std::thread::sleep(Duration::from_secs(hold_secs.parse()?));
    drop(held);
    Ok(())
}

/// One connection, open once the server's first line ("HELD") has come back through it.
fn open_one(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = [0u8; 16];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') {
        match s.read(&mut buf[got..])? {
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before its first line")),
            k => got += k,
        }
        if got == buf.len() {
            break;
        }
    }
    Ok(s)
}

/// The nearest-rank `p`th percentile, if there are values.
fn percentile(v: &[f64], p: usize) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len()).div_ceil(100).max(1);
    Some(v[rank - 1])
}

/// The `i`th word of a line ("" if it has none).
fn field(line: &str, i: usize) -> &str {
    line.split_whitespace().nth(i).unwrap_or_default()
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
