//! `ttp diagnose`: the whole picture in one report (see [`ttp::diagnose`]).

use anyhow::Result;

/// OS, kernel, BPF support, attached programs and counters, Tor and daemon state.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        print!("{}", ttp::diagnose::report(&self.paths.runtime_dir, &self.paths.pin_dir));
        Ok(())
    }
}
