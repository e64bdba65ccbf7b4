//! The protocol core: peers, handshakes, sessions and their checks, driven by datagrams
//! from the network and packets from the TUN, with time as an argument. It does no I/O:
//! every call returns what to send where ([`Action`]), and the device does it.
//!
//! One handler per message kind ([`Core::from_network`] dispatches). Checks, in order of
//! cost, for each datagram: parse; for handshakes, mac1, then (under load) mac2 or a
//! cookie reply, then the per-source rate limit, then Diffie-Hellman; for data, the
//! receiver index, the replay window, the AEAD, and finally the inner packet's header and
//! its source against the peer's allowed addresses. A peer's endpoint follows its latest
//! authenticated datagram (roaming).
//!
//! Peers and their session rotation live in [`peer`](super::peer), the address table in
//! [`allowed`](super::allowed). Receiver indices are random (as WireGuard's are), so they
//! say nothing about how many sessions a side has made, and every index is freed when
//! what it named ends: a session, or an initiation that was replaced or given up.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

pub use super::peer::{Drops, PeerConfig, PeerId, Traffic};
use super::{
    allowed::{AllowedIps, Overlap},
    cookie::CookieChecker,
    handshake::{self, Identity, PeerKeys},
    messages::{self, CookieReply, Data, Initiation, Message, Response},
    packet,
    peer::{Peer, Pending},
    ratelimit::RateLimiter,
    session::SessionError,
    timers::{Due, Timers},
};

/// Why a peer could not be added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("a peer with this public key exists already")]
    Exists,
    #[error("this is the gateway's own public key")]
    Own,
    #[error("no peer has this public key")]
    Unknown,
    #[error(transparent)]
    Overlap(#[from] Overlap),
}

/// What the device must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram to this address.
    Network(SocketAddr, Vec<u8>),
    /// Give this packet, from this peer, to the TUN.
    Tunnel(PeerId, Vec<u8>),
    /// Nothing to do (the datagram was consumed or dropped; counters say which).
    None,
}

/// What the device shows of a peer (`ttp status`, `ttp tunnel peer list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub public: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub drops: Drops,
    pub traffic: Traffic,
}

/// The MTU data messages are padded up to at most when the device does not say (the
/// TUN's default: 1500 less the outer IPv6 and UDP headers and the data header and tag).
pub const DEFAULT_MTU: usize = 1420;

pub struct Core {
    me: Identity,
    peers: BTreeMap<PeerId, Peer>,
    next_id: u32,
    allowed: AllowedIps,
    /// Our receiver indices -> the peer each belongs to.
    index: HashMap<u32, PeerId>,
    checker: CookieChecker,
    limiter: RateLimiter,
    /// Sessions we initiate are renewed after this (default: REKEY_AFTER_TIME).
    rekey_after: Option<Duration>,
    mtu: usize,
}

/// A random receiver index.
fn random_index() -> u32 {
    let mut b = [0u8; 4];
    getrandom::getrandom(&mut b).expect("the kernel's random source");
    u32::from_ne_bytes(b)
}

impl Core {
    /// A core with `peers`, whose ids are 0, 1, ... in this order. Peers whose keys repeat,
    /// are ours, or whose addresses overlap are refused, as [`Core::add_peer`] refuses them.
    pub fn new(me: Identity, peers: Vec<PeerConfig>, now: Instant) -> Result<Core, PeerError> {
        let checker = CookieChecker::new(&me.public, now);
        let mut core = Core {
            me,
            peers: BTreeMap::new(),
            next_id: 0,
            allowed: AllowedIps::default(),
            index: HashMap::new(),
            checker,
            limiter: RateLimiter::new(now),
            rekey_after: None,
            mtu: DEFAULT_MTU,
        };
        for p in peers {
            core.add_peer(p)?;
        }
        Ok(core)
    }

    /// Renews the sessions we initiate after `d` instead of two minutes (the config's
    /// `rekey-after`; tests use a few seconds to watch rekeys happen).
    pub fn with_rekey_after(mut self, d: Option<Duration>) -> Core {
        self.rekey_after = d;
        for p in self.peers.values_mut() {
            p.timers = Timers::new(d, p.cfg.persistent_keepalive);
        }
        self
    }

