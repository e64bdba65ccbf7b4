//! The protocol core: peers, handshakes, sessions and their checks, driven by datagrams
//! from the network and packets from the TUN, with time as an argument. It does no I/O:
//! every call returns what to send where ([`Action`]), and the device does it.
//!
//! Checks, in order of cost, for each datagram: parse; for handshakes, mac1, then (under
//! load) mac2 or a cookie reply, then the per-source rate limit, then Diffie-Hellman; for
//! data, the receiver index, the replay window, the AEAD, and finally the inner packet's
//! source address against the peer's allowed addresses. A peer's endpoint follows its
//! latest authenticated datagram (roaming).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;

use super::{
    cookie::{CookieChecker, CookieJar},
    handshake::{self, Identity, Initiator, PeerKeys},
    messages::{self, Message},
    ratelimit::RateLimiter,
    session::{Session, SessionError},
    timers::{Due, Timers},
};

/// A peer as configured.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub public: [u8; 32],
    pub psk: Option<[u8; 32]>,
    /// Inner addresses the peer may use as source (and that are routed to it).
    pub allowed: Vec<IpNet>,
    /// Where to reach it first (a client's gateway); learnt from its traffic otherwise.
    pub endpoint: Option<SocketAddr>,
}

/// Why datagrams or packets were dropped, per peer (for `ttp status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub replay: u64,
    pub decrypt: u64,
    pub source: u64,
}

struct Peer {
    cfg: PeerConfig,
    endpoint: Option<SocketAddr>,
    session: Option<Session>,
    /// The session before the current one, still good for receiving: packets sealed with
    /// it may still be in flight, and when both sides initiate at once each ends up
    /// sending on the session the other one replaced (WireGuard keeps the previous
    /// keypair for the same reasons).
    previous: Option<Session>,
    /// A session we answered a handshake for, not used for sending until the initiator's
    /// first data packet on it arrives (its keepalive, at once): until then we cannot know
    /// the initiator has it. A delayed or replayed initiation therefore never moves our
    /// sending onto a session the peer never completed (WireGuard's "next" keypair).
    next: Option<Session>,
    pending: Option<(Initiator, [u8; 16])>,
    jar: CookieJar,
    timers: Timers,
    newest_initiation: Option<[u8; 12]>,
    drops: Drops,
    traffic: Traffic,
}

impl Peer {
    fn new(cfg: PeerConfig, rekey_after: Option<Duration>) -> Peer {
        Peer {
            endpoint: cfg.endpoint,
            jar: CookieJar::new(&cfg.public),
            cfg,
            session: None,
            previous: None,
            next: None,
            pending: None,
            timers: Timers::with_rekey_after(rekey_after),
            newest_initiation: None,
            drops: Drops::default(),
            traffic: Traffic::default(),
        }
    }
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

/// Why a peer could not be added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("a peer with this public key exists already")]
    Exists,
    #[error("this is the gateway's own public key")]
    Own,
    #[error("no peer has this public key")]
    Unknown,
}

/// What the device must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram to this address.
    Network(SocketAddr, Vec<u8>),
    /// Give this packet, from this peer (by index in the configuration), to the TUN.
    Tunnel(usize, Vec<u8>),
    /// Nothing to do (the datagram was consumed or dropped; counters say which).
    None,
}

pub struct Core {
    me: Identity,
    peers: Vec<Peer>,
    /// Our session index -> peer.
    index: HashMap<u32, usize>,
    next_index: u32,
    checker: CookieChecker,
    limiter: RateLimiter,
    /// Sessions we initiate are renewed after this (default: REKEY_AFTER_TIME).
    rekey_after: Option<Duration>,
}

impl Core {
    pub fn new(me: Identity, peers: Vec<PeerConfig>, now: Instant) -> Core {
        let checker = CookieChecker::new(&me.public, now);
        let peers = peers.into_iter().map(|p| Peer::new(p, None)).collect();
        Core {
            me,
            peers,
            index: HashMap::new(),
            next_index: 1,
            checker,
            limiter: RateLimiter::new(now),
            rekey_after: None,
        }
    }

