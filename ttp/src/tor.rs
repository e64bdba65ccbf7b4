//! The embedded Tor client (Arti): configuration, bootstrap, stream isolation.
//!
//! Configuration is Arti's own: ttp writes its defaults (storage under the state dir) as
//! the first source and layers every `--arti-config` file over it, exactly as the `arti`
//! program reads its files. A private Tor network is therefore a file, not code.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
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

/// Bridges to use instead of connecting to the network directly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bridges {
    /// Bridge lines, as Tor Browser and torrc write them (without `Bridge`).
    pub lines: Vec<String>,
    /// The obfs4 pluggable transport, for `obfs4` lines.
    pub obfs4proxy: PathBuf,
}

impl Bridges {
    /// Arti's configuration for these bridges; each line is checked first, so a typo is
    /// an error that names the line, not a bootstrap that never ends.
    fn to_toml(&self) -> Result<String> {
        if self.lines.is_empty() {
            bail!("bridges are on but no bridge is given: add --bridge LINE or --bridges-file FILE");
        }
        let mut transports = std::collections::BTreeSet::new();
        for (i, l) in self.lines.iter().enumerate() {
            let b: arti_client::config::BridgeConfigBuilder =
                l.parse().with_context(|| format!("bridge {} does not parse: {l:?}", i + 1))?;
            b.build().with_context(|| format!("bridge {} is not usable: {l:?}", i + 1))?;
            // A line starts with its transport's name, or with the address of a plain bridge.
            let first = l.split_whitespace().next().unwrap_or_default();
            if first.parse::<std::net::SocketAddr>().is_err() {
                transports.insert(first.to_string());
            }
        }
        let mut bridges = toml::Table::new();
        bridges.insert("enabled".into(), true.into());
        bridges.insert("bridges".into(), self.lines.clone().into());
        let mut pts = Vec::new();
        for t in transports {
            if t != "obfs4" {
                bail!("bridges of transport `{t}` are not supported: ttp knows obfs4 (and plain bridges)");
            }
            if !self.obfs4proxy.exists() {
                bail!(
                    "obfs4 bridges need obfs4proxy, which is not at {} (apt install obfs4proxy, or --obfs4proxy PATH)",
                    self.obfs4proxy.display()
                );
            }
            let pt = toml::toml! {
                protocols = [(t)]
                path = (self.obfs4proxy.display().to_string())
            };
            pts.push(toml::Value::Table(pt));
        }
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
pub async fn bootstrap(config: TorClientConfig, timeout: Duration, mut progress: impl FnMut(Progress)) -> Result<Tor> {
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
            let what_to_do = waiting_for(&s)
                .unwrap_or_else(|| "check the network or the bridges, or raise --bootstrap-timeout".into());
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
