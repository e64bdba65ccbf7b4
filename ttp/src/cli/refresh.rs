//! `ttp refresh`: a new identity: every isolation key gets new circuits for its next
//! streams.

use std::path::Path;

use anyhow::Result;
use ttp::control::{self, Reply, Request};

pub fn run(runtime_dir: &Path) -> Result<()> {
    let Reply::Refreshed { isolation_keys_reset, .. } = control::request(runtime_dir, &Request::Refresh)? else {
        anyhow::bail!("unexpected reply from the daemon");
    };
    println!("new identity: new streams use new circuits ({isolation_keys_reset} isolation keys renewed)");
    Ok(())
}
