//! `cargo xtask setup`: make a fresh Debian machine of this kind able to build and test ttp.
//! Idempotent: each step checks first and only installs what is missing.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, sh};

/// Debian packages: the toolchain's C side, the eBPF linker's LLVM, and the tools the
/// tests and benchmarks drive (tor relays, captures, DNS and load clients).
const PACKAGES: &[&str] = &[
    // bpf-linker 0.13 links against LLVM 22 (bookworm-security)
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // libfuzzer-sys (the tunnel's fuzz targets) builds libFuzzer, which is C++
    "g++",
    // arti-client
    "libssl-dev",
    "libsqlite3-dev",
    "pkg-config",
    // tests, testnet, benchmarks
    "iproute2",
    "util-linux",
    "tcpdump",
    "dnsutils",
    "bpftool",
    "nftables",
    "curl",
    "python3",
    "tor",
    // moves one process's clock (a wrong-clock test)
    "faketime",
    "obfs4proxy",
    // a snowflake bridge end to end: the client ttp runs, and a proxy on the test network
    "snowflake-client",
    "snowflake-proxy",
    "iputils-ping",
    "iperf3",
    "hyperfine",
    "wireguard-tools",
    // a WireGuard implementation the tunnel is tested against (boringtun-cli is built
    // from crates.io under target/peers)
    "wireguard-go",
    // watches how `ttp tunnel peer add` creates the file with a private key
    "strace",
    // the Debian package and the booted Debian it is tested on
    "dpkg-dev",
    "lintian",
    "debootstrap",
    "systemd-container",
    // `ttp top` in a real terminal, and its captures rendered for the README
    // (tests/tools/ansi_to_png.py)
    "tmux",
    "python3-pil",
    "fonts-dejavu-core",
];

const BPF_LINKER_VERSION: &str = "0.13";
const CARGO_FUZZ_VERSION: &str = "0.13";

pub fn run() -> Result<()> {
    apt()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    eprintln!("==> setup complete");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("==> Debian packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    eprintln!("==> Debian packages missing: {}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing Debian packages (are you root, and is bookworm-security in the apt sources?)")?;
    // Debian's tor package starts a system tor on 9050; ttp never needs it.
    let _ = Command::new("systemctl").args(["disable", "--now", "tor"]).output();
    Ok(())
}

/// The eBPF crate's pinned nightly, from ttp-ebpf/rust-toolchain.toml.
pub fn nightly_channel() -> Result<String> {
    let pin = crate::root().join("ttp-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&pin).with_context(|| format!("reading {}", pin.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .map(str::to_owned)
        .with_context(|| format!("{} names no channel", pin.display()))
}

fn nightly() -> Result<()> {
    let channel = nightly_channel()?;
    let have = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", &channel])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if have {
        eprintln!("==> {channel} with rust-src: present");
        return Ok(());
    }
    // A dated nightly, never plain `nightly`: a newer one's LLVM does not match bpf-linker's.
    sh(Command::new("rustup").args([
        "toolchain",
        "install",
        &channel,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .with_context(|| format!("installing the {channel} toolchain with rust-src (the eBPF crate builds core with it)"))
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(o) = &version {
        let v = String::from_utf8_lossy(&o.stdout);
        if v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
            eprintln!("==> {}: present", v.trim());
            return Ok(());
        }
    }
    let prefix = "/usr/lib/llvm-22";
    if !std::path::Path::new(prefix).join("bin/llvm-config").exists() {
        bail!("{prefix} is missing: install llvm-22-dev (cargo xtask setup does) before bpf-linker");
    }
    eprintln!("==> building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)");
    sh(cargo()
        .args(["install", "bpf-linker", "--locked", "--version", &format!("^{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", prefix))
}

/// cargo-fuzz, for the fuzz targets of the tunnel and of ttp's parsers (`cargo xtask fuzz`).
fn cargo_fuzz() -> Result<()> {
    let version = Command::new("cargo").args(["fuzz", "--version"]).output();
    if let Ok(o) = &version {
        let v = String::from_utf8_lossy(&o.stdout);
        if o.status.success() && v.contains(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
            eprintln!("==> {}: present", v.trim());
            return Ok(());
        }
    }
    eprintln!("==> building cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 minutes)");
    sh(cargo().args(["install", "cargo-fuzz", "--locked", "--version", &format!("^{CARGO_FUZZ_VERSION}")]))
}
