//! A gateway and its client after a real handshake, driven by any sequence of inner
//! packets, waits, new handshakes and an attacker's datagrams to either side (replays,
//! single-byte tampering, spoofed inner sources, arbitrary bytes, responses forged with a
//! valid mac1, floods of initiations that put the gateway under load, so that handshakes
//! go through cookies). Whatever the sequence:
//! - nothing panics;
//! - every inner packet a side hands to its TUN was sent by the other side, and no more
//!   often than it was sent (no forgery, no replay);
//! - a replayed or tampered datagram, or an inner packet with a source the client may not
//!   use, is never handed to the TUN;
//! - while no session can have expired (the first 100 s), each packet sent goes through
//!   unchanged, at once;
//! - a forged response that reaches the client before the real one does not cost the
//!   client its handshake.
#![no_main]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ttp_tunnel::{
    handshake::{self, Identity},
    keys,
    messages::{mac, mac1_key, DATA, RESPONSE},
    protocol::{Action, Core, PeerConfig, PeerId},
};

const CLIENT_INNER: [u8; 4] = [10, 77, 0, 2];

#[derive(Arbitrary, Debug)]
enum Op {
    /// The client sends an inner packet from its own address.
    ClientSends { dst: [u8; 4], payload: Vec<u8> },
    /// The gateway sends an inner packet to the client.
    GatewaySends { src: [u8; 4], payload: Vec<u8> },
    /// The client sends an inner packet from an address that is not its own.
    Spoof { src: [u8; 4], payload: Vec<u8> },
    /// A datagram seen on the wire, sent again to the side it was for.
    Replay { which: u16 },
    /// The same with one byte changed.
    Tamper { which: u16, at: u16, xor: u8 },
    /// Any bytes, from one of a few addresses (the client's among them), to the gateway.
    Raw { from: u8, bytes: Vec<u8> },
    /// Any bytes, from the gateway's address or another, to the client (the initiator).
    RawToClient { from_gw: bool, bytes: Vec<u8> },
    /// The client starts a new handshake, and a response forged from the real one (one
    /// byte of its Noise part changed, mac1 made valid again: it only takes the client's
    /// public key) reaches the client before the real one.
    ForgedResponse { at: u8, xor: u8 },
    /// Time passes; both sides' timers run, and what they send is delivered.
    Wait { secs: u8 },
    /// The client starts a new handshake.
    Rehandshake,
    /// Initiations with a valid mac1 from an unknown key, from `n` spoofed sources: enough
    /// of them put the gateway under load (it answers with cookies, to nowhere).
    Flood { n: u8 },
}

/// Initiations from an attacker's key to the gateway, made once (each costs a
/// Diffie-Hellman): a flood replays them from many addresses.
fn flood_pool() -> &'static [Vec<u8>] {
    static POOL: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let attacker = keys::identity([9; 32]);
        let gw = keys::identity([1; 32]).public;
        (0..16u32)
            .map(|i| {
                let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(i));
                handshake::initiate(&attacker, &handshake::PeerKeys { public: gw, psk: None }, i, wall).unwrap().1
            })
            .collect()
    })
}

struct World {
    gw: Core,
    client: Core,
    t0: Instant,
    clock: Duration,
    /// Every datagram delivered so far: (to the gateway?, bytes).
    wire: Vec<(bool, Vec<u8>)>,
    /// Inner packets sent and not yet delivered, per direction (to the gateway?, packet).
    in_flight: HashMap<(bool, Vec<u8>), usize>,
}

