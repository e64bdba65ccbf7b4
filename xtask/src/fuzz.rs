//! `cargo xtask fuzz`: the cargo-fuzz targets, each for a while. Two suites, each a cargo
//! workspace of its own: the tunnel's protocol core (`ttp-tunnel/fuzz`, without Arti) and
//! every other parser of input another party controls (`ttp/fuzz`: the DNSPort, SOCKS
//! requests, control requests, the config file and the tunnel's TOML, check answers and
//! URLs, GRO runs, SOCK_DIAG answers, the session lock). `cargo xtask test` runs every
//! target briefly; longer runs are by hand (`cargo xtask fuzz --seconds 3600 exchange`).
//! Each corpus stays in its suite's `corpus/`, so each run starts where the last one ended.
//!
//! Built without a sanitizer: the tunnel crate has no `unsafe`, ttp's parsers none on
//! their paths (SOCK_DIAG's one unaligned read is bounds-checked first), and ASan costs
//! the handshake-heavy `exchange` target two thirds of its speed. Overflow checks and
//! debug assertions are on in the code under test (each fuzz crate's profile), so an
//! arithmetic overflow is a finding.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{root, setup};

/// Each suite's directory and targets.
pub const SUITES: &[(&str, &[&str])] = &[
    ("ttp-tunnel/fuzz", &["parse", "replay_window", "exchange"]),
    (
        "ttp/fuzz",
        &[
            "dns_query",
            "socks_request",
            "control_request",
            "config_file",
            "tunnel_config",
            "session_lock",
            "check_answer",
            "gro_segments",
            "tun_offload",
            "sock_diag",
        ],
    ),
];

#[derive(clap::Args)]
pub struct Args {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let all: Vec<&str> = SUITES.iter().flat_map(|(_, t)| t.iter().copied()).collect();
    if let Some(t) = args.targets.iter().find(|t| !all.contains(&t.as_str())) {
        anyhow::bail!("no fuzz target {t}; there are: {}", all.join(", "));
    }
    let toolchain = format!("+{}", setup::nightly_channel()?);
    for (dir, targets) in SUITES {
        let chosen: Vec<&str> = targets
            .iter()
            .copied()
            .filter(|t| args.targets.is_empty() || args.targets.iter().any(|a| a == t))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let fuzz = |sub: &str| {
            // `cargo`, not `$CARGO`: the rustup proxy is what understands `+toolchain`.
            let mut c = Command::new("cargo");
            c.args([&toolchain, "fuzz", sub, "--fuzz-dir", dir, "-O"]);
            c.args(["--sanitizer", "none"]);
            // The workspace's target directory: one place for every build artefact.
            c.arg("--target-dir").arg(root().join("target/fuzz"));
            c
        };
        crate::sh(&mut fuzz("build"))
            .with_context(|| format!("building the fuzz targets of {dir} (needs cargo-fuzz: cargo xtask setup)"))?;
        for t in chosen {
            let mut c = fuzz("run");
            c.arg(t);
            // Seeds (committed, in `seeds/<target>/`) for inputs a short run would not
            // find by itself, such as a well-formed key; read beside the corpus, which
            // stays where new inputs go.
            let seeds = crate::root().join(dir).join("seeds").join(t);
            if seeds.is_dir() {
                let corpus = crate::root().join(dir).join("corpus").join(t);
                std::fs::create_dir_all(&corpus)?;
                c.arg(corpus).arg(seeds);
            }
            c.args(["--", &format!("-max_total_time={}", args.seconds), "-print_final_stats=1"]);
            crate::sh(&mut c).with_context(|| {
                format!(
                    "fuzz target {t} failed: the input is in {dir}/artifacts/{t}/; replay it with \
                     `cargo {toolchain} fuzz run --fuzz-dir {dir} -O -s none {t} {dir}/artifacts/{t}/<file>`"
                )
            })?;
        }
    }
    Ok(())
}
