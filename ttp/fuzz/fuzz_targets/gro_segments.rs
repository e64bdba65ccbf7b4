//! Any received GRO run and segment size (the size comes from the kernel, the bytes from
//! the network): split into datagrams that cover the run exactly, in order, each at most
//! the segment size, never a panic or an endless loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttp::tunnel::gso::segments;

fuzz_target!(|b: &[u8]| {
    if b.len() < 2 {
        return;
    }
    let size = u16::from_le_bytes([b[0], b[1]]) as usize;
    let run = &b[2..];
    for segment in [Some(size), None] {
        let parts: Vec<&[u8]> = segments(run, segment).collect();
        assert_eq!(parts.concat(), run, "the datagrams do not cover the run");
        if let Some(s) = segment.filter(|s| *s > 0) {
            assert!(parts.iter().all(|p| p.len() <= s && !p.is_empty()), "a datagram longer than {s} or empty");
        }
    }
});
