//! `ttp check`: through Tor, ask check endpoints which address they see, and whether it
//! is Tor's (the daemon does the asking, on a circuit of its own).

use std::path::Path;

use anyhow::Result;
use ttp::control::client::Client;

pub fn run(runtime_dir: &Path, urls: Vec<String>, json: bool) -> Result<()> {
    let check = Client::new(runtime_dir).check(urls)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&check)?);
    } else {
        let verdict = match check.is_tor {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "unknown (the endpoint only reports an address)",
        };
        println!("Tor: {verdict}; exit address {}; {} ms ({})", check.exit_address, check.latency_ms, check.url);
    }
    if check.is_tor == Some(false) {
        anyhow::bail!("the check endpoint does not see Tor: traffic is NOT going through Tor");
    }
    Ok(())
}

/// Through Tor: is-Tor verdict, exit address and latency from a check endpoint.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub paths: super::Paths,
    /// Check endpoint(s), tried in order (default: the daemon's list).
    #[arg(long = "check-url", value_name = "URL", value_parser = ttp::check::check_url)]
    pub urls: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Through the control socket: root, or the `ttp` group with the daemon's endpoints.
    pub const NEEDS_ROOT: bool = false;

    pub fn run(self) -> Result<()> {
        run(&self.paths.runtime_dir, self.urls, self.json)
    }
}
