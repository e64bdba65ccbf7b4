//! What `ttp start` (and the daemon it runs) is told: every option of the command line.

use std::path::PathBuf;

use clap::Args;

use crate::datapath::Ipv6Policy;

/// Default ports: clear of a system tor and Tor Browser (9050, 9051, 9150, 9151).
pub const DEFAULT_TRANS_PORT: u16 = 9040;
pub const DEFAULT_DNS_PORT: u16 = 9053;
pub const DEFAULT_SOCKS_PORT: u16 = 9055;

#[derive(Args, Debug, Clone)]
pub struct StartOptions {
    /// Config file (TOML): every option here is a key; the command line overrides it
    /// (default: /etc/ttp/ttp.toml, if it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The cgroup2 directory to govern (default: the cgroup2 root, i.e. the whole host).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Interface for the TC kill-switch; repeatable (default: those carrying default routes).
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
    /// Arti's own TOML configuration, merged over ttp's defaults; repeatable.
    #[arg(long = "arti-config", value_name = "FILE")]
    pub arti_config: Vec<PathBuf>,
    /// Runtime files: control socket, session lock.
    #[arg(long, default_value = "/run/ttp", value_name = "DIR")]
    pub runtime_dir: PathBuf,
    /// Persistent Tor state and cache.
    #[arg(long, default_value = "/var/lib/ttp", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Per-instance directory in bpffs.
    #[arg(long, default_value = "/sys/fs/bpf/ttp", value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// The daemon's own cgroup (default: its systemd unit's when systemd runs it, else
    /// ttp.daemon under the cgroup2 root).
    #[arg(long, value_name = "PATH")]
    pub daemon_cgroup: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_TRANS_PORT)]
    pub trans_port: u16,
    #[arg(long, default_value_t = DEFAULT_DNS_PORT)]
    pub dns_port: u16,
    #[arg(long, default_value_t = DEFAULT_SOCKS_PORT)]
    pub socks_port: u16,
    /// Also serve SOCKS on this address (e.g. a LAN address); by default only loopback.
    /// Anyone who can reach it can use your Tor client.
    #[arg(long, value_name = "ADDR")]
    pub socks_listen: Vec<std::net::IpAddr>,
    /// Seconds to wait for Tor to bootstrap.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub bootstrap_timeout: u64,
    /// Let root go direct.
    #[arg(long)]
    pub allow_root: bool,
    /// Send LAN destinations through Tor (and refuse LAN UDP) instead of letting them go direct.
    #[arg(long)]
    pub no_lan_bypass: bool,
    /// With LAN bypass, refuse mDNS too (printer and cast discovery, which names this host
    /// to the LAN). LLMNR, NetBIOS, SSDP and other discovery are always refused.
    #[arg(long)]
    pub no_lan_discovery: bool,
    /// Write destinations and names into the log (for debugging). Off, they are scrubbed,
    /// in ttp's lines as in Arti's.
    #[arg(long)]
    pub log_sensitive: bool,
    /// Refuse all IPv6 instead of sending it through Tor.
    #[arg(long)]
    pub no_ipv6: bool,
    /// A user (name or uid) whose traffic goes direct; repeatable.
    #[arg(long = "bypass-uid", visible_alias = "bypass-user", value_name = "USER", value_parser = parse_uid)]
    pub bypass_uids: Vec<u32>,
    /// A group (name or gid) whose traffic goes direct; repeatable.
    #[arg(long = "bypass-gid", visible_alias = "bypass-group", value_name = "GROUP", value_parser = parse_gid)]
    pub bypass_gids: Vec<u32>,
    /// A cgroup (relative to the cgroup2 root, or absolute) whose traffic goes direct.
    #[arg(long = "bypass-cgroup", value_name = "PATH")]
    pub bypass_cgroups: Vec<PathBuf>,
    /// Most TransPort streams at once; more are refused at once.
    #[arg(long, default_value_t = 4096)]
    pub max_streams: usize,
    /// Check endpoint for verifying the exit through Tor (check-API JSON or a bare
    /// address); repeatable, tried in order (default: the Tor Project's check API, then
    /// api.ipify.org and icanhazip.com, which report the address only).
    #[arg(long = "check-url", value_name = "URL", value_parser = crate::check::check_url)]
    pub check_urls: Vec<String>,
    /// Connect to Tor through bridges (from --bridge and --bridges-file).
    #[arg(long)]
    pub use_bridges: bool,
    /// A bridge line (`obfs4 192.0.2.1:443 FINGERPRINT cert=... iat-mode=0`, or
    /// `192.0.2.1:443 FINGERPRINT`); repeatable.
    #[arg(long = "bridge", value_name = "LINE")]
    pub bridges: Vec<String>,
    /// A file of bridge lines, one per line (# comments allowed).
    #[arg(long, value_name = "FILE")]
    pub bridges_file: Option<PathBuf>,
    /// The obfs4 pluggable transport program (obfs4 and meek_lite bridges).
    #[arg(long, default_value = "/usr/bin/obfs4proxy", value_name = "PATH")]
    pub obfs4proxy: PathBuf,
    /// A transport's program (`snowflake=/usr/bin/snowflake-client`,
    /// `webtunnel=/opt/lyrebird`); repeatable.
    #[arg(long = "pt-path", value_name = "TRANSPORT=PATH", value_parser = pt_path)]
    pub pt_paths: Vec<(String, PathBuf)>,
    /// Also start the watchdog (`ttp watchdog run`) with the daemon.
    #[arg(long)]
    pub watchdog: bool,
    /// Write the log here, rotated at 1 MB (`ttp start`: <runtime-dir>/ttp.log; `ttp run`:
    /// standard error).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// The user the daemon runs as once set up: a name or a uid, optionally `:GROUP`
    /// (the default user is created as a system user if missing).
    #[arg(long, default_value = crate::user::DEFAULT, value_name = "USER")]
    pub user: String,
    /// Run a tunnel gateway: this side's tunnel configuration (TOML, see `ttp tunnel`).
    /// Everything its peers send goes through Tor: TCP to the TransPort, DNS to the
    /// DNSPort, the rest dropped.
    #[arg(long, value_name = "FILE")]
    pub tunnel: Option<PathBuf>,
    /// A LAN interface whose machines get the same treatment as tunnel peers: their TCP
    /// and DNS through Tor, nothing forwarded; repeatable. It may not exist yet (a
    /// container engine's bridge): ttp takes it over when it appears. A prefix and `*`
    /// (`br-*`, Docker's user networks) names every interface whose name starts with it.
    #[arg(long = "gateway", value_name = "IFACE")]
    pub gateways: Vec<String>,
    /// The DNSPort's virtual range for .onion names.
    #[arg(long, default_value = "10.192.0.0/10")]
    pub virtual_net: ipnet::Ipv4Net,
}

