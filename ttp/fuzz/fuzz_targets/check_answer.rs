//! Any check endpoint answer (the endpoint's, or a hostile exit's), and any check URL
//! (root's `check` takes one from the control socket): read without a panic; a URL taken
//! holds nothing that could change the request written by hand (no CR, LF or space, no
//! credentials).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let _ = ttp::check::parse_response(b);
    let Ok(url) = std::str::from_utf8(b) else { return };
    if ttp::check::parse_url(url).is_ok() {
        assert!(url.bytes().all(|c| c.is_ascii_graphic()), "{url:?} taken");
        let authority = url.split("://").nth(1).unwrap_or_default().split(['/', '?', '#']).next().unwrap_or_default();
        assert!(!authority.contains('@'), "{url:?} taken with credentials");
    }
});