    /// Renews the sessions we initiate after `d` instead of two minutes (the config's
    /// `rekey-after`; tests use a few seconds to watch rekeys happen).
    pub fn with_rekey_after(mut self, d: Option<Duration>) -> Core {
        self.rekey_after = d;
        for p in &mut self.peers {
            p.timers = Timers::with_rekey_after(d);
        }
        self
    }

    pub fn drops(&self, peer: usize) -> Option<&Drops> {
        self.peers.get(peer).map(|p| &p.drops)
    }

    pub fn traffic(&self, peer: usize) -> Option<&Traffic> {
        self.peers.get(peer).map(|p| &p.traffic)
    }

    pub fn endpoint(&self, peer: usize) -> Option<SocketAddr> {
        self.peers.get(peer).and_then(|p| p.endpoint)
    }

    fn new_index(&mut self, peer: usize) -> u32 {
        let i = self.next_index;
        self.next_index = self.next_index.wrapping_add(1).max(1);
        self.index.insert(i, peer);
        i
    }

    /// Starts a handshake with `peer` (to its known endpoint).
    pub fn initiate(&mut self, peer: usize, now: Instant, wall: SystemTime) -> Action {
        let Some(to) = self.peers.get(peer).and_then(|p| p.endpoint) else { return Action::None };
        let sender = self.new_index(peer);
        let p = &mut self.peers[peer];
        let keys = PeerKeys { public: p.cfg.public, psk: p.cfg.psk };
        let Ok((init, mut msg)) = handshake::initiate(&self.me, &keys, sender, wall) else { return Action::None };
        p.jar.stamp(&mut msg, now);
        let mut mac1 = [0u8; 16];
        mac1.copy_from_slice(&msg[msg.len() - 32..msg.len() - 16]);
        p.pending = Some((init, mac1));
        p.timers.initiation_sent(now);
        Action::Network(to, msg)
    }

    /// A packet from the TUN: sealed for the peer whose allowed addresses hold its
    /// destination. Without a session, a handshake goes out first (the packet is dropped:
    /// the application retransmits).
    pub fn from_tunnel(&mut self, packet: &[u8], now: Instant, wall: SystemTime) -> Action {
        let Some(dst) = destination(packet) else { return Action::None };
        let Some(peer) = self.route(dst) else { return Action::None };
        let p = &mut self.peers[peer];
        match (p.session.as_mut(), p.endpoint) {
            (Some(s), Some(to)) => match s.seal(packet) {
                Ok(d) => {
                    p.timers.data_sent(now);
                    p.traffic.tx_bytes += packet.len() as u64;
                    Action::Network(to, d)
                }
                Err(_) => self.initiate(peer, now, wall),
            },
            _ if p.pending.is_none() => self.initiate(peer, now, wall),
            _ => Action::None,
        }
    }

