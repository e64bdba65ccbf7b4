//! The `ttp` command.
//!
//! Exit codes: 0 ok, 1 error (one line on stderr saying what to do), 2 needs root.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use clap::{Parser, Subcommand};
use ttp::{
    control::{self, Reply, Request},
    datapath::{teardown, Maps, PinLayout},
};

#[derive(Parser)]
#[command(name = "ttp", version, about = "Transparent Tor proxy for Linux: the whole host through Tor, failing closed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Paths {
    /// Per-instance directory in bpffs where links and maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/ttp", value_name = "DIR")]
    pin_dir: PathBuf,
    /// The daemon's runtime directory (control socket).
    #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
    runtime_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the daemon in the background; returns once the host is protected and
    /// traffic flows through Tor (or fails, leaving the host as it was).
    Start {
        #[command(flatten)]
        opts: Box<ttp::options::StartOptions>,
    },
    /// Run the daemon in the foreground (what `ttp start` and the systemd unit run).
    Run {
        #[command(flatten)]
        opts: Box<ttp::options::StartOptions>,
    },
    /// Zero-leak teardown: lockdown, then detach and unpin. Works after a crash too.
    Stop {
        #[command(flatten)]
        paths: Paths,
    },
    /// State, uptime, ports, streams and counters (from the daemon, or from the pins if it
    /// is gone).
    Status {
        #[command(flatten)]
        paths: Paths,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Streams through the TransPort: destination, isolation, circuit, age, bytes.
    Streams {
        #[command(flatten)]
        paths: Paths,
        /// Also the most recent closed streams.
        #[arg(long)]
        recent: bool,
        #[arg(long)]
        json: bool,
    },
    /// New identity: new streams use new circuits.
    Refresh {
        #[command(flatten)]
        paths: Paths,
    },
    /// Through Tor: is-Tor verdict, exit address and latency from a check endpoint.
    Check {
        #[command(flatten)]
        paths: Paths,
        /// Check endpoint(s), tried in order (default: the daemon's list).
        #[arg(long = "check-url", value_name = "URL")]
        urls: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// OS, kernel, BPF support, attached programs and counters, Tor and daemon state.
    Diagnose {
        #[command(flatten)]
        paths: Paths,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let needs_root = matches!(
        cli.cmd,
        Cmd::Start { .. } | Cmd::Run { .. } | Cmd::Stop { .. } | Cmd::Refresh { .. } | Cmd::Diagnose { .. }
    );
    if needs_root && !nix::unistd::geteuid().is_root() {
        eprintln!("ttp: this command needs root: run it with sudo");
        return ExitCode::from(2);
    }
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ttp: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Start { opts } => start(&opts),
        Cmd::Check { paths, urls, json } => {
            let Reply::Checked { check, .. } = control::request(&paths.runtime_dir, &Request::Check { urls })? else {
                anyhow::bail!("unexpected reply from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            } else {
                let verdict = match check.is_tor {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "unknown (the endpoint only reports an address)",
                };
                println!(
                    "Tor: {verdict}; exit address {}; {} ms ({})",
                    check.exit_address, check.latency_ms, check.url
                );
            }
            if check.is_tor == Some(false) {
                anyhow::bail!("the check endpoint does not see Tor: traffic is NOT going through Tor");
            }
            Ok(())
        }
        Cmd::Diagnose { paths } => {
            print!("{}", ttp::diagnose::report(&paths.runtime_dir, &paths.pin_dir));
            Ok(())
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "ttp",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Cmd::Run { opts } => {
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(ttp::daemon::run(&opts, |_| {
                use std::io::Write;
                println!("READY");
                let _ = std::io::stdout().flush();
                ttp::daemon::notify_systemd_ready();
            }))
        }
        Cmd::Stop { paths } => {
            // A live daemon stops itself (services down, then the same teardown); whatever
            // is left (a crashed daemon's pins) is torn down here. Idempotent.
            if control::request(&paths.runtime_dir, &control::Request::Stop).is_ok() {
                let t0 = std::time::Instant::now();
                while paths.runtime_dir.join(control::SOCKET).exists() && t0.elapsed().as_secs() < 10 {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            let r = teardown(&PinLayout::new(&paths.pin_dir))?;
            let _ = std::fs::remove_file(paths.runtime_dir.join("ttp.lock"));
            if r.links_detached == 0 && r.maps_unpinned == 0 {
                println!("ttp was not running (nothing pinned under {})", paths.pin_dir.display());
            } else {
                println!("stopped: {} links detached, {} maps unpinned", r.links_detached, r.maps_unpinned);
            }
            Ok(())
        }
        Cmd::Streams { paths, recent, json } => {
            let Reply::Streams { streams, .. } = control::request(&paths.runtime_dir, &Request::Streams { recent })?
            else {
                anyhow::bail!("unexpected reply from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&streams)?);
            } else {
                println!(
                    "{:<5} {:<34} {:<24} {:<10} {:>6} {:>10} {:>10}",
                    "id", "destination", "isolation", "circuit", "age", "up", "down"
                );
                for s in &streams {
                    println!(
                        "{:<5} {:<34} {:<24} {:<10} {:>5}s {:>10} {:>10}{}",
                        s.id,
                        s.destination,
                        s.isolation,
                        s.circuit,
                        s.age_secs,
                        s.bytes_up,
                        s.bytes_down,
                        if s.open { "" } else { "  (closed)" }
                    );
                }
            }
            Ok(())
        }
        Cmd::Refresh { paths } => {
            let Reply::Refreshed { isolation_keys_reset, .. } =
                control::request(&paths.runtime_dir, &Request::Refresh)?
            else {
                anyhow::bail!("unexpected reply from the daemon");
            };
            println!("new identity: new streams use new circuits ({isolation_keys_reset} isolation keys renewed)");
            Ok(())
        }
        Cmd::Status { paths, json } => {
            if let Ok(Reply::Status { status, .. }) = control::request(&paths.runtime_dir, &Request::Status) {
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    println!("state:      {} (pid {}, up {}s)", status.state, status.pid, status.uptime_secs);
                    println!("tor:        {}", status.bootstrap);
                    println!(
                        "ports:      trans {}  dns {}  socks {}",
                        status.ports.trans, status.ports.dns, status.ports.socks
                    );
                    println!(
                        "streams:    {} open, {} refused at the limit",
                        status.streams_open, status.streams_refused
                    );
                    for (name, n) in status.counters.iter().filter(|(_, n)| **n > 0) {
                        println!("  {name:<24} {n}");
                    }
                }
                return Ok(());
            }
            let layout = PinLayout::new(&paths.pin_dir);
            if !layout.exists() {
                anyhow::bail!(
                    "not running: nothing pinned under {} (start it with `ttp start`)",
                    paths.pin_dir.display()
                );
            }
            let maps = Maps::open_pinned(&layout.maps()).context("reading the pinned maps")?;
            let cfg = maps.config()?;
            let counters = maps.counters()?;
            let links = layout.link_pins()?.len();
            let lockdown = cfg.has(ttp_common::flags::LOCKDOWN);
            if json {
                let c: serde_json::Map<String, serde_json::Value> =
                    counters.iter().map(|(c, n)| (c.name().to_string(), (*n).into())).collect();
                // The pins outlive the daemon: this is a crashed (closed) instance.
                let v = serde_json::json!({
                    "state": if lockdown { "lockdown" } else { "daemon-dead" },
                    "pid": null,
                    "exit_address": null,
                    "links": links,
                    "ports": { "trans": cfg.trans_port, "dns": cfg.dns_port },
                    "counters": c,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "state:    {} (no daemon: the kill-switch holds the host closed; `ttp stop` or `ttp start`)",
                    if lockdown { "lockdown" } else { "daemon dead" }
                );
                println!("links:    {links} attached (pinned under {})", paths.pin_dir.display());
                println!("ports:    trans {}  dns {}", cfg.trans_port, cfg.dns_port);
                for (c, n) in counters.iter().filter(|(_, n)| *n > 0) {
                    println!("  {:<24} {n}", c.name());
                }
            }
            Ok(())
        }
    }
}

/// `ttp start`: the same arguments, as a detached `ttp run`, watched until ready.
fn start(opts: &ttp::options::StartOptions) -> Result<()> {
    use std::{io::Write, os::unix::process::CommandExt};
    if let Ok(Reply::Status { status, .. }) = control::request(&opts.runtime_dir, &Request::Status) {
        anyhow::bail!("ttp is already running (pid {}); `ttp stop` first", status.pid);
    }
    std::fs::create_dir_all(&opts.runtime_dir).with_context(|| format!("creating {}", opts.runtime_dir.display()))?;
    let log_path = opts.runtime_dir.join("ttp.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    // Our own command line with `start` turned into `run`: every option carries over.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(sub) = args.iter_mut().find(|a| *a == "start") {
        *sub = "run".into();
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(&args).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid is async-signal-safe: the daemon leaves our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    let t0 = std::time::Instant::now();
    let mut shown = 0;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text.lines().skip(shown) {
            if line.contains("kill-switch active") || line.contains("bootstrap") || line.contains("ready after") {
                println!("{}", line.split("ttp::daemon: ").nth(1).unwrap_or(line).trim());
                let _ = std::io::stdout().flush();
            }
        }
        shown = text.lines().count();
        if text.lines().any(|l| l == "READY") {
            let lock = serde_json::json!({
                "pid": child.id(),
                "started_unix": control::unix_now(),
                "args": args,
            });
            std::fs::write(opts.runtime_dir.join("ttp.lock"), serde_json::to_string_pretty(&lock)?)?;
            println!(
                "ttp is running (pid {}) after {:.1?}: the host's traffic goes through Tor",
                child.id(),
                t0.elapsed()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "the daemon exited ({status}) before it was ready; the host is as it was. Last lines of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent_and_documents_itself() {
        Cli::command().debug_assert();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "ttp", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("start") && bash.contains("--arti-config"));
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut man).unwrap();
        assert!(String::from_utf8(man).unwrap().contains("Transparent Tor proxy"));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(Cli::try_parse_from(["ttp", "start", "--no-such-option"]).is_err());
        assert!(Cli::try_parse_from(["ttp", "start", "--virtual-net", "10.0.0.0/99"]).is_err());
        assert!(Cli::try_parse_from(["ttp", "start", "--trans-port", "70000"]).is_err());
    }
}
