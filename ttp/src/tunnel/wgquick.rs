//! WireGuard's configuration format, as wg-quick and the WireGuard apps read and write it:
//!
//! ```text
//! [Interface]
//! PrivateKey = base64
//! Address = 10.77.0.2/32
//! DNS = 10.77.0.1
//!
//! [Peer]
//! PublicKey = base64
//! PresharedKey = base64
//! AllowedIPs = 0.0.0.0/0, ::/0
//! Endpoint = gateway.example.org:51820
//! PersistentKeepalive = 25
//! ```
//!
//! `ttp tunnel peer add` prints a device's file in it (and as a QR code), and `ttp tunnel
//! up` takes one, so a ttp client can use the same file a WireGuard app would. Written by
//! hand: it is a dozen keys of INI, and the INI crates either lose the repeated `[Peer]`
//! sections or accept what wg-quick refuses. Keys are case-insensitive, as wg-quick's are;
//! unknown keys are refused with their line, as `wg setconf` refuses them.

use std::{fmt::Write as _, net::ToSocketAddrs};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use super::{config::TunnelConfig, keys, protocol::PeerConfig};

/// One WireGuard side as the format describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgQuick {
    pub private_key: String,
    pub addresses: Vec<IpNet>,
    pub dns: Vec<String>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    pub peers: Vec<WgPeer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: String,
    pub preshared_key: Option<String>,
    pub allowed_ips: Vec<IpNet>,
    /// `host:port`; the host may be a name.
    pub endpoint: Option<String>,
    pub persistent_keepalive: Option<u16>,
}

/// Does `text` look like this format (its first section is `[Interface]`)?
pub fn is_wg_quick(text: &str) -> bool {
    text.lines().map(strip_comment).find(|l| !l.is_empty()).is_some_and(|l| l.eq_ignore_ascii_case("[Interface]"))
}

fn strip_comment(line: &str) -> &str {
    line.split('#').next().unwrap_or_default().trim()
}

fn list<T: std::str::FromStr>(value: &str, what: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<T>().map_err(|e| anyhow::anyhow!("{what} `{v}`: {e}")))
        .collect()
}

impl WgQuick {
    pub fn parse(text: &str) -> Result<WgQuick> {
        enum Section {
            None,
            Interface,
            Peer,
        }
        let mut w = WgQuick::default();
        let mut section = Section::None;
        let mut has_key = false;
        for (n, raw) in text.lines().enumerate() {
            let n = n + 1;
            let line = strip_comment(raw);
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                section = match line.to_ascii_lowercase().as_str() {
                    "[interface]" => Section::Interface,
                    "[peer]" => {
                        w.peers.push(WgPeer::default());
                        Section::Peer
                    }
                    _ => bail!("line {n}: unknown section {line}"),
                };
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { bail!("line {n}: expected `Key = value`: {line}") };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            let at = |e: anyhow::Error| e.context(format!("line {n}"));
            match (&section, k.as_str()) {
                (Section::Interface, "privatekey") => {
                    keys::decode(v).context("PrivateKey").map_err(at)?;
                    w.private_key = v.to_string();
                    has_key = true;
                }
                (Section::Interface, "address") => w.addresses.extend(list::<IpNet>(v, "Address").map_err(at)?),
                (Section::Interface, "dns") => w.dns.extend(v.split(',').map(|d| d.trim().to_string())),
                (Section::Interface, "listenport") => {
                    w.listen_port = Some(v.parse().map_err(|e| anyhow::anyhow!("line {n}: ListenPort `{v}`: {e}"))?)
                }
                (Section::Interface, "mtu") => {
                    w.mtu = Some(v.parse().map_err(|e| anyhow::anyhow!("line {n}: MTU `{v}`: {e}"))?)
                }
                (Section::Peer, key) => {
                    let p = w.peers.last_mut().expect("a [Peer] section pushed one");
                    match key {
                        "publickey" => {
                            keys::decode(v).context("PublicKey").map_err(at)?;
                            p.public_key = v.to_string();
                        }
                        "presharedkey" => {
                            keys::decode(v).context("PresharedKey").map_err(at)?;
                            p.preshared_key = Some(v.to_string());
                        }
                        "allowedips" => p.allowed_ips.extend(list::<IpNet>(v, "AllowedIPs").map_err(at)?),
                        "endpoint" => p.endpoint = Some(v.to_string()),
                        "persistentkeepalive" => {
                            // 0 is off however it is written ("00" too), as "off" is.
                            p.persistent_keepalive = match v {
                                "off" => None,
                                v => match v.parse() {
                                    Ok(0) => None,
                                    Ok(k) => Some(k),
                                    Err(e) => bail!("line {n}: PersistentKeepalive: {e}"),
                                },
                            }
                        }
                        _ => bail!("line {n}: unknown key in [Peer]: {line}"),
                    }
                }
                (Section::Interface, _) => bail!("line {n}: unknown key in [Interface]: {line}"),
                (Section::None, _) => bail!("line {n}: a key before any section: {line}"),
            }
        }
        if !has_key {
            bail!("no PrivateKey in [Interface]");
        }
        if let Some(i) = w.peers.iter().position(|p| p.public_key.is_empty()) {
            bail!("[Peer] number {} has no PublicKey", i + 1);
        }
        Ok(w)
    }

