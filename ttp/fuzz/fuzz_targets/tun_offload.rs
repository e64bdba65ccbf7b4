//! The TUN's offload code on the bytes it parses: the packets peers send (decrypted,
//! joined per flow before they are written: any bytes a peer chooses), and the bursts
//! the kernel hands over (shaped by local programs: MSS, options, lengths). Either way:
//! an error or a result, never a panic, an out-of-bounds write or an endless loop.
//!
//! Input: a first byte choosing the path, then for joining a list of packets (each behind
//! a 2-byte little-endian length), for cutting a virtio-net header and a burst.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tun_rs::{gso_split, GROTable, VirtioNetHdr, VIRTIO_NET_HDR_LEN};

fuzz_target!(|b: &[u8]| {
    let Some((&mode, rest)) = b.split_first() else { return };
    if mode & 1 == 0 {
        let mut packets = Vec::new();
        let mut rest = rest;
        while rest.len() >= 2 && packets.len() < 128 {
            let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
            let mut p = vec![0u8; VIRTIO_NET_HDR_LEN];
            p.extend_from_slice(&rest[2..2 + n]);
            packets.push(p);
            rest = &rest[2 + n..];
        }
        // As `send_multiple` does, with and without UDP joining (kernels before 6.2).
        let _ = GROTable::new().apply_gro(&mut packets, VIRTIO_NET_HDR_LEN, mode & 2 != 0);
    } else if rest.len() > VIRTIO_NET_HDR_LEN {
        let Ok(hdr) = VirtioNetHdr::decode(&rest[..VIRTIO_NET_HDR_LEN]) else { return };
        let mut burst = rest[VIRTIO_NET_HDR_LEN..].to_vec();
        let is_v6 = burst[0] >> 4 == 6;
        let mut out = vec![vec![0u8; 1500]; 128];
        let mut sizes = vec![0usize; 128];
        let _ = gso_split(&mut burst, hdr, &mut out, &mut sizes, 0, is_v6);
    }
});
