//! WireGuard implementations the tests run ttp's tunnel against, built once and cached
//! under target/peers (Debian's wireguard-go comes with `setup`; boringtun-cli is only on
//! crates.io).

use std::path::PathBuf;

use anyhow::{Context, Result};

const BORINGTUN_CLI: &str = "0.7.1";

/// boringtun-cli, built from crates.io into target/peers at a pinned version (about a
/// minute the first time).
pub fn boringtun() -> Result<PathBuf> {
    let root = crate::root().join("target/peers");
    let bin = root.join("bin/boringtun-cli");
    let stamp = root.join(".boringtun-cli-version");
    if bin.exists() && std::fs::read_to_string(&stamp).is_ok_and(|v| v == BORINGTUN_CLI) {
        return Ok(bin);
    }
    eprintln!("==> building boringtun-cli {BORINGTUN_CLI} into {}", root.display());
    crate::sh(
        crate::cargo().args(["install", "boringtun-cli", "--locked", "--version", BORINGTUN_CLI, "--root"]).arg(&root),
    )
    .context("building boringtun-cli (the tunnel's interop tests run it)")?;
    std::fs::write(&stamp, BORINGTUN_CLI)?;
    Ok(bin)
}
