//! The embedded Tor client (Arti): configuration, bootstrap, stream isolation.
//!
//! Configuration is Arti's own: ttp writes its defaults (storage under the state dir) as
//! the first source and layers every `--arti-config` file over it, exactly as the `arti`
//! program reads its files. A private Tor network is therefore a file, not code.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
pub use arti_client::config::TorClientConfig;
use arti_client::{IsolationToken, TorClient};
use futures::StreamExt;
use tor_config::{
    load::{resolve_return_results, ConfigResolveOptions},
    sources::{ConfigurationSource, ConfigurationSources, MustRead},
};

pub use arti_client::TorClient as Client;
pub type Runtime = tor_rtcompat::PreferredRuntime;
pub type Tor = Arc<TorClient<Runtime>>;

/// Sections of the `arti` program's configuration that are not the client's: accepted in
/// `--arti-config` files without a warning, and ignored.
const ARTI_PROGRAM_SECTIONS: &[&str] =
    &["application", "proxy", "logging", "metrics", "rpc", "onion_services", "system"];

pub use crate::control::proto::Bridges;

/// The transports ttp knows, and where their programs come from by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// obfs4 and meek_lite: obfs4proxy (Debian's `obfs4proxy`) does both.
    Obfs4proxy,
    /// snowflake: snowflake-client (Debian's `snowflake-client`); the broker URL, fronts
    /// and ICE servers ride in the bridge line, as Tor Browser writes it.
    Snowflake,
    /// webtunnel: lyrebird, Tor Browser's transport program (no distribution packages
    /// it yet): on the PATH, or given with --pt-path.
    Lyrebird,
}

impl Transport {
    fn of(name: &str) -> Option<Transport> {
        match name {
            "obfs4" | "meek_lite" => Some(Transport::Obfs4proxy),
            "snowflake" => Some(Transport::Snowflake),
            "webtunnel" => Some(Transport::Lyrebird),
            _ => None,
        }
    }

    /// Its program when none is given for it.
    fn default_program(self, obfs4proxy: &Path) -> PathBuf {
        match self {
            Transport::Obfs4proxy => obfs4proxy.to_path_buf(),
            Transport::Snowflake => PathBuf::from("/usr/bin/snowflake-client"),
            Transport::Lyrebird => on_path("lyrebird").unwrap_or_else(|| PathBuf::from("/usr/bin/lyrebird")),
        }
    }

    /// How to get its program, for the error that says it is missing.
    fn how_to_install(self, name: &str) -> String {
        let apt = Path::new("/usr/bin/apt-get").exists();
        match self {
            Transport::Obfs4proxy if apt => "apt install obfs4proxy".into(),
            Transport::Snowflake if apt => "apt install snowflake-client".into(),
            Transport::Obfs4proxy => "install obfs4proxy (or lyrebird) with the system's package manager".into(),
            Transport::Snowflake => "install snowflake-client with the system's package manager".into(),
            Transport::Lyrebird => format!(
                "lyrebird is not packaged by the distributions yet: take it from Tor Browser \
                 (Browser/TorBrowser/Tor/PluggableTransports/lyrebird) or build it, then --pt-path {name}=PATH"
            ),
        }
    }
}

/// A bridge line's transport: its first word, unless that is the address of a plain
/// bridge.
fn transport_of(line: &str) -> Option<&str> {
    line.split_whitespace().next().filter(|first| first.parse::<std::net::SocketAddr>().is_err())
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

pub use crate::control::proto::BridgeSummary;

/// One bridge as a stalled bootstrap's error names it: its place in the list and its
/// transport, and the address its transport dials, where that is the bridge's own (obfs4
/// and plain bridges; snowflake, meek and webtunnel lines carry a placeholder, their
/// transport dials its own servers). The address stays in memory and is never printed:
/// bridge addresses are the users' secret, as Arti's logs treat them.
#[derive(Clone, Debug)]
pub struct BridgeProbe {
    pub index: usize,
    pub transport: String,
    pub addr: Option<std::net::SocketAddr>,
}

/// How long a stalled bootstrap's check of one bridge waits for its TCP answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// After a stall: which bridges answer a TCP connection at all. The transport made the
/// same connections while bootstrapping, so a censor sees nothing new. One line each,
/// without the address ("bridge 2 (obfs4): no answer within 5 s ...").
pub async fn probe_bridges(probes: &[BridgeProbe]) -> Vec<String> {
    futures::future::join_all(probes.iter().map(probe_bridge)).await
}

/// One bridge's line for [`probe_bridges`].
async fn probe_bridge(p: &BridgeProbe) -> String {
    let what = format!("bridge {} ({})", p.index, p.transport);
    let Some(addr) = p.addr else {
        return format!("{what}: its transport dials its own servers (not checked here)");
    };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => format!(
            "{what}: answers, but the transport's handshake or the bridge failed after that (a stale line, a \
             wrong cert=): get a fresh line"
        ),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("{what}: refused, nothing listens there now: get a fresh line")
        }
        Ok(Err(e)) => format!("{what}: unreachable ({e}): blocked, or gone"),
        Err(_) => format!("{what}: no answer within {} s: blocked, or gone", PROBE_TIMEOUT.as_secs()),
    }
}