    /// The tunnel side this file describes. Endpoints given by name are resolved here,
    /// once (as wg-quick does).
    pub fn to_tunnel_config(&self, interface: &str) -> Result<TunnelConfig> {
        let mut peers = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let endpoint = match &p.endpoint {
                Some(e) => Some(
                    e.to_socket_addrs()
                        .with_context(|| format!("[Peer] {}: Endpoint {e}", i + 1))?
                        .next()
                        .with_context(|| format!("[Peer] {}: Endpoint {e} has no address", i + 1))?,
                ),
                None => None,
            };
            peers.push(PeerConfig {
                public: keys::decode(&p.public_key)?,
                psk: p.preshared_key.as_deref().map(keys::decode).transpose()?,
                allowed: p.allowed_ips.clone(),
                endpoint,
                persistent_keepalive: super::config::keepalive(p.persistent_keepalive),
            });
        }
        TunnelConfig::from_parts(
            keys::identity(keys::decode(&self.private_key)?),
            self.listen_port.unwrap_or(0),
            self.addresses.clone(),
            interface.to_string(),
            self.mtu,
            peers,
            vec![None; self.peers.len()],
        )
    }
}

impl std::fmt::Display for WgQuick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        let mut s = String::from("[Interface]\n");
        if self.private_key.is_empty() {
            s.push_str("# PrivateKey = the device's own private key (it made its key pair)\n");
        } else {
            let _ = writeln!(s, "PrivateKey = {}", self.private_key);
        }
        if let Some(p) = self.listen_port {
            let _ = writeln!(s, "ListenPort = {p}");
        }
        if !self.addresses.is_empty() {
            let _ = writeln!(s, "Address = {}", join(&self.addresses));
        }
        if !self.dns.is_empty() {
            let _ = writeln!(s, "DNS = {}", self.dns.join(", "));
        }
        if let Some(m) = self.mtu {
            let _ = writeln!(s, "MTU = {m}");
        }
        for p in &self.peers {
            let _ = writeln!(s, "\n[Peer]\nPublicKey = {}", p.public_key);
            if let Some(k) = &p.preshared_key {
                let _ = writeln!(s, "PresharedKey = {k}");
            }
            let _ = writeln!(s, "AllowedIPs = {}", join(&p.allowed_ips));
            if let Some(e) = &p.endpoint {
                let _ = writeln!(s, "Endpoint = {e}");
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(s, "PersistentKeepalive = {k}");
            }
        }
        f.write_str(&s)
    }
}

/// `text` as a QR code drawn with Unicode half blocks (two rows of modules per line),
/// light on dark with its quiet zone, as phone apps scan it from a terminal.
pub fn qr(text: &str) -> Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).context("the configuration does not fit in a QR code")?;
    Ok(code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_file_round_trips_and_mistakes_are_named_with_their_line() {
        let (k1, k2, k3) =
            (keys::encode(&[1; 32]), keys::encode(&keys::identity([2; 32]).public), keys::encode(&[3; 32]));
        let text = format!(
            "# from a phone app\n[Interface]\nPrivateKey = {k1}\naddress = 10.77.0.2/32, fd77::2/128\nDNS = 10.77.0.1\n\n\
             [Peer]\nPublicKey = {k2}\nPresharedKey = {k3}\nAllowedIPs = 0.0.0.0/0, ::/0\n\
             Endpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n"
        );
        assert!(is_wg_quick(&text));
        assert!(!is_wg_quick("private-key = \"x\"\n"));
        let w = WgQuick::parse(&text).unwrap();
        assert_eq!(w.addresses.len(), 2);
        assert_eq!(w.peers[0].persistent_keepalive, Some(25));
        assert_eq!(WgQuick::parse(&w.to_string()).unwrap(), w, "printed and read back");
        let c = w.to_tunnel_config("wg0").unwrap();
        assert_eq!(c.peers[0].endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(c.peers[0].psk, Some([3; 32]));
        assert_eq!(c.peers[0].persistent_keepalive, Some(std::time::Duration::from_secs(25)));
        // Off, however it is written; and printed as off, it reads back as off (the fuzzer
        // found "00" read as Some(0), printed as "0", read back as None).
        for off in ["off", "0", "00"] {
            let w = WgQuick::parse(&text.replace("PersistentKeepalive = 25", &format!("PersistentKeepalive = {off}")));
            let w = w.unwrap();
            assert_eq!(w.peers[0].persistent_keepalive, None, "{off}");
            assert_eq!(WgQuick::parse(&w.to_string()).unwrap(), w, "{off}: printed and read back");
        }
        for (bad, why) in [
            (text.replace("AllowedIPs", "AllowedIP"), "line 10: unknown key in [Peer]"),
            (text.replace("10.77.0.2/32", "10.77.0.300/32"), "line 4"),
            (text.replace(&k2, "short"), "line 8"),
            (text.replace("[Peer]", "[Pear]"), "unknown section"),
            ("[Interface]\nAddress = 10.0.0.1/32\n".to_string(), "no PrivateKey"),
        ] {
            let e = format!("{:#}", WgQuick::parse(&bad).unwrap_err());
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn the_qr_code_is_drawn() {
        let q = qr("[Interface]\nPrivateKey = x\n").unwrap();
        assert!(q.lines().count() > 10 && q.contains('█'), "{q}");
    }
}
