//! The handshake: WireGuard's, byte for byte. Noise IKpsk2 over X25519, ChaCha20-Poly1305
//! and BLAKE2s (snow, with ring's ChaCha20-Poly1305), with WireGuard's identifier as the
//! Noise prologue. The initiator knows the responder's static key (IK) and proves its own;
//! a pre-shared key (all zeros when there is none, as in WireGuard) is mixed in last (psk2).
//! Both sides use fresh ephemeral keys, so a session's keys die with it (forward secrecy).
//!
//! Why snow gives WireGuard's bytes: WireGuard's `C = HASH(CONSTRUCTION)`,
//! `H = HASH(C || IDENTIFIER)`, `H = HASH(H || S_pub_r)` are Noise's initialisation with
//! the identifier as prologue and the responder's static key as a pre-message; its extra
//! `C = KDF1(C, E_pub)` is Noise's rule for `e` in psk handshakes; its `psk` step is
//! Noise's `MixKeyAndHash`; and its transport keys `KDF2(C, ε)` are Noise's `Split()`.
//! The tests in `lib.rs` check this against a WireGuard handshake computed independently.
//!
//! The initiation carries a TAI64N timestamp encrypted under the handshake: the responder
//! accepts only a newer one per peer, so a replayed initiation cannot reset a session.
//!
//! No I/O: functions take and return bytes.

use snow::{params::NoiseParams, resolvers::FallbackResolver, Builder, HandshakeState};

use super::{
    messages::{self, Initiation, Response, INITIATION, NOISE_INIT_LEN, NOISE_RESP_LEN, RESPONSE},
    session::Session,
};

/// WireGuard's CONSTRUCTION: the Noise protocol name.
pub const PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's IDENTIFIER, mixed in as the Noise prologue.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
pub const TIMESTAMP_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("mac1 does not match: not for us")]
    Mac1,
    #[error("unknown peer")]
    UnknownPeer,
    #[error("replayed or old initiation")]
    OldTimestamp,
    #[error("malformed handshake payload")]
    Payload,
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
}

/// A static X25519 key pair: a peer's identity.
#[derive(Clone)]
pub struct Identity {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key, not even in a debug log.
        write!(f, "Identity({})", super::keys::encode(&self.public))
    }
}

impl Identity {
    pub fn generate() -> Result<Identity, HandshakeError> {
        let kp = builder().generate_keypair()?;
        let mut id = Identity { private: [0; 32], public: [0; 32] };
        id.private.copy_from_slice(&kp.private);
        id.public.copy_from_slice(&kp.public);
        Ok(id)
    }
}

/// What the responder knows of a peer.
#[derive(Clone, Debug)]
pub struct PeerKeys {
    pub public: [u8; 32],
    pub psk: Option<[u8; 32]>,
}

/// TAI64N: the TAI64 label of the second (2^62 + 10 + Unix seconds, as wireguard-go and
/// the Linux module compute it), then nanoseconds, both big-endian. The nanoseconds are
/// rounded down to a multiple of 2^24 (about 16.8 ms), as wireguard-go does, so that the
/// timestamp does not give away a fine-grained clock. Two initiations to one peer within
/// that window get the same timestamp and the second is refused as old: WireGuard never
/// sends them that close (REKEY_TIMEOUT).
pub fn timestamp(now: std::time::SystemTime) -> [u8; TIMESTAMP_LEN] {
    const TAI64_BASE: u64 = 0x4000_0000_0000_000a;
    const WHITENER: u32 = (1 << 24) - 1;
    let d = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut t = [0u8; TIMESTAMP_LEN];
    t[..8].copy_from_slice(&(TAI64_BASE + d.as_secs()).to_be_bytes());
    t[8..].copy_from_slice(&(d.subsec_nanos() & !WHITENER).to_be_bytes());
    t
}

fn builder() -> Builder<'static> {
    let params: NoiseParams = PARAMS.parse().expect("valid pattern");
    let resolver =
        FallbackResolver::new(Box::new(snow::resolvers::RingResolver), Box::new(snow::resolvers::DefaultResolver));
    Builder::with_resolver(params, Box::new(resolver))
}

/// An initiation in flight.
pub struct Initiator {
    state: HandshakeState,
    pub sender: u32,
}

