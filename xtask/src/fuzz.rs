//! `cargo xtask fuzz`: the tunnel's cargo-fuzz targets (`ttp-tunnel/fuzz`), each for a
//! while. `cargo xtask test` runs every target briefly; longer runs are by hand
//! (`cargo xtask fuzz --seconds 3600 exchange`). The corpus stays in
//! `ttp-tunnel/fuzz/corpus`, so each run starts where the last one ended.
//!
//! Built without a sanitizer: the tunnel crate has no `unsafe`, and ASan costs the
//! handshake-heavy `exchange` target two thirds of its speed. Overflow checks and debug
//! assertions are on in the tunnel crate (the fuzz crate's profile), so an arithmetic
//! overflow is a finding.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{root, setup};

/// Every target in `ttp-tunnel/fuzz/fuzz_targets`.
pub const TARGETS: &[&str] = &["parse", "replay_window", "exchange"];

#[derive(clap::Args)]
pub struct Args {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let targets: Vec<&str> =
        if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        anyhow::bail!("no fuzz target {t}; there are: {}", TARGETS.join(", "));
    }
    let toolchain = format!("+{}", setup::nightly_channel()?);
    let fuzz = |sub: &str| {
        // `cargo`, not `$CARGO`: the rustup proxy is what understands `+toolchain`.
        let mut c = Command::new("cargo");
        c.args([&toolchain, "fuzz", sub, "--fuzz-dir", "ttp-tunnel/fuzz", "-O"]);
        c.args(["--sanitizer", "none"]);
        // The workspace's target directory: one place for every build artefact.
        c.arg("--target-dir").arg(root().join("target/fuzz"));
        c
    };
    crate::sh(&mut fuzz("build")).context("building the fuzz targets (needs cargo-fuzz: cargo xtask setup)")?;
    for t in targets {
        let mut c = fuzz("run");
        c.arg(t).args(["--", &format!("-max_total_time={}", args.seconds), "-print_final_stats=1"]);
        crate::sh(&mut c).with_context(|| {
            format!(
                "fuzz target {t} failed: the input is in ttp-tunnel/fuzz/artifacts/{t}/; replay it with \
                 `cargo {toolchain} fuzz run --fuzz-dir ttp-tunnel/fuzz -O -s none {t} \
                 ttp-tunnel/fuzz/artifacts/{t}/<file>`"
            )
        })?;
    }
    Ok(())
}
