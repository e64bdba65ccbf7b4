//! Any text as a tunnel side's TOML: a configuration or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let _ = ttp::tunnel::config::TunnelConfig::parse(text);
});