/// Starts a handshake with `peer`; returns the state and the initiation to send.
pub fn initiate(
    me: &Identity,
    peer: &PeerKeys,
    sender: u32,
    now: std::time::SystemTime,
) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    let zero = [0u8; 32];
    let mut state = builder()
        .local_private_key(&me.private)
        .remote_public_key(&peer.public)
        .prologue(IDENTIFIER)
        .psk(2, peer.psk.as_ref().unwrap_or(&zero))
        .build_initiator()?;
    let mut noise = [0u8; NOISE_INIT_LEN];
    let n = state.write_message(&timestamp(now), &mut noise)?;
    debug_assert_eq!(n, NOISE_INIT_LEN);
    let msg = messages::handshake_message(INITIATION, &[sender], &noise, &peer.public);
    Ok((Initiator { state, sender }, msg))
}

/// A response the initiator refused, with the initiation it leaves untouched: anyone who
/// knows the initiator's public key can make a response with a valid mac1, and such a
/// forgery must not cost the real answer its handshake.
pub struct Refused {
    /// The initiation, still waiting for its answer (`None` only if snow could not turn a
    /// completed handshake into transport keys, which its pattern rules out).
    pub initiator: Option<Initiator>,
    pub error: HandshakeError,
}

impl Initiator {
    /// Completes the handshake with the responder's answer. Authenticated before anything
    /// is consumed: on failure the initiation comes back as it was (snow restores its
    /// symmetric state when a message does not decrypt), ready for the real response.
    pub fn finish(mut self, me: &Identity, r: &Response<'_>) -> Result<Session, Box<Refused>> {
        let refused = |initiator, error| Err(Box::new(Refused { initiator: Some(initiator), error }));
        if !r.macs.mac1_ok(&me.public) {
            return refused(self, HandshakeError::Mac1);
        }
        let mut payload = [0u8; NOISE_RESP_LEN];
        match self.state.read_message(r.noise, &mut payload) {
            Ok(0) => {}
            // Authenticated, so from the responder itself: a broken peer, not a forgery.
            Ok(_) => return Err(Box::new(Refused { initiator: None, error: HandshakeError::Payload })),
            Err(e) => return refused(self, e.into()),
        }
        let Initiator { state, sender } = self;
        // After a successful read the pattern is complete, so this does not fail; if snow
        // ever disagreed, the handshake is lost like any failed one and the timers retry.
        let keys = state
            .into_stateless_transport_mode()
            .map_err(|e| Box::new(Refused { initiator: None, error: HandshakeError::Noise(e) }))?;
        Ok(Session::new(sender, r.sender, keys, true))
    }
}

/// What the responder learned from an initiation it accepted.
pub struct Accepted {
    pub session: Session,
    pub response: Vec<u8>,
    pub peer_public: [u8; 32],
    pub timestamp: [u8; TIMESTAMP_LEN],
}

/// Answers an initiation. `peer_of` finds the peer by its static key and returns its
/// keys and the newest timestamp accepted from it so far.
pub fn respond(
    me: &Identity,
    init: &Initiation<'_>,
    sender: u32,
    peer_of: impl FnOnce(&[u8; 32]) -> Option<(PeerKeys, Option<[u8; TIMESTAMP_LEN]>)>,
) -> Result<Accepted, HandshakeError> {
    // Cheap first: a message not keyed to us costs no Diffie-Hellman.
    if !init.macs.mac1_ok(&me.public) {
        return Err(HandshakeError::Mac1);
    }
    let mut state = builder().local_private_key(&me.private).prologue(IDENTIFIER).build_responder()?;
    let mut payload = [0u8; NOISE_INIT_LEN];
    let n = state.read_message(init.noise, &mut payload)?;
    if n != TIMESTAMP_LEN {
        return Err(HandshakeError::Payload);
    }
    let mut ts = [0u8; TIMESTAMP_LEN];
    ts.copy_from_slice(&payload[..TIMESTAMP_LEN]);
    let mut peer_public = [0u8; 32];
    peer_public.copy_from_slice(state.get_remote_static().ok_or(HandshakeError::Payload)?);
    let (keys, newest) = peer_of(&peer_public).ok_or(HandshakeError::UnknownPeer)?;
    if newest.is_some_and(|n| ts <= n) {
        return Err(HandshakeError::OldTimestamp);
    }
    state.set_psk(2, keys.psk.as_ref().unwrap_or(&[0u8; 32]))?;
    let mut noise = [0u8; NOISE_RESP_LEN];
    state.write_message(&[], &mut noise)?;
    let response = messages::handshake_message(RESPONSE, &[sender, init.sender], &noise, &peer_public);
    let session = Session::new(sender, init.sender, state.into_stateless_transport_mode()?, false);
    Ok(Accepted { session, response, peer_public, timestamp: ts })
}
