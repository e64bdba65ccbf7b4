//! `cargo xtask bench lifecycle`: how fast `ttp start` closes the host and becomes ready
//! (cold: empty Tor state; warm: the state of an earlier run), and how long `ttp stop`
//! takes, on the private Tor network. Side by side, the peer the older tools wrap: C tor
//! bootstrapping (to "Bootstrapped 100%") from an empty and from a warm DataDirectory, plus
//! loading an nftables redirect ruleset.
//!
//! Each figure is the median of ROUNDS runs, cold and warm interleaved, ttp and C tor
//! alternating, on one network and one pair of namespaces.
use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ttp_tests::{run, testnet::Testnet, Proc, World};

const ROUNDS: usize = 5;

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("ttp-bench-life-{}", std::process::id()));
    let net = Testnet::start(&dir)?;
    eprintln!("private Tor network up (consensus after {:.1} s)", net.consensus_after);
    let w = World::with_testnet(&net)?;
    let arti = net.arti_toml().display().to_string();
    let args = ["--arti-config", arti.as_str(), "--check-url", ttp_tests::testnet::CHECK_URL];

    let warm_state = dir.join("ttp-warm");
    let warm_tor = dir.join("tor-warm");
    // Warm both once.
    ttp_cycle(&w, &warm_state, &args)?;
    tor_bootstrap(&w, &net, &warm_tor)?;

    let (mut ks_cold, mut ready_cold, mut stop_cold) = (vec![], vec![], vec![]);
    let (mut ks_warm, mut ready_warm, mut stop_warm) = (vec![], vec![], vec![]);
    let (mut tor_cold, mut tor_warm, mut nft) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let cold = dir.join(format!("ttp-cold-{round}"));
        let (k, r, s) = ttp_cycle(&w, &cold, &args)?;
        ks_cold.push(k);
        ready_cold.push(r);
        stop_cold.push(s);
        let (k, r, s) = ttp_cycle(&w, &warm_state, &args)?;
        ks_warm.push(k);
        ready_warm.push(r);
        stop_warm.push(s);
        tor_cold.push(tor_bootstrap(&w, &net, &dir.join(format!("tor-cold-{round}")))?);
        tor_warm.push(tor_bootstrap(&w, &net, &warm_tor)?);
        nft.push(nft_load(&w, &dir)?);
        eprintln!(
            "round {round}: ttp cold ready {:.0} ms, warm {:.0} ms; C tor cold {:.0} ms, warm {:.0} ms",
            ready_cold[round], ready_warm[round], tor_cold[round], tor_warm[round]
        );
    }
    println!("| measure (median of {ROUNDS}, ms) | ttp | C tor + nftables |");
    println!("|---|---|---|");
    println!("| start → kill-switch closed, cold | {:.0} | {:.0} (nft ruleset load) |", median(&ks_cold), median(&nft));
    println!("| start → kill-switch closed, warm | {:.0} | — |", median(&ks_warm));
    println!(
        "| start → ready, cold Tor state | {:.0} | {:.0} (tor to Bootstrapped 100%) |",
        median(&ready_cold),
        median(&tor_cold)
    );
    println!("| start → ready, warm Tor state | {:.0} | {:.0} |", median(&ready_warm), median(&tor_warm));
    println!(
        "| stop (command returns, nothing left) | {:.0} cold, {:.0} warm | — |",
        median(&stop_cold),
        median(&stop_warm)
    );
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One `ttp start` + `ttp stop`: (kill-switch ms, ready ms, stop ms). Ready is when
/// `ttp start` returns (traffic flows through Tor).
fn ttp_cycle(w: &World, state: &std::path::Path, args: &[&str]) -> Result<(f64, f64, f64)> {
    let t0 = Instant::now();
    let out = w.ttp_start(state, args).output()?;
    let ready = t0.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("ttp start failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    let ks = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kill-switch active after "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(parse_ms)
        .context("no kill-switch line")?;
    let t1 = Instant::now();
    let stop = w.ttp_ctl(&["stop"], state).output()?;
    let stop_ms = t1.elapsed().as_secs_f64() * 1000.0;
    if !stop.status.success() || w.pin_dir.exists() {
        bail!("ttp stop failed: {}", String::from_utf8_lossy(&stop.stderr));
    }
    Ok((ks, ready, stop_ms))
}

/// "175ms", "1.2s" -> milliseconds.
fn parse_ms(s: &str) -> Option<f64> {
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().ok()
    } else if let Some(us) = s.strip_suffix("µs") {
        us.parse::<f64>().ok().map(|u| u / 1000.0)
    } else {
        s.strip_suffix('s')?.parse::<f64>().ok().map(|x| x * 1000.0)
    }
}

/// C tor from `data` to "Bootstrapped 100%", in ms; then stopped.
fn tor_bootstrap(w: &World, net: &Testnet, data: &std::path::Path) -> Result<f64> {
    fs::create_dir_all(data)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))?;
    }
    let log = data.join("notice.log");
    let _ = fs::remove_file(&log);
    let torrc = format!(
        "TestingTorNetwork 1\nDataDirectory {d}\nRunAsDaemon 0\nSocksPort 0\nTransPort 127.0.0.1:9040\n\
         DNSPort 127.0.0.1:9053\nPathsNeededToBuildCircuits 0.67\nLog notice file {log}\nSandbox 0\n%include {auth}\n",
        d = data.display(),
        log = log.display(),
        auth = net.dir.join("authorities.torrc").display()
    );
    fs::write(data.join("torrc"), torrc)?;
    let t0 = Instant::now();
    let mut tor = w.host.cmd("tor");
    tor.arg("-f").arg(data.join("torrc")).stdout(std::process::Stdio::null());
    let tor = Proc::spawn(tor)?;
    while !fs::read_to_string(&log).unwrap_or_default().contains("Bootstrapped 100%") {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("C tor did not bootstrap; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    drop(tor);
    Ok(ms)
}

/// Loading (and removing) the nftables redirect the older tools install: their kill-switch.
fn nft_load(w: &World, dir: &std::path::Path) -> Result<f64> {
    let file = dir.join("rules.nft");
    fs::write(
        &file,
        "table ip ttpbench {\n  chain out {\n    type nat hook output priority -100; policy accept;\n    \
         meta skuid 1001 udp dport 53 redirect to :9053\n    \
         meta skuid 1001 ip daddr != 127.0.0.0/8 tcp dport != 9040 redirect to :9040\n  }\n}\n",
    )?;
    let t0 = Instant::now();
    run(w.host.cmd("nft").arg("-f").arg(&file))?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    run(w.host.cmd("nft").args(["delete", "table", "ip", "ttpbench"]))?;
    Ok(ms)
}
