//! The core against a WireGuard initiator written here from the WireGuard paper (section
//! 5.4) with plain primitives (BLAKE2s, HMAC, X25519, ChaCha20-Poly1305), not snow: if
//! the core's handshake, key derivation, counters or padding differed from WireGuard's
//! by a byte, this side could not complete the handshake or open the gateway's data. The
//! namespace tests do the same against wireguard-go and boringtun themselves.

use std::{
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use blake2::{digest::Digest, Blake2s256};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    ChaCha20Poly1305, Nonce,
};
use hmac::{Mac, SimpleHmac};
use ttp_tunnel::{
    handshake::{timestamp, Identity, IDENTIFIER, PARAMS},
    messages::{mac, mac1_key},
    protocol::{Action, Core, PeerConfig, PeerId},
};
use x25519_dalek::{PublicKey, StaticSecret};

fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <SimpleHmac<Blake2s256> as Mac>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The paper's KDFn: HKDF with HMAC-BLAKE2s.
fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let t0 = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut prev: Vec<u8> = Vec::new();
    for (i, o) in out.iter_mut().enumerate() {
        *o = hmac(&t0, &[&prev, &[i as u8 + 1]]);
        prev = o.to_vec();
    }
    out
}

fn aead(key: &[u8; 32], counter: u64, plain: &[u8], ad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    ChaCha20Poly1305::new(key.into()).encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: ad }).unwrap()
}

fn open(key: &[u8; 32], counter: u64, sealed: &[u8], ad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    ChaCha20Poly1305::new(key.into())
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: sealed, aad: ad })
        .expect("the core's message opens under WireGuard's keys")
}

fn dh(private: &StaticSecret, public: &[u8; 32]) -> [u8; 32] {
    private.diffie_hellman(&PublicKey::from(*public)).to_bytes()
}

