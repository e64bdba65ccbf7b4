//! `cargo xtask`: set up a fresh machine, build, test, demo and benchmark ttp.
//!
//! Deliberately free of the workspace's heavy dependencies: it must compile on a machine
//! that has no bpf-linker yet, because installing it is its first job.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod deb;
mod fuzz;
mod peers;
mod setup;
mod testnet;

#[derive(Parser)]
#[command(about = "Build, test and demo helpers for ttp")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker (llvm-22).
    Setup,
    /// Build ttp (the eBPF object is built and embedded by ttp's build script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Everything CI runs: setup, format and lint checks, unit tests, end-to-end tests.
    Test {
        /// Skip `setup` (the machine is known to be ready).
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for the test binaries (a test name filter, --nocapture, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the fuzz targets (cargo fuzz: the tunnel's and ttp's parsers), each for a while.
    Fuzz(fuzz::Args),
    /// Build the Debian package (target/debian/<profile>/ttp_<version>_<arch>.deb), lintian-checked.
    Deb(deb::Args),
    /// Set up, build and run the datapath demo in throwaway namespaces.
    Demo,
    /// The private Tor network (Debian's tor relays in a namespace of their own).
    Testnet {
        #[command(subcommand)]
        cmd: testnet::Cmd,
    },
    /// Benchmarks, side by side with their peers; results go to BENCHMARKS.md by hand.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(release),
        Cmd::Test { no_setup, args } => test(no_setup, &args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Deb(args) => deb::run(&args).map(drop),
        Cmd::Demo => demo(),
        Cmd::Bench { which } => bench::run(which),
        Cmd::Testnet { cmd } => testnet::run(cmd),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs a command in the workspace root, announcing it, failing if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    eprintln!("==> {}", show(cmd));
    let status = cmd.status().with_context(|| format!("running {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it loads eBPF programs and makes network namespaces): run it with sudo -E");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "ttp"]);
    if release {
        c.arg("--release");
    }
    sh(&mut c)
}

fn test(no_setup: bool, args: &[String]) -> Result<()> {
    let t0 = Instant::now();
    if !no_setup {
        setup::run()?;
    }
    require_root("the end-to-end tests")?;
    sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz targets are workspaces of their own (nightly, the fuzzer's flags).
    for (dir, _) in fuzz::SUITES {
        sh(cargo().args(["fmt", "--manifest-path", &format!("{dir}/Cargo.toml"), "--", "--check"]))?;
    }
    sh(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel-side policy, as plain Rust on the host.
    sh(cargo().args(["test", "-p", "ttp-ebpf", "--lib"]))?;
    // The end-to-end tests run the `ttp` binary itself, which `cargo test` does not
    // build (it builds ttp's unit-test harness): build every binary first.
    sh(cargo().args(["build", "-p", "ttp", "-p", "ttp-tests", "--bins"]))?;
    // The booted-system tests install this very build as a Debian package on a booted
    // Debian (a cached debootstrap root).
    let deb = deb::package("dev")?;
    deb::lint(&deb)?;
    let system_root = deb::system_root()?;
    let boringtun = peers::boringtun()?;
    // Unit tests and the end-to-end tests (real eBPF, namespaces, captures).
    let mut c = cargo();
    // Default members: ttp-ebpf's programs only build for the bpf target.
    c.args(["test", "--", "--test-threads", "2"]).args(args);
    c.env("TTP_TEST_DEB", &deb).env("TTP_TEST_DEBIAN_ROOT", &system_root).env("TTP_TEST_BORINGTUN", &boringtun);
    // Every test passes its own --user: a daemon started without one creates the system
    // user `ttp` on the host (one test once did). Should one slip through again, the host
    // gets its user database back and the run says so.
    let had_user = system_user_exists("ttp");
    // A bpffs that the tests' daemons mounted goes again when each test process exits
    // (ttp_tests::World), pass or fail.
    let result = sh(&mut c);
    if !had_user && system_user_exists("ttp") {
        eprintln!("==> WARNING: the system user ttp appeared during the tests; removing it (please report)");
        let _ = Command::new("userdel").arg("ttp").status();
    }
    result?;
    // Every parser of others' input, and the tunnel's protocol core, under a fuzzer,
    // briefly (a smoke run: longer runs are `cargo xtask fuzz --seconds N`).
    fuzz::run(&fuzz::Args { seconds: 15, targets: Vec::new() })?;
    eprintln!("==> all tests passed in {:.0?}", t0.elapsed());
    Ok(())
}

fn system_user_exists(name: &str) -> bool {
    Command::new("getent").args(["passwd", name]).output().is_ok_and(|o| o.status.success())
}

fn demo() -> Result<()> {
    setup::run()?;
    require_root("the demo")?;
    sh(cargo().args(["build", "-p", "ttp-tests", "--bins"]))?;
    sh(&mut Command::new(root().join("target/debug/ttp-demo")))
}
