//! Any check endpoint answer (the endpoint's, or a hostile exit's), and any check URL
//! (root's `check` takes one from the control socket): read without a panic; a URL taken
//! is http or https and carries no credentials.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let _ = ttp::check::parse_body(text);
    if let Ok(u) = ttp::check::parse_url(text) {
        assert!(matches!(u.scheme(), "http" | "https"), "{text:?} taken");
        assert!(u.username().is_empty() && u.password().is_none(), "{text:?} taken with credentials");
    }
});
