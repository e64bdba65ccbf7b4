//! One side of a tunnel, as a TOML file (the same shape for a gateway and a client):
//!
//! ```toml
//! private-key = "base64 from `ttp tunnel genkey`"
//! listen-port = 51820            # a gateway listens; a client may leave it out
//! address = ["10.77.0.1/24"]     # this side's addresses on its TUN
//! interface = "ttp0"
//! mtu = 1420
//! rekey-after = 120              # seconds until a session this side started is renewed
//!
//! [[peer]]
//! name = "phone"                 # optional: `ttp tunnel peer add phone` names it
//! public-key = "base64 from `ttp tunnel pubkey`"
//! preshared-key = "base64"       # optional
//! allowed-ips = ["10.77.0.2/32"] # sources it may use; routed to it (a client may say
//!                                # "0.0.0.0/0": everything but the way to the gateway)
//! endpoint = "192.0.2.1:51820"   # where to reach it first (a client names its gateway)
//! persistent-keepalive = 25      # optional: seconds; a keepalive after each silence this
//!                                # long (a client behind a NAT that must stay reachable)
//! ```
//!
//! `ttp tunnel up` also takes WireGuard's own format (see [`super::wgquick`]).

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use super::{allowed::AllowedIps, handshake::Identity, keys, peer::PeerId, protocol::PeerConfig};

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
    /// Seconds after which a session this side started is renewed (default 120).
    rekey_after: Option<u64>,
    #[serde(default)]
    peer: Vec<PeerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct PeerFile {
    /// The device's name (`ttp tunnel peer add NAME`).
    name: Option<String>,
    public_key: String,
    preshared_key: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<IpNet>,
    endpoint: Option<SocketAddr>,
    /// Seconds: a keepalive after each silence this long (behind a NAT).
    persistent_keepalive: Option<u16>,
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
    /// Each peer's name, if it has one (same order as `peers`).
    pub peer_names: Vec<Option<String>>,
    /// `rekey-after`: renew the sessions this side starts after this, not two minutes.
    pub rekey_after: Option<std::time::Duration>,
}

impl TunnelConfig {
    /// Reads a side's file: this TOML, or WireGuard's own format (`[Interface]`, as
    /// wg-quick and the WireGuard apps write it), whose interface is named after the
    /// file as wg-quick names it (`phone.conf` is `phone`) when that is a valid name.
    pub fn load(path: &Path) -> Result<TunnelConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        if super::wgquick::is_wg_quick(&text) {
            let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| valid_ifname(s)).unwrap_or("ttp0");
            let w = super::wgquick::WgQuick::parse(&text).with_context(|| format!("in {}", path.display()))?;
            return w.to_tunnel_config(stem).with_context(|| format!("in {}", path.display()));
        }
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<TunnelConfig> {
        let f: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let identity = keys::identity(keys::decode(&f.private_key).context("private-key")?);
        let mut peers = Vec::new();
        for (i, p) in f.peer.iter().enumerate() {
            let n = i + 1;
            let public = keys::decode(&p.public_key).with_context(|| format!("peer {n}: public-key"))?;
            let psk = match &p.preshared_key {
                Some(k) => Some(keys::decode(k).with_context(|| format!("peer {n}: preshared-key"))?),
                None => None,
            };
            peers.push(PeerConfig {
                public,
                psk,
                allowed: p.allowed_ips.clone(),
                endpoint: p.endpoint,
                persistent_keepalive: keepalive(p.persistent_keepalive),
            });
        }
        let mut c = Self::from_parts(
            identity,
            f.listen_port.unwrap_or(0),
            f.address,
            f.interface.unwrap_or_else(|| "ttp0".into()),
            f.mtu,
            peers,
            f.peer.into_iter().map(|p| p.name).collect(),
        )?;
        c.rekey_after = match f.rekey_after {
            Some(s @ 1..=120) => Some(std::time::Duration::from_secs(s)),
            Some(s) => anyhow::bail!("rekey-after = {s}: between 1 and 120 seconds"),
            None => None,
        };
        Ok(c)
    }

    /// A side from its parts, checked the same whichever format they came from: no peer
    /// is this side itself or another peer again (by key or by name), and peers'
    /// addresses are apart.
    pub fn from_parts(
        identity: Identity,
        listen_port: u16,
        addresses: Vec<IpNet>,
        interface: String,
        mtu: Option<u32>,
        peers: Vec<PeerConfig>,
        peer_names: Vec<Option<String>>,
    ) -> Result<TunnelConfig> {
        let mut table = AllowedIps::default();
        for (i, p) in peers.iter().enumerate() {
            let n = i + 1;
            if p.public == identity.public {
                anyhow::bail!("peer {n} is this side's own public key");
            }
            if let Some(name) = &peer_names[i] {
                if !valid_name(name) {
                    anyhow::bail!("peer {n}: name {name:?}: use letters, digits, '-', '_' and '.' (at most 32)");
                }
                if let Some(m) = peer_names[..i].iter().position(|o| o.as_ref() == Some(name)) {
                    anyhow::bail!("peer {n} has the same name as peer {}: {name}", m + 1);
                }
            }
            if let Some(m) = peers[..i].iter().position(|q| q.public == p.public) {
                anyhow::bail!("peer {n} has the same public key as peer {}", m + 1);
            }
            // The table the tunnel routes by refuses overlaps, not only repeats: a peer
            // holding a prefix around another's address could send as that peer (and be
            // isolated as it on Tor).
            if let Err(o) = table.insert(PeerId(i as u32), &p.allowed) {
                anyhow::bail!(
                    "peer {n}'s {} overlaps peer {}'s {}: peers' addresses must be apart",
                    o.new,
                    o.holder.0 + 1,
                    o.held
                );
            }
        }
        Ok(TunnelConfig {
            identity,
            listen_port,
            addresses,
            interface,
            mtu: mtu.unwrap_or(DEFAULT_MTU),
            peers,
            peer_names,
            rekey_after: None,
        })
    }
}

