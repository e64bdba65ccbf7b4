//! Onboarding a device onto a gateway (`ttp tunnel peer add NAME`): its keys, a free
//! tunnel address, its entry in the gateway's file, and its configuration in WireGuard's
//! format, ready for the WireGuard app on a phone or laptop (or `ttp tunnel up`).
//!
//! The device's configuration holds its private key. It is kept on the gateway, root
//! only, in `peers/NAME.conf` beside the gateway's file (`--no-keep` keeps nothing), so
//! that `ttp tunnel peer show NAME` can print it again; `remove` deletes it.

use std::{
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use super::{
    allowed,
    config::{self, PeerEntry, TunnelConfig},
    handshake::Identity,
    keys,
    wgquick::{WgPeer, WgQuick},
};

/// How often a device sends a keepalive: phones sit behind NATs that forget a silent
/// mapping within a minute or two (wg-quick's usual value).
const PERSISTENT_KEEPALIVE: u16 = 25;

pub struct Request<'a> {
    pub name: &'a str,
    /// The gateway's tunnel file.
    pub config: &'a Path,
    /// The device's own public key, if it made its key pair.
    pub public_key: Option<&'a str>,
    /// Its tunnel addresses; empty: the first free one.
    pub addresses: Vec<IpNet>,
    /// Where it reaches the gateway; `None`: guessed.
    pub endpoint: Option<&'a str>,
    pub psk: bool,
    pub keep: bool,
}

pub struct Added {
    /// What went into the gateway's file.
    pub entry: PeerEntry,
    /// The device's configuration (WireGuard's format).
    pub device: String,
    /// Where it is kept, if it is.
    pub kept: Option<PathBuf>,
}

/// Where the configuration of device `name` is kept.
pub fn kept_path(gateway_file: &Path, name: &str) -> Result<PathBuf> {
    if !config::valid_name(name) {
        bail!("{name:?} is not a peer name: letters, digits, '-', '_' and '.' (at most 32)");
    }
    Ok(config::dir_of(gateway_file).join("peers").join(format!("{name}.conf")))
}

pub fn add(r: &Request<'_>) -> Result<Added> {
    let kept = kept_path(r.config, r.name)?;
    let gw = TunnelConfig::load(r.config)?;
    if gw.peer_names.iter().any(|n| n.as_deref() == Some(r.name)) {
        bail!(
            "a peer named {} is in {} already (`ttp tunnel peer remove {}` first)",
            r.name,
            r.config.display(),
            r.name
        );
    }
    let (private, public) = match r.public_key {
        Some(k) => (None, keys::decode(k).context("--public-key")?),
        None => {
            let id = Identity::generate().map_err(|e| anyhow::anyhow!("generating the device's keys: {e}"))?;
            (Some(id.private), id.public)
        }
    };
    let addresses = if r.addresses.is_empty() { free_addresses(&gw)? } else { r.addresses.clone() };
    let endpoint = match r.endpoint {
        Some(e) => check_endpoint(e)?,
        None => guess_endpoint(gw.listen_port)?,
    };
    let psk = match r.psk {
        true => {
            Some(keys::encode(&Identity::generate().map_err(|e| anyhow::anyhow!("generating a key: {e}"))?.private))
        }
        false => None,
    };
    let entry = PeerEntry {
        name: Some(r.name.to_string()),
        public_key: keys::encode(&public),
        preshared_key: psk.clone(),
        allowed_ips: addresses.clone(),
        endpoint: None,
    };
    let device = WgQuick {
        private_key: private.map(|k| keys::encode(&k)).unwrap_or_default(),
        addresses,
        // Any resolver the device asks is answered by the gateway's DNSPort; its own
        // tunnel address is the one that is always there (IPv4: every device has it).
        dns: gw.addresses.iter().take(1).map(|a| a.addr().to_string()).collect(),
        listen_port: None,
        mtu: None,
        peers: vec![WgPeer {
            public_key: keys::encode(&gw.identity.public),
            preshared_key: psk,
            // Everything, IPv6 too: what the gateway cannot carry it drops, where a
            // narrower list would let the device send it around the tunnel.
            allowed_ips: vec!["0.0.0.0/0".parse().expect("prefix"), "::/0".parse().expect("prefix")],
            endpoint: Some(endpoint),
            persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
        }],
    }
    .to_string();
    // Kept first, so that a failure to keep it adds nothing; taken back if the gateway's
    // file refuses the peer.
    let kept = match (r.keep, private) {
        (true, Some(_)) => {
            keep(&kept, &device)?;
            Some(kept)
        }
        _ => None,
    };
    if let Err(e) = config::add_peer_to_file(r.config, &entry) {
        if let Some(k) = &kept {
            let _ = std::fs::remove_file(k);
        }
        return Err(e);
    }
    Ok(Added { entry, device, kept })
}

/// Writes the device's configuration, root only, into a directory only its owner can
/// enter (made if missing; refused if others could write or read it).
fn keep(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("kept path has a directory")?;
    if !dir.exists() {
        std::fs::DirBuilder::new().mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let m = std::fs::metadata(dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    if m.uid() != euid || m.mode() & 0o077 != 0 {
        bail!(
            "{} must be owned by uid {euid} and closed to everyone else (mode 0700): it holds devices' private keys",
            dir.display()
        );
    }
    config::replace_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The first free address of the gateway's IPv4 prefix, and of its IPv6 prefix if it has
/// one (the device's IPv6 goes through Tor as its IPv4 does): neither the gateway's own
/// nor any peer's.
fn free_addresses(gw: &TunnelConfig) -> Result<Vec<IpNet>> {
    let taken = |ip: IpAddr| {
        gw.addresses.iter().any(|a| a.addr() == ip)
            || gw.peers.iter().flat_map(|p| &p.allowed).any(|n| allowed::overlap(n, &IpNet::from(ip)))
    };
    let first_free = |prefix: &IpNet| {
        prefix
            .hosts()
            .take(1 << 16)
            .find(|ip| !taken(*ip))
            .map(IpNet::from)
            .with_context(|| format!("no free address left in {}: give one with --address", prefix.trunc()))
    };
    let v4 = gw.addresses.iter().find(|a| a.addr().is_ipv4()).context(
        "the gateway's file has no IPv4 address (`address = [\"10.77.0.1/24\"]`) to give the device one from",
    )?;
    let mut out = vec![first_free(v4)?];
    if let Some(v6) = gw.addresses.iter().find(|a| a.addr().is_ipv6()) {
        out.push(first_free(v6)?);
    }
    Ok(out)
}

fn check_endpoint(e: &str) -> Result<String> {
    let (host, port) = e.rsplit_once(':').with_context(|| format!("--endpoint {e}: HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("--endpoint {e}: HOST:PORT (a name or an address, and a port)");
    }
    Ok(e.to_string())
}

/// This host's address toward the default route (a UDP socket's route lookup: nothing
/// is sent), with the gateway's port.
fn guess_endpoint(port: u16) -> Result<String> {
    if port == 0 {
        bail!("the gateway's file has no listen-port: add one, or give --endpoint HOST:PORT");
    }
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let local = s
        .connect("198.51.100.1:9")
        .and_then(|_| s.local_addr())
        .context("this host has no default route to guess its address from: give --endpoint HOST:PORT")?;
    Ok(format!("{}:{port}", local.ip()))
}
