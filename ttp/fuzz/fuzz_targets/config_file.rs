//! Any text as `/etc/ttp/ttp.toml`: turned into arguments or refused with an error, never
//! a panic; and what it yields, clap parses as the start options it claims to set (or
//! refuses), never as anything else.
#![no_main]

use std::{path::Path, sync::OnceLock};

use clap::{Args, FromArgMatches};
use libfuzzer_sys::fuzz_target;
use ttp::options::StartOptions;

fn command() -> &'static clap::Command {
    static C: OnceLock<clap::Command> = OnceLock::new();
    C.get_or_init(|| StartOptions::augment_args(clap::Command::new("start").no_binary_name(true)))
}

fuzz_target!(|b: &[u8]| {
    let Ok(text) = std::str::from_utf8(b) else { return };
    let cmd = command();
    let none = cmd.clone().try_get_matches_from(Vec::<String>::new()).expect("no arguments parse");
    let Ok(args) = ttp::config::args_from_text(cmd, &none, text, Path::new("fuzz.toml")) else { return };
    for a in &args {
        assert!(a.to_string_lossy().starts_with("--"), "not an option: {a:?}");
    }
    if let Ok(m) = cmd.clone().try_get_matches_from(&args) {
        let _ = StartOptions::from_arg_matches(&m);
    }
});