fn gw_addr() -> SocketAddr {
    "192.0.2.1:51820".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "198.51.100.2:40000".parse().unwrap()
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(1400)];
    let len = (20 + payload.len() as u16).to_be_bytes();
    let mut p = vec![0x45, 0, len[0], len[1], 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

impl World {
    fn new() -> World {
        // Fixed keys, computed once: the run is about the protocol, not key generation.
        static KEYS: OnceLock<(Identity, Identity)> = OnceLock::new();
        let (g, c) = KEYS.get_or_init(|| (keys::identity([1; 32]), keys::identity([2; 32]))).clone();
        let t0 = Instant::now();
        let psk = Some([3; 32]);
        let gw = Core::new(
            g.clone(),
            vec![PeerConfig {
                public: c.public,
                psk,
                allowed: vec!["10.77.0.2/32".parse().unwrap()],
                endpoint: None,
                ..Default::default()
            }],
            t0,
        )
        .unwrap();
        let client = Core::new(
            c,
            vec![PeerConfig {
                public: g.public,
                psk,
                allowed: vec!["0.0.0.0/0".parse().unwrap()],
                endpoint: Some(gw_addr()),
                ..Default::default()
            }],
            t0,
        )
        .unwrap();
        let mut w = World { gw, client, t0, clock: Duration::ZERO, wire: Vec::new(), in_flight: HashMap::new() };
        let init = w.client.initiate(PeerId(0), t0, w.wall());
        w.exchange(false, init);
        w
    }

    fn now(&self) -> Instant {
        self.t0 + self.clock
    }

    /// Wall-clock time for handshake timestamps: moves with the clock, and with every
    /// datagram by more than a timestamp's grain (2^24 ns) so that a new handshake is
    /// always newer.
    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000)
            + self.clock
            + Duration::from_millis(20 * self.wire.len() as u64)
    }

    /// Delivers one datagram to a side and returns what that side does.
    fn deliver(&mut self, to_gw: bool, d: Vec<u8>) -> Action {
        let now = self.now();
        let a = if to_gw {
            self.gw.from_network(client_addr(), &d, now)
        } else {
            self.client.from_network(gw_addr(), &d, now)
        };
        self.wire.push((to_gw, d));
        a
    }

    /// Carries out `a` (done by the gateway if `by_gw`): datagrams go to the other side,
    /// and its answers back, until nothing more is sent. Returns the first hop's outcome.
    fn exchange(&mut self, by_gw: bool, a: Action) -> Option<Action> {
        let (mut a, mut by_gw, mut first) = (a, by_gw, None);
        for _ in 0..8 {
            let next = match a {
                Action::Network(_, d) => self.deliver(!by_gw, d),
                Action::Tunnel(_, p) => {
                    self.handed_to_tun(by_gw, &p);
                    return first.or(Some(Action::Tunnel(PeerId(0), p)));
                }
                Action::None => return first.or(Some(Action::None)),
            };
            if first.is_none() {
                first = Some(match &next {
                    Action::Tunnel(i, p) => Action::Tunnel(*i, p.clone()),
                    Action::Network(to, d) => Action::Network(*to, d.clone()),
                    Action::None => Action::None,
                });
            }
            (a, by_gw) = (next, !by_gw);
        }
        first
    }

    /// A side gave `p` to its TUN: the other side must have sent it.
    fn handed_to_tun(&mut self, at_gw: bool, p: &[u8]) {
        let n = self.in_flight.get_mut(&(at_gw, p.to_vec())).filter(|n| **n > 0);
        let n = n.unwrap_or_else(|| panic!("the {} delivered a packet nobody sent: {p:02x?}", side(at_gw)));
        *n -= 1;
    }

    fn send(&mut self, from_gw: bool, packet: Vec<u8>, must_arrive: bool) {
        let (now, wall) = (self.now(), self.wall());
        let a =
            if from_gw { self.gw.from_tunnel(&packet, now, wall) } else { self.client.from_tunnel(&packet, now, wall) };
        let is_data = matches!(&a, Action::Network(_, d) if d[0] == DATA);
        if must_arrive {
            *self.in_flight.entry((!from_gw, packet.clone())).or_default() += 1;
        }
        let first = self.exchange(from_gw, a);
        let strict = must_arrive && is_data && self.clock < Duration::from_secs(100);
        if strict {
            assert!(
                matches!(first, Some(Action::Tunnel(_, ref p)) if *p == packet),
                "lost on the way to the {}",
                side(!from_gw)
            );
        }
        if !must_arrive {
            assert!(!matches!(first, Some(Action::Tunnel(..))), "a spoofed inner source reached the gateway's TUN");
        }
    }

    /// An attacker's datagram: never handed to a TUN, and nothing is sent on.
    fn attack(&mut self, to_gw: bool, d: Vec<u8>) {
        let a = self.deliver(to_gw, d);
        assert!(!matches!(a, Action::Tunnel(..)), "the {} accepted a replayed or changed datagram", side(to_gw));
    }
}

