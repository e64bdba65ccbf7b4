//! The daemon's capacity under load: descriptors, and fair shares of the stream slots.
//!
//! Every stream holds one descriptor (the application's connection; Arti multiplexes
//! streams over a few channels), every DNS-over-TCP and control connection one more. Had
//! the daemon more slots than descriptors, a program holding many connections would make
//! `accept()` fail (`EMFILE`) for everyone, and could not even be refused, since refusing
//! a connection means accepting it first. So: the descriptor limit is raised to its hard
//! limit while the daemon is still root ([`raise_nofile`]), and the slots are sized
//! against what it got ([`Budget`]), leaving a reserve for Arti, the maps and refusals.
//! Past a limit a connection is refused at once and counted, never queued.
//!
//! One key (a uid and cgroup, a SOCKS user, a gateway client) may hold at most a share of
//! the stream slots ([`Shares`]): while one program floods, another one's fetch still
//! finds a slot. The slots of clients that are not streams yet (SOCKS handshakes, DNS
//! over TCP) are shared the same way per local user or remote address
//! ([`crate::principal::Owner`]).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{bail, Result};

use crate::accept::AcceptErrors;

/// Descriptors kept out of every budget: Arti's channels and state files, pluggable
/// transports, the BPF maps and links, the log, the control socket's connections, and
/// the one a refusal takes for a moment.
pub const RESERVE: u64 = 256;
/// Below this, ttp does not start: it could serve almost nothing.
pub const MIN_NOFILE: u64 = 512;
/// Control connections at once (`ttp status`, `ttp top`, scripts).
pub const MAX_CONTROL: usize = 32;
/// The part of the stream slots one key may hold, in percent.
pub const KEY_SHARE_PERCENT: usize = 50;

/// Raises the soft descriptor limit to the hard one (which only root could raise
/// further); returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < MIN_NOFILE {
        bail!(
            "the open-files limit is {soft} (hard limit {hard}): ttp needs at least {MIN_NOFILE}; \
             raise it (`ulimit -n`, or LimitNOFILE= in the systemd unit)"
        );
    }
    Ok(soft)
}

pub use crate::control::proto::Budget;

impl Budget {
    /// The budget for `nofile` descriptors; `max_streams` (`--max-streams`) caps streams.
    pub fn new(nofile: u64, max_streams: usize) -> Budget {
        let available = usize::try_from(nofile.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
        let streams = max_streams.min(available / 4 * 3).max(1);
        let dns_tcp = (available / 16).clamp(1, 1024);
        let handshakes = (available / 16).clamp(1, 1024);
        Budget { nofile, streams, per_key: share_of(streams), handshakes, dns_tcp }
    }

    /// Whether every slot at once still fits the descriptors, with the reserve.
    pub fn fits(&self) -> bool {
        (self.streams + self.handshakes + self.dns_tcp + MAX_CONTROL) as u64 + RESERVE / 2 <= self.nofile
    }
}

/// Per-key counts of held slots; a key at its share is refused.
pub struct Shares<K: Eq + Hash + Clone> {
    per_key: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One slot of a key's share, given back on drop.
pub struct Share<K: Eq + Hash + Clone> {
    shares: Arc<Shares<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Shares<K> {
    pub fn new(per_key: usize) -> Arc<Self> {
        Arc::new(Shares { per_key, held: Mutex::new(HashMap::new()) })
    }

    /// A slot for `key`, unless it holds its whole share already.
    pub fn try_take(self: &Arc<Self>, key: &K) -> Option<Share<K>> {
        let mut held = self.held.lock().expect("shares lock");
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.per_key {
            return None;
        }
        *n += 1;
        Some(Share { shares: self.clone(), key: key.clone() })
    }

    /// Keys holding slots now (the table never outgrows the slots held).
    pub fn keys(&self) -> usize {
        self.held.lock().expect("shares lock").len()
    }
}

impl<K: Eq + Hash + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Half of `slots` (at least one): one owner's share.
pub fn share_of(slots: usize) -> usize {
    (slots * KEY_SHARE_PERCENT / 100).max(1)
}

/// What load did to the daemon, for `ttp status`.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Transient accept errors, on every listener.
    pub accept_errors: AcceptErrors,
    /// Streams, SOCKS handshakes, DNS-over-TCP connections and DNS lookups through Tor
    /// refused because their client held its whole share.
    pub refused_share: AtomicU64,
    /// DNS-over-TCP connections refused at the limit.
    pub refused_dns_tcp: AtomicU64,
    /// Control connections refused at the limit.
    pub refused_control: AtomicU64,
    /// Connections closed because the client sent nothing in time (SOCKS handshakes,
    /// DNS over TCP, control requests).
    pub idle_closed: AtomicU64,
}

impl LoadStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_fit_their_descriptors() {
        for nofile in [MIN_NOFILE, 1024, 4096, 65536, 1 << 20] {
            let b = Budget::new(nofile, 1 << 20);
            assert!(b.fits(), "{b:?}");
            assert!(b.per_key < b.streams, "{b:?}");
        }
        // A soft limit of 1,024 (a shell's default) cannot carry the default 4,096 streams.
        assert_eq!(Budget::new(1024, 4096).streams, 576);
        assert_eq!(Budget::new(65536, 4096).streams, 4096);
    }

    #[test]
    fn a_key_gets_its_share_and_no_more_and_gives_it_back() {
        let s = Shares::new(2);
        let a1 = s.try_take(&"a").unwrap();
        let _a2 = s.try_take(&"a").unwrap();
        assert!(s.try_take(&"a").is_none());
        let _b = s.try_take(&"b").expect("another key still gets a slot");
        drop(a1);
        assert!(s.try_take(&"a").is_some());
        drop(_b);
        assert_eq!(s.keys(), 1);
    }
}
