//! One side of a tunnel, as a TOML file (the same shape for a gateway and a client):
//!
//! ```toml
//! private-key = "base64 from `ttp tunnel genkey`"
//! listen-port = 51820            # a gateway listens; a client may leave it out
//! address = ["10.77.0.1/24"]     # this side's addresses on its TUN
//! interface = "ttp0"
//! mtu = 1420
//!
//! [[peer]]
//! public-key = "base64 from `ttp tunnel pubkey`"
//! preshared-key = "base64"       # optional
//! allowed-ips = ["10.77.0.2/32"] # sources it may use; routed to it
//! endpoint = "192.0.2.1:51820"   # where to reach it first (a client names its gateway)
//! ```

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use super::{handshake::Identity, keys, protocol::PeerConfig};

/// The default TUN MTU: 1500 less the outer IPv6 (40) and UDP (8) headers and the tunnel's
/// own data header (16) and tag (16), rounded down to a multiple of 16.
pub const DEFAULT_MTU: u32 = 1420;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct File {
    private_key: String,
    listen_port: Option<u16>,
    #[serde(default)]
    address: Vec<IpNet>,
    interface: Option<String>,
    mtu: Option<u32>,
    #[serde(default)]
    peer: Vec<PeerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct PeerFile {
    public_key: String,
    preshared_key: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<IpNet>,
    endpoint: Option<SocketAddr>,
}

/// A tunnel side, checked.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub identity: Identity,
    pub listen_port: u16,
    pub addresses: Vec<IpNet>,
    pub interface: String,
    pub mtu: u32,
    pub peers: Vec<PeerConfig>,
}

impl TunnelConfig {
    pub fn load(path: &Path) -> Result<TunnelConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<TunnelConfig> {
        let f: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let identity = keys::identity(keys::decode(&f.private_key).context("private-key")?);
        let mut peers = Vec::new();
        for (i, p) in f.peer.iter().enumerate() {
            let n = i + 1;
            let public = keys::decode(&p.public_key).with_context(|| format!("peer {n}: public-key"))?;
            if public == identity.public {
                anyhow::bail!("peer {n} is this side's own public key");
            }
            let psk = match &p.preshared_key {
                Some(k) => Some(keys::decode(k).with_context(|| format!("peer {n}: preshared-key"))?),
                None => None,
            };
            peers.push(PeerConfig { public, psk, allowed: p.allowed_ips.clone(), endpoint: p.endpoint });
        }
        Ok(TunnelConfig {
            identity,
            listen_port: f.listen_port.unwrap_or(0),
            addresses: f.address,
            interface: f.interface.unwrap_or_else(|| "ttp0".into()),
            mtu: f.mtu.unwrap_or(DEFAULT_MTU),
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_side_parses_and_mistakes_are_named() {
        let me = keys::encode(&Identity::generate().unwrap().private);
        let peer = keys::encode(&Identity::generate().unwrap().public);
        let ok = format!(
            "private-key = \"{me}\"\nlisten-port = 51820\naddress = [\"10.77.0.1/24\"]\n\
             [[peer]]\npublic-key = \"{peer}\"\nallowed-ips = [\"10.77.0.2/32\"]\nendpoint = \"192.0.2.1:51820\"\n"
        );
        let c = TunnelConfig::parse(&ok).unwrap();
        assert_eq!((c.listen_port, c.mtu, c.interface.as_str()), (51820, DEFAULT_MTU, "ttp0"));
        assert_eq!(c.peers[0].allowed, vec!["10.77.0.2/32".parse::<IpNet>().unwrap()]);
        assert!(!format!("{c:?}").contains(&me), "the private key shows in Debug");
        let bad_key = ok.replace(&peer, "AAAA");
        assert!(format!("{:#}", TunnelConfig::parse(&bad_key).unwrap_err()).contains("peer 1: public-key"));
        let typo = ok.replace("allowed-ips", "allowed-ip");
        assert!(format!("{:#}", TunnelConfig::parse(&typo).unwrap_err()).contains("allowed-ip"));
    }
}