    /// A datagram from the network.
    pub fn from_network(&mut self, src: SocketAddr, datagram: &[u8], now: Instant) -> Action {
        match messages::parse(datagram) {
            Ok(Message::Initiation(i)) => {
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
                let sender = self.next_index;
                let peers = &self.peers;
                let found = handshake::respond(&self.me, &i, sender, |pk| {
                    let p = peers.iter().find(|p| &p.cfg.public == pk)?;
                    Some((PeerKeys { public: p.cfg.public, psk: p.cfg.psk }, p.newest_initiation))
                });
                let Ok(acc) = found else { return Action::None };
                let Some(peer) = self.peers.iter().position(|p| p.cfg.public == acc.peer_public) else {
                    return Action::None;
                };
                let idx = self.new_index(peer);
                debug_assert_eq!(idx, sender);
                let p = &mut self.peers[peer];
                if let Some(unconfirmed) = p.next.replace(acc.session) {
                    self.index.remove(&unconfirmed.local);
                }
                p.newest_initiation = Some(acc.timestamp);
                p.endpoint = Some(src);
                Action::Network(src, acc.response)
            }
            Ok(Message::Response(r)) => {
                // Checked before the pending handshake is touched: a response that is not
                // for us must not cost it (only a holder of our public key can make one).
                if !r.macs.mac1_ok(&self.me.public) {
                    return Action::None;
                }
                let Some(&peer) = self.index.get(&r.receiver) else { return Action::None };
                let p = &mut self.peers[peer];
                let Some((init, mac1)) = p.pending.take() else { return Action::None };
                if init.sender != r.receiver {
                    p.pending = Some((init, mac1));
                    return Action::None;
                }
                match init.finish(&self.me, &r) {
                    Ok(s) => {
                        self.replace_session(peer, s);
                        let p = &mut self.peers[peer];
                        p.endpoint = Some(src);
                        p.timers.session_started(now, true);
                        p.traffic.handshake_at = Some(now);
                        // Confirm the session to the responder at once (an empty packet).
                        match p.session.as_mut().map(|s| s.seal(&[])) {
                            Some(Ok(keepalive)) => {
                                p.timers.keepalive_sent(now);
                                Action::Network(src, keepalive)
                            }
                            _ => Action::None,
                        }
                    }
                    Err(_) => Action::None,
                }
            }
            Ok(Message::CookieReply(c)) => {
                let Some(&peer) = self.index.get(&c.receiver) else { return Action::None };
                let p = &mut self.peers[peer];
                if let Some((_, mac1)) = &p.pending {
                    let mac1 = *mac1;
                    if p.jar.accept(&c, &mac1, now).is_ok() {
                        p.timers.cookie_received();
                    }
                }
                Action::None
            }
            Ok(Message::Data(d)) => {
                let Some(&peer) = self.index.get(&d.receiver) else { return Action::None };
                let p = &mut self.peers[peer];
                let confirming = p.next.as_ref().is_some_and(|s| s.local == d.receiver);
                let s = match (p.session.as_mut(), p.previous.as_mut(), p.next.as_mut()) {
                    (Some(s), _, _) | (_, Some(s), _) | (_, _, Some(s)) if s.local == d.receiver => s,
                    _ => return Action::None,
                };
                match s.open(&d) {
                    Ok(packet) => {
                        // The initiator has the session: it becomes the current one.
                        if let Some(s) = confirming.then(|| self.peers[peer].next.take()).flatten() {
                            self.replace_session(peer, s);
                            let p = &mut self.peers[peer];
                            p.timers.session_started(now, false);
                            p.traffic.handshake_at = Some(now);
                        }
                        let p = &mut self.peers[peer];
                        p.endpoint = Some(src); // roaming: the latest authenticated source
                        p.timers.data_received(now);
                        if packet.is_empty() {
                            return Action::None; // keepalive
                        }
                        let allowed = source(&packet).is_some_and(|ip| p.cfg.allowed.iter().any(|n| n.contains(&ip)));
                        if !allowed {
                            p.drops.source += 1;
                            return Action::None;
                        }
                        p.traffic.rx_bytes += packet.len() as u64;
                        Action::Tunnel(peer, packet)
                    }
                    Err(SessionError::Replay) => {
                        p.drops.replay += 1;
                        Action::None
                    }
                    Err(_) => {
                        p.drops.decrypt += 1;
                        Action::None
                    }
                }
            }
            Err(_) => Action::None,
        }
    }

