//! `ttp refresh`: a new identity: every isolation key gets new circuits for its next
//! streams.

use std::path::Path;

use anyhow::Result;
use ttp::control::client::Client;

pub fn run(runtime_dir: &Path) -> Result<()> {
    let isolation_keys_reset = Client::new(runtime_dir).refresh()?;
    println!("new identity: new streams use new circuits ({isolation_keys_reset} isolation keys renewed)");
    Ok(())
}

/// New identity: new streams use new circuits.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
}

impl Args {
    pub const NEEDS_ROOT: bool = true;

    pub fn run(self) -> Result<()> {
        run(&self.paths.runtime_dir)
    }
}
