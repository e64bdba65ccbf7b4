//! `ttp tunnel`: keys, and one side of a tunnel in the foreground.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::Subcommand;
use ttp::{
    control::{self, client::Client, proto::PeerChange},
    tunnel::{
        config::{self as tconfig, TunnelConfig},
        device,
        handshake::Identity,
        keys, onboard,
    },
};

#[derive(Subcommand)]
pub enum TunnelCmd {
    /// Print a new private key (base64); keep it secret.
    Genkey,
    /// Read a private key on standard input, print its public key.
    Pubkey,
    /// Bring up one side of a tunnel from its config file and run it in the foreground:
    /// the TUN with its addresses and routes, the UDP socket, the handshakes.
    Up {
        /// The tunnel's config file (TOML: private-key, listen-port, address, [[peer]]).
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// The gateway's peers: in its config file, and live in a running gateway.
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
}

/// Where a gateway's tunnel file is when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/ttp/tunnel.toml";

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add a device: its keys (unless it brings its public key), a free tunnel address,
    /// saved in the gateway's file and applied to the running gateway; prints the
    /// device's WireGuard configuration, and a QR code for phone apps.
    Add {
        /// The device's name ("phone", "laptop-anna"): letters, digits, '-', '_', '.'.
        name: String,
        /// The gateway's tunnel file (the one given to `ttp start --tunnel`).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The device's public key, if it made its own key pair (its app shows it); then
        /// no private key is made, printed or kept.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// The device's tunnel addresses (default: the first free one in the gateway's
        /// prefix); comma-separated or repeated.
        #[arg(long = "address", visible_alias = "allowed-ips", value_name = "PREFIX", value_delimiter = ',')]
        addresses: Vec<ipnet::IpNet>,
        /// Where the device reaches the gateway, HOST:PORT (default: this host's address
        /// toward its default route, and the file's listen-port). Behind NAT, give the
        /// public name or address.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// No pre-shared key (by default each device gets one: a second secret that keeps
        /// its traffic safe even if X25519 falls one day).
        #[arg(long)]
        no_psk: bool,
        /// Do not keep the device's configuration on the gateway (then `show` cannot print
        /// it again).
        #[arg(long)]
        no_keep: bool,
        /// Print the QR code even when the output is not a terminal.
        #[arg(long)]
        qr: bool,
        #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
        runtime_dir: PathBuf,
    },
    /// Print a device's configuration (and QR code) again, as `add` kept it.
    Show {
        name: String,
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        qr: bool,
    },
    /// Remove a device (by name or public key) from the gateway's file and, if it runs,
    /// from the gateway: its session ends at once, and its kept configuration goes.
    Remove {
        /// The device's name, or its public key.
        name: String,
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
        runtime_dir: PathBuf,
    },
    /// List the peers of the file, with their live state if the gateway runs.
    List {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
        runtime_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: TunnelCmd) -> Result<()> {
    match cmd {
        TunnelCmd::Genkey => {
            let id = Identity::generate().map_err(|e| anyhow::anyhow!("generating a key: {e}"))?;
            println!("{}", keys::encode(&id.private));
            Ok(())
        }
        TunnelCmd::Pubkey => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the private key on standard input")?;
            let private = keys::decode(&text).context("the private key on standard input")?;
            println!("{}", keys::encode(&keys::identity(private).public));
            Ok(())
        }
        TunnelCmd::Up { config } => up(&config),
        TunnelCmd::Peer { cmd } => peer(cmd),
    }
}

