//! Any datagram: the parser never panics, and what it accepts has the shape the wire
//! format says (exact lengths for handshake messages, a header and a tag for data),
//! with every field read from where it lies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttp_tunnel::messages::{parse, Message, COOKIE_REPLY_LEN, DATA_HEADER_LEN, INITIATION_LEN, RESPONSE_LEN, TAG_LEN};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fuzz_target!(|b: &[u8]| {
    let Ok(m) = parse(b) else { return };
    assert_eq!(&b[1..4], &[0, 0, 0], "reserved bytes");
    match m {
        Message::Initiation(i) => {
            assert_eq!(b.len(), INITIATION_LEN);
            assert_eq!(i.sender, u32_at(b, 4));
            assert_eq!(i.macs.macced.len() + 32, b.len());
            assert_eq!([i.macs.macced, i.macs.mac1, i.macs.mac2].concat(), b);
        }
        Message::Response(r) => {
            assert_eq!(b.len(), RESPONSE_LEN);
            assert_eq!((r.sender, r.receiver), (u32_at(b, 4), u32_at(b, 8)));
            assert_eq!([r.macs.before_mac2, r.macs.mac2].concat(), b);
        }
        Message::CookieReply(c) => {
            assert_eq!(b.len(), COOKIE_REPLY_LEN);
            assert_eq!(c.receiver, u32_at(b, 4));
            assert_eq!(c.nonce.len() + c.sealed.len() + 8, b.len());
        }
        Message::Data(d) => {
            assert!(b.len() >= DATA_HEADER_LEN + TAG_LEN);
            assert_eq!(d.receiver, u32_at(b, 4));
            assert_eq!(d.counter, u64::from_le_bytes(b[8..16].try_into().unwrap()));
            assert_eq!(d.ciphertext, &b[DATA_HEADER_LEN..]);
        }
    }
});