    /// Timer work for every peer: handshakes to (re)send, keepalives, expiries.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> Vec<Action> {
        let mut out = Vec::new();
        for peer in 0..self.peers.len() {
            let sent = self.peers[peer].session.as_ref().map_or(0, Session::sent);
            match self.peers[peer].timers.due(now, sent) {
                Some(Due::Initiate) => out.push(self.initiate(peer, now, wall)),
                Some(Due::Keepalive) => {
                    let p = &mut self.peers[peer];
                    if let (Some(s), Some(to)) = (p.session.as_mut(), p.endpoint) {
                        if let Ok(k) = s.seal(&[]) {
                            p.timers.keepalive_sent(now);
                            out.push(Action::Network(to, k));
                        }
                    }
                }
                Some(Due::Expire) => {
                    let p = &mut self.peers[peer];
                    for gone in [p.session.take(), p.previous.take(), p.next.take()].into_iter().flatten() {
                        self.index.remove(&gone.local);
                    }
                }
                Some(Due::GiveUp) => self.peers[peer].pending = None,
                None => {}
            }
        }
        out.retain(|a| *a != Action::None);
        out
    }

    /// Adds a peer (a running gateway's `ttp tunnel peer add`). Refused if its key is
    /// already a peer's, or is ours.
    pub fn add_peer(&mut self, cfg: PeerConfig) -> Result<usize, PeerError> {
        if cfg.public == self.me.public {
            return Err(PeerError::Own);
        }
        if self.peers.iter().any(|p| p.cfg.public == cfg.public) {
            return Err(PeerError::Exists);
        }
        self.peers.push(Peer::new(cfg, self.rekey_after));
        Ok(self.peers.len() - 1)
    }

    /// Removes a peer: its sessions end at once (their packets are unknown from now on).
    /// Later peers move down by one index.
    pub fn remove_peer(&mut self, public: &[u8; 32]) -> Result<(), PeerError> {
        let gone = self.peers.iter().position(|p| &p.cfg.public == public).ok_or(PeerError::Unknown)?;
        self.peers.remove(gone);
        self.index.retain(|_, peer| *peer != gone);
        for peer in self.index.values_mut() {
            if *peer > gone {
                *peer -= 1;
            }
        }
        Ok(())
    }

    /// The peers' public keys, in index order.
    pub fn public_keys(&self) -> Vec<[u8; 32]> {
        self.peers.iter().map(|p| p.cfg.public).collect()
    }

    /// Installs a new session; the current one becomes the previous (receive only), and
    /// the one before that stops routing (a late packet of it is simply unknown).
    fn replace_session(&mut self, peer: usize, s: Session) {
        let p = &mut self.peers[peer];
        let old = p.session.replace(s);
        if let Some(older) = std::mem::replace(&mut p.previous, old) {
            self.index.remove(&older.local);
        }
    }

    fn route(&self, dst: IpAddr) -> Option<usize> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.cfg.allowed.iter().filter(|n| n.contains(&dst)).map(|n| (n.prefix_len(), i)).max())
            .max()
            .map(|(_, i)| i)
    }
}

/// The destination of an IPv4 or IPv6 packet.
fn destination(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?)),
        6 if p.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?)),
        _ => None,
    }
}

