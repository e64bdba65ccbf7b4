//! Any text as the session lock root reads back (`ttp restart`, `ttp stop`, `ttp exec`):
//! a lock or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let _ = ttp::lock::SessionLock::parse(text);
});
