//! The `ttp` command.
//!
//! Exit codes: 0 ok, 1 error (one line on stderr saying what to do), 2 needs root.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use clap::{Parser, Subcommand};

/// `println!` for text that carries what the daemon said (and, through it, what local
/// users put in SOCKS hostnames and usernames): shown through `logfile::printable`, so no
/// escape sequence reaches the terminal of root or the `ttp` group.
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", ttp::logfile::printable(&format!($($t)*)))
    };
}

mod cli;

use cli::Paths;

#[derive(Parser)]
#[command(name = "ttp", version, about = "Transparent Tor proxy for Linux: the whole host through Tor, failing closed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the daemon in the background; returns once the host is protected and
    /// traffic flows through Tor (or fails: before the kill-switch with the host as it
    /// was, after it with the host closed until `ttp stop`).
    Start {
        #[command(flatten)]
        opts: Box<ttp::options::StartOptions>,
    },
    /// Run the daemon in the foreground (what `ttp start` and the systemd unit run).
    Run {
        #[command(flatten)]
        opts: Box<ttp::options::StartOptions>,
    },
    /// Attach the kill-switch in lockdown and exit: nothing governed leaves until `ttp run`
    /// takes it over, or `ttp stop` (at boot, before the network: ttp-lock.service).
    Lock {
        #[command(flatten)]
        opts: Box<ttp::options::StartOptions>,
    },
    /// Zero-leak teardown: lockdown, then detach and unpin. Works after a crash too.
    Stop {
        #[command(flatten)]
        paths: Paths,
        /// As a systemd unit's ExecStop: tear down only for a stop; through a restart, or
        /// once the daemon is already gone (killed, crashed), the host stays closed.
        #[arg(long)]
        systemd: bool,
    },
    /// Apply a changed config file to the running session: the policy (bypass users,
    /// groups and cgroups, root, LAN, IPv6) at once; names what needs a restart.
    Reload {
        #[command(flatten)]
        paths: Paths,
    },
    /// Stop, then start again with the options of the running session.
    Restart {
        #[command(flatten)]
        paths: Paths,
    },
    /// Show the daemon's log (volatile, rotated at 1 MB) and follow it.
    Logs {
        #[command(flatten)]
        paths: Paths,
        /// How many of the last lines to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        /// The watchdog's log instead of the daemon's.
        #[arg(long)]
        watchdog: bool,
    },
    /// The integrity loop: programs attached, daemon alive, Tor bootstrapped, DNS answered;
    /// on a fault it locks down and repairs.
    Watchdog {
        #[command(subcommand)]
        cmd: WatchdogCmd,
    },
    /// The encrypted tunnel for remote peers: keys, and bringing a side up.
    Tunnel {
        #[command(subcommand)]
        cmd: cli::tunnel::TunnelCmd,
    },
    /// Run one command through Tor (`--tor`) or around it (`--direct`).
    Exec {
        #[command(flatten)]
        paths: Paths,
        /// Through Tor, even when ttp governs only part of the host.
        #[arg(long, conflicts_with = "direct", required_unless_present = "direct")]
        tor: bool,
        /// Around Tor (split tunneling), even when ttp governs the whole host.
        #[arg(long)]
        direct: bool,
        /// Run as this user (default: the user who ran sudo).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Install the binary, systemd unit, completions, man page and the `ttp` group.
    Install {
        /// Install under this root instead of / (for packaging).
        #[arg(long, default_value = "/", value_name = "DIR")]
        prefix: PathBuf,
        /// Which directories: a source install's (/usr/local) or a Debian package's.
        #[arg(long, value_enum, default_value_t)]
        layout: cli::install::LayoutKind,
    },
    /// Stop ttp and remove what `ttp install` put on the host (and Tor's state).
    Uninstall {
        #[command(flatten)]
        paths: Paths,
        /// Remove from under this root instead of / (for packaging).
        #[arg(long, default_value = "/", value_name = "DIR")]
        prefix: PathBuf,
        /// Keep Tor's state and cache (/var/lib/ttp) and the config (/etc/ttp).
        #[arg(long)]
        keep_state: bool,
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
    /// A live dashboard: Tor, traffic, streams, DNS, the kill-switch, peers, the log.
    Top(cli::top::Args),
    /// Through Tor: is-Tor verdict, exit address and latency from a check endpoint.
    Check {
        #[command(flatten)]
        paths: Paths,
        /// Check endpoint(s), tried in order (default: the daemon's list).
        #[arg(long = "check-url", value_name = "URL", value_parser = ttp::check::check_url)]
        urls: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// OS, kernel, BPF support, attached programs and counters, Tor and daemon state.
    Diagnose {
        #[command(flatten)]
        paths: Paths,
    },
    /// Active leak probes from a governed context: DNS, TCP, UDP, IPv6, ICMP; pass or fail
    /// with the evidence (the kernel's own counters).
    CheckLeak {
        #[command(flatten)]
        paths: Paths,
        /// Raw detail for each probe.
        #[arg(short, long)]
        verbose: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
}

#[derive(Subcommand)]
enum WatchdogCmd {
    /// Start the watchdog in the background.
    Start {
        #[command(flatten)]
        paths: Paths,
    },
    /// Stop the background watchdog.
    Stop {
        #[command(flatten)]
        paths: Paths,
    },
    /// Is it running, and what did its last round find?
    Status {
        #[command(flatten)]
        paths: Paths,
        #[arg(long)]
        json: bool,
    },
    /// Run the loop in the foreground.
    Run {
        #[command(flatten)]
        paths: Paths,
        /// Seconds between rounds.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("ttp: {e:#}");
            return ExitCode::from(1);
        }
    };
    init_tracing(&cli.cmd);
    let needs_root = match &cli.cmd {
        Cmd::Start { .. }
        | Cmd::Run { .. }
        | Cmd::Stop { .. }
        | Cmd::Restart { .. }
        | Cmd::Reload { .. }
        | Cmd::Lock { .. }
        | Cmd::Refresh { .. }
        | Cmd::Diagnose { .. }
        | Cmd::Logs { .. }
        | Cmd::Exec { .. }
        | Cmd::Install { .. }
        | Cmd::Uninstall { .. } => true,
        Cmd::Watchdog { cmd } => !matches!(cmd, WatchdogCmd::Status { .. }),
        Cmd::Tunnel { cmd } => {
            use cli::tunnel::{PeerCmd, TunnelCmd};
            // `show` prints a device's private key.
            let root_peer =
                |c: &PeerCmd| matches!(c, PeerCmd::Add { .. } | PeerCmd::Remove { .. } | PeerCmd::Show { .. });
            matches!(cmd, TunnelCmd::Up { .. }) || matches!(cmd, TunnelCmd::Peer { cmd } if root_peer(cmd))
        }
        _ => false,
    };
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

/// Parses the command line; for `start`, `run` and `lock`, the config file's keys fill in what the
/// command line leaves out. Clap's own errors (and --help) exit as clap does.
fn parse() -> Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(&argv).map_err(one_line)?;
    let Some((name, sub)) = matches.subcommand().filter(|(n, _)| matches!(*n, "start" | "run" | "lock")) else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(file) = ttp::config::path(sub) else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let subcmd = cmd.find_subcommand(name).expect("subcommand exists");
    let extra = ttp::config::args_from_file(subcmd, sub, &file)?;
    // argv[0], the subcommand, the file's options, then the command line's own.
    let at = argv.iter().position(|a| a == name).expect("subcommand in argv");
    let mut all: Vec<std::ffi::OsString> = argv[..=at].to_vec();
    all.extend(extra);
    all.extend(argv[at + 1..].iter().cloned());
    let matches = cmd.try_get_matches_from(all).map_err(one_line).with_context(|| format!("in {}", file.display()))?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Clap's error as one line that says what to do (help and version are printed and exit).
fn one_line(e: clap::Error) -> anyhow::Error {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
    anyhow::anyhow!("{first} (see `ttp --help` or `ttp COMMAND --help`)")
}

/// Logs go to standard error, or for the daemon and the watchdog to their log files
/// (rotated; `ttp logs` shows them).
fn init_tracing(cmd: &Cmd) {
    // The programs log each refused connect (target ttp::sock_addr); the counters keep the
    // record, and a program retrying through a lockdown would write hundreds of lines a
    // second into the journal: by default they are not shown (RUST_LOG brings them back).
    let filter =
        || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,ttp::sock_addr=warn".into());
    let file = match cmd {
        Cmd::Run { opts } => opts.log_file.clone(),
        Cmd::Watchdog { cmd: WatchdogCmd::Run { paths, .. } } => {
            let _ = std::fs::create_dir_all(&paths.runtime_dir);
            Some(cli::watchdog::log_path(&paths.runtime_dir))
        }
        _ => None,
    };
    if let Some(log) = file.and_then(|f| ttp::logfile::RotatingLog::open(&f).ok()) {
        tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(false).with_writer(move || log.clone()).init();
        // A panic is logged like any other error, not lost on a closed stderr.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!("panic: {info}");
            default(info);
        }));
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// The arguments after the subcommand (what `start` hands to `run`).
fn args_after(sub: &str) -> Vec<String> {
    std::env::args().skip(1).skip_while(|a| a != sub).skip(1).collect()
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Start { opts } => cli::start::start(&opts, &args_after("start")),
        Cmd::Restart { paths } => cli::start::restart(&paths.runtime_dir, &paths.pin_dir),
        Cmd::Reload { paths } => cli::reload::reload(&paths.runtime_dir),
        Cmd::Lock { opts } => cli::lock::lock(&opts),
        Cmd::Logs { paths, lines, no_follow, watchdog } => {
            let path =
                if watchdog { cli::watchdog::log_path(&paths.runtime_dir) } else { paths.runtime_dir.join("ttp.log") };
            cli::logs::logs(&path, lines, !no_follow)
        }
        Cmd::Watchdog { cmd } => match cmd {
            WatchdogCmd::Start { paths } => {
                let pid = cli::watchdog::spawn(&paths.runtime_dir, &paths.pin_dir)?;
                println!("watchdog started (pid {pid}); `ttp logs --watchdog` shows what it does");
                Ok(())
            }
            WatchdogCmd::Stop { paths } => {
                match cli::watchdog::stop(&paths.runtime_dir) {
                    Some(pid) => println!("watchdog (pid {pid}) stopped"),
                    None => println!("no watchdog was running"),
                }
                Ok(())
            }
            WatchdogCmd::Status { paths, json } => cli::watchdog::status(&paths.runtime_dir, json),
            WatchdogCmd::Run { paths, interval } => {
                cli::watchdog::run(&paths.runtime_dir, &paths.pin_dir, std::time::Duration::from_secs(interval.max(1)))
            }
        },
        Cmd::Exec { paths, tor, direct: _, user, command } => {
            let route = if tor { cli::exec::Route::Tor } else { cli::exec::Route::Direct };
            let code = cli::exec::exec(&paths.runtime_dir, route, user.as_deref(), &command)?;
            std::process::exit(code);
        }
        Cmd::CheckLeak { paths, verbose, json } => cli::check_leak::run(&paths.runtime_dir, verbose, json),
        Cmd::Install { prefix, layout } => cli::install::install(&prefix, layout),
        Cmd::Uninstall { paths, prefix, keep_state } => {
            cli::install::uninstall(&prefix, &paths.runtime_dir, &paths.pin_dir, keep_state)
        }
        Cmd::Check { paths, urls, json } => cli::check::run(&paths.runtime_dir, urls, json),
        Cmd::Tunnel { cmd } => cli::tunnel::run(cmd),
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
            // Before the first thread: the monitor is forked from a single-threaded process.
            let monitor = ttp::monitor::Monitor::spawn(ttp::daemon::cleanup_for(&opts)?)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            // The start protocol on stdout (for `ttp start`), systemd's on its socket.
            // Write errors are ignored: `ttp start` stops listening once the daemon is ready.
            rt.block_on(ttp::daemon::run(&opts, monitor, |e| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", e.line()).and_then(|_| out.flush());
                if matches!(e, ttp::daemon::Event::Ready(_)) {
                    ttp::daemon::notify_systemd_ready();
                }
            }))
        }
        Cmd::Stop { paths, systemd } => {
            if systemd && !cli::unit_stop::is_a_stop(&paths.runtime_dir, &paths.pin_dir)? {
                return Ok(());
            }
            // A stopped ttp is not to be revived: the watchdog goes first.
            cli::watchdog::stop(&paths.runtime_dir);
            cli::start::stop(&paths.runtime_dir, &paths.pin_dir)
        }
        Cmd::Streams { paths, recent, json } => cli::streams::run(&paths.runtime_dir, recent, json),
        Cmd::Refresh { paths } => cli::refresh::run(&paths.runtime_dir),
        Cmd::Status { paths, json } => cli::status::run(&paths.runtime_dir, &paths.pin_dir, json),
        Cmd::Top(args) => cli::top::run(args),
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
