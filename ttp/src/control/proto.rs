//! The control socket's wire types: what the daemon, the CLI, `ttp top` and other tools
//! say to each other, one JSON object per line (docs/API.md has the protocol).
//!
//! A leaf: it uses nothing else of ttp, so every part can speak the protocol without
//! depending on the daemon's internals, and the daemon's modules (streams, the tunnel,
//! Tor, load) report in these types rather than the other way round. Fields added later
//! carry `#[serde(default)]`, so a newer CLI still reads an older daemon.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// The socket's file name in the runtime directory.
pub const SOCKET: &str = "control.sock";

/// A request, e.g. `{"cmd":"streams","recent":true}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Streams {
        #[serde(default)]
        recent: bool,
    },
    /// New identity: new streams use new circuits.
    Refresh,
    /// Through Tor, ask check endpoints (in order; the daemon's own list if empty).
    Check {
        #[serde(default)]
        urls: Vec<String>,
    },
    Stop,
    /// Opens a Tor stream to HOST:PORT (on a fresh circuit isolation) and reports how it
    /// went, without sending anything on it.
    TestConnect {
        host: String,
        port: u16,
    },
    /// Adds or removes a peer of the running tunnel gateway (root only).
    TunnelPeer(PeerChange),
    /// Uses these bridges (or, with none, the network directly) from the next circuits on
    /// (root only: `ttp reload`).
    Bridges {
        bridges: Option<Bridges>,
    },
}

/// A change to the tunnel gateway's peers; keys in base64, as in the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerChange {
    Add {
        public_key: String,
        #[serde(default)]
        preshared_key: Option<String>,
        allowed_ips: Vec<ipnet::IpNet>,
        #[serde(default)]
        endpoint: Option<std::net::SocketAddr>,
    },
    Remove {
        public_key: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ports {
    pub trans: u16,
    pub dns: u16,
    pub socks: u16,
}

/// [`Status::state`] of a daemon whose Tor is bootstrapping (the host closed meanwhile).
pub const STATE_STARTING: &str = "starting";
/// [`Status::state`] of a daemon that serves.
pub const STATE_RUNNING: &str = "running";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// [`STATE_STARTING`] or [`STATE_RUNNING`] from the daemon; `ttp status` without one
    /// says `lockdown`, `daemon-dead` or `stopped`.
    pub state: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub started_unix: u64,
    pub ports: Ports,
    pub bootstrap: String,
    /// What Tor is waiting for, with what to do, when Arti believes it is blocked
    /// (offline, filtered, a wrong clock).
    #[serde(default)]
    pub waiting: Option<String>,
    /// Arti has what it needs to carry traffic.
    #[serde(default)]
    pub tor_ready: bool,
    pub streams_open: usize,
    pub streams_refused: u64,
    /// Bytes through every stream since start (up: to Tor, down: to applications).
    #[serde(default)]
    pub bytes_up: u64,
    #[serde(default)]
    pub bytes_down: u64,
    pub exit_address: Option<String>,
    /// The check endpoints the daemon asks, in order (absent from older daemons).
    #[serde(default)]
    pub check_urls: Vec<String>,
    /// When the exit was last verified (Unix seconds).
    #[serde(default)]
    pub exit_checked_unix: Option<u64>,
    pub counters: BTreeMap<String, u64>,
    /// The tunnel gateway's peers, if it runs one.
    #[serde(default)]
    pub tunnel_peers: Vec<PeerStatus>,
    /// Limits and what load did (absent from older daemons).
    #[serde(default)]
    pub load: Option<LoadStatus>,
    /// The daemon's own memory (its root monitor's is not its to read: `ttp status` as
    /// root adds it). Absent from older daemons.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// The bridges in use, if any: how many and their transports, never their lines.
    #[serde(default)]
    pub bridges: Option<BridgeSummary>,
    /// What the kill-switch refused, by whom, the most frequent first (at most 32; absent
    /// from older daemons).
    #[serde(default)]
    pub refusals: Vec<Refusal>,
    /// The DNSPort's figures (absent from older daemons).
    #[serde(default)]
    pub dns: Option<DnsStatus>,
    /// The LAN interfaces (and the tunnel's) whose machines go through Tor here.
    #[serde(default)]
    pub gateway_interfaces: Vec<String>,
    /// The interfaces those name that exist now, in the daemon's network namespace
    /// (absent from older daemons).
    #[serde(default)]
    pub gateway_present: Vec<String>,
}

