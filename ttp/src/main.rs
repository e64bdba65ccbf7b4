//! The `ttp` command.
//!
//! Exit codes: 0 ok, 1 error (one line on stderr saying what to do), 2 needs root.

use std::process::ExitCode;

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

#[derive(Parser)]
#[command(name = "ttp", version, about = "Transparent Tor proxy for Linux: the whole host through Tor, failing closed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Each command's arguments, root check and run are in its module of `cli/`.
#[derive(Subcommand)]
enum Cmd {
    Start(cli::start::Args),
    Run(cli::run::Args),
    Lock(cli::lock::Args),
    Stop(cli::stop::Args),
    Reload(cli::reload::Args),
    Restart(cli::restart::Args),
    Logs(cli::logs::Args),
    Watchdog(cli::watchdog::Args),
    Tunnel(cli::tunnel::Args),
    Exec(cli::exec::Args),
    Install(cli::install::Args),
    Uninstall(cli::install::UninstallArgs),
    Status(cli::status::Args),
    Streams(cli::streams::Args),
    Refresh(cli::refresh::Args),
    Top(cli::top::Args),
    Check(cli::check::Args),
    Diagnose(cli::diagnose::Args),
    CheckLeak(cli::check_leak::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

impl Cmd {
    /// Whether this command needs root, as the command declares it.
    fn needs_root(&self) -> bool {
        match self {
            Cmd::Start(_) => cli::start::Args::NEEDS_ROOT,
            Cmd::Run(_) => cli::run::Args::NEEDS_ROOT,
            Cmd::Lock(_) => cli::lock::Args::NEEDS_ROOT,
            Cmd::Stop(_) => cli::stop::Args::NEEDS_ROOT,
            Cmd::Reload(_) => cli::reload::Args::NEEDS_ROOT,
            Cmd::Restart(_) => cli::restart::Args::NEEDS_ROOT,
            Cmd::Logs(_) => cli::logs::Args::NEEDS_ROOT,
            Cmd::Watchdog(a) => a.needs_root(),
            Cmd::Tunnel(a) => a.needs_root(),
            Cmd::Exec(_) => cli::exec::Args::NEEDS_ROOT,
            Cmd::Install(_) => cli::install::Args::NEEDS_ROOT,
            Cmd::Uninstall(_) => cli::install::UninstallArgs::NEEDS_ROOT,
            Cmd::Status(_) => cli::status::Args::NEEDS_ROOT,
            Cmd::Streams(_) => cli::streams::Args::NEEDS_ROOT,
            Cmd::Refresh(_) => cli::refresh::Args::NEEDS_ROOT,
            Cmd::Top(_) => cli::top::Args::NEEDS_ROOT,
            Cmd::Check(_) => cli::check::Args::NEEDS_ROOT,
            Cmd::Diagnose(_) => cli::diagnose::Args::NEEDS_ROOT,
            Cmd::CheckLeak(_) => cli::check_leak::Args::NEEDS_ROOT,
            Cmd::Completions { .. } | Cmd::Man => false,
        }
    }

    fn run(self) -> Result<()> {
        match self {
            Cmd::Start(a) => a.run(),
            Cmd::Run(a) => a.run(),
            Cmd::Lock(a) => a.run(),
            Cmd::Stop(a) => a.run(),
            Cmd::Reload(a) => a.run(),
            Cmd::Restart(a) => a.run(),
            Cmd::Logs(a) => a.run(),
            Cmd::Watchdog(a) => a.run(),
            Cmd::Tunnel(a) => a.run(),
            Cmd::Exec(a) => a.run(),
            Cmd::Install(a) => a.run(),
            Cmd::Uninstall(a) => a.run(),
            Cmd::Status(a) => a.run(),
            Cmd::Streams(a) => a.run(),
            Cmd::Refresh(a) => a.run(),
            Cmd::Top(a) => a.run(),
            Cmd::Check(a) => a.run(),
            Cmd::Diagnose(a) => a.run(),
            Cmd::CheckLeak(a) => a.run(),
            Cmd::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "ttp", &mut std::io::stdout());
                Ok(())
            }
            Cmd::Man => {
                clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
                Ok(())
            }
        }
    }
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
    let needs_root = cli.cmd.needs_root();
    if needs_root && !nix::unistd::geteuid().is_root() {
        eprintln!("ttp: this command needs root: run it with sudo");
        return ExitCode::from(2);
    }
    match cli.cmd.run() {
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
        Cmd::Run(a) => a.opts.log_file.clone(),
        Cmd::Watchdog(a) => a.log_file(),
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

    /// What each command declares: reading needs the control socket only, anything that
    /// changes the host or reads root's files needs root.
    #[test]
    fn each_command_says_whether_it_needs_root() {
        let root = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().cmd.needs_root();
        for argv in [
            &["ttp", "stop"][..],
            &["ttp", "start"],
            &["ttp", "refresh"],
            &["ttp", "logs"],
            &["ttp", "watchdog", "start"],
            &["ttp", "tunnel", "up", "--config", "/etc/ttp/tunnel.toml"],
            &["ttp", "tunnel", "peer", "show", "laptop"],
        ] {
            assert!(root(argv), "{argv:?}");
        }
        for argv in [
            &["ttp", "status"][..],
            &["ttp", "streams"],
            &["ttp", "top"],
            &["ttp", "check"],
            &["ttp", "check-leak"],
            &["ttp", "watchdog", "status"],
            &["ttp", "tunnel", "genkey"],
            &["ttp", "man"],
        ] {
            assert!(!root(argv), "{argv:?}");
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(Cli::try_parse_from(["ttp", "start", "--no-such-option"]).is_err());
        assert!(Cli::try_parse_from(["ttp", "start", "--virtual-net", "10.0.0.0/99"]).is_err());
        assert!(Cli::try_parse_from(["ttp", "start", "--trans-port", "70000"]).is_err());
    }
}
