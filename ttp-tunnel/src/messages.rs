//! The tunnel's wire format: WireGuard's four message kinds, fixed layouts, little-endian
//! integers, exactly as the WireGuard paper (section 5.4) and its implementations lay them
//! out, so that any WireGuard peer is a peer.
//!
//! ```text
//! initiation  1 | 0 0 0 | sender u32 | noise (e, s, timestamp) 108 | mac1 16 | mac2 16   = 148
//! response    2 | 0 0 0 | sender u32 | receiver u32 | noise (e, empty) 48 | mac1 | mac2 = 92
//! cookie      3 | 0 0 0 | receiver u32 | nonce 24 | encrypted cookie 32                 = 64
//! data        4 | 0 0 0 | receiver u32 | counter u64 | ciphertext (packet + 16)        >= 32
//! ```
//!
//! Parsing checks lengths and the reserved bytes and borrows from the datagram; anything
//! else is an error, never a panic. mac1 (keyed by the receiver's public key) lets a
//! receiver drop handshake messages not meant for it before any Diffie-Hellman.

use blake2::{
    digest::{consts::U16, Digest, Mac},
    Blake2s256, Blake2sMac,
};

pub const INITIATION: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const COOKIE_REPLY: u8 = 3;
pub const DATA: u8 = 4;

/// Noise IK message 1: ephemeral (32), encrypted static (32 + 16), encrypted timestamp (12 + 16).
pub const NOISE_INIT_LEN: usize = 108;
/// Noise IK message 2: ephemeral (32), encrypted empty payload (16).
pub const NOISE_RESP_LEN: usize = 48;
pub const INITIATION_LEN: usize = 8 + NOISE_INIT_LEN + 32;
pub const RESPONSE_LEN: usize = 12 + NOISE_RESP_LEN + 32;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const DATA_HEADER_LEN: usize = 16;
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message of type {kind} is {len} bytes, expected {want}")]
    BadLength { kind: u8, len: usize, want: &'static str },
    #[error("reserved bytes are not zero")]
    Reserved,
}

/// The two MACs that end every handshake message, and what each covers.
#[derive(Debug, PartialEq, Eq)]
pub struct Macs<'a> {
    /// The bytes mac1 covers, and mac1 itself.
    pub macced: &'a [u8],
    pub mac1: &'a [u8],
    /// The bytes mac2 covers (everything before it), and mac2 (zero without a cookie).
    pub before_mac2: &'a [u8],
    pub mac2: &'a [u8],
}

impl<'a> Macs<'a> {
    fn of(b: &'a [u8]) -> Self {
        let at = b.len() - 32;
        Macs { macced: &b[..at], mac1: &b[at..at + 16], before_mac2: &b[..at + 16], mac2: &b[at + 16..] }
    }