impl std::fmt::Display for BridgeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.count, self.transports.join(", "))?;
        match self.connected.as_slice() {
            [] => Ok(()),
            [one] => write!(f, "; connected to bridge {one}"),
            many => {
                let n: Vec<String> = many.iter().map(ToString::to_string).collect();
                write!(f, "; connected to bridges {}", n.join(", "))
            }
        }
    }
}

/// The bridges a session uses, as status and a stalled bootstrap speak of them: by place
/// and transport, never by line. The addresses stay in memory, for the checks.
#[derive(Debug, Clone)]
pub struct InUse {
    summary: BridgeSummary,
    probes: Vec<BridgeProbe>,
    /// The last [`connected`] and when: it reads a table of every TCP socket of the
    /// namespace (about 40 ms of the kernel's time with 10,000 connections open), and the
    /// `ttp` group may ask for status as often as it likes.
    connected: Option<(Instant, Vec<usize>)>,
}

/// How long an answer of [`connected`] is shown again: the bridge that carries the
/// traffic changes seldom.
const CONNECTED_FOR: Duration = Duration::from_secs(5);

impl InUse {
    /// What `ttp status` shows: how many, which transports, and which bridges carry the
    /// traffic now ([`connected`], at most [`CONNECTED_FOR`] old).
    pub fn status(&mut self) -> BridgeSummary {
        let fresh = self.connected.as_ref().filter(|(at, _)| at.elapsed() < CONNECTED_FOR);
        let connected = match fresh {
            Some((_, c)) => c.clone(),
            None => {
                let c = connected(&self.probes);
                self.connected = Some((Instant::now(), c.clone()));
                c
            }
        };
        BridgeSummary { connected, ..self.summary.clone() }
    }
}

