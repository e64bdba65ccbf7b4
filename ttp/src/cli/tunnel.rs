//! `ttp tunnel`: keys, and one side of a tunnel in the foreground.

use std::{io::Read, path::Path};

use anyhow::{Context, Result};
use clap::Subcommand;
use ttp::tunnel::{config::TunnelConfig, device, handshake::Identity, keys};

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
    }
}

fn up(path: &Path) -> Result<()> {
    let cfg = TunnelConfig::load(path)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let (dev, running) = device::start(cfg).await?;
        println!("{} is up; UDP on {}", dev.interface, dev.local);
        // A line of its own for whoever started us (scripts and tests wait for it).
        println!("TUNNEL UP");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = running => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
