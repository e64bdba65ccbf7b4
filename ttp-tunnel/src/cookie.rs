//! Cookies: under load, a responder answers an initiation without a valid mac2 with a
//! cookie reply instead of doing a Diffie-Hellman. The cookie is a MAC of the sender's
//! address under a secret that rotates every two minutes, so the responder keeps no state
//! per sender; only a sender that can receive at its address can echo it (as mac2) and make
//! the responder work. The cookie travels encrypted (XChaCha20-Poly1305 under a key derived
//! from the responder's public key, bound to the mac1 of the message it answers), so an
//! eavesdropper elsewhere on the path cannot use it.
//!
//! No I/O, and time is an argument: tests move it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use blake2::{digest::Digest, Blake2s256};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};

use super::messages::{self, CookieReply, Macs, COOKIE_REPLY, COOKIE_REPLY_LEN};

/// How long a secret (and so a cookie) lives.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

fn cookie_key(responder_public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"cookie--");
    h.update(responder_public);
    h.finalize().into()
}

fn addr_bytes(a: &SocketAddr) -> Vec<u8> {
    let mut v = match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the kernel's random source");
    b
}

/// The responder's side.
pub struct CookieChecker {
    key: [u8; 32],
    secret: [u8; 32],
    born: Instant,
}

impl CookieChecker {
    pub fn new(responder_public: &[u8; 32], now: Instant) -> Self {
        Self { key: cookie_key(responder_public), secret: random(), born: now }
    }

    fn cookie(&mut self, src: &SocketAddr, now: Instant) -> [u8; 16] {
        if now.duration_since(self.born) >= COOKIE_LIFETIME {
            self.secret = random();
            self.born = now;
        }
        messages::mac(&self.secret, &addr_bytes(src))
    }

    /// Does the message's mac2 carry a valid cookie for `src`?
    pub fn mac2_ok(&mut self, macs: &Macs<'_>, src: &SocketAddr, now: Instant) -> bool {
        let cookie = self.cookie(src, now);
        messages::mac_ok(&cookie, macs.before_mac2, macs.mac2)
    }

    /// A cookie reply to the message whose sender index is `receiver` and mac1 `mac1`.
    pub fn reply(&mut self, receiver: u32, mac1: &[u8], src: &SocketAddr, now: Instant) -> Vec<u8> {
        let cookie = self.cookie(src, now);
        let nonce: [u8; 24] = random();
        let sealed = XChaCha20Poly1305::new(&self.key.into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &cookie, aad: mac1 })
            .expect("16 bytes always seal");
        let mut v = Vec::with_capacity(COOKIE_REPLY_LEN);
        v.extend_from_slice(&[COOKIE_REPLY, 0, 0, 0]);
        v.extend_from_slice(&receiver.to_le_bytes());
        v.extend_from_slice(&nonce);
        v.extend_from_slice(&sealed);
        v
    }
}

/// The initiator's side: the last cookie from a responder.
pub struct CookieJar {
    key: [u8; 32],
    cookie: Option<([u8; 16], Instant)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cookie reply does not decrypt")]
pub struct BadCookie;

impl CookieJar {
    pub fn new(responder_public: &[u8; 32]) -> Self {
        Self { key: cookie_key(responder_public), cookie: None }
    }

    /// Takes the cookie from a reply to the message whose mac1 was `sent_mac1`.
    pub fn accept(&mut self, reply: &CookieReply<'_>, sent_mac1: &[u8], now: Instant) -> Result<(), BadCookie> {
        let plain = XChaCha20Poly1305::new(&self.key.into())
            .decrypt(XNonce::from_slice(reply.nonce), Payload { msg: reply.sealed, aad: sent_mac1 })
            .map_err(|_| BadCookie)?;
        let cookie: [u8; 16] = plain.try_into().map_err(|_| BadCookie)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }

    /// Adds mac2 to a finished handshake message if a fresh cookie is at hand.
    pub fn stamp(&self, msg: &mut [u8], now: Instant) {
        if let Some((c, got)) = self.cookie {
            if now.duration_since(got) < COOKIE_LIFETIME {
                messages::set_mac2(msg, &c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{handshake_message, parse, Message, INITIATION, NOISE_INIT_LEN};

    #[test]
    fn a_cookie_works_only_for_its_address_and_only_while_its_secret_lives() {
        let responder = [9u8; 32];
        let t0 = Instant::now();
        let mut checker = CookieChecker::new(&responder, t0);
        let mut jar = CookieJar::new(&responder);
        let me: SocketAddr = "192.0.2.10:51820".parse().unwrap();
        let spoofed: SocketAddr = "198.51.100.7:51820".parse().unwrap();

        let mut msg = handshake_message(INITIATION, &[1], &[0; NOISE_INIT_LEN], &responder);
        let Ok(Message::Initiation(i)) = parse(&msg) else { panic!() };
        assert!(!checker.mac2_ok(&i.macs, &me, t0), "no cookie yet");
        let reply = checker.reply(i.sender, i.macs.mac1, &me, t0);
        let mac1 = i.macs.mac1.to_vec();
        let Ok(Message::CookieReply(r)) = parse(&reply) else { panic!("cookie reply parses") };
        // Bound to the message it answers.
        assert_eq!(jar.accept(&r, &[0; 16], t0), Err(BadCookie));
        jar.accept(&r, &mac1, t0).unwrap();

        jar.stamp(&mut msg, t0);
        let Ok(Message::Initiation(i)) = parse(&msg) else { panic!() };
        assert!(checker.mac2_ok(&i.macs, &me, t0 + Duration::from_secs(1)));
        assert!(!checker.mac2_ok(&i.macs, &spoofed, t0), "another address");
        assert!(!checker.mac2_ok(&i.macs, &me, t0 + COOKIE_LIFETIME + Duration::from_secs(1)), "the secret rotated");
    }
}
