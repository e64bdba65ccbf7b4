//! `ttp status`: the daemon's own account when it answers; without it, what the pins
//! say (a closed host with no daemon, or nothing at all), with the exit code
//! `systemctl status` users expect.

use std::path::Path;

use anyhow::{Context, Result};
use ttp::{
    control::client::Client,
    datapath::{Maps, PinLayout},
};

pub fn run(runtime_dir: &Path, pin_dir: &Path, json: bool) -> Result<()> {
    if let Ok(status) = Client::new(runtime_dir).status() {
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            say!("state:      {} (pid {}, up {}s)", status.state, status.pid, status.uptime_secs);
            say!("tor:        {}", status.bootstrap);
            if let Some(b) = &status.bridges {
                say!("bridges:    {b}");
            }
            if let Some(w) = &status.waiting {
                say!("waiting:    {w}");
            }
            say!("ports:      trans {}  dns {}  socks {}", status.ports.trans, status.ports.dns, status.ports.socks);
            if !status.gateway_interfaces.is_empty() {
                let shown: Vec<String> = status
                    .gateway_interfaces
                    .iter()
                    .map(|spec| {
                        let there: Vec<&str> = status
                            .gateway_present
                            .iter()
                            .filter(|i| ttp::ifname::matches(spec, i))
                            .map(String::as_str)
                            .collect();
                        match there.as_slice() {
                            [] => format!("{spec} (not there yet: taken over when it appears)"),
                            _ if spec.ends_with('*') => format!("{spec} ({})", there.join(", ")),
                            _ => spec.clone(),
                        }
                    })
                    .collect();
                say!("gateway:    {}", shown.join(", "));
            }
            say!(
                "streams:    {} open, {} refused at the limit; {} bytes up, {} down",
                status.streams_open,
                status.streams_refused,
                status.bytes_up,
                status.bytes_down
            );
            say!("exit:       {}", status.exit_address.as_deref().unwrap_or("not verified yet (`ttp check`)"));
            if let Some(l) = &status.load {
                say!(
                    "load:       {} of {} descriptors open; {} stream slots ({} per client), {} DNS/TCP",
                    l.descriptors_open,
                    l.budget.nofile,
                    l.budget.streams,
                    l.budget.per_key,
                    l.budget.dns_tcp
                );
                say!(
                    "            {} accept errors waited out; refused: {} over a client's share, {} DNS/TCP, \
                     {} control; {} idle connections closed",
                    l.accept_errors,
                    l.refused_share,
                    l.refused_dns_tcp,
                    l.refused_control,
                    l.idle_closed
                );
            }
            if let Some(m) = status.memory {
                // Its children (the root monitor) are root's to read: with them
                // when we can, PSS counting their shared pages once.
                let helpers: Vec<_> =
                    ttp::memory::children(status.pid).into_iter().filter_map(ttp::memory::of).collect();
                match helpers.iter().copied().reduce(|a, b| a + b) {
                    Some(h) => say!("memory:     {} (the daemon {m}; its monitor {h})", m + h),
                    None => say!("memory:     {m} (the daemon; as root, with its monitor)"),
                }
            }
            for (name, n) in status.counters.iter().filter(|(_, n)| **n > 0) {
                say!("  {name:<24} {n}");
            }
            if !status.refusals.is_empty() {
                say!("refused, by whom:");
            }
            for r in status.refusals.iter().take(10) {
                let cgroup = ttp::cgroup::path_of_id(r.cgroup, 20_000)
                    .map_or_else(|| format!("cgroup {}", r.cgroup), |p| p.display().to_string());
                say!("  {:<24} {:>6}  uid {} in {cgroup}", r.counter, r.count, r.uid);
            }
            for p in &status.tunnel_peers {
                print_peer(p);
            }
        }
        return Ok(());
    }
    let layout = PinLayout::new(pin_dir);
    if !layout.exists() {
        if json {
            let v = serde_json::json!({ "state": "stopped", "pid": null, "links": 0 });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "state:    stopped (nothing pinned under {}: the host is open; `ttp start` starts ttp)",
                pin_dir.display()
            );
        }
        std::process::exit(STATUS_STOPPED);
    }
    let (cfg, counters) = Maps::read_pinned_state(&layout.maps()).context("reading the pinned maps")?;
    let links = layout.link_pins()?.len();
    let lockdown = cfg.has(ttp_common::flags::LOCKDOWN);
    // Why the last daemon failed, as its monitor (root) recorded it.
    let fault = ttp::monitor::last_fault(runtime_dir);
    if json {
        let c: serde_json::Map<String, serde_json::Value> =
            counters.iter().map(|(c, n)| (c.name().to_string(), (*n).into())).collect();
        // The pins outlive the daemon: this is a crashed (closed) instance.
        let v = serde_json::json!({
            "state": if lockdown { "lockdown" } else { "daemon-dead" },
            "pid": null,
            "exit_address": null,
            "links": links,
            "fault": fault,
            "ports": { "trans": cfg.trans_port, "dns": cfg.dns_port },
            "counters": c,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "state:    {} (no daemon: the kill-switch holds the host closed; `ttp stop` or `ttp start`)",
            if lockdown { "lockdown" } else { "daemon dead" }
        );
        if let Some(f) = &fault {
            println!("fault:    {f}");
        }
        println!("links:    {links} attached (pinned under {})", pin_dir.display());
        println!("ports:    trans {}  dns {}", cfg.trans_port, cfg.dns_port);
        for (c, n) in counters.iter().filter(|(_, n)| *n > 0) {
            println!("  {:<24} {n}", c.name());
        }
    }
    std::process::exit(STATUS_DEAD);
}

/// `ttp status`'s exit code without a daemon, as LSB init scripts and `systemctl status`
/// give them: 3 for stopped (nothing pinned: the host is open), 1 for "dead, but its
/// traces remain" (the kill-switch holds the host closed with no daemon). 0 is running.
const STATUS_STOPPED: i32 = 3;
const STATUS_DEAD: i32 = 1;

/// One tunnel peer, as `ttp status` shows it.
fn print_peer(p: &ttp::tunnel::device::PeerStatus) {
    say!("peer:       {}", p.public_key);
    println!("  endpoint:       {}", p.endpoint.map_or("(not seen yet)".to_string(), |e| e.to_string()));
    println!("  last handshake: {}", p.last_handshake_secs.map_or("never".to_string(), |s| format!("{s} s ago")));
    println!("  transfer:       {} bytes received, {} bytes sent", p.rx_bytes, p.tx_bytes);
    let d = &p.drops;
    println!(
        "  dropped:        {} replayed, {} failed to decrypt, {} with a source not its own",
        d.replay, d.decrypt, d.source
    );
}

/// State, uptime, ports, streams and counters (from the daemon, or from the pins if it
/// is gone).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Through the control socket: root or the `ttp` group (the pins: root).
    pub const NEEDS_ROOT: bool = false;

    pub fn run(self) -> Result<()> {
        run(&self.paths.runtime_dir, &self.paths.pin_dir, self.json)
    }
}
