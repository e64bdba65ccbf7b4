//! `cargo xtask demo`: ttp at work against a private Tor network, in throwaway namespaces
//! and cgroups (the real Tor network is out of reach on this kind of machine).
//!
//! Brings up the network (Debian's tor relays, an onion service, a web server), starts the
//! real daemon (`ttp run`) governing a cgroup of a "host" namespace, and shows what a
//! governed application experiences, what leaves the host's uplink, and what happens when
//! the daemon is killed. Everything it made is removed on exit.
use std::{process::Command, time::Instant};

use anyhow::Result;
use ttp_tests::{bin, testnet::Testnet, Capture, World};

fn main() -> Result<()> {
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("ttp-demo-net-{}", std::process::id()));
    println!(
        "Starting a private Tor network (3 authorities, a middle with an onion service, 3 exits, an obfs4 bridge)..."
    );
    let net = Testnet::start(&dir)?;
    println!("  consensus after {:.1} s; onion service {}\n", net.consensus_after, net.onion);
    let w = World::with_testnet(&net)?;
    let state = std::env::temp_dir().join(format!("ttp-demo-state-{}", std::process::id()));
    let arti = net.arti_toml().display().to_string();
    let started = Instant::now();
    let daemon = w.start_ttp(&state, &["--arti-config", &arti, "--check-url", ttp_tests::testnet::CHECK_URL])?;
    println!("ttp run: kill-switch first, then Arti, then the ports: ready in {:.1?}\n", started.elapsed());

    let web = ttp_tests::testnet::WEB_V4;
    let run = |argv: &[&str]| {
        let out = w.run_in(&w.governed, 1001, 1001, argv);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        text.trim().replace('\n', " | ")
    };
    let show = |what: &str, out: String| println!("  {what:<52} -> {out}");
    // Warm the young network up: its first consensuses can lack usable exits, and its
    // exits can refuse the very first streams. A real network needs none of this.
    println!("Waiting for the young network's first working circuit...");
    let warm = Instant::now();
    while !run(&["curl", "-s", "--max-time", "10", &format!("http://{web}/index.txt")]).contains("hello") {
        if warm.elapsed() > std::time::Duration::from_secs(90) {
            anyhow::bail!("no stream through the private Tor network after 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    println!("  first stream after {:.1?}\n", warm.elapsed());

    let cap = Capture::start(&w.inet, &w.inet_if)?;
    println!("A governed application (uid 1001), plain tools, no proxy settings:");
    show(
        &format!("curl http://{web}/index.txt"),
        run(&["curl", "-sS", "--max-time", "30", &format!("http://{web}/index.txt")]),
    );
    show("dig +short www.example.test (any resolver)", run(&["dig", "+short", "@9.9.9.9", "www.example.test"]));
    let onion_url = format!("http://{}/index.txt", net.onion);
    let mut onion = String::new();
    net.wait_onion_published(std::time::Duration::from_secs(120))?;
    for _ in 0..20 {
        onion = run(&["curl", "-sS", "--max-time", "30", &onion_url]);
        if onion.contains("hello") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    show("curl http://<the onion service>.onion/index.txt", onion);
    show(
        "curl --proxy socks5h://127.0.0.1:9055 (SOCKS)",
        run(&[
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--proxy",
            "socks5h://127.0.0.1:9055",
            "http://www.example.test/index.txt",
        ]),
    );
    show(
        "UDP to 203.0.113.10:443 (QUIC)",
        run(&[bin("testkit").to_str().unwrap_or_default(), "udp", "203.0.113.10:443"]),
    );
    let pkts = cap.stop()?;
    let relays = net.or_addrs();
    // Packets the host sent: source in its uplink subnet.
    let ip: Vec<_> = pkts.iter().filter(|l| l.contains(" IP 198.19.")).collect();
    let to_relays =
        ip.iter().filter(|l| relays.iter().any(|a| l.contains(&format!("> {}:", a.replace(':', "."))))).count();
    let to_web = ip.iter().filter(|l| l.contains(&format!("> {web}."))).count();
    println!(
        "\nOn the uplink: {} IP packets from the host, {to_relays} of them to Tor relays, {to_web} to the web server.",
        ip.len()
    );

    let ttp = |args: &[&str]| {
        let out = Command::new(bin("ttp"))
            .args(args)
            .arg("--runtime-dir")
            .arg(state.join("run"))
            .arg("--pin-dir")
            .arg(&w.pin_dir)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default()
    };
    println!("\n$ ttp check\n{}", ttp(&["check"]));
    println!("$ ttp status\n{}", ttp(&["status"]));
    println!("$ ttp streams --recent\n{}", ttp(&["streams", "--recent"]));

    daemon.kill();
    println!("Daemon SIGKILLed. The pinned programs keep the host closed:");
    show(
        &format!("curl http://{web}/index.txt"),
        run(&["curl", "-sS", "--max-time", "5", &format!("http://{web}/index.txt")]),
    );
    println!("\n$ ttp stop\n{}", ttp(&["stop"]));
    show(
        &format!("curl http://{web}/index.txt (direct again)"),
        run(&["curl", "-sS", "--max-time", "5", &format!("http://{web}/index.txt")]),
    );
    println!("\nDemo done in {:.0?}; its namespaces, cgroups, pins and relays are removed on exit.", t0.elapsed());
    drop(w);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
