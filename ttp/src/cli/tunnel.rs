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
        config::{self as tconfig, PeerEntry, TunnelConfig},
        device,
        handshake::Identity,
        keys,
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

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add a peer to the gateway's file and, if it runs, to the gateway.
    Add {
        /// The gateway's tunnel config file (the one given to `ttp start --tunnel`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The peer's public key (from `ttp tunnel pubkey` on the peer).
        #[arg(long, value_name = "KEY")]
        public_key: String,
        /// The peer's tunnel addresses (its inner sources); comma-separated or repeated.
        #[arg(long, value_name = "PREFIX", value_delimiter = ',', required = true)]
        allowed_ips: Vec<ipnet::IpNet>,
        /// Where to reach the peer first (peers usually reach the gateway instead).
        #[arg(long, value_name = "ADDR:PORT")]
        endpoint: Option<std::net::SocketAddr>,
        /// Generate a pre-shared key for this peer and print it (give it to the peer).
        #[arg(long)]
        generate_psk: bool,
        #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
        runtime_dir: PathBuf,
    },
    /// Remove a peer from the gateway's file and, if it runs, from the gateway (its
    /// session ends at once).
    Remove {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "KEY")]
        public_key: String,
        #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
        runtime_dir: PathBuf,
    },
    /// List the peers of the file, with their live state if the gateway runs.
    List {
        #[arg(long, value_name = "FILE")]
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
        PeerCmd::Add { config, public_key, allowed_ips, endpoint, generate_psk, runtime_dir } => {
            let psk = if generate_psk {
                let id = Identity::generate().map_err(|e| anyhow::anyhow!("generating a key: {e}"))?;
                Some(keys::encode(&id.private))
            } else {
                None
            };
            let entry = PeerEntry { public_key: public_key.clone(), preshared_key: psk.clone(), allowed_ips, endpoint };
            tconfig::add_peer_to_file(&config, &entry)?;
            println!("peer {public_key} added to {}", config.display());
            if let Some(psk) = psk {
                println!("preshared-key for the peer's file: {psk}");
            }
            let change = PeerChange::Add {
                public_key,
                preshared_key: entry.preshared_key,
                allowed_ips: entry.allowed_ips,
                endpoint,
            };
            live(&runtime_dir, change)
        }
        PeerCmd::Remove { config, public_key, runtime_dir } => {
            tconfig::remove_peer_from_file(&config, &public_key)?;
            println!("peer {public_key} removed from {}", config.display());
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
                    .map(|(key, p, state)| {
                        serde_json::json!({
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
            for (key, p, state) in &peers {
                let ips: Vec<String> = p.allowed.iter().map(|n| n.to_string()).collect();
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
                println!("{key}  {}  {state}", ips.join(","));
            }
            Ok(())
        }
    }
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
