//! A peer: its configuration, and the state the protocol keeps for it (its sessions and
//! their rotation, the handshake in flight, its cookie, timers and counters).
//!
//! Sessions rotate as WireGuard's keypairs do. Up to three live at once, each reachable by
//! its own receiver index:
//! - `current`: what we send on;
//! - `previous`: the one before, still good for receiving while its packets are in flight
//!   (and, when both sides initiate at once, what the other side may still send on);
//! - `next`: a session we answered a handshake for and do not send on until the
//!   initiator's first packet on it arrives, because until then we cannot know it has the
//!   session. A delayed or replayed initiation therefore never moves our sending onto a
//!   session the peer never completed.

use std::{net::SocketAddr, time::Instant};

use ipnet::IpNet;

use super::{cookie::CookieJar, handshake::Initiator, session::Session, timers::Timers};

/// A peer's name inside the protocol core: given when the peer is added and never reused,
/// so that adding or removing other peers never changes which peer an id means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// A peer as configured.
#[derive(Clone, Debug, Default)]
pub struct PeerConfig {
    pub public: [u8; 32],
    pub psk: Option<[u8; 32]>,
    /// Inner addresses the peer may use as source (and that are routed to it).
    pub allowed: Vec<IpNet>,
    /// Where to reach it first (a client's gateway); learnt from its traffic otherwise.
    pub endpoint: Option<SocketAddr>,
    /// Send a keepalive whenever nothing was sent to the peer for this long, traffic or
    /// not (WireGuard's PersistentKeepalive): keeps a NAT's mapping open for a side that
    /// must stay reachable while idle.
    pub persistent_keepalive: Option<std::time::Duration>,
}

/// Why datagrams or packets were dropped, per peer (for `ttp status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub replay: u64,
    pub decrypt: u64,
    /// An inner source the peer may not use, or a packet whose header does not add up.
    pub source: u64,
}

/// What went through a peer's sessions (for `ttp status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Inner packets' bytes, from the peer to the TUN and back.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// When the current session's handshake completed.
    pub handshake_at: Option<Instant>,
}

/// An initiation we sent and its mac1 (a cookie reply to it is bound to that mac1).
pub(crate) struct Pending {
    pub initiator: Initiator,
    pub mac1: [u8; 16],
}

/// The sessions of one peer (see the module).
#[derive(Default)]
pub(crate) struct Sessions {
    pub current: Option<Session>,
    pub previous: Option<Session>,
    pub next: Option<Session>,
}

impl Sessions {
    /// Makes `s` the current session; the current one becomes the previous. Returns the
    /// index of the session that drops out (the one before the previous).
    pub fn install(&mut self, s: Session) -> Option<u32> {
        let old = self.current.replace(s);
        std::mem::replace(&mut self.previous, old).map(|gone| gone.local)
    }

    /// Holds `s` until the initiator confirms it; returns the index of an unconfirmed
    /// session it replaces.
    pub fn propose(&mut self, s: Session) -> Option<u32> {
        self.next.replace(s).map(|gone| gone.local)
    }

    /// The session with our index `local`, and whether it is the unconfirmed one.
    pub fn by_index(&mut self, local: u32) -> Option<(&mut Session, bool)> {
        if self.next.as_ref().is_some_and(|s| s.local == local) {
            return self.next.as_mut().map(|s| (s, true));
        }
        [self.current.as_mut(), self.previous.as_mut()]
            .into_iter()
            .flatten()
            .find(|s| s.local == local)
            .map(|s| (s, false))
    }

    /// The initiator has the unconfirmed session: it becomes the current one. Returns the
    /// index that drops out, as [`Sessions::install`] does.
    pub fn confirm(&mut self) -> Option<u32> {
        let s = self.next.take()?;
        self.install(s)
    }

    /// Ends every session; returns their indices.
    pub fn clear(&mut self) -> Vec<u32> {
        [self.current.take(), self.previous.take(), self.next.take()].into_iter().flatten().map(|s| s.local).collect()
    }
}

pub(crate) struct Peer {
    pub cfg: PeerConfig,
    pub endpoint: Option<SocketAddr>,
    pub sessions: Sessions,
    pub pending: Option<Pending>,
    pub jar: CookieJar,
    pub timers: Timers,
    /// The newest initiation timestamp accepted from this peer: older ones are replays.
    pub newest_initiation: Option<[u8; 12]>,
    pub drops: Drops,
    pub traffic: Traffic,
}

impl Peer {
    pub fn new(cfg: PeerConfig, timers: Timers) -> Peer {
        Peer {
            endpoint: cfg.endpoint,
            jar: CookieJar::new(&cfg.public),
            cfg,
            sessions: Sessions::default(),
            pending: None,
            timers,
            newest_initiation: None,
            drops: Drops::default(),
            traffic: Traffic::default(),
        }
    }

    /// Every receiver index this peer holds: its sessions' and its pending initiation's.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        let s = &self.sessions;
        [s.current.as_ref(), s.previous.as_ref(), s.next.as_ref()]
            .into_iter()
            .flatten()
            .map(|s| s.local)
            .chain(self.pending.as_ref().map(|p| p.initiator.sender))
    }
}
