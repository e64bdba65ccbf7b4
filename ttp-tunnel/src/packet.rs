//! The inner packets' IP headers, as far as the tunnel reads them: where a packet comes
//! from, where it goes, and how long it says it is. Data messages are padded to a multiple
//! of 16 bytes (WireGuard hides packet lengths that way), so a receiver cuts each packet
//! back to the length its header gives.

use std::net::IpAddr;

/// The source of an IPv4 or IPv6 packet.
pub fn source(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?)),
        6 if p.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?)),
        _ => None,
    }
}

/// The destination of an IPv4 or IPv6 packet.
pub fn destination(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?)),
        6 if p.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?)),
        _ => None,
    }
}

/// The length the packet's header gives (IPv4 total length; IPv6 payload length plus the
/// fixed header), if there is a header and the bytes hold that much.
pub fn declared_len(p: &[u8]) -> Option<usize> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 if p.len() >= 40 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => return None,
    };
    // Not shorter than the fixed header it was read from, not longer than what came.
    (20..=p.len()).contains(&len).then_some(len)
}

/// The padded length WireGuard sends a packet of `len` bytes at: the next multiple of 16,
/// but not past the MTU (a full-size packet is not padded into fragmentation).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    len.next_multiple_of(16).min(mtu.max(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_and_lengths_checked() {
        let mut v4 = vec![0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0, 10, 77, 0, 2, 203, 0, 113, 10, 1, 2, 3, 4];
        assert_eq!(source(&v4), Some("10.77.0.2".parse().unwrap()));
        assert_eq!(destination(&v4), Some("203.0.113.10".parse().unwrap()));
        v4.extend_from_slice(&[0; 8]); // padding
        assert_eq!(declared_len(&v4), Some(24));
        v4[3] = 200; // says more than there is
        assert_eq!(declared_len(&v4), None);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 4, 17, 64];
        v6.extend_from_slice(&[0xfd; 32]);
        v6.extend_from_slice(&[9; 4]);
        assert_eq!(declared_len(&v6), Some(44));
        assert_eq!(declared_len(&[0x45, 0, 0]), None);
        v4[3] = 8; // shorter than its own header
        assert_eq!(declared_len(&v4), None);
        assert_eq!(declared_len(&[0x10; 40]), None);
        assert_eq!((padded_len(0, 1420), padded_len(17, 1420), padded_len(1419, 1420)), (0, 32, 1420));
        assert_eq!(padded_len(1500, 1420), 1500, "never shorter than the packet");
    }
}