/// An IPv4 packet of `len` bytes from `src` to `dst` (the rest zeros).
fn ipv4(src: [u8; 4], dst: [u8; 4], len: u16) -> Vec<u8> {
    let mut p = vec![0u8; usize::from(len)];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// The initiator's side of one handshake (5.4.2, 5.4.3): its index and, once the
/// response is checked, the session's keys and the gateway's index.
struct Session {
    sender_i: u32,
    sender_r: u32,
    send: [u8; 32],
    recv: [u8; 32],
}

/// A WireGuard initiator with static key `s_priv` and pre-shared key `psk`, completing a
/// handshake with `core` (whose public key is `gw`) from `from` with ephemeral `e_priv`,
/// index `sender_i` and timestamp `wall`, as the paper has it.
#[allow(clippy::too_many_arguments)]
fn handshake(
    core: &mut Core,
    gw: &[u8; 32],
    s_priv: &StaticSecret,
    psk: &[u8; 32],
    e_priv: &StaticSecret,
    sender_i: u32,
    from: SocketAddr,
    (now, wall): (Instant, SystemTime),
) -> Session {
    let s_pub = PublicKey::from(s_priv).to_bytes();
    let e_pub = PublicKey::from(e_priv).to_bytes();
    let c = hash(&[PARAMS.as_bytes()]);
    let h = hash(&[&c, IDENTIFIER]);
    let h = hash(&[&h, gw]);
    let [c] = kdf::<1>(&c, &e_pub);
    let h = hash(&[&h, &e_pub]);
    let [c, k] = kdf::<2>(&c, &dh(e_priv, gw));
    let enc_static = aead(&k, 0, &s_pub, &h);
    let h = hash(&[&h, &enc_static]);
    let [c, k] = kdf::<2>(&c, &dh(s_priv, gw));
    let enc_time = aead(&k, 0, &timestamp(wall), &h);
    let h = hash(&[&h, &enc_time]);
    let mut msg = vec![1, 0, 0, 0];
    msg.extend_from_slice(&sender_i.to_le_bytes());
    msg.extend_from_slice(&e_pub);
    msg.extend_from_slice(&enc_static);
    msg.extend_from_slice(&enc_time);
    let m1 = mac(&mac1_key(gw), &msg);
    msg.extend_from_slice(&m1);
    msg.extend_from_slice(&[0; 16]);
    assert_eq!(msg.len(), 148);

    let Action::Network(to, resp) = core.from_network(from, &msg, now) else { panic!("the core answers") };
    assert_eq!(to, from);

    // The response, checked the way the initiator does.
    assert_eq!((resp.len(), &resp[..4]), (92, &[2u8, 0, 0, 0][..]));
    let sender_r = u32::from_le_bytes(resp[4..8].try_into().unwrap());
    assert_eq!(u32::from_le_bytes(resp[8..12].try_into().unwrap()), sender_i);
    assert_eq!(resp[60..76], mac(&mac1_key(&s_pub), &resp[..60]), "mac1");
    assert_eq!(resp[76..92], [0; 16], "no cookie: mac2 is zero");
    let e_r: [u8; 32] = resp[12..44].try_into().unwrap();
    let [c] = kdf::<1>(&c, &e_r);
    let h = hash(&[&h, &e_r]);
    let [c] = kdf::<1>(&c, &dh(e_priv, &e_r));
    let [c] = kdf::<1>(&c, &dh(s_priv, &e_r));
    let [c, tau, k] = kdf::<3>(&c, psk);
    let h = hash(&[&h, &tau]);
    assert!(open(&k, 0, &resp[44..60], &h).is_empty());
    let [send, recv] = kdf::<2>(&c, &[]);
    Session { sender_i, sender_r, send, recv }
}

impl Session {
    /// A data message (5.4.6) carrying `packet`, padded to 16 bytes as WireGuard pads it.
    fn data(&self, counter: u64, packet: &[u8]) -> Vec<u8> {
        let mut padded = packet.to_vec();
        padded.resize(packet.len().div_ceil(16) * 16, 0);
        let mut data = vec![4, 0, 0, 0];
        data.extend_from_slice(&self.sender_r.to_le_bytes());
        data.extend_from_slice(&counter.to_le_bytes());
        data.extend_from_slice(&aead(&self.send, counter, &padded, &[]));
        data
    }

    /// Whether the core's data message `d` is for this session (by the index it names),
    /// and if so what it carries, padding included.
    fn open(&self, d: &[u8]) -> Option<Vec<u8>> {
        assert_eq!(&d[..4], &[4u8, 0, 0, 0][..]);
        if u32::from_le_bytes(d[4..8].try_into().unwrap()) != self.sender_i {
            return None;
        }
        let counter = u64::from_le_bytes(d[8..16].try_into().unwrap());
        Some(open(&self.recv, counter, &d[16..], &[]))
    }
}

/// A gateway core with one peer, and that peer's keys.
fn gateway() -> (Core, [u8; 32], StaticSecret, [u8; 32]) {
    let gw = Identity::generate().unwrap();
    let s_priv = StaticSecret::from([0x11; 32]);
    let psk = [0x33u8; 32];
    let peer = PeerConfig {
        public: PublicKey::from(&s_priv).to_bytes(),
        psk: Some(psk),
        allowed: vec!["10.77.0.2/32".parse().unwrap()],
        endpoint: None,
        ..Default::default()
    };
    let core = Core::new(gw.clone(), vec![peer], Instant::now()).unwrap();
    (core, gw.public, s_priv, psk)
}

#[test]
fn a_wireguard_initiator_from_the_paper_completes_a_handshake_and_exchanges_padded_data() {
    let (mut core, gw, s_priv, psk) = gateway();
    let from: SocketAddr = "192.0.2.7:51820".parse().unwrap();
    let now = (Instant::now(), SystemTime::now());
    let e_priv = StaticSecret::from([0x22; 32]);
    let session = handshake(&mut core, &gw, &s_priv, &psk, &e_priv, 0x1234_5678, from, now);

    // Data: a 21-byte packet, padded to 32 as WireGuard pads it; the core cuts the padding
    // off by the IP header.
    let packet = ipv4([10, 77, 0, 2], [203, 0, 113, 10], 21);
    let data = session.data(0, &packet);
    assert_eq!(data.len(), 16 + 32 + 16);
    assert_eq!(core.from_network(from, &data, now.0), Action::Tunnel(PeerId(0), packet));

    // And back: the core's data opens under WireGuard's receiving key, padded the same way.
    let reply = ipv4([203, 0, 113, 10], [10, 77, 0, 2], 45);
    let Action::Network(_, d) = core.from_tunnel(&reply, now.0, now.1) else { panic!("sealed") };
    let plain = session.open(&d).expect("for the session");
    assert_eq!(plain.len(), 48, "padded to a multiple of 16");
    assert_eq!(&plain[..45], &reply[..]);
    assert!(plain[45..].iter().all(|b| *b == 0));
}

/// A WireGuard app rekeys on its own, 120 s into a session (REKEY_AFTER_TIME, fixed in
/// every implementation), in the middle of a transfer. The gateway, the responder, must
/// go on sending under the old session until the new one is confirmed by the app's first
/// data on it (5.4.7: it cannot know the app has the new keys before), must accept the
/// app's packets still in flight under the old one, and then switch.
#[test]
fn a_wireguard_initiators_own_rekey_mid_transfer_loses_nothing_and_switches_on_confirmation() {
    let (mut core, gw, s_priv, psk) = gateway();
    let from: SocketAddr = "192.0.2.7:51820".parse().unwrap();
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let old = handshake(&mut core, &gw, &s_priv, &psk, &StaticSecret::from([0x22; 32]), 7, from, (t0, wall0));
    let up = ipv4([10, 77, 0, 2], [203, 0, 113, 10], 1200);
    let down = ipv4([203, 0, 113, 10], [10, 77, 0, 2], 1200);
    for counter in 0..10 {
        assert_eq!(core.from_network(from, &old.data(counter, &up), t0), Action::Tunnel(PeerId(0), up.clone()));
    }

    // 121 s later the app starts a new handshake; its packets sent just before are still
    // on their way.
    let (t1, wall1) = (t0 + std::time::Duration::from_secs(121), wall0 + std::time::Duration::from_secs(121));
    let in_flight = old.data(1000, &up);
    let new = handshake(&mut core, &gw, &s_priv, &psk, &StaticSecret::from([0x44; 32]), 8, from, (t1, wall1));
    assert_ne!(new.sender_r, old.sender_r, "a new index for the new session");
    // Not confirmed yet: the gateway's data is still the old session's.
    let Action::Network(_, d) = core.from_tunnel(&down, t1, wall1) else { panic!("sealed") };
    assert!(new.open(&d).is_none(), "the gateway used the new session before the app confirmed it");
    assert_eq!(&old.open(&d).expect("the old session")[..1200], &down[..]);
    // The app's late packet under the old session is taken.
    assert_eq!(core.from_network(from, &in_flight, t1), Action::Tunnel(PeerId(0), up.clone()));

    // The app's first data under the new session confirms it, and the gateway switches.
    for counter in 0..10 {
        assert_eq!(core.from_network(from, &new.data(counter, &up), t1), Action::Tunnel(PeerId(0), up.clone()));
    }
    let Action::Network(_, d) = core.from_tunnel(&down, t1, wall1) else { panic!("sealed") };
    assert_eq!(&new.open(&d).expect("the new session once confirmed")[..1200], &down[..]);
    // A straggler under the old session still arrives (WireGuard keeps the previous
    // keys for receiving).
    assert_eq!(core.from_network(from, &old.data(1001, &up), t1), Action::Tunnel(PeerId(0), up.clone()));
}
