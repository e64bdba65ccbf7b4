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

/// wireguard-go with its TUN offloads (added in 2023): Debian 13's build of
/// 0.0.20231211, for the benchmark row "the implementation with offloads" (Debian 12's
/// own wireguard-go, 0.0.20220316, predates them). Fetched once into target/peers,
/// checked against the SHA-256 in Debian 13's package index, and unpacked there without
/// installing it (it needs glibc 2.34, which Debian 12 has).
const WIREGUARD_GO: &str = "0.0.20231211";
const WIREGUARD_GO_DEB: &str = "pool/main/w/wireguard-go/wireguard-go_0.0.20231211-1+b9_amd64.deb";
const WIREGUARD_GO_SHA256: &str = "cce54ea802611a45d07d1053ff285ea9f1a8f15499f3b86ccd8edd2b81ed7f7e";

pub fn wireguard_go_with_offloads() -> Result<PathBuf> {
    let dir = crate::root().join("target/peers").join(format!("wireguard-go-{WIREGUARD_GO}"));
    let bin = dir.join("usr/bin/wireguard-go");
    if bin.exists() {
        return Ok(bin);
    }
    anyhow::ensure!(std::env::consts::ARCH == "x86_64", "the wireguard-go with offloads is fetched for amd64 only");
    std::fs::create_dir_all(&dir)?;
    let deb = crate::root().join("target/peers").join(format!("wireguard-go-{WIREGUARD_GO}.deb"));
    let url = format!("http://deb.debian.org/debian/{WIREGUARD_GO_DEB}");
    eprintln!("==> fetching wireguard-go {WIREGUARD_GO} (Debian 13's build) into {}", dir.display());
    crate::sh(std::process::Command::new("curl").args(["-fsSL", "--retry", "3", "-o"]).arg(&deb).arg(&url))
        .with_context(|| format!("downloading {url}"))?;
    let sum = std::process::Command::new("sha256sum").arg(&deb).output()?;
    let sum = String::from_utf8_lossy(&sum.stdout);
    if sum.split_whitespace().next() != Some(WIREGUARD_GO_SHA256) {
        let _ = std::fs::remove_file(&deb);
        anyhow::bail!("{url} does not have the SHA-256 Debian's index gives ({WIREGUARD_GO_SHA256}): got {sum}");
    }
    crate::sh(std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_file(&deb)?;
    Ok(bin)
}