/// Something the kill-switch stopped, and who tried it: `count` times since start, by
/// `uid`, from the cgroup whose id is `cgroup` (for a dropped packet: its socket's owner
/// and cgroup). Counted in the kernel with a plain add, so near-simultaneous refusals on
/// two CPUs may count once; `counters` are exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The counter's name, as in `counters`.
    pub counter: String,
    pub uid: u32,
    pub cgroup: u64,
    pub count: u64,
}

/// The DNSPort's figures since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// Queries answered (or refused), from every asker.
    pub queries: u64,
    /// Of those, answered from the asker's cache.
    pub cache_hits: u64,
    /// Lookups sent through Tor, and those still waiting for their answer now.
    pub tor_lookups: u64,
    pub tor_in_flight: usize,
    /// Lookups through Tor refused: the asker held its share, or every slot was taken.
    pub refused: u64,
    /// Lookups through Tor that failed (answered SERVFAIL).
    pub failed: u64,
    /// `.onion` names with a virtual address now.
    pub automap_entries: usize,
}

/// The daemon's limits and what load did to it, since start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadStatus {
    pub budget: Budget,
    pub descriptors_open: u64,
    /// Transient accept errors (out of descriptors, memory...), waited out.
    pub accept_errors: u64,
    /// Streams, SOCKS handshakes, DNS-over-TCP connections and DNS lookups through Tor
    /// refused because their client held its whole share of the slots.
    pub refused_share: u64,
    pub refused_dns_tcp: u64,
    pub refused_control: u64,
    /// Connections closed for sending nothing in time.
    pub idle_closed: u64,
}

/// The outcome of a `test-connect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestConnect {
    pub host: String,
    pub port: u16,
    pub latency_ms: u64,
    /// The circuit's relays, entry first (as Arti names them).
    pub circuit: String,
}

/// A reply: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Reply {
    Status { ok: bool, status: Box<Status> },
    Streams { ok: bool, streams: Vec<StreamSnapshot> },
    Refreshed { ok: bool, isolation_keys_reset: usize },
    Checked { ok: bool, check: CheckResult },
    Connected { ok: bool, connected: TestConnect },
    // Before `Done`: untagged variants are tried in order, and `Done` matches any `ok`.
    Error { ok: bool, error: String },
    Done { ok: bool },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamSnapshot {
    pub id: u64,
    pub destination: String,
    pub isolation: String,
    pub circuit: String,
    /// The circuit's relays, entry first: the first 8 hex digits of each fingerprint
    /// (absent from older daemons).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Still open?
    pub open: bool,
    pub age_secs: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What `ttp status` shows of each peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the current session's handshake (none yet: `None`).
    pub last_handshake_secs: Option<u64>,
    /// Inner bytes received from the peer and sent to it.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub drops: DropCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub replay: u64,
    pub decrypt: u64,
    pub source: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub anon_bytes: u64,
}

/// Bridges to use instead of connecting to the network directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridges {
    /// Bridge lines, as Tor Browser and torrc write them (without `Bridge`).
    pub lines: Vec<String>,
    /// The obfs4 pluggable transport, for `obfs4` and `meek_lite` lines.
    pub obfs4proxy: PathBuf,
    /// Programs given per transport (`--pt-path snowflake=/usr/bin/snowflake-client`),
    /// over the defaults of [`Transport`].
    #[serde(default)]
    pub pt_paths: BTreeMap<String, PathBuf>,
}

/// What `ttp status` says of the bridges: how many, through which transports. Never the
/// lines: a bridge's address is what a censor wants, and the `ttp` group reads status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSummary {
    pub count: usize,
    /// Transport names, `plain` for bridges without one; sorted, each once.
    pub transports: Vec<String>,
    /// The bridges this host holds a connection with now, by their place in the list
    /// (from 1): the ones that carry its Tor traffic. Only bridges whose transport dials
    /// the bridge's own address (plain, obfs4) can be told; absent from older daemons.
    #[serde(default)]
    pub connected: Vec<usize>,
}

/// How many of each kind of connection the daemon takes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The descriptor limit these are sized against.
    pub nofile: u64,
    /// TransPort and SOCKS streams (and SOCKS handshakes), together.
    pub streams: usize,
    /// Of those, what one key may hold.
    pub per_key: usize,
    /// SOCKS clients still in their handshake (they take a stream slot once it is done).
    pub handshakes: usize,
    /// DNS-over-TCP connections.
    pub dns_tcp: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    pub url: String,
    /// The endpoint's verdict; `None` when it only reports an address.
    pub is_tor: Option<bool>,
    pub exit_address: IpAddr,
    pub latency_ms: u64,
    /// When the answer came (Unix seconds; 0 from older daemons).
    #[serde(default)]
    pub checked_unix: u64,
}