/// The source of an IPv4 or IPv6 packet.
fn source(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?)),
        6 if p.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal IPv4 header from `src` to `dst` with `payload`.
    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
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
                PeerConfig { public: c.public, psk, allowed: vec!["10.77.0.2/32".parse().unwrap()], endpoint: None },
                PeerConfig {
                    public: other.public,
                    psk: None,
                    allowed: vec!["10.77.0.3/32".parse().unwrap()],
                    endpoint: None,
                },
            ],
            now,
        );
        let client = Core::new(
            c,
            vec![PeerConfig {
                public: g.public,
                psk,
                allowed: vec!["0.0.0.0/0".parse().unwrap()],
                endpoint: Some(gw_addr),
            }],
            now,
        );
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
        assert_eq!(t.gw.from_network(t.client_addr, &bytes, now), Action::Tunnel(0, pkt.clone()));
        // The same datagram again: dropped and counted.
        assert_eq!(t.gw.from_network(t.client_addr, &bytes, now), Action::None);
        assert_eq!(t.gw.drops(0).unwrap().replay, 1);
        // Roaming: the client moves; the gateway answers at the new address.
        let moved: SocketAddr = "203.0.113.99:50000".parse().unwrap();
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert!(matches!(deliver(&mut t.gw, moved, d, now), Action::Tunnel(0, _)));
        assert_eq!(t.gw.endpoint(0), Some(moved));
        let reply = t.gw.from_tunnel(&ipv4([203, 0, 113, 10], [10, 77, 0, 2], b"200 OK"), now, wall);
        assert!(matches!(reply, Action::Network(to, _) if to == moved));
        // Another peer's inner address: dropped and counted.
        let spoof = t.client.from_tunnel(&ipv4([10, 77, 0, 3], [203, 0, 113, 10], b"x"), now, wall);
        assert_eq!(deliver(&mut t.gw, moved, spoof, now), Action::None);
        assert_eq!(t.gw.drops(0).unwrap().source, 1);
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
            let cfg = PeerConfig { public: peer.public, psk: None, allowed: vec![allowed.parse().unwrap()], endpoint };
            Core::new(me.clone(), vec![cfg], now)
        };
        let mut a = side(&a_id, &b_id, "10.77.0.2/32", Some(b_addr));
        let mut b = side(&b_id, &a_id, "10.77.0.1/32", Some(a_addr));
        // Both initiations cross on the wire; each side answers the other's, then gets
        // the answer to its own, and confirms it.
        let (init_a, init_b) = (a.initiate(0, now, wall), b.initiate(0, now, wall));
        let resp_b = deliver(&mut b, a_addr, init_a, now);
        let resp_a = deliver(&mut a, b_addr, init_b, now);
        let confirm_a = deliver(&mut a, b_addr, resp_b, now);
        let confirm_b = deliver(&mut b, a_addr, resp_a, now);
        let _ = deliver(&mut b, a_addr, confirm_a, now);
        let _ = deliver(&mut a, b_addr, confirm_b, now);
        let ab = ipv4([10, 77, 0, 1], [10, 77, 0, 2], b"ping");
        let ba = ipv4([10, 77, 0, 2], [10, 77, 0, 1], b"pong");
        let d = a.from_tunnel(&ab, now, wall);
        assert_eq!(deliver(&mut b, a_addr, d, now), Action::Tunnel(0, ab.clone()), "a to b");
        let d = b.from_tunnel(&ba, now, wall);
        assert_eq!(deliver(&mut a, b_addr, d, now), Action::Tunnel(0, ba.clone()), "b to a");
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
        let client_pub = t.gw.public_keys()[0];
        // A third peer joins; the first one's session is untouched.
        let newcomer = Identity::generate().unwrap();
        let cfg =
            |public| PeerConfig { public, psk: None, allowed: vec!["10.77.0.4/32".parse().unwrap()], endpoint: None };
        assert_eq!(t.gw.add_peer(cfg(newcomer.public)), Ok(2));
        assert_eq!(t.gw.add_peer(cfg(newcomer.public)), Err(PeerError::Exists));
        assert_eq!(t.gw.add_peer(cfg(t.gw.me.public)), Err(PeerError::Own));
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert!(matches!(deliver(&mut t.gw, t.client_addr, d, now), Action::Tunnel(0, _)));
        // The client is removed: its session's packets are unknown at once, and a new
        // handshake from it finds no peer.
        assert_eq!(t.gw.remove_peer(&client_pub), Ok(()));
        assert_eq!(t.gw.remove_peer(&client_pub), Err(PeerError::Unknown));
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, now), Action::None);
        let again = t.client.initiate(0, now + Duration::from_secs(1), wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, again, now + Duration::from_secs(1)), Action::None);
        assert_eq!(t.gw.public_keys(), vec![t.gw.peers[0].cfg.public, newcomer.public]);
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
        let retry = t.client.initiate(0, soon, wall);
        let resp = deliver(&mut t.gw, t.client_addr, retry, soon);
        let Action::Network(_, r) = &resp else { panic!("a response") };
        assert_eq!(r[0], messages::RESPONSE);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, soon);
        assert!(matches!(confirm, Action::Network(..)));
        // A spoofed source cannot use the client's cookie.
        let stolen = t.client.initiate(0, soon, wall);
        let Action::Network(_, bytes) = stolen else { panic!() };
        let answer = t.gw.from_network("198.18.9.9:1000".parse().unwrap(), &bytes, soon);
        assert!(matches!(answer, Action::Network(_, c) if c[0] == messages::COOKIE_REPLY));
    }

    /// Runs a handshake from the client (at `wall`) to the end: its keepalive reached the
    /// gateway.
    fn handshake(t: &mut Pair, now: Instant, wall: SystemTime) {
        let init = t.client.initiate(0, now, wall);
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
        let Action::Network(_, late) = t.client.initiate(0, now, wall + Duration::from_secs(1)) else { panic!() };
        // ... and the client's next handshake completes.
        handshake(&mut t, now, wall + Duration::from_secs(2));
        // The late one turns up, but is older than the last accepted one.
        assert_eq!(t.gw.from_network(t.client_addr, &late, now), Action::None);
        // One held back by someone on the path and newer: the gateway answers it, and the
        // answer goes nowhere (the attacker keeps it).
        let Action::Network(_, held) = t.client.initiate(0, now, wall + Duration::from_secs(3)) else { panic!() };
        assert!(matches!(t.gw.from_network(t.client_addr, &held, now), Action::Network(..)));
        // The gateway still sends on the session the client has.
        let pkt = ipv4([203, 0, 113, 10], [10, 77, 0, 2], b"still here");
        let d = t.gw.from_tunnel(&pkt, now, wall);
        assert_eq!(deliver(&mut t.client, t.gw_addr, d, now), Action::Tunnel(0, pkt));
    }

    #[test]
    fn a_response_not_for_us_leaves_the_pending_handshake_alone() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        let init = t.client.initiate(0, now, wall);
        let Action::Network(_, resp) = deliver(&mut t.gw, t.client_addr, init, now) else { panic!("a response") };
        // Someone who saw the initiation's sender index answers with garbage for it.
        let mut forged = resp.clone();
        forged[20] ^= 1;
        assert_eq!(t.client.from_network(t.gw_addr, &forged, now), Action::None);
        // The real answer still completes the handshake.
        assert!(matches!(t.client.from_network(t.gw_addr, &resp, now), Action::Network(..)));
    }

    #[test]
    fn a_restarted_gateway_is_found_again_within_seconds() {
        let mut t = pair();
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |secs| now + Duration::from_secs(secs);
        handshake(&mut t, now, wall);
        // The gateway restarts: same keys and peers, no sessions.
        t.gw = Core::new(t.gw.me.clone(), t.gw.peers.iter().map(|p| p.cfg.clone()).collect(), now);
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
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, at(17)), Action::Tunnel(0, pkt));
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
        let init = t.client.initiate(0, now, wall + Duration::from_secs(1));
        let resp = deliver(&mut t.gw, t.client_addr, init, now);
        let confirm = deliver(&mut t.client, t.gw_addr, resp, now);
        // The old packet arrives between the gateway's answer and the client's confirmation.
        assert_eq!(t.gw.from_network(t.client_addr, &old, now), Action::Tunnel(0, pkt.clone()));
        assert_eq!(deliver(&mut t.gw, t.client_addr, confirm, now), Action::None);
        // Both sides are on the new session.
        let d = t.client.from_tunnel(&pkt, now, wall);
        assert_eq!(deliver(&mut t.gw, t.client_addr, d, now), Action::Tunnel(0, pkt.clone()));
        let back = ipv4([203, 0, 113, 10], [10, 77, 0, 2], b"ok");
        let d = t.gw.from_tunnel(&back, now, wall);
        assert_eq!(deliver(&mut t.client, t.gw_addr, d, now), Action::Tunnel(0, back));
    }
}