fn side(gw: bool) -> &'static str {
    if gw {
        "gateway"
    } else {
        "client"
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World::new();
    for op in ops.into_iter().take(64) {
        match op {
            Op::ClientSends { dst, payload } => w.send(false, ipv4(CLIENT_INNER, dst, &payload), true),
            Op::GatewaySends { src, payload } => w.send(true, ipv4(src, CLIENT_INNER, &payload), true),
            Op::Spoof { src, payload } if src != CLIENT_INNER => {
                w.send(false, ipv4(src, [8, 8, 8, 8], &payload), false)
            }
            Op::Spoof { .. } => {}
            Op::Replay { which } if !w.wire.is_empty() => {
                let (to_gw, d) = w.wire[which as usize % w.wire.len()].clone();
                w.attack(to_gw, d);
            }
            Op::Tamper { which, at, xor } if !w.wire.is_empty() && xor != 0 => {
                let (to_gw, mut d) = w.wire[which as usize % w.wire.len()].clone();
                let at = at as usize % d.len();
                d[at] ^= xor;
                w.attack(to_gw, d);
            }
            Op::Replay { .. } | Op::Tamper { .. } => {}
            Op::Raw { from, bytes } => {
                let src = [client_addr(), gw_addr(), "203.0.113.9:1".parse().unwrap()][from as usize % 3];
                let now = w.now();
                let a = w.gw.from_network(src, &bytes, now);
                assert!(!matches!(a, Action::Tunnel(..)), "arbitrary bytes reached the gateway's TUN");
            }
            Op::Wait { secs } => {
                w.clock += Duration::from_secs(secs.into());
                let (now, wall) = (w.now(), w.wall());
                for a in w.client.tick(now, wall) {
                    w.exchange(false, a);
                }
                for a in w.gw.tick(now, wall) {
                    w.exchange(true, a);
                }
            }
            Op::Flood { n } => {
                let now = w.now();
                for i in 0..u32::from(n) {
                    let src = SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 1000));
                    let d = &flood_pool()[i as usize % 16];
                    let a = w.gw.from_network(src, d, now);
                    assert!(!matches!(a, Action::Tunnel(..)), "a flood reached the gateway's TUN");
                }
            }
            Op::RawToClient { from_gw, bytes } => {
                let src = if from_gw { gw_addr() } else { "203.0.113.9:1".parse().unwrap() };
                let now = w.now();
                let a = w.client.from_network(src, &bytes, now);
                assert!(!matches!(a, Action::Tunnel(..)), "arbitrary bytes reached the client's TUN");
            }
            Op::ForgedResponse { at, xor } if xor != 0 => {
                let (now, wall) = (w.now(), w.wall());
                let Action::Network(_, init) = w.client.initiate(PeerId(0), now, wall) else { return };
                let Action::Network(_, resp) = w.deliver(true, init) else { return };
                if resp[0] != RESPONSE {
                    return; // a cookie reply: the gateway is under load
                }
                let mut forged = resp.clone();
                forged[12 + usize::from(at) % 48] ^= xor;
                let client_public = keys::identity([2; 32]).public;
                let m1 = mac(&mac1_key(&client_public), &forged[..60]);
                forged[60..76].copy_from_slice(&m1);
                w.attack(false, forged);
                let confirm = w.deliver(false, resp);
                assert!(matches!(confirm, Action::Network(..)), "a forged response cost the client its handshake");
                w.exchange(false, confirm);
            }
            Op::ForgedResponse { .. } => {}
            Op::Rehandshake => {
                let (now, wall) = (w.now(), w.wall());
                let a = w.client.initiate(PeerId(0), now, wall);
                w.exchange(false, a);
            }
        }
    }
});
