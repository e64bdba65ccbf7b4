//! `cargo xtask bench ...`: runs a benchmark binary of the tests crate (they need the
//! namespace harness) and prints its table for BENCHMARKS.md.

use anyhow::Result;
use clap::Subcommand;

use crate::{cargo, require_root, root, sh};

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// Connections/s and connect-to-first-byte latency: no redirect, ttp's eBPF redirect,
    /// an nftables REDIRECT rule; and each program's cost from the kernel's BPF stats.
    Datapath,
    /// ttp's TransPort/DNSPort (Arti) against C tor's behind nftables (as it comes, and with
    /// conflux off), on the private Tor network: first byte, 50 MB throughput, DNS
    /// answers/s, memory with 1,000 streams. With TESTNET_EXIT_LOG="[circ]info", also the
    /// exits' congestion window and RTT for each download's circuits.
    Tor,
    /// `ttp start` to kill-switch and to ready (cold and warm Tor state) and `ttp stop`,
    /// against C tor's bootstrap and an nftables ruleset load.
    Lifecycle,
    /// Streams held through the TransPort (1,000 and 10,000) against C tor's TransPort
    /// behind nftables: the daemon's memory (RSS, PSS) and the p50/p99 time to first byte
    /// of fresh streams while they are held.
    Load,
    /// The tunnel's protocol core against boringtun's, CPU only: handshakes/s and
    /// seal+open throughput of 1400-byte packets.
    TunnelCore,
    /// iperf3 through the tunnel beside the bare veth and boringtun-cli: one and four TCP
    /// streams, UDP packets/s, and the tunnel ends' CPU per gigabit.
    Tunnel,
}

pub fn run(which: Which) -> Result<()> {
    require_root("the benchmarks")?;
    let bin = match which {
        Which::Datapath => "bench-datapath",
        Which::Tor => "bench-tor",
        Which::Lifecycle => "bench-lifecycle",
        Which::Load => "bench-load",
        Which::TunnelCore => "bench-tunnel-core",
        Which::Tunnel => "bench-tunnel",
    };
    let mut c = std::process::Command::new(root().join("target/release").join(bin));
    if matches!(which, Which::Tunnel) {
        // The peers it is compared with, as the tests run them (target/peers).
        c.env("TTP_TEST_BORINGTUN", crate::peers::boringtun()?);
        c.env("TTP_TEST_WIREGUARD_GO_OFFLOADS", crate::peers::wireguard_go_with_offloads()?);
    }
    // The release daemon too: the benchmarks run the binaries next to themselves.
    sh(cargo().args(["build", "--release", "-p", "ttp", "-p", "ttp-tests", "--bins"]))?;
    sh(&mut c)
}
