//! Any netlink datagram as a SOCK_DIAG answer (parsed as root): walked and read without a
//! panic or a read past its end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let Some((&seq, datagram)) = b.split_first() else { return };
    let mut sockets = 0;
    let _ = ttp::sockdestroy::walk_datagram(datagram, u32::from(seq % 4), &mut |payload| {
        if ttp::sockdestroy::parse_socket(payload).is_some() {
            sockets += 1;
        }
    });
    assert!(sockets <= datagram.len() / 16);
});