/// WireGuard's rule: 0 (or nothing) is off.
pub fn keepalive(secs: Option<u16>) -> Option<std::time::Duration> {
    secs.filter(|s| *s > 0).map(|s| std::time::Duration::from_secs(s.into()))
}

/// A peer's name: also a file name (its kept configuration), so nothing that walks paths.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// An interface name the kernel takes (at most 15 bytes, no '/' or whitespace).
fn valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A peer as `ttp tunnel peer add` writes it into a side's file.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub name: Option<String>,
    pub public_key: String,
    pub preshared_key: Option<String>,
    pub allowed_ips: Vec<IpNet>,
    pub endpoint: Option<SocketAddr>,
}

/// Appends `peer` to the file at `path`, keeping the rest of it (comments included) as it
/// is. The result is checked as a whole before it replaces the file, so a mistake never
/// leaves a file the gateway cannot start from.
pub fn add_peer_to_file(path: &Path, peer: &PeerEntry) -> Result<TunnelConfig> {
    edit_file(path, |doc| {
        let mut t = toml_edit::Table::new();
        if let Some(name) = &peer.name {
            t["name"] = toml_edit::value(name.as_str());
        }
        t["public-key"] = toml_edit::value(peer.public_key.as_str());
        if let Some(psk) = &peer.preshared_key {
            t["preshared-key"] = toml_edit::value(psk.as_str());
        }
        let mut ips = toml_edit::Array::new();
        for ip in &peer.allowed_ips {
            ips.push(ip.to_string());
        }
        t["allowed-ips"] = toml_edit::value(ips);
        if let Some(e) = peer.endpoint {
            t["endpoint"] = toml_edit::value(e.to_string());
        }
        match doc.entry("peer").or_insert(toml_edit::Item::ArrayOfTables(Default::default())) {
            toml_edit::Item::ArrayOfTables(a) => a.push(t),
            _ => anyhow::bail!("`peer` in the file is not a list of [[peer]] tables"),
        }
        Ok(())
    })
}

