//! The protocol core of ttp's tunnel: a WireGuard-class encrypted UDP tunnel whose peers
//! reach the internet only through Tor (issue 5). Built like boringtun's `noise/`: no I/O
//! (each call takes bytes and returns "send this to the network" or "give this to the
//! TUN"), so that it is tested and fuzzed without sockets (`fuzz/`, cargo fuzz).
//!
//! A crate of its own, apart from `ttp`, so that the fuzz targets and the protocol's
//! benchmark build it without Arti; `ttp::tunnel` re-exports it and adds the device (TUN,
//! socket, routes) and the configuration file.
//!
//! On the wire it is WireGuard (the paper's protocol, message for message), so any
//! WireGuard implementation is a peer: the stock apps on phones and laptops, wireguard-go,
//! boringtun, the Linux module.
//!
//! The pieces: [`messages`] (wire format, mac1 and mac2), [`handshake`] (Noise IKpsk2 via
//! snow), [`session`] (transport with explicit counters), [`replay`] (the window),
//! [`cookie`] (stateless cookies under load), [`ratelimit`] (per-source buckets and the
//! load signal), [`timers`] (rekey, expiry, retries, keepalives), [`keys`] (base64 keys as
//! people handle them), [`packet`] (the inner packets' headers), [`peer`] (a peer's
//! sessions and their rotation), [`allowed`] (which peer holds an inner address), and
//! [`protocol`], which ties them together, one handler per message kind, driven by
//! datagrams, packets and time.

pub mod allowed;
pub mod cookie;
pub mod handshake;
pub mod keys;
pub mod messages;
pub mod packet;
pub mod peer;
pub mod protocol;
pub mod ratelimit;
pub mod replay;
pub mod session;
pub mod timers;

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{
        handshake::{initiate, respond, HandshakeError, Identity, PeerKeys},
        messages::{parse, Message},
        session::{Session, SessionError},
    };

    fn pair(psk_a: Option<[u8; 32]>, psk_b: Option<[u8; 32]>) -> Result<(Session, Session), HandshakeError> {
        let (a, b) = (Identity::generate()?, Identity::generate()?);
        let (init, msg) = initiate(&a, &PeerKeys { public: b.public, psk: psk_a }, 11, SystemTime::now())?;
        let Ok(Message::Initiation(i)) = parse(&msg) else { panic!("initiation parses") };
        let a_pub = a.public;
        let acc = respond(&b, &i, 22, |pk| (*pk == a_pub).then_some((PeerKeys { public: a_pub, psk: psk_b }, None)))?;
        assert_eq!(acc.peer_public, a.public);
        let Ok(Message::Response(r)) = parse(&acc.response) else { panic!("response parses") };
        Ok((init.finish(&a, &r).map_err(|refused| refused.error)?, acc.session))
    }

    fn open(s: &mut Session, datagram: &[u8]) -> Result<Vec<u8>, SessionError> {
        let Ok(Message::Data(d)) = parse(datagram) else { panic!("data parses") };
        s.open(&d)
    }

    #[test]
    fn handshake_then_data_both_ways_with_replays_and_reordering() {
        let (mut a, mut b) = pair(Some([7; 32]), Some([7; 32])).unwrap();
        assert_eq!((a.local, a.remote, b.local, b.remote), (11, 22, 22, 11));
        let m1 = a.seal(b"first", 0).unwrap();
        let m2 = a.seal(b"second", 0).unwrap();
        assert_eq!(open(&mut b, &m2).unwrap(), b"second", "out of order");
        assert_eq!(open(&mut b, &m1).unwrap(), b"first");
        assert_eq!(open(&mut b, &m1), Err(SessionError::Replay), "replayed");
        let back = b.seal(b"pong", 0).unwrap();
        assert_eq!(open(&mut a, &back).unwrap(), b"pong");
        let mut forged = a.seal(b"x", 0).unwrap();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(open(&mut b, &forged), Err(SessionError::Decrypt));
        // A forged packet did not burn its counter: the real one still goes through.
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(open(&mut b, &forged).unwrap(), b"x");
    }

    #[test]
    fn wrong_keys_and_replayed_initiations_are_refused() {
        // Different pre-shared keys: the responder cannot tell, the initiator can.
        assert!(matches!(pair(Some([1; 32]), Some([2; 32])), Err(HandshakeError::Noise(_))));
        let (a, b, c) = (Identity::generate().unwrap(), Identity::generate().unwrap(), Identity::generate().unwrap());
        // Meant for c: b drops it on mac1, before any Diffie-Hellman.
        let (_, msg) = initiate(&a, &PeerKeys { public: c.public, psk: None }, 1, SystemTime::now()).unwrap();
        let Ok(Message::Initiation(i)) = parse(&msg) else { panic!() };
        assert!(matches!(respond(&b, &i, 2, |_| None), Err(HandshakeError::Mac1)));
        // For b, from a peer b does not know.
        let now = SystemTime::now();
        let (_, msg) = initiate(&a, &PeerKeys { public: b.public, psk: None }, 1, now).unwrap();
        let Ok(Message::Initiation(i)) = parse(&msg) else { panic!() };
        assert!(matches!(respond(&b, &i, 2, |_| None), Err(HandshakeError::UnknownPeer)));
        // Known, but its timestamp is not newer than the last accepted one: a replay.
        let keys = PeerKeys { public: a.public, psk: None };
        let first = respond(&b, &i, 2, |_| Some((keys.clone(), None))).unwrap();
        let again = respond(&b, &i, 3, |_| Some((keys.clone(), Some(first.timestamp))));
        assert!(matches!(again, Err(HandshakeError::OldTimestamp)));
        let (_, later) = initiate(&a, &keys_for(&b), 1, now + Duration::from_millis(50)).unwrap();
        let Ok(Message::Initiation(l)) = parse(&later) else { panic!() };
        assert!(respond(&b, &l, 4, |_| Some((keys.clone(), Some(first.timestamp)))).is_ok());
    }

    fn keys_for(id: &Identity) -> PeerKeys {
        PeerKeys { public: id.public, psk: None }
    }
}
