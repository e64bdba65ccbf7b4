//! Any text as a tunnel side's file, in both formats `ttp tunnel up` takes: ttp's TOML
//! and WireGuard's own (`[Interface]`/`[Peer]`). A configuration or an error, never a
//! panic; and a WireGuard file that parses reads back the same after printing (what
//! `ttp tunnel peer add` prints is what a device, or ttp, reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttp::tunnel::wgquick::WgQuick;

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let _ = ttp::tunnel::config::TunnelConfig::parse(text);
    // Not `to_tunnel_config`: it resolves endpoint names, and a fuzzer must not ask DNS.
    if let Ok(w) = WgQuick::parse(text) {
        let again = WgQuick::parse(&w.to_string()).expect("a printed configuration parses");
        assert_eq!(again, w, "printed and read back differ");
    }
});
