//! A session: the transport keys of one completed handshake, explicit 64-bit counters as
//! nonces (packets may arrive out of order), and the anti-replay window.
//!
//! No I/O: [`Session::seal`] turns a packet from the TUN into a datagram for the network,
//! [`Session::open`] a datagram from the network into a packet for the TUN.

use snow::StatelessTransportState;

use super::{
    messages::{self, Data, DATA_HEADER_LEN, TAG_LEN},
    packet::padded_len,
    replay::{ReplayWindow, MAX_COUNTER},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("counter exhausted: the session must rekey")]
    Exhausted,
    #[error("replayed or too old")]
    Replay,
    #[error("not for this session")]
    WrongReceiver,
    #[error("does not authenticate")]
    Decrypt,
    #[error("packet too large")]
    TooLarge,
}

pub struct Session {
    /// Our index: data for this session carries it as `receiver`.
    pub local: u32,
    /// The peer's index: what our data carries.
    pub remote: u32,
    pub initiator: bool,
    keys: StatelessTransportState,
    next: u64,
    replay: ReplayWindow,
}

impl Session {
    pub(crate) fn new(local: u32, remote: u32, keys: StatelessTransportState, initiator: bool) -> Session {
        Session { local, remote, initiator, keys, next: 0, replay: ReplayWindow::new() }
    }

    /// Encrypts `packet` into a data message, padded with zeros to a multiple of 16 bytes
    /// but not past `mtu` (WireGuard's rule; the receiver cuts the padding off by the
    /// packet's own header).
    pub fn seal(&mut self, packet: &[u8], mtu: usize) -> Result<Vec<u8>, SessionError> {
        if self.next >= MAX_COUNTER {
            return Err(SessionError::Exhausted);
        }
        let padded = padded_len(packet.len(), mtu);
        if padded > 65535 - TAG_LEN {
            return Err(SessionError::TooLarge);
        }
        let counter = self.next;
        self.next += 1;
        // A copy only when there is padding to add (a full-size packet has none).
        let plain: std::borrow::Cow<'_, [u8]> = if padded == packet.len() {
            packet.into()
        } else {
            let mut v = Vec::with_capacity(padded);
            v.extend_from_slice(packet);
            v.resize(padded, 0);
            v.into()
        };
        let mut out = vec![0u8; DATA_HEADER_LEN + padded + TAG_LEN];
        out[..DATA_HEADER_LEN].copy_from_slice(&messages::data_header(self.remote, counter));
        self.keys.write_message(counter, &plain, &mut out[DATA_HEADER_LEN..]).map_err(|_| SessionError::TooLarge)?;
        Ok(out)
    }

    /// Authenticates and decrypts a data message; a counter is accepted once.
    pub fn open(&mut self, d: &Data<'_>) -> Result<Vec<u8>, SessionError> {
        if d.receiver != self.local {
            return Err(SessionError::WrongReceiver);
        }
        // Before the AEAD: replays and stale counters cost nothing.
        if !self.replay.check(d.counter) {
            return Err(SessionError::Replay);
        }
        let mut out = vec![0u8; d.ciphertext.len()];
        let n = self.keys.read_message(d.counter, d.ciphertext, &mut out).map_err(|_| SessionError::Decrypt)?;
        // Only an authenticated counter moves the window.
        if !self.replay.update(d.counter) {
            return Err(SessionError::Replay);
        }
        out.truncate(n);
        Ok(out)
    }

    /// How many packets this session has sent (to decide when to rekey).
    pub fn sent(&self) -> u64 {
        self.next
    }
}