    /// Pads data messages up to `mtu` at most (the TUN's MTU).
    pub fn with_mtu(mut self, mtu: usize) -> Core {
        self.mtu = mtu;
        self
    }

    pub fn public(&self) -> [u8; 32] {
        self.me.public
    }

    /// The peers' ids, in the order they were added.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    pub fn peer(&self, id: PeerId) -> Option<PeerState> {
        self.peers.get(&id).map(|p| PeerState {
            public: p.cfg.public,
            endpoint: p.endpoint,
            drops: p.drops.clone(),
            traffic: p.traffic.clone(),
        })
    }

    /// How many receiver indices are in use (sessions and initiations in flight).
    pub fn indices_in_use(&self) -> usize {
        self.index.len()
    }

    /// A fresh receiver index for `peer`.
    fn new_index(&mut self, peer: PeerId) -> u32 {
        let i = self.free_index();
        self.index.insert(i, peer);
        i
    }

    fn free_index(&self) -> u32 {
        loop {
            let i = random_index();
            if !self.index.contains_key(&i) {
                return i;
            }
        }
    }

    fn free(&mut self, indices: impl IntoIterator<Item = u32>) {
        for i in indices {
            self.index.remove(&i);
        }
    }

    /// Starts a handshake with `peer` (to its known endpoint). An initiation still in
    /// flight is abandoned, and its index freed.
    pub fn initiate(&mut self, peer: PeerId, now: Instant, wall: SystemTime) -> Action {
        let Some(to) = self.peers.get(&peer).and_then(|p| p.endpoint) else { return Action::None };
        let sender = self.new_index(peer);
        let p = self.peers.get_mut(&peer).expect("checked above");
        let keys = PeerKeys { public: p.cfg.public, psk: p.cfg.psk };
        let Ok((initiator, mut msg)) = handshake::initiate(&self.me, &keys, sender, wall) else {
            self.index.remove(&sender);
            return Action::None;
        };
        p.jar.stamp(&mut msg, now);
        let mut mac1 = [0u8; 16];
        mac1.copy_from_slice(&msg[msg.len() - 32..msg.len() - 16]);
        let abandoned = p.pending.replace(Pending { initiator, mac1 }).map(|old| old.initiator.sender);
        p.timers.initiation_sent(now);
        self.free(abandoned);
        Action::Network(to, msg)
    }

    /// A packet from the TUN: sealed for the peer whose allowed addresses hold its
    /// destination. Without a session, a handshake goes out first (the packet is dropped:
    /// the application retransmits).
    pub fn from_tunnel(&mut self, packet: &[u8], now: Instant, wall: SystemTime) -> Action {
        let Some(dst) = packet::destination(packet) else { return Action::None };
        let Some(id) = self.allowed.lookup(dst) else { return Action::None };
        let mtu = self.mtu;
        let Some(p) = self.peers.get_mut(&id) else { return Action::None };
        match (p.sessions.current.as_mut(), p.endpoint) {
            (Some(s), Some(to)) => match s.seal(packet, mtu) {
                Ok(d) => {
                    p.timers.data_sent(now);
                    p.traffic.tx_bytes += packet.len() as u64;
                    Action::Network(to, d)
                }
                Err(_) => self.initiate(id, now, wall),
            },
            _ if p.pending.is_none() => self.initiate(id, now, wall),
            _ => Action::None,
        }
    }

    /// A datagram from the network.
    pub fn from_network(&mut self, src: SocketAddr, datagram: &[u8], now: Instant) -> Action {
        match messages::parse(datagram) {
            Ok(Message::Initiation(i)) => self.on_initiation(src, &i, now),
            Ok(Message::Response(r)) => self.on_response(src, &r, now),
            Ok(Message::CookieReply(c)) => self.on_cookie_reply(&c, now),
            Ok(Message::Data(d)) => self.on_data(src, &d, now),
            Err(_) => Action::None,
        }
    }

    /// An initiation: answered (after mac1, the load check and the rate limit) if it comes
    /// from a known peer with a newer timestamp. The new session waits in `next` until the
    /// initiator uses it.
    fn on_initiation(&mut self, src: SocketAddr, i: &Initiation<'_>, now: Instant) -> Action {
        if !i.macs.mac1_ok(&self.me.public) {
            return Action::None;
        }
        let loaded = self.limiter.note_handshake(now);
        if loaded && !self.checker.mac2_ok(&i.macs, &src, now) {
            return Action::Network(src, self.checker.reply(i.sender, i.macs.mac1, &src, now));
        }
        if !self.limiter.allow(src.ip(), now) {
            return Action::None;
        }
        let sender = self.free_index();
        let mut found = None;
        let peers = &self.peers;
        let accepted = handshake::respond(&self.me, i, sender, |pk| {
            let (id, p) = peers.iter().find(|(_, p)| &p.cfg.public == pk)?;
            found = Some(*id);
            Some((PeerKeys { public: p.cfg.public, psk: p.cfg.psk }, p.newest_initiation))
        });
        let (Ok(acc), Some(id)) = (accepted, found) else { return Action::None };
        self.index.insert(sender, id);
        let p = self.peers.get_mut(&id).expect("found above");
        let unconfirmed = p.sessions.propose(acc.session);
        p.newest_initiation = Some(acc.timestamp);
        p.endpoint = Some(src);
        self.free(unconfirmed);
        Action::Network(src, acc.response)
    }

    /// A response to our initiation. A forged one (anyone who knows our public key can
    /// make its mac1) leaves the initiation in flight for the real answer.
    fn on_response(&mut self, src: SocketAddr, r: &Response<'_>, now: Instant) -> Action {
        if !r.macs.mac1_ok(&self.me.public) {
            return Action::None;
        }
        let Some(&id) = self.index.get(&r.receiver) else { return Action::None };
        let Some(p) = self.peers.get_mut(&id) else { return Action::None };
        if p.pending.as_ref().is_none_or(|pending| pending.initiator.sender != r.receiver) {
            return Action::None;
        }
        let Pending { initiator, mac1 } = p.pending.take().expect("checked above");
        let session = match initiator.finish(&self.me, r) {
            Ok(s) => s,
            Err(refused) => {
                match refused.initiator {
                    Some(initiator) => p.pending = Some(Pending { initiator, mac1 }),
                    None => {
                        self.index.remove(&r.receiver);
                    }
                }
                return Action::None;
            }
        };
        let dropped = p.sessions.install(session);
        p.endpoint = Some(src);
        p.timers.session_started(now, true);
        p.traffic.handshake_at = Some(now);
        // Confirm the session to the responder at once (an empty packet).
        let keepalive = p.sessions.current.as_mut().map(|s| s.seal(&[], 0));
        let action = match keepalive {
            Some(Ok(k)) => {
                p.timers.keepalive_sent(now);
                Action::Network(src, k)
            }
            _ => Action::None,
        };
        self.free(dropped);
        action
    }

    /// A cookie reply to our pending initiation: the responder is under load; the next
    /// initiation carries the cookie as mac2.
    fn on_cookie_reply(&mut self, c: &CookieReply<'_>, now: Instant) -> Action {
        let Some(&id) = self.index.get(&c.receiver) else { return Action::None };
        let Some(p) = self.peers.get_mut(&id) else { return Action::None };
        if let Some(pending) = p.pending.as_ref().filter(|pending| pending.initiator.sender == c.receiver) {
            if p.jar.accept(c, &pending.mac1, now).is_ok() {
                p.timers.cookie_received();
            }
        }
        Action::None
    }

    /// Data (or a keepalive) on one of a peer's sessions.
    fn on_data(&mut self, src: SocketAddr, d: &Data<'_>, now: Instant) -> Action {
        let Some(&id) = self.index.get(&d.receiver) else { return Action::None };
        let Some(p) = self.peers.get_mut(&id) else { return Action::None };
        let Some((s, unconfirmed)) = p.sessions.by_index(d.receiver) else { return Action::None };
        let mut packet = match s.open(d) {
            Ok(packet) => packet,
            Err(SessionError::Replay) => {
                p.drops.replay += 1;
                return Action::None;
            }
            Err(_) => {
                p.drops.decrypt += 1;
                return Action::None;
            }
        };
        // The initiator has the session: it becomes the current one.
        let mut dropped = None;
        if unconfirmed {
            dropped = p.sessions.confirm();
            p.timers.session_started(now, false);
            p.traffic.handshake_at = Some(now);
        }
        p.endpoint = Some(src); // roaming: the latest authenticated source
        p.timers.data_received(now);
        self.free(dropped);
        if packet.is_empty() {
            return Action::None; // keepalive
        }
        let p = self.peers.get_mut(&id).expect("found above");
        // Padding off, then the source: only an address the peer holds.
        let Some(len) = packet::declared_len(&packet) else {
            p.drops.source += 1;
            return Action::None;
        };
        packet.truncate(len);
        // The peer's own prefixes (no other peer's overlap them): a few, not the table.
        if !packet::source(&packet).is_some_and(|ip| p.cfg.allowed.iter().any(|n| n.contains(&ip))) {
            p.drops.source += 1;
            return Action::None;
        }
        p.traffic.rx_bytes += packet.len() as u64;
        Action::Tunnel(id, packet)
    }

    /// Timer work for every peer: handshakes to (re)send, keepalives, expiries.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> Vec<Action> {
        let mut out = Vec::new();
        for id in self.peer_ids() {
            let p = self.peers.get_mut(&id).expect("listed");
            let sent = p.sessions.current.as_ref().map_or(0, |s| s.sent());
            match p.timers.due(now, sent) {
                Some(Due::Initiate) => out.push(self.initiate(id, now, wall)),
                Some(Due::Keepalive) => {
                    if let (Some(s), Some(to)) = (p.sessions.current.as_mut(), p.endpoint) {
                        if let Ok(k) = s.seal(&[], 0) {
                            p.timers.keepalive_sent(now);
                            out.push(Action::Network(to, k));
                        }
                    }
                }
                Some(Due::Expire) => {
                    let gone = p.sessions.clear();
                    self.free(gone);
                }
                Some(Due::GiveUp) => {
                    let gone = p.pending.take().map(|pending| pending.initiator.sender);
                    self.free(gone);
                }
                None => {}
            }
        }
        out.retain(|a| *a != Action::None);
        out
    }

    /// Adds a peer (a running gateway's `ttp tunnel peer add`). Refused if its key is
    /// already a peer's, or is ours, or if its addresses overlap another peer's.
    pub fn add_peer(&mut self, cfg: PeerConfig) -> Result<PeerId, PeerError> {
        if cfg.public == self.me.public {
            return Err(PeerError::Own);
        }
        if self.peers.values().any(|p| p.cfg.public == cfg.public) {
            return Err(PeerError::Exists);
        }
        let id = PeerId(self.next_id);
        self.allowed.insert(id, &cfg.allowed)?;
        self.next_id += 1;
        let timers = Timers::new(self.rekey_after, cfg.persistent_keepalive);
        self.peers.insert(id, Peer::new(cfg, timers));
        Ok(id)
    }

    /// Removes a peer: its sessions end at once (their packets are unknown from now on),
    /// and its addresses are free for another peer.
    pub fn remove_peer(&mut self, public: &[u8; 32]) -> Result<PeerId, PeerError> {
        let id =
            self.peers.iter().find(|(_, p)| &p.cfg.public == public).map(|(id, _)| *id).ok_or(PeerError::Unknown)?;
        let gone = self.peers.remove(&id).expect("found above");
        self.allowed.remove(id);
        self.free(gone.indices().collect::<Vec<_>>());
        debug_assert!(self.index.values().all(|p| *p != id));
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4 header from `src` to `dst` with `payload`.
    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(20 + payload.len()).unwrap().to_be_bytes();
        let mut p = vec![0x45, 0, len[0], len[1], 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    struct Pair {
        gw: Core,
        client: Core,
        gw_addr: SocketAddr,
        client_addr: SocketAddr,
    }

    fn pair() -> Pair {
        let (g, c, other) =
            (Identity::generate().unwrap(), Identity::generate().unwrap(), Identity::generate().unwrap());
        let now = Instant::now();
        let gw_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let psk = Some([3u8; 32]);
        let gw = Core::new(
            g.clone(),
            vec![
                PeerConfig {
                    public: c.public,
                    psk,
                    allowed: vec!["10.77.0.2/32".parse().unwrap()],
                    endpoint: None,
                    ..Default::default()
                },
                PeerConfig {
                    public: other.public,
                    psk: None,
                    allowed: vec!["10.77.0.3/32".parse().unwrap()],
                    endpoint: None,
                    ..Default::default()
                },
            ],
            now,
        )
        .unwrap();
        let client = Core::new(
            c,
            vec![PeerConfig {
                public: g.public,
                psk,
                allowed: vec!["0.0.0.0/0".parse().unwrap()],
                endpoint: Some(gw_addr),
                ..Default::default()
            }],
            now,
        )
        .unwrap();
        Pair { gw, client, gw_addr, client_addr: "198.51.100.2:40000".parse().unwrap() }
    }

    /// Runs a datagram from `from` to `to` through the other side; returns its answer.
    fn deliver(to: &mut Core, src: SocketAddr, a: Action, now: Instant) -> Action {
        match a {
            Action::Network(_, d) => to.from_network(src, &d, now),
            other => other,
        }
    }

    #[test]
    fn handshake_data_roaming_replay_and_source_checks() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        let pkt = ipv4([10, 77, 0, 2], [203, 0, 113, 10], b"GET /");
        // No session yet: the first packet triggers the handshake.
        let init = t.client.from_tunnel(&pkt, now, wall);
        assert!(matches!(&init, Action::Network(to, _) if *to == t.gw_addr));
        let resp = deliver(&mut t.gw, t.client_addr, init, now);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, now);
        assert_eq!(deliver(&mut t.gw, t.client_addr, confirm, now), Action::None, "keepalive consumed");
        // Data flows, and arrives from the peer that sent it.
        let d = t.client.from_tunnel(&pkt, now, wall);
        let Action::Network(_, bytes) = &d else { panic!("sealed") };
        let bytes = bytes.clone();
        assert_eq!(t.gw.from_network(t.client_addr, &bytes, now), Action::Tunnel(PeerId(0), pkt.clone()));
        // The same datagram again: dropped and counted.
        assert_eq!(t.gw.from_network(t.client_addr, &bytes, now), Action::None);
        assert_eq!(t.gw.peer(PeerId(0)).unwrap().drops.replay, 1);
        // Roaming: the client moves; the gateway answers at the new address.
        let moved: SocketAddr = "203.0.113.99:50000".parse().unwrap();
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert!(matches!(deliver(&mut t.gw, moved, d, now), Action::Tunnel(PeerId(0), _)));
        assert_eq!(t.gw.peer(PeerId(0)).unwrap().endpoint, Some(moved));
        let reply = t.gw.from_tunnel(&ipv4([203, 0, 113, 10], [10, 77, 0, 2], b"200 OK"), now, wall);
        assert!(matches!(reply, Action::Network(to, _) if to == moved));
        // Another peer's inner address: dropped and counted.
        let spoof = t.client.from_tunnel(&ipv4([10, 77, 0, 3], [203, 0, 113, 10], b"x"), now, wall);
        assert_eq!(deliver(&mut t.gw, moved, spoof, now), Action::None);
        assert_eq!(t.gw.peer(PeerId(0)).unwrap().drops.source, 1);
    }

    #[test]
    fn both_sides_initiating_at_once_still_carry_data_both_ways() {
        // Two peers that know each other's endpoints, as in a site-to-site tunnel.
        let (a_id, b_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (a_addr, b_addr): (SocketAddr, SocketAddr) =
            ("192.0.2.1:51820".parse().unwrap(), "192.0.2.2:51820".parse().unwrap());
        let now = Instant::now();
        let wall = SystemTime::now();
        let side = |me: &Identity, peer: &Identity, allowed: &str, endpoint| {
            let cfg = PeerConfig {
                public: peer.public,
                psk: None,
                allowed: vec![allowed.parse().unwrap()],
                endpoint,
                ..Default::default()
            };
            Core::new(me.clone(), vec![cfg], now).unwrap()
        };
        let mut a = side(&a_id, &b_id, "10.77.0.2/32", Some(b_addr));
        let mut b = side(&b_id, &a_id, "10.77.0.1/32", Some(a_addr));
        // Both initiations cross on the wire; each side answers the other's, then gets
        // the answer to its own, and confirms it.
        let (init_a, init_b) = (a.initiate(PeerId(0), now, wall), b.initiate(PeerId(0), now, wall));
        let resp_b = deliver(&mut b, a_addr, init_a, now);
        let resp_a = deliver(&mut a, b_addr, init_b, now);
        let confirm_a = deliver(&mut a, b_addr, resp_b, now);
        let confirm_b = deliver(&mut b, a_addr, resp_a, now);
        let _ = deliver(&mut b, a_addr, confirm_a, now);
        let _ = deliver(&mut a, b_addr, confirm_b, now);
        let ab = ipv4([10, 77, 0, 1], [10, 77, 0, 2], b"ping");
        let ba = ipv4([10, 77, 0, 2], [10, 77, 0, 1], b"pong");
        let d = a.from_tunnel(&ab, now, wall);
        assert_eq!(deliver(&mut b, a_addr, d, now), Action::Tunnel(PeerId(0), ab.clone()), "a to b");
        let d = b.from_tunnel(&ba, now, wall);
        assert_eq!(deliver(&mut a, b_addr, d, now), Action::Tunnel(PeerId(0), ba.clone()), "b to a");
    }

    #[test]
    fn peers_come_and_go_while_running() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        let pkt = ipv4([10, 77, 0, 2], [203, 0, 113, 10], b"hi");
        let init = t.client.from_tunnel(&pkt, now, wall);
        let resp = deliver(&mut t.gw, t.client_addr, init, now);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, now);
        let _ = deliver(&mut t.gw, t.client_addr, confirm, now);
        let client_pub = t.gw.peer(PeerId(0)).unwrap().public;
        // A third peer joins; the first one's session is untouched.
        let newcomer = Identity::generate().unwrap();
        let cfg = |public| PeerConfig {
            public,
            psk: None,
            allowed: vec!["10.77.0.4/32".parse().unwrap()],
            endpoint: None,
            ..Default::default()
        };
        assert_eq!(t.gw.add_peer(cfg(newcomer.public)), Ok(PeerId(2)));
        assert_eq!(t.gw.add_peer(cfg(newcomer.public)), Err(PeerError::Exists));
        assert_eq!(t.gw.add_peer(cfg(t.gw.me.public)), Err(PeerError::Own));
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert!(matches!(deliver(&mut t.gw, t.client_addr, d, now), Action::Tunnel(PeerId(0), _)));
        // The client is removed: its session's packets are unknown at once, and a new
        // handshake from it finds no peer.
        assert_eq!(t.gw.remove_peer(&client_pub), Ok(PeerId(0)));
        assert_eq!(t.gw.remove_peer(&client_pub), Err(PeerError::Unknown));
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, now), Action::None);
        let again = t.client.initiate(PeerId(0), now + Duration::from_secs(1), wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, again, now + Duration::from_secs(1)), Action::None);
        let keys: Vec<_> = t.gw.peer_ids().iter().map(|id| t.gw.peer(*id).unwrap().public).collect();
        assert_eq!(keys, vec![t.gw.peers[&PeerId(1)].cfg.public, newcomer.public]);
        assert_eq!(t.gw.peer_ids(), vec![PeerId(1), PeerId(2)], "ids stay what they were");
    }

    #[test]
    fn a_flood_puts_the_gateway_in_cookie_mode_and_the_peer_still_gets_in() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        // Initiations with a valid mac1 from many spoofed sources.
        let attacker = Identity::generate().unwrap();
        let gw_public = t.gw.me.public;
        for i in 0..200u32 {
            let (_, msg) = handshake::initiate(&attacker, &PeerKeys { public: gw_public, psk: None }, i, wall).unwrap();
            let src = SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 1000));
            let _ = t.gw.from_network(src, &msg, now + Duration::from_millis(u64::from(i)));
        }
        let later = now + Duration::from_millis(300);
        let pkt = ipv4([10, 77, 0, 2], [203, 0, 113, 10], b"hi");
        let init = t.client.from_tunnel(&pkt, later, wall);
        let answer = deliver(&mut t.gw, t.client_addr, init, later);
        let Action::Network(_, cookie) = &answer else { panic!("an answer") };
        assert_eq!(cookie[0], messages::COOKIE_REPLY, "under load: a cookie, not a handshake");
        assert_eq!(deliver(&mut t.client, t.gw_addr, answer, later), Action::None);
        // Still under load, the retry carries mac2 with the cookie: the gateway does the
        // handshake for it.
        let soon = later + Duration::from_millis(10);
        let retry = t.client.initiate(PeerId(0), soon, wall);
        let resp = deliver(&mut t.gw, t.client_addr, retry, soon);
        let Action::Network(_, r) = &resp else { panic!("a response") };
        assert_eq!(r[0], messages::RESPONSE);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, soon);
        assert!(matches!(confirm, Action::Network(..)));
        // A spoofed source cannot use the client's cookie.
        let stolen = t.client.initiate(PeerId(0), soon, wall);
        let Action::Network(_, bytes) = stolen else { panic!() };
        let answer = t.gw.from_network("198.18.9.9:1000".parse().unwrap(), &bytes, soon);
        assert!(matches!(answer, Action::Network(_, c) if c[0] == messages::COOKIE_REPLY));
    }

    /// Runs a handshake from the client (at `wall`) to the end: its keepalive reached the
    /// gateway.
    fn handshake(t: &mut Pair, now: Instant, wall: SystemTime) {
        let init = t.client.initiate(PeerId(0), now, wall);
        let resp = deliver(&mut t.gw, t.client_addr, init, now);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, now);
        assert!(matches!(confirm, Action::Network(..)), "the client confirms");
        assert_eq!(deliver(&mut t.gw, t.client_addr, confirm, now), Action::None);
    }

    #[test]
    fn a_late_initiation_does_not_move_the_gateway_onto_a_session_the_client_lacks() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        handshake(&mut t, now, wall);
        // An initiation that never arrived (the client gave up on it)...
        let Action::Network(_, late) = t.client.initiate(PeerId(0), now, wall + Duration::from_secs(1)) else {
            panic!()
        };
        // ... and the client's next handshake completes.
        handshake(&mut t, now, wall + Duration::from_secs(2));
        // The late one turns up, but is older than the last accepted one.
        assert_eq!(t.gw.from_network(t.client_addr, &late, now), Action::None);
        // One held back by someone on the path and newer: the gateway answers it, and the
        // answer goes nowhere (the attacker keeps it).
        let Action::Network(_, held) = t.client.initiate(PeerId(0), now, wall + Duration::from_secs(3)) else {
            panic!()
        };
        assert!(matches!(t.gw.from_network(t.client_addr, &held, now), Action::Network(..)));
        // The gateway still sends on the session the client has.
        let pkt = ipv4([203, 0, 113, 10], [10, 77, 0, 2], b"still here");
        let d = t.gw.from_tunnel(&pkt, now, wall);
        assert_eq!(deliver(&mut t.client, t.gw_addr, d, now), Action::Tunnel(PeerId(0), pkt));
    }

    #[test]
    fn a_response_not_for_us_or_forged_leaves_the_pending_handshake_alone() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        let init = t.client.initiate(PeerId(0), now, wall);
        let Action::Network(_, resp) = deliver(&mut t.gw, t.client_addr, init, now) else { panic!("a response") };
        // Someone who saw the initiation's sender index answers with garbage for it: mac1
        // does not match.
        let mut garbage = resp.clone();
        garbage[20] ^= 1;
        assert_eq!(t.client.from_network(t.gw_addr, &garbage, now), Action::None);
        // mac1 only needs the client's public key: a forger changes the Noise part and
        // recomputes it. The client must find out by decrypting, and keep its initiation.
        let mut forged = resp.clone();
        forged[30] ^= 1;
        let m1 = messages::mac(&messages::mac1_key(&t.client.me.public), &forged[..60]);
        forged[60..76].copy_from_slice(&m1);
        assert_eq!(t.client.from_network(t.gw_addr, &forged, now), Action::None);
        assert!(matches!(t.client.from_network(t.gw_addr, &resp, now), Action::Network(..)), "the real answer");
    }

    #[test]
    fn indices_are_random_and_freed_with_what_they_named() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        // Initiations that go unanswered: each replaces the one before, and frees its index.
        let mut senders = Vec::new();
        for i in 0..50u64 {
            let Action::Network(_, m) = t.client.initiate(PeerId(0), now, wall + Duration::from_secs(i)) else {
                panic!()
            };
            senders.push(u32::from_le_bytes(m[4..8].try_into().unwrap()));
        }
        assert_eq!(t.client.indices_in_use(), 1, "abandoned initiations keep their indices");
        assert!(senders.windows(2).any(|w| w[1] != w[0].wrapping_add(1)), "sequential indices: {senders:?}");
        // Given up after REKEY_ATTEMPT_TIME: nothing is held.
        let _ = t.client.tick(now + Duration::from_secs(91), wall);
        assert_eq!(t.client.indices_in_use(), 0);
        // Sessions hold one each, up to three per peer however many handshakes there are.
        for i in 0..10u64 {
            let at = Duration::from_secs(100 + i);
            handshake(&mut t, now + at, wall + at);
        }
        assert_eq!(t.client.indices_in_use(), 2, "current and previous");
        assert_eq!(t.gw.indices_in_use(), 2);
        let client = t.gw.peer(PeerId(0)).unwrap().public;
        t.gw.remove_peer(&client).unwrap();
        assert_eq!(t.gw.indices_in_use(), 0);
    }

    #[test]
    fn a_peer_whose_addresses_overlap_another_peers_is_refused_live() {
        let mut t = pair();
        let cfg = |allowed: &str| PeerConfig {
            public: Identity::generate().unwrap().public,
            psk: None,
            allowed: vec![allowed.parse().unwrap()],
            endpoint: None,
            ..Default::default()
        };
        // The client holds 10.77.0.2/32: a newcomer claiming the prefix around it would
        // be able to send as the client.
        let e = t.gw.add_peer(cfg("10.77.0.0/24")).unwrap_err();
        assert!(matches!(e, PeerError::Overlap(_)), "{e:?}");
        assert_eq!(t.gw.peer_ids().len(), 2, "nothing added");
        assert!(Core::new(t.gw.me.clone(), vec![cfg("10.0.0.0/8"), cfg("10.77.0.9/32")], Instant::now()).is_err());
        assert_eq!(t.gw.add_peer(cfg("10.77.0.9/32")), Ok(PeerId(2)));
    }

    #[test]
    fn a_restarted_gateway_is_found_again_within_seconds() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |secs| now + Duration::from_secs(secs);
        handshake(&mut t, now, wall);
        // The gateway restarts: same keys and peers, no sessions.
        t.gw = Core::new(t.gw.me.clone(), t.gw.peers.values().map(|p| p.cfg.clone()).collect(), now).unwrap();
        let pkt = ipv4([10, 77, 0, 2], [203, 0, 113, 10], b"anyone there?");
        let d = t.client.from_tunnel(&pkt, at(1), wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, at(1)), Action::None, "a session it never had");
        // Nothing comes back: 15 s after the first unanswered packet, the client starts over
        // (not at the rekey, two minutes after the handshake).
        assert_eq!(t.client.tick(at(15), wall), vec![]);
        let mut due = t.client.tick(at(16), wall + Duration::from_secs(16));
        assert!(matches!(&due[..], [Action::Network(_, m)] if m[0] == messages::INITIATION), "{due:?}");
        let resp = deliver(&mut t.gw, t.client_addr, due.remove(0), at(16));
        let confirm = deliver(&mut t.client, t.gw_addr, resp, at(16));
        assert_eq!(deliver(&mut t.gw, t.client_addr, confirm, at(16)), Action::None);
        let d = t.client.from_tunnel(&pkt, at(17), wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, at(17)), Action::Tunnel(PeerId(0), pkt));
    }

    #[test]
    fn old_session_data_arriving_before_the_confirmation_keeps_the_new_session() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        handshake(&mut t, now, wall);
        // Sent on the current session, and still on the way while the client rekeys.
        let pkt = ipv4([10, 77, 0, 2], [203, 0, 113, 10], b"late");
        let Action::Network(_, old) = t.client.from_tunnel(&pkt, now, wall) else { panic!("sealed") };
        let init = t.client.initiate(PeerId(0), now, wall + Duration::from_secs(1));
        let resp = deliver(&mut t.gw, t.client_addr, init, now);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, now);
        // The old packet arrives between the gateway's answer and the client's confirmation.
        assert_eq!(t.gw.from_network(t.client_addr, &old, now), Action::Tunnel(PeerId(0), pkt.clone()));
        assert_eq!(deliver(&mut t.gw, t.client_addr, confirm, now), Action::None);
        // Both sides are on the new session.
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, now), Action::Tunnel(PeerId(0), pkt.clone()));
        let back = ipv4([203, 0, 113, 10], [10, 77, 0, 2], b"ok");
        let d = t.gw.from_tunnel(&back, now, wall);
        assert_eq!(deliver(&mut t.client, t.gw_addr, d, now), Action::Tunnel(PeerId(0), back));
    }
}