/// The bridges (by place in the list) with which this daemon or its transports hold an
/// established TCP connection now: the kernel's socket tables of the daemon's network
/// namespace, sockets of the daemon's own uid only (its transports run as that user; a
/// governed program's connection to the same address was redirected to the TransPort,
/// so its socket names ours). A table that cannot be read tells nothing: status is a
/// view, and must not fail on it.
fn connected(probes: &[BridgeProbe]) -> Vec<usize> {
    use procfs::net::TcpState;
    let uid = nix::unistd::geteuid().as_raw();
    let canonical = |a: std::net::SocketAddr| std::net::SocketAddr::new(a.ip().to_canonical(), a.port());
    // Each socket is matched as the table is read: with thousands of streams open, only
    // the few to a bridge are kept.
    let mut found: Vec<usize> = [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flat_map(|table| table.unwrap_or_default())
        .filter(|e| e.state == TcpState::Established && e.uid == uid)
        .filter_map(|e| {
            let peer = canonical(e.remote_address);
            probes.iter().find(|p| p.addr.is_some_and(|a| canonical(a) == peer)).map(|p| p.index)
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

impl Bridges {
    /// What a stalled bootstrap checks, one per line (see [`BridgeProbe`]).
    pub fn probes(&self) -> Vec<BridgeProbe> {
        self.lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut words = l.split_whitespace();
                // A transport's name comes first, then the address; a plain bridge's address.
                let transport = match transport_of(l) {
                    Some(t) => {
                        words.next();
                        t
                    }
                    None => "plain",
                };
                // meek_lite, snowflake and webtunnel lines carry a placeholder address.
                let dials_bridge = matches!(transport, "plain" | "obfs4");
                let addr = words.next().and_then(|w| w.parse().ok()).filter(|_| dials_bridge);
                BridgeProbe { index: i + 1, transport: transport.to_string(), addr }
            })
            .collect()
    }

    pub fn summary(&self) -> BridgeSummary {
        let transports: std::collections::BTreeSet<String> =
            self.lines.iter().map(|l| transport_of(l).unwrap_or("plain").to_string()).collect();
        BridgeSummary { count: self.lines.len(), transports: transports.into_iter().collect(), connected: Vec::new() }
    }

    /// What the session keeps of these bridges once the lines are gone: see [`InUse`].
    pub fn in_use(&self) -> InUse {
        InUse { summary: self.summary(), probes: self.probes(), connected: None }
    }

    /// Arti's configuration for these bridges; each line is checked first, so a typo is
    /// an error that names the line, and a missing transport program an error that says
    /// how to get it, not a bootstrap that never ends.
    fn to_toml(&self) -> Result<String> {
        if self.lines.is_empty() {
            bail!("bridges are on but no bridge is given: add --bridge LINE or --bridges-file FILE");
        }
        let mut transports = std::collections::BTreeSet::new();
        // Each bridge's fingerprint, and the first line that gave it.
        let mut seen = HashMap::new();
        for (i, l) in self.lines.iter().enumerate() {
            let b: arti_client::config::BridgeConfigBuilder =
                l.parse().with_context(|| format!("bridge {} does not parse: {l:?}", i + 1))?;
            let built = b.build().with_context(|| format!("bridge {} is not usable: {l:?}", i + 1))?;
            // Arti takes lines with one fingerprint for one bridge and dials one of their
            // addresses only (seen: a list whose first such line was gone never
            // bootstrapped through the second), and a stalled bootstrap would then blame
            // a line that was never tried.
            if let Some(id) = tor_linkspec::HasRelayIds::rsa_identity(&built) {
                if let Some(first) = seen.insert(*id, i + 1) {
                    bail!(
                        "bridges {first} and {} have the same fingerprint: Tor takes them for one bridge and uses only \
                         one of the two lines; keep the one that works (a bridge that moved: its new line)",
                        i + 1
                    );
                }
            }
            if let Some(t) = transport_of(l) {
                transports.insert(t.to_string());
            }
        }
        // One managed transport per program, with every protocol it serves here.
        let mut programs: std::collections::BTreeMap<PathBuf, Vec<String>> = Default::default();
        for t in transports {
            let program = match (self.pt_paths.get(&t), Transport::of(&t)) {
                (Some(p), kind) => {
                    if !p.is_file() {
                        let hint = kind.map(|k| format!(" ({})", k.how_to_install(&t))).unwrap_or_default();
                        bail!("--pt-path {t}={}: no such program{hint}", p.display());
                    }
                    p.clone()
                }
                (None, Some(kind)) => {
                    let p = kind.default_program(&self.obfs4proxy);
                    if !p.is_file() {
                        bail!(
                            "{t} bridges need their transport program, which is not at {}: {}, or --pt-path {t}=PATH",
                            p.display(),
                            kind.how_to_install(&t)
                        );
                    }
                    p
                }
                (None, None) => bail!(
                    "bridges of transport `{t}` are not known to ttp (it knows obfs4, meek_lite, snowflake and \
                     webtunnel): give its program with --pt-path {t}=PATH"
                ),
            };
            programs.entry(program).or_default().push(t);
        }
        let mut bridges = toml::Table::new();
        bridges.insert("enabled".into(), true.into());
        bridges.insert("bridges".into(), self.lines.clone().into());
        let pts: Vec<toml::Value> = programs
            .into_iter()
            .map(|(path, protocols)| {
                toml::Value::Table(toml::toml! {
                    protocols = (protocols)
                    path = (path.display().to_string())
                })
            })
            .collect();
        bridges.insert("transports".into(), pts.into());
        let mut root = toml::Table::new();
        root.insert("bridges".into(), bridges.into());
        Ok(root.to_string())
    }
}

/// Builds Arti's configuration: ttp's defaults, then each file in order, then the bridges
/// of the command line. `owner`: the uid that will own the state directory (the daemon
/// builds this as root, before it becomes that user; Arti trusts root and that uid).
pub fn load_config(
    state_dir: &Path,
    files: &[PathBuf],
    bridges: Option<&Bridges>,
    owner: Option<u32>,
) -> Result<TorClientConfig> {
    config_from(state_dir, &ArtiFiles::read(files)?, bridges, owner)
}

/// `--arti-config` files as read at start: a reload that changes the bridges builds the
/// configuration again from these texts (the daemon, no longer root, may not be able to
/// read the files, and a file changed since start is not what the session runs with).
#[derive(Debug, Clone, Default)]
pub struct ArtiFiles(Vec<String>);

impl ArtiFiles {
    pub fn read(files: &[PathBuf]) -> Result<ArtiFiles> {
        files
            .iter()
            .map(|f| {
                if !f.exists() {
                    bail!("Arti configuration file {} does not exist", f.display());
                }
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the Arti configuration file {}", f.display()))
            })
            .collect::<Result<_>>()
            .map(ArtiFiles)
    }
}

/// What the daemon needs to build Tor's configuration again with other bridges (`ttp
/// reload`): the state directory, the Arti files as read at start, the service user.
#[derive(Debug, Clone)]
pub struct ConfigBase {
    pub state_dir: PathBuf,
    pub files: ArtiFiles,
    pub owner: u32,
}

impl ConfigBase {
    pub fn with_bridges(&self, bridges: Option<&Bridges>) -> Result<TorClientConfig> {
        config_from(&self.state_dir, &self.files, bridges, Some(self.owner))
    }
}

/// [`load_config`] from files already read.
pub fn config_from(
    state_dir: &Path,
    files: &ArtiFiles,
    bridges: Option<&Bridges>,
    owner: Option<u32>,
) -> Result<TorClientConfig> {
    let mut sources = ConfigurationSources::new_empty();
    let mut storage = toml::toml! {
        [storage]
        state_dir = (state_dir.join("arti/state").display().to_string())
        cache_dir = (state_dir.join("arti/cache").display().to_string())
    };
    if let (Some(uid), Some(toml::Value::Table(t))) = (owner, storage.get_mut("storage")) {
        t.insert("permissions".into(), toml::toml! { trust_user = (i64::from(uid)) }.into());
    }
    for text in &files.0 {
        sources.push_source(ConfigurationSource::from_verbatim(text.clone()), MustRead::MustRead);
    }
    // ttp owns Arti's storage: the daemon runs as the service user, which can write only
    // under --state-dir (a `[storage]` of the file's would fail later, as a permission
    // error in the middle of a bootstrap). Pushed after the files, so it wins.
    if files.0.iter().any(|t| t.parse::<toml::Table>().is_ok_and(|t| t.contains_key("storage"))) {
        tracing::warn!(
            "the [storage] section of --arti-config is ignored: Arti's state and cache are under --state-dir {} \
             (the service user's); move them with --state-dir",
            state_dir.display()
        );
    }
    sources.push_source(ConfigurationSource::from_verbatim(storage.to_string()), MustRead::MustRead);
    if let Some(b) = bridges {
        sources.push_source(ConfigurationSource::from_verbatim(b.to_toml()?), MustRead::MustRead);
    }
    let tree = sources.load().context("reading the Arti configuration")?;
    let opts = ConfigResolveOptions::default(); // reports unrecognized and deprecated keys
    let res = resolve_return_results::<TorClientConfig>(&tree, &opts).context("invalid Arti configuration")?;
    for key in res.unrecognized {
        let k = key.to_string();
        if !ARTI_PROGRAM_SECTIONS.iter().any(|s| k == *s || k.starts_with(&format!("{s}."))) {
            tracing::warn!("unrecognized Arti configuration key: {k}");
        }
    }
    for key in res.deprecated {
        tracing::warn!("deprecated Arti configuration key: {key}");
    }
    Ok(res.value)
}

/// One step of bootstrap progress, for the CLI's progress bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// 0.0 ..= 1.0
    pub fraction: f32,
    /// What Arti is doing (and what blocks it, if anything).
    pub status: String,
}

/// Creates the client and bootstraps it, reporting progress, within `timeout`. On a stall
/// the error says what Arti reported as the blockage.
pub async fn bootstrap(
    config: TorClientConfig,
    timeout: Duration,
    bridges: Option<&InUse>,
    mut progress: impl FnMut(Progress),
) -> Result<Tor> {
    let client = TorClient::builder()
        .config(config)
        .create_unbootstrapped()
        .context("creating the Tor client (is the state directory usable?)")?;
    let mut events = client.bootstrap_events();
    let watcher = async {
        while let Some(s) = events.next().await {
            progress(Progress { fraction: s.as_frac(), status: s.to_string() });
            if s.ready_for_traffic() {
                break;
            }
        }
    };
    let boot = client.bootstrap();
    let result = tokio::time::timeout(timeout, async {
        let (r, ()) = tokio::join!(boot, watcher);
        r
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(client),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("Tor bootstrap failed")),
        Err(_) => {
            let s = client.bootstrap_status();
            let what_to_do = match (waiting_for(&s), bridges) {
                (Some(w), Some(b)) => format!("{w}; the bridges: {}", probe_bridges(&b.probes).await.join("; ")),
                (Some(w), None) => w,
                (None, Some(b)) => format!(
                    "the {} bridges did not get Tor going ({}): try other bridge lines, or another transport \
                     (obfs4, snowflake, webtunnel: README, In a censored network), or raise --bootstrap-timeout",
                    b.summary,
                    probe_bridges(&b.probes).await.join("; ")
                ),
                (None, None) => "check the network or the bridges, or raise --bootstrap-timeout".into(),
            };
            bail!(
                "Tor bootstrap stalled at {:.0}% after {}s ({s}): {what_to_do}",
                s.as_frac() * 100.0,
                timeout.as_secs()
            )
        }
    }
}

/// What Tor is waiting for, in plain words with what to do, when Arti believes it is
/// blocked (offline, filtered, a wrong clock...); `None` when it is not.
pub fn waiting_for(status: &arti_client::status::BootstrapStatus) -> Option<String> {
    use arti_client::status::BlockageKind;
    let b = status.blocked()?;
    let said = b.message().to_string();
    Some(match b.kind() {
        BlockageKind::Offline => format!(
            "no connection to the Tor network ({said}): waiting for the network; check the uplink (link, address, default route)"
        ),
        BlockageKind::Filtering => format!(
            "connections to Tor relays are cut ({said}): this network may block Tor; try bridges (--use-bridges --bridge LINE)"
        ),
        BlockageKind::ClockSkewed => format!(
            "the system clock is wrong ({said}): Tor refuses relays and directories that are not valid at this time; \
             set the clock (timedatectl set-ntp true, or date -s) and Tor carries on by itself"
        ),
        BlockageKind::CantBootstrap => format!(
            "no usable Tor directory yet ({said}): if the clock is wrong, set it; otherwise check the network or the bridges"
        ),
        _ => format!("{b}: check the network, the clock and the bridges"),
    })
}

/// What a running Tor (one that was ready) waits for: [`waiting_for`], and a directory
/// that the clock has left behind. Arti does not call that a blockage: it only stops
/// being ready and goes on looking for a directory valid at this time, which it cannot
/// find while the clock is wrong (a jump after a suspend, an NTP step, a clock set by
/// hand). (No figures in the message: it is logged each time it changes.)
pub fn waiting_while_running(status: &arti_client::status::BootstrapStatus) -> Option<String> {
    waiting_for(status).or_else(|| {
        (!status.ready_for_traffic()).then(|| {
            "Tor has no directory valid at this time and is fetching one: if the system clock jumped or is wrong, \
             set it (timedatectl set-ntp true, or date -s) and Tor carries on by itself"
                .to_string()
        })
    })
}

/// Logs each change of what Tor waits for, for as long as the client lives: a network
/// that goes away, or a clock that jumps, is named in the log when Arti notices it, and
/// its end too.
pub async fn log_blockages(client: Tor) {
    let mut events = client.bootstrap_events();
    let mut last: Option<String> = None;
    while let Some(s) = events.next().await {
        let now = waiting_while_running(&s);
        if now != last {
            match &now {
                Some(w) => tracing::warn!("Tor is waiting: {w}"),
                None => tracing::info!("Tor is no longer blocked ({s})"),
            }
            last = now;
        }
    }
}

pub use crate::principal::IsolationKey;

/// Maps isolation keys to Arti isolation tokens. A new identity drops them all, so every
/// later stream gets a fresh token and thus fresh circuits.
///
/// Bounded: SOCKS clients choose their keys (any username and password), so the table
/// holds at most [`Isolation::MAX_KEYS`]; past that the least recently used key is
/// forgotten. A forgotten key's next stream gets a new token, hence a new circuit: the
/// isolation between keys holds all the same.
#[derive(Default)]
pub struct Isolation {
    tokens: Mutex<HashMap<IsolationKey, (IsolationToken, u64)>>,
    /// A use counter: the last use of each key, without reading the clock.
    uses: std::sync::atomic::AtomicU64,
}

impl Isolation {
    pub const MAX_KEYS: usize = 4096;

    pub fn token(&self, key: IsolationKey) -> IsolationToken {
        let now = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut t = self.tokens.lock().expect("isolation lock");
        if let Some(e) = t.get_mut(&key) {
            e.1 = now;
            return e.0;
        }
        if t.len() >= Self::MAX_KEYS {
            // Forget the least recently used eighth at once, so that a flood of new keys
            // costs one scan per MAX_KEYS / 8 insertions, not one per insertion.
            let mut ages: Vec<u64> = t.values().map(|(_, used)| *used).collect();
            let cut = ages.len() / 8;
            let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            t.retain(|_, (_, used)| *used >= oldest_kept);
        }
        let token = IsolationToken::new();
        t.insert(key, (token, now));
        token
    }

    /// Keys with a token now.
    pub fn len(&self) -> usize {
        self.tokens.lock().expect("isolation lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New identity: new streams use new circuits. Returns how many keys were reset.
    pub fn new_identity(&self) -> usize {
        let mut t = self.tokens.lock().expect("isolation lock");
        let n = t.len();
        t.clear();
        n
    }
}

/// DNS resolution through Tor, for the DNSPort: each lookup on circuits of its asker's
/// isolation key (the same tokens as that key's streams, so `refresh` renews both).
pub struct TorResolver {
    pub tor: Tor,
    pub isolation: Arc<Isolation>,
}

impl TorResolver {
    fn prefs(&self, key: IsolationKey) -> arti_client::StreamPrefs {
        let mut prefs = arti_client::StreamPrefs::new();
        prefs.set_isolation(self.isolation.token(key));
        prefs
    }
}

impl crate::dns::Resolver for TorResolver {
    fn lookup(
        &self,
        name: String,
        key: IsolationKey,
    ) -> futures::future::BoxFuture<'static, Result<Vec<std::net::IpAddr>, crate::dns::LookupError>> {
        let (tor, prefs) = (self.tor.clone(), self.prefs(key));
        Box::pin(async move { tor.resolve_with_prefs(&name, &prefs).await.map_err(lookup_error) })
    }

    fn lookup_ptr(
        &self,
        ip: std::net::IpAddr,
        key: IsolationKey,
    ) -> futures::future::BoxFuture<'static, Result<Vec<String>, crate::dns::LookupError>> {
        let (tor, prefs) = (self.tor.clone(), self.prefs(key));
        Box::pin(async move { tor.resolve_ptr_with_prefs(ip, &prefs).await.map_err(lookup_error) })
    }
}

fn lookup_error(e: arti_client::Error) -> crate::dns::LookupError {
    use arti_client::HasKind;
    match e.kind() {
        arti_client::ErrorKind::RemoteHostNotFound => crate::dns::LookupError::NotFound,
        _ => crate::dns::LookupError::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_bootstrap_checks_the_bridges_whose_own_address_their_transport_dials() {
        let b = Bridges {
            lines: vec![
                "obfs4 192.0.2.1:443 0123456789ABCDEF0123456789ABCDEF01234567 cert=x iat-mode=0".into(),
                "192.0.2.2:9001 0123456789ABCDEF0123456789ABCDEF01234567".into(),
                "snowflake 192.0.2.3:80 2B280B23E1107BB62ABFC40DDCC8824814F80A72 url=https://b.test/".into(),
                "[2001:db8::4]:443".into(),
            ],
            obfs4proxy: PathBuf::new(),
            pt_paths: Default::default(),
        };
        let p = b.probes();
        let got: Vec<(usize, &str, Option<String>)> =
            p.iter().map(|p| (p.index, p.transport.as_str(), p.addr.map(|a| a.to_string()))).collect();
        assert_eq!(
            got,
            vec![
                (1, "obfs4", Some("192.0.2.1:443".into())),
                (2, "plain", Some("192.0.2.2:9001".into())),
                (3, "snowflake", None),
                (4, "plain", Some("[2001:db8::4]:443".into())),
            ]
        );
    }

    #[test]
    fn a_flood_of_socks_keys_is_bounded_and_recent_keys_keep_their_tokens() {
        let iso = Isolation::default();
        let kept = IsolationKey::Socks { user: b"alice".to_vec(), pass: vec![] };
        let alice = iso.token(kept.clone());
        for i in 0..(3 * Isolation::MAX_KEYS) {
            iso.token(IsolationKey::Socks { user: i.to_string().into_bytes(), pass: vec![] });
            if i % 100 == 0 {
                assert_eq!(iso.token(kept.clone()), alice, "a key in use lost its token");
            }
        }
        assert!(iso.len() <= Isolation::MAX_KEYS, "{}", iso.len());
    }

    #[test]
    fn isolation_tokens_are_per_key_and_renewed_by_new_identity() {
        let iso = Isolation::default();
        let a = IsolationKey::Local { uid: 1000, cgroup: 7 };
        let b = IsolationKey::Local { uid: 1001, cgroup: 7 };
        let ta = iso.token(a.clone());
        assert_eq!(iso.token(a.clone()), ta);
        assert_ne!(iso.token(b), ta);
        assert_eq!(iso.new_identity(), 2);
        assert_ne!(iso.token(a), ta);
    }

    #[test]
    fn config_layers_files_over_defaults_and_rejects_bad_input() {
        let dir = std::env::temp_dir().join(format!("ttp-tor-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "[path_rules]\nipv4_subnet_family_prefix = 33\n[proxy]\nsocks_listen = 9150\n").unwrap();
        load_config(&dir, std::slice::from_ref(&good), None, None).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[path_rules]\nipv4_subnet_family_prefix = \"many\"\n").unwrap();
        assert!(load_config(&dir, &[bad], None, None).is_err());
        assert!(load_config(&dir, &[dir.join("missing.toml")], None, None)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        // A file's [storage] is ignored: the state stays under the state directory.
        let storage = dir.join("storage.toml");
        std::fs::write(&storage, "[storage]\nstate_dir = \"/root/elsewhere\"\ncache_dir = \"/root/cache\"\n").unwrap();
        let c = format!("{:?}", load_config(&dir, &[storage], None, None).unwrap());
        assert!(!c.contains("/root/elsewhere") && c.contains(&dir.join("arti/state").display().to_string()), "{c}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bridge_lines_are_checked_before_bootstrap() {
        let dir = std::env::temp_dir().join(format!("ttp-tor-bridges-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fp = "0123456789ABCDEF0123456789ABCDEF01234567";
        let b = |lines: &[&str], pt: &str| Bridges {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            obfs4proxy: PathBuf::from(pt),
            pt_paths: Default::default(),
        };
        let plain = format!("192.0.2.1:443 {fp}");
        // Plain bridges need no transport program.
        load_config(&dir, &[], Some(&b(&[&plain], "/nonexistent")), None).unwrap();
        let obfs4 = format!("obfs4 192.0.2.2:443 {fp} cert=AAAA iat-mode=0");
        let e = format!("{:#}", load_config(&dir, &[], Some(&b(&[&obfs4], "/nonexistent")), None).unwrap_err());
        assert!(e.contains("apt install obfs4proxy"), "{e}");
        let e = format!("{:#}", load_config(&dir, &[], Some(&b(&["not a bridge"], "/bin/true")), None).unwrap_err());
        assert!(e.contains("bridge 1 does not parse"), "{e}");
        let e = format!("{:#}", load_config(&dir, &[], Some(&b(&[], "/bin/true")), None).unwrap_err());
        assert!(e.contains("no bridge is given"), "{e}");
        // One bridge at two addresses is one bridge to Tor: said, not half used.
        let moved = format!("192.0.2.9:443 {fp}");
        let other = "192.0.2.9:443 89ABCDEF0123456789ABCDEF0123456789ABCDEF";
        let e =
            format!("{:#}", load_config(&dir, &[], Some(&b(&[other, &plain, &moved], "/bin/true")), None).unwrap_err());
        assert!(e.contains("bridges 2 and 3 have the same fingerprint"), "{e}");
        load_config(&dir, &[], Some(&b(&[other, &plain], "/bin/true")), None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_kind_of_bridge_gets_its_transport_program_or_says_how_to_get_it() {
        // Each bridge its own fingerprint, as real lines have.
        let fp = |n: u8| format!("{n:X}").repeat(40);
        let obfs4 = format!("obfs4 192.0.2.2:443 {} cert=AAAA iat-mode=0", fp(1));
        let meek = format!("meek_lite 192.0.2.18:80 {} url=https://meek.example.net/ front=www.example.com", fp(2));
        let snowflake = format!(
            "snowflake 192.0.2.3:80 {0} fingerprint={0} url=https://broker.example.net/ \
             fronts=cdn.example.com ice=stun:stun.example.net:3478 utls-imitate=hellorandomizedalpn",
            fp(3)
        );
        let webtunnel = format!("webtunnel [2001:db8::7]:443 {} url=https://tunnel.example.net/path ver=0.0.1", fp(4));
        let bridges = |lines: &[&str], paths: &[(&str, &str)]| Bridges {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            obfs4proxy: PathBuf::from("/bin/true"),
            pt_paths: paths.iter().map(|(t, p)| (t.to_string(), PathBuf::from(p))).collect(),
        };
        // obfs4 and meek_lite share obfs4proxy: one program, both protocols; snowflake its
        // own, given here; one list mixes all three.
        let t: toml::Table =
            bridges(&[&obfs4, &meek, &snowflake], &[("snowflake", "/bin/sh")]).to_toml().unwrap().parse().unwrap();
        let pts = t["bridges"]["transports"].as_array().unwrap();
        let by_path = |p: &str| pts.iter().find(|v| v["path"].as_str() == Some(p)).map(|v| v["protocols"].clone());
        assert_eq!(by_path("/bin/true"), Some(toml::Value::from(vec!["meek_lite", "obfs4"])), "{t}");
        assert_eq!(by_path("/bin/sh"), Some(toml::Value::from(vec!["snowflake"])), "{t}");
        assert_eq!(t["bridges"]["bridges"].as_array().unwrap().len(), 3);
        // A missing program: the error names the transport and how to get it.
        let e = format!("{:#}", bridges(&[&snowflake], &[("snowflake", "/nonexistent/sf")]).to_toml().unwrap_err());
        assert!(e.contains("--pt-path snowflake=/nonexistent/sf: no such program"), "{e}");
        if !Path::new("/usr/bin/snowflake-client").exists() {
            let e = format!("{:#}", bridges(&[&snowflake], &[]).to_toml().unwrap_err());
            assert!(
                e.contains("snowflake bridges need their transport program") && e.contains("snowflake-client"),
                "{e}"
            );
        }
        if on_path("lyrebird").is_none() && !Path::new("/usr/bin/lyrebird").exists() {
            let e = format!("{:#}", bridges(&[&webtunnel], &[]).to_toml().unwrap_err());
            assert!(e.contains("lyrebird") && e.contains("--pt-path webtunnel=PATH"), "{e}");
        }
        bridges(&[&webtunnel], &[("webtunnel", "/bin/true")]).to_toml().unwrap();
        // A transport ttp does not know needs its program named.
        let other = format!("conjure 192.0.2.9:80 {}", fp(5));
        let e = format!("{:#}", bridges(&[&other], &[]).to_toml().unwrap_err());
        assert!(e.contains("--pt-path conjure=PATH"), "{e}");
        bridges(&[&other], &[("conjure", "/bin/true")]).to_toml().unwrap();
        // Incomplete lines of each kind: one error naming the line, before anything runs.
        for bad in
            ["snowflake", "webtunnel 192.0.2.7:443", "meek_lite url=https://x/", "obfs4 192.0.2.2:443 NOTAFINGERPRINT"]
        {
            let e = format!("{:#}", bridges(&[bad], &[]).to_toml().unwrap_err());
            assert!(e.contains("bridge 1"), "{bad}: {e}");
        }
    }
}
