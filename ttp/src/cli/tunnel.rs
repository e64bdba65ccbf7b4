//! `ttp tunnel`: keys, and one side of a tunnel in the foreground.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::Subcommand;
use ttp::{
    control::{self, PeerChange, Reply, Request},
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
            let live = match control::request(&runtime_dir, &Request::Status) {
                Ok(Reply::Status { status, .. }) => status.tunnel_peers,
                _ => Vec::new(),
            };
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
    match control::request(runtime_dir, &Request::TunnelPeer(change)) {
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

fn up(path: &Path) -> Result<()> {
    let cfg = TunnelConfig::load(path)?;
    // One thread: the device is one task, and at tens of thousands of packets a second
    // the cost is in wakeups; worker threads parking and waking each other add to it.
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        let udp = device::bind(cfg.listen_port)?;
        let (dev, runner) = device::start(cfg, udp).await?;
        // Set up: from here on the device loop parses the network's datagrams, which it
        // must not do as root. It keeps CAP_NET_ADMIN alone, to remove the endpoint host
        // routes it added when it goes down.
        let nobody = unprivileged_user()?;
        ttp::privs::drop_to(&nobody, 1 << ttp::privs::CAP_NET_ADMIN)
            .context("giving up root once the tunnel is set up")?;
        println!(
            "{} is up; UDP on {}; running as uid {} with CAP_NET_ADMIN only",
            dev.interface, dev.local, nobody.uid
        );
        // A line of its own for whoever started us (scripts and tests wait for it).
        println!("TUNNEL UP");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let r = tokio::select! {
            r = runner.run() => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
        dev.close().await;
        r
    })
}
