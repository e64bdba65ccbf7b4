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

#[test]
fn a_wireguard_initiator_from_the_paper_completes_a_handshake_and_exchanges_padded_data() {
    let gw = Identity::generate().unwrap();
    let (s_priv, e_priv) = (StaticSecret::from([0x11; 32]), StaticSecret::from([0x22; 32]));
    let s_pub = PublicKey::from(&s_priv).to_bytes();
    let e_pub = PublicKey::from(&e_priv).to_bytes();
    let psk = [0x33u8; 32];
    let now = Instant::now();
    let peer = PeerConfig {
        public: s_pub,
        psk: Some(psk),
        allowed: vec!["10.77.0.2/32".parse().unwrap()],
        endpoint: None,
        ..Default::default()
    };
    let mut core = Core::new(gw.clone(), vec![peer], now).unwrap();
    let from: SocketAddr = "192.0.2.7:51820".parse().unwrap();

    // Initiation (5.4.2).
    let sender_i = 0x1234_5678u32;
    let c = hash(&[PARAMS.as_bytes()]);
    let h = hash(&[&c, IDENTIFIER]);
    let h = hash(&[&h, &gw.public]);
    let [c] = kdf::<1>(&c, &e_pub);
    let h = hash(&[&h, &e_pub]);
    let [c, k] = kdf::<2>(&c, &dh(&e_priv, &gw.public));
    let enc_static = aead(&k, 0, &s_pub, &h);
    let h = hash(&[&h, &enc_static]);
    let [c, k] = kdf::<2>(&c, &dh(&s_priv, &gw.public));
    let enc_time = aead(&k, 0, &timestamp(SystemTime::now()), &h);
    let h = hash(&[&h, &enc_time]);
    let mut msg = vec![1, 0, 0, 0];
    msg.extend_from_slice(&sender_i.to_le_bytes());
    msg.extend_from_slice(&e_pub);
    msg.extend_from_slice(&enc_static);
    msg.extend_from_slice(&enc_time);
    let m1 = mac(&mac1_key(&gw.public), &msg);
    msg.extend_from_slice(&m1);
    msg.extend_from_slice(&[0; 16]);
    assert_eq!(msg.len(), 148);

    let Action::Network(to, resp) = core.from_network(from, &msg, now) else { panic!("the core answers") };
    assert_eq!(to, from);

    // Response (5.4.3), checked the way the initiator does.
    assert_eq!((resp.len(), &resp[..4]), (92, &[2u8, 0, 0, 0][..]));
    let sender_r = u32::from_le_bytes(resp[4..8].try_into().unwrap());
    assert_eq!(u32::from_le_bytes(resp[8..12].try_into().unwrap()), sender_i);
    assert_eq!(resp[60..76], mac(&mac1_key(&s_pub), &resp[..60]), "mac1");
    assert_eq!(resp[76..92], [0; 16], "no cookie: mac2 is zero");
    let e_r: [u8; 32] = resp[12..44].try_into().unwrap();
    let [c] = kdf::<1>(&c, &e_r);
    let h = hash(&[&h, &e_r]);
    let [c] = kdf::<1>(&c, &dh(&e_priv, &e_r));
    let [c] = kdf::<1>(&c, &dh(&s_priv, &e_r));
    let [c, tau, k] = kdf::<3>(&c, &psk);
    let h = hash(&[&h, &tau]);
    assert!(open(&k, 0, &resp[44..60], &h).is_empty());
    let [send, recv] = kdf::<2>(&c, &[]);

    // Data (5.4.6): a 21-byte packet, padded to 32 as WireGuard pads it; the core cuts the
    // padding off by the IP header.
    let packet = ipv4([10, 77, 0, 2], [203, 0, 113, 10], 21);
    let mut padded = packet.clone();
    padded.resize(32, 0);
    let mut data = vec![4, 0, 0, 0];
    data.extend_from_slice(&sender_r.to_le_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    data.extend_from_slice(&aead(&send, 0, &padded, &[]));
    assert_eq!(core.from_network(from, &data, now), Action::Tunnel(PeerId(0), packet));

    // And back: the core's data opens under WireGuard's receiving key, padded the same way.
    let reply = ipv4([203, 0, 113, 10], [10, 77, 0, 2], 45);
    let Action::Network(_, d) = core.from_tunnel(&reply, now, SystemTime::now()) else { panic!("sealed") };
    assert_eq!((&d[..4], u32::from_le_bytes(d[4..8].try_into().unwrap())), (&[4u8, 0, 0, 0][..], sender_i));
    let counter = u64::from_le_bytes(d[8..16].try_into().unwrap());
    let plain = open(&recv, counter, &d[16..], &[]);
    assert_eq!(plain.len(), 48, "padded to a multiple of 16");
    assert_eq!(&plain[..45], &reply[..]);
    assert!(plain[45..].iter().all(|b| *b == 0));
}
