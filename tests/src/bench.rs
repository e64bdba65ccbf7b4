//! What the Tor benchmarks (`bench-tor`, `bench-load`) share: the sides they compare on
//! one private Tor network. A ttp side runs `ttp run` (embedded Arti, eBPF redirect); a
//! C tor side runs a C tor client with TransPort and DNSPort behind nftables `redirect`
//! rules for the governed uid, the setup older transparent-proxy tools use. Each side has
//! its own host namespace joined to the network by its own veth.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{run, testnet::Testnet, Daemon, Proc, World};

pub const WEB: &str = crate::testnet::WEB_V4;
/// The uid whose traffic every side redirects.
pub const GOVERNED: u32 = 1001;

pub struct Side {
    /// Short, for progress lines.
    pub name: &'static str,
    /// For the table's header.
    pub label: &'static str,
    pub w: World,
    /// The client's process (ttp's daemon, or tor).
    pub pid: u32,
    /// The client's state directory, removed after the run.
    pub state: PathBuf,
    _daemon: Option<Daemon>,
    _tor: Option<Proc>,
}

/// Stops the clients, then removes their state and the network's directory.
pub fn finish<const N: usize>(sides: [Side; N], net_dir: &Path) {
    let states: Vec<_> = sides.iter().map(|s| s.state.clone()).collect();
    drop(sides);
    for d in states.iter().map(|p| p.as_path()).chain([net_dir]) {
        let _ = fs::remove_dir_all(d);
    }
}

/// `ttp run` on the network, with `extra` options (`--max-streams`...).
pub fn ttp_side(net: &Testnet, extra: &[&str]) -> Result<Side> {
    let w = World::with_testnet(net)?;
    let state = std::env::temp_dir().join(format!("ttp-bench-state-{}", std::process::id()));
    let arti = net.arti_toml().display().to_string();
    let mut args = vec!["--arti-config", &arti, "--check-url", crate::testnet::CHECK_URL];
    args.extend_from_slice(extra);
    let d = w.start_ttp(&state, &args)?;
    let pid = d.proc.child.id();
    Ok(Side { name: "ttp", label: "ttp (Arti, eBPF redirect)", w, pid, state, _daemon: Some(d), _tor: None })
}

/// C tor as a client with TransPort and DNSPort, and nftables redirecting uid 1001's
/// traffic to them (table `ip ttpbench`, chain `out`), in a host namespace of its own;
/// `extra` is added to its torrc.
pub fn ctor_side(net: &Testnet, name: &'static str, label: &'static str, extra: &str) -> Result<Side> {
    let w = World::with_testnet(net)?;
    let d = std::env::temp_dir().join(format!(
        "ttp-bench-ctor-{}-{}",
        std::process::id(),
        w.pin_dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
    }
    let torrc = format!(
        "TestingTorNetwork 1\nDataDirectory {d}\nRunAsDaemon 0\nSocksPort 0\nTransPort 127.0.0.1:9040\n\
         DNSPort 127.0.0.1:9053\nAutomapHostsOnResolve 1\nPathsNeededToBuildCircuits 0.67\n\
         Log notice file {d}/notice.log\nSafeLogging 0\nSandbox 0\n{extra}%include {auth}\n",
        d = d.display(),
        auth = net.dir.join("authorities.torrc").display()
    );
    fs::write(d.join("torrc"), torrc)?;
    let mut tor = w.host.cmd("tor");
    tor.arg("-f").arg(d.join("torrc")).stdout(std::process::Stdio::null());
    let tor = Proc::spawn(tor)?;
    let pid = tor.child.id();
    let t0 = Instant::now();
    while !fs::read_to_string(d.join("notice.log")).unwrap_or_default().contains("Bootstrapped 100%") {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("{name} did not bootstrap; see {}", d.join("notice.log").display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{name} bootstrapped in {:.1?}", t0.elapsed());
    let rules = format!(
        "table ip ttpbench {{\n  chain out {{\n    type nat hook output priority -100; policy accept;\n    \
         meta skuid {GOVERNED} udp dport 53 redirect to :9053\n    \
         meta skuid {GOVERNED} ip daddr != 127.0.0.0/8 tcp dport != 9040 redirect to :9040\n  }}\n}}\n"
    );
    let file = d.join("rules.nft");
    fs::write(&file, rules)?;
    run(w.host.cmd("nft").arg("-f").arg(&file))?;
    Ok(Side { name, label, w, pid, state: d, _daemon: None, _tor: Some(tor) })
}

/// Runs `argv` as the governed uid in the side's governed cgroup; its trimmed stdout.
pub fn governed(s: &Side, argv: &[&str]) -> Result<String> {
    governed_as(s, GOVERNED, argv)
}

/// Runs `argv` as `uid` (and gid `uid`) in the side's governed cgroup; its trimmed stdout.
pub fn governed_as(s: &Side, uid: u32, argv: &[&str]) -> Result<String> {
    let out = run(&mut s.w.cmd_in(&s.w.governed, uid, uid, argv)).with_context(|| s.name)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until a small GET through the side works (at most 60 s).
pub fn warm_up(s: &Side) -> Result<()> {
    warm_up_as(s, GOVERNED)
}

/// [`warm_up`] as `uid`.
pub fn warm_up_as(s: &Side, uid: u32) -> Result<()> {
    let t0 = Instant::now();
    while governed_as(s, uid, &["curl", "-sf", "--max-time", "10", &format!("http://{WEB}/index.txt")]).is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{} (uid {uid}): no stream through Tor within 60 s", s.name);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// One curl of `http://WEB{path}` as the governed uid; the `-w` `metric` it prints.
pub fn curl_metric(s: &Side, path: &str, metric: &str) -> Result<f64> {
    curl_metric_as(s, GOVERNED, path, metric, 120)
}

/// [`curl_metric`] as `uid`, with curl's `--max-time` in seconds.
pub fn curl_metric_as(s: &Side, uid: u32, path: &str, metric: &str, max_secs: u32) -> Result<f64> {
    let out = governed_as(
        s,
        uid,
        &[
            "curl",
            "-sf",
            "--max-time",
            &max_secs.to_string(),
            "-o",
            "/dev/null",
            "-w",
            metric,
            &format!("http://{WEB}{path}"),
        ],
    )?;
    out.parse().with_context(|| format!("{}: curl printed {out}", s.name))
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