/// Removes the peer named `which` (its name, or its public key) from the file at `path`;
/// returns the file as it is now and the removed peer's public key.
pub fn remove_peer_from_file(path: &Path, which: &str) -> Result<(TunnelConfig, String)> {
    let by_key = keys::decode(which).ok();
    let mut removed = None;
    let cfg = edit_file(path, |doc| {
        let Some(toml_edit::Item::ArrayOfTables(peers)) = doc.get_mut("peer") else {
            anyhow::bail!("the file has no peers");
        };
        let hit = |t: &toml_edit::Table| {
            let key = t.get("public-key").and_then(|k| k.as_str());
            t.get("name").and_then(|n| n.as_str()) == Some(which)
                || (by_key.is_some() && key.and_then(|k| keys::decode(k).ok()) == by_key)
        };
        let Some(i) = peers.iter().position(hit) else {
            anyhow::bail!("no peer named {which} (or with that public key) in the file");
        };
        removed = peers.get(i).and_then(|t| t.get("public-key")).and_then(|k| k.as_str()).map(str::to_string);
        peers.remove(i);
        Ok(())
    })?;
    Ok((cfg, removed.context("the removed peer had no public key")?))
}

/// Reads, edits, checks, and replaces the file.
fn edit_file(path: &Path, edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<()>) -> Result<TunnelConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    edit(&mut doc)?;
    let new = doc.to_string();
    let cfg = TunnelConfig::parse(&new).with_context(|| format!("{} would not be valid", path.display()))?;
    replace_private(path, new.as_bytes()).with_context(|| format!("replacing {}", path.display()))?;
    Ok(cfg)
}

/// The directory a file named `path` is in (`.` for a bare name).
pub fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `contents`, which hold a private key, to `path` (replacing the file there, if
/// any), so that the key is never readable by others, not even for a moment, and a crash
/// leaves the old file or the new one, never a mix:
/// - the new file is created beside it under a random name, exclusively (never through a
///   name planted in advance) and with mode 0600 from the start (tempfile does both);
/// - it gets the old file's owner and group, and its mode without any bits for others
///   (a new file: ours, 0600);
/// - it reaches the disk before it replaces the old one by a rename, and the directory
///   after, so the rename itself is durable.
pub fn replace_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::{
        io::Write,
        os::unix::fs::{MetadataExt, PermissionsExt},
    };
    let old = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let dir = dir_of(path);
    let mut tmp = tempfile::Builder::new().prefix(".ttp-").suffix(".new").tempfile_in(dir)?;
    tmp.write_all(contents)?;
    let file = tmp.as_file();
    if let Some(old) = &old {
        std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()))?;
        file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o770))?;
    }
    file.sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
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

    #[test]
    fn peers_are_added_and_removed_in_the_file_keeping_the_rest() {
        let me = keys::encode(&Identity::generate().unwrap().private);
        let first = keys::encode(&Identity::generate().unwrap().public);
        let dir = std::env::temp_dir().join(format!("ttp-peerfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        let text = format!(
            "# the gateway\nprivate-key = \"{me}\"\naddress = [\"10.77.0.1/24\"]\n\n\
             [[peer]] # laptop\npublic-key = \"{first}\"\nallowed-ips = [\"10.77.0.2/32\"]\n"
        );
        std::fs::write(&path, &text).unwrap();
        let second = keys::encode(&Identity::generate().unwrap().public);
        let entry = |key: &str, ip: &str| PeerEntry {
            name: None,
            public_key: key.into(),
            preshared_key: None,
            allowed_ips: vec![ip.parse().unwrap()],
            endpoint: None,
        };
        let cfg = add_peer_to_file(&path, &entry(&second, "10.77.0.3/32")).unwrap();
        assert_eq!(cfg.peers.len(), 2);
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.starts_with("# the gateway\n") && now.contains("# laptop"), "{now}");
        // Mistakes change nothing: a key twice, an address another peer has, a bad key.
        let third = keys::encode(&Identity::generate().unwrap().public);
        for (bad, why) in [
            (entry(&second, "10.77.0.4/32"), "same public key"),
            (entry(&third, "10.77.0.2/32"), "peer 3's 10.77.0.2/32 overlaps peer 1's 10.77.0.2/32"),
            (entry(&third, "10.77.0.0/30"), "peer 3's 10.77.0.0/30 overlaps peer 1's 10.77.0.2/32"),
            (entry("not-a-key", "10.77.0.4/32"), "public-key"),
        ] {
            let e = format!("{:#}", add_peer_to_file(&path, &bad).unwrap_err());
            assert!(e.contains(why), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), now);
        }
        let (cfg, gone) = remove_peer_from_file(&path, &first).unwrap();
        assert_eq!((cfg.peers.len(), gone), (1, first.clone()));
        assert!(format!("{:#}", remove_peer_from_file(&path, &first).unwrap_err()).contains("no peer"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