    /// Is this message meant for the holder of `receiver_public`?
    pub fn mac1_ok(&self, receiver_public: &[u8; 32]) -> bool {
        mac_ok(&mac1_key(receiver_public), self.macced, self.mac1)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Initiation<'a> {
    pub sender: u32,
    pub noise: &'a [u8],
    pub macs: Macs<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub sender: u32,
    pub receiver: u32,
    pub noise: &'a [u8],
    pub macs: Macs<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct CookieReply<'a> {
    pub receiver: u32,
    pub nonce: &'a [u8],
    pub sealed: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub receiver: u32,
    pub counter: u64,
    pub ciphertext: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
    Data(Data<'a>),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one datagram.
pub fn parse(b: &[u8]) -> Result<Message<'_>, ParseError> {
    let kind = *b.first().ok_or(ParseError::Empty)?;
    let exact = |want: usize, name: &'static str| {
        if b.len() == want {
            Ok(())
        } else {
            Err(ParseError::BadLength { kind, len: b.len(), want: name })
        }
    };
    match kind {
        INITIATION => exact(INITIATION_LEN, "148")?,
        RESPONSE => exact(RESPONSE_LEN, "92")?,
        COOKIE_REPLY => exact(COOKIE_REPLY_LEN, "64")?,
        DATA if b.len() >= DATA_HEADER_LEN + TAG_LEN => {}
        DATA => return Err(ParseError::BadLength { kind, len: b.len(), want: "at least 32" }),
        k => return Err(ParseError::UnknownType(k)),
    }
    if b[1..4] != [0, 0, 0] {
        return Err(ParseError::Reserved);
    }
    Ok(match kind {
        INITIATION => Message::Initiation(Initiation {
            sender: u32_at(b, 4),
            noise: &b[8..8 + NOISE_INIT_LEN],
            macs: Macs::of(b),
        }),
        RESPONSE => Message::Response(Response {
            sender: u32_at(b, 4),
            receiver: u32_at(b, 8),
            noise: &b[12..12 + NOISE_RESP_LEN],
            macs: Macs::of(b),
        }),
        COOKIE_REPLY => {
            Message::CookieReply(CookieReply { receiver: u32_at(b, 4), nonce: &b[8..32], sealed: &b[32..64] })
        }
        _ => Message::Data(Data {
            receiver: u32_at(b, 4),
            counter: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            ciphertext: &b[16..],
        }),
    })
}

/// The mac1 key for messages to the holder of `receiver_public`.
pub fn mac1_key(receiver_public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(b"mac1----");
    h.update(receiver_public);
    h.finalize().into()
}

/// WireGuard's `MAC(key, input)`: keyed BLAKE2s with a 16-byte output. The key is used
/// at its own length (32 bytes for mac1's, 16 for a cookie as mac2's key): BLAKE2s puts
/// the key length in its parameter block, so a padded key would give another MAC.
pub fn mac(key: &[u8], macced: &[u8]) -> [u8; 16] {
    let mut m = <Blake2sMac<U16> as Mac>::new_from_slice(key).expect("keys of 1 to 32 bytes");
    m.update(macced);
    m.finalize().into_bytes().into()
}

/// Constant-time check of a MAC (mac1 or mac2).
pub fn mac_ok(key: &[u8], macced: &[u8], got: &[u8]) -> bool {
    let mut m = <Blake2sMac<U16> as Mac>::new_from_slice(key).expect("keys of 1 to 32 bytes");
    m.update(macced);
    m.verify_slice(got).is_ok()
}

/// Builds a handshake message: header, `noise`, then mac1 and a zero mac2 (the cookie jar
/// writes mac2 when it holds a cookie).
pub fn handshake_message(kind: u8, indices: &[u32], noise: &[u8], receiver_public: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(INITIATION_LEN);
    v.extend_from_slice(&[kind, 0, 0, 0]);
    for i in indices {
        v.extend_from_slice(&i.to_le_bytes());
    }
    v.extend_from_slice(noise);
    let m = mac(&mac1_key(receiver_public), &v);
    v.extend_from_slice(&m);
    v.extend_from_slice(&[0; 16]);
    v
}

/// Writes mac2 (keyed by a cookie from the receiver) into a finished handshake message.
pub fn set_mac2(msg: &mut [u8], cookie: &[u8; 16]) {
    let at = msg.len() - 16;
    let m = mac(cookie, &msg[..at]);
    msg[at..].copy_from_slice(&m);
}

pub fn data_header(receiver: u32, counter: u64) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = DATA;
    h[4..8].copy_from_slice(&receiver.to_le_bytes());
    h[8..16].copy_from_slice(&counter.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_types_and_reserved_bytes_are_checked() {
        assert_eq!(parse(&[]), Err(ParseError::Empty));
        assert_eq!(parse(&[9, 0, 0, 0]), Err(ParseError::UnknownType(9)));
        assert!(matches!(parse(&[INITIATION; 147]), Err(ParseError::BadLength { .. })));
        let mut init = vec![0u8; INITIATION_LEN];
        init[0] = INITIATION;
        assert!(matches!(parse(&init), Ok(Message::Initiation(_))));
        init[2] = 1;
        assert_eq!(parse(&init), Err(ParseError::Reserved));
        assert!(matches!(parse(&[DATA, 0, 0, 0, 1, 0, 0, 0]), Err(ParseError::BadLength { .. })));
        let mut data = data_header(7, 42).to_vec();
        data.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(parse(&data), Ok(Message::Data(Data { receiver: 7, counter: 42, ciphertext: &[0; TAG_LEN] })));
    }

    #[test]
    fn random_datagrams_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400usize {
            let mut b = vec![0u8; len];
            for x in b.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *x = seed as u8;
            }
            if let Some(first) = b.first_mut() {
                *first = [INITIATION, RESPONSE, DATA, COOKIE_REPLY, 9][len % 5];
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn mac1_binds_the_receiver_and_the_bytes() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let msg = handshake_message(INITIATION, &[5], &[0; NOISE_INIT_LEN], &a);
        let Ok(Message::Initiation(i)) = parse(&msg) else { panic!("parses") };
        assert!(i.macs.mac1_ok(&a));
        assert!(!i.macs.mac1_ok(&b));
        let mut tampered = msg.clone();
        tampered[20] ^= 1;
        let Ok(Message::Initiation(t)) = parse(&tampered) else { panic!("parses") };
        assert!(!t.macs.mac1_ok(&a));
    }
}