/// The options `ttp reload` applies to a running session (by their clap ids): the
/// datapath's policy, written into the pinned maps. Every other option is read once at
/// start.
pub const LIVE_OPTIONS: &[&str] =
    &["allow_root", "no_lan_bypass", "no_lan_discovery", "no_ipv6", "bypass_uids", "bypass_gids", "bypass_cgroups"];

/// `TRANSPORT=PATH` of `--pt-path`.
fn pt_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((t, p)) if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !p.is_empty() => {
            Ok((t.to_string(), PathBuf::from(p)))
        }
        _ => Err(format!("{s:?} is not TRANSPORT=PATH (for example snowflake=/usr/bin/snowflake-client)")),
    }
}

impl StartOptions {
    /// The bridges to use, if `--use-bridges` (or bridge lines) say so.
    pub fn bridges(&self) -> anyhow::Result<Option<crate::tor::Bridges>> {
        use anyhow::Context;
        let mut lines = self.bridges.clone();
        if let Some(f) = &self.bridges_file {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading the bridges file {}", f.display()))?;
            lines.extend(
                t.lines()
                    .map(|l| l.trim().trim_start_matches("Bridge ").trim())
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if !self.use_bridges && lines.is_empty() {
            return Ok(None);
        }
        if !self.use_bridges {
            anyhow::bail!("bridge lines are given but bridges are off: add --use-bridges");
        }
        Ok(Some(crate::tor::Bridges {
            lines,
            obfs4proxy: self.obfs4proxy.clone(),
            pt_paths: self.pt_paths.iter().cloned().collect(),
        }))
    }

    /// The datapath's policy these options ask for. `exec_direct` is the cgroup of
    /// `ttp exec --direct`, which always goes direct.
    pub fn policy(&self, exec_direct: PathBuf) -> crate::datapath::Policy {
        let mut bypass_cgroups = self.bypass_cgroups.clone();
        bypass_cgroups.push(exec_direct);
        crate::datapath::Policy {
            lan_bypass: !self.no_lan_bypass,
            lan_discovery: !self.no_lan_discovery,
            allow_root: self.allow_root,
            ipv6: self.ipv6(),
            bypass_uids: self.bypass_uids.clone(),
            bypass_gids: self.bypass_gids.clone(),
            bypass_cgroups,
            ..crate::datapath::Policy::default()
        }
    }

    pub fn ipv6(&self) -> Ipv6Policy {
        if self.no_ipv6 {
            Ipv6Policy::Drop
        } else {
            Ipv6Policy::Tor
        }
    }
}

/// A uid, or a user name looked up in the system's user database.
fn parse_uid(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!("no user named {s:?} (give a name from /etc/passwd or a number)")),
    }
}

/// A gid, or a group name looked up in the system's group database.
fn parse_gid(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("no group named {s:?} (give a name from /etc/group or a number)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_by_name_or_number() {
        assert_eq!(parse_uid("root"), Ok(0));
        assert_eq!(parse_uid("1000"), Ok(1000));
        assert!(parse_uid("no-such-user-here").unwrap_err().contains("no user named"));
        assert_eq!(parse_gid("root"), Ok(0));
        assert!(parse_gid("no-such-group-here").is_err());
    }
}