fn peer(cmd: PeerCmd) -> Result<()> {
    match cmd {
        PeerCmd::Add { name, config, public_key, addresses, endpoint, no_psk, no_keep, qr, runtime_dir } => {
            let added = onboard::add(&onboard::Request {
                name: &name,
                config: &config,
                public_key: public_key.as_deref(),
                addresses,
                endpoint: endpoint.as_deref(),
                psk: !no_psk,
                keep: !no_keep,
            })?;
            println!("peer {name} added to {} ({})", config.display(), join(&added.entry.allowed_ips));
            let change = PeerChange::Add {
                public_key: added.entry.public_key.clone(),
                preshared_key: added.entry.preshared_key.clone(),
                allowed_ips: added.entry.allowed_ips.clone(),
                endpoint: None,
            };
            let live = live(&runtime_dir, change);
            println!(
                "\nThe device's configuration (import it in its WireGuard app, or `ttp tunnel up --config {name}.conf`):\n"
            );
            print_device(&added.device, qr)?;
            match &added.kept {
                Some(p) => {
                    println!("Kept in {} (root only): `ttp tunnel peer show {name}` prints it again.", p.display())
                }
                None if public_key.is_none() => println!("Not kept: this is the only time its private key is shown."),
                None => {}
            }
            live
        }
        PeerCmd::Show { name, config, qr } => {
            let path = onboard::kept_path(&config, &name)?;
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("reading {} (only devices added without --no-keep are kept)", path.display())
            })?;
            print_device(&text, qr)
        }
        PeerCmd::Remove { name, config, runtime_dir } => {
            let (_, public_key) = tconfig::remove_peer_from_file(&config, &name)?;
            println!("peer {name} removed from {}", config.display());
            if tconfig::valid_name(&name) {
                let kept = onboard::kept_path(&config, &name)?;
                if kept.exists() {
                    std::fs::remove_file(&kept).with_context(|| format!("removing {}", kept.display()))?;
                    println!("{} removed", kept.display());
                }
            }
            live(&runtime_dir, PeerChange::Remove { public_key })
        }
        PeerCmd::List { config, runtime_dir, json } => {
            let cfg = TunnelConfig::load(&config)?;
            let live = Client::new(&runtime_dir).status().map(|s| s.tunnel_peers).unwrap_or_default();
            // Each peer of the file, with its live state if the gateway has it.
            let peers: Vec<(String, &_, Option<&_>)> = cfg
                .peers
                .iter()
                .map(|p| {
                    let key = keys::encode(&p.public);
                    let state = live.iter().find(|s| s.public_key == key);
                    (key, p, state)
                })
                .collect();
            if json {
                let rows: Vec<serde_json::Value> = peers
                    .iter()
                    .enumerate()
                    .map(|(i, (key, p, state))| {
                        serde_json::json!({
                            "name": cfg.peer_names[i],
                            "public_key": key,
                            "allowed_ips": p.allowed,
                            "preshared_key": p.psk.is_some(),
                            "live": state,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for (i, (key, p, state)) in peers.iter().enumerate() {
                let name = cfg.peer_names[i].as_deref().unwrap_or("-");
                let state = match state {
                    Some(s) => match (s.endpoint, s.last_handshake_secs) {
                        (Some(e), Some(h)) => {
                            format!("at {e}, handshake {h} s ago, {} B in, {} B out", s.rx_bytes, s.tx_bytes)
                        }
                        _ => "not connected".into(),
                    },
                    None if live.is_empty() => "gateway not running".into(),
                    None => "not in the running gateway (restart to load it)".into(),
                };
                println!("{name}  {key}  {}  {state}", join(&p.allowed));
            }
            Ok(())
        }
    }
}

fn join(nets: &[ipnet::IpNet]) -> String {
    nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

/// A device's configuration, and its QR code when a person is looking (or `--qr`).
fn print_device(text: &str, qr: bool) -> Result<()> {
    use std::io::IsTerminal;
    println!("{text}");
    if qr || std::io::stdout().is_terminal() {
        println!("{}", ttp::tunnel::wgquick::qr(text)?);
    }
    Ok(())
}

/// Tells a running gateway about a change already saved in its file.
fn live(runtime_dir: &Path, change: PeerChange) -> Result<()> {
    if !runtime_dir.join(control::SOCKET).exists() {
        println!("ttp is not running: the gateway reads the file at its next start");
        return Ok(());
    }
    match Client::new(runtime_dir).tunnel_peer(change) {
        Ok(_) => {
            println!("the running gateway has it now");
            Ok(())
        }
        Err(e) => {
            Err(e.context("saved in the file, but the running gateway did not take it (`ttp restart` loads the file)"))
        }
    }
}

/// Who `ttp tunnel up` becomes: `nobody`, owning nothing.
fn unprivileged_user() -> Result<ttp::user::ServiceUser> {
    let u = nix::unistd::User::from_name("nobody")?.context("no user nobody on this system")?;
    let gid = u.gid.as_raw();
    Ok(ttp::user::ServiceUser { uid: u.uid.as_raw(), gid, groups: vec![gid] })
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    // One thread: the device is one task, and at tens of thousands of packets a second
    // the cost is in wakeups; worker threads parking and waking each other add to it.
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// `ttp tunnel up` runs as two processes. This one sets the tunnel up as root (the TUN,
/// its addresses and routes, a host route to each endpoint, the socket), then forks the
/// device: the child gives up root and every capability before it reads a datagram, and
/// runs the tunnel; this process, still root, only waits for it and then removes the
/// endpoint routes, which do not go away with the TUN. So code running in the device (a
/// bug in parsing what the network sends) holds no capability at all and cannot touch the
/// routing table; the root side parses nothing from the network.
fn up(path: &Path) -> Result<()> {
    let cfg = TunnelConfig::load(path)?;
    let nobody = unprivileged_user()?;
    // Set up on a runtime that is gone before the fork (it is current-thread, and its
    // tasks go with it): fork wants a process of one thread.
    let (dev, runner) = current_thread()?.block_on(async {
        let udp = device::bind(cfg.listen_port)?;
        device::start(cfg, udp).await
    })?;
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    if threads != 1 {
        let rt = current_thread()?;
        rt.block_on(dev.close());
        anyhow::bail!("cannot start the device process: {threads} threads where one was expected");
    }
    let root_pid = nix::unistd::getpid();
    // SAFETY: the process has one thread (checked above), so the child is a whole copy of
    // it; it goes on with ordinary Rust code and ends with exit.
    let forked = unsafe { nix::unistd::fork() };
    let forked = match forked {
        Ok(f) => f,
        Err(e) => {
            current_thread()?.block_on(dev.close());
            return Err(e).context("starting the tunnel's device process");
        }
    };
    match forked {
        nix::unistd::ForkResult::Child => {
            let code = match device_process(&nobody, root_pid, &dev, runner) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ttp: {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            // Our copies of the TUN and the socket: the TUN now lives as long as the child.
            drop(runner);
            let status = wait_forwarding_signals(child);
            current_thread()?.block_on(dev.close());
            match status? {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, code) => {
                    anyhow::bail!("the tunnel's device process failed (exit code {code}); its routes are removed")
                }
                other => anyhow::bail!("the tunnel's device process ended: {other:?}; its routes are removed"),
            }
        }
    }
}

/// The device side of `ttp tunnel up` (see [`up`]): no root, no capability, and it dies
/// with the root side, so that a tunnel never runs with nobody to clean up after it.
fn device_process(
    nobody: &ttp::user::ServiceUser,
    root: nix::unistd::Pid,
    dev: &device::Device,
    runner: device::Runner,
) -> Result<()> {
    ttp::privs::drop_to(nobody, 0).context("giving up root in the device process")?;
    // After the drop: a change of credentials clears the parent-death signal.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    if nix::unistd::getppid() != root {
        anyhow::bail!("the root side of `ttp tunnel up` is gone");
    }
    println!(
        "{} is up; UDP on {}; the device runs as uid {} with no capability (root only removes its routes at the end)",
        dev.interface, dev.local, nobody.uid
    );
    // A line of its own for whoever started us (scripts and tests wait for it).
    println!("TUNNEL UP");
    current_thread()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = runner.run() => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// The device process's pid, for the root side's SIGTERM handler.
static DEVICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_term(_: libc::c_int) {
    let pid = DEVICE.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Waits for the device process. A SIGTERM to this side is passed on to it; Ctrl-C
/// reaches both (one process group), and the device ends on it by itself.
fn wait_forwarding_signals(child: nix::unistd::Pid) -> Result<nix::sys::wait::WaitStatus> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    DEVICE.store(child.as_raw(), std::sync::atomic::Ordering::SeqCst);
    // SAFETY: the handler only loads an atomic and calls kill(2).
    unsafe {
        sigaction(
            Signal::SIGTERM,
            &SigAction::new(SigHandler::Handler(forward_term), SaFlags::SA_RESTART, SigSet::empty()),
        )?;
        sigaction(Signal::SIGINT, &SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()))?;
    }
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.context("waiting for the tunnel's device process"),
        }
    }
}

/// The encrypted tunnel for remote peers: keys, and bringing a side up.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: TunnelCmd,
}

impl Args {
    /// `up` runs a device; adding, removing or showing a peer touches files with private
    /// keys (`show` prints a device's private key). Keys and listing are anyone's.
    pub fn needs_root(&self) -> bool {
        let root_peer = |c: &PeerCmd| matches!(c, PeerCmd::Add { .. } | PeerCmd::Remove { .. } | PeerCmd::Show { .. });
        matches!(self.cmd, TunnelCmd::Up { .. }) || matches!(&self.cmd, TunnelCmd::Peer { cmd } if root_peer(cmd))
    }

    pub fn run(self) -> Result<()> {
        run(self.cmd)
    }
}
